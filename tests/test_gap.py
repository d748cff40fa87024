"""nlinit gap: the rows, the report (tables plus fixed text) and run_gap's outputs; old import paths."""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import nlinit.theory
from nlinit.bounds import nlra_lower_bound
from nlinit.cli import build_parser
from nlinit.experiments import gap
from nlinit.experiments.gap import DEFAULT_GRID, GapResults, corollary_rows, fig32_rows, run_gap
from nlinit.experiments.gap.report import report_markdown
from nlinit.theory import corollary_bound, fig32_value, unit_rows

#: a grid small enough for a test (about 5 s), with every section and column present
SMALL_GRID = replace(
    DEFAULT_GRID,
    fig32_n=(20, 40),
    fig32_rank_scales=(0.1, 0.5),
    cor_d=(6,),
    cor_m_over_d=(4,),
    cor_r_over_d=(0.2, 0.5),
    remark_d=10,
    remark_m_over_d=(1, 3),
    remark_rank_scales=(0.1, 0.5, 1.0),
    remark_seeds=1,
    table_shapes=((12, 8, 2),),
    table_seeds=2,
    lfai_options=(("max_epochs", 1), ("steps_per_epoch", 4), ("num_samples", 64), ("batch_size", 32)),
)


def test_fig32_rows_follow_the_paper_construction():
    rows = fig32_rows((20, 45), (0.1, 0.5), seed=3)
    assert [(r.n, r.m, r.d, r.rank) for r in rows] == [
        (20, 89, 4, 1),
        (20, 89, 4, 2),
        (45, 302, 9, 1),
        (45, 302, 9, 5),
    ]
    W = unit_rows(302, 9, generator=torch.Generator().manual_seed(3 * 1_000_003 + 45))
    assert rows[3].value == pytest.approx(fig32_value(W, 5), rel=1e-12)


def test_corollary_rows_with_relu_svd_as_best():
    rows = corollary_rows(
        (8,), (5,), (0.1, 0.5, 0.9), best="relu-svd", recheck_options={}, certify=nlra_lower_bound
    )
    assert [r.rank for r in rows] == [1, 4, 7]
    assert any(r.margin < 0 for r in rows)  # m/d = 5 is far from the corollary's m/d -> infinity
    for r in rows:
        # only negative margins are re-solved; relu-svd is deterministic, so the recheck changes nothing
        assert r.gap_recheck == (r.gap if r.margin < 0 else None)
        assert r.margin_theorem == pytest.approx(0.0, abs=1e-12)  # relu-svd's gap is the bound itself
        assert r.energy_form <= r.theorem_339 + 1e-15
        assert r.margin == pytest.approx(r.gap - corollary_bound(r.rank, 8), abs=1e-15)
        # the top-r singular values carry at least r/d of the energy (their mean is >= the overall mean)
        assert r.energy_captured >= r.r_over_d - 1e-12
        # certified: L <= min R <= R(relu-svd), so R(spectral) - L >= the measured gap (rounding aside)
        assert r.certified_gap_max >= r.gap - 1e-12


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[GapResults, str]:
    out = tmp_path_factory.mktemp("gap")
    res = run_gap(out, best="relu-svd", grid=SMALL_GRID, command="pytest")
    return res, str(out)


