r"""``nlinit gap``: the paper's theory figures and tables (its section 5), regenerated from scratch.

What is computed (formulas: :mod:`nlinit.theory`; derivations: docs/theory.md, section 6):

* Fig 3.2: (1/(2d)) sum_i (g(rho_i) - rho_i)^2 for m = n^1.5 unit rows in R^d, d = 0.2 n.
* Corollary 3.3.11: the measured per-unit gap (1/m)(R(spectral) - R(best)) beside Theorem 3.3.9's bound,
  nlinit's finite form, the m/d -> infinity value and a certified upper bound on the true gap.
* Remark 3.3.12 / Fig 3.3: the bound on the mean rho of the SVD subspace under two readings of the paper,
  beside the measured mean rho.
* A table of R/R(0) for every init on a grid of (d_out, d_in, r).

One job per module, read top to bottom: :mod:`.rows` (grids and one dataclass row per instance),
:mod:`.plots` (the PNGs), :mod:`.report` (CSV, Markdown tables with fixed text, report.md) and :mod:`.run`
(:func:`run_gap`, which writes everything into one directory).
"""

from __future__ import annotations

from ..._compat import moved
from .rows import (
    DEFAULT_GRID,
    FULL_GRID,
    CorollaryRow,
    Fig32Row,
    GapGrid,
    GapResults,
    ObjectiveRow,
    RemarkRow,
    corollary_rows,
    fig32_rows,
    objective_rows,
    objective_specs,
    remark_rows,
)
from .run import run_gap

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
    "run_gap",
]

#: the theory's formulas moved to nlinit.theory (their old names here warn for one release)
_MOVED_TO_THEORY = (
    "REMARK_READINGS",
    "corollary_L",
    "corollary_bound",
    "energy_bound",
    "fig32_value",
    "log_hyp1f1",
    "remark_bound",
    "remark_union_term",
    "svd_rho",
    "theorem_339_bound",
    "unit_rows",
)
#: the plots and the CSV writer moved to submodules of this package
_MOVED_HERE = {
    "plot_corollary": "nlinit.experiments.gap.plots",
    "plot_fig32": "nlinit.experiments.gap.plots",
    "plot_remark": "nlinit.experiments.gap.plots",
    "write_csv": "nlinit.experiments.gap.report",
}

__getattr__ = moved(__name__, {**dict.fromkeys(_MOVED_TO_THEORY, "nlinit.theory"), **_MOVED_HERE})
