"""compress with and without sequential=True on the tiny nets of tests/test_compress.py.

    PYTHONPATH=src:tests python benchmarks/compress_sequential.py

The CNN (conv -> eval BatchNorm -> ReLU, c1, c2 and fc1 compressed) and the biased MLP (its two inner
layers), seeded weights; 100 or 500 calibration inputs and 500 fresh ones (tests/test_compress.py's
``inputs``, seeds 1 and 2); budget 0.5, energy allocation, seed 0. Prints the relative output error
||f_c(x) - f(x)||^2 / ||f(x)||^2 of the compressed model on both sets. Quoted in docs/theory.md section 11.5.
"""

from __future__ import annotations

import copy

import torch
from test_compress import NETS, inputs

from nlinit.compress import compress


def main() -> None:
    print("| net | inputs | method | calibration error | sequential | fresh-input error | sequential |")
    print("|---|---|---|---|---|---|---|")
    for net, n in (("cnn", 100), ("cnn", 500), ("mlp", 100), ("mlp", 500)):
        build, shape, _ = NETS[net]
        original = build()
        fit, fresh = inputs(shape, n=n, seed=1), inputs(shape, n=500, seed=2)
        with torch.no_grad():
            targets = original(fit), original(fresh)
        for method in ("whiten", "relu-svd"):
            cells = {}
            for flag in (False, True):
                model = copy.deepcopy(original)
                compress(
                    model, fit, budget=0.5, method=method, allocate="energy", sequential=flag, progress=False
                )
                with torch.no_grad():
                    cells[flag] = [
                        float(((model(x) - t) ** 2).sum() / (t**2).sum())
                        for x, t in zip((fit, fresh), targets, strict=True)
                    ]
            a, b = cells[False], cells[True]
            print(f"| {net} | {n} | {method} | {a[0]:.3g} | {b[0]:.3g} | {a[1]:.3g} | {b[1]:.3g} |")


if __name__ == "__main__":
    main()
