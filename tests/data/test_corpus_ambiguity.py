"""Ambiguity in the synthetic corpus (issue 25): its distribution, the mechanisms that render it (each measured on the
signal), borderline studies, the metadata → batch round trip, and the manifest's ``ambiguity:<m>`` columns with the
PTB-XL / MIMIC-CXR rules."""
from __future__ import annotations

import io
import json
import math
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from probmed.data import schema
from probmed.data.builder import build_dataset
from probmed.data.commands import main as data_main
from probmed.data.manifest import read_manifest, write_manifest
from probmed.data.manifests.mimic_cxr import cxr_ambiguity, text_ambiguity
from probmed.data.manifests.ptbxl import ecg_ambiguity
from probmed.data.studies import SkipCounter, StudyCollator, StudyDecoder
from probmed.data.synthetic import generate_corpus, plan_corpus
from probmed.data.synthetic import cxr as cxr_mod
from probmed.data.synthetic import echo as echo_mod
from probmed.data.synthetic import quality as Q
from probmed.data.synthetic.report import TERSE_IMPRESSION, make_report, terse_report
from realkit import cxr_dicom, wfdb_record
from shardkit import small_inputs, study
from test_manifests import _csv
from test_synthetic_corpus import ecg_cache, read_samples  # noqa: F401 (a session fixture)
from test_synthetic_signals import heart_width_ratio

SALT = "ambiguity-test-salt"


# ------------------------------------------------------------------------------------------------ distribution
def test_the_ambiguity_is_the_documented_mixture_and_deterministic():
    a = np.array([[Q.draw_ambiguity(0, i, m) for m in ("cxr", "ecg", "echo", "text")] for i in range(600)])
    assert ((a >= 0) & (a <= 1)).all()
    clean = (a < Q.CLEAN_MAX).mean()
    assert 0.65 < clean < 0.75  # 70 % clean
    tail = a[a >= Q.CLEAN_MAX]
    # tail: 0.05 + 0.95·Beta(1.2, 1.8): mean 0.43, reaches past 0.9, a fifth of all studies above 0.4
    assert abs(tail.mean() - (Q.CLEAN_MAX + (1 - Q.CLEAN_MAX) * 1.2 / 3.0)) < 0.04
    assert tail.max() > 0.9 and 0.14 < (a > 0.4).mean() < 0.26
    # modalities are drawn independently: a poor film says little about the ECG
    assert abs(np.corrcoef(a[:, 0], a[:, 1])[0, 1]) < 0.12
    assert Q.draw_ambiguity(0, 5, "cxr") == Q.draw_ambiguity(0, 5, "cxr") != Q.draw_ambiguity(1, 5, "cxr")


def test_plans_carry_ambiguity_for_the_modalities_they_have_only():
    plans = plan_corpus(300, seed=4, missing={"cxr": 0.3, "echo": 0.5})
    for p in plans:
        have = {m for m, on in p.present.items() if on}
        assert set(p.ambiguity) == have == set(p.quality)
        if "cxr" in have:
            assert p.cxr_views[0] == p.quality["cxr"]["projection"]
    assert all(not p.ambiguity and not p.quality and not p.uncertain
               for p in plan_corpus(50, seed=4, ambiguity=False))
    # switching ambiguity off changes nothing else of the plan (the clean corpus of before)
    with_q, without = plan_corpus(200, seed=4), plan_corpus(200, seed=4, ambiguity=False)
    for p, c in zip(with_q, without):
        assert p.findings == c.findings and p.present == c.present
        if not p.uncertain:
            assert p.attributes == c.attributes


