"""Training: the schedule, a loss that falls, exact resume after SIGKILL, DDP = one process, bad input."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nlinit._paths import claim_dir
from nlinit.checkpoint import CheckpointError, load_model, read_metadata
from nlinit.cli import main
from nlinit.data import build_datasets
from nlinit.train import DivergedError, RunLockedError, TrainConfig, lr_at, train

# A tiny task: a BatchNorm-free MLP on the synthetic dataset trains in well under a second per epoch.
TINY = dict(model="mlp", dataset="synthetic", batch_size=32, epochs=3, lr=0.05, progress=False)


def _epochs(out: Path) -> list[dict]:
    """The epoch records of a run without the timing fields (which differ between runs)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
        for r in records
        if r["event"] == "epoch"
    ]


@given(
    total=st.integers(2, 5000),
    warm_frac=st.floats(0.0, 0.5),
    peak=st.floats(1e-4, 10.0),
)
def test_lr_schedule_warms_up_linearly_then_decays_to_zero(total, warm_frac, peak):
    warm = int(warm_frac * total)
    lrs = [lr_at(t, total, warm, peak) for t in range(total + 1)]
    assert all(0.0 <= lr <= peak * (1 + 1e-12) for lr in lrs)
    if warm:
        assert lrs[warm - 1] == pytest.approx(peak)  # warm-up reaches the peak on its last step
        assert all(b > a for a, b in zip(lrs[:warm], lrs[1:warm], strict=False))
    assert lrs[warm] == pytest.approx(peak)  # cosine starts at the peak
    assert all(b <= a + 1e-15 for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))
    assert lrs[total] == pytest.approx(0.0, abs=1e-12 * peak)


def test_lr_cosine_midpoint_is_half_the_peak():
    assert lr_at(10 + 45, 100, 10, 2.0) == pytest.approx(1.0)  # cos(pi / 2) = 0


def test_loss_falls_on_a_small_synthetic_set(tmp_path):
    summary = train(TrainConfig(**TINY, init="relu-svd", rank_scale=0.25, out=str(tmp_path / "a")))
    epochs = _epochs(tmp_path / "a")
    assert len(epochs) == 3 and summary["final_test_top1"] == epochs[-1]["test_top1"]
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    init = records[0]
    assert init["event"] == "init" and init["layers"] >= 1 and init["params"] < init["params_full"]
    assert (
        0.0 < init["function_error"] < 1.0 and 0.0 < init["mean_objective"] <= init["mean_objective_spectral"]
    )
    assert records[-1]["event"] == "done"

    meta = read_metadata(tmp_path / "a" / "checkpoint.safetensors")
    assert set(meta["layers"]) == set(meta["structure"]) and len(meta["layers"]) == init["layers"]
    assert all(v["activation"] == "relu" and v["rank"] >= 1 for v in meta["layers"].values())
    # The checkpoint rebuilds the trained low-rank model from its name alone, with the same test accuracy.
    model = load_model(tmp_path / "a" / "checkpoint.safetensors").eval()
    test = build_datasets("synthetic", subset=None).test
    x, y = (
        torch.stack([test[i][0] for i in range(len(test))]),
        torch.tensor([test[i][1] for i in range(len(test))]),
    )
    with torch.no_grad():
        top1 = 100.0 * (model(x).argmax(1) == y).double().mean().item()
    assert top1 == pytest.approx(summary["final_test_top1"], abs=1e-9)


def test_full_rank_run_and_frobenius_decay(tmp_path):
    train(TrainConfig(**{**TINY, "epochs": 1}, init="full", out=str(tmp_path / "full")))
    train(
        TrainConfig(
            **{**TINY, "epochs": 1}, init="spectral", reg="fd", reg_coef=1e-3, out=str(tmp_path / "fd")
        )
    )
    for run in ("full", "fd"):
        assert math.isfinite(_epochs(tmp_path / run)[-1]["train_loss"])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nlinit", "train", *args]


def _tiny_args(out: Path, epochs: int = 3) -> list[str]:
    return [
        "--model=mlp",
        "--dataset=synthetic",
        "--batch-size=16",
        f"--epochs={epochs}",
        "--lr=0.05",
        "--init=relu-svd",
        "--rank-scale=0.25",
        "--subset=256",
        "--no-progress",
        f"--out={out}",
    ]


