"""The ``nlinit`` command line: each subcommand calls the library and prints the result.

nlinit factorize --model resnet50 --rank-scale 0.1 --init relu-svd --out report.json
nlinit compress --checkpoint runs/a/checkpoint.safetensors --budget 0.5 --allocate energy --out results/c
nlinit demo --out results/demo
nlinit gap --out results/gap
nlinit list inits|activations|models
nlinit train --model resnet20 --dataset fashion-mnist --init relu-svd --rank-scale 0.1 --out runs/a
nlinit sweep --name fmnist-resnet20 --inits spectral relu-svd --rank-scales 0.05 0.1 --seeds 0 1 2
nlinit report results/sweep/fmnist-resnet20 --reference spectral
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._checks import parse_shard
from ._optional import MissingDependencyError
from ._parser import Parser
from ._paths import atomic_write, check_output
from .activations import ACTIVATIONS
from .compress import ALLOCATIONS, METHODS, compress
from .data import DATASETS
from .experiments.compare import markdown_table
from .experiments.demo import run_demo
from .experiments.gap import run_gap
from .experiments.sweep import write_report
from .factorize import FITS, factorize
from .finetune import LOSSES
from .inits import DISTRIBUTIONS, SOURCES, init_choices, list_inits
from .matrix_view import LAYOUTS
from .models import build_model, list_model_names
from .report import SAVE_SUFFIXES
from .train import FULL_RANK, REGULARIZERS, DivergedError, TrainConfig


def _default(name: str, fn: Callable[..., Any] = factorize) -> Any:
    """The library function's own default for ``name``: the CLI never restates a default."""
    return inspect.signature(fn).parameters[name].default


def _factorize(args: argparse.Namespace) -> int:
    out = None if args.out is None else check_output(args.out, name="--out", kind="file")
    if out is not None and out.suffix not in SAVE_SUFFIXES:
        raise ValueError(f"--out must end in {', '.join(SAVE_SUFFIXES)}, got {str(out)!r}")
    model = build_model(args.model, num_classes=args.num_classes)
    options = {} if args.objective is None else {"objective": args.objective}
    report = factorize(
        model,
        rank_scale=args.rank_scale,
        rank=args.rank,
        init=args.init,
        activation=args.activation,
        layout=args.layout,
        source=args.source,
        distribution=args.distribution,
        include=args.include,
        exclude=args.exclude or (),
        factorize_stem=args.factorize_stem,
        factorize_classifier=args.factorize_classifier,
        allow_growth=args.allow_growth,
        seed=args.seed,
        fit=args.fit,
        progress=False if args.quiet else None,  # None: a bar when stderr is a terminal
        **options,
    )
    print(report.to_markdown())
    if out is not None:
        print(f"wrote {atomic_write(out, report.save)}")
    return 0


