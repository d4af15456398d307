"""The synthetic corpus: shard layout, metadata, DICOM / ECG / echo / report contents, determinism, CLI."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from probmed.data import registry, schema
from probmed.data.synthetic import fake_patient_phi, generate_corpus, plan_corpus

SMALL = dict(cxr_size=96, echo_size=32, echo_frames=8, ecg_rate=250, ecg_seconds=10.0, shard_size=16)


@pytest.fixture(scope="session")
def ecg_cache(tmp_path_factory) -> Path:
    # shared by the synthetic test modules of this session (the bank costs a few seconds to simulate)
    path = tmp_path_factory.getbasetemp() / "probmed_ecg_bank"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, ecg_cache):
    out = tmp_path_factory.mktemp("synth") / "demo"
    summary = generate_corpus(out, 40, seed=3, workers=1, cache_dir=ecg_cache, **SMALL)
    return out, summary


def read_samples(out: Path) -> dict[str, dict[str, dict[str, bytes]]]:
    """{shard name: {key: {ext: bytes}}} read with plain tarfile (independent of the writer)."""
    shards: dict[str, dict[str, dict[str, bytes]]] = {}
    for tar_path in sorted(out.glob("*.tar")):
        samples: dict[str, dict[str, bytes]] = defaultdict(dict)
        with tarfile.open(tar_path) as tf:
            for member in tf.getmembers():
                key, ext = member.name.split(".", 1)
                samples[key][ext] = tf.extractfile(member).read()
        shards[tar_path.name] = dict(samples)
    return shards


def test_sizes_json_matches_tars(corpus):
    out, summary = corpus
    sizes = json.loads((out / schema.SIZES_FILE).read_text())
    shards = read_samples(out)
    assert sizes == {name: len(samples) for name, samples in shards.items()}
    assert sum(sizes.values()) == 40 == summary["n_studies"]
    for name in sizes:
        split, rest = name.split("-")
        assert split in schema.SPLITS and rest.endswith(".tar") and len(rest) == len("000000.tar")
    assert all(n <= SMALL["shard_size"] for n in sizes.values())
    assert not list(out.glob("*.tmp"))


def test_samples_metadata_and_modalities(corpus):
    out, _ = corpus
    shards = read_samples(out)
    patients_by_split: dict[str, set] = defaultdict(set)
    photometric, views_seen, n = set(), set(), 0
    for name, samples in shards.items():
        split = name.split("-")[0]
        for key, files in samples.items():
            n += 1
            assert "." not in key
            meta = json.loads(files["json"])
            for field in schema.META_FIELDS:
                assert field in meta
            assert meta["study_id"] == key and meta["split"] == split
            assert set(meta["findings"]) == set(schema.FINDINGS)
            assert all(v in (0, 1, -1) for v in meta["findings"].values())  # -1: a borderline study
            assert set(meta["ambiguity"]) == set(meta["modalities"]) == set(meta["quality"])
            patients_by_split[split].add(meta["patient_id"])
            assert not any(ext in schema.FORBIDDEN_EXTS for ext in files)
            present = {registry.modality_of(ext) for ext in files} - {None}
            assert present == set(meta["modalities"])
            assert "text" in present  # text is always present by default
            # CXR views
            cxr_exts = sorted(e for e in files if e.startswith(schema.CXR_PREFIX))
            assert cxr_exts == [f"cxr.{i}.dcm" for i in range(len(meta["cxr_views"]))]
            if cxr_exts:
                assert meta["cxr_views"][0] == ("AP" if meta["quality"]["cxr"]["projection"] == "AP" else "PA")
            for i, ext in enumerate(cxr_exts):
                ds = pydicom.dcmread(io.BytesIO(files[ext]))
                assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
                px = ds.pixel_array
                assert px.shape == (SMALL["cxr_size"],) * 2 and px.dtype == np.uint16
                assert ds.ViewPosition == meta["cxr_views"][i]
                assert ds.BitsStored in (12, 16) and ds.HighBit == ds.BitsStored - 1
                assert int(px.max()) < 2 ** ds.BitsStored
                assert float(ds.WindowWidth) > 0 and float(ds.RescaleSlope) > 0
                photometric.add(ds.PhotometricInterpretation)
                views_seen.add(ds.ViewPosition)
                phi = fake_patient_phi(3, int(meta["patient_id"][1:]))
                assert str(ds.PatientName) == phi["PatientName"] and ds.PatientID == phi["PatientID"]
                assert ds.PatientBirthDate == phi["PatientBirthDate"]
                assert ds.InstitutionName == phi["InstitutionName"]
                assert ds.PatientID != meta["patient_id"]
                for tag in ("AccessionNumber", "StudyDate", "ReferringPhysicianName", "StudyInstanceUID"):
                    assert str(getattr(ds, tag))
            # ECG
            if "ecg.npy" in files:
                ecg = np.load(io.BytesIO(files["ecg.npy"]), allow_pickle=False)
                assert ecg.dtype == np.int16 and ecg.shape == (12, 2500)
                assert meta["ecg_leads"] == list(schema.ECG_LEADS) and meta["ecg_sampling_rate"] == 250
                assert 300 < np.abs(ecg[1]).max() < 5000  # microvolts
            # echo
            if "echo.npy" in files:
                echo = np.load(io.BytesIO(files["echo.npy"]), allow_pickle=False)
                assert echo.dtype == np.uint8 and echo.shape == (8, 32, 32)
                assert meta["echo_fps"] > 0
            report = files["report.txt"].decode("utf-8")
            assert report.startswith("FINDINGS: ") and "\nIMPRESSION: " in report
            attrs = meta["attributes"]
            for k in ("heart_rate", "ctr", "ef", "effusion_side", "rhythm"):
                assert k in attrs
    assert n == 40
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert {"PA", "LATERAL"} <= views_seen <= {"PA", "AP", "LATERAL"}  # AP: a portable film (issue 25)
    # split by patient: no patient in two splits
    splits = list(patients_by_split.values())
    for i in range(len(splits)):
        for j in range(i + 1, len(splits)):
            assert not splits[i] & splits[j]


def test_plan_statistics():
    plans = plan_corpus(2000, seed=11)
    F = np.array([[p.findings[k] for k in schema.FINDINGS] for p in plans])
    normal = (F.sum(1) == 0).mean()
    assert 0.25 <= normal <= 0.4
    idx = {k: i for i, k in enumerate(schema.FINDINGS)}
    assert not (F[:, idx["bradycardia"]] & F[:, idx["tachycardia"]]).any()
    cm = F[:, idx["cardiomegaly"]] == 1
    assert F[cm, idx["reduced_ef"]].mean() > 2 * F[~cm, idx["reduced_ef"]].mean()
    af = F[:, idx["atrial_fibrillation"]] == 1
    assert F[af, idx["tachycardia"]].mean() > 2 * F[~af, idx["tachycardia"]].mean()
    # same-patient studies exist and patients keep one split
    by_patient = defaultdict(list)
    for p in plans:
        by_patient[p.patient_id].append(p)
    assert sum(len(v) > 1 for v in by_patient.values()) > 100
    assert all(len({p.split for p in v}) == 1 for v in by_patient.values())
    for p in plans:
        if p.uncertain:  # a borderline study sits on its threshold (tests/data/test_corpus_ambiguity.py); the rest keep the gap
            continue
        hr = p.attributes["heart_rate"]
        if p.findings["bradycardia"]:
            assert hr < 60
        elif p.findings["tachycardia"]:
            assert hr > 100
        else:
            assert 60 < hr < 100
        assert (p.attributes["ctr"] > 0.5) == bool(p.findings["cardiomegaly"])
        assert (p.attributes["ef"] < 50) == bool(p.findings["reduced_ef"])
        assert (p.attributes["effusion_side"] != "none") == bool(p.findings["pleural_effusion"])



def test_plan_cardiac_structure_links_film_and_ecg():
    """LV hypertrophy goes with cardiomegaly and left-atrial enlargement with AF, at the documented rates; the
    continuous attributes sit on the right side of their clinical thresholds; a patient's studies agree."""
    plans = [p for p in plan_corpus(4000, seed=12) if not p.uncertain]  # borderline studies sit on the threshold
    f = {k: np.array([p.findings[k] for p in plans]) == 1 for k in schema.FINDINGS}
    a = {k: np.array([p.attributes[k] for p in plans]) for k in
         ("sokolow_lyon_mv", "lv_strain", "lv_wall_mm", "la_enlarged", "la_diameter_mm")}
    cm, lvh, af, lae = f["cardiomegaly"], f["lvh"], f["atrial_fibrillation"], a["la_enlarged"].astype(bool)
    assert 0.62 < lvh[cm].mean() < 0.78 and 0.08 < lvh[~cm].mean() < 0.17
    assert 0.68 < lae[af].mean() < 0.82 and 0.04 < lae[~af].mean() < 0.16
    assert 0.2 < lvh.mean() < 0.4 and 0.12 < lae.mean() < 0.3
    assert (a["sokolow_lyon_mv"][lvh] > 3.5).all() and (a["sokolow_lyon_mv"][~lvh] < 3.5).all()
    assert a["sokolow_lyon_mv"][lvh].min() >= 3.8 and a["sokolow_lyon_mv"][~lvh].max() <= 3.2
    assert (a["lv_wall_mm"][lvh] >= 12.5).all() and (a["lv_wall_mm"][~lvh] <= 10.5).all()
    assert (a["la_diameter_mm"][lae] >= 44).all() and (a["la_diameter_mm"][~lae] <= 39).all()
    assert not a["lv_strain"][~lvh].any() and 0.5 < a["lv_strain"][lvh].mean() < 0.7
    # same patient, same cardiomegaly state -> same LVH state (one latent per patient)
    seen: dict[tuple[str, bool], bool] = {}
    for p in plans:
        key = (p.patient_id, bool(p.findings["cardiomegaly"]))
        assert seen.setdefault(key, bool(p.findings["lvh"])) == bool(p.findings["lvh"])


