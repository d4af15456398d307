"""``probmed data ...`` commands: ``synth`` (embedded demo corpus), ``build`` (real files → de-identified shards),
``manifest`` (a manifest CSV for a public dataset layout).

The top-level ``probmed`` CLI forwards ``probmed data <args>`` to :func:`main`.

Example::

    probmed data synth --out data_shards/demo --studies 3000 --seed 0 --workers 2 \\
        --missing cxr=0.1,ecg=0.15,echo=0.2,text=0 --splits 0.8,0.1,0.1
"""
from __future__ import annotations

import argparse
import json
import sys

from probmed.data.burned_in_text import OCRUnavailable, default_policy
from probmed.data.registry import default_modalities
from probmed.data.synthetic.plan import EXTRA_MODALITIES


def _parse_missing(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if not text.strip():
        return out
    for part in text.split(","):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected modality=fraction, got {part!r}")
        name, value = (s.strip() for s in part.split("=", 1))
        if name not in (*default_modalities(), *EXTRA_MODALITIES):
            raise argparse.ArgumentTypeError(f"unknown modality {name!r} (known: "
                                             f"{', '.join((*default_modalities(), *EXTRA_MODALITIES))})")
        try:
            frac = float(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from exc
        if not 0.0 <= frac <= 1.0:
            raise argparse.ArgumentTypeError(f"{name}: missing fraction must be in [0, 1]")
        out[name] = frac
    return out


def _parse_splits(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"splits must be three numbers, got {text!r}") from exc
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise argparse.ArgumentTypeError("splits must be three non-negative fractions train,val,test")
    return parts  # type: ignore[return-value]


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probmed data", description="Create ProbMed webdataset shards.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_synth, _add_build, _add_check, _add_unpair, _add_manifest, _add_link):
        add(sub)
    return parser


def _add_synth(sub) -> None:
    """``probmed data synth``: the embedded corpus."""
    s = sub.add_parser(
        "synth",
        help="generate the embedded synthetic corpus (CXR DICOM, 12-lead ECG, echo cine, report text)",
        description="Generate studies whose four modalities share hidden clinical findings, as webdataset "
        "shards <split>-%%06d.tar plus sizes.json.",
    )
    s.add_argument("--out", required=True, help="output directory (existing <split>-NNNNNN.tar shards in it "
                   "are replaced)")
    s.add_argument("--studies", type=_positive_int, default=3000, help="number of studies (default 3000)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--missing", type=_parse_missing, default={}, metavar="M=F,...",
                   help="fraction of studies lacking each modality (default cxr=0.1,ecg=0.15,echo=0.2,text=0)")
    s.add_argument("--splits", type=_parse_splits, default=(0.8, 0.1, 0.1), metavar="TRAIN,VAL,TEST",
                   help="split fractions, assigned by patient (default 0.8,0.1,0.1)")
    s.add_argument("--cxr-size", type=_positive_int, default=256, help="CXR side in pixels (default 256)")
    s.add_argument("--echo-size", type=_positive_int, default=64, help="echo frame side in pixels (default 64)")
    s.add_argument("--echo-frames", type=_positive_int, default=16, help="echo frames per cine (default 16)")
    s.add_argument("--echo-fps", type=float, default=None,
                   help="echo frame rate (default: frames / 1.25 s, i.e. about 1-2 beats)")
    s.add_argument("--ecg-rate", type=_positive_int, default=250, help="ECG sampling rate in Hz (default 250)")
    s.add_argument("--ecg-seconds", type=float, default=10.0, help="ECG length in seconds (default 10)")
    s.add_argument("--shard-size", type=_positive_int, default=200, help="max studies per shard (default 200)")
    s.add_argument("--workers", type=int, default=2, help="worker processes (default 2; 1 = in-process)")
    s.add_argument("--lateral-fraction", type=float, default=0.3,
                   help="fraction of CXR studies with an extra lateral view (default 0.3)")
    s.add_argument("--cache-dir", default=None,
                   help="ECG bank cache (default $PROBMED_CACHE/ecg_bank or ~/.cache/probmed/ecg_bank)")
    s.add_argument("--no-cache", action="store_true", help="do not cache the ECG bank on disk")
    s.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    s.add_argument("--extra-modalities", nargs="+", default=[], choices=sorted(EXTRA_MODALITIES), metavar="M",
                   help="opt-in modalities to add, drawn from their own random streams so the other files do not "
                   f"change: {', '.join(sorted(EXTRA_MODALITIES))} (an axial chest CT slice, missing in 20 %% of "
                   "studies unless --missing says otherwise)")
    s.add_argument("--ct-size", type=_positive_int, default=128, help="CT slice side in pixels (default 128)")
    s.add_argument("--no-ambiguity", action="store_true",
                   help="render every study clean, without borderline studies and without the metadata's "
                   "'ambiguity' / 'quality' keys: the corpus of before issue 25, byte for byte")
    s.set_defaults(func=_cmd_synth)


def _add_build(sub) -> None:
    """``probmed data build``: a manifest to de-identified shards."""
    b = sub.add_parser(
        "build",
        help="real study files listed in a manifest CSV -> de-identified shards (resumable, parallel)",
        description="Convert the studies of a manifest (see probmed.data.manifest) into de-identified shards "
        "<split>-%%06d.tar plus sizes.json. Finished shards are kept on a rerun; skipped inputs are summarised.",
    )
    b.add_argument("--manifest", required=True, help="manifest CSV (e.g. from `probmed data manifest ...`)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--salt", default=None, help="secret salt of the study/patient pseudonyms (default: "
                   "$PROBMED_DEID_SALT); never stored")
    b.add_argument("--maxcount", type=_positive_int, default=200, help="max studies per shard (default 200)")
    b.add_argument("--maxsize", type=float, default=None, help="max input bytes per shard (default: no limit)")
    b.add_argument("--dry-run", action="store_true", help="write nothing: the same as `probmed data check`")
    _conversion_options(b)
    b.set_defaults(func=_cmd_build)


def _add_check(sub) -> None:
    """``probmed data check``: the dry run of build."""
    c = sub.add_parser(
        "check",
        help="dry run of build: read every file of a manifest, count per modality what would be used / skipped",
        description="Read and convert every file a manifest references as `build` would, write nothing, and "
        "print per modality how many inputs will be used or skipped (and why) and the label vocabulary with its "
        "counts. Exits 1 when no study has a usable input.",
    )
    c.add_argument("--manifest", required=True, help="manifest CSV")
    _conversion_options(c)
    c.set_defaults(func=_cmd_check)


def _add_unpair(sub) -> None:
    """``probmed data unpair``: a shard set whose studies never pair some modalities."""
    u = sub.add_parser("unpair", help="copy a shard set so that no study keeps more than one of some modalities",
                       description="Copy a shard set; in the given splits, a study holding several of --modalities "
                       "keeps one of them (by a hash of its id), so those modalities never co-occur (M3Bind).")
    u.add_argument("--src", required=True, help="the shard set to copy")
    u.add_argument("--out", required=True, help="output directory")
    u.add_argument("--modalities", nargs="+", required=True, help="the modalities to unpair, e.g. cxr ecg")
    u.add_argument("--splits", nargs="+", default=["train"], help="splits to unpair (default: train)")
    u.set_defaults(func=_cmd_unpair)


def _add_manifest(sub) -> None:
    """``probmed data manifest``: a manifest for a public dataset layout."""
    from probmed.data.manifests import MAKERS

    m = sub.add_parser("manifest", help="write a manifest CSV for a public dataset layout",
                       description="Scan a public dataset's directory tree and write the manifest "
                       "`probmed data build` reads.")
    m.add_argument("dataset", choices=sorted(MAKERS), help="dataset layout")
    m.add_argument("--root", required=True, help="the dataset's root directory (as downloaded)")
    m.add_argument("--out", required=True, help="manifest CSV to write")
    m.add_argument("--reports-root", default=None,
                   help="mimic-cxr: directory holding files/pXX/pNNNNNNNN/sNNNNNNNN.txt (default: --root)")
    m.add_argument("--echo-root", default=None,
                   help="mimic-iv-note: the MIMIC-IV-ECHO root, whose echo-study-list.csv links reports (note_id) to "
                   "echo studies")
    m.add_argument("--link-field", default="study_id",
                   help="mimic-iv-note: the radiology_detail field_name whose value is the id of the study a note "
                   "describes (default study_id; MIMIC-IV-Note v2.2 has none)")
    m.add_argument("--min-frames", type=_positive_int, default=16,
                   help="mimic-iv-echo: fewest frames of the DICOM kept as a study's cine (default 16)")
    m.set_defaults(func=_cmd_manifest)


def _add_link(sub) -> None:
    """``probmed data link``: one-modality manifests joined into multimodal studies (:mod:`probmed.data.link`)."""
    k = sub.add_parser("link", help="join one-modality manifests into multimodal studies by patient and time",
                       description="Join manifests around an anchor modality: each other modality within its time "
                       "window (nearest wins) or of the same study; write one manifest and a report.")
    k.add_argument("--manifest", action="append", required=True, metavar="MODALITY=CSV",
                   help="a source manifest and the modality it contributes (cxr, ecg, echo, text); repeat")
    k.add_argument("--anchor", required=True, help="the modality whose studies become the output studies")
    k.add_argument("--window", action="append", default=[], metavar="MODALITY=WINDOW",
                   help="per non-anchor modality: a duration (30m, 24h, 7d; before or after, ends included) or "
                   "same-study; repeat")
    k.add_argument("--patient-map", default=None,
                   help="CSV mapping patient ids across sources (columns: source names, optionally 'patient')")
    k.add_argument("--splits", type=_parse_splits, default=(0.8, 0.1, 0.1), metavar="TRAIN,VAL,TEST",
                   help="split fractions by patient over the joined cohort (default 0.8,0.1,0.1)")
    k.add_argument("--out", required=True, help="the joined manifest CSV to write")
    k.add_argument("--report", default=None, help="report JSON (default: <out>.report.json)")
    k.set_defaults(func=_cmd_link)


def _conversion_options(b: argparse.ArgumentParser) -> None:
    """The options of how each modality is converted (shared by ``build`` and its dry run ``check``)."""
    b.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    b.add_argument("--cxr-size", type=int, default=None,
                   help="store larger radiographs decoded and shrunk to this longer side as 16-bit PNG "
                   "(default: keep the de-identified DICOM)")
    b.add_argument("--ecg-rate", type=float, default=None, help="resample ECGs to this rate in Hz (default: keep)")
    b.add_argument("--ecg-clean", action="store_true", help="clean ECG leads with neurokit2 ecg_clean")
    b.add_argument("--echo-size", type=int, default=112, help="echo frame side in pixels (default 112; 0 = keep)")
    b.add_argument("--echo-fps", type=float, default=None, help="frame rate for cines that do not state one")
    b.add_argument("--fit", choices=("pad", "crop"), default="pad",
                   help="how a non-square cine becomes square at --echo-size: pad (default) or centre-crop")
    b.add_argument("--drop-burned-in", action="store_true",
                   help="skip DICOM views that declare BurnedInAnnotation=YES (default: keep and report)")
    b.add_argument("--us-blank", choices=("sector", "header", "none"), default="sector",
                   help="blank echo pixels outside the imaging sector (default), the top header band, or nothing")
    b.add_argument("--keep-burned-in", action="store_true",
                   help="write cines whose header says BurnedInAnnotation=YES even when not blanked by their sector")
    b.add_argument("--burned-in-text", choices=("blank", "refuse", "off"), default=default_policy(),
                   help="text OCR finds in CXR pixels and inside the echo sector, whatever BurnedInAnnotation says: "
                   "blank it (default), refuse the view or cine (counted as <modality>_burned_in_text), or do not "
                   "look (off: no Tesseract needed); the default is $PROBMED_BURNED_IN_TEXT when set")
    b.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="a directory input files may lie in besides the manifest's own (repeatable); a path that "
                   "resolves (symlinks followed) anywhere else is refused as path_outside_root")
    b.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="change a resource limit (repeatable; names and defaults: probmed.data.limits, "
                   "docs/fault_tolerance.md), e.g. --limit image_side=16384")
    b.add_argument("--quiet", action="store_true", help="no progress bar on stderr")


