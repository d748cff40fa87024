"""nlinit compress on the command line: a checkpoint from nlinit train in, a compressed checkpoint that
load_model rebuilds and the reports out; bad input is one line with nothing written."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from nlinit.checkpoint import load_model
from nlinit.cli import main
from nlinit.data import build_datasets
from nlinit.layers import LowRankLinear
from nlinit.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A full-rank MLP trained one short epoch on the synthetic dataset by nlinit train."""
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        model="mlp",
        dataset="synthetic",
        init="full",
        subset=256,
        epochs=1,
        batch_size=64,
        out=str(out),
        progress=False,
    )
    summary = train(cfg)
    return out / "checkpoint.safetensors", summary


def test_compress_cli_writes_a_checkpoint_that_loads(trained, tmp_path, capsys):
    ckpt, summary = trained
    out = tmp_path / "c"
    argv = ["compress", "--model", "mlp", "--checkpoint", str(ckpt), "--dataset", "synthetic"]
    argv += ["--calibration-images", "128", "--budget", "0.5", "--method", "relu-svd", "--allocate", "energy"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert "test top-1" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    # the dense model's test top-1, as nlinit train measured it on the same test set
    assert data["metric_before"] == pytest.approx(summary["final_test_top1"])
    assert data["config"]["budget"] == 0.5 and data["config"]["allocate"] == "energy"
    kept = sum(x["params_after"] for x in data["layers"])
    assert kept <= 0.5 * sum(x["params_before"] for x in data["layers"])
    model = load_model(out / "model.safetensors")  # rebuilt by name, low-rank layers included
    ranks = {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    assert ranks == {x["name"]: x["rank"] for x in data["layers"]}
    test = build_datasets("synthetic", augment=False).test
    x, y = (
        torch.stack([test[i][0] for i in range(len(test))]),
        torch.tensor([test[i][1] for i in range(len(test))]),
    )
    with torch.no_grad():
        top1 = 100.0 * float((model.eval()(x).argmax(1) == y).float().mean())
    assert top1 == pytest.approx(data["metric_after"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget", "1.5"], r"budget must be a fraction in \(0, 1\)"),
        (["--macs", "0"], r"macs must be a fraction in \(0, 1\) of the layers' multiply-accumulates kept"),
        (
            ["--budget", "0.5", "--model", "resnet20"],
            "--model 'resnet20' does not match the checkpoint's model 'mlp'",
        ),
        (["--budget", "0.5", "--calibration-images", "100000"], "--calibration-images 100000 exceeds the"),
        (["--budget", "0.5", "--finetune", "-1"], r"finetune must be an int >= 0, got -1$"),
        (
            ["--budget", "0.5", "--finetune", "2", "--finetune-lr", "0"],
            r"finetune_lr must be a finite number > 0",
        ),
    ],
)
def test_compress_cli_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys, extra, message):
    ckpt, _ = trained
    out = tmp_path / "c"
    argv = ["compress", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--calibration-images", "64"]
    assert main([*argv, *extra, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nlinit compress: error: ") and "\n" not in err
    assert re.search(message, err)
    assert not out.exists()


def test_compress_cnn_grid_resumes_and_tables(trained, tmp_path):
    """The grid runner: the uncompressed row (nlinit train's own test top-1), one row per configuration,
    the table and the plot; a rerun trains nothing new and keeps the rows."""
    from nlinit.experiments import compress_cnn

    ckpt, summary = trained
    out = tmp_path / "grid"
    argv = ["--checkpoint", str(ckpt), "--out", str(out), "--methods", "svd", "relu-svd"]
    argv += ["--allocations", "uniform", "--budgets", "0.5", "--calibration-images", "128"]
    assert compress_cnn.main(argv) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[1].startswith("original,,1.0,1.0,")
    assert float(rows[1].split(",")[8]) == pytest.approx(summary["final_test_top1"])
    assert "| relu-svd | uniform |" in (out / "table.md").read_text()
    assert (out / "top1_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "top1_finetuned_vs_params.png").exists()  # no fine-tune, no fine-tuned figure
    before = (out / "results.csv").read_text()
    assert compress_cnn.main(argv) == 0
    assert (out / "results.csv").read_text() == before


def test_compress_cnn_bad_input_writes_nothing(trained, tmp_path):
    from nlinit.experiments import compress_cnn

    ckpt, _ = trained
    out = tmp_path / "grid"
    base = ["--checkpoint", str(ckpt), "--out", str(out), "--calibration-images", "128"]
    with pytest.raises(ValueError, match=r"budget must be"):
        compress_cnn.main([*base, "--budgets", "1.5", "--methods", "svd", "--allocations", "uniform"])
    with pytest.raises(ValueError, match=r"^--shard must look like i/n \(e.g. 0/4\), got '1-2'$"):
        compress_cnn.main([*base, "--shard", "1-2"])
    with pytest.raises(ValueError, match=r"^shard must be i/n with 0 <= i < n, got \(2, 2\)$"):
        compress_cnn.main([*base, "--shard", "2/2"])
    assert not out.exists()


def test_compress_cnn_shards_fill_one_grid(trained, tmp_path):
    """Two shards (run one after the other here; the lock lets them overlap) give the rows one run gives,
    the shards' cells interleaved as they came; commands.txt lists both commands."""
    from nlinit.experiments import compress_cnn

    ckpt, _ = trained
    argv = ["--checkpoint", str(ckpt), "--methods", "svd", "whiten", "--allocations", "uniform", "energy"]
    argv += ["--budgets", "0.5", "--calibration-images", "64"]
    assert compress_cnn.main([*argv, "--out", str(tmp_path / "one")]) == 0
    for shard in ("1/2", "0/2"):
        assert compress_cnn.main([*argv, "--out", str(tmp_path / "two"), "--shard", shard]) == 0

    def cells(name):
        rows = list(csv.DictReader((tmp_path / name / "results.csv").open()))
        drop = ("machine", *(k for k in rows[0] if k.startswith("seconds_")))
        return {(r["method"], r["allocate"]): {k: v for k, v in r.items() if k not in drop} for r in rows}

    assert cells("two") == cells("one") and len(cells("one")) == 1 + 4
    methods = [line.split(",")[:2] for line in (tmp_path / "two" / "results.csv").read_text().splitlines()]
    assert methods[1:] == [["original", ""], ["svd", "energy"], ["whiten", "energy"], ["svd", "uniform"],
                           ["whiten", "uniform"]]  # fmt: skip
    assert (tmp_path / "two" / "commands.txt").read_text().count("--shard") == 2
    assert "| whiten | uniform |" in (tmp_path / "two" / "table.md").read_text()  # drawn from all rows


def test_run_grid_runs_what_is_missing_in_order_and_saves_after_each():
    from nlinit.experiments.compress_table import run_grid
    from nlinit.experiments.machine import short

    done = [{"method": "svd", "allocate": "uniform", "budget": "0.5", "top1": "1.0"}]  # as read from a CSV
    calls, saved = [], []

    def run(budget, method, allocate):
        calls.append((budget, method, allocate))
        return {"top1": 2.0}

    rows = run_grid(done, [0.5, 0.3], ["svd", "whiten"], ["uniform"], run, saved.append)
    assert calls == [(0.5, "whiten", "uniform"), (0.3, "svd", "uniform"), (0.3, "whiten", "uniform")]
    assert [(r["method"], float(r["budget"])) for r in rows] == [
        ("svd", 0.5), ("whiten", 0.5), ("svd", 0.3), ("whiten", 0.3)
    ]  # fmt: skip
    assert saved == rows[1:]  # every new row, as it came
    assert "machine" not in rows[0] and {r["machine"] for r in rows[1:]} == {short()}  # new rows only


def test_run_grid_shards_split_the_cells_in_order():
    from nlinit.experiments.compress_table import run_grid

    cells = [(b, m, a) for b in (0.5, 0.3) for m in ("svd", "whiten") for a in ("uniform", "energy")]
    ran: dict[int, list] = {i: [] for i in range(3)}
    for i in range(3):
        run_grid([], [0.5, 0.3], ["svd", "whiten"], ["uniform", "energy"],
                 lambda *c, i=i: ran[i].append(c) or {}, lambda row: None, shard=(i, 3))  # fmt: skip
    assert [ran[i] for i in range(3)] == [cells[0::3], cells[1::3], cells[2::3]]  # all, none twice


def test_merge_rows_replaces_in_place_appends_keeps_and_renders(tmp_path):
    from nlinit.experiments.compress_table import LOCK, merge_rows

    path, fields, drawn = tmp_path / "results.csv", ["method", "allocate", "budget", "top1"], []
    original = {"method": "original", "allocate": "", "budget": 1.0, "top1": 90}
    merge_rows(path, [original, {"method": "svd", "allocate": "uniform", "budget": 0.5, "top1": 1}], fields)
    merge_rows(path, [original | {"top1": 0}], fields, keep=True)  # a second shard's: the first stays
    rows = merge_rows(path, [{"method": "svd", "allocate": "uniform", "budget": "0.50", "top1": 2},
                             {"method": "svd", "allocate": "uniform", "budget": 0.3, "top1": 3}], fields,
                      drawn.append)  # fmt: skip
    assert [(r["method"], float(r["budget"]), int(r["top1"])) for r in rows] == [
        ("original", 1.0, 90), ("svd", 0.5, 2), ("svd", 0.3, 3)
    ]  # fmt: skip
    assert drawn == [rows] and path.read_text().splitlines()[2] == "svd,uniform,0.50,2"
    before = path.stat().st_mtime_ns
    assert merge_rows(path, [], fields, drawn.append) == drawn[1] and path.stat().st_mtime_ns == before
    assert (tmp_path / LOCK).exists()


def _merge_many(path: str, method: str, count: int) -> None:
    from pathlib import Path

    from nlinit.experiments.compress_table import merge_rows

    for i in range(count):
        row = {"method": method, "allocate": "uniform", "budget": (i + 1) / (count + 1), "top1": i}
        merge_rows(Path(path), [row], ["method", "allocate", "budget", "top1"])


def test_merge_rows_from_processes_at_once_keeps_every_row(tmp_path):
    """Without the lock, two processes' read-modify-write cycles overwrite each other's rows."""
    import multiprocessing

    path = tmp_path / "results.csv"
    context = multiprocessing.get_context("fork")  # the workers only read and write files
    workers = [
        context.Process(target=_merge_many, args=(str(path), m, 150)) for m in ("svd", "whiten", "asvd")
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    rows = list(csv.DictReader(path.open()))
    assert sorted((r["method"], r["top1"]) for r in rows) == sorted(
        (m, str(i)) for m in ("svd", "whiten", "asvd") for i in range(150)
    )


def test_run_grid_require_reruns_rows_without_the_column_in_place():
    from nlinit.experiments.compress_table import run_grid

    done = [  # a training-free grid (empty fine-tuned cells, as read from a CSV), then one fine-tuned row
        {"method": "svd", "allocate": "uniform", "budget": "0.5", "top1": "1.0", "top1_finetuned": ""},
        {"method": "whiten", "allocate": "uniform", "budget": "0.5", "top1": "1.5", "top1_finetuned": "3.0"},
        {"method": "svd", "allocate": "uniform", "budget": "0.3", "top1": "0.5", "top1_finetuned": ""},
    ]
    calls = []

    def run(budget, method, allocate):
        calls.append((budget, method))
        return {"top1": 2.0, "top1_finetuned": 4.0}

    rows = run_grid(
        done, [0.5], ["svd", "whiten"], ["uniform"], run, lambda r: None, require="top1_finetuned"
    )
    assert calls == [(0.5, "svd")]  # whiten has its value; 0.3 was not asked for
    assert [(r["method"], float(r["budget"]), r["top1_finetuned"]) for r in rows] == [
        ("svd", 0.5, 4.0), ("whiten", 0.5, "3.0"), ("svd", 0.3, "")
    ]  # fmt: skip


def test_compress_cli_macs_budget(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "m"
    argv = ["compress", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--calibration-images", "64"]
    assert main([*argv, "--macs", "0.4", "--allocate", "energy", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["config"]["macs"] == 0.4 and data["config"]["budget"] is None
    assert sum(x["macs_after"] for x in data["layers"]) <= 0.4 * sum(x["macs_before"] for x in data["layers"])


def test_compress_cli_fine_tunes_on_the_training_set(trained, tmp_path, capsys):
    """--finetune: the training-free and the fine-tuned top-1 side by side; the saved model is the fine-tuned
    one (its top-1 on the test set is metric_finetuned)."""
    ckpt, _ = trained
    out = tmp_path / "f"
    argv = ["compress", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--calibration-images", "64"]
    argv += ["--budget", "0.3", "--finetune", "6", "--finetune-loss", "ce", "--finetune-lr", "1e-3"]
    assert main([*argv, "--batch-size", "128", "--out", str(out), "--quiet"]) == 0
    assert "% (fine-tuned); wrote" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    assert data["config"]["finetune"] == 6 and data["config"]["finetune_loss"] == "ce"
    assert len(data["finetune"]["losses"]) == 6 and data["seconds"]["finetune"] > 0
    test = build_datasets("synthetic", augment=False).test
    x, y = (
        torch.stack([test[i][0] for i in range(len(test))]),
        torch.tensor([test[i][1] for i in range(len(test))]),
    )
    with torch.no_grad():
        top1 = 100.0 * float((load_model(out / "model.safetensors").eval()(x).argmax(1) == y).float().mean())
    assert top1 == pytest.approx(data["metric_finetuned"])


def test_compress_cnn_grid_fine_tuned_column_and_table(trained, tmp_path):
    """--finetune-epochs: top1_finetuned and seconds_finetune per configuration, a fine-tuned table."""
    import csv

    from nlinit.experiments import compress_cnn

    ckpt, _ = trained
    out = tmp_path / "grid"
    argv = ["--checkpoint", str(ckpt), "--out", str(out), "--methods", "svd", "--allocations", "uniform"]
    argv += ["--budgets", "0.5", "--calibration-images", "128", "--finetune-epochs", "1"]
    assert compress_cnn.main(argv) == 0
    with (out / "results.csv").open() as f:
        original, row = list(csv.DictReader(f))
    assert original["top1_finetuned"] == "" and 0 <= float(row["top1_finetuned"]) <= 100
    assert float(row["seconds_finetune"]) > 0
    md = (out / "table.md").read_text()
    assert "### top1 (training-free) vs budget" in md and "### top1_finetuned (fine-tuned) vs budget" in md
    assert (
        "Fine-tuned (where a fine-tuned value is given): 1 epoch(s) of the training set (8 batches of 128"
        in md
    )
    assert (out / "top1_finetuned_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    # a second, training-free run into the same grid keeps the fine-tuned rows, their table and both commands
    again = ["--checkpoint", str(ckpt), "--out", str(out), "--methods", "whiten", "--allocations", "uniform"]
    again += ["--budgets", "0.5", "--calibration-images", "128"]
    assert compress_cnn.main(again) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["finetune_epochs"]) for r in rows] == [
        ("original", ""),
        ("svd", "1"),
        ("whiten", ""),
    ]
    md = (out / "table.md").read_text()
    assert "### top1_finetuned (fine-tuned) vs budget" in md and "Commands (in order): `python -m" in md
    assert "--finetune-epochs 1`; `python -m nlinit.experiments.compress_cnn --checkpoint" in md


def test_compress_cli_sequential(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "s"
    argv = ["compress", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--calibration-images", "64"]
    argv += ["--budget", "0.5", "--method", "whiten", "--sequential", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["config"]["sequential"] is True and data["factorize"]["config"]["sequential"] is True
    model = load_model(out / "model.safetensors")
    ranks = {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    assert ranks == {x["name"]: x["rank"] for x in data["layers"]}


def test_remembered_teacher_gives_the_same_finetune_and_runs_the_teacher_once_per_batch():
    import copy

    from nlinit.experiments.compress_cnn import RememberedTeacher
    from nlinit.finetune import finetune

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )  # fmt: skip
    data = [(torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))) for _ in range(3)]
    student = copy.deepcopy(teacher)
    student[0].weight.data.mul_(0.5)  # a changed model, as a compressed one is
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))

    plain = copy.deepcopy(student)
    finetune(plain, data, steps=6, teacher=teacher, progress=False)  # two passes over the 3 batches
    assert len(calls) == 6
    teacher.eval()  # as compress_cnn's model; the wrapper takes its mode, so finetune leaves it in eval
    remembered = RememberedTeacher(teacher)
    calls.clear()
    for _ in range(2):  # two configurations of a grid
        tuned = copy.deepcopy(student)
        finetune(tuned, data, steps=6, teacher=remembered, progress=False)
        for a, b in zip(plain.state_dict().values(), tuned.state_dict().values(), strict=True):
            assert torch.equal(a, b)  # the same values from the store: bit for bit the same fine-tune
    assert len(calls) == 3  # once per distinct batch over both runs
    assert not teacher.training and not remembered.training
    assert len(remembered.outputs) == 3


def test_remembered_teacher_refuses_grad_mode_and_train_mode():
    from nlinit.experiments.compress_cnn import RememberedTeacher

    remembered = RememberedTeacher(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="no_grad"):
        remembered.eval()(torch.ones(1, 2))
    with torch.no_grad(), pytest.raises(RuntimeError, match="eval mode"):
        remembered.train()(torch.ones(1, 2))
    with pytest.raises(TypeError, match="teacher"):
        RememberedTeacher("not a module")  # type: ignore[arg-type]