def test_resume_after_sigkill_in_second_epoch_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(*_tiny_args(whole)), check=True, env=env, capture_output=True)
    steps_per_epoch = read_metadata(whole / "checkpoint.safetensors")["step"] // 3

    proc = subprocess.Popen(_cli(*_tiny_args(killed), "--checkpoint-every=2"), env=env)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill right after a checkpoint inside epoch 2
            try:
                meta = read_metadata(killed / "checkpoint.safetensors")
            except CheckpointError:
                meta = None
            if meta is not None and meta["epoch"] == 1 and meta["step_in_epoch"] >= steps_per_epoch // 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed in epoch 2"
    assert not (killed / "summary.json").exists()
    assert len(_epochs(killed)) == 1

    subprocess.run(_cli(*_tiny_args(killed), "--checkpoint-every=2", "--resume"), check=True, env=env)
    assert _epochs(killed) == _epochs(whole)  # every loss and accuracy equal, not just close
    ours = read_metadata(killed / "checkpoint.safetensors")
    assert ours["step"] == 3 * steps_per_epoch


def test_ddp_two_processes_equal_one_process_over_the_same_global_batch(tmp_path):
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--epochs=2"]
    subprocess.run(_cli(*_tiny_args(one, 2), *args), check=True, env=env, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run(
        [*torchrun, "-m", "nlinit", "train", *_tiny_args(two, 2), *args],
        check=True,
        env=env,
        capture_output=True,
    )
    a = load_file(one / "checkpoint.safetensors")
    b = load_file(two / "checkpoint.safetensors")
    params = [k for k in a if k.startswith("model/")]
    assert params and set(params) == {k for k in b if k.startswith("model/")}
    for k in params:
        # Same data, same init; only the order of float additions differs (gradient all-reduce averages
        # two half-batch means instead of one full-batch mean): float32 rounding, amplified by training.
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    ea, eb = _epochs(one), _epochs(two)
    for ra, rb in zip(ea, eb, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["test_top1"] == pytest.approx(rb["test_top1"], abs=100 / 256 + 1e-9)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model": "no-such-net"}, "unknown model 'no-such-net'"),
        ({"dataset": "no-such-data"}, "unknown dataset 'no-such-data'"),
        ({"init": "svd++"}, "unknown init 'svd\\+\\+'"),
        ({"reg": "l1"}, "unknown reg 'l1'"),
        ({"epochs": 0}, "epochs must be an int >= 1, got 0"),
        ({"rank_scale": 1.5}, "rank_scale must be a number in"),
    ],
)
def test_bad_config_is_refused_before_anything_is_written(tmp_path, change, match):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(**{**TINY, **change, "out": str(out)}))
    assert not out.exists()


def test_missing_data_directory_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        train(
            TrainConfig(
                **{**TINY, "dataset": "fashion-mnist"},
                data_dir=str(tmp_path / "nope"),
                out=str(tmp_path / "r"),
            )
        )