def _options(args: argparse.Namespace):
    from probmed.data.builder import BuildOptions
    from probmed.data.limits import Limits

    return BuildOptions(roots=tuple(args.root), limits=Limits.from_overrides(args.limit),
                        cxr_size=args.cxr_size, ecg_rate=args.ecg_rate, ecg_clean=args.ecg_clean,
                        echo_size=args.echo_size or None, echo_fps=args.echo_fps, drop_burned_in=args.drop_burned_in,
                        fit=args.fit, us_blank=args.us_blank, keep_burned_in=args.keep_burned_in,
                        burned_in_text=args.burned_in_text)


def _cmd_build(args: argparse.Namespace) -> int:
    from probmed.data.builder import build_dataset

    if args.dry_run:
        return _cmd_check(args)
    summary = build_dataset(args.manifest, args.out, salt=args.salt, maxcount=args.maxcount,
                            maxsize=int(args.maxsize) if args.maxsize else None, workers=args.workers,
                            options=_options(args), progress=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items() if k != "sizes"}, indent=1))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """Print the dry run's report on stdout: studies, then per modality its used / skipped counts followed by up to
    a few example causes of that modality's skips, then the label table; exit 1 (stderr) when nothing is usable."""
    from probmed.data.builder import check_dataset

    summary = check_dataset(args.manifest, _options(args), workers=args.workers, progress=not args.quiet)
    print(f"{summary['studies']} studies, {summary['usable_studies']} with a usable input")
    print("inputs: used / skipped (causes), then example skips")
    for name, counts in summary["modalities"].items():
        reasons = ", ".join(f"{r} {n}" for r, n in counts["skipped"].items()) or "-"
        print(f"  {name:<8} used {counts['used']:>6}   skipped {sum(counts['skipped'].values()):>6}   {reasons}")
        for example in (e for e in summary["skipped_examples"] if e["modality"] == name):
            print(f"      e.g. study {example['source_study']}: {example['detail'] or example['reason']}")
    print(f"labels ({len(summary['labels'])}): positive / negative / uncertain / missing")
    for label, c in summary["labels"].items():
        print(f"  {label:<28} {c['positive']:>6} {c['negative']:>6} {c['uncertain']:>6} {c['missing']:>6}")
    sys.stdout.flush()
    if not summary["usable_studies"]:
        print("probmed data check: no usable study in the manifest", file=sys.stderr)
        return 1
    return 0


