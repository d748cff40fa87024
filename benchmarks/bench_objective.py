"""Speed of the exact objective: relu6 / hardswish closed forms vs the old quadrature, the general Gaussian
objective, and the quadrature vs Monte Carlo for silu.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_objective.py        # all parts; "bc" runs (b) and (c)

W: 512 x 4608 (a ResNet-50 3x3 conv's channel view), N(0, 2/4608) entries; Y: its rank-51 truncated SVD (rank
scale 0.1). One thread (torch.set_num_threads(1)): the machine is shared, and two threads on a loaded
2-core machine spin. Times are best-of-5 (median alongside).

(a) exact_loss for relu6 and hardswish in float64 (what nlra-opt's L-BFGS calls): the closed form against
    the old Gauss-Hermite rule (nlinit.objective._quadrature_loss at its old node counts, 128 and 192),
    forward and forward + backward.
(b) nlra_opt(W, 51, relu6 / hardswish, max_iter=10), whole call, with exact_loss as now and with the old
    quadrature patched in (same starts, same L-BFGS settings).
(c) the general objective: unit_moments with mean, cov (4608 x 4608), scale and offsets, then unit_loss, for
    relu6 and silu.
(d) silu: quadrature against Monte Carlo at a standard error of 1e-3 relative (as before).
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from unittest import mock

import torch

from nlinit.activations import parse_activation
from nlinit.objective import _quadrature_loss, exact_loss, mc_loss, unit_loss, unit_moments

torch.set_num_threads(1)
nlra_opt_module = importlib.import_module(
    "nlinit.inits.nlra_opt"
)  # the module (the package re-exports the function)
OLD_NODES = {"relu6": 128, "hardswish": 192}


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), sorted(times)[len(times) // 2]


def ms(t):
    return f"{t[0] * 1e3:.0f} ms (median {t[1] * 1e3:.0f})"


def problem():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(512, 4608, generator=g, dtype=torch.float64) * math.sqrt(2 / 4608)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return W, (U[:, :51] * S[:51]) @ Vh[:51]


def part_a(W, Y):
    print("(a) exact_loss, float64, 512 x 4608")
    for name, n in OLD_NODES.items():
        act = parse_activation(name)
        Yg = Y.clone().requires_grad_(True)
        new_f = best_of(lambda: exact_loss(W, Y, act))  # noqa: B023
        new_b = best_of(lambda: exact_loss(W, Yg, act).backward())  # noqa: B023
        old_f = best_of(lambda: _quadrature_loss(W, Y, act, n), 3)  # noqa: B023
        old_b = best_of(lambda: _quadrature_loss(W, Yg, act, n).backward(), 3)  # noqa: B023
        new, old = float(exact_loss(W, Y, act)), float(_quadrature_loss(W, Y, act, n))
        print(f"  {name}: closed form forward {ms(new_f)}, forward+backward {ms(new_b)}")
        print(f"  {name}: old quadrature n={n} forward {ms(old_f)}, forward+backward {ms(old_b)}")
        print(
            f"  {name}: speed-up forward {old_f[0] / new_f[0]:.1f}x, "
            f"forward+backward {old_b[0] / new_b[0]:.1f}x; "
            f"R(Y) {new:.9f} vs old {old:.9f} (rel diff {abs(new - old) / new:.1e})",
            flush=True,
        )


def part_b(W):
    print("(b) nlra_opt(W, 51, act, max_iter=10), whole call")
    for name, n in OLD_NODES.items():
        act = parse_activation(name)
        t = time.perf_counter()
        U, V = nlra_opt_module.nlra_opt(W, 51, activation=act, max_iter=10)
        t_new = time.perf_counter() - t
        r_new = float(exact_loss(W, U @ V.T, act))

        def old_exact(W_, Y_, act_, n=n):
            return _quadrature_loss(W_, Y_, act_, n) if act_.name in OLD_NODES else exact_loss(W_, Y_, act_)

        with mock.patch.object(nlra_opt_module, "exact_loss", old_exact):
            t = time.perf_counter()
            U, V = nlra_opt_module.nlra_opt(W, 51, activation=act, max_iter=10)
            t_old = time.perf_counter() - t
        r_old = float(exact_loss(W, U @ V.T, act))
        print(
            f"  {name}: closed form {t_new:.1f} s (R {r_new:.6f}), "
            f"old quadrature {t_old:.1f} s (R {r_old:.6f}, scored by the closed form): {t_old / t_new:.1f}x",
            flush=True,
        )


def part_c(W, Y):
    print("(c) general objective: mean, cov 4608 x 4608, scale, offsets")
    g = torch.Generator().manual_seed(3)
    A = torch.randn(4608, 4608, generator=g, dtype=torch.float64) / math.sqrt(4608)
    cov = A @ A.T + 0.1 * torch.eye(4608, dtype=torch.float64)
    mean = 0.1 * torch.randn(4608, generator=g, dtype=torch.float64)
    stats = {"mean": mean, "cov": cov, "scale": 1.5, "offset": 0.1, "offset_y": 0.05}
    t_m = best_of(lambda: unit_moments(W, Y, **stats), 3)
    t_m0 = best_of(lambda: unit_moments(W, Y, offset=0.1), 3)
    m = unit_moments(W, Y, **stats)
    print(f"  unit_moments with cov (validation by Cholesky included): {ms(t_m)}; without cov: {ms(t_m0)}")
    for name in ("relu6", "silu"):
        t_l = best_of(lambda: unit_loss(m, name))  # noqa: B023
        print(f"  unit_loss {name}, 512 units: {ms(t_l)}", flush=True)


def part_d(W, Y):
    act = parse_activation("silu")
    W32, Y32 = W.float(), Y.float()
    R64 = float(exact_loss(W, Y, act))
    t_fwd = best_of(lambda: exact_loss(W32, Y32, act))
    pilot = 20_000
    X = torch.randn(pilot, W.shape[1], generator=torch.Generator().manual_seed(1))
    per = (act(X @ Y32.T) - act(X @ W32.T)).pow(2).sum(1).double()
    var = per.var().item()
    n_needed = math.ceil(var / (1e-3 * R64) ** 2)
    timed = 65_536
    gen = torch.Generator().manual_seed(2)
    t_mc = best_of(lambda: mc_loss(W32, Y32, act, num_samples=timed, generator=gen), 3)
    t_need = t_mc[0] * n_needed / timed
    print(
        f"(d) silu float32: quadrature forward {ms(t_fwd)}; Monte Carlo needs N = {n_needed} samples "
        f"for SE 1e-3 relative ({t_mc[0]:.2f} s for {timed}, so {t_need:.2f} s): {t_need / t_fwd[0]:.0f}x"
    )


def main(parts: str = "abcd"):
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    W, Y = problem()
    for p in parts:
        {
            "a": lambda: part_a(W, Y),
            "b": lambda: part_b(W),
            "c": lambda: part_c(W, Y),
            "d": lambda: part_d(W, Y),
        }[p]()


if __name__ == "__main__":
    main(*sys.argv[1:])
