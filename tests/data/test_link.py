"""`probmed data link`: windows (boundaries included / excluded), nearest candidate, same-study text, patient map,
counted missing times, one split per patient; the link report equals what a generated MIMIC-IV-family stand-in
planted; and docs/real_data.md's walk (manifest ×4 → link → check → build → fit → test) executed command by command."""
from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import REPO, run_probmed
from probmed.data.commands import main as data_main
from probmed.data.link import link_manifests, parse_window
from probmed.data.manifest import read_manifest, write_manifest
from probmed.data.synthetic.mimic_family import write_mimic_family_standin
from probmed.evaluation.prompts import load_prompt_set
from dockit import shell_commands

CHEXPERT_PHRASES = load_prompt_set("chexpert14")

WINDOWS = {"ecg": "24h", "echo": "7d", "text": "same-study"}


def _row(study, patient, when, split="train", **columns):
    return {"study_id": study, "patient_id": patient, "split": split, "acquired_at": when, **columns}


def test_windows_parse_and_bad_windows_are_named():
    assert parse_window("24h") == timedelta(hours=24) and parse_window("7d") == timedelta(days=7)
    assert parse_window("90m") == timedelta(minutes=90) and parse_window("1.5h") == timedelta(minutes=90)
    assert parse_window("same-study") == "same-study"
    for bad in ("24", "h", "-2h", "1w", "same study"):
        with pytest.raises(ValueError, match="give a duration"):
            parse_window(bad)


@pytest.fixture
def small(tmp_path):
    """Hand-made manifests: anchor films a (10:00), b (no time), c (patient q); ECGs around a."""
    cxr = write_manifest(tmp_path / "cxr.csv", [
        _row("a", "p", "2180-01-02T10:00:00", cxr="a.dcm", **{"finding:edema": 1}),
        _row("b", "p", "", cxr="b.dcm"),
        _row("c", "q", "2180-05-01T00:00:00", split="test", cxr="c.dcm", report_text="own report")])
    ecg = write_manifest(tmp_path / "ecg.csv", [
        _row("e1", "p", "2180-01-01T10:00:00", ecg="e1.hea"),  # exactly -24 h: in
        _row("e2", "p", "2180-01-03T10:00:01", ecg="e2.hea"),  # +24 h 1 s: out
        _row("e3", "p", "", ecg="e3.hea"),  # no time
        _row("e4", "z", "2180-01-02T10:00:00", ecg="e4.hea")])  # a patient without a film
    text = write_manifest(tmp_path / "text.csv", [
        _row("a", "p", "2180-01-02T11:00:00", report_text="report of a"),
        _row("c", "q", "2180-05-01T01:00:00", report_text="a second report of c"),
        _row("n1", "p", "2180-01-02T09:00:00", report_text="unlinked note")])
    return tmp_path, {"cxr": cxr, "ecg": ecg, "text": text}


def test_boundaries_causes_and_columns(small):
    tmp, manifests = small
    report = link_manifests(manifests, "cxr", {"ecg": "24h", "text": "same-study"}, tmp / "out" / "joined.csv")
    rows = {e.study_id: e for e in read_manifest(tmp / "out" / "joined.csv")}
    assert sorted(rows) == ["a", "b", "c"]
    a = rows["a"]
    assert a.paths["ecg"] == [tmp / "e1.hea"] and a.paths["cxr"] == [tmp / "a.dcm"]  # paths re-based to out/
    assert a.values["report_text"] == "report of a" and a.findings == {"edema": 1}
    assert rows["c"].values["report_text"] == "own report"  # the anchor's own report is kept
    assert "ecg" not in rows["b"].paths and rows["b"].acquired_at is None
    ecg, text = report["modalities"]["ecg"], report["modalities"]["text"]
    assert ecg["linked"] == 1 and ecg["gap_hours"]["q00"] == ecg["gap_hours"]["q100"] == -24.0
    assert ecg["anchor_no_time"] == 1  # film b: no time, no time-windowed link, not guessed
    assert ecg["unmatched"] == {"no_time": 1, "out_of_window": 1, "patient_without_anchor": 1}
    assert text["linked"] == 1 and text["anchor_has_own"] == 1
    assert text["unmatched"] == {"anchor_has_own": 1, "no_same_study": 1}
    assert report["combinations"] == {"cxr+ecg+text": 1, "cxr": 1, "cxr+text": 1}
    assert report["anchor_rows"] == {"rows": 3, "unknown_patient": 0, "no_time": 1}
    # one split per patient, from the joined id: p's films a and b share one whatever their sources said
    assert rows["a"].split == rows["b"].split
    on_disk = json.loads((tmp / "out" / "joined.report.json").read_text())
    assert on_disk["combinations"] == report["combinations"] and "sources' own splits are ignored" in on_disk["rule"]