def _cmd_link(args: argparse.Namespace) -> int:
    from probmed.data.link import format_report, link_manifests, name_value_pairs

    report = link_manifests(name_value_pairs(args.manifest, "--manifest"), args.anchor,
                            name_value_pairs(args.window, "--window"), args.out, patient_map=args.patient_map,
                            splits=args.splits, report_path=args.report)
    print(format_report(report))
    return 0


def _cmd_manifest(args: argparse.Namespace) -> int:
    from probmed.data.manifests import MAKERS

    from probmed.data.manifest import read_manifest

    extra = {"reports_root": args.reports_root} if args.dataset == "mimic-cxr" and args.reports_root else {}
    if args.dataset == "mimic-iv-note":
        extra = {"echo_root": args.echo_root, "link_field": args.link_field}
    elif args.dataset == "mimic-iv-echo":
        extra = {"min_frames": args.min_frames}
    path, count = MAKERS[args.dataset](args.root, args.out, **extra)
    untimed = sum(entry.acquired_at is None for entry in read_manifest(path))
    print(f"wrote {count} studies to {path} ({untimed} without acquired_at: unknown, not guessed)")
    return 0


def _cmd_unpair(args: argparse.Namespace) -> int:
    from probmed.data.unpair import unpair_shards

    print(json.dumps(unpair_shards(args.src, args.out, args.modalities, tuple(args.splits)), indent=1))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from probmed.data.synthetic import generate_corpus

    cache = False if args.no_cache else (args.cache_dir if args.cache_dir else True)
    summary = generate_corpus(
        args.out,
        args.studies,
        args.seed,
        missing=args.missing,
        splits=args.splits,
        cxr_size=args.cxr_size,
        echo_size=args.echo_size,
        echo_frames=args.echo_frames,
        echo_fps=args.echo_fps,
        ecg_rate=args.ecg_rate,
        ecg_seconds=args.ecg_seconds,
        shard_size=args.shard_size,
        workers=args.workers,
        lateral_fraction=args.lateral_fraction,
        cache_dir=cache,
        progress=not args.quiet,
        extra_modalities=tuple(args.extra_modalities),
        ct_size=args.ct_size,
        ambiguity=not args.no_ambiguity,
    )
    brief = {k: summary[k] for k in ("out_dir", "n_studies", "n_patients", "split_counts", "normal_fraction",
                                     "findings_prevalence", "modality_presence", "seconds", "studies_per_s",
                                     "bank_seconds", "profile_ms")}
    brief |= {k: summary[k] for k in ("borderline_fraction", "ambiguity_mean") if k in summary}
    brief["shards"] = len(summary["shards"])
    print(json.dumps(brief, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``probmed data ...``: a user's mistake (:data:`probmed.user_errors.USER_ERRORS`: a missing root, a bad
    manifest) prints one line on stderr and returns 2; ``--debug`` / ``PROBMED_DEBUG=1`` re-raises it."""
    from probmed.user_errors import USER_ERRORS, debug_requested, report

    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    try:
        return int(args.func(args))
    except (*USER_ERRORS, OCRUnavailable) as exc:
        if debug_requested(sys.argv[1:]):
            raise
        return report(exc, words, program=f"probmed data {args.command}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
