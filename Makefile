# ProbMed — the two commands of the README, and the steps they are made of.
#   make demo   install (if needed) → embedded corpus (if missing) → train → evaluate on the test split
#   make test   install (if needed) → the test suite (what CI runs)
#   make test-fast   the inner loop: the suite without its multi-process DDP and Slurm tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data_shards/demo
DEMO_STUDIES ?= 3000
DEMO_CONFIG ?= configs/demo.yaml
DEMO_RUN ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test test-fast install data fit evaluate bench clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

data: $(DEMO_DATA)/sizes.json
$(DEMO_DATA)/sizes.json: | install
	$(BIN)/probmed data synth --out $(DEMO_DATA) --studies $(DEMO_STUDIES) --seed 0 --workers 2

fit: install data
	rm -rf $(DEMO_RUN)/checkpoints
	$(BIN)/probmed fit --config $(DEMO_CONFIG)

evaluate: install data
	$(BIN)/probmed test --config $(DEMO_CONFIG) --ckpt_path $(DEMO_RUN)/checkpoints/last.ckpt --verbose false

demo: fit evaluate

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not ddp and not slurm" $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/bench_loss.py --quick

clean:
	rm -rf runs lightning_logs .pytest_cache