# ------------------------------------------------------------------------------------------------ borderline
def test_borderline_studies_sit_on_the_threshold_with_an_uncertain_label_and_a_hedged_report():
    plans = plan_corpus(2000, seed=3)
    border = [p for p in plans if p.uncertain]
    assert 0.08 < len(border) / len(plans) < 0.12
    kinds = Counter(p.uncertain[0] for p in border)
    assert set(kinds) == set(Q.BORDERLINE_WINDOWS)
    for p in border:
        (finding,) = p.uncertain
        attribute, lo, hi = Q.BORDERLINE_WINDOWS[finding]
        assert lo <= p.attributes[attribute] <= hi
        assert p.labels()[finding] == -1 and all(p.labels()[k] == p.findings[k] for k in p.findings if k != finding)
        text = make_report(np.random.default_rng(p.index), p.findings, p.attributes, uncertain=p.uncertain).lower()
        assert "borderline" in text or "limit of normal" in text, text
    # the others keep the gap around every threshold
    for p in plans:
        if p.uncertain:
            continue
        a = p.attributes
        assert abs(a["ctr"] - 0.5) >= 0.019 and abs(a["ef"] - 50) >= 4.9 and abs(a["sokolow_lyon_mv"] - 3.5) >= 0.29
        assert abs(a["heart_rate"] - 60) >= 1.9 and abs(a["heart_rate"] - 100) >= 2.9


# ------------------------------------------------------------------------------------------------ mechanisms
def _mech(fn, a: float, seed: int = 0) -> dict:
    return fn(np.random.default_rng(seed), a)


def _ecg_clean(n: int = 2500, fs: int = 250) -> np.ndarray:
    """A beat train stand-in: 1 mV spikes at 75 bpm on 12 leads, int16 µV."""
    x = np.zeros((12, n))
    x[:, ::int(0.8 * fs)] = 1000.0
    return ndimage.gaussian_filter1d(x, 3, axis=1).astype(np.int16) * 8


def test_ecg_noise_power_grows_with_ambiguity():
    clean = _ecg_clean()
    power = []
    for a in (0.0, 0.2, 0.5, 0.8, 1.0):
        runs = []
        for seed in range(12):
            mech = _mech(Q.ecg_mechanisms, a, seed) | {"electrodes": "none"}
            out = Q.degrade_ecg(clean, np.random.default_rng(100 + seed), mech, 250)
            assert out.dtype == np.int16 and out.shape == clean.shape
            runs.append(np.mean((out.astype(float) - clean) ** 2))
        power.append(np.mean(runs))
    assert power[0] == 0.0 and all(b > 1.5 * a for a, b in zip(power[1:], power[2:]))
    assert np.sqrt(power[-1]) > 300  # µV rms at a = 1: the P waves (~100-200 µV) are lost in it
    for name in ("baseline_drift", "static_noise", "burst_noise"):  # each mechanism alone adds noise
        only = {"baseline_drift": 0.0, "static_noise": 0.0, "burst_noise": 0.0, "electrodes": "none", name: 0.8}
        assert np.abs(Q.degrade_ecg(clean, np.random.default_rng(1), only, 250).astype(float) - clean).mean() > 20


def test_ecg_electrode_problems_flatten_or_swap_leads():
    clean = _ecg_clean() + np.arange(12, dtype=np.int16)[:, None] * 50  # leads told apart by their offset
    none = {"baseline_drift": 0.0, "static_noise": 0.0, "burst_noise": 0.0}
    swapped = Q.degrade_ecg(clean, np.random.default_rng(0), none | {"electrodes": "swap"}, 250)
    np.testing.assert_array_equal(swapped[0], -clean[0])  # LA/RA reversal: I inverted
    np.testing.assert_array_equal(swapped[[1, 2, 3, 4]], clean[[2, 1, 4, 3]])  # II↔III, aVR↔aVL
    np.testing.assert_array_equal(swapped[5:], clean[5:])
    flat = Q.degrade_ecg(clean, np.random.default_rng(0), none | {"electrodes": "flat"}, 250)
    flat_leads = np.flatnonzero(flat.std(1) < 10)
    assert 1 <= len(flat_leads) <= 3 and all(clean[i].std() > 100 for i in flat_leads)
    problems = Counter(_mech(Q.ecg_mechanisms, a, s)["electrodes"] for a in (0.1, 0.25) for s in range(50))
    assert problems == {"none": 100}
    problems = Counter(_mech(Q.ecg_mechanisms, 0.95, s)["electrodes"] for s in range(100))
    assert problems["none"] == 0 and problems["flat"] > 30 and problems["swap"] > 30


