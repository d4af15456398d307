"""`probmed predict`'s .npz (probmed.evaluation.export): ambiguity, labels and label names written from predict
outputs and read back with allow_pickle=False."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probmed.evaluation.export import EmbeddingWriter, write_embeddings

NAN = float("nan")


def test_writer_exports_ambiguity_labels_and_names_without_pickle(tmp_path):
    out = tmp_path / "emb.npz"
    writer = EmbeddingWriter(str(out))
    names = ["cardiomegaly", "pleural_effusion", "lvh"]
    trainer = SimpleNamespace(is_global_zero=True, logger=None, default_root_dir=str(tmp_path),
                              datamodule=SimpleNamespace(label_names=names))
    module = SimpleNamespace(evaluator=SimpleNamespace(fitted={"temperature": {"cxr": 2.5}, "confidence": {}}))
    writer.on_predict_epoch_start(trainer, module)
    outputs = {
        "study_id": ["b", "a"],
        "labels": torch.tensor([[1.0, NAN, 0.0], [0.0, 1.0, -1.0]]),
        "cxr/mean": torch.ones(2, 3), "cxr/log_var": torch.zeros(2, 3), "cxr/present": torch.tensor([True, False]),
        "cxr/ambiguity": torch.tensor([0.75, 0.2]),  # a's CXR is absent: its ambiguity is not exported
        "ecg/mean": torch.ones(2, 3), "ecg/log_var": torch.zeros(2, 3), "ecg/present": torch.tensor([True, True]),
        "ecg/ambiguity": torch.tensor([NAN, 0.1]),
    }
    writer.on_predict_batch_end(trainer, module, outputs, None, 0)
    writer.on_predict_epoch_end(trainer, module)
    with np.load(out, allow_pickle=False) as data:
        assert data["study_id"].tolist() == ["a", "b"]
        assert data["label_names"].dtype.kind == "U" and data["label_names"].tolist() == names
        np.testing.assert_array_equal(data["labels"], np.array([[0, 1, -1], [1, NAN, 0]], np.float32))
        np.testing.assert_array_equal(data["cxr/ambiguity"], np.array([NAN, 0.75], np.float32))
        np.testing.assert_allclose(data["ecg/ambiguity"], np.array([0.1, NAN], np.float32))
        assert data["cxr/ambiguity"].dtype == np.float32
        assert json.loads(str(data["evaluation_fitted"])) == module.evaluator.fitted


def test_write_embeddings_refuses_labels_of_another_vocabulary(tmp_path):
    rows = {"a": {"cxr": (np.zeros(2), np.ones(2), True)}}
    with pytest.raises(ValueError, match="2 labels, the vocabulary 3"):
        write_embeddings(tmp_path / "x.npz", rows, {"a": np.zeros(2)}, ["x", "y", "z"])
    path = write_embeddings(tmp_path / "y.npz", rows)  # no labels, no ambiguity: NaN ambiguity, fitted null
    with np.load(path, allow_pickle=False) as data:
        assert np.isnan(data["cxr/ambiguity"]).all() and "labels" not in data.files
        assert json.loads(str(data["evaluation_fitted"])) is None
