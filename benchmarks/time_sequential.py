"""compress(sequential=True) with the block chain (each layer's pass runs its block alone, on kept inputs)
against whole forwards (each pass runs both models from the input to the layer): seconds per route and their
ratio in one process, the routes alternating, and whether both give the same parameters bit for bit
(benchmarks/COMPRESS.md).

    OMP_NUM_THREADS=1 python benchmarks/time_sequential.py --model minilm --calibration 128 --repeats 2
    OMP_NUM_THREADS=1 python benchmarks/time_sequential.py --model resnet20 --calibration 2048 --repeats 2
    OMP_NUM_THREADS=1 python benchmarks/time_sequential.py --model minilm --calibration 128 --streamed
    OMP_NUM_THREADS=1 python benchmarks/time_sequential.py --model minilm --calibration 128 --compare paired

minilm: all-MiniLM-L6-v2, all 36 Linear layers, ``--calibration`` paragraphs. resnet20: the trained checkpoint
of results/compress/fmnist-resnet20 (its 18 inner convs), ``--calibration`` Fashion-MNIST training images
picked as ``compress_cnn`` picks them, plus the chain route's test top-1. Both: whiten, energy allocation,
budget 0.5, the allocation's statistics given (as the grids give them), so the times are the sequential
pass's (statistics of each layer's pass + solve); ``--streamed``: not given, so the times add compress's
allocation, one layer's statistics at a time (the chain route runs it on the chain as well).
``--compare paired``: both on the chain, the pass's statistics of [x; x^] without x's own second moment
(``collect_stats(_paired=True)``, a Linear's) against the full Gram.
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


#: per comparison: its two routes, (new, old), and how each is set up (module attributes patched)
COMPARE = {
    "chain": ("chain", "whole forwards"),  # the old route: no blocks, so no chain (both phases)
    "paired": ("x's own block skipped", "full Gram"),  # the old route: collect_stats(_paired=False)
}


def patched(compare: str, route: str) -> dict[str, Any]:
    """{attribute of nlinit.sequential: value} for ``route`` of ``compare`` (empty: the library as it is)."""
    if route == COMPARE[compare][0]:
        return {}
    if compare == "chain":
        return {"_blocks": lambda *a: None}
    collect = sequential.collect_stats

    def full_gram(*args: Any, **kwargs: Any) -> Any:
        return collect(*args, **(kwargs | {"_paired": False}))

    return {"collect_stats": full_gram}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "resnet20"], default="minilm")
    parser.add_argument("--calibration", type=int, default=128, help="calibration paragraphs / images")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each route, alternating")
    parser.add_argument("--streamed", action="store_true", help="the allocation's statistics not given")
    parser.add_argument("--compare", choices=sorted(COMPARE), default="chain", help="the two routes")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, data, run, metric = {"minilm": minilm, "resnet20": resnet20}[args.model](args.calibration)
    stats = None if args.streamed else grid.grid_stats(model, data, 0)
    new, old = COMPARE[args.compare]
    seconds: dict[str, list[float]] = {new: [], old: []}
    params: dict[str, dict[str, torch.Tensor]] = {}
    shown = ""
    for _ in range(args.repeats):
        for route in seconds:
            saved = {k: getattr(sequential, k) for k in patched(args.compare, route)}
            for k, v in patched(args.compare, route).items():
                setattr(sequential, k, v)
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            try:
                run(m, data, stats)
            finally:
                for k, v in saved.items():
                    setattr(sequential, k, v)
            seconds[route].append(time.perf_counter() - t0)
            params[route] = {k: v.detach().clone() for k, v in m.state_dict().items()}
            shown = shown or (metric(m) if route == new else "")
    a, b = params[new], params[old]
    same = a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())
    apart = max(float((v.double() - b[k].double()).abs().max() / b[k].double().abs().max().clamp_min(1e-300))
                for k, v in a.items() if v.is_floating_point() and v.numel())  # fmt: skip
    given = "streamed" if args.streamed else "given"
    print(f"machine: {describe()}; {args.model}, {args.calibration} calibration inputs, "
          f"allocation's statistics {given}{shown}")  # fmt: skip
    for route, s in seconds.items():
        print(f"{route}: {', '.join(f'{x:.1f}' for x in s)} s (median {statistics.median(s):.1f})")
    ratios = ", ".join(f"{x / y:.2f}" for x, y in zip(seconds[new], seconds[old], strict=True))
    print(f"{new} / {old}, run by run: {ratios}; same parameters: {same} (largest relative difference of a "
          f"tensor: {apart:.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