def _film(view: str = "PA", quality: dict | None = None, seed: int = 7, size: int = 128) -> np.ndarray:
    attrs = {"ctr": 0.45, "effusion_side": "none", "effusion_size": "none", "la_diameter_mm": 33.0}
    return cxr_mod.render_cxr(np.random.default_rng(seed), view, attrs, {}, size, quality=quality)


def test_cxr_ap_projection_and_poor_inspiration_enlarge_the_apparent_heart():
    still = {"rotation": 0.0, "inspiration": 0.0}
    pa, ap = _film("PA", still), _film("AP", still)
    shallow = _film("PA", {"rotation": 0.0, "inspiration": 1.0})
    np.testing.assert_array_equal(_film("PA", None), _film("PA", still))  # no quality: the clean film exactly
    assert heart_width_ratio(ap) > heart_width_ratio(pa) + 0.03
    assert heart_width_ratio(shallow) > heart_width_ratio(pa) + 0.01
    tilted = _film("PA", {"rotation": 1.0, "inspiration": 0.0})
    assert np.abs(tilted - pa).mean() > 0.02


def test_cxr_blur_and_exposure_degrade_with_ambiguity():
    base = _film()
    sharp, contrast = [], []
    for a in (0.0, 0.5, 1.0):
        blurred = Q.degrade_cxr(base, np.random.default_rng(0), {"exposure": 0.0, "motion_blur": a, "blur_angle": 0.3})
        exposed = Q.degrade_cxr(base, np.random.default_rng(0), {"exposure": a, "motion_blur": 0.0, "blur_angle": 0})
        assert blurred.dtype == exposed.dtype == np.float32 and exposed.min() >= 0 and exposed.max() <= 1
        sharp.append(np.var(ndimage.laplace(blurred)))
        smooth = ndimage.gaussian_filter(exposed, 1.0)  # structure, not the added quantum noise
        contrast.append(np.percentile(smooth, 95) - np.percentile(smooth, 5))
    assert sharp[0] > 1.5 * sharp[1] > 1.5 * sharp[2]
    assert contrast[0] > contrast[1] > contrast[2] and contrast[2] < 0.6 * contrast[0]
    over = Q.degrade_cxr(base, np.random.default_rng(0), {"exposure": -1.0, "motion_blur": 0.0, "blur_angle": 0})
    under = Q.degrade_cxr(base, np.random.default_rng(0), {"exposure": 1.0, "motion_blur": 0.0, "blur_angle": 0})
    assert over.mean() < base.mean() < under.mean()  # burnt dark / washed out


def _cine(foreshortening: float = 0.0, ef: float = 60.0) -> np.ndarray:
    return echo_mod.render_echo(np.random.default_rng(3), heart_rate=70.0, rhythm="sinus", ef=ef, lv_scale=1.0,
                                traits={}, frames=16, size=48, foreshortening=foreshortening)


def test_echo_contrast_loss_and_wall_dropout_reduce_the_wall_contrast():
    cine = _cine()
    mean = cine.astype(float).mean(0)
    wall = mean > np.percentile(mean, 90)  # bright myocardium
    inside = echo_mod._geometry(48)[3] > 0.5
    cavity = inside & (mean < np.percentile(mean[inside], 15))
    contrast = []
    for a in (0.0, 0.5, 1.0):
        out = Q.degrade_echo(cine, np.random.default_rng(0), {"contrast_loss": a, "wall_dropout": 0.0,
                                                               "foreshortening": 0.0}).astype(float).mean(0)
        contrast.append(out[wall].mean() - out[cavity].mean())
    assert contrast[0] > 1.5 * contrast[1] > 1.5 * contrast[2]
    dropped = Q.degrade_echo(cine, np.random.default_rng(0), {"contrast_loss": 0.0, "wall_dropout": 1.0,
                                                              "foreshortening": 0.0})
    lost = cine.astype(float).mean(0) - dropped.astype(float).mean(0)
    assert lost.max() > 40 and (lost > 5).mean() < 0.5  # a wedge goes dark, not the whole sector


