"""Compare initializations on one model: factorize a fresh copy per (rank scale, init) and summarize."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..factorize import factorize
from ..report import FactorizeReport

__all__ = ["InitSpec", "Row", "compare_inits", "markdown_table"]


@dataclass(frozen=True)
class InitSpec:
    """An init and its options, with the label used in tables (e.g. "lfai-ws (exact)")."""

    init: str
    options: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.init


@dataclass
class Row:
    """One (rank scale, init) cell: totals over the factorized layers of one model."""

    rank_scale: float
    init: str
    label: str
    seconds: float  # sum of per-layer init seconds (the init only; no report objectives)
    mean_objective: float  # mean per-layer R/R(0) of the init
    mean_objective_spectral: float  # the same for spectral, on the same W
    share_better: float  # share of layers where the init's objective < spectral's
    layers: int
    per_layer: list[dict[str, Any]] = field(default_factory=list)


def _row(rank_scale: float, spec: InitSpec, report: FactorizeReport) -> Row:
    done = report.factorized
    better = [x for x in done if (x.objective_init or 0.0) < (x.objective_spectral or 0.0) * (1 - 1e-9)]
    return Row(
        rank_scale,
        spec.init,
        spec.name,
        sum(x.seconds for x in done),
        report.mean_objective("init"),
        report.mean_objective("spectral"),
        len(better) / max(len(done), 1),
        len(done),
        [asdict(x) for x in done],
    )


def compare_inits(
    build: Callable[[], nn.Module],
    rank_scales: Sequence[float],
    specs: Sequence[InitSpec],
    *,
    progress: Callable[[str], None] | None = None,
    **factorize_kwargs: Any,
) -> list[Row]:
    """Factorize ``build()`` once per (rank scale, init) with the same seed, so every init sees the same W.

    ``factorize_kwargs`` go to :func:`nlinit.factorize` (source, seed, activation, ...).
    """
    rows = []
    for s in rank_scales:
        for spec in specs:
            if progress is not None:
                progress(f"rank scale {s}, init {spec.name}")
            report = factorize(
                build(), rank_scale=s, init=spec.init, **dict(spec.options), **factorize_kwargs
            )
            rows.append(_row(s, spec, report))
    return rows


def markdown_table(rows: Sequence[Row], reference: str = "spectral") -> str:
    """rank scale x init table: seconds, ratio to the reference's seconds, objectives, share better."""
    ref = {r.rank_scale: r.seconds for r in rows if r.label == reference}
    out = [
        "| rank scale | init | seconds | x spectral time | mean R/R0 | mean R/R0 spectral "
        "| layers better than spectral |",
        "|---|---|---|---|---|---|---|",
    ]
    best = {s: min(r.mean_objective for r in rows if r.rank_scale == s) for s in {r.rank_scale for r in rows}}
    for r in rows:
        ratio = r.seconds / ref[r.rank_scale] if ref.get(r.rank_scale) else float("nan")
        mark = "**" if r.mean_objective == best[r.rank_scale] else ""
        out.append(
            f"| {r.rank_scale:g} | {r.label} | {r.seconds:.2f} | {ratio:.2f} | "
            f"{mark}{r.mean_objective:.4f}{mark} | {r.mean_objective_spectral:.4f} | "
            f"{r.share_better:.0%} ({r.layers} layers) |"
        )
    return "\n".join(out) + "\n"
