"""The depth study (nlinit.experiments.evidence): function error at init of a factorized MLP against its
full-rank source, with the deepest network's factorization reused for the shallower ones."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch

import nlinit
from nlinit.experiments import evidence
from nlinit.experiments.evidence import SweepSpec, depth_rows, function_error, run_depth_study, run_grid
from nlinit.models import relu_mlp


def _x(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_reused_factorization_equals_factorizing_each_depth(batchnorm):
    """depth_rows factorizes the deepest network once; the row for depth 2 must be what factorizing the
    depth-2 network itself gives (same W, same per-layer generator, same function error)."""
    x = _x()
    rows = depth_rows(x, batchnorm=batchnorm, seed=3, depths=[2, 4], inits=["relu-svd", "lfai-ws"],
                      rank_scales=[0.25], width=16, init_options={"lfai-ws": {"max_epochs": 1}})  # fmt: skip
    assert [(r["depth"], r["init"], r["layers"]) for r in rows] == [
        (2, "relu-svd", 2), (4, "relu-svd", 4), (2, "lfai-ws", 2), (4, "lfai-ws", 4),
    ]  # fmt: skip
    for init, row in (("relu-svd", rows[0]), ("lfai-ws", rows[2])):
        torch.manual_seed(3)
        full = relu_mlp(10, 1, 16, 2, batchnorm)
        low = copy.deepcopy(full)
        options = {"max_epochs": 1} if init == "lfai-ws" else {}
        report = nlinit.factorize(low, rank_scale=0.25, init=init, seed=3, factorize_stem=True, **options)
        assert row["function_error"] == pytest.approx(function_error(full, low, x), rel=1e-6)
        assert row["mean_objective"] == pytest.approx(report.mean_objective("init"), rel=1e-12)
        assert row["mean_objective_spectral"] == pytest.approx(report.mean_objective("spectral"), rel=1e-12)


def test_function_error_is_zero_for_the_same_network_and_keeps_modes():
    net = relu_mlp(10, 1, 16, 3, batchnorm=True).eval()
    assert function_error(net, copy.deepcopy(net), _x()) == 0.0
    assert not net.training  # restored


def test_relu_svd_lowers_the_layer_error_of_spectral_without_batchnorm():
    """Per layer, relu-svd is never worse than spectral on the ReLU objective (Theorem 3.3.8): the mean
    R/R(0) in a row is at most spectral's, up to float rounding."""
    rows = depth_rows(_x(), batchnorm=False, seed=0, depths=[3], inits=["relu-svd"], rank_scales=[0.25],
                      width=32)  # fmt: skip
    assert rows[0]["mean_objective"] <= rows[0]["mean_objective_spectral"] + 1e-12


def test_depth_rows_reject_bad_depths():
    with pytest.raises(ValueError, match=r"^depths must be ints >= 1, got \[0, 2\]$"):
        depth_rows(_x(), batchnorm=False, seed=0, depths=[0, 2])


def test_run_depth_study_writes_csv_table_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "test_images", lambda count, data_dir=None: _x(count))  # no dataset needed
    path = run_depth_study(tmp_path, seeds=[0, 1], images=32, depths=[2, 3], inits=["spectral", "relu-svd"],
                           rank_scales=[0.25], width=16)  # fmt: skip
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 * 2  # models x seeds x inits x depths
    table = (tmp_path / "depth.md").read_text()
    assert (
        "### with BatchNorm, rank scale 0.25" in table and "| hidden layers | spectral | relu-svd |" in table
    )
    assert (tmp_path / "depth_function_error.png").stat().st_size > 0
    assert json.loads((tmp_path / "depth_provenance.json").read_text())["depths"] == [2, 3]


def test_run_grid_trains_full_rank_beside_a_sweep_with_init_options(tmp_path):
    """A full-rank run takes no init_options: the MLP sweeps' full-rank runs go to the sibling <name>-full."""
    tiny = {"dataset": "synthetic", "subset": 64, "batch_size": 32}
    spec = SweepSpec("m", "mlp", (0.25,), (0,), 1, inits=("spectral",), init_options={"factorize_stem": True},
                     full_rank_seeds=(0,), train=tiny)  # fmt: skip
    roots = run_grid(tmp_path, [spec])
    assert [r.name for r in roots] == ["m", "m-full"]
    assert [p.name for p in (tmp_path / "m" / "runs").iterdir()] == ["spectral-r0.25-s0"]
    assert [p.name for p in (tmp_path / "m-full" / "runs").iterdir()] == ["full-s0"]
    assert json.loads((tmp_path / "m-full" / "sweep.json").read_text())["config"]["init_options"] == {}
    assert (tmp_path / "m-full" / "runs" / "full-s0" / "commit.txt").exists()