def test_echo_foreshortening_hides_the_ejection_fraction():
    from test_synthetic_signals import lv_area_change

    change = {(f, ef): lv_area_change(_cine(f, ef)) for f in (0.0, 1.0) for ef in (30.0, 65.0)}
    assert change[(0.0, 65.0)] - change[(0.0, 30.0)] > 1.5 * (change[(1.0, 65.0)] - change[(1.0, 30.0)])
    np.testing.assert_array_equal(_cine(0.0), echo_mod.render_echo(
        np.random.default_rng(3), heart_rate=70.0, rhythm="sinus", ef=60.0, lv_scale=1.0, traits={}, frames=16,
        size=48))


def test_reports_get_terse_and_hedged_as_the_text_ambiguity_grows():
    plans = plan_corpus(600, seed=8)
    by_level: dict[str, list[str]] = {"clean": [], "mid": [], "poor": []}
    for p in plans:
        a = Q.draw_ambiguity(8, p.index, "text")
        text = make_report(np.random.default_rng(p.index), p.findings, p.attributes,
                           quality=Q.text_mechanisms(Q.quality_rng(8, p.index, "text"), a),
                           quality_rng=Q.noise_rng(8, p.index, "text"))
        by_level["clean" if a < 0.05 else "mid" if a < 0.5 else "poor"].append(text)
    length = {k: np.mean([len(t) for t in v]) for k, v in by_level.items()}
    assert length["clean"] > length["mid"] > 1.3 * length["poor"]
    shared = {k: 1 - len(set(v)) / len(v) for k, v in by_level.items()}  # fraction of reports that repeat another
    assert shared["clean"] == 0.0 and shared["poor"] > 0.3
    hedges = ("cannot be excluded", "possible", "difficult to assess", "not well")
    rate = {k: np.mean([any(h in t.lower() for h in hedges) for t in v]) for k, v in by_level.items()}
    assert rate["clean"] < 0.1 < 0.4 < rate["mid"]
    normal = {p.index: p for p in plans if not any(p.findings.values())}
    assert terse_report({k: 0 for k in schema.FINDINGS}) == (
        f"FINDINGS: Limited study.\n\nIMPRESSION: {TERSE_IMPRESSION['none']}\n")
    assert normal and all(terse_report(p.findings) == terse_report({}) for p in normal.values())


# ------------------------------------------------------------------------------------------------ shards → batch
def test_metadata_round_trips_from_the_shard_into_the_batch(tmp_path, ecg_cache):
    from probmed.data.datamodule import ProbMedDataModule

    out = tmp_path / "c"
    generate_corpus(out, 16, seed=2, workers=1, cache_dir=ecg_cache, missing={"echo": 0.5}, cxr_size=64,
                    echo_size=32, echo_frames=4, ecg_rate=100, shard_size=16, splits=(0.0, 0.0, 1.0))
    metas = {k: json.loads(f["json"]) for s in read_samples(out).values() for k, f in s.items()}
    assert any("echo" not in m["ambiguity"] for m in metas.values())
    dm = ProbMedDataModule(str(out), batch_size=16, num_workers=0)
    dm.setup("test")
    (batch,) = list(dm.test_dataloader())
    assert set(batch["ambiguity"]) == set(batch["inputs"])
    for i, sid in enumerate(batch["study_id"]):
        for m, values in batch["ambiguity"].items():
            assert values.dtype == torch.float32 and values.shape == (16,)
            want = metas[sid]["ambiguity"].get(m)
            if want is None:
                assert math.isnan(values[i]) and not batch["present"][m][i]
            else:
                assert values[i].item() == pytest.approx(want, abs=1e-6)
    assert "ambiguity_invalid" not in batch["skipped"]


