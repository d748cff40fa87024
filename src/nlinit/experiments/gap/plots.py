"""The figures of ``nlinit gap``: one PNG per section, drawn from the rows alone (matplotlib, Agg)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ...theory import corollary_L  # noqa: E402
from .rows import CorollaryRow, Fig32Row, RemarkRow  # noqa: E402

__all__ = ["plot_corollary", "plot_fig32", "plot_remark"]


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write the figure as PNG to a temporary name, then move it into place (no partial file)."""
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_fig32(rows: Sequence[Fig32Row], path: Path) -> Path:
    """Heatmap of the Fig 3.2 quantity over (n, rank scale), and the same as lines against n."""
    ns = sorted({r.n for r in rows})
    scales = sorted({r.rank_scale for r in rows})
    Z = np.array(
        [[next(x.value for x in rows if x.n == n and x.rank_scale == s) for n in ns] for s in scales]
    )
    fig, (ax_map, ax_line) = plt.subplots(1, 2, figsize=(13, 4.8))
    im = ax_map.imshow(Z, origin="lower", aspect="auto", cmap="viridis")
    ax_map.set_xticks(range(len(ns)), [str(n) for n in ns])
    ax_map.set_yticks(range(len(scales)), [f"{s:g}" for s in scales])
    ax_map.set(xlabel="n  (m = n^1.5 units, d = 0.2 n inputs)", ylabel="rank scale r/d")
    fig.colorbar(im, ax=ax_map, label=r"$\frac{1}{2d}\|g(\rho) - \rho\|^2$")
    ax_map.set_title("Fig 3.2: SVD subspace's gap lower bound")
    for s in scales[:: max(1, len(scales) // 5)]:
        mine = [x for x in rows if x.rank_scale == s]
        ax_line.plot([x.n for x in mine], [x.value for x in mine], marker="o", label=f"rank scale {s:g}")
    ax_line.set(xlabel="n", ylabel=r"$\frac{1}{2d}\|g(\rho) - \rho\|^2$", title="against n")
    ax_line.grid(alpha=0.3)
    ax_line.legend(fontsize=8)
    return _save(fig, path)


def plot_corollary(rows: Sequence[CorollaryRow], best: str, path: Path) -> Path:
    """Per-unit gap against r/d: measured, Theorem 3.3.9, the corollary's limit; margins beside."""
    fig, (ax, ax_m) = plt.subplots(1, 2, figsize=(13, 4.8))
    x = np.linspace(0.0, 1.0, 201)
    ax.plot(
        x,
        corollary_L(np.sqrt(x)) / (2 * math.pi**2),
        "k-",
        lw=1.5,
        label=r"$L(\sqrt{r/d})/(2\pi^2)$ (m/d $\to\infty$)",
    )
    groups = sorted({(r.d, r.m // r.d) for r in rows})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (d, ratio) in enumerate(groups):
        mine = [r for r in rows if r.d == d and r.m == ratio * d]
        c = colors[j % len(colors)]
        xs = [r.r_over_d for r in mine]
        ax.plot(xs, [r.gap for r in mine], "o", color=c, label=f"measured, d={d}, m/d={ratio}")
        ax.plot(xs, [r.theorem_339 for r in mine], "x", color=c, ms=7)
        ax_m.plot(xs, [r.margin for r in mine], "o-", color=c, label=f"d={d}, m/d={ratio}")
    ax.set(
        xlabel="r / d",
        ylabel="per-unit gap",
        title=f"Cor 3.3.11: (1/m)(R(spectral) - R({best})); x: Thm 3.3.9",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax_m.axhline(0.0, color="k", lw=1)
    ax_m.set(
        xlabel="r / d", ylabel="measured - L(sqrt(r/d))/(2 pi^2)", title="margin over the corollary's value"
    )
    ax_m.grid(alpha=0.3)
    ax_m.legend(fontsize=7)
    return _save(fig, path)


def plot_remark(rows: Sequence[RemarkRow], path: Path) -> Path:
    """Fig 3.3: the bound on mean rho against rank scale per m/d (both readings), measured mean rho dots."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    ratios = sorted({r.m_over_d for r in rows})
    cmap = plt.get_cmap("viridis")
    for ax, attr, title in (
        (axes[0], "bound", "Remark 3.3.12, union term (d/m) r log(d/r)"),
        (axes[1], "bound_per_unit_reading", "the other reading, union term r log(d/r) / m"),
    ):
        for j, ratio in enumerate(ratios):
            mine = [r for r in rows if r.m_over_d == ratio]
            c = cmap(j / max(1, len(ratios) - 1))
            xs = [r.rank_scale for r in mine]
            ax.plot(xs, [getattr(r, attr) for r in mine], "-", color=c, label=f"m/d = {ratio}")
            ax.plot(xs, [r.measured_mean_rho for r in mine], "o", color=c, ms=3.5)
        xs = sorted({r.rank_scale for r in rows})
        ax.plot(xs, np.sqrt(xs), "k--", lw=1.2, label="sqrt(rank scale)")
        ax.set(xlabel="rank scale r/d", title=title)
        ax.grid(alpha=0.3)
    d = rows[0].d
    axes[0].set_ylabel(f"mean rho, d = {d} (lines: bound; dots: measured)")
    axes[0].legend(fontsize=7, ncol=2)
    return _save(fig, path)