def test_run_grid_runs_the_cells_records_provenance_and_resumes(tmp_path):
    spec = SweepSpec("t", "mlp", (0.25,), (0, 1), 1, inits=("spectral", "relu-svd"),
                     init_seeds={"relu-svd": (0,)}, full_rank_seeds=(1,),
                     train={"dataset": "synthetic", "subset": 128, "batch_size": 32})  # fmt: skip
    (root,) = run_grid(tmp_path, [spec])
    runs = sorted(p.name for p in (root / "runs").iterdir())
    assert runs == ["full-s1", "relu-svd-r0.25-s0", "spectral-r0.25-s0", "spectral-r0.25-s1"]
    launch = json.loads((root / "provenance.jsonl").read_text())
    assert launch["sweep"]["name"] == "t" and launch["device"] == "cpu"
    assert launch["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability()) and launch["cpu"]
    assert launch["commit"] is None or len(launch["commit"]) == 40
    stamp = root / "runs" / "full-s1" / "commit.txt"
    assert json.loads(stamp.read_text())["pid"] == launch["pid"]
    assert "| 0.25 |" in (root / "table.md").read_text()
    mtime = stamp.stat().st_mtime_ns
    run_grid(tmp_path, [spec])  # all done: nothing retrained, nothing restamped, one more launch recorded
    assert stamp.stat().st_mtime_ns == mtime
    assert len((root / "provenance.jsonl").read_text().splitlines()) == 2


def test_run_grid_goes_on_when_its_first_cell_is_not_the_reference(tmp_path):
    """The seed-major order trains baseline before spectral. The report written after that first cell has
    no pairs yet and the grid goes on: it stopped with "reference init 'spectral' has no runs" while
    sweep.json listed only the cells trained so far, not the grid."""
    spec = SweepSpec("t", "mlp", (0.25,), (0,), 1, inits=("baseline", "spectral"),
                     train={"dataset": "synthetic", "subset": 64, "batch_size": 32})  # fmt: skip
    (root,) = run_grid(tmp_path, [spec])
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["baseline-r0.25-s0", "spectral-r0.25-s0"]
    assert all((p / "commit.txt").exists() for p in (root / "runs").iterdir())
    recorded = json.loads((root / "sweep.json").read_text())
    assert (recorded["inits"], recorded["rank_scales"], recorded["seeds"]) == (
        ["baseline", "spectral"],
        [0.25],
        [0],
    )
    with open(root / "paired.csv") as f:
        (row,) = csv.DictReader(f)
    assert (row["init"], row["reference"], row["pairs"]) == ("baseline", "spectral", "1")


def test_extra_seeds_train_one_rank_scale_more_after_the_grid():
    inits = ("spectral", "relu-svd", "lfai-ws")
    spec = SweepSpec("t", "mlp", (0.1, 0.25), (0, 1), 1, inits=inits, init_seeds={"lfai-ws": (0,)},
                     full_rank_seeds=(0,), extra_seeds={0.1: (1, 2, 3)})  # fmt: skip
    cells = spec.cells()
    grid = [(None, None, 0)] + [(i, r, s) for s in (0, 1) for r in (0.1, 0.25) for i in spec.inits_for(s)]
    # seed 1 is already in the grid; 2 and 3 only at 0.1, and not for lfai-ws (restricted to seed 0)
    extra = [(i, 0.1, s) for s in (2, 3) for i in ("spectral", "relu-svd")]
    assert cells == grid + extra


def test_a_diverging_cell_is_recorded_and_not_retried(tmp_path):
    """lr 1e6 makes every run's loss NaN in its first epoch: each cell gets diverged.json, the grid goes on
    to the next cell, the report names them, and a second launch does not train them again."""
    tiny = {"dataset": "synthetic", "subset": 64, "batch_size": 32, "lr": 1e6}
    spec = SweepSpec("d", "mlp", (0.25,), (0,), 1, inits=("spectral", "relu-svd"), train=tiny)
    (root,) = run_grid(tmp_path, [spec])
    marks = sorted(p.parent.name for p in root.glob("runs/*/diverged.json"))
    assert marks == ["relu-svd-r0.25-s0", "spectral-r0.25-s0"]
    record = json.loads((root / "runs" / "spectral-r0.25-s0" / "diverged.json").read_text())
    assert record["error"].startswith("training diverged in epoch 1")
    assert not list(root.glob("runs/*/summary.json"))
    mtime = (root / "runs" / "spectral-r0.25-s0" / "metrics.jsonl").stat().st_mtime_ns
    run_grid(tmp_path, [spec])
    assert (root / "runs" / "spectral-r0.25-s0" / "metrics.jsonl").stat().st_mtime_ns == mtime


def test_evidence_report_assembles_the_sweeps_and_keeps_the_conclusion(tmp_path):
    """report.md: the hand-written conclusion first, then per sweep that has runs its paired table (the
    known answer of test_report: relu-svd - spectral = 1, 2, 3, 4 on seeds 0-3), and the two combined
    figures (paired differences, init error vs accuracy; one panel per sweep)."""
    from test_report import _fake_sweep, _known_rows

    root, out = tmp_path / "sweep", tmp_path / "evidence"
    _fake_sweep(root / "fmnist-wide_mlp", _known_rows())
    out.mkdir()
    (out / "conclusion.md").write_text("## Conclusion\n\nHand-written, citing the tables.\n")
    text = evidence.write_evidence_report(root, out).read_text()
    assert text.index("Hand-written, citing the tables.") < text.index(
        "### fmnist-wide_mlp (wide_mlp, 8 epochs)"
    )
    assert "| 0.1 | **-0.50 ± 0.00 [-0.50, -0.50]** (n=3) | **+2.50 ± 0.65 [+0.45, +4.55]** (n=4) |" in text
    assert "fmnist-wide_mlp_bn" not in text  # no runs: not reported
    for figure in ("init_error_vs_accuracy.png", "paired_difference_vs_rank.png"):
        assert (out / figure).stat().st_size > 0 and f"]({figure})" in text
    assert (root / "fmnist-wide_mlp" / "table.md").exists()  # the sweep's own report, written on the way