def _digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.iterdir()) if p.suffix in (".tar", ".json")}


def test_deterministic_across_runs_and_workers(corpus, tmp_path, ecg_cache):
    out, _ = corpus
    again = tmp_path / "again"
    generate_corpus(again, 40, seed=3, workers=2, cache_dir=None, **SMALL)  # 2 workers, bank not from cache
    assert _digest(again) == _digest(out)
    other = tmp_path / "other"
    generate_corpus(other, 40, seed=4, workers=1, cache_dir=ecg_cache, **SMALL)
    d_other = _digest(other)
    tars = [k for k in d_other if k.endswith(".tar")]
    assert tars and all(d_other[k] != _digest(out).get(k) for k in tars)


def test_rerun_replaces_stale_shards(tmp_path, ecg_cache):
    out = tmp_path / "c"
    generate_corpus(out, 30, seed=1, workers=1, cache_dir=ecg_cache, **(SMALL | {"shard_size": 4}))
    many = set(p.name for p in out.glob("*.tar"))
    generate_corpus(out, 6, seed=1, workers=1, cache_dir=ecg_cache, **(SMALL | {"shard_size": 4}))
    few = set(p.name for p in out.glob("*.tar"))
    sizes = json.loads((out / "sizes.json").read_text())
    assert set(sizes) == few and few < many and sum(sizes.values()) == 6