def _compress(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_model, read_metadata
    from .data import build_datasets

    out = check_output(args.out, name="--out", kind="dir")
    meta = read_metadata(args.checkpoint, require=("model",))
    if args.model is not None and meta["model"]["name"] != args.model:
        raise ValueError(
            f"--model {args.model!r} does not match the checkpoint's model {meta['model']['name']!r}"
        )
    if args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be a positive int, got {args.calibration_images}")
    spec = build_datasets(
        args.dataset, args.data_dir, test_subset=args.test_subset, seed=args.seed, augment=False
    )
    if args.calibration_images > len(spec.train):
        raise ValueError(
            f"--calibration-images {args.calibration_images} exceeds the {len(spec.train):,} training images"
        )
    model = load_model(args.checkpoint)
    pick = torch.randperm(len(spec.train), generator=torch.Generator().manual_seed(args.seed))
    images = torch.stack([spec.train[int(i)][0] for i in pick[: args.calibration_images]])

    def top1(m: torch.nn.Module) -> float:
        """Test top-1 (%) over the dataset's test set."""
        correct = 0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(spec.test, batch_size=args.batch_size):
                correct += int((m(x).argmax(1) == y).sum())
        return 100.0 * correct / len(spec.test)

    # the recovery fine-tune's data: the training set, shuffled (seeded), without augmentation
    shuffle = torch.Generator().manual_seed(args.seed)
    train_batches = torch.utils.data.DataLoader(
        spec.train, batch_size=args.batch_size, shuffle=True, generator=shuffle, drop_last=True
    )
    report = compress(
        model,
        images,
        budget=args.budget,
        macs=args.macs,
        rank_scale=args.rank_scale,
        method=args.method,
        allocate=args.allocate,
        factorize_stem=args.factorize_stem,
        factorize_classifier=args.factorize_classifier,
        evaluate=top1,
        finetune=args.finetune,
        finetune_data=train_batches,
        finetune_loss=args.finetune_loss,
        finetune_lr=args.finetune_lr,
        progress=False if args.quiet else None,
        seed=args.seed,
        model_info=meta["model"],
        sequential=args.sequential,
    )
    print(report.to_markdown())
    tuned = "" if report.metric_finetuned is None else f" -> {report.metric_finetuned:.2f}% (fine-tuned)"
    top1s = f"{report.metric_before:.2f}% -> {report.metric_after:.2f}%{tuned}"
    print(f"test top-1 {top1s}; wrote {report.save(out)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    rows = run_demo(
        args.out,
        model=args.model,
        rank_scales=args.rank_scales,
        seed=args.seed,
        lfai_max_epochs=args.lfai_max_epochs,
        train_inits=args.train_inits,
    )
    print(markdown_table(rows))
    train_table = Path(args.out) / "train" / "table.md"
    if args.train_inits:
        print(train_table.read_text().split("## Mean per-layer", 1)[0])
    print(f"wrote {args.out}/report.md, results.json, objective_vs_rank.png, train/")
    return 0


_TRAIN_HELP = {
    "model": "nlinit list models: CIFAR resnet20/32/56, efficientnet_tiny, torchvision names, timm:<name>",
    "init": f"a registered init (nlinit list inits) or {FULL_RANK!r} for the full-rank model",
    "init_options": 'options for the init as JSON, e.g. \'{"objective": "exact"}\'',
    "small_input": "adapt a torchvision model's stem to 28-32 px images",
    "data_dir": "where the dataset lives (default: the Debian dataset-fashion-mnist package's directory)",
    "subset": "train on a seeded random subset of this many images",
    "test_subset": "evaluate on a seeded random subset of this many images",
    "download": "let torchvision download CIFAR-10 into --data-dir",
    "batch_size": "global batch size (split over torchrun processes)",
    "lr": "peak learning rate (default: the paper's 1.6 x batch / 4096)",
    "warmup": "linear warm-up, as a fraction of all steps",
    "weight_decay": "weight decay on weights that are not low-rank factors",
    "reg": "regularizer on the factors: wd (weight decay) or fd (Frobenius decay ||U V^T||^2)",
    "reg_coef": "its coefficient (default: --weight-decay)",
    "bf16": "bfloat16 autocast (CUDA only)",
    "checkpoint_every": "also checkpoint every N steps (0: end of each epoch only)",
    "resume": "continue the run in --out from its checkpoint",
    "progress": "tqdm progress bar",
}
_SWEEP_FIELDS = ("init", "rank_scale", "seed", "out", "resume")  # set by the sweep's grid


def _add_config_args(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One option per TrainConfig field, its default read from the dataclass: one place for defaults."""
    defaults = TrainConfig()
    choices = {"reg": REGULARIZERS, "init": [*init_choices(), FULL_RANK], "dataset": DATASETS}
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        text = _TRAIN_HELP.get(f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif f.name == "init_options":
            parser.add_argument(flag, type=_json_object, default={}, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            parser.add_argument(flag, type=kind, default=default, choices=choices.get(f.name), help=text)


def _json_object(text: str) -> dict[str, Any]:
    """--init-options: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        example = '{"objective": "exact"}'
        raise argparse.ArgumentTypeError(f"must be a JSON object such as {example!r}, got {text!r}")
    return value


def _config(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names}, **fixed)


def _train(args: argparse.Namespace) -> int:
    from .train import train

    summary = train(_config(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only rank 0 prints
        print(json.dumps({k: summary[k] for k in ("final_test_top1", "final_test_loss", "seconds")}))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .experiments.sweep import run_sweep

    if not args.name or args.name in (".", "..") or "/" in args.name:
        raise ValueError(f"--name must be one directory name (no '/', not '.' or '..'), got {args.name!r}")
    root = run_sweep(
        f"{args.root}/{args.name}",
        _config(args),
        inits=args.inits,
        rank_scales=args.rank_scales,
        seeds=args.seeds,
        full_rank=args.full_rank,
        shard=parse_shard(args.shard),
    )
    print((root / "table.md").read_text())
    return 0


def _report(args: argparse.Namespace) -> int:
    if not Path(args.dir).is_dir():
        raise FileNotFoundError(f"sweep directory {args.dir!r} does not exist (or is not a directory)")
    check_output(args.dir, name="sweep directory", kind="dir")
    print(write_report(args.dir, reference=args.reference).read_text())
    return 0


def _gap(args: argparse.Namespace) -> int:
    command = f"nlinit gap --out {args.out}" + (" --full" if args.full else "") + f" --seed {args.seed}"
    run_gap(args.out, full=args.full, seed=args.seed, command=command)
    print(f"wrote {args.out}/report.md, fig32, corollary, remark (.csv, .png), objectives.csv")
    return 0


def _list(args: argparse.Namespace) -> int:
    names = {"inits": list_inits(), "activations": sorted(ACTIVATIONS), "models": list_model_names()}
    print("\n".join(names[args.what]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nlinit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    f = sub.add_parser("factorize", help="factorize a model and report per layer")
    f.add_argument(
        "--model", required=True, help="torchvision classification model or 'mlp' (nlinit list models)"
    )
    f.add_argument("--num-classes", type=int, default=1000)
    size = f.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank-scale", type=float, help="r = max(1, round(s * min(rows, cols))), s in (0, 1]")
    size.add_argument("--rank", type=int, help="one rank for every layer")
    f.add_argument("--init", default=_default("init"), choices=init_choices(), help="'auto': per layer")
    f.add_argument("--objective", choices=("sampled", "exact"), help="lfai / lfai-ws objective")
    f.add_argument(
        "--fit",
        default=_default("fit"),
        choices=list(FITS),
        help="what each layer fits: 'layer' (its bias and BatchNorm) or 'paper' (act(W x), x ~ N(0, I))",
    )
    f.add_argument(
        "--activation",
        default=_default("activation"),
        help="'auto' or an activation name (nlinit list activations)",
    )
    f.add_argument("--layout", default=_default("layout"), choices=LAYOUTS)
    f.add_argument("--source", default=_default("source"), choices=SOURCES)
    f.add_argument(
        "--distribution", default=_default("distribution"), choices=[*DISTRIBUTIONS, "reset-parameters"]
    )
    f.add_argument("--include", nargs="+", metavar="PATTERN", help="module-name patterns to factorize")
    f.add_argument("--exclude", nargs="+", metavar="PATTERN", help="module-name patterns to keep")
    f.add_argument("--factorize-stem", action="store_true")
    f.add_argument("--factorize-classifier", action="store_true")
    f.add_argument("--allow-growth", action="store_true", help="factorize layers even if params grow")
    f.add_argument("--seed", type=int, default=_default("seed"))
    f.add_argument("--out", help="write the report: .json, .csv or .md")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(run=_factorize)

    c = sub.add_parser("compress", help="compress a trained checkpoint to low rank under a budget, report")
    c.add_argument("--checkpoint", required=True, help="a checkpoint written by nlinit train")
    c.add_argument("--model", help="the checkpoint's model name, checked (optional)")
    c.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    c.add_argument("--data-dir", help=_TRAIN_HELP["data_dir"])
    c.add_argument("--calibration-images", type=int, default=2048, help="training images for statistics")
    c.add_argument("--test-subset", type=int, help=_TRAIN_HELP["test_subset"])
    csize = c.add_mutually_exclusive_group(required=True)
    csize.add_argument(
        "--budget", type=float, help="fraction in (0, 1) of the compressed layers' params kept"
    )
    csize.add_argument(
        "--macs", type=float, help="fraction in (0, 1) of the compressed layers' MACs per input kept"
    )
    csize.add_argument("--rank-scale", type=float, help="the parameters of uniform rank scale s in (0, 1]")
    c.add_argument("--method", default=_default("method", compress), choices=list(METHODS))
    c.add_argument("--allocate", default=_default("allocate", compress), choices=ALLOCATIONS)
    c.add_argument("--factorize-stem", action="store_true")
    c.add_argument("--factorize-classifier", action="store_true")
    c.add_argument("--batch-size", type=int, default=256, help="evaluation and fine-tune batch size")
    c.add_argument(
        "--finetune",
        type=int,
        default=_default("finetune", compress),
        metavar="STEPS",
        help="recovery fine-tune steps after the training-free result (0: none), on the training set "
        "(shuffled, no augmentation, batches of --batch-size); its top-1 is reported apart",
    )
    c.add_argument(
        "--finetune-loss",
        default=_default("finetune_loss", compress),
        choices=LOSSES,
        help="kl: distill the uncompressed model's logits; mse: match them; ce: the labels",
    )
    c.add_argument(
        "--finetune-lr",
        type=float,
        default=_default("finetune_lr", compress),
        help="the fine-tune's peak learning rate (AdamW, warm-up then cosine decay)",
    )
    c.add_argument(
        "--sequential",
        action="store_true",
        help="solve layer by layer on the partly compressed model's inputs (one calibration pass per layer)",
    )
    c.add_argument("--seed", type=int, default=_default("seed", compress))
    c.add_argument("--out", required=True, help="directory: report.md/.json/.csv and model.safetensors")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(run=_compress)

    d = sub.add_parser("demo", help="five inits on ResNet-18 at three rank scales, then ResNet-20 trained")
    d.add_argument("--out", default=_default("out", run_demo))
    d.add_argument("--model", default=_default("model", run_demo))
    d.add_argument("--rank-scales", type=float, nargs="+", default=list(_default("rank_scales", run_demo)))
    d.add_argument("--seed", type=int, default=_default("seed", run_demo))
    d.add_argument(
        "--lfai-max-epochs",
        type=int,
        default=_default("lfai_max_epochs", run_demo),
        help="epochs of 128 Adam steps (paper: up to 6)",
    )
    d.add_argument(
        "--train-inits",
        nargs="*",
        default=list(_default("train_inits", run_demo)),
        help="inits to train ResNet-20 from (none: skip training)",
    )
    d.set_defaults(run=_demo)

    t = sub.add_parser("train", help="train one model (torchrun -m nlinit train ... for several processes)")
    _add_config_args(t)
    t.set_defaults(run=_train)

    sw = sub.add_parser("sweep", help="train a grid of init x rank scale x seed (resumable), then report")
    sw.add_argument("--name", required=True, help="the sweep's directory under --root")
    sw.add_argument("--root", default="results/sweep")
    sw.add_argument("--inits", nargs="+", default=["baseline", "spectral", "lfai-ws", "relu-svd"])
    sw.add_argument("--rank-scales", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    sw.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sw.add_argument(
        "--full-rank", action=argparse.BooleanOptionalAction, default=True, help="add full-rank runs"
    )
    sw.add_argument(
        "--shard", default="0/1", help="i/n: train only every n-th cell from the i-th (parallel runs)"
    )
    _add_config_args(sw, skip=_SWEEP_FIELDS)
    sw.set_defaults(run=_sweep)

    rp = sub.add_parser("report", help="table.md, results.csv and plots of a sweep's finished runs")
    rp.add_argument("dir", help="the sweep directory, e.g. results/sweep/fmnist-resnet20")
    rp.add_argument(
        "--reference",
        default=_default("reference", write_report),
        help="the init that paired differences (same seed) are taken against",
    )
    rp.set_defaults(run=_report)

    gp = sub.add_parser("gap", help="regenerate the paper's theory figures (Fig 3.2, 3.3, Cor 3.3.11)")
    gp.add_argument("--out", default=_default("out", run_gap))
    gp.add_argument("--full", action="store_true", help="the paper's range n = 200..1000 for Fig 3.2")
    gp.add_argument("--seed", type=int, default=_default("seed", run_gap))
    gp.set_defaults(run=_gap)

    li = sub.add_parser("list", help="list inits, activations or models")
    li.add_argument("what", choices=("inits", "activations", "models"))
    li.set_defaults(run=_list)
    return parser


#: What the command line reports as one line instead of a traceback: bad input (ValueError includes
#: CheckpointError), files and directories (OSError: unwritable, missing, locked, disk full), missing
#: optional dependencies, and a diverged training run.
_OUT_DIRS = ("demo", "gap")  # subcommands whose --out directory is checked here, before any work
_REPORTED = (ValueError, TypeError, NotImplementedError, OSError, MissingDependencyError, DivergedError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Exit codes: 0 done; 1 training diverged; 2 a bad input or a file problem (one
    line on stderr, nothing written or the previous files kept); 130 interrupted (Ctrl-C)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command in _OUT_DIRS:
            check_output(args.out, name="--out", kind="dir")
        return int(args.run(args))
    except _REPORTED as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"nlinit {args.command}: error: {message}", file=sys.stderr)
        return 1 if isinstance(e, DivergedError) else 2
    except KeyboardInterrupt:
        print(f"nlinit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
