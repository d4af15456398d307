"""The documented M3Bind sequence runs as written (tiny sizes): two stage-1 presets, then `probmed distill fit`
with the preset's default teachers; a missing teacher file and a text length longer than a teacher's positions are
one clear line with exit status 2."""
from __future__ import annotations

import pytest

from conftest import REPO, run_probmed

PRESETS = REPO / "configs" / "presets"
DISTILL = ["distill", "fit", "--config", str(PRESETS / "m3bind_distill.yaml"), "--config",
           str(PRESETS / "tiny" / "m3bind_distill.yaml")]


@pytest.fixture(scope="module")
def stage_one(smoke_corpus, tmp_path_factory):
    """A directory where the two tiny stage-1 teachers were trained as the preset's header says."""
    work = tmp_path_factory.mktemp("m3bind")
    for preset in ("clip", "medbind"):
        fit = run_probmed(["fit", "--config", str(PRESETS / f"{preset}.yaml"), "--config",
                           str(PRESETS / "tiny" / f"{preset}.yaml"), "--data.data_dir", str(smoke_corpus)], cwd=work)
        assert fit.returncode == 0, fit.output[-3000:]
        assert (work / "runs" / preset / "version_0" / "checkpoints" / "last.ckpt").is_file()
    return work


def test_the_documented_sequence_distills_from_the_default_teachers(stage_one, smoke_corpus):
    out = run_probmed([*DISTILL, "--data.data_dir", str(smoke_corpus)], cwd=stage_one)
    assert out.returncode == 0, out.output[-3000:]
    assert (stage_one / "runs" / "m3bind_distill" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_a_text_longer_than_a_teachers_positions_is_one_line(stage_one, smoke_corpus):
    out = run_probmed([*DISTILL, "--data.data_dir", str(smoke_corpus), "--data.inputs.text.init_args.max_length",
                       "100"], cwd=stage_one)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.output[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("probmed: error:")]
    assert "data.inputs.text.init_args.max_length is 100 but the student (model.student) has 64 text positions" in line
    assert "--data.inputs.text.init_args.max_length 64" in line


def test_a_missing_teacher_says_how_to_make_it(smoke_corpus, tmp_path):
    out = run_probmed([*DISTILL, "--data.data_dir", str(smoke_corpus)], cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.output[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("probmed: error:")]
    assert "model.teachers.cxr.config: runs/clip/version_0/config.yaml does not exist. Train the teacher first" in line