def test_invalid_ambiguity_values_are_nan_and_counted():
    inputs = small_inputs()
    decoder, collate = StudyDecoder(inputs), StudyCollator(inputs)
    good, bad, none = study("g"), study("b"), study("n", echo=False)
    for sample, amb in ((good, {"cxr": 0.25, "ecg": 0, "echo": 1, "text": 0.5}),
                        (bad, {"cxr": "high", "ecg": 1.5, "echo": float("nan"), "text": True})):
        meta = json.loads(sample[schema.META_EXT])
        sample[schema.META_EXT] = json.dumps(meta | {"ambiguity": amb}).encode()
    odd = study("o")
    odd[schema.META_EXT] = json.dumps(json.loads(odd[schema.META_EXT]) | {"ambiguity": [0.1]}).encode()
    skips = SkipCounter()
    studies = [decoder(s, np.random.default_rng(0), False, skips) for s in (good, bad, none, odd)]
    batch = collate(studies, skips.pop_all())
    amb = {m: v.tolist() for m, v in batch["ambiguity"].items()}
    assert amb["cxr"][0] == 0.25 and amb["ecg"][0] == 0.0 and amb["echo"][0] == 1.0 and amb["text"][0] == 0.5
    assert all(math.isnan(amb[m][i]) for m in amb for i in (1, 2, 3))  # invalid, unrecorded, not an object
    assert batch["skipped"] == {"ambiguity_invalid": 5}  # four bad values + one bad field


# ------------------------------------------------------------------------------------------------ manifests
def _build(manifest: Path, out: Path) -> dict[str, dict]:
    build_dataset(manifest, out, salt=SALT, maxcount=10, progress=False)
    metas = {}
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    metas[member.name] = json.loads(tar.extractfile(member).read())
    return metas


