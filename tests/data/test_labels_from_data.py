"""Labels come from the data: the builder writes the vocabulary with its value convention, the loader follows it
with the uncertain policy, and a MIMIC-CXR-layout stand-in with all 14 CheXpert labels flows through
manifest → build → fit → test with zero-shot AUROC per label."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_probmed
from probmed.data.builder import build_dataset
from probmed.data.labels import LABELS_FILE, count_values, label_vector, read_vocabulary
from probmed.data.manifest import read_manifest, write_manifest
from probmed.data.manifests.common import snake
from probmed.data.manifests.mimic_cxr import CHEXPERT_LABELS, make_mimic_cxr_manifest
from probmed.data.schema import FINDINGS
from probmed.data.studies import StudyDecoder
from probmed.data.synthetic.mimic_layout import write_mimic_cxr_standin
from probmed.evaluation.prompts import load_prompt_set, prompts_for_labels

CHEXPERT = [snake(label) for label in CHEXPERT_LABELS]


def test_label_vector_follows_the_uncertain_policy():
    findings = {"edema": -1, "atelectasis": 1, "fracture": 0}
    names = ["atelectasis", "edema", "fracture", "pneumonia"]
    np.testing.assert_array_equal(label_vector(findings, names, "positive"), [1, 1, 0, np.nan])
    np.testing.assert_array_equal(label_vector(findings, names, "negative"), [1, 0, 0, np.nan])
    np.testing.assert_array_equal(label_vector(findings, names, "ignore"), [1, np.nan, 0, np.nan])
    np.testing.assert_array_equal(label_vector({"edema": 2, "fracture": "yes"}, names), [np.nan] * 4)
    with pytest.raises(ValueError, match="uncertain label policy"):
        StudyDecoder({}, uncertain="maybe")
    assert count_values(["edema"], [findings, {}, {"edema": 1}]) == {
        "edema": {"positive": 1, "negative": 0, "uncertain": 1, "missing": 1}}


def test_manifest_refuses_values_outside_the_convention(tmp_path):
    write_manifest(tmp_path / "m.csv", [{"study_id": "a", "patient_id": "p", "split": "train", "finding:edema": 2}])
    with pytest.raises(ValueError, match="line 2: finding:edema = '2' is not 1, 0, -1 or empty"):
        read_manifest(tmp_path / "m.csv")


def test_shipped_prompt_sets_match_the_datasets_vocabularies():
    assert sorted(load_prompt_set("chexpert14")) == sorted(CHEXPERT)
    assert sorted(load_prompt_set("ptbxl_superclasses")) == ["cd", "hyp", "mi", "norm", "sttc"]
    prompts, unprompted = prompts_for_labels(CHEXPERT)
    assert sorted(prompts) == sorted(CHEXPERT) and unprompted == []
    # the CheXpert phrasing wins over the corpus's for a label both have, when the data is CheXpert-labelled
    assert prompts["cardiomegaly"] == load_prompt_set("chexpert14")["cardiomegaly"]
    corpus, _ = prompts_for_labels(list(FINDINGS))
    assert corpus["cardiomegaly"] == load_prompt_set("corpus")["cardiomegaly"]
    ptbxl, missing = prompts_for_labels(["norm", "mi", "sttc", "cd", "hyp", "atrial_fibrillation", "stroke"])
    assert len(ptbxl) == 6 and missing == ["stroke"]
    with pytest.raises(FileNotFoundError, match="shipped sets"):
        load_prompt_set("chexpert15")


def test_configured_prompt_files_and_prompts(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("edema:\n  positive: [fluid]\n  negative: [dry]\nstroke:\n  positive: [s]\n  negative: [n]\n")
    prompts, unprompted = prompts_for_labels(["edema", "fracture", "x"], files=["chexpert14", str(mine)],
                                             prompts={"fracture": {"positive": ["broken"], "negative": ["intact"]}})
    assert prompts == {"edema": {"positive": ["fluid"], "negative": ["dry"]},  # a later file overrides an earlier
                       "fracture": {"positive": ["broken"], "negative": ["intact"]}}  # prompts override files
    assert unprompted == ["x"]  # and a file's labels the data lacks (stroke) are left out
    mine.write_text("edema: {positive: [fluid]}\n")
    with pytest.raises(ValueError, match="need non-empty 'positive' and 'negative'"):
        load_prompt_set(str(mine))


@pytest.fixture(scope="module")
def mimic_standin(tmp_path_factory) -> Path:
    """120 studies in the MIMIC-CXR layout → manifest → shards (with labels.json)."""
    tmp = tmp_path_factory.mktemp("mimic")
    root = write_mimic_cxr_standin(tmp / "mimic-cxr", load_prompt_set("chexpert14"), studies=120, size=32)
    manifest, n = make_mimic_cxr_manifest(root, tmp / "studies.csv")
    assert n == 120
    summary = build_dataset(manifest, tmp / "shards", salt="s", maxcount=40, progress=False)
    assert summary["written"] == 120 and summary["skipped"] == {}
    return tmp / "shards"


def test_builder_writes_the_vocabulary_with_counts(mimic_standin):
    vocabulary = read_vocabulary(mimic_standin)
    assert vocabulary["labels"] == CHEXPERT  # the manifest's finding columns, in order
    assert vocabulary["values"] == {"positive": 1, "negative": 0, "uncertain": -1, "missing": None}
    for name in CHEXPERT:
        assert sum(vocabulary["counts"][name].values()) == 120
    assert vocabulary["counts"]["edema"]["uncertain"] > 0  # CheXpert's -1 survives manifest and build
    assert read_vocabulary(mimic_standin.parent)["labels"] == list(FINDINGS)  # no labels.json: corpus findings
    (mimic_standin.parent / LABELS_FILE).write_text('{"labels": ["a", "a"]}')
    with pytest.raises(ValueError, match="unique label names"):
        read_vocabulary(mimic_standin.parent)


def test_mimic_standin_build_fit_test_reports_zero_shot_auroc_per_chexpert_label(mimic_standin, tmp_path):
    args = ["--config", str(REPO / "configs" / "mimic_standin.yaml"), "--data.data_dir", str(mimic_standin),
            "--data.batch_size", "8", "--data.uncertain", "positive", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    fit = run_probmed(["fit", *args], cwd=tmp_path)
    assert fit.returncode == 0, fit.output[-4000:]
    (checkpoint,) = tmp_path.glob("mimic/version_0/checkpoints/*.ckpt")
    test = run_probmed(["test", *args, "--ckpt_path", str(checkpoint)], cwd=tmp_path)
    assert test.returncode == 0, test.output[-4000:]
    metrics = json.loads((tmp_path / "mimic" / "version_0" / "test_metrics.json").read_text())
    zero_shot = metrics["zero_shot"]["cxr"]
    assert set(zero_shot) - {"ece", "ece_scaled", "ece_platt"} == set(CHEXPERT)  # every CheXpert label evaluated, none of the corpus's
    test_studies = sum(n for k, n in json.loads((mimic_standin / "sizes.json").read_text()).items() if "test" in k)
    for name in CHEXPERT:
        assert 0 < zero_shot[name]["n"] <= test_studies
        auroc = zero_shot[name]["auroc"]  # null where the test split holds one class of the label
        assert auroc is None or 0.0 <= auroc <= 1.0
    assert sum(zero_shot[n]["auroc"] is not None for n in CHEXPERT) >= 10
    assert metrics["zero_shot_unprompted"] == []
    assert "skipped" in metrics["prognosis"]  # no outcome configured for this dataset: said, not crashed
    assert set(metrics["few_shot"]["cxr"]["all"]) == set(CHEXPERT)