def test_cli_runs_in_process(tmp_path, ecg_cache, capsys):
    from probmed.data.commands import build_parser, main

    args = build_parser().parse_args(["synth", "--out", "x", "--studies", "5", "--missing", "cxr=0.5,echo=1"])
    assert args.missing == {"cxr": 0.5, "echo": 1.0} and args.splits == (0.8, 0.1, 0.1)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["synth", "--out", "x", "--missing", "mri=0.1"])
    out = tmp_path / "cli"
    rc = main(["synth", "--out", str(out), "--studies", "12", "--seed", "5", "--missing", "echo=1,ecg=0",
               "--splits", "0.5,0.25,0.25", "--cxr-size", "64", "--echo-size", "32", "--echo-frames", "4",
               "--ecg-rate", "100", "--ecg-seconds", "4", "--shard-size", "5", "--workers", "1",
               "--cache-dir", str(ecg_cache), "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_studies"] == 12
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == 12
    shards = read_samples(out)
    for samples in shards.values():
        for files in samples.values():
            assert "echo.npy" not in files
            ecg = np.load(io.BytesIO(files["ecg.npy"]), allow_pickle=False)
            assert ecg.shape == (12, 400)
            assert json.loads(files["json"])["ecg_sampling_rate"] == 100


def test_progress_in_a_log_is_whole_lines(tmp_path, ecg_cache, capsys):
    """Off a terminal (stderr captured, as in `make demo > log`), generation progress is newline-terminated lines,
    never carriage-return updates that a log shows as one endless line."""
    from probmed.data.commands import main

    rc = main(["synth", "--out", str(tmp_path / "c"), "--studies", "6", "--seed", "1", "--cxr-size", "64",
               "--echo-size", "32", "--echo-frames", "4", "--ecg-rate", "100", "--ecg-seconds", "4",
               "--workers", "1", "--cache-dir", str(ecg_cache)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    progress = [line for line in err.splitlines() if line.startswith("[probmed synth]")]
    assert progress and progress[-1].startswith("[probmed synth] 6/6 studies")
