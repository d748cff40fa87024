"""compress(sequential=True) of all-MiniLM-L6-v2 with the block chain (each layer's pass runs its encoder
layer alone, on kept inputs) against whole forwards (each pass runs both models from the embeddings to the
layer): seconds per route and their ratio in one process, runs alternating (benchmarks/COMPRESS.md).

    OMP_NUM_THREADS=1 python benchmarks/time_sequential_minilm.py --calibration 128 --repeats 2

All 36 Linear layers, whiten, energy allocation, budget 0.5, the statistics for the allocation given (as the
grid gives them), so the times are the sequential pass's. Also checks that both routes give the same
parameters bit for bit.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import nlinit.sequential as sequential
from nlinit.experiments import compress_table as grid
from nlinit.experiments.compress_minilm import compress_all_linear
from nlinit.experiments.machine import describe
from nlinit.experiments.retrieval import calibration_paragraphs
from nlinit.hf import load_minilm, token_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=128, help="calibration paragraphs")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each route, alternating")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_minilm()
    batches = token_batches(tokenizer, calibration_paragraphs(args.calibration), max_length=128)
    stats = grid.grid_stats(model, batches, 0)
    blocks = sequential._blocks
    seconds: dict[str, list[float]] = {"chain": [], "whole forwards": []}
    params: dict[str, dict[str, torch.Tensor]] = {}
    for _ in range(args.repeats):
        for route in seconds:
            sequential._blocks = blocks if route == "chain" else (lambda *a: None)  # type: ignore[assignment]
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            compress_all_linear(m, batches, budget=0.5, method="whiten", allocate="energy", stats=stats,
                                sequential=True)  # fmt: skip
            seconds[route].append(time.perf_counter() - t0)
            params[route] = {k: v.detach().clone() for k, v in m.state_dict().items()}
    sequential._blocks = blocks
    same = params["chain"].keys() == params["whole forwards"].keys() and all(
        torch.equal(v, params["whole forwards"][k]) for k, v in params["chain"].items()
    )
    print(f"machine: {describe()}; {args.calibration} calibration paragraphs ({len(batches)} batches)")
    for route, s in seconds.items():
        print(f"{route}: {', '.join(f'{x:.1f}' for x in s)} s (median {statistics.median(s):.1f})")
    ratios = [a / b for a, b in zip(seconds["chain"], seconds["whole forwards"], strict=True)]
    shown = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"chain / whole forwards, run by run: {shown}; same parameters: {same}")


if __name__ == "__main__":
    main()