def test_manifest_ambiguity_columns_round_trip_through_data_build(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, amb in enumerate((0.25, "", 1.0)):
        film = cxr_dicom(tmp_path / f"s{i}.dcm", rng.integers(0, 4000, (32, 32)).astype(np.uint16))
        rows.append({"study_id": f"s{i}", "patient_id": f"p{i}", "split": "train", "cxr": film.name,
                     "report_text": f"FINDINGS: study {i}.", "ambiguity:cxr": amb, "ambiguity:text": 0.5,
                     "ambiguity:ecg": 0.75})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    entries = read_manifest(manifest)
    assert [e.ambiguity for e in entries] == [{"cxr": 0.25, "text": 0.5, "ecg": 0.75}, {"text": 0.5, "ecg": 0.75},
                                              {"cxr": 1.0, "text": 0.5, "ecg": 0.75}]
    written = sorted(json.dumps(m["ambiguity"], sort_keys=True) for m in _build(manifest, tmp_path / "out").values())
    # the studies have no ECG: its ambiguity is not written; a blank cell is unknown
    assert written == sorted(json.dumps(d, sort_keys=True)
                             for d in ({"text": 0.5}, {"cxr": 0.25, "text": 0.5}, {"cxr": 1.0, "text": 0.5}))
    for bad, message in (("1.5", "not a number in \\[0, 1\\]"), ("high", "not a number")):
        rows[0]["ambiguity:cxr"] = bad
        with pytest.raises(ValueError, match=f"line 2: ambiguity:cxr = '{bad}' is {message}"):
            read_manifest(write_manifest(tmp_path / "bad.csv", rows))
    rows[0]["ambiguity:cxr"] = 0.1
    rows[0]["ambiguity:mri"] = 0.1
    with pytest.raises(ValueError, match="'ambiguity:mri' names no registered modality"):
        read_manifest(write_manifest(tmp_path / "bad.csv", rows))


def test_ptbxl_noise_columns_give_the_ecg_ambiguity(tmp_path):
    assert ecg_ambiguity({"baseline_drift": "", "static_noise": "", "burst_noise": "", "electrodes_problems": ""}) == 0
    assert ecg_ambiguity({"baseline_drift": ", I-AVR,", "static_noise": "alles", "burst_noise": "",
                          "electrodes_problems": ""}) == 0.5
    assert ecg_ambiguity({"ecg_id": "1"}) is None
    root = tmp_path / "ptb-xl"
    header = ["ecg_id", "patient_id", "report", "scp_codes", "strat_fold", "filename_lr", "filename_hr",
              "baseline_drift", "static_noise", "burst_noise", "electrodes_problems"]
    noise = [["", "", "", ""], [", V2", "", "", ""], [", I-AVR,", "alles", "alles", "V1"]]
    rows = [[i, f"{100 + i}.0", "sinusrhythmus", "{'NORM': 100.0}", 3, f"records100/00000/{i:05d}_lr",
             f"records500/00000/{i:05d}_hr", *noise[i - 1]] for i in (1, 2, 3)]
    for row in rows:
        wfdb_record(root / "records500" / "00000", f"{row[0]:05d}_hr",
                    leads=["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"])
    _csv(root / "ptbxl_database.csv", header, rows)
    _csv(root / "scp_statements.csv", ["", "description", "diagnostic", "form", "rhythm", "diagnostic_class"],
         [["NORM", "normal ECG", "1.0", "", "", "NORM"]])
    manifest = tmp_path / "ptbxl.csv"
    assert data_main(["manifest", "ptb-xl", "--root", str(root), "--out", str(manifest)]) == 0
    assert [e.ambiguity for e in read_manifest(manifest)] == [{"ecg": 0.0}, {"ecg": 0.25}, {"ecg": 1.0}]
    got = sorted(m["ambiguity"]["ecg"] for m in _build(manifest, tmp_path / "out").values())
    assert got == [0.0, 0.25, 1.0]


def test_mimic_cxr_view_position_and_chexpert_uncertainty_rules(tmp_path):
    assert cxr_ambiguity([("PA", ""), ("LATERAL", "")]) == 0.0
    assert cxr_ambiguity([("AP", "Erect")]) == 0.5 and cxr_ambiguity([("AP", "Recumbent")]) == 0.75
    assert cxr_ambiguity([("AP", "Recumbent"), ("PA", "Erect")]) == 0.0  # the best frontal film counts
    assert cxr_ambiguity([("AP AXIAL", "")]) == 0.75 and cxr_ambiguity([("LL", ""), ("", "")]) == ""
    assert text_ambiguity(None) == "" and text_ambiguity({"Cardiomegaly": "1.0", "Edema": "0.0"}) == 0.0
    assert text_ambiguity({"Cardiomegaly": "-1.0"}) == pytest.approx(1 / 3, abs=1e-4)
    assert text_ambiguity({k: "-1.0" for k in ("Edema", "Pneumonia", "Atelectasis", "Consolidation")}) == 1.0
    # a tree: one portable supine study with two uncertain labels, one PA study without
    root = tmp_path / "mimic-cxr"
    studies = {("10000032", "50414267"): ("AP", "Recumbent", ["-1.0", "-1.0"]),
               ("10000764", "57375967"): ("PA", "Erect", ["1.0", "0.0"])}
    meta_rows, label_rows = [], []
    rng = np.random.default_rng(0)
    for (subject, sid), (view, orientation, labels) in studies.items():
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{sid}"
        cxr_dicom(folder / f"d{sid}.dcm", rng.integers(0, 4000, (32, 32)).astype(np.uint16), view=view)
        meta_rows.append([f"d{sid}", subject, sid, view, orientation])
        (folder.parent / f"s{sid}.txt").write_text("FINDINGS: Possible effusion.\nIMPRESSION: Cannot exclude edema.")
        label_rows.append([subject, sid, *labels])
    _csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition",
         "PatientOrientationCodeSequence_CodeMeaning"], meta_rows)
    _csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", "Edema", "Pleural Effusion"], label_rows)
    manifest = tmp_path / "cxr.csv"
    assert data_main(["manifest", "mimic-cxr", "--root", str(root), "--out", str(manifest)]) == 0
    got = {e.study_id: e.ambiguity for e in read_manifest(manifest)}
    assert got == {"50414267": {"cxr": 0.75, "text": pytest.approx(2 / 3, abs=1e-4)},
                   "57375967": {"cxr": 0.0, "text": 0.0}}
    built = sorted((m["ambiguity"]["cxr"], m["ambiguity"]["text"]) for m in _build(manifest, tmp_path / "o").values())
    assert built == [(0.0, 0.0), (0.75, pytest.approx(0.6667, abs=1e-4))]
