"""ECG lead masks and echo frame masks travel from the shards to the towers: built shards → batch masks →
``ProbMedModule.embed_modality`` → tower keyword arguments, and test-time corruptions update them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probmed.data import schema
from probmed.data.builder import build_dataset
from probmed.data.datamodule import ProbMedDataModule
from probmed.data.manifest import write_manifest
from probmed.data.inputs import ECGInput, EchoInput
from probmed.data.readers import UnreadableInput
from probmed.data.studies import SkipCounter, StudyCollator, StudyDecoder
from probmed.encoders import ECGEncoder, EchoEncoder
from probmed.encoders.tower_input import select_rows
from probmed.data.registry import SPECS
from probmed.evaluation.corruptions import corrupt, corruptions_for
from probmed.losses import Objective, ProbabilisticInfoNCE
from probmed.tasks.binding import ProbMedModule

from realkit import avi, wfdb_record
from shardkit import study

LEADS = list(schema.ECG_LEADS)
V3 = LEADS.index("V3")


def _module() -> ProbMedModule:
    torch.manual_seed(0)
    ecg = ECGEncoder(depth=None, layers=[1, 1], widths=[8, 16], expansion=1, stem_widths=[8, 8, 8])
    echo = EchoEncoder({"model_name": "resnet18", "model_kwargs": {"layers": [1, 1, 1, 1], "channels": [4, 8, 8, 8],
                                                                   "stem_type": "deep", "stem_width": 4}},
                       num_frames=8, num_layers=1, num_heads=2)
    objective = Objective([ProbabilisticInfoNCE(["ecg", "echo"])])
    return ProbMedModule({"ecg": ecg, "echo": echo}, objective, embed_dim=4).eval()


def test_shards_built_from_a_record_without_v3_give_a_batch_lead_mask_with_v3_off(tmp_path):
    rows = []
    for i, split in enumerate(("train", "val")):
        leads = [name for name in LEADS if name != "V3"] if split == "train" else LEADS
        ecg = wfdb_record(tmp_path / "export" / f"s{i}", "ecg", leads=leads, seed=i)
        echo = avi(tmp_path / "export" / f"s{i}" / "echo.avi", frames=5, fps=50)
        rows.append({"study_id": f"s{i}", "patient_id": f"p{i}", "split": split,
                     "ecg": str(ecg.relative_to(tmp_path)), "echo": str(echo.relative_to(tmp_path))})
    write_manifest(tmp_path / "studies.csv", rows)
    summary = build_dataset(tmp_path / "studies.csv", tmp_path / "shards", salt="s", progress=False)
    assert summary["written"] == 2 and summary["skipped"] == {}
    # a manifest without finding columns writes no labels.json: the loader keeps its default vocabulary
    assert not (tmp_path / "shards" / "labels.json").exists()

    dm = ProbMedDataModule(str(tmp_path / "shards"), modalities=["ecg", "echo"], batch_size=1, num_workers=0,
                           train_batches_per_epoch=1,
                           inputs=dict(ecg=ECGInput(rate=100, seconds=2), echo=EchoInput(frames=8, size=16)))
    dm.setup("fit")
    train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    expected = [[i != V3 for i in range(12)]]
    assert train["inputs"]["ecg"]["lead_mask"].tolist() == expected
    assert torch.all(train["inputs"]["ecg"]["signal"][0, V3] == 0)  # the builder's zero row
    assert val["inputs"]["ecg"]["lead_mask"].tolist() == [[True] * 12]
    # a 5-frame cine sampled into an 8-frame clip: the 3 repeated last frames are padding
    for batch in (train, val):
        assert batch["inputs"]["echo"]["frame_mask"].tolist() == [[True] * 5 + [False] * 3]
        frames = batch["inputs"]["echo"]["frames"][0]
        assert all(torch.equal(frames[k], frames[4]) for k in (5, 6, 7))

    module = _module()
    with torch.no_grad():
        clean = module.embed(train)
        train["inputs"]["ecg"]["signal"][0, V3] = 7.0  # values in the masked lead do not matter
        train["inputs"]["echo"]["frames"][0, 5:] = -3.0  # nor those in padding frames
        again = module.embed(train)
    assert torch.equal(clean["ecg"].mean, again["ecg"].mean) and torch.equal(clean["echo"].mean, again["echo"].mean)


def test_padding_frames_of_fps_sampled_clips_are_masked():
    sample, meta = study("e1", cxr=False, ecg=False, text=False), {"echo_fps": 25}  # 6 stored frames
    rng = np.random.default_rng(0)
    clip = EchoInput(frames=4, size=8, fps=12.5).decode(sample, meta, rng, False)  # stored frames 0, 2, 4, 6
    assert clip["frame_mask"].tolist() == [True, True, True, False]
    full = EchoInput(frames=3, size=8, fps=12.5).decode(sample, meta, rng, True)  # 0, 2, 4 fit: nothing padded
    assert full["frame_mask"].tolist() == [True, True, True]


def test_masked_leads_and_padded_frames_never_change_the_embedding_but_do_without_the_mask():
    g = torch.Generator().manual_seed(1)
    signal, frames = torch.randn(3, 12, 200, generator=g), torch.randn(3, 8, 1, 16, 16, generator=g)
    lead_mask = torch.ones(3, 12, dtype=torch.bool)
    lead_mask[1, [2, 9]] = False
    frame_mask = torch.ones(3, 8, dtype=torch.bool)
    frame_mask[2, 6:] = False
    batch = {"inputs": {"ecg": {"signal": signal, "lead_mask": lead_mask},
                        "echo": {"frames": frames, "frame_mask": frame_mask}},
             "present": {"ecg": torch.tensor([True, True, False]), "echo": torch.tensor([True, False, True])}}
    changed = {"ecg": {"signal": signal.clone(), "lead_mask": lead_mask},
               "echo": {"frames": frames.clone(), "frame_mask": frame_mask}}
    changed["ecg"]["signal"][1, [2, 9]] = torch.randn(2, 200, generator=g) * 5
    changed["echo"]["frames"][2, 6:] = torch.randn(2, 1, 16, 16, generator=g) * 5
    module = _module()
    with torch.no_grad():
        a = module.embed(batch)
        b = module.embed({**batch, "inputs": changed})
        bare_a = {m: module.embed_modality(m, batch["inputs"][m][k], batch["present"][m])
                  for m, k in (("ecg", "signal"), ("echo", "frames"))}
        bare_b = {m: module.embed_modality(m, changed[m][k], batch["present"][m])
                  for m, k in (("ecg", "signal"), ("echo", "frames"))}
        # row selection keeps signal and mask aligned: the study alone embeds as it does within the batch
        alone = module.embed_modality("ecg", {k: v[1:2] for k, v in batch["inputs"]["ecg"].items()},
                                      torch.tensor([True]))
    for m in ("ecg", "echo"):
        assert torch.equal(a[m].mean, b[m].mean) and torch.equal(a[m].log_var, b[m].log_var)
        assert not torch.allclose(bare_a[m].mean, bare_b[m].mean)  # the mask, not luck, hides those values
    torch.testing.assert_close(alone.mean[0], a["ecg"].mean[1])


def test_lead_and_frame_dropout_mark_what_they_drop_in_the_masks():
    g = torch.Generator().manual_seed(0)
    lead_mask = torch.ones(4, 12, dtype=torch.bool)
    lead_mask[0, V3] = False  # already missing in the record
    ecg = {"signal": torch.randn(4, 12, 100, generator=g), "lead_mask": lead_mask}
    dropped = corrupt("ecg", "lead_dropout", ecg, 2.0, seed=3)
    zero_rows = dropped["signal"].abs().sum(-1) == 0
    assert (zero_rows.sum(1) == 4).all()  # 2·s leads dropped per study
    assert torch.equal(dropped["lead_mask"], lead_mask & ~zero_rows)
    assert ecg["lead_mask"] is lead_mask and lead_mask.sum() == 47  # input untouched
    noisy = corrupt("ecg", "noise", ecg, 1.0, seed=3)
    assert noisy["lead_mask"] is lead_mask and not torch.equal(noisy["signal"], ecg["signal"])

    frame_mask = torch.ones(4, 8, dtype=torch.bool)
    frame_mask[:, 7] = False  # padding
    echo = {"frames": torch.randn(4, 8, 1, 8, 8, generator=g) + 5, "frame_mask": frame_mask}
    out = corrupt("echo", "frame_dropout", echo, 3.0, seed=3)
    blank = out["frames"].flatten(2).abs().sum(-1) == 0
    assert 0 < blank.float().mean() < 1
    assert torch.equal(out["frame_mask"], frame_mask & ~blank)
    assert torch.equal(corrupt("echo", "speckle", echo, 1.0, seed=3)["frame_mask"], frame_mask)


@pytest.mark.parametrize("modality,kind", [(m, k) for m in ("ecg", "echo") for k in corruptions_for(SPECS[m].pipeline)])
def test_corruptions_of_dict_inputs_are_deterministic_pure_and_identity_at_severity_zero(modality, kind):
    g = torch.Generator().manual_seed(0)
    x = ({"signal": torch.randn(3, 12, 100, generator=g), "lead_mask": torch.rand(3, 12, generator=g) > 0.2}
         if modality == "ecg" else
         {"frames": torch.randn(3, 8, 1, 8, 8, generator=g), "frame_mask": torch.rand(3, 8, generator=g) > 0.2})
    before = {k: v.clone() for k, v in x.items()}
    a, b, zero = (corrupt(modality, kind, x, s, seed=5) for s in (2.0, 2.0, 0.0))
    assert set(a) == set(x) and all(torch.equal(a[k], b[k]) and torch.equal(x[k], before[k]) for k in x)
    for k in x:
        torch.testing.assert_close(zero[k], x[k])
        assert a[k].dtype == x[k].dtype and a[k].shape == x[k].shape


def test_collate_stacks_dict_inputs_with_placeholders():
    inputs = {"ecg": ECGInput(rate=50, seconds=10), "echo": EchoInput(frames=8, size=8)}
    decoder, collate = StudyDecoder(inputs), StudyCollator(inputs)
    skips = SkipCounter()
    studies = [decoder(s, np.random.default_rng(0), False, skips)
               for s in (study("a"), study("b", ecg=False), study("c", echo=False))]
    batch = collate(studies, skips.pop_all())
    assert batch["inputs"]["ecg"]["lead_mask"].tolist() == [[True] * 12, [False] * 12, [True] * 12]
    assert batch["inputs"]["echo"]["frame_mask"].tolist() == [[True] * 6 + [False] * 2, [True] * 6 + [False] * 2,
                                                              [False] * 8]
    assert batch["inputs"]["ecg"]["signal"].shape == (3, 12, 500)


def test_mismatched_or_non_tensor_inputs_fail_clearly():
    rows = torch.tensor([0])
    with pytest.raises(ValueError, match="differ in batch size"):
        select_rows({"signal": torch.zeros(3, 12, 10), "lead_mask": torch.ones(2, 12)}, rows)
    with pytest.raises(TypeError, match="'lead_mask' must be a tensor"):
        select_rows({"signal": torch.zeros(3, 12, 10), "lead_mask": [1] * 12}, rows)
    with pytest.raises(ValueError, match="lead_mask of shape"):
        ECGEncoder(depth=None, layers=[1], widths=[8], expansion=1)(torch.zeros(2, 12, 64), lead_mask=torch.ones(2, 11))
    with pytest.raises(UnreadableInput) as err:
        ECGInput().lead_mask({"ecg_lead_mask": [1] * 11})
    assert err.value.reason == "ecg_lead_mask_invalid"

