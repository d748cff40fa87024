"""Compress a trained CNN training-free, every method x allocation x budget; score test top-1.

    python -m nlinit.experiments.compress_cnn --checkpoint runs/r20/checkpoint.safetensors \\
        --out results/compress/fmnist-resnet20 --methods svd whiten relu-svd --budgets 0.3 0.5

The model is read from a checkpoint written by ``nlinit train`` (:func:`nlinit.checkpoint.load_model`); the
calibration images are ``--calibration-images`` training images of its dataset (a seeded random subset, no
augmentation), the metric the test top-1 (%) on the whole test set. For each budget x method x allocation:
a fresh copy of the model, :func:`nlinit.compress.compress` (stem and classifier kept, as ``factorize``
does; the calibration statistics collected once for the grid, :func:`nlinit.experiments.compress_table.
grid_stats`, so each row's seconds_statistics is its own one-batch positions pass), then the test
top-1. Writes results.csv (one row per configuration, plus the uncompressed model),
table.md and top1_vs_params.png into ``--out``, each atomically after every configuration; a rerun skips
the configurations already in results.csv. ``--sequential`` compresses with ``compress(sequential=True)``
(rows ``<method>+sequential``, beside the plain ones in the same results.csv).

``--finetune-epochs E`` (0: none) adds a recovery fine-tune to each configuration after its training-free
top-1: E epochs of the whole training set (shuffled, seeded, no augmentation, batches of 128; steps = E x
batches per epoch), distilling the uncompressed model's logits (:func:`nlinit.finetune.finetune`, loss
``"kl"``, its default learning rate), then the test top-1 again: ``top1_finetuned`` and
``seconds_finetune`` in results.csv, a fine-tuned table in table.md. Give a fine-tuned grid its own
``--out``: rows already in results.csv are kept as they are. Every configuration fine-tunes on the same
batches in the same order, so the uncompressed model's logits are computed once per process and remembered
(:class:`RememberedTeacher`; the same values, so the same fine-tune): a row's seconds_finetune after the
first one of a run leaves out the teacher's forwards.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from typing import Any

import torch
from torch import nn

from .._checks import check_int, check_module, parse_shard
from .._parser import Parser
from .._paths import atomic_write_text, check_output
from ..checkpoint import load_model, read_metadata
from ..compress import ALLOCATIONS, METHODS, compress
from ..data import build_datasets
from ..finetune import finetune
from .compress_table import (
    CONFIG_FIELDS,
    MACHINE_FIELD,
    SECONDS_FIELDS,
    SHARD_HELP,
    check_budgets,
    commands,
    grid_stats,
    merge_rows,
    plot,
    read_rows,
    run_grid,
    table,
)
from .machine import describe

FIELDS = [
    *CONFIG_FIELDS,
    "macs_after",
    "macs_before",
    "top1",
    "heldout_method",
    "heldout_svd",
    *SECONDS_FIELDS,
    "finetune_epochs",
    "top1_finetuned",
    "seconds_finetune",
    MACHINE_FIELD,
]


class RememberedTeacher(nn.Module):
    """A teacher whose outputs are remembered by input: ``teacher(x)`` once per distinct batch ``x`` (keyed by
    its shape, dtype and a BLAKE2 digest of its bytes), then the stored tensor. For an eval-mode teacher under
    ``torch.no_grad()`` (as :func:`nlinit.finetune.finetune` runs it) the values are those a fresh call gives,
    so a grid of fine-tunes on the same batches pays for the teacher's forwards once. Memory: one output per
    distinct batch (a Fashion-MNIST epoch's logits: 468 x 128 x 10 floats, 2.4 MB)."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        check_module("teacher", teacher)
        self.teacher = teacher
        self.outputs: dict[tuple[Any, ...], torch.Tensor] = {}
        self.train(teacher.training)  # in the teacher's mode, which finetune restores after its run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or self.training:
            raise RuntimeError(
                "RememberedTeacher runs in eval mode under torch.no_grad() only (as finetune runs a teacher)"
            )
        data = x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        key = (tuple(x.shape), x.dtype, hashlib.blake2b(data, digest_size=16).digest())
        if key not in self.outputs:
            self.outputs[key] = self.teacher(x)
        return self.outputs[key]


@torch.no_grad()
def top1(model: nn.Module, data: torch.utils.data.Dataset, batch_size: int = 500) -> float:
    """Test top-1 (%) of ``model`` (in eval mode) over ``data``."""
    check_module("model", model)
    check_int("batch_size", batch_size, low=1)
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__") or len(data) == 0:  # type: ignore[arg-type]
        raise ValueError(f"data must be a non-empty dataset of (image, label) pairs, got {data!r:.60}")
    model.eval()
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in torch.utils.data.DataLoader(data, batch_size))
    return 100.0 * hits / len(data)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m nlinit.experiments.compress_cnn", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", nargs="+", default=["svd", "whiten", "relu-svd"], choices=METHODS)
    parser.add_argument("--allocations", nargs="+", default=["uniform", "energy"], choices=ALLOCATIONS)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3])
    parser.add_argument("--calibration-images", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--finetune-epochs", type=int, default=0, help="recovery fine-tune epochs per configuration (0: none)"
    )
    parser.add_argument("--sequential", action="store_true", help="compress(sequential=True)")
    parser.add_argument("--shard", default="0/1", help=SHARD_HELP)
    args = parser.parse_args(argv)
    # every argument is checked before the checkpoint, the data or the model is read
    check_budgets(args.budgets)
    check_int("--calibration-images", args.calibration_images, low=1)
    check_int("--seed", args.seed, low=0)
    check_int("--finetune-epochs", args.finetune_epochs, low=0)
    shard = parse_shard(args.shard, name="--shard")
    out = check_output(args.out, name="--out", kind="dir")
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint!r} is not a file (a checkpoint of nlinit train)"
        )
    meta = read_metadata(args.checkpoint, require=("model",))
    spec = build_datasets(meta["config"].get("dataset", "fashion-mnist"), augment=False, seed=args.seed)
    model = load_model(args.checkpoint).eval()
    pick = torch.randperm(len(spec.train), generator=torch.Generator().manual_seed(args.seed))
    images = torch.stack([spec.train[int(i)][0] for i in pick[: args.calibration_images]])
    total = sum(p.numel() for p in model.parameters())

    def train_batches() -> torch.utils.data.DataLoader:
        """The fine-tune's data, in the same seeded order for every configuration."""
        shuffle = torch.Generator().manual_seed(args.seed)
        return torch.utils.data.DataLoader(spec.train, 128, shuffle=True, generator=shuffle, drop_last=True)

    out.mkdir(parents=True, exist_ok=True)
    intro = (
        f"# {meta['model']['name']} compressed: test top-1 (%)\n\n"
        + commands(
            out,
            "python -m nlinit.experiments.compress_cnn " + " ".join(sys.argv[1:] if argv is None else argv),
        )
        + "; "
        f"machine: {describe()}. Checkpoint: {args.checkpoint} "
        f"({meta['config'].get('epochs')} epochs of `nlinit train`). Calibration: {len(images)} training "
        "images (seeded, no augmentation); test top-1 on the whole test set. Budget = fraction of the "
        "compressed layers' parameters kept (stem and classifier kept full-rank)."
    )
    path = out / "results.csv"
    rows: list[dict[str, Any]] = list(read_rows(path))

    def render(rows: list[dict[str, Any]]) -> None:
        # the fine-tuned rows of this run and of earlier ones (a grid may fine-tune a subset only)
        epochs = sorted(
            {str(r["finetune_epochs"]) for r in rows if r.get("finetune_epochs") not in (None, "")}
        )
        header = intro + (
            f" Fine-tuned (where a fine-tuned value is given): {' / '.join(epochs)} epoch(s) of the training "
            f"set ({len(train_batches())} batches of 128 each), distilling the uncompressed model's logits "
            "(KL, AdamW, warm-up then cosine)."
            if epochs
            else ""
        )
        metrics = ("top1", "top1_finetuned") if epochs else ("top1",)
        atomic_write_text(out / "table.md", table(rows, header, metrics) + "\n")
        name = meta["model"]["name"]
        plot(rows, out / "top1_vs_params.png", "top1", "test top-1 (%)", f"{name}, training-free")
        if epochs:
            title, tuned = f"{name}, after a {' / '.join(epochs)}-epoch fine-tune", "top1_finetuned"
            plot(rows, out / f"{tuned}_vs_params.png", tuned, "test top-1 (%)", title, reference="top1")

    if not any(r["method"] == "original" for r in rows):
        original = {"method": "original", "allocate": "", "budget": 1.0, "params_kept": 1.0}
        rows.append(original | {"top1": top1(model, spec.test)})
        merge_rows(path, rows[-1:], FIELDS, keep=True)  # another shard's, if it was first

    stats = grid_stats(model, images, args.seed)  # once: every configuration compresses the same model
    teacher = RememberedTeacher(model)  # once: every configuration fine-tunes on the same batches

    def run(budget: float, method: str, allocate: str) -> dict[str, Any]:
        m = copy.deepcopy(model)
        report = compress(
            m,
            images,
            budget=budget,
            method=method,
            allocate=allocate,
            progress=False,
            seed=args.seed,
            stats=stats,
            sequential=args.sequential,
        )
        row = {
            "params_kept": round(report.model_params_after / total, 4),
            "layer_params_after": report.params_after,
            "layer_params_before": report.params_before,
            "macs_after": report.macs_after,
            "macs_before": report.macs_before,
            "top1": top1(m, spec.test),
            "heldout_method": round(report.mean("heldout_method"), 4),
            "heldout_svd": round(report.mean("heldout_svd"), 4),
        } | {f"seconds_{k}": round(v, 2) for k, v in report.seconds.items() if f"seconds_{k}" in FIELDS}
        if args.finetune_epochs:
            data = train_batches()
            steps = args.finetune_epochs * len(data)
            tuned = finetune(m, data, steps=steps, teacher=teacher, seed=args.seed, progress=False)
            row |= {
                "finetune_epochs": args.finetune_epochs,
                "top1_finetuned": top1(m, spec.test),
                "seconds_finetune": round(tuned["seconds"], 2),
            }
        return row

    suffix = "+sequential" if args.sequential else ""
    require = "top1_finetuned" if args.finetune_epochs else None  # fill the fine-tuned column of done rows

    def save(row: dict[str, Any]) -> None:
        merge_rows(path, [row], FIELDS, render)

    run_grid(rows, args.budgets, args.methods, args.allocations, run, save, suffix, require, shard)
    merge_rows(path, [], FIELDS, render)  # the table of everything done, this run's rows and others'
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
