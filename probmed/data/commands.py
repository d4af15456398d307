"""``probmed data ...`` commands: ``synth`` (embedded demo corpus); room for ``build`` (real files → shards).

The top-level ``probmed`` CLI forwards ``probmed data <args>`` to :func:`main`.

Example::

    probmed data synth --out data_shards/demo --studies 3000 --seed 0 --workers 2 \\
        --missing cxr=0.1,ecg=0.15,echo=0.2,text=0 --splits 0.8,0.1,0.1
"""
from __future__ import annotations

import argparse
import json
import sys

from probmed.data.schema import MODALITIES


def _parse_missing(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if not text.strip():
        return out
    for part in text.split(","):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected modality=fraction, got {part!r}")
        name, value = (s.strip() for s in part.split("=", 1))
        if name not in MODALITIES:
            raise argparse.ArgumentTypeError(f"unknown modality {name!r} (known: {', '.join(MODALITIES)})")
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
    s.set_defaults(func=_cmd_synth)
    # `build` (real DICOM / WFDB / XML files -> de-identified shards) is added here by the real-data builder.
    return parser


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
    )
    brief = {k: summary[k] for k in ("out_dir", "n_studies", "n_patients", "split_counts", "normal_fraction",
                                     "findings_prevalence", "modality_presence", "seconds", "studies_per_s",
                                     "bank_seconds", "profile_ms")}
    brief["shards"] = len(summary["shards"])
    print(json.dumps(brief, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"probmed data {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
