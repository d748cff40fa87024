"""The sweep report's paired statistics: per-seed differences to a reference init, their mean, standard error
and t-interval, checked on synthetic results whose answer is known, and the files `nlinit report` writes."""

from __future__ import annotations

import csv
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nlinit.cli import main
from nlinit.experiments.sweep import paired_differences, paired_table, write_report

# t_{3, 0.975} and t_{2, 0.975}: the 97.5% quantiles of Student's t with 3 and 2 degrees of freedom (tables).
T3, T2 = 3.182446305284263, 4.302652729911275


def _row(init: str, scale: float | None, seed: int, top1: float) -> dict:
    return {"init": init, "rank_scale": scale, "seed": seed, "final_test_top1": top1}


def _known_rows() -> list[dict]:
    """spectral at rank scale 0.1 has a seed effect 80 + 3 seed; relu-svd adds 1, 2, 3, 4 to it on seeds 0-3
    and has a fifth seed without a spectral partner; baseline has seeds 0-2 only, 0.5 below spectral each."""
    rows = [_row("full", None, s, 90.0) for s in range(4)]
    rows += [_row("spectral", 0.1, s, 80.0 + 3 * s) for s in range(4)]
    rows += [_row("relu-svd", 0.1, s, 80.0 + 3 * s + (s + 1)) for s in range(4)]
    rows += [_row("relu-svd", 0.1, 4, 99.0)]  # unpaired: no spectral run of seed 4
    rows += [_row("baseline", 0.1, s, 80.0 + 3 * s - 0.5) for s in range(3)]
    return rows


def test_paired_differences_on_a_known_answer():
    pairs = {p.init: p for p in paired_differences(_known_rows())}
    assert set(pairs) == {"relu-svd", "baseline"}  # no pair for the reference itself or full rank
    p = pairs["relu-svd"]
    assert p.seeds == (0, 1, 2, 3) and p.pairs == 4  # seed 4 has no spectral partner
    assert p.differences == pytest.approx((1.0, 2.0, 3.0, 4.0), abs=1e-12)
    se = math.sqrt(5 / 3) / 2  # std of 1, 2, 3, 4 (ddof 1) is sqrt(5/3); n = 4
    assert p.mean == pytest.approx(2.5, abs=1e-12) and p.se == pytest.approx(se, rel=1e-12)
    assert (p.ci_low, p.ci_high) == pytest.approx((2.5 - T3 * se, 2.5 + T3 * se), rel=1e-12)
    q = pairs["baseline"]
    assert q.differences == pytest.approx((-0.5,) * 3, abs=1e-12)  # identical differences: zero spread
    assert (q.mean, q.se, q.ci_low, q.ci_high) == pytest.approx((-0.5, 0.0, -0.5, -0.5), abs=1e-12)


def test_a_wider_level_gives_a_wider_interval_and_one_pair_none():
    rows = _known_rows()
    narrow = paired_differences(rows, level=0.5)[1]
    wide = paired_differences(rows, level=0.99)[1]
    assert narrow.init == wide.init == "relu-svd" and narrow.half_width < wide.half_width
    one = paired_differences([_row("spectral", 0.1, 0, 1.0), _row("relu-svd", 0.1, 0, 3.0)])
    assert one[0].mean == 2.0 and math.isnan(one[0].se) and math.isnan(one[0].ci_low)


