"""``nlinit gap``'s runner: compute each section's rows, write its CSV and figure, then report.md."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..._checks import check_choice
from ...bounds import nlra_lower_bound
from ...inits import list_inits
from ..machine import describe
from .plots import plot_corollary, plot_fig32, plot_remark
from .report import report_markdown, write_csv, write_text
from .rows import (
    DEFAULT_GRID,
    FULL_GRID,
    GapGrid,
    GapResults,
    corollary_rows,
    fig32_rows,
    objective_rows,
    remark_rows,
)

__all__ = ["run_gap"]

log = logging.getLogger(__name__)


def run_gap(
    out: str | Path = "results/gap",
    *,
    full: bool = False,
    seed: int = 0,
    best: str = "nlra-opt",
    grid: GapGrid | None = None,
    certify: bool = True,
    command: str | None = None,
) -> GapResults:
    """Compute every figure and table of the paper's gap theory and write them into ``out``.

    Writes fig32.{csv,png}, corollary.{csv,png}, remark.{csv,png}, objectives.csv and report.md (with the
    command, the machine, the runtimes, and tables with fixed text that reads them). Each file is written
    to a temporary name and moved into place.

    Args:
        out: output directory (created). full: the paper's Fig 3.2 range and larger grids (:data:`FULL_GRID`)
            instead of :data:`DEFAULT_GRID`. seed: base seed of every draw. best: the init standing in for
            the optimum (Corollary 3.3.11's R(best), the table's last column); a registered init name.
        grid: overrides the grid chosen by ``full``. certify: add the certified upper bound on the true gap,
            R(spectral) - :func:`nlinit.bounds.nlra_lower_bound`, to the corollary's table.
        command: how the run was started, for the report.
    Raises:
        ValueError: ``best`` is not a registered init, ``seed`` is not an int, or ``full`` / ``certify`` are
            not bools; nothing is written then.

    Example:
        >>> run_gap("results/gap")  # doctest: +SKIP
    """
    check_choice("best", best, list_inits(), what="init")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    for name, flag in (("full", full), ("certify", certify)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if grid is not None and not isinstance(grid, GapGrid):
        raise TypeError(f"grid must be a GapGrid, got {type(grid).__name__}")
    grid = grid or (FULL_GRID if full else DEFAULT_GRID)
    if command is None:
        custom = ", grid=<custom>" if grid not in (DEFAULT_GRID, FULL_GRID) else ""
        command = f"run_gap(out, full={full}, seed={seed}, best={best!r}{custom})"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = GapResults()
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        res.seconds[name] = now - clock
        log.info("gap: %s done in %.1f s", name, now - clock)
        clock = now

    res.fig32 = fig32_rows(grid.fig32_n, grid.fig32_rank_scales, seed=seed)
    write_csv(res.fig32, out / "fig32.csv")
    plot_fig32(res.fig32, out / "fig32.png")
    lap("fig32")
    res.corollary = corollary_rows(
        grid.cor_d,
        grid.cor_m_over_d,
        grid.cor_r_over_d,
        best=best,
        best_options=dict(grid.best_options),
        seeds=grid.cor_seeds,
        seed=seed,
        certify=nlra_lower_bound if certify else None,
        recheck_options=grid.recheck_options(best),
    )
    write_csv(res.corollary, out / "corollary.csv")
    plot_corollary(res.corollary, best, out / "corollary.png")
    lap("corollary")
    res.remark = remark_rows(
        grid.remark_d, grid.remark_m_over_d, grid.remark_rank_scales, seeds=grid.remark_seeds, seed=seed
    )
    write_csv(res.remark, out / "remark.csv")
    plot_remark(res.remark, out / "remark.png")
    lap("remark")
    res.objectives = objective_rows(
        grid.table_shapes,
        best=best,
        best_options=dict(grid.best_options),
        lfai_options=dict(grid.lfai_options),
        seeds=grid.table_seeds,
        seed=seed,
    )
    write_csv(res.objectives, out / "objectives.csv")
    lap("objectives")
    report = report_markdown(
        res,
        best=best,
        recheck=grid.recheck_options(best),
        lfai_options=dict(grid.lfai_options),
        cor_seeds=grid.cor_seeds,
        remark_seeds=grid.remark_seeds,
        table_seeds=grid.table_seeds,
        seed=seed,
        command=command,
        machine=describe(),
    )
    write_text(out / "report.md", report)
    return res