def test_existing_run_is_not_overwritten_and_other_config_cannot_resume(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(**{**TINY, "epochs": 1}, init="spectral", out=str(out))
    train(cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg)
    (out / "summary.json").unlink()  # an unfinished run: resuming with another model must be refused
    before.pop("summary.json")
    with pytest.raises(CheckpointError, match="model='mlp'"):
        train(
            TrainConfig(
                **{**TINY, "epochs": 1, "model": "resnet20"}, init="spectral", out=str(out), resume=True
            )
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_bf16_on_cpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("bf16 is allowed on CUDA")
    with pytest.raises(ValueError, match="bf16 autocast needs a CUDA device"):
        train(TrainConfig(**TINY, bf16=True, out=str(tmp_path / "r")))


# ---------------------------------------------------------------------------------------------------------
# Issue 12: runs that fail loudly and lose nothing.


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[TrainConfig, Path, dict[str, bytes]]:
    """One finished tiny run (1 epoch), its config and the bytes of every file in it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = TrainConfig(**{**TINY, "epochs": 1}, init="spectral", rank_scale=0.25, subset=128, out=str(out))
    train(cfg)
    return cfg, out, _snapshot(out)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "resnet20"}, "was written with model='mlp', but this run has model='resnet20'"),
        ({"rank_scale": 0.5}, "was written with rank_scale=0.25, but this run has rank_scale=0.5"),
        ({"dataset": "fashion-mnist"}, "with dataset='synthetic', but this run has dataset='fashion-mnist'"),
        ({"init": "relu-svd"}, "was written with init='spectral', but this run has init='relu-svd'"),
        ({"epochs": 2}, "was written with epochs=1, but this run has epochs=2"),
        ({"lr": 0.1}, "was written with lr=0.05, but this run has lr=0.1"),
    ],
)
def test_resume_of_a_finished_run_with_another_config_is_refused(finished, change, message):
    """Defect 3: it used to return the other run's summary with exit code 0."""
    cfg, out, files = finished
    other = dataclasses.replace(cfg, **change, resume=True)
    with pytest.raises(ValueError, match=f"^the finished run in '{out}' .*{message}; use another out"):
        train(other)
    assert _snapshot(out) == files
    assert train(dataclasses.replace(cfg, resume=True)) == json.loads(
        files["summary.json"]
    )  # same: its summary


def test_a_run_directory_is_locked_for_the_whole_run(tmp_path, monkeypatch):
    """Defect 4: a second train on the same out is refused while the first runs, and the first's files are
    not touched; the lock goes when the run ends (also when it fails)."""
    import nlinit.train as train_module

    out = tmp_path / "run"
    cfg = TrainConfig(**{**TINY, "epochs": 1}, init="spectral", rank_scale=0.25, subset=64, out=str(out))
    seen = []
    real_build = train_module.build_datasets

    def build_while_running(*args, **kwargs):  # runs inside the first train, while it holds the lock
        with pytest.raises(RunLockedError, match=f"^out '{out}' is in use by process {os.getpid()} "):
            train(dataclasses.replace(cfg, resume=True))
        seen.append(_snapshot(out))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(train_module, "build_datasets", build_while_running)
    train(cfg)
    assert seen == [{".nlinit.lock": f"{os.getpid()}\n".encode()}]  # the second wrote nothing
    monkeypatch.setattr(train_module, "build_datasets", real_build)
    train(dataclasses.replace(cfg, resume=True))  # released at the end


def test_the_lock_is_released_when_its_process_is_killed(tmp_path):
    """flock locks belong to the open file: the kernel drops them with the process, also on SIGKILL."""
    import nlinit._paths

    out = tmp_path / "run"
    holder = (
        "import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('p', {nlinit._paths.__file__!r})\n"
        "p = importlib.util.module_from_spec(spec); spec.loader.exec_module(p)\n"  # no torch import: fast
        f"with p.claim_dir({str(out)!r}):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        with pytest.raises(RunLockedError, match=f"is in use by process {proc.pid} "), claim_dir(out):
            pass
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with claim_dir(out):  # free again
        pass


def test_a_loss_that_becomes_nan_stops_the_run_with_a_clear_error(tmp_path, capsys):
    """Defect 7: a diverging run used to finish with exit 0 and a NaN loss. Now it stops before logging or
    checkpointing anything non-finite, and the command line exits 1."""
    out = tmp_path / "run"
    cfg = TrainConfig(**{**TINY, "lr": 1e4, "warmup": 0.0}, init="spectral", subset=64, out=str(out))
    with pytest.raises(DivergedError, match="^training diverged in epoch 1, by step 2: the loss became NaN"):
        train(cfg)
    assert sorted(p.name for p in out.iterdir()) == [".nlinit.lock", "metrics.jsonl"]
    records = (out / "metrics.jsonl").read_text()
    assert "NaN" not in records and "Infinity" not in records
    argv = [*_tiny_args(tmp_path / "cli"), "--lr=1e4", "--warmup=0", "--subset=64", "--batch-size=32"]
    assert main(["train", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nlinit train: error: training diverged") and err.count("\n") == 1


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """Defect 6: the checkpoint write fails with ENOSPC; the command says so in one line, exit 2."""
    import nlinit.checkpoint

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(nlinit.checkpoint, "save_file", full_disk)
    out = tmp_path / "run"
    assert main(["train", *_tiny_args(out, epochs=1), "--subset=64", "--batch-size=32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nlinit train: error: [Errno 28] No space left on device") and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == [".nlinit.lock", "metrics.jsonl"]  # no partial file


def test_resume_drops_a_partial_last_metrics_line(finished, tmp_path):
    """A run killed while appending to metrics.jsonl leaves a line without its newline; resuming drops it."""
    cfg, out, files = finished
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in files.items():
        if name != "summary.json":  # killed after its last checkpoint, before the summary
            (copy / name).write_bytes(data)
    with (copy / "metrics.jsonl").open("a") as f:
        f.write('{"event": "epo')
    summary = train(dataclasses.replace(cfg, out=str(copy), resume=True))
    assert summary["final_test_top1"] == json.loads(files["summary.json"])["final_test_top1"]
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines) and json.loads(lines[-1])["event"] == "done"
