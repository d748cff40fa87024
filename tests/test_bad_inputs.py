"""Bad input, entry point by entry point (issue 12): one line naming the value and what is allowed, nothing
created or changed, exit code 2 from the command line.

One table per entry point: train (TrainConfig), run_sweep, and the command line's train, sweep, report,
list, demo, factorize and gap (their paths and option parsing; factorize's own checks are in
test_factorize.py, checkpoint loading and saving in test_checkpoint.py). Every case asserts that the
directory it ran in holds afterwards exactly what it held before.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from nlinit._optional import MissingDependencyError
from nlinit.cli import main
from nlinit.experiments.sweep import run_sweep
from nlinit.train import TrainConfig, train

NAN, INF = math.nan, math.inf
TINY = TrainConfig(
    model="mlp",
    dataset="synthetic",
    init="spectral",
    rank_scale=0.25,
    batch_size=32,
    epochs=1,
    progress=False,
)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory but for one regular file, ``file`` (to put in the way of outputs)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a directory")
    return tmp_path


# ---------------------------------------------------------------------------------------------------------
# train(TrainConfig(...)): every field, before anything is written (defect 7).

TRAIN_CASES = [
    ({"lr": NAN}, r"lr must be a finite number > 0 or None, got nan"),
    ({"lr": -0.1}, r"lr must be a finite number > 0 or None, got -0.1"),
    ({"lr": 0.0}, r"lr must be a finite number > 0 or None, got 0.0"),
    ({"lr": INF}, r"lr must be a finite number > 0 or None, got inf"),
    ({"lr": "0.1"}, r"lr must be a finite number > 0 or None, got '0.1'"),
    ({"weight_decay": NAN}, r"weight_decay must be a finite number >= 0, got nan"),
    ({"weight_decay": -1e-4}, r"weight_decay must be a finite number >= 0, got -0.0001"),
    ({"weight_decay": None}, r"weight_decay must be a finite number >= 0, got None"),
    ({"reg_coef": NAN}, r"reg_coef must be a finite number >= 0 or None, got nan"),
    ({"reg_coef": -1.0}, r"reg_coef must be a finite number >= 0 or None, got -1.0"),
    ({"momentum": NAN}, r"momentum must be a finite number in \[0, 1\), got nan"),
    ({"momentum": -0.9}, r"momentum must be a finite number in \[0, 1\), got -0.9"),
    ({"momentum": 1.0}, r"momentum must be a finite number in \[0, 1\), got 1.0"),
    ({"momentum": True}, r"momentum must be a finite number in \[0, 1\), got True"),
    ({"warmup": NAN}, r"warmup must be a finite number in \[0, 1\), got nan"),
    ({"warmup": 1.0}, r"warmup must be a finite number in \[0, 1\), got 1.0"),
    ({"epochs": 0}, r"epochs must be an int >= 1, got 0"),
    ({"epochs": 2.0}, r"epochs must be an int >= 1, got 2.0"),
    ({"epochs": True}, r"epochs must be an int >= 1, got True"),
    ({"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
    ({"batch_size": NAN}, r"batch_size must be an int >= 1, got nan"),
    ({"subset": 0}, r"subset must be an int >= 1, got 0"),
    ({"test_subset": -5}, r"test_subset must be an int >= 1, got -5"),
    ({"workers": -1}, r"workers must be an int >= 0, got -1"),
    ({"checkpoint_every": -1}, r"checkpoint_every must be an int >= 0, got -1"),
    ({"checkpoint_every": 1.5}, r"checkpoint_every must be an int >= 0, got 1.5"),
    ({"seed": -1}, r"seed must be an int in \[0, 9223372036854775807\], got -1"),
    ({"seed": 1.0}, r"seed must be an int in \[0, 9223372036854775807\], got 1.0"),
    ({"seed": 2**64}, r"seed must be an int in \[0, 9223372036854775807\], got 18446744073709551616"),
    ({"rank_scale": 0}, r"rank_scale must be a number in \(0, 1\], got 0"),
    ({"rank_scale": NAN}, r"rank_scale must be a number in \(0, 1\], got nan"),
    ({"init": "full", "rank_scale": -1.0}, r"rank_scale must be a number in \(0, 1\], got -1.0"),
    ({"model": "no-such-net"}, r"unknown model 'no-such-net'; available: alexnet, "),
    ({"model": "timm:"}, r"model must be a timm model name after 'timm:', got ''"),
    ({"model": 5}, r"model must be a non-empty string, got 5"),
    ({"dataset": "mnist"}, r"unknown dataset 'mnist'; available: cifar10, fashion-mnist, imagefolder"),
    ({"init": "svd++"}, r"unknown init 'svd\+\+'; available: asvd, auto, baseline, "),
    ({"reg": "l1"}, r"unknown reg 'l1'; available: fd, wd"),
    ({"device": "gpu"}, r"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got 'gpu'"),
    ({"device": "cuda:x"}, r"device must be .*, got 'cuda:x'"),
    ({"out": ""}, r"out must be a non-empty path, got ''"),
    ({"data_dir": 5}, r"data_dir must be a non-empty path, got 5"),
    ({"small_input": 1}, r"small_input must be a bool, got 1"),
    ({"progress": "yes"}, r"progress must be a bool, got 'yes'"),
    ({"resume": None}, r"resume must be a bool, got None"),
    ({"init_options": []}, r"init_options must be a dict with string keys, got \[\]"),
    (
        {"init_options": {"nope": 1}},
        r"unknown init option 'nope' for init 'spectral'; available: activ",
    ),
    ({"init_options": {"rank": 3}}, r"unknown init option 'rank' for init 'spectral'"),
    ({"init": "full", "init_options": {"tol": 1}}, r"init_options must be empty for init 'full', got"),
    (
        {"init": "nlra-opt", "init_options": {"tol": NAN}},
        r"init_options must be JSON-serializable",
    ),
    # Found once the data is there: out is created, locked, then removed again.
    ({"subset": 5000}, r"subset must be an int in \[1, 1024\], got 5000"),
    ({"batch_size": 2048}, r"batch_size 2048 is larger than the 1024 training images"),
    ({"download": True}, r"download=True works for cifar10 only, not 'synthetic'"),
    ({"dataset": "fashion-mnist", "data_dir": "missing"}, r"Fashion-MNIST not found in missing; install it"),
    ({"dataset": "imagefolder"}, r"dataset 'imagefolder' needs --data-dir DIR"),
    ({"out": "file"}, r"out 'file' is a file; a directory is needed"),
    ({"out": "file/run"}, r"out 'file/run' cannot be created: '.*/file' is a file"),
]


@pytest.mark.parametrize(("change", "message"), TRAIN_CASES)
def test_train_refuses_bad_config_and_writes_nothing(workdir, change, message):
    cfg = dataclasses.replace(TINY, **{"out": "a/b/run", **change})
    with pytest.raises((ValueError, OSError)) as info:
        train(cfg)
    assert re.match(message, str(info.value)) and "\n" not in str(info.value)
    assert _listing(workdir) == ["file"]  # nothing created: not even a/ (a rejected retry is not blocked)


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is allowed on CUDA")
def test_train_refuses_bf16_on_cpu_and_writes_nothing(workdir):
    with pytest.raises(ValueError, match="^bf16 autocast needs a CUDA device"):
        train(dataclasses.replace(TINY, out="run", bf16=True))
    assert _listing(workdir) == ["file"]


def test_a_missing_optional_dependency_names_the_package_to_install(workdir, monkeypatch, capsys):
    """Defect 10: ``timm:<name>`` without timm is one line that says what to install, from the library and
    from the command line (train and factorize), and leaves nothing behind."""
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    message = "model 'timm:resnet18' needs timm, which is not installed: pip install timm"
    with pytest.raises(MissingDependencyError, match=f"^{message}$"):
        train(dataclasses.replace(TINY, model="timm:resnet18", out="run"))
    for argv in (
        ["train", "--model=timm:resnet18", "--dataset=synthetic", "--out=run"],
        ["factorize", "--model=timm:resnet18", "--rank-scale=0.1", "--quiet"],
    ):
        assert _run(argv, capsys) == (2, f"nlinit {argv[0]}: error: {message}\n")
    assert _listing(workdir) == ["file"]


# ---------------------------------------------------------------------------------------------------------
# run_sweep: every grid value, before any run starts or any file is written (defect 1).

SWEEP_CASES = [
    ({"rank_scales": [0]}, r"rank_scales must be numbers in \(0, 1\], got 0$"),
    ({"rank_scales": [0.0]}, r"rank_scales must be numbers in \(0, 1\], got 0.0$"),
    ({"rank_scales": [NAN]}, r"rank_scales must be numbers in \(0, 1\], got nan$"),
    ({"rank_scales": [1.5]}, r"rank_scales must be numbers in \(0, 1\], got 1.5$"),
    ({"rank_scales": [0.1, -0.1]}, r"rank_scales must be numbers in \(0, 1\], got -0.1$"),
    ({"rank_scales": ["0.1"]}, r"rank_scales must be numbers in \(0, 1\], got '0.1'$"),
    ({"rank_scales": [0.1, 0.1]}, r"rank_scales has 0.1 more than once: \[0.1, 0.1\]$"),
    (
        {"rank_scales": [0.1, 0.1000001]},
        r"rank_scales 0.1 and 0.1000001 would share the run directory",
    ),
    ({"rank_scales": []}, r"inits are given but rank_scales is empty"),
    ({"inits": []}, r"rank_scales are given but inits is empty"),
    ({"inits": "spectral"}, r"inits must be a list, got 'spectral'$"),
    ({"inits": ["nope"]}, r"unknown init 'nope'; available: asvd, auto, baseline"),
    ({"inits": ["full"]}, r"inits must be init names \(full-rank runs: full_rank=True\), got 'full'$"),
    ({"inits": ["spectral", "spectral"]}, r"inits has 'spectral' more than once"),
    ({"seeds": [-1]}, r"seeds must be ints >= 0, got -1$"),
    ({"seeds": [0.5]}, r"seeds must be ints >= 0, got 0.5$"),
    ({"seeds": [True]}, r"seeds must be ints >= 0, got True$"),
    ({"seeds": [0, 0]}, r"seeds has 0 more than once"),
    ({"seeds": []}, r"the grid is empty"),
    ({"inits": [], "rank_scales": [], "full_rank": False}, r"the grid is empty"),
    ({"full_rank": 1}, r"full_rank must be a bool, got 1$"),
    ({"shard": (2, 2)}, r"shard must be i/n with 0 <= i < n, got \(2, 2\)$"),
    ({"shard": (0, 0)}, r"shard must be i/n with 0 <= i < n, got \(0, 0\)$"),
    ({"shard": (True, 2)}, r"shard must be i/n with 0 <= i < n, got \(True, 2\)$"),
    ({"shard": "0/1"}, r"shard must be i/n with 0 <= i < n, got '0/1'$"),
    ({"base": dataclasses.replace(TINY, lr=NAN)}, r"lr must be a finite number > 0 or None, got nan$"),
    ({"base": dataclasses.replace(TINY, weight_decay=-1.0)}, r"weight_decay must be a finite number >= 0"),
    ({"base": "config"}, r"base must be a TrainConfig, got str$"),
    ({"root": "file"}, r"sweep directory 'file' is a file; a directory is needed$"),
    ({"root": "file/s"}, r"sweep directory 'file/s' cannot be created: '.*/file' is a file$"),
]


@pytest.mark.parametrize(("change", "message"), SWEEP_CASES)
def test_run_sweep_refuses_bad_grid_and_writes_nothing(workdir, change, message):
    kwargs = {"root": "s", "base": TINY, "inits": ["spectral"], "rank_scales": [0.25], "seeds": [0]}
    kwargs |= {"full_rank": True, **change}
    with pytest.raises((ValueError, TypeError, OSError)) as info:
        run_sweep(**kwargs)
    assert re.match(message, str(info.value)) and "\n" not in str(info.value)
    assert _listing(workdir) == ["file"]


# ---------------------------------------------------------------------------------------------------------
# The command line: one line on stderr, exit code 2, nothing written (defects 1, 6, 7).


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    return code, capsys.readouterr().err


T = ["--model=mlp", "--dataset=synthetic", "--epochs=1", "--batch-size=32", "--no-progress"]
S = ["--name=s", "--root=.", *T, "--inits", "spectral", "--rank-scales", "0.25", "--seeds", "0"]
F = ["--model=mlp", "--num-classes=10", "--quiet"]

CLI_CASES = [
    (["train", *T, "--out=run", "--lr=nan"], r"lr must be a finite number > 0 or None, got nan"),
    (["train", *T, "--out=run", "--lr=-1"], r"lr must be a finite number > 0 or None, got -1.0"),
    (["train", *T, "--out=run", "--weight-decay=nan"], r"weight_decay must be a finite number >= 0, got nan"),
    (["train", *T, "--out=run", "--weight-decay=-1"], r"weight_decay must be a finite number >= 0, got -1.0"),
    (["train", *T, "--out=run", "--reg-coef=nan"], r"reg_coef must be a finite number >= 0 or None, got nan"),
    (["train", *T, "--out=run", "--momentum=inf"], r"momentum must be a finite number in \[0, 1\), got inf"),
    (["train", *T, "--out=run", "--warmup=-0.5"], r"warmup must be a finite number in \[0, 1\), got -0.5"),
    (["train", *T, "--out=run", "--epochs=0"], r"epochs must be an int >= 1, got 0"),
    (["train", *T, "--out=run", "--epochs=x"], r"argument --epochs: invalid int value: 'x'"),
    (["train", *T, "--out=run", "--batch-size=1.5"], r"argument --batch-size: invalid int value: '1.5'"),
    (["train", *T, "--out=run", "--subset=0"], r"subset must be an int >= 1, got 0"),
    (["train", *T, "--out=run", "--subset=5000"], r"subset must be an int in \[1, 1024\], got 5000"),
    (["train", *T, "--out=run", "--workers=-2"], r"workers must be an int >= 0, got -2"),
    (["train", *T, "--out=run", "--checkpoint-every=-1"], r"checkpoint_every must be an int >= 0, got -1"),
    (["train", *T, "--out=run", "--seed=-1"], r"seed must be an int in \[0, 9223372036854775807\], got -1"),
    (["train", *T, "--out=run", "--rank-scale=0"], r"rank_scale must be a number in \(0, 1\], got 0.0"),
    (["train", *T, "--out=run", "--device=tpu"], r"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'"),
    (["train", *T, "--out=run", "--init=svd"], r"argument --init: invalid choice: 'svd'"),
    (["train", *T, "--out=run", "--model=nope"], r"unknown model 'nope'; available: alexnet"),
    (
        ["train", *T, "--out=run", "--init-options=[1]"],
        r"argument --init-options: must be a JSON obj",
    ),
    (["train", *T, "--out=run", "--init-options={"], r"argument --init-options: must be a JSON object"),
    (
        ["train", *T, "--out=run", '--init-options={"nope": 1}'],
        r"unknown init option 'nope' for init",
    ),
    (["train", *T, "--out="], r"out must be a non-empty path, got ''"),
    (["train", *T, "--out=file"], r"out 'file' is a file; a directory is needed"),
    (["train", *T, "--out=file/run"], r"out 'file/run' cannot be created: '.*/file' is a file"),
    (
        ["train", *T, "--out=run", "--dataset=fashion-mnist", "--data-dir=nope"],
        r"Fashion-MNIST not found in nope",
    ),
    (["sweep", *S, "--rank-scales", "0"], r"rank_scales must be numbers in \(0, 1\], got 0.0"),
    (["sweep", *S, "--rank-scales", "0.1", "0.1"], r"rank_scales has 0.1 more than once"),
    (["sweep", *S, "--seeds", "-1"], r"seeds must be ints >= 0, got -1"),
    (["sweep", *S, "--seeds", "0", "0"], r"seeds has 0 more than once"),
    (["sweep", *S, "--inits", "nope"], r"unknown init 'nope'"),
    (["sweep", *S, "--inits", "full"], r"inits must be init names"),
    (["sweep", *S, "--shard=3/2"], r"shard must be i/n with 0 <= i < n, got \(3, 2\)"),
    (["sweep", *S, "--shard=x"], r"shard must look like i/n \(e.g. 0/4\), got 'x'"),
    (["sweep", *S, "--lr=nan"], r"lr must be a finite number > 0 or None, got nan"),
    (["sweep", *S, "--name="], r"--name must be one directory name \(no '/', not '.' or '..'\), got ''"),
    (["sweep", *S, "--name=../x"], r"--name must be one directory name"),
    (["sweep", *S, "--root=file"], r"sweep directory 'file/s' cannot be created: '.*/file' is a file"),
    (["report", "nothing"], r"sweep directory 'nothing' does not exist \(or is not a directory\)"),
    (["report", "file"], r"sweep directory 'file' does not exist \(or is not a directory\)"),
    (["report", "."], r"no finished runs under '.' \(expected runs/\*/summary.json\)"),
    (["list", "nope"], r"argument what: invalid choice: 'nope'"),
    (["list"], r"the following arguments are required: what"),
    (["nope"], r"argument command: invalid choice: 'nope'"),
    (["demo", "--out=file"], r"--out 'file' is a file; a directory is needed"),
    (["demo", "--out=d", "--rank-scales", "0"], r"rank_scale must be a number in \(0, 1\], got 0.0"),
    (["demo", "--out=d", "--train-inits", "nope"], r"unknown init 'nope'; available: asvd, baseline"),
    (["demo", "--out=d", "--lfai-max-epochs=0"], r"lfai_max_epochs must be an int >= 1, got 0"),
    (["demo", "--out=d", "--seed=-1"], r"seed must be an int >= 0, got -1"),
    (["demo", "--out=d", "--model=nope", "--train-inits"], r"unknown model 'nope'"),
    (["gap", "--out=file"], r"--out 'file' is a file; a directory is needed"),
    (["factorize", *F, "--rank-scale=0.1", "--out=."], r"--out '.' is a directory; a file name is needed"),
    (["factorize", *F, "--rank-scale=0.1", "--out=file/r.json"], r"--out 'file/r.json' cannot be created"),
    (["factorize", *F], r"one of the arguments --rank-scale --rank is required"),
    (["factorize", *F, "--rank-scale=x"], r"argument --rank-scale: invalid float value: 'x'"),
    (["factorize", *F, "--rank-scale=0.1", "--layout=diag"], r"argument --layout: invalid choice: 'diag'"),
    (["factorize", *F, "--rank-scale=0.1", "--num-classes=0"], r"num_classes must be an int >= 1, got 0"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_CASES)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(workdir, capsys, argv, message):
    code, err = _run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1, err
    assert re.match(rf"nlinit( {re.escape(argv[0])})?: error: {message}", err), err
    assert _listing(workdir) == ["file"]
