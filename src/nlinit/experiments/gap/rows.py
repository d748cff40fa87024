r"""The grids of ``nlinit gap`` and one row per computed instance (no I/O, no plotting, no prose).

Each ``*_rows`` function evaluates :mod:`nlinit.theory`'s formulas and the library's inits on a grid and
returns dataclass rows, in the order the grid lists them. Every draw is seeded from ``seed`` and the grid
point alone, so a row does not depend on which other rows were computed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..._checks import rank_from_scale
from ...activations import parse_activation
from ...inits import init_factors, sample_weight
from ...objective import exact_loss, nlra_loss
from ...subspace import truncated_svd
from ...theory import (
    corollary_bound,
    energy_bound,
    g_minus_rho,
    remark_bound,
    svd_rho,
    theorem_339_bound,
    unit_rows,
)

__all__ = [
    "DEFAULT_GRID",
    "FULL_GRID",
    "CorollaryRow",
    "Fig32Row",
    "GapGrid",
    "GapResults",
    "ObjectiveRow",
    "RemarkRow",
    "corollary_rows",
    "fig32_rows",
    "objective_rows",
    "objective_specs",
    "remark_rows",
]


def _steps(lo: float, hi: float, step: float) -> tuple[float, ...]:
    return tuple(round(lo + i * step, 10) for i in range(int(round((hi - lo) / step)) + 1))


@dataclass(frozen=True)
class GapGrid:
    """What ``nlinit gap`` computes. Shapes of the table are (d_out, d_in, r) in torch orientation."""

    fig32_n: tuple[int, ...] = (100, 200, 300, 400, 500)
    fig32_rank_scales: tuple[float, ...] = _steps(0.05, 0.7, 0.05)
    cor_d: tuple[int, ...] = (10, 20, 40)
    cor_m_over_d: tuple[int, ...] = (10, 100)
    cor_r_over_d: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    cor_seeds: int = 1
    #: init -> options for a second, more thorough solve of every instance with a negative margin
    cor_recheck: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
        ("nlra-opt", (("restarts", 10), ("max_iter", 2000), ("tol", 1e-12))),
    )
    remark_d: int = 100
    remark_m_over_d: tuple[int, ...] = (1, 2, 3, 5, 6, 7, 10, 15, 20, 30, 50, 100, 200)
    remark_rank_scales: tuple[float, ...] = _steps(0.1, 1.0, 0.1)
    remark_seeds: int = 3
    table_shapes: tuple[tuple[int, int, int], ...] = (
        (64, 32, 3),
        (128, 128, 13),
        (256, 128, 13),
        (256, 576, 26),
    )
    table_seeds: int = 3
    lfai_options: tuple[tuple[str, Any], ...] = ()  # the paper's settings (lfai's defaults)
    best_options: tuple[tuple[str, Any], ...] = ()

    def recheck_options(self, best: str) -> dict[str, Any] | None:
        """The re-solve options configured for ``best``, or None."""
        table = dict(self.cor_recheck)
        return dict(table[best]) if best in table else None


#: the default run: about a minute on 2 CPU cores with one thread.
DEFAULT_GRID = GapGrid()
#: ``--full``: the paper's Fig 3.2 range (n = 200..1000), more d and seeds elsewhere.
FULL_GRID = replace(
    DEFAULT_GRID,
    fig32_n=tuple(range(200, 1001, 100)),
    cor_d=(10, 20, 40, 80),
    cor_seeds=3,
    remark_seeds=10,
    table_shapes=(*DEFAULT_GRID.table_shapes, (512, 512, 51), (512, 2304, 51)),
    table_seeds=5,
)


@dataclass
class Fig32Row:
    n: int
    m: int
    d: int
    rank_scale: float
    rank: int
    value: float  # (1/(2d)) sum_i (g(rho_i) - rho_i)^2


@dataclass
class CorollaryRow:
    d: int
    m: int
    rank: int
    r_over_d: float
    seed: int
    gap: float  # (1/m)(R(spectral) - R(best)), measured
    theorem_339: float  # (1/(2m)) sum_i (a_i (g - rho))^2 = (1/m)(R(spectral) - R(relu-svd))
    energy_form: float  # (1/m) ||W||^2 L(||W_r|| / ||W||) / (2 pi^2), finite-m form of the corollary
    corollary: float  # L(sqrt(r/d)) / (2 pi^2), the m/d -> infinity value
    energy_captured: float  # ||W_r||_F^2 / ||W||_F^2 (r/d in the limit)
    margin: float  # gap - corollary
    margin_theorem: float  # gap - theorem_339 (>= 0 iff R(best) <= R(relu-svd))
    best_seconds: float
    certified_gap_max: float | None = None  # (1/m)(R(spectral) - certified lower bound), if available
    gap_recheck: float | None = None  # negative margins only: the gap after a more thorough solve


@dataclass
class RemarkRow:
    d: int
    m_over_d: int
    m: int
    rank_scale: float
    rank: int
    bound: float  # "net" reading, plotted
    bound_per_unit_reading: float  # the other reading, for comparison
    measured_mean_rho: float  # mean over rows and seeds
    measured_rms_rho: float  # sqrt of the mean rho^2 (what the Chernoff bound bounds before the sqrt)
    sqrt_rank_scale: float


@dataclass
class ObjectiveRow:
    d_out: int
    d_in: int
    rank: int
    init: str
    mean: float  # mean over seeds of R/R(0) (exact ReLU objective, float64)
    sem: float  # standard error of the mean (std with ddof 1 / sqrt(seeds)); 0 for one seed
    seeds: int
    seconds: float  # mean init seconds
    values: list[float] = field(default_factory=list)  # R/R(0) per seed (W draw), in seed order


@dataclass
class GapResults:
    fig32: list[Fig32Row] = field(default_factory=list)
    corollary: list[CorollaryRow] = field(default_factory=list)
    remark: list[RemarkRow] = field(default_factory=list)
    objectives: list[ObjectiveRow] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fig32_rows(n_values: Sequence[int], rank_scales: Sequence[float], *, seed: int = 0) -> list[Fig32Row]:
    """Fig 3.2's grid: for each n one W of m = round(n^1.5) unit rows in R^d, d = round(0.2 n)."""
    rows = []
    for n in n_values:
        m, d = round(n**1.5), round(0.2 * n)
        W = unit_rows(m, d, generator=_generator(seed * 1_000_003 + n))
        ranks = [rank_from_scale(s, m, d) for s in rank_scales]
        rho = svd_rho(W, ranks)  # (len(ranks), m)
        values = g_minus_rho(rho).square().sum(1) / (2 * d)
        rows += [Fig32Row(n, m, d, s, r, float(v)) for s, r, v in zip(rank_scales, ranks, values)]
    return rows


