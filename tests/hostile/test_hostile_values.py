"""Hostile values (issue 28): manifests and shard metadata with absurd values, damaged shards and physically
impossible headers end in one clear error line or a counted cause for the one study — never a traceback, never the
end of a run."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from probmed.data import schema
from probmed.data.commands import main
from probmed.data.datamodule import ProbMedDataModule
from probmed.data.manifest import read_manifest, write_manifest
from probmed.data.inputs import TextInput
from probmed.data.readers import UnreadableInput, read_cxr, read_cxr_dicom, read_cxr_image
from probmed.data.readers.ecg_sources import read_ecg_dicom
from probmed.data.streams import EvalStream

from shardkit import dicom_bytes, small_inputs, study, write_split


def _eval(data: Path) -> tuple[list[str], Counter]:
    """Every study id the loader yields from the ``val`` split, and the skip counts."""
    dm = ProbMedDataModule(str(data), batch_size=4, inputs=small_inputs())
    stream = EvalStream(dm.shards("val")[0], dm.decoder, dm.collator, 4, 0)
    ids, counts = [], Counter()
    for batch in stream.batches_for(0, 1):
        ids += batch["study_id"]
        counts.update(batch["skipped"])
    return ids, counts


# -- manifests ------------------------------------------------------------------------------------------------------
def test_a_manifest_saved_by_excel_with_a_bom_is_read(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("\ufeffstudy_id,patient_id,split,report_text\r\ns1,p1,train,FINDINGS: ok.\r\n".encode("utf-8"))
    (entry,) = read_manifest(path)
    assert entry.study_id == "s1" and entry.values["report_text"] == "FINDINGS: ok." and entry.line == 2


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "2", "yes"])
def test_a_finding_that_is_not_1_0_or_minus_1_is_one_error_line_naming_row_and_column(tmp_path, capsys, value):
    write_manifest(tmp_path / "m.csv", [{"study_id": "s1", "patient_id": "p1", "split": "train",
                                         "report_text": "x", "finding:edema": 1},
                                        {"study_id": "s2", "patient_id": "p2", "split": "train",
                                         "report_text": "x", "finding:edema": value}])
    assert main(["check", "--manifest", str(tmp_path / "m.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "manifest line 3: finding:edema" in err and "Traceback" not in err


def test_an_over_long_cell_is_one_error_line_naming_row_and_column(tmp_path, capsys):
    rows = [{"study_id": "s1", "patient_id": "p1", "split": "train", "report_text": "A" * (2 << 20)}]
    write_manifest(tmp_path / "m.csv", rows)
    assert main(["check", "--manifest", str(tmp_path / "m.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "manifest line 2, column 'report_text'" in err
    # beyond the csv module's (raised) limit: still one line, naming the row
    (tmp_path / "huge.csv").write_text("study_id,patient_id,split,report_text\ns1,p1,train,\"" + "B" * (17 << 20)
                                       + "\"\n")
    assert main(["check", "--manifest", str(tmp_path / "huge.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "manifest line" in err and "field larger than field limit" in err


# -- shard metadata and damaged shards --------------------------------------------------------------------------------
@pytest.mark.parametrize("findings_json", ['{"cardiomegaly": Infinity}', '{"cardiomegaly": NaN}',
                                           '{"cardiomegaly": ' + "9" * 4000 + "}", '{"cardiomegaly": [1]}'])
def test_absurd_label_values_in_shard_metadata_skip_that_study_with_a_cause(tmp_path, findings_json):
    rng = np.random.default_rng(0)
    samples = [study(f"v{i}", split="val", rng=rng) for i in range(5)]
    meta = json.loads(samples[2][schema.META_EXT])
    text = json.dumps({k: v for k, v in meta.items() if k != "findings"})
    samples[2][schema.META_EXT] = (text[:-1] + ', "findings": ' + findings_json + "}").encode()
    write_split(tmp_path, "val", [samples])
    ids, counts = _eval(tmp_path)
    assert sorted(ids) == ["v0", "v1", "v3", "v4"] and counts["label_invalid"] == 1


def _tar(path: Path, members: list[tuple[str, bytes]], end_marker: bool = True) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        offset = tar.offset
    data = buffer.getvalue()
    path.write_bytes(data if end_marker else data[:offset])  # offset: just after the last member's data
    return path


def _members(samples: list[dict]) -> list[tuple[str, bytes]]:
    return [(f"{s['__key__']}.{ext}", data) for s in samples for ext, data in s.items() if ext != "__key__"]


def test_a_duplicate_member_costs_its_own_study_only(tmp_path):
    rng = np.random.default_rng(1)
    samples = [study(f"v{i}", split="val", rng=rng) for i in range(10)]
    members = _members(samples)
    at = next(i for i, (name, _) in enumerate(members) if name == f"v1.{schema.REPORT_EXT}")
    members.insert(at + 1, members[at])
    _tar(tmp_path / "val-000000.tar", members)
    (tmp_path / schema.SIZES_FILE).write_text(json.dumps({"val-000000.tar": 10}))
    ids, counts = _eval(tmp_path)
    assert sorted(ids) == sorted(f"v{i}" for i in range(10) if i != 1)
    assert counts["duplicate_member"] == 1 and "shard_read_error" not in counts


def test_a_truncation_exactly_at_a_member_boundary_is_counted(tmp_path):
    rng = np.random.default_rng(2)
    samples = [study(f"v{i}", split="val", rng=rng) for i in range(6)]
    _tar(tmp_path / "val-000000.tar", _members(samples)[:-3], end_marker=False)  # cut inside the last study
    (tmp_path / schema.SIZES_FILE).write_text(json.dumps({"val-000000.tar": 6}))
    ids, counts = _eval(tmp_path)
    assert sorted(ids) == [f"v{i}" for i in range(5)] and counts["shard_read_error"] == 1


# -- physically impossible headers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("slope", [-1.0, 0.0])
def test_a_radiograph_with_a_non_positive_rescale_slope_is_refused(slope):
    pixels = np.tile(np.arange(32, dtype=np.uint16) * 100, (32, 1))
    assert read_cxr_dicom(dicom_bytes(pixels, slope=2.0))[0].shape == (32, 32)
    with pytest.raises(UnreadableInput) as err:
        read_cxr_dicom(dicom_bytes(pixels, slope=slope))
    assert err.value.reason == "cxr_implausible_rescale"


def _ecg_file(tmp_path: Path, edit) -> Path:
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm", download=False))
    edit(ds)
    path = tmp_path / "ecg.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize("rate, reason", [(1e6, "ecg_implausible_rate"), (10.0, "ecg_implausible_rate")])
def test_an_ecg_sampling_rate_outside_50_to_20000_hz_is_refused(tmp_path, rate, reason):
    def edit(ds):
        for group in ds.WaveformSequence:
            group.SamplingFrequency = rate

    with pytest.raises(UnreadableInput) as err:
        read_ecg_dicom(_ecg_file(tmp_path, edit))
    assert err.value.reason == reason


def test_an_ecg_channel_with_a_negative_sensitivity_is_refused(tmp_path):
    def edit(ds):
        ds.WaveformSequence[0].ChannelDefinitionSequence[1].ChannelSensitivity = "-0.00125"

    assert read_ecg_dicom(_ecg_file(tmp_path, lambda ds: None)).signal.shape[0] == 12
    with pytest.raises(UnreadableInput) as err:
        read_ecg_dicom(_ecg_file(tmp_path, edit))
    assert err.value.reason == "ecg_implausible_sensitivity"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_colour_photograph_is_refused_as_a_radiograph_and_a_grey_film_saved_as_rgb_is_not():
    rng = np.random.default_rng(3)
    grey = np.repeat(rng.integers(0, 255, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    assert read_cxr_image(_png(grey))[0].shape == (64, 64)
    photo = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(UnreadableInput) as err:
        read_cxr_image(_png(photo))
    assert err.value.reason == "cxr_colour_image"
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.ones((8, 8), np.uint16) * 7)))
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored = "RGB", 3, 8, 8
    ds.HighBit, ds.PlanarConfiguration, ds.PixelData = 7, 0, photo[:8, :8].tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(UnreadableInput) as err:
        read_cxr("cxr.0.dcm", buffer.getvalue())
    assert err.value.reason == "cxr_not_greyscale"


# -- text -------------------------------------------------------------------------------------------------------------
def test_a_huge_report_is_cut_before_the_tokenizer_or_refused_over_the_limit():
    text = TextInput(max_length=16)
    long = ("FINDINGS: " + "word " * 180_000).encode()  # 900 kB: under the 1 MiB report limit
    decoded = text.decode({schema.REPORT_EXT: long}, {}, None, False)
    assert len(decoded) == 16 * 32 and decoded.startswith("FINDINGS: word word")
    batch = text.collate([decoded])
    assert batch["input_ids"].shape == (1, 16)
    with pytest.raises(UnreadableInput) as err:
        text.decode({schema.REPORT_EXT: b"A" * (2 << 20)}, {}, None, False)
    assert err.value.reason == "text_too_large"


# -- XML -------------------------------------------------------------------------------------------------------------
_LAUGHS = ('<!DOCTYPE {root} [<!ENTITY a "lol">' + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">'
                                                         for p, c in zip("abcdefgh", "bcdefghi")) + "]>")
_QUADRATIC = '<!DOCTYPE {root} [<!ENTITY x "' + "X" * 50_000 + '">]>'
_EXTERNAL = '<!DOCTYPE {root} [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
_BODY = {"RestingECG": "<RestingECG><Waveform><WaveformType>Rhythm</WaveformType>{ref}</Waveform></RestingECG>",
         "AnnotatedECG": '<AnnotatedECG xmlns="urn:hl7-org:v3"><id root="{ref}"/></AnnotatedECG>',
         "ClinicalDocument": ('<ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody><component>'
                              "<section><title>FINDINGS</title><text>{ref}</text></section></component>"
                              "</structuredBody></component></ClinicalDocument>")}


@pytest.mark.parametrize("attack, ref", [(_LAUGHS, "&i;"), (_QUADRATIC, "&x;" * 2000), (_EXTERNAL, "&x;")],
                         ids=["billion_laughs", "quadratic_blowup", "external_entity"])
@pytest.mark.parametrize("root", sorted(_BODY))
def test_xml_entity_attacks_are_refused_with_a_cause_by_every_xml_reader(tmp_path, attack, ref, root):
    from probmed.data.readers.ecg_sources import read_ecg_source
    from probmed.data.readers.text import plain_report

    document = '<?xml version="1.0"?>' + attack.format(root=root) + _BODY[root].format(ref=ref)
    with pytest.raises(UnreadableInput) as err:
        if root == "ClinicalDocument":
            plain_report(document)
        else:
            (tmp_path / "ecg.xml").write_text(document)
            read_ecg_source(tmp_path / "ecg.xml")
    assert err.value.reason == ("text_xml_unsafe" if root == "ClinicalDocument" else "ecg_xml_unsafe")
    assert "root:x:0" not in str(err.value)


def test_an_xml_report_with_an_entity_bomb_is_a_counted_skip_in_the_build(tmp_path):
    from probmed.data.builder import build_dataset

    (tmp_path / "r.xml").write_text('<?xml version="1.0"?>' + _LAUGHS.format(root="ClinicalDocument")
                                    + _BODY["ClinicalDocument"].format(ref="&i;"))
    write_manifest(tmp_path / "m.csv", [{"study_id": "s1", "patient_id": "p1", "split": "train", "report": "r.xml"},
                                        {"study_id": "s2", "patient_id": "p2", "split": "train",
                                         "report_text": "FINDINGS: clear."}])
    summary = build_dataset(tmp_path / "m.csv", tmp_path / "out", salt="k", progress=False)
    assert summary["skipped"]["text_xml_unsafe"] == 1 and summary["written"] == 1


def test_the_data_module_limits_apply_to_the_loader_and_an_unknown_limit_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(4)
    write_split(tmp_path, "val", [[study(f"v{i}", split="val", rng=rng) for i in range(3)]])  # 6-frame cines
    dm = ProbMedDataModule(str(tmp_path), batch_size=4, inputs=small_inputs(), limits={"echo_frames": 4})
    dm.setup("validate")
    counts, present = Counter(), []
    for batch in dm._streams["val"].batches_for(0, 1):
        counts.update(batch["skipped"])
        present += batch["present"]["echo"].tolist()
    assert counts["echo_too_large"] == 3 and not any(present)
    with pytest.raises(ValueError, match="unknown limit 'echo_frame'"):
        ProbMedDataModule(str(tmp_path), inputs=small_inputs(), limits={"echo_frame": 4})


# -- de-identification of what the hostile scan found ------------------------------------------------------------------
def test_free_text_inside_kept_dicom_sequences_is_removed_at_any_depth():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from probmed.data.deid import Pseudonymizer, deidentify_dicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.tile(np.arange(16, dtype=np.uint16) * 200, (16, 1)))))
    modifier = Dataset()
    modifier.CodeValue, modifier.CodingSchemeDesignator = "R-10226", "SRT"
    modifier.CodeMeaning = "St Elsewhere General Hospital"
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "R-10206", "SRT", "John Public MRN 12345678"
    view.ViewModifierCodeSequence = Sequence([modifier])
    ds.ViewCodeSequence = Sequence([view])
    lut = Dataset()
    lut.LUTDescriptor, lut.LUTExplanation = [4, 0, 16], "window chosen by Dr Ramoray"
    lut.add_new(0x00283006, "US", [0, 100, 200, 4095])  # LUTData
    ds.VOILUTSequence = Sequence([lut])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    out, _ = deidentify_dicom(buffer.getvalue(), Pseudonymizer("k"), "p")
    for value in (b"John Public", b"12345678", b"Elsewhere", b"Ramoray"):
        assert value not in out
    kept = pydicom.dcmread(io.BytesIO(out))
    assert kept.ViewCodeSequence[0].CodeValue == "R-10206"
    assert kept.ViewCodeSequence[0].ViewModifierCodeSequence[0].CodingSchemeDesignator == "SRT"
    assert list(kept.VOILUTSequence[0].LUTDescriptor) == [4, 0, 16]


def test_a_jpeg_is_re_encoded_so_no_comment_between_scans_nor_bytes_after_the_end_survive():
    from probmed.data.deid import strip_image_metadata

    rng = np.random.default_rng(5)
    grey = (np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)) + rng.integers(0, 8, (64, 64))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=90, progressive=True)
    data = buffer.getvalue()
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)  # a COM segment after the first scan
    comment = b"John Public MRN 12345678"
    data = data[:second_scan] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[second_scan:]
    data += b"TRAILING Smithfield"
    assert read_cxr_image(data)[0].shape == (64, 64)  # still a valid JPEG
    clean = strip_image_metadata(data, "jpg")
    assert comment not in clean and b"Smithfield" not in clean and clean.endswith(b"\xff\xd9")
    np.testing.assert_allclose(read_cxr_image(clean)[0], read_cxr_image(data)[0], atol=0.05)
    assert strip_image_metadata(data, "jpg") == clean  # deterministic: a rebuild gives the same shard bytes


@pytest.mark.parametrize("text", ["Compared with 3/14/23.", "Study of March 14th, 2023.", "Seen 14-Mar-2023.",
                                  "Ref 1234-5678.", "Call (617) 555-1234.", "SSN 123-45-6789.",
                                  "Lives at 42 Wallaby Way Sydney.", "Discussed with Dr. Jones.", "MRN 12345678."])
def test_report_identifier_forms_the_build_does_not_know_are_scrubbed(text):
    from probmed.data.deid import scrub_identifier_forms

    scrubbed, n = scrub_identifier_forms(text)
    assert n >= 1 and "___" in scrubbed
    for token in ("3/14/23", "14th", "Mar-2023", "1234-5678", "555-1234", "6789", "Wallaby", "Jones", "12345678"):
        assert token not in scrubbed


def test_clinical_numbers_in_a_report_are_not_scrubbed():
    from probmed.data.deid import scrub_identifier_forms

    text = ("FINDINGS: Heart size 12.5 cm, a 3 mm nodule, EF 55%, BP 120/80 mmHg, T10-T12 levels, 1 of 2 views, "
            "unchanged since 2019. Drains in place. IMPRESSION: Mild cardiomegaly.")
    assert scrub_identifier_forms(text) == (text, 0)


def test_an_echo_dicom_header_declaring_too_many_frames_or_samples_is_refused_before_decoding():
    from pydicom.dataset import Dataset

    from probmed.data.limits import Limits, check_dicom_cine_header

    ds = Dataset()
    ds.NumberOfFrames, ds.Rows, ds.Columns, ds.SamplesPerPixel = 300, 600, 800, 3
    check_dicom_cine_header(ds, "echo")  # a long real cine passes
    for frames, samples in ((1500, 1), (1000, 3)):  # over the frame limit; 1000 RGB frames of 800 x 600 = 1.44 G
        ds.NumberOfFrames, ds.SamplesPerPixel = frames, samples
        with pytest.raises(UnreadableInput) as err:
            check_dicom_cine_header(ds, "echo")
        assert err.value.reason == "echo_too_large"
    check_dicom_cine_header(ds, "echo", Limits.from_overrides(["echo_samples=2e9"]))  # raised by --limit
