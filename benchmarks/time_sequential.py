"""compress(sequential=True) with the block chain (each layer's pass runs its block alone, on kept inputs)
against whole forwards (each pass runs both models from the input to the layer): seconds per route and their
ratio in one process, the routes alternating, and whether both give the same parameters bit for bit
(benchmarks/COMPRESS.md).

    OMP_NUM_THREADS=1 python benchmarks/time_sequential.py --model minilm --calibration 128 --repeats 2
    OMP_NUM_THREADS=1 python benchmarks/time_sequential.py --model resnet20 --calibration 2048 --repeats 2
    OMP_NUM_THREADS=1 python benchmarks/time_sequential.py --model minilm --calibration 128 --streamed

minilm: all-MiniLM-L6-v2, all 36 Linear layers, ``--calibration`` paragraphs. resnet20: the trained checkpoint
of results/compress/fmnist-resnet20 (its 18 inner convs), ``--calibration`` Fashion-MNIST training images
picked as ``compress_cnn`` picks them, plus the chain route's test top-1. Both: whiten, energy allocation,
budget 0.5, the allocation's statistics given (as the grids give them), so the times are the sequential
pass's (statistics of each layer's pass + solve); ``--streamed``: not given, so the times add compress's
allocation, one layer's statistics at a time (the chain route runs it on the chain as well).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import nlinit.sequential as sequential
from nlinit.experiments import compress_table as grid
from nlinit.experiments.machine import describe

CHECKPOINT = "results/compress/fmnist-resnet20/base/checkpoint.safetensors"


def minilm(n: int) -> tuple[nn.Module, Any, Callable[[nn.Module, Any, Any], Any], Callable[[nn.Module], str]]:
    from nlinit.experiments.compress_minilm import compress_all_linear
    from nlinit.experiments.retrieval import calibration_paragraphs
    from nlinit.hf import load_minilm, token_batches

    model, tokenizer = load_minilm()
    batches = token_batches(tokenizer, calibration_paragraphs(n), max_length=128)

    def run(m: nn.Module, data: Any, stats: Any) -> Any:
        return compress_all_linear(m, data, budget=0.5, method="whiten", allocate="energy", stats=stats,
                                   sequential=True)  # fmt: skip

    return model, batches, run, lambda m: ""


def resnet20(
    n: int,
) -> tuple[nn.Module, Any, Callable[[nn.Module, Any, Any], Any], Callable[[nn.Module], str]]:
    from nlinit.checkpoint import load_model, read_metadata
    from nlinit.compress import compress
    from nlinit.data import build_datasets
    from nlinit.experiments.compress_cnn import top1

    meta = read_metadata(CHECKPOINT, require=("model",))
    spec = build_datasets(meta["config"].get("dataset", "fashion-mnist"), augment=False, seed=0)
    pick = torch.randperm(len(spec.train), generator=torch.Generator().manual_seed(0))
    images = torch.stack([spec.train[int(i)][0] for i in pick[:n]])

    def run(m: nn.Module, data: Any, stats: Any) -> Any:
        return compress(m, data, budget=0.5, method="whiten", allocate="energy", progress=False, seed=0,
                        stats=stats, sequential=True)  # fmt: skip

    return load_model(CHECKPOINT).eval(), images, run, lambda m: f", test top-1 {top1(m, spec.test):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "resnet20"], default="minilm")
    parser.add_argument("--calibration", type=int, default=128, help="calibration paragraphs / images")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each route, alternating")
    parser.add_argument("--streamed", action="store_true", help="the allocation's statistics not given")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, data, run, metric = {"minilm": minilm, "resnet20": resnet20}[args.model](args.calibration)
    stats = None if args.streamed else grid.grid_stats(model, data, 0)
    blocks = sequential._blocks
    seconds: dict[str, list[float]] = {"chain": [], "whole forwards": []}
    params: dict[str, dict[str, torch.Tensor]] = {}
    shown = ""
    for _ in range(args.repeats):
        for route in seconds:
            sequential._blocks = blocks if route == "chain" else (lambda *a: None)  # type: ignore[assignment]
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            run(m, data, stats)
            seconds[route].append(time.perf_counter() - t0)
            params[route] = {k: v.detach().clone() for k, v in m.state_dict().items()}
            shown = shown or (metric(m) if route == "chain" else "")
    sequential._blocks = blocks
    same = params["chain"].keys() == params["whole forwards"].keys() and all(
        torch.equal(v, params["whole forwards"][k]) for k, v in params["chain"].items()
    )
    given = "streamed" if args.streamed else "given"
    print(f"machine: {describe()}; {args.model}, {args.calibration} calibration inputs, "
          f"allocation's statistics {given}{shown}")  # fmt: skip
    for route, s in seconds.items():
        print(f"{route}: {', '.join(f'{x:.1f}' for x in s)} s (median {statistics.median(s):.1f})")
    ratios = ", ".join(
        f"{a / b:.2f}" for a, b in zip(seconds["chain"], seconds["whole forwards"], strict=True)
    )
    print(f"chain / whole forwards, run by run: {ratios}; same parameters: {same}")


if __name__ == "__main__":
    main()