def _relu_objective(W: Tensor, U: Tensor, V: Tensor) -> float:
    return float(exact_loss(W.double(), (U @ V.T).double(), parse_activation("relu")))


def corollary_rows(
    d_values: Sequence[int],
    m_over_d: Sequence[int],
    r_over_d: Sequence[float],
    *,
    best: str = "nlra-opt",
    best_options: dict[str, Any] | None = None,
    seeds: int = 1,
    seed: int = 0,
    certify: Callable[[Tensor, int], float] | None = None,
    recheck_options: dict[str, Any] | None = None,
) -> list[CorollaryRow]:
    """Corollary 3.3.11's instances: unit rows uniform on S^{d-1}, m = ratio d, r = max(1, round(q d)).

    Ranks that round to the same r are computed once. ``certify(W, r)``, if given, is a certified lower
    bound on min R, giving an upper bound on the true gap R(spectral) - R(opt). ``recheck_options``, if
    given, solve every instance whose margin is negative a second time with ``best`` and these options
    (e.g. more restarts), to see whether a better solver would close the margin.
    """
    rows = []
    for d in d_values:
        ranks = sorted({max(1, min(d, math.floor(q * d + 0.5))) for q in r_over_d})
        for ratio in m_over_d:
            m = ratio * d
            for k in range(seeds):
                gen = _generator(seed * 1_000_003 + 7919 * d + 31 * ratio + k)
                W = unit_rows(m, d, generator=gen)
                for r in ranks:
                    rows.append(
                        _corollary_row(W, r, k, gen, best, best_options or {}, seed, certify, recheck_options)
                    )
    return rows


