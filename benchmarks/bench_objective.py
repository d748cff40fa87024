"""Quadrature exact objective vs Monte Carlo for SiLU (issue: exact objective beyond leaky-ReLU).

    .venv/bin/python benchmarks/bench_objective.py

W: 512 x 4608 (a ResNet-50 3x3 conv's channel view), trunc-normal-like N(0, 2/4608); Y: its spectral rank-51
approximation (rank scale 0.1). (a) times exact_loss (Gauss-Hermite, float32 and float64, forward and
forward+backward). (b) estimates the per-sample variance of ||silu(Y x) - silu(W x)||^2 from a pilot run, the
number of samples N = var / (1e-3 R)^2 for a standard error of 1e-3 relative, times mc_loss on a fixed
number of samples and extrapolates linearly to N (Monte Carlo cost is linear in N), then prints the ratio.
"""

from __future__ import annotations

import math
import time

import torch

from nlinit.activations import parse_activation
from nlinit.inits import init_factors
from nlinit.objective import exact_loss, mc_loss


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), sorted(times)[len(times) // 2]


def main():
    torch.manual_seed(0)
    act = parse_activation("silu")
    g = torch.Generator().manual_seed(0)
    W = torch.randn(512, 4608, generator=g) * math.sqrt(2 / 4608)
    U, V = init_factors(W, 51, "spectral", act)
    Y = U @ V.T
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, W {tuple(W.shape)}, rank 51, silu")

    R64 = exact_loss(W.double(), Y.double(), act).item()
    R32 = exact_loss(W, Y, act).item()
    print(f"R(Y) quadrature: float64 {R64:.6f}, float32 {R32:.6f} (rel diff {abs(R32 - R64) / R64:.1e})")

    t_fwd, t_fwd_med = best_of(lambda: exact_loss(W, Y, act))
    Yg = Y.clone().requires_grad_(True)
    t_bwd, _ = best_of(lambda: exact_loss(W, Yg, act).backward())
    t64, _ = best_of(lambda: exact_loss(W.double(), Y.double(), act))
    print(
        f"(a) quadrature exact_loss: float32 {t_fwd * 1e3:.1f} ms (median {t_fwd_med * 1e3:.1f}), "
        f"forward+backward {t_bwd * 1e3:.1f} ms, float64 {t64 * 1e3:.1f} ms"
    )

    # (b) pilot: per-sample losses, float32 as mc_loss would run.
    pilot = 20_000
    X = torch.randn(pilot, W.shape[1], generator=torch.Generator().manual_seed(1))
    per = (act(X @ Y.T) - act(X @ W.T)).pow(2).sum(1).double()
    var, mean = per.var().item(), per.mean().item()
    n_needed = math.ceil(var / (1e-3 * R64) ** 2)
    print(
        f"(b) pilot {pilot} samples: mean {mean:.6f} (quadrature {R64:.6f}), "
        f"per-sample sd {math.sqrt(var):.4f}, "
        f"cv {math.sqrt(var) / R64:.3f}"
    )
    print(f"    samples for SE = 1e-3 relative: N = var / (1e-3 R)^2 = {n_needed}")
    timed = 65_536
    gen = torch.Generator().manual_seed(2)
    t_mc, t_mc_med = best_of(lambda: mc_loss(W, Y, act, num_samples=timed, generator=gen), repeats=3)
    t_need = t_mc * n_needed / timed
    print(
        f"    mc_loss on {timed} samples: {t_mc:.3f} s (median {t_mc_med:.3f}); "
        f"extrapolated linearly to N: {t_need:.2f} s"
    )
    print(
        f"speed ratio MC(SE 1e-3) / quadrature (float32 forward): {t_need / t_fwd:.0f}x "
        f"(vs forward+backward: {t_need / t_bwd:.0f}x; target >= 100x)"
    )


if __name__ == "__main__":
    main()
