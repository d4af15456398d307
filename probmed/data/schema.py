"""The shard schema: what one webdataset sample (= one study) holds, and the names everything else shares.

A study is stored as the files of one webdataset sample, all with the same key (the study id, which must
not contain a dot because webdataset splits the key from the extension at the first dot):

=====================  =========================================================================================
file (``<key>.<ext>``)  content
=====================  =========================================================================================
``json``               metadata (UTF-8 JSON object, see :data:`META_FIELDS`)
``cxr.<i>.dcm``        chest X-ray view ``i`` (0, 1, ...) as a DICOM file; its ViewPosition is in the header and in
                       ``meta["cxr_views"][i]``; real-data shards may hold ``cxr.<i>.png`` / ``cxr.<i>.jpg`` instead
                       (read by extension, see :data:`probmed.data.readers.cxr.CXR_READERS`)
``ecg.npy``            12-lead ECG, ``int16`` array ``[leads, samples]`` in microvolts, lead order
                       ``meta["ecg_leads"]``, sampling rate ``meta["ecg_sampling_rate"]`` (Hz); NumPy ``.npy``
                       format, always read with ``allow_pickle=False``; ``meta["ecg_lead_mask"]`` (0/1 per lead,
                       optional) marks leads the source file lacked (their rows are zero)
``echo.npy``           echocardiogram cine, ``uint8`` array ``[frames, height, width]`` (grey levels), frame rate
                       ``meta["echo_fps"]`` (frames/s)
``report.txt``         free-text report (UTF-8) with ``FINDINGS:`` and ``IMPRESSION:`` sections
=====================  =========================================================================================

These are the files of the modalities registered by default (:mod:`probmed.data.registry`, which also says which
modality a file belongs to and which modalities load by default); a data config can read
others (e.g. ``ct.<i>.dcm`` through ``data.inputs.ct``). Any subset of the modalities may be present; ``json``
always is. Extensions that could execute code when
decoded (pickle and friends) are refused by the decoder, never decoded.
"""
from __future__ import annotations

#: The hidden clinical findings of the embedded corpus, in label-vector order (multi-label, 0/1).
FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion",
    "atrial_fibrillation",
    "bradycardia",
    "tachycardia",
    "reduced_ef",
    "lvh",
)

#: Standard 12-lead order used by the corpus and expected by the ECG encoder.
ECG_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

#: Keys of the ``json`` metadata.  ``study_id``, ``patient_id`` and ``split`` are required; ``findings`` maps
#: each name in :data:`FINDINGS` to 0/1 when labels are known; the rest describe the stored signals.
META_FIELDS: tuple[str, ...] = (
    "study_id",
    "patient_id",
    "split",
    "findings",
    "cxr_views",
    "ecg_leads",
    "ecg_sampling_rate",
    "echo_fps",
)

#: Default shard file names of the registered modalities (``cxr`` views are numbered: ``cxr.0.dcm``, ...); the
#: pipelines of :mod:`probmed.data.inputs` take them as defaults, a config may name others.
CXR_PREFIX = "cxr."
ECG_EXT = "ecg.npy"
ECHO_EXT = "echo.npy"
REPORT_EXT = "report.txt"
META_EXT = "json"

#: Extensions whose decoding could execute code; a sample carrying one is refused.
FORBIDDEN_EXTS: tuple[str, ...] = ("pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib", "npz")

#: Splits written by the shard builders; shards are named ``<split>-%06d.tar`` in the dataset directory,
#: beside a ``sizes.json`` that maps each shard file name to its number of samples.
SPLITS: tuple[str, ...] = ("train", "val", "test")
SIZES_FILE = "sizes.json"
SHARD_PATTERN = "{split}-%06d.tar"

