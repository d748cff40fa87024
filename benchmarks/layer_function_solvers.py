"""The data-aware solvers on one layer with a mean, an anisotropic covariance, a bias and an eval BatchNorm.

    PYTHONPATH=src:tests python benchmarks/layer_function_solvers.py

The layer of tests/test_layer_function.py (weight(0, 24, 16), _function(0, 24, 16)), rank 4. Prints, per
activation, the layer objective under the fitted Gaussian (each fit with its refitted bias) of whiten,
relu-svd, lfai-ws with no epoch (= whiten), lfai-ws (sampled, the paper's settings), lfai-ws on the exact
objective, and lfai from the baseline factors; generator seed 0. Quoted in docs/theory.md section 11.2.
"""

from __future__ import annotations

import torch
from strategies import weight
from test_layer_function import _function, _objective

from nlinit.inits import init_factors


def main() -> None:
    W, fn = weight(0, 24, 16), _function(0, 24, 16)
    runs = {
        "whiten": ("whiten", {}),
        "relu-svd": ("relu-svd", {}),
        "lfai-ws, no epoch": ("lfai-ws", {"max_epochs": 0}),
        "lfai-ws": ("lfai-ws", {}),
        "lfai-ws, exact": ("lfai-ws", {"objective": "exact"}),
        "lfai": ("lfai", {}),
    }
    print("| activation | " + " | ".join(runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for act in ("relu", "silu"):
        values = []
        for init, options in runs.values():
            fit = init_factors(
                W, 4, init, act, function=fn, generator=torch.Generator().manual_seed(0), **options
            )
            values.append(f"{_objective(W, fit, fn, act):.4f}")
        print(f"| {act} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
