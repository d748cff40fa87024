"""Measurements that size the evidence sweep (issue 10): seconds per epoch and epochs to convergence.

Every run is a real ``nlinit.train`` run on the full Fashion-MNIST training set (60,000 images), evaluated on
the full test set (10,000), one process, one torch thread (the project's 2-core machine is shared)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/evidence_pilot.py cost --out results/evidence/pilot
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/evidence_pilot.py converge --model wide_mlp \\
        --epochs 1 2 3 5 10 20 --out results/evidence/pilot

``cost``: one epoch per (model, rank scale) with spectral init (full rank too): the training loop's seconds
(summary.json "seconds"; seconds_per_epoch scales them to 60,000 images when --subset trains on fewer), the
init's seconds, and the wall and CPU seconds of the whole run (init, loop, evaluation on 10,000 images). On
a shared machine wall / CPU shows the contention: CPU seconds are what one free core would take.
``width``: for the ReLU MLP at each --widths (784 -> w -> w -> 10, full rank), the seconds of one SGD step
at batch 128 on random inputs (mean of 12 after 3 warm-up steps) times the 468 steps of an epoch: the
arithmetic alone, no data loading; this chose the width (results/evidence/README.md).
``inits``: for each --models, --rank-scales and --inits, the wall and CPU seconds of the whole
``nlinit.factorize`` call on a freshly built model (the init and the report's objectives), and the mean R/R0
of the init and of spectral.
``converge``: full rank for each epoch budget (the cosine schedule spans the run, so each budget is its own
run): final test top-1 against the longest budget's. Results go to <out>/<kind>.csv (appended to, one row
per run, with the run directory); checkpoints are deleted once a run has finished.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nlinit import factorize
from nlinit.models import build_model, relu_mlp
from nlinit.train import FULL_RANK, TrainConfig, train

MLP_STEM = {"factorize_stem": True}  # the MLPs' first layer (784 -> width) is the theory's wide layer


def _run(out: Path, csv_path: Path, **config: object) -> dict[str, object]:
    cfg = TrainConfig(dataset="fashion-mnist", progress=False, out=str(out), resume=True, **config)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    summary = train(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    init = next(r for r in records if r["event"] == "init")
    epochs = [r for r in records if r["event"] == "epoch"]
    row = {
        "model": cfg.model,
        "train_images": cfg.subset or 60_000,
        "init": cfg.init,
        "rank_scale": None if cfg.init == FULL_RANK else cfg.rank_scale,
        "epochs": cfg.epochs,
        "final_test_top1": summary["final_test_top1"],
        "loop_seconds": summary["seconds"],
        "seconds_per_epoch": summary["seconds"] / cfg.epochs * 60_000 / (cfg.subset or 60_000),
        "init_seconds": init.get("seconds"),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "test_top1_per_epoch": " ".join(f"{r['test_top1']:.2f}" for r in epochs),
        "run": str(out),
    }
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    (out / "checkpoint.safetensors").unlink(missing_ok=True)
    (out / "checkpoint.json").unlink(missing_ok=True)
    print(json.dumps(row), flush=True)
    return row


def _step_seconds(width: int, steps: int = 12, warm: int = 3) -> float:
    """Mean seconds of one SGD step (batch 128, random 28 x 28 inputs) of the full-rank ReLU MLP."""
    torch.manual_seed(0)
    model = relu_mlp(10, 1, width, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    for i in range(warm + steps):
        if i == warm:
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("cost", "converge", "width", "inits"))
    parser.add_argument(
        "--inits", nargs="+", default=["baseline", "spectral", "relu-svd", "lfai-ws", "nlra-opt"]
    )
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--out", default="results/evidence/pilot")
    parser.add_argument("--models", nargs="+", default=["wide_mlp", "wide_mlp_bn", "mixer_tiny", "resnet20"])
    parser.add_argument("--rank-scales", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--subset", type=int, help="cost only: train on this many images; seconds are scaled to 60,000"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    csv_path = root / f"{args.kind}.csv"
    if args.kind == "width":
        for width in args.widths:
            step = _step_seconds(width)
            print(f"width {width}: {1e3 * step:.1f} ms per step, {468 * step:.1f} s per epoch", flush=True)
        return
    if args.kind == "inits":
        for model, scale, init in itertools.product(args.models, args.rank_scales, args.inits):
            torch.manual_seed(args.seed)
            net = build_model(model, 10, in_channels=1)
            wall, cpu = time.perf_counter(), time.process_time()
            report = factorize(net, rank_scale=scale, init=init, factorize_stem="mlp" in model)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{model} {scale:g} {init}: wall {wall:.1f} s, CPU {cpu:.1f} s, R/R0 "
                  f"{report.mean_objective('init'):.4f} (spectral {report.mean_objective('spectral'):.4f})",
                  flush=True)  # fmt: skip
        return
    for model in args.models:
        options = MLP_STEM if "mlp" in model else {}
        if args.kind == "cost":
            for scale in [None, *args.rank_scales]:
                init, tag = (FULL_RANK, "full") if scale is None else ("spectral", f"r{scale:g}")
                sub = f"-n{args.subset}" if args.subset else ""
                _run(root / "cost" / f"{model}-{tag}{sub}", csv_path, model=model, init=init,
                     rank_scale=scale or 1.0, epochs=1, seed=args.seed, init_options=options,
                     subset=args.subset)  # fmt: skip
        else:
            for epochs in args.epochs:
                _run(root / "converge" / f"{model}-e{epochs}", csv_path, model=model, init=FULL_RANK,
                     epochs=epochs, seed=args.seed)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