def test_run_gap_writes_every_file(small_run):
    res, out = small_run
    names = {p.name for p in Path(out).iterdir()}
    expected = {"fig32", "corollary", "remark"}
    assert names == {f"{n}.{e}" for n in expected for e in ("csv", "png")} | {"objectives.csv", "report.md"}
    with open(f"{out}/fig32.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    with open(f"{out}/objectives.csv") as fh:
        assert {row["init"] for row in csv.DictReader(fh)} == {
            "baseline",
            "spectral",
            "relu-svd",
            "lfai-ws (paper, sampled)",
            "lfai-ws (exact)",
        }
    report = (Path(out) / "report.md").read_text()
    for needle in ("`pytest`", "fig32.png", "corollary.png", "remark.png", "objectives.csv", "Machine:"):
        assert needle in report
    assert len(res.remark) == 6 and len(res.corollary) == 2
    assert all(r.certified_gap_max is not None for r in res.corollary)  # certify=True by default
    assert set(res.seconds) == {"fig32", "corollary", "remark", "objectives"}


def _report(res: GapResults) -> str:
    return report_markdown(
        res,
        best="relu-svd",
        recheck=None,
        lfai_options={},
        cor_seeds=1,
        remark_seeds=1,
        table_seeds=2,
        seed=0,
        command="pytest",
        machine="test",
    )


def _prose(report: str) -> str:
    """The report without its tables and with every number replaced by '#': what is fixed text."""
    text = "\n".join(line for line in report.splitlines() if not line.startswith("|"))
    return re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", text)


def test_report_text_does_not_change_with_the_data(small_run):
    """The same words whatever the numbers: push every check of every section the other way (margins
    all positive, bounds all below the measurements, the inits' order reversed) and compare the prose."""
    res, _ = small_run
    flipped = GapResults(
        fig32=[replace(r, value=1.0 / (1.0 + r.value * r.n)) for r in res.fig32],
        corollary=[replace(r, gap=r.gap + 1, margin=r.margin + 1, gap_recheck=None) for r in res.corollary],
        remark=[replace(r, bound=0.0, bound_per_unit_reading=1.0) for r in res.remark],
        objectives=[replace(r, mean=-r.mean, values=[-v for v in r.values]) for r in res.objectives],
        seconds=res.seconds,
    )
    before, after = _report(res), _report(flipped)
    assert before != after
    assert _prose(before) == _prose(after)


def test_report_tables_count_what_they_say(small_run):
    res, _ = small_run
    report = _report(res)
    neg = sum(r.margin < 0 for r in res.corollary)
    n = len(res.corollary)
    assert f"| 1 | gap >= L(sqrt(r/d))/(2 pi^2) (margin >= 0) | {n - neg} | {n} |" in report
    below = sum(r.bound < r.measured_mean_rho for r in res.remark)
    cells = len(res.remark)
    assert f'| "net" bound >= measured mean rho (cells) | {cells - below} | {cells} |' in report
    # relu-svd is best here, so its gain over itself is exactly 0 and row 2 holds everywhere
    assert f"| 2 | Thm 3.3.9 <= gap (relu-svd no worse than relu-svd), up to 1e-09 | {n} | {n} |" in report


def test_old_import_paths_warn_and_serve_the_new_objects():
    for name in ("svd_rho", "corollary_L", "remark_bound", "log_hyp1f1", "unit_rows", "theorem_339_bound"):
        with pytest.warns(DeprecationWarning, match=f"nlinit.experiments.gap.{name} moved to nlinit.theory"):
            assert getattr(gap, name) is getattr(nlinit.theory, name)
    with pytest.warns(DeprecationWarning, match="moved to nlinit.experiments.gap.report"):
        from nlinit.experiments.gap import write_csv  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from nlinit.experiments.gap import GapGrid, run_gap  # noqa: F401  (their home: no warning)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        gap.nope  # noqa: B018


def test_run_gap_rejects_bad_input_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"unknown init 'nope'; available: .*relu-svd"):
        run_gap(tmp_path / "gap", best="nope")
    with pytest.raises(ValueError, match="seed must be an int, got 1.5"):
        run_gap(tmp_path / "gap", best="relu-svd", seed=1.5)  # type: ignore[arg-type]
    assert not (tmp_path / "gap").exists()


def test_cli_gap_arguments():
    args = build_parser().parse_args(["gap"])
    assert (args.out, args.full, args.seed) == ("results/gap", False, 0)
    args = build_parser().parse_args(["gap", "--full", "--seed", "3", "--out", "x"])
    assert (args.out, args.full, args.seed) == ("x", True, 3)