@given(
    effects=st.lists(st.floats(-50, 50), min_size=2, max_size=10),
    shift=st.floats(-5, 5),
    noise=st.lists(st.floats(-1, 1), min_size=10, max_size=10),
)
def test_pairing_removes_the_seed_effect(effects, shift, noise):
    """Whatever each seed adds to both inits cancels: the answer depends on the differences alone."""
    n = len(effects)
    d = [shift + e for e in noise[:n]]
    rows = [_row("spectral", 0.05, s, effects[s]) for s in range(n)]
    rows += [_row("x", 0.05, s, effects[s] + d[s]) for s in range(n)]
    bare = [_row("spectral", 0.05, s, 0.0) for s in range(n)] + [_row("x", 0.05, s, d[s]) for s in range(n)]
    (p,), (q,) = paired_differences(rows), paired_differences(bare)
    # Subtracting effects of up to 50 from values of up to 56 loses up to ~1e-14 to rounding.
    assert p.mean == pytest.approx(q.mean, abs=1e-9) and p.se == pytest.approx(q.se, abs=1e-9)
    assert p.ci_low <= p.mean <= p.ci_high


def test_full_rank_only_rows_have_nothing_to_pair():
    assert paired_differences([_row("full", None, s, 90.0) for s in range(3)]) == []
    assert paired_table([]).startswith("No init has a run paired")


def test_paired_differences_reject_bad_input():
    with pytest.raises(
        ValueError, match=r"^reference init 'lfai' has no runs; inits present: baseline, full, "
    ):
        paired_differences(_known_rows(), reference="lfai")
    with pytest.raises(ValueError, match=r"^level must be in \(0, 1\), got 1.0$"):
        paired_differences(_known_rows(), level=1.0)
    with pytest.raises(ValueError, match=r"^two runs of init 'spectral', rank scale 0.1, seed 0$"):
        paired_differences(_known_rows() + [_row("spectral", 0.1, 0, 1.0)])


def test_paired_table_marks_intervals_that_exclude_zero():
    table = paired_table(paired_differences(_known_rows()))
    se = math.sqrt(5 / 3) / 2
    relu = f"**+2.50 ± {se:.2f} [{2.5 - T3 * se:+.2f}, {2.5 + T3 * se:+.2f}]** (n=4)"
    assert "| rank scale | baseline | relu-svd |" in table
    assert f"| 0.1 | **-0.50 ± 0.00 [-0.50, -0.50]** (n=3) | {relu} |" in table
    rows = [_row("spectral", 0.1, s, 0.0) for s in range(3)] + [_row("x", 0.1, s, s - 1.0) for s in range(3)]
    assert (
        f"| 0.1 | +0.00 ± 0.58 [{-T2 / math.sqrt(3):+.2f}, {T2 / math.sqrt(3):+.2f}] (n=3) |"
        in paired_table(paired_differences(rows))
    )  # 0 inside the interval: not bold


def _fake_sweep(root, rows: list[dict]) -> None:
    """What nlinit.train leaves in a finished run's directory, enough for collect()."""
    for r in rows:
        tag = (
            f"full-s{r['seed']}" if r["init"] == "full" else f"{r['init']}-r{r['rank_scale']:g}-s{r['seed']}"
        )
        run = root / "runs" / tag
        run.mkdir(parents=True)
        summary = {**r, "rank_scale": r["rank_scale"] or 1.0, "epochs": 1, "final_test_loss": 0.5,
                   "final_train_loss": 0.4, "seconds": 10.0, "params": 100}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
        init = {"event": "init", "step": 0, "mean_objective": 0.5, "function_error": 0.9}
        (run / "metrics.jsonl").write_text(
            json.dumps(init if r["init"] != "full" else {"event": "init"}) + "\n"
        )


