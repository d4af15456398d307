"""The epoch line puts chance beside the validation recall (K / N of each pair's validation gallery) and says when
the validation split is too small for the recall to mean anything."""
from __future__ import annotations

import pytest

from probmed.evaluation.retrieval import chance_recall
from probmed.training.console import EpochLine


class _Module:
    def __init__(self, galleries):
        self.retrieval_rows = {"val": [{"query": "a", "gallery": "b", "gallery_size": n} for n in galleries]}


class _Trainer:
    sanity_checking = False

    def __init__(self, value):
        self.callback_metrics = {"val/mean_R@5": value}


@pytest.mark.parametrize("galleries,note", [
    ([227, 202, 273], " (chance {:.2f}, N 202-273)"),
    ([2, 2], " (chance {:.2f}, N 2; val split too small to mean anything)"),
    ([49, 60], " (chance {:.2f}, N 49-60; val split too small to mean anything)"),  # 49 < 10 x 5
    ([50], " (chance {:.2f}, N 50)"),
])
def test_chance_is_the_mean_of_k_over_n_and_a_small_split_is_named(galleries, note):
    line = EpochLine()
    line.on_train_epoch_start(None, None)
    line.on_validation_end(_Trainer(100.0), _Module(galleries))
    chance = sum(chance_recall(n, 5) for n in galleries) / len(galleries)  # the retrieval table's chance@5
    text = line.line(0, 1, 0)
    assert f"val mean R@5 100.00{note.format(chance)}  elapsed" in text


def test_no_chance_without_a_gallery_or_a_k():
    line = EpochLine()
    line.on_train_epoch_start(None, None)
    line.on_validation_end(_Trainer(12.0), object())
    assert "val mean R@5 12.00  elapsed" in line.line(0, 1, 0)
    other = EpochLine("val/rsum")
    other.on_validation_end(_Trainer(12.0), _Module([10]))
    assert other.chance_note() == ""
