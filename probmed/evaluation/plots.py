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
from torch import Tensor  # noqa: E402


def _grid(n: int, size: float = 3.0) -> tuple[Figure, list]:
    cols = min(4, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat


def reliability_figure(bins: dict[str, dict[str, Tensor]]) -> Figure:
    """One panel per modality: fraction positive against mean predicted P(finding) per bin, with bin counts."""
    fig, axes = _grid(len(bins))
    for ax, (name, b) in zip(axes, sorted(bins.items())):
        edges = b["edges"].numpy()
        centers = (edges[:-1] + edges[1:]) / 2
        ax.bar(centers, b["frequency"].nan_to_num(0).numpy(), width=edges[1] - edges[0], alpha=0.6, edgecolor="k",
               label="fraction positive")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.plot(b["confidence"].numpy(), b["frequency"].numpy(), "o-", color="C3", label="per bin")
        ax.set(title=f"{name} zero-shot", xlabel="predicted P(finding)", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def risk_coverage_figure(curves: dict[str, tuple[Tensor, Tensor]]) -> Figure:
    """Risk (1 − R@1 of the kept queries) against coverage, abstaining on the largest variance first."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (coverage, risk) in sorted(curves.items()):
        ax.plot(coverage.numpy(), risk.numpy(), label=name, lw=1.2)
    ax.set(xlabel="coverage", ylabel="risk (1 − R@1)", xlim=(0, 1), ylim=(0, 1.02), title="risk–coverage")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def similarity_figure(matrices: dict[str, Tensor]) -> Figure:
    """Query × gallery similarity of the first studies of each pair (true partners on the diagonal)."""
    fig, axes = _grid(len(matrices))
    for ax, (name, m) in zip(axes, sorted(matrices.items())):
        im = ax.imshow(m.numpy(), cmap="viridis")
        ax.set(title=name, xlabel="gallery study", ylabel="query study")
        fig.colorbar(im, ax=ax, fraction=0.046)
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
