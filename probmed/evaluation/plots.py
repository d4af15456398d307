"""Evaluation figures (matplotlib, headless): reliability diagram, risk–coverage, similarity matrices, robustness.

Each ``*_figure`` returns a ``matplotlib.figure.Figure``; :func:`publish` sends figures to TensorBoard and writes
them as PNG under ``<log_dir>/plots/<stage>/``.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torch import Tensor  # noqa: E402


def _grid(n: int, size: float = 3.0) -> tuple[Figure, list]:
    cols = min(4, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat


def bins_ece(b: dict[str, Tensor]) -> float:
    """ECE from :func:`~probmed.evaluation.uncertainty.reliability_bins`:
    ``sum_b n_b/N · |confidence − frequency|``."""
    count = b["count"].double()
    gap = (b["confidence"].double() - b["frequency"].double()).abs().nan_to_num(0.0)
    total = float(count.sum())
    return float((count * gap).sum()) / total if total else math.nan


def reliability_figure(bins: dict[str, dict[str, Tensor]]) -> Figure:
    """One panel per entry (e.g. ``cxr raw`` and ``cxr T=1.7``: raw and temperature-scaled side by side): fraction
    positive against mean predicted P(finding) per bin, the ECE in the title and each bin's count above its bar."""
    fig, axes = _grid(len(bins))
    for ax, (name, b) in zip(axes, bins.items()):
        edges = b["edges"].numpy()
        centers = (edges[:-1] + edges[1:]) / 2
        freq = b["frequency"].nan_to_num(0).numpy()
        ax.bar(centers, freq, width=edges[1] - edges[0], alpha=0.6, edgecolor="k", label="fraction positive")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.plot(b["confidence"].numpy(), b["frequency"].numpy(), "o-", color="C3", label="per bin")
        for x, y, n in zip(centers, freq, b["count"].tolist()):
            if n:
                ax.text(x, min(y + 0.02, 0.93), f"{int(n)}", ha="center", fontsize=6)
        ax.set(title=f"{name}  ECE {bins_ece(b):.3f}", xlabel="predicted P(finding)", ylabel="observed frequency",
               xlim=(0, 1), ylim=(0, 1))
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def risk_coverage_figure(curves: dict[str, dict]) -> Figure:
    """A panel per ordered pair: risk (1 − R@1 of the kept queries) against coverage when abstaining on each
    uncertainty signal, with the oracle (misses abstained on first) and random (the error rate) references; the
    legend gives each signal's AURC; the y-axis spans the random line and the signals' risks from 10 % coverage on
    (the oracle may leave it).

    Args:
        curves: ``{pair: {"oracle": (coverage, risk), "random": error rate, signal: (coverage, risk, aurc)}}``.
    """
    fig, axes = _grid(len(curves))
    for ax, (name, by) in zip(axes, sorted(curves.items())):
        coverage, risk = by["oracle"]
        ax.plot(coverage.numpy(), risk.numpy(), "k:", lw=1, label=f"oracle {float(risk.mean()):.3f}")
        ax.axhline(by["random"], color="0.5", ls="--", lw=1, label=f"random {by['random']:.3f}")
        shown = [by["random"]]  # the y-range: the random line and the signals' risks from 10 % coverage on
        signals = [(k, v) for k, v in by.items() if k not in ("oracle", "random")]
        for i, (signal, (coverage, risk, area)) in enumerate(signals):
            ax.plot(coverage.numpy(), risk.numpy(), color=f"C{i}", lw=1.1, label=f"{signal} {area:.3f}")
            shown += risk[coverage >= 0.1].tolist()
        lo, hi = min(shown), max(shown)
        pad = max(0.02, 0.08 * (hi - lo))
        ax.set(xlabel="coverage", ylabel="risk (1 − R@1)", xlim=(0, 1), title=name,
               ylim=(max(0.0, lo - pad), min(1.0, hi + pad) + 1e-3))
        ax.legend(fontsize=5, loc="lower right", title="AURC", title_fontsize=5)
    fig.tight_layout()
    return fig


def similarity_figure(matrices: dict[str, Tensor]) -> Figure:
    """A panel per unordered modality pair (``a->b``; ``b->a`` is its transpose for the symmetric similarities the
    objectives train, so the panels cover every pair): the pair's retrieval score between the first studies holding
    both (rows: the studies as ``a`` queries, columns: the same studies as ``b`` gallery; true partners on the
    diagonal), each with a colour bar labelled in the score's units."""
    fig, axes = _grid(len(matrices))
    for ax, (name, m) in zip(axes, sorted(matrices.items())):
        query, gallery = name.split("->") if "->" in name else (name, "")
        im = ax.imshow(m.numpy(), cmap="viridis")
        ax.set(title=f"{name} ({len(m)} studies)", xlabel=f"{gallery} gallery study", ylabel=f"{query} query study")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))  # study indices
        bar = fig.colorbar(im, ax=ax, fraction=0.046)
        bar.set_label("similarity score (higher = closer)", fontsize=7)
    fig.suptitle("every modality pair: query × gallery score, true partners on the diagonal", fontsize=9)
    fig.tight_layout()
    return fig


def severity_figure(results: dict[str, dict[float, dict[str, float]]]) -> Figure:
    """Per corruption: mean R@1 (left) and mean predicted variance (right) against severity."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, by_severity in sorted(results.items()):
        sev = sorted(by_severity)
        left.plot(sev, [by_severity[s]["mean_R@1"] for s in sev], "o-", label=name)
        right.plot(sev, [by_severity[s]["variance"] for s in sev], "o-", label=name)
    left.set(xlabel="severity", ylabel="mean R@1 (%) as query", title="retrieval under corruption")
    right.set(xlabel="severity", ylabel="mean predicted variance", title="variance under corruption")
    left.legend(fontsize=7)
    fig.tight_layout()
    return fig


def publish(figures: dict[str, Figure], experiment, log_dir: str | None, stage: str, step: int) -> list[Path]:
    """Log each figure to TensorBoard (``<stage>/<name>``, if ``experiment`` can ``add_figure``) and save it as
    ``<log_dir>/plots/<stage>/<name>.png`` (overwritten each epoch). Returns the PNG paths."""
    written = []
    for name, fig in figures.items():
        if log_dir:
            path = Path(log_dir) / "plots" / stage / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=90)
            written.append(path)
        if experiment is not None and hasattr(experiment, "add_figure"):
            experiment.add_figure(f"{stage}/{name}", fig, global_step=step, close=False)
        plt.close(fig)
    return written