def test_report_writes_paired_csv_table_and_plot(tmp_path):
    _fake_sweep(tmp_path, _known_rows())
    table = write_report(tmp_path).read_text()
    assert "## Paired difference to spectral, final test top-1 (points)" in table
    assert "**+2.50 ± " in table and "(n=4)" in table
    with (tmp_path / "paired.csv").open() as f:
        paired = {r["init"]: r for r in csv.DictReader(f)}
    assert paired["relu-svd"]["pairs"] == "4" and float(paired["relu-svd"]["mean_difference"]) == 2.5
    assert paired["relu-svd"]["seeds"] == "0 1 2 3" and paired["relu-svd"]["differences"] == "1 2 3 4"
    assert float(paired["relu-svd"]["ci_high"]) == pytest.approx(2.5 + T3 * math.sqrt(5 / 3) / 2, rel=1e-9)
    assert (tmp_path / "paired_difference_vs_rank.png").stat().st_size > 0
    # Against baseline instead: relu-svd - baseline = 1.5, 2.5, 3.5 and spectral - baseline = 0.5 on the
    # three seeds baseline has.
    table = write_report(tmp_path, reference="baseline").read_text()
    assert "## Paired difference to baseline" in table and "| rank scale | relu-svd | spectral |" in table
    assert "| 0.1 | **+2.50 ± 0.58 [" in table and "(n=3) | **+0.50 ± 0.00 [+0.50, +0.50]** (n=3) |" in table


def test_report_names_runs_without_a_result(tmp_path):
    _fake_sweep(tmp_path, _known_rows())
    assert "Every started run has finished." in write_report(tmp_path).read_text()
    for name, diverged in (("baseline-r0.1-s3", True), ("relu-svd-r0.1-s5", False)):
        run = tmp_path / "runs" / name
        run.mkdir()
        (run / "metrics.jsonl").write_text('{"event": "init", "step": 0}\n')
        if diverged:
            (run / "diverged.json").write_text("{}\n")
    table = write_report(tmp_path).read_text()
    assert (
        "Started runs without a final result (not in the tables): baseline-r0.1-s3 (diverged), "
        "relu-svd-r0.1-s5 (unfinished)." in table
    )


def test_cli_report_reference_option(tmp_path, capsys):
    _fake_sweep(tmp_path, _known_rows())
    assert main(["report", str(tmp_path), "--reference", "baseline"]) == 0
    assert "## Paired difference to baseline" in capsys.readouterr().out
    assert not (tmp_path / "nope").exists()
    stamp = (tmp_path / "table.md").stat().st_mtime_ns
    assert main(["report", str(tmp_path), "--reference", "lfai"]) == 2
    assert "reference init 'lfai' has no runs" in capsys.readouterr().err
    assert (tmp_path / "table.md").stat().st_mtime_ns == stamp  # nothing rewritten


def test_report_of_a_partial_sweep_before_any_reference_run(tmp_path):
    """A running sweep reports after every run: before the first spectral run finishes there are no pairs,
    which the report says, instead of failing (the seed-major grid runs baseline first)."""
    _fake_sweep(tmp_path, [r for r in _known_rows() if r["init"] == "baseline"])
    (tmp_path / "sweep.json").write_text(json.dumps({"inits": ["baseline", "spectral"], "config": {}}))
    table = write_report(tmp_path).read_text()
    assert "No finished spectral run yet, so no pairs." in table
    assert not (tmp_path / "paired.csv").exists()
    with pytest.raises(ValueError, match="reference init 'lfai' has no runs"):
        write_report(tmp_path, reference="lfai")  # not one of the sweep's inits: still an error


def test_cell_counts_in_the_table_note(tmp_path):
    one = [r for r in _known_rows() if r["seed"] == 0]
    _fake_sweep(tmp_path / "one", one)
    assert "One run (seed) per cell, so no standard error" in write_report(tmp_path / "one").read_text()
    _fake_sweep(tmp_path / "many", _known_rows())
    many = write_report(tmp_path / "many").read_text()
    assert "Mean ± standard error over the seeds of each cell (" in many


@pytest.mark.parametrize(
    ("reference", "message"),
    [(5, r"reference must be an init name, got 5$"), ("", r"reference must be an init name, got ''$")],
)
def test_a_bad_reference_writes_nothing(tmp_path, reference, message):
    """None is the one non-name write_report takes (no pairs); anything else that is not an init name is a
    one-line error before a file is written."""
    _fake_sweep(tmp_path, _known_rows())
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=message):
        write_report(tmp_path, reference=reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