def test_nearest_wins_and_a_shared_candidate_is_counted(tmp_path):
    cxr = write_manifest(tmp_path / "cxr.csv", [_row("a", "p", "2180-01-01T10:00:00", cxr="a.dcm"),
                                                _row("b", "p", "2180-01-01T16:00:00", cxr="b.dcm")])
    ecg = write_manifest(tmp_path / "ecg.csv", [_row("e1", "p", "2180-01-01T13:00:00", ecg="e1.hea"),
                                                _row("e2", "p", "2180-01-01T08:59:00", ecg="e2.hea"),
                                                _row("e3", "p", "2180-01-01T07:00:00", ecg="e3.hea")])
    report = link_manifests({"cxr": cxr, "ecg": ecg}, "cxr", {"ecg": "3h"}, tmp_path / "j.csv")
    rows = {e.study_id: e.paths["ecg"][0].name for e in read_manifest(tmp_path / "j.csv")}
    assert rows == {"a": "e2.hea", "b": "e1.hea"}  # a: 61 min before beats 3 h after; b: 3 h before, included
    assert report["modalities"]["ecg"]["unmatched"] == {"not_nearest": 1}
    report = link_manifests({"cxr": cxr, "ecg": ecg}, "cxr", {"ecg": "4h"}, tmp_path / "k.csv")
    # with a 4 h window e1 is 3 h from both and the nearest of b; e2 still nearest for a
    assert report["modalities"]["ecg"]["reused"] == 0 and report["modalities"]["ecg"]["linked"] == 2
    tie = write_manifest(tmp_path / "tie.csv", [_row("t", "p", "2180-01-01T13:00:00", ecg="t.hea")])
    report = link_manifests({"cxr": cxr, "ecg": tie}, "cxr", {"ecg": "3h"}, tmp_path / "t.csv")
    assert report["modalities"]["ecg"]["reused"] == 1  # 3 h after a and 3 h before b: the nearest of both


