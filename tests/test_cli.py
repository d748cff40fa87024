"""The command line and the experiments it calls, on small models."""

from __future__ import annotations

import json
import re

import pytest

from nlinit.cli import main
from nlinit.experiments.compare import InitSpec, compare_inits, markdown_table
from nlinit.experiments.demo import run_demo
from nlinit.inits import list_inits
from nlinit.models import build_model
from nlinit.train import TrainConfig


def test_list_inits(capsys):
    assert main(["list", "inits"]) == 0
    assert capsys.readouterr().out.split() == list_inits()


def test_factorize_writes_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(
        [
            "factorize",
            "--model",
            "mlp",
            "--num-classes",
            "10",
            "--rank-scale",
            "0.1",
            "--init",
            "relu-svd",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    names = [layer["name"] for layer in data["layers"]]
    assert names == ["1", "3", "5", "7"]  # execution order: stem 1, hidden 3 and 5, classifier 7
    assert [layer["status"] for layer in data["layers"]] == ["skipped", "factorized", "factorized", "skipped"]
    assert data["config"]["init"] == "relu-svd" and data["config"]["fit"] == "layer"
    assert "| 3 | 512x512 | 51 |" in capsys.readouterr().out
    paper = tmp_path / "paper.json"
    argv = [
        "factorize",
        "--model",
        "mlp",
        "--rank-scale",
        "0.1",
        "--fit",
        "paper",
        "--out",
        str(paper),
        "--quiet",
    ]
    assert main(argv) == 0
    assert json.loads(paper.read_text())["config"]["fit"] == "paper"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnet5", "--rank-scale", "0.1"], "unknown model 'resnet5'; available: alexnet"),
        (["--model", "mlp", "--rank-scale", "1.5"], r"rank_scale must be a number in \(0, 1\], got 1.5"),
        (["--model", "mlp", "--rank", "0"], "rank must be a positive int, got 0"),
        (["--model", "mlp", "--rank-scale", "0.1", "--activation", "swish"], "unknown activation 'swish'"),
        (["--model", "mlp", "--rank-scale", "0.1", "--out", "r.txt"], r"--out must end in .json, .csv, .md"),
    ],
)
def test_factorize_bad_input_is_one_line_error(argv, message, capsys):
    assert main(["factorize", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(message, err)


def test_compare_inits_same_W_for_every_init():
    rows = compare_inits(
        lambda: build_model("mlp", num_classes=10),
        [0.1],
        [InitSpec("spectral"), InitSpec("relu-svd")],
        source="fresh",
        seed=3,
    )
    spectral, relu_svd = rows
    # Same seed, so the same W: both rows report the same spectral objective, and relu-svd is never worse.
    assert spectral.mean_objective_spectral == relu_svd.mean_objective_spectral == spectral.mean_objective
    assert relu_svd.mean_objective < spectral.mean_objective
    assert relu_svd.share_better == 1.0
    table = markdown_table(rows)
    assert "| 0.1 | relu-svd |" in table and f"**{relu_svd.mean_objective:.4f}**" in table


def test_demo_writes_outputs(tmp_path):
    tiny = TrainConfig(model="mlp", dataset="synthetic", rank_scale=0.25, subset=256, epochs=1)
    tiny.progress = False
    rows = run_demo(
        tmp_path,
        model="mlp",
        rank_scales=[0.05, 0.1],
        inits=["spectral", "relu-svd"],
        train=tiny,
        train_inits=["spectral", "relu-svd"],
    )
    assert [(r.rank_scale, r.label) for r in rows] == [
        (0.05, "spectral"),
        (0.05, "relu-svd"),
        (0.1, "spectral"),
        (0.1, "relu-svd"),
    ]
    assert (tmp_path / "objective_vs_rank.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["rows"]) == 4
    report = (tmp_path / "report.md").read_text()
    assert "| 0.1 | relu-svd |" in report
    # part 2: one training run per init, their accuracies in the report's table
    runs = sorted(p.name for p in (tmp_path / "train" / "runs").iterdir())
    assert runs == ["relu-svd-r0.25-s0", "spectral-r0.25-s0"]
    assert "## 2. Training mlp on synthetic" in report and "| 0.25 |" in report.split("## 2.")[1]


def test_demo_rejects_unknown_init(tmp_path):
    with pytest.raises(ValueError, match="unknown init 'svd'; available: asvd, baseline"):
        run_demo(tmp_path, model="mlp", inits=["svd"])
