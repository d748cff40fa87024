"""Accuracy of the Gauss-Hermite exact objective (nlinit.objective._quadrature_loss) vs a reference.

    .venv/bin/python benchmarks/quadrature_accuracy.py

The reference integrates one unit's E(f(u) - f(v))^2, v = a z1, u = alpha z1 + beta z2, with composite
Gauss-Legendre on [-12, 12]^2 split at every kink of f (in z1 at kink / a and, for each z1, in z2 at
(kink - alpha z1) / beta) and at every multiple of 1/2, 48 points per piece: piecewise smooth
integrands, so it converges geometrically and is independent of the Hermite rule. Prints the worst
relative error over the test units per n.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erf

from nlinit.activations import parse_activation
from nlinit.objective import _quadrature_loss

KINKS = {"relu6": (0.0, 6.0), "hardswish": (-3.0, 3.0)}
NP_FUNCS = {
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "relu6": lambda x: np.clip(x, 0, 6),
    "hardswish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
}
L = 12.0
GL_X, GL_W = np.polynomial.legendre.leggauss(48)
PHI = lambda z: np.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731


def _pieces(breaks):
    extra = [k / 2 for k in range(-2 * int(L) + 1, 2 * int(L))]  # pieces of length <= 1/2
    pts = sorted({-L, L, *extra, *[b for b in breaks if -L < b < L]})
    xs, ws = [], []
    for lo, hi in zip(pts[:-1], pts[1:], strict=True):
        xs.append((hi - lo) / 2 * GL_X + (hi + lo) / 2)
        ws.append((hi - lo) / 2 * GL_W)
    return np.concatenate(xs), np.concatenate(ws)


def reference(name, a, alpha, beta):
    f, kinks = NP_FUNCS[name], KINKS.get(name, ())
    z1, w1 = _pieces([k / a for k in kinks] if a > 0 else [])
    total = 0.0
    for x1, ww1 in zip(z1, w1, strict=True):
        z2, w2 = _pieces([(k - alpha * x1) / beta for k in kinks] if beta > 0 else [])
        inner = np.sum(w2 * PHI(z2) * (f(alpha * x1 + beta * z2) - f(a * x1)) ** 2)
        total += ww1 * PHI(x1) * inner
    return total


def units(seed=0):
    """(a, b, rho) on a grid of typical norms and correlations, plus Y = 0 rows."""
    rng = np.random.default_rng(seed)
    out = []
    for a in (0.1, 0.5, 1.0, 3.0):
        for b in (0.1, 1.0, 3.0):
            for rho in (-0.99, -0.3, 0.5, 0.9, 0.999):
                out.append((a, b, rho))
    rng.shuffle(out)
    return out


def main():
    cases = units()
    print(
        f"{len(cases)} units: a in (0.1, 0.5, 1, 3), b in (0.1, 1, 3), rho in (-0.99, -0.3, 0.5, 0.9, 0.999)"
    )  # noqa: E501
    print("max relative error per unit |quad - ref| / ref; float64 (float32 in brackets)")
    ns = (32, 48, 64, 96, 128, 192, 256)
    print("activation | " + " | ".join(f"n={n}" for n in ns))
    for name in NP_FUNCS:
        act = parse_activation(name)
        refs = []
        for a, b, rho in cases:
            refs.append(reference(name, a, b * rho, b * math.sqrt(1 - rho * rho)))
        row = []
        for n in ns:
            errs = {}
            for dt in (torch.float64, torch.float32):
                worst = 0.0
                for (a, b, rho), ref in zip(cases, refs, strict=True):
                    W = torch.tensor([[a, 0.0]], dtype=dt)
                    Y = torch.tensor([[b * rho, b * math.sqrt(1 - rho * rho)]], dtype=dt)
                    q = _quadrature_loss(W, Y, act, n).item()
                    worst = max(worst, abs(q - ref) / ref)
                errs[dt] = worst
            row.append(f"{errs[torch.float64]:.1e} ({errs[torch.float32]:.1e})")
        print(f"{name} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