def test_patient_map_and_unknown_patients(tmp_path):
    cxr = write_manifest(tmp_path / "cxr.csv", [_row("a", "P-1", "2180-01-01T10:00:00", cxr="a.dcm"),
                                                _row("b", "P-2", "2180-01-01T10:00:00", cxr="b.dcm"),
                                                _row("c", "P-3", "2180-01-01T10:00:00", cxr="c.dcm")])
    ecg = write_manifest(tmp_path / "ecg.csv", [_row("e1", "muse-77", "2180-01-01T11:00:00", ecg="e1.hea"),
                                                _row("e2", "muse-99", "2180-01-01T11:00:00", ecg="e2.hea")])
    (tmp_path / "map.csv").write_text("patient,cxr,ecg\nperson-1,P-1,muse-77\nperson-2,P-2,\n")
    report = link_manifests({"cxr": cxr, "ecg": ecg}, "cxr", {"ecg": "2h"}, tmp_path / "j.csv",
                            patient_map=tmp_path / "map.csv")
    rows = {e.study_id: e for e in read_manifest(tmp_path / "j.csv")}
    assert rows["a"].patient_id == "person-1" and rows["a"].paths["ecg"][0].name == "e1.hea"
    assert rows["b"].patient_id == "person-2" and "ecg" not in rows["b"].paths
    assert report["modalities"]["ecg"]["unmatched"] == {"unknown_patient": 1}
    assert "c" not in rows and report["anchor_rows"] == {"rows": 3, "unknown_patient": 1, "no_time": 0}
    (tmp_path / "bad.csv").write_text("cxr,ecg\nP-1,muse-77\nP-2,muse-77\n")
    with pytest.raises(ValueError, match="line 3: ecg id 'muse-77' is mapped to two patients"):
        link_manifests({"cxr": cxr, "ecg": ecg}, "cxr", {"ecg": "2h"}, tmp_path / "x.csv",
                       patient_map=tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("mrn,ecg\n1,2\n")
    with pytest.raises(ValueError, match="patient map columns must be source names"):
        link_manifests({"cxr": cxr, "ecg": ecg}, "cxr", {"ecg": "2h"}, tmp_path / "x.csv",
                       patient_map=tmp_path / "cols.csv")


def test_bad_arguments_are_clear_errors(small, capsys):
    tmp, m = small
    common = ["link", "--manifest", f"cxr={m['cxr']}", "--out", str(tmp / "x.csv")]
    cases = [
        (["--manifest", f"ecg={m['ecg']}", "--anchor", "cxr"], "every source but the anchor needs a window"),
        (["--manifest", f"ecg={m['ecg']}", "--anchor", "cxr", "--window", "ecg=1w"], "give a duration"),
        (["--manifest", f"blood={m['ecg']}", "--anchor", "cxr", "--window", "blood=1h"], "not a modality"),
        (["--anchor", "ecg"], "anchor 'ecg' is not among the manifests"),
        (["--manifest", f"cxr={m['ecg']}", "--anchor", "cxr"], "'cxr' given twice"),
        (["--manifest", "ecg", "--anchor", "cxr"], "expected NAME=VALUE"),
    ]
    for extra, message in cases:
        assert data_main([*common, *extra]) == 2
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A generated MIMIC-IV-family stand-in (60 patients) with its four manifests written in-process."""
    root = tmp_path_factory.mktemp("family")
    standin = write_mimic_family_standin(root, CHEXPERT_PHRASES, patients=60, seed=1)
    roots = standin["roots"]
    for layout, name, extra in [("mimic-cxr", "cxr", []), ("mimic-iv-ecg", "ecg", []),
                                ("mimic-iv-echo", "echo", []),
                                ("mimic-iv-note", "notes", ["--echo-root", roots["mimic-iv-echo"]])]:
        assert data_main(["manifest", layout, "--root", roots[layout], "--out", str(root / f"{name}.csv"), *extra]) == 0
    return root, standin["planted"]


def test_the_link_report_counts_what_the_standin_planted(family):
    root, planted = family
    for name, source in [("cxr", "cxr"), ("ecg", "ecg"), ("echo", "echo"), ("text", "notes")]:
        entries = read_manifest(root / f"{source}.csv")
        assert len(entries) == planted["manifest_rows"][name], name
        assert sum(e.acquired_at is None for e in entries) == planted["untimed_rows"][name], name
    report = link_manifests({"cxr": root / "cxr.csv", "ecg": root / "ecg.csv", "echo": root / "echo.csv",
                             "text": root / "notes.csv"}, "cxr", WINDOWS, root / "studies.csv")
    assert report["studies"] == planted["studies"] and report["patients"] == planted["patients"]
    assert report["combinations"] == planted["combinations"]
    assert report["anchor_rows"]["no_time"] == planted["anchor_no_time"] > 0
    assert report["patients_in_several_source_splits"] == planted["patients_in_several_source_splits"] > 0
    for name in ("ecg", "echo", "text"):
        got, want = report["modalities"][name], planted["modalities"][name]
        for key in ("linked", "anchor_has_own", "anchor_no_time", "unmatched"):
            assert got[key] == want[key], (name, key)
    for name in ("ecg", "echo"):  # gaps exact: the planted offsets, including the -24 h boundary
        gaps = planted["modalities"][name]["gap_hours"]
        assert report["modalities"][name]["gap_hours"]["q00"] == min(gaps)
        assert report["modalities"][name]["gap_hours"]["q100"] == max(gaps)
    assert report["modalities"]["ecg"]["gap_hours"]["q00"] == -24.0 and report["modalities"]["echo"]["gap_hours"][
        "q100"] == 167.0
    entries = read_manifest(root / "studies.csv")
    splits = {}
    for entry in entries:  # no patient in two splits
        assert splits.setdefault(entry.patient_id, entry.split) == entry.split
    assert len(set(splits.values())) == 3


def _substitute(words: list[str]) -> list[str]:
    return [str(REPO / w) if w.startswith("configs/") else w for w in words]


def run_docs_walk(cwd: Path, upto: str | None = None) -> list[str]:
    """Execute docs/real_data.md's ```bash commands in ``cwd`` (which holds the four downloads): ``probmed data``
    in this process, ``probmed fit`` / ``test`` as the CLI in a child process; stop before the first command whose
    words start with ``upto``. Returns each command's output."""
    outputs = []
    for where, env, words in shell_commands(REPO / "docs" / "real_data.md"):
        if upto and " ".join(words).startswith(upto):
            break
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            os.environ[key] = value
            continue
        assert words[0] == "probmed", f"{where}: teach this walk to run `{words[0]}`"
        if words[1] == "data":
            import contextlib
            import io

            buffer = io.StringIO()
            cwd_before = Path.cwd()
            os.chdir(cwd)
            try:
                with contextlib.redirect_stdout(buffer):
                    code = data_main(words[2:])
            finally:
                os.chdir(cwd_before)
            assert code == 0, f"{where}: {' '.join(words)} exited {code}:\n{buffer.getvalue()[-3000:]}"
            outputs.append(buffer.getvalue())
        else:
            proc = run_probmed(_substitute(words[1:]), cwd, timeout=600)
            assert proc.returncode == 0, f"{where}: {' '.join(words)}:\n{proc.output[-4000:]}"
            outputs.append(proc.output)
    return outputs


@pytest.fixture
def downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBMED_DEID_SALT", "")  # the walk's `export` sets it (restored after the test)
    return tmp_path, write_mimic_family_standin(tmp_path, CHEXPERT_PHRASES, patients=40, seed=2)["planted"]


def test_the_docs_walk_up_to_the_shards(downloads):
    cwd, planted = downloads
    outputs = run_docs_walk(cwd, upto="probmed fit")
    assert f"wrote {planted['studies']} studies to cxr.csv ({planted['untimed_rows']['cxr']} without" in outputs[0]
    assert f"{planted['studies']} studies of {planted['patients']} patients" in outputs[4]
    assert f"{planted['studies']} studies, {planted['studies']} with a usable input" in outputs[5]
    sizes = json.loads((cwd / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == planted["studies"]
    assert json.loads(outputs[6])["written"] == planted["studies"]


def test_the_docs_walk_from_four_downloads_to_fit_and_test(tmp_path, monkeypatch):
    """The whole walk on a few hundred patients, fit and test included (the CLI in child processes; about 90 s on
    two shared cores, kept in `make test` because it is the issue's definition of done)."""
    monkeypatch.setenv("PROBMED_DEID_SALT", "")
    planted = write_mimic_family_standin(tmp_path, CHEXPERT_PHRASES, patients=200, seed=3)["planted"]
    outputs = run_docs_walk(tmp_path)
    report = json.loads((tmp_path / "studies.report.json").read_text())
    assert report["combinations"] == planted["combinations"] and report["studies"] == planted["studies"] > 200
    assert re.search(r"--ckpt_path last: using .*\.ckpt", outputs[-1])
    metrics = sorted((tmp_path / "runs").rglob("test_metrics.json"))
    assert metrics, "probmed test wrote no metrics"
