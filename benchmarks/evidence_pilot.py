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
``converge``: full rank for each epoch budget (the cosine schedule spans the run, so each budget is its own
run): final test top-1 against the longest budget's. Results go to <out>/<kind>.csv (appended to, one row
per run, with the run directory); checkpoints are deleted once a run has finished.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("cost", "converge"))
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
