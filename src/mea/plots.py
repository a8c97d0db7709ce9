"""Figures written beside the numbers (matplotlib, no display needed).

matplotlib is imported on the first figure, not with this module: a served victim and every
`mea` command that draws nothing would otherwise pay for it at start-up (0.4 s).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def confusion_matrix_png(matrix: list[list[int]], title: str, path: Path) -> None:
    """A 10x10 confusion matrix, counts in each cell, rows normalised for the colour."""
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=120)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(counts.shape[1]))
    ax.set_yticks(range(counts.shape[0]))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def roc_png(curves: dict[str, tuple], title: str, path: Path, in_distribution: str) -> None:
    """ROC curves, one per source: {name: (false-positive rates, true-positive rates, AUROC)}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.8), dpi=120)
    for name, (fpr, tpr, auroc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc:.4f})")
    diagonal = np.linspace(0, 1, 500)  # many points: the axis is logarithmic near zero
    ax.plot(diagonal, diagonal, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"false-positive rate: {in_distribution} test flagged (log scale below 0.1%)")
    ax.set_ylabel("true-positive rate: queries flagged")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def line_plot(
    series: dict[str, tuple[list[float], list[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
    annotations: list[str] | None = None,
    spreads: dict[str, list[float]] | None = None,
    logx: bool = False,
    references: dict[str, float] | None = None,
) -> None:
    """Lines with markers, one per series: {name: (xs, ys)}; optional point labels, error bars
    (spreads: {name: deviations}) and horizontal reference lines ({label: y})."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    for name, (xs, ys) in series.items():
        if spreads and name in spreads:
            ax.errorbar(xs, ys, yerr=spreads[name], marker="o", markersize=4, capsize=3, label=name)
        else:
            ax.plot(xs, ys, marker="o", markersize=4, label=name)
        for x, y, text in zip(xs, ys, annotations or [], strict=False):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="dimgrey")
    for label, y in (references or {}).items():
        ax.axhline(y, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            label,
            (0.01, y),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=7,
            color="dimgrey",
        )
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
