"""Sweeps: the grid, skipping finished cells, shards, the statistics and the report files."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nlinit._paths import claim_dir
from nlinit.cli import main
from nlinit.experiments.sweep import (
    cells,
    collect,
    markdown_table,
    run_dir,
    run_sweep,
    summarize,
    write_report,
)
from nlinit.train import RunLockedError, TrainConfig

BASE = TrainConfig(model="mlp", dataset="synthetic", subset=128, batch_size=32, epochs=1, progress=False)


def test_cells_are_seed_major_and_complete():
    grid = cells(["a", "b"], [0.1, 0.2], [0, 1], full_rank=True)
    assert len(grid) == 2 * (1 + 2 * 2)
    assert grid[:5] == [("full", None, 0), ("a", 0.1, 0), ("b", 0.1, 0), ("a", 0.2, 0), ("b", 0.2, 0)]
    assert len(set(grid)) == len(grid)


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=8))
def test_summarize_is_mean_and_standard_error(values):
    rows = [{"init": "x", "rank_scale": 0.1, "final_test_top1": v} for v in values]
    mean, se, n = summarize(rows)[("x", 0.1)]
    assert n == len(values) and mean == pytest.approx(sum(values) / n)
    if n == 1:
        assert math.isnan(se)
    else:
        var = sum((v - mean) ** 2 for v in values) / (n - 1)
        assert se == pytest.approx(math.sqrt(var / n), abs=1e-9)


def test_table_marks_the_best_per_row_and_ties():
    rows = [
        {"init": "a", "rank_scale": 0.1, "final_test_top1": 50.0},
        {"init": "b", "rank_scale": 0.1, "final_test_top1": 60.0},
        {"init": "a", "rank_scale": 0.2, "final_test_top1": 70.0},
        {"init": "b", "rank_scale": 0.2, "final_test_top1": 70.0},
        {"init": "full", "rank_scale": None, "final_test_top1": 80.0},
    ]
    table = markdown_table(rows)
    assert "| 0.1 | 50.00 | **60.00** |" in table
    assert "| 0.2 | **70.00** | **70.00** |" in table
    assert "| full rank | 80.00 (n=1)" in table
    assert "| 0.1 | **50.00** | 60.00 |" in markdown_table(rows, higher_is_better=False)


def test_sweep_trains_each_cell_once_and_writes_the_report(tmp_path):
    root = tmp_path / "s"
    run_sweep(root, BASE, ["spectral", "relu-svd"], [0.25], [0, 1], full_rank=True)
    rows = collect(root)
    assert sorted(r["run"] for r in rows) == sorted(
        [
            "full-s0",
            "full-s1",
            "spectral-r0.25-s0",
            "spectral-r0.25-s1",
            "relu-svd-r0.25-s0",
            "relu-svd-r0.25-s1",
        ]
    )
    for name in ("table.md", "results.csv", "accuracy_vs_rank.png", "init_error_vs_accuracy.png"):
        assert (root / name).stat().st_size > 0
    assert "± " in (root / "table.md").read_text()  # two seeds: a standard error in every cell
    summary = run_dir(root, "spectral", 0.25, 0) / "summary.json"
    stamp = summary.stat().st_mtime_ns
    run_sweep(root, BASE, ["spectral", "relu-svd"], [0.25], [0, 1], full_rank=True)  # all done: skipped
    assert summary.stat().st_mtime_ns == stamp


def test_shards_split_the_grid_without_overlap(tmp_path):
    root = tmp_path / "s"
    run_sweep(root, BASE, ["spectral"], [0.25, 0.1], [0], full_rank=False, shard=(0, 2))
    assert [r["run"] for r in collect(root)] == ["spectral-r0.25-s0"]
    run_sweep(root, BASE, ["spectral"], [0.25, 0.1], [0], full_rank=False, shard=(1, 2))
    assert sorted(r["run"] for r in collect(root)) == ["spectral-r0.1-s0", "spectral-r0.25-s0"]
    with pytest.raises(ValueError, match="shard must be i/n"):
        run_sweep(root, BASE, ["spectral"], [0.25], [0], shard=(2, 2))


def test_a_sweep_with_other_settings_is_refused(tmp_path):
    root = tmp_path / "s"
    run_sweep(root, BASE, ["spectral"], [0.25], [0], full_rank=False)
    spec = (root / "sweep.json").read_text()
    other = TrainConfig(**{**BASE.__dict__, "epochs": 2})
    with pytest.raises(ValueError, match="holds a sweep with epochs=1, this one has epochs=2"):
        run_sweep(root, other, ["spectral"], [0.25], [0], full_rank=False)
    assert (root / "sweep.json").read_text() == spec
    assert json.loads(spec)["config"]["epochs"] == 1


def test_cli_sweep_and_report(tmp_path, capsys):
    args = [
        "--model=mlp",
        "--dataset=synthetic",
        "--subset=128",
        "--batch-size=32",
        "--epochs=1",
        "--no-progress",
    ]
    assert main(["sweep", "--name=t", f"--root={tmp_path}", "--inits", "spectral", "--rank-scales", "0.25",
                 "--seeds", "0", "--no-full-rank", *args]) == 0  # fmt: skip
    assert "| 0.25 |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "t")]) == 0
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "sweep directory" in capsys.readouterr().err and not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no finished runs" in capsys.readouterr().err
    assert main(["sweep", "--name=t", f"--root={tmp_path}", "--shard=x", *args]) == 2
    assert "shard must look like i/n" in capsys.readouterr().err


def test_cli_train_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["train", "--model=nope", "--dataset=synthetic", f"--out={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nlinit train: error: unknown model 'nope'") and "\n" not in err


def test_rank_scale_zero_is_refused_instead_of_trained_at_one(tmp_path, capsys):
    """Issue 12, defect 1: ``--rank-scales 0`` used to train cells named ``*-r0-*`` at rank scale 1.0."""
    argv = [
        "sweep",
        "--name=t",
        f"--root={tmp_path}",
        "--inits",
        "spectral",
        "--seeds",
        "0",
        "--no-full-rank",
    ]
    assert main([*argv, "--rank-scales", "0.25", "0", "--model=mlp", "--dataset=synthetic"]) == 2
    err = capsys.readouterr().err
    assert err == "nlinit sweep: error: rank_scales must be numbers in (0, 1], got 0.0\n"
    assert list(tmp_path.iterdir()) == []  # validated before any run started or any file was written


def test_a_sweep_cell_holds_its_run_lock(tmp_path):
    root = tmp_path / "s"
    with claim_dir(run_dir(root, "spectral", 0.25, 0)), pytest.raises(RunLockedError, match="is in use by"):
        run_sweep(root, BASE, ["spectral"], [0.25], [0], full_rank=False)
    assert not (run_dir(root, "spectral", 0.25, 0) / "metrics.jsonl").exists()


def test_a_sweep_that_failed_before_any_run_takes_the_corrected_settings(tmp_path):
    """A config error found only when the data is loaded (here: a subset larger than the data) must not
    block the retry with the corrected value under the same name."""
    root = tmp_path / "s"
    too_big = TrainConfig(**{**BASE.__dict__, "subset": 5000})
    with pytest.raises(ValueError, match=r"subset must be an int in \[1, 1024\], got 5000"):
        run_sweep(root, too_big, ["spectral"], [0.25], [0], full_rank=False)
    run_sweep(root, BASE, ["spectral"], [0.25], [0], full_rank=False)
    assert json.loads((root / "sweep.json").read_text())["config"]["subset"] == 128


def test_a_sweep_without_the_reference_init_reports_without_pairs(tmp_path):
    """run_sweep pairs with spectral only where the sweep has it: a sweep of other inits ends with its
    report, not with "reference init 'spectral' has no runs", and a chosen reference still pairs it."""
    root = run_sweep(tmp_path / "s", BASE, ["baseline", "relu-svd"], [0.25], [0], full_rank=False)
    table = (root / "table.md").read_text()
    assert "None: spectral is not among this sweep's inits" in table
    assert not (root / "paired.csv").exists()
    assert "## Paired difference to baseline" in write_report(root, reference="baseline").read_text()
    with pytest.raises(ValueError, match="reference init 'spectral' has no runs"):
        write_report(root)  # asked for by name (the CLI's default): still an error