def _corollary_row(
    W: Tensor,
    r: int,
    k: int,
    gen: torch.Generator,
    best: str,
    best_options: dict[str, Any],
    seed: int,
    certify: Callable[[Tensor, int], float] | None,
    recheck_options: dict[str, Any] | None,
) -> CorollaryRow:
    m, d = W.shape
    R_spec = _relu_objective(W, *init_factors(W, r, "spectral"))
    start = time.perf_counter()
    U, V = init_factors(W, r, best, "relu", generator=gen, **best_options)
    secs = time.perf_counter() - start
    R_best = _relu_objective(W, U, V)
    gap, thm, cor = (R_spec - R_best) / m, theorem_339_bound(W, r) / m, corollary_bound(r, d)
    recheck = None
    if recheck_options is not None and gap < cor:
        U, V = init_factors(W, r, best, "relu", generator=_generator(seed + 1), **recheck_options)
        recheck = (R_spec - min(R_best, _relu_objective(W, U, V))) / m
    _, s, _ = truncated_svd(W, r)
    return CorollaryRow(
        d=d,
        m=m,
        rank=r,
        r_over_d=r / d,
        seed=k,
        gap=gap,
        theorem_339=thm,
        energy_form=energy_bound(W, r) / m,
        corollary=cor,
        energy_captured=float(s.square().sum()) / float(W.square().sum()),
        margin=gap - cor,
        margin_theorem=gap - thm,
        best_seconds=secs,
        certified_gap_max=None if certify is None else (R_spec - certify(W, r)) / m,
        gap_recheck=recheck,
    )


def remark_rows(
    d: int, m_over_d: Sequence[int], rank_scales: Sequence[float], *, seeds: int = 3, seed: int = 0
) -> list[RemarkRow]:
    """Remark 3.3.12's bound under both readings, and the measured mean rho over ``seeds`` draws."""
    rows = []
    for ratio in m_over_d:
        m = ratio * d
        ranks = [rank_from_scale(s, m, d) for s in rank_scales]
        rho = torch.cat(
            [
                svd_rho(unit_rows(m, d, generator=_generator(seed * 1_000_003 + 104729 * ratio + k)), ranks)
                for k in range(seeds)
            ],
            dim=1,
        )  # (len(ranks), seeds * m)
        for j, (s, r) in enumerate(zip(rank_scales, ranks)):
            rows.append(
                RemarkRow(
                    d=d,
                    m_over_d=ratio,
                    m=m,
                    rank_scale=s,
                    rank=r,
                    bound=remark_bound(d, r, m, "net"),
                    bound_per_unit_reading=remark_bound(d, r, m, "per-unit"),
                    measured_mean_rho=float(rho[j].mean()),
                    measured_rms_rho=float(rho[j].square().mean().sqrt()),
                    sqrt_rank_scale=math.sqrt(s),
                )
            )
    return rows


#: the table's label of the paper's sampled lfai-ws and of the same schedule on the exact objective
SAMPLED, EXACT = "lfai-ws (paper, sampled)", "lfai-ws (exact)"


def objective_specs(best: str, lfai_options: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, init, options) for the table: the paper's inits, relu-svd, lfai-ws on the exact objective,
    and ``best`` when it is none of these."""
    specs = [
        ("baseline", "baseline", {}),
        ("spectral", "spectral", {}),
        ("relu-svd", "relu-svd", {}),
        (SAMPLED, "lfai-ws", dict(lfai_options)),
        (EXACT, "lfai-ws", {**lfai_options, "objective": "exact"}),
    ]
    if best not in {init for _, init, _ in specs}:
        specs.append((best, best, {}))
    return specs


def objective_rows(
    shapes: Sequence[tuple[int, int, int]],
    *,
    best: str = "nlra-opt",
    best_options: dict[str, Any] | None = None,
    lfai_options: dict[str, Any] | None = None,
    seeds: int = 3,
    seed: int = 0,
) -> list[ObjectiveRow]:
    """R/R(0) (exact ReLU objective, float64) of each init on fresh trunc-normal W (the paper's init
    distribution, N(0, 1/d_in) cut at 2 sigma, float32 as in a model), mean and standard error over seeds."""
    specs = objective_specs(best, lfai_options or {})
    rows = []
    for d_out, d_in, r in shapes:
        values: dict[str, list[float]] = {label: [] for label, _, _ in specs}
        secs: dict[str, list[float]] = {label: [] for label, _, _ in specs}
        for k in range(seeds):
            W = sample_weight(
                (d_out, d_in), generator=_generator(seed * 1_000_003 + 7 * d_out + d_in + 13 * k)
            )
            for label, init, options in specs:
                opts = {**options, **(best_options or {})} if init == best else options
                gen = _generator(seed * 1_000_003 + 1000 + k)
                start = time.perf_counter()
                U, V = init_factors(W, r, init, "relu", generator=gen, **opts)
                secs[label].append(time.perf_counter() - start)
                Y = (U @ V.T).double()
                values[label].append(float(nlra_loss(W.double(), Y, "relu", relative=True)))
        for label, _, _ in specs:
            v = np.asarray(values[label])
            sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
            seconds = float(np.mean(secs[label]))
            rows.append(
                ObjectiveRow(d_out, d_in, r, label, float(v.mean()), sem, len(v), seconds, v.tolist())
            )
    return rows
