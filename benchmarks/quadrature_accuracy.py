"""Accuracy of the exact per-unit objective (nlinit.objective.unit_loss / exact_loss) against a reference.

    PYTHONPATH=src .venv/bin/python benchmarks/quadrature_accuracy.py            # all tables (~10 min)
    PYTHONPATH=src .venv/bin/python benchmarks/quadrature_accuracy.py centred    # one table

Tables (worst relative error per unit |value - reference| / reference over a grid of units):

* ``bvn``: the bivariate normal CDF (nlinit.gaussian.bvn_cdf, Genz's algorithm) against mpmath at 30 digits
  (Plackett's identity Phi2(h, k; rho) = Phi(h) Phi(k) + int_0^rho phi2(h, k; t) dt) and against
  scipy.stats.multivariate_normal.cdf; absolute errors.
* ``centred``: x ~ N(0, I), the paper's setting: relu6 and hardswish by their new closed forms and by the old
  Gauss-Hermite rule (nlinit.objective._quadrature_loss at the old node counts), and the smooth activations
  by Gauss-Hermite at n = 32 .. 256; units a in {0.1, 0.5, 1, 3}, b in {0.1, 1, 3},
  rho in {-0.999999, -0.99, -0.3, 0.5, 0.9, 0.999, 0.999999}.
* ``offsets``: means m_u, m_v (offsets and a non-zero input mean) for every exact activation:
  (m_u, m_v) in {(0, 0), (-1.5, 0.5), (2, 2.5), (-3, -2), (4, 1)}, a, b in {0.3, 1, 3},
  rho in {-0.99, 0.5, 0.999}.

The reference integrates E (f(u) - f(v))^2 with v = m_v + a z1, u = m_u + alpha z1 + beta z2 (z1, z2 i.i.d.
N(0, 1), alpha = b rho, beta = b sqrt(1 - rho^2)) by nested adaptive Gauss-Kronrod quadrature
(scipy.integrate.quad, epsrel 1e-12) on [-12, 12]^2, with breakpoints at every kink of f(v) and f(u) (in z1
where v or the mean of u crosses a kink, in z2 where u crosses one): the integrand is the squared difference
itself, >= 0, so there is no cancellation, and nothing is shared with the closed forms or the Hermite rule.
A geometric mesh of outer breakpoints down to the width beta / |alpha| of the layer where u's mean crosses a
kink keeps the adaptive rule from missing it as rho -> +-1. The ``self`` table checks the reference against
the arc-cosine closed form (relu, leaky relu) evaluated in mpmath at 50 digits, which shares nothing with it.
"""

from __future__ import annotations

import math
import sys

import mpmath
import numpy as np
import torch
from scipy import integrate
from scipy.special import erf
from scipy.stats import multivariate_normal

from nlinit.activations import parse_activation
from nlinit.gaussian import bvn_cdf
from nlinit.objective import (
    QUADRATURE_NODES,
    UnitMoments,
    _hermite_unit_loss,
    _quadrature_loss,
    unit_loss,
)

torch.set_num_threads(1)
F64 = torch.float64
SPAN = 12.0
KINKS = {"relu": (0.0,), "leaky_relu(0.2)": (0.0,), "relu6": (0.0, 6.0), "hardswish": (-3.0, 3.0)}
NP_FUNCS = {
    "relu": lambda x: max(x, 0.0),
    "leaky_relu(0.2)": lambda x: x if x > 0 else 0.2 * x,
    "relu6": lambda x: min(max(x, 0.0), 6.0),
    "hardswish": lambda x: x * min(max(x + 3.0, 0.0), 6.0) / 6.0,
    "silu": lambda x: x / (1.0 + math.exp(-x)) if x > -700 else 0.0,
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))),
    "tanh": math.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0,
}
PHI = 1.0 / math.sqrt(2.0 * math.pi)


def reference(
    name: str, m_u: float, m_v: float, a: float, b: float, rho: float, epsrel: float = 1e-12
) -> float:
    """E (f(u) - f(v))^2 by nested scipy.integrate.quad with breakpoints at the kinks (module docstring)."""
    f, kinks = NP_FUNCS[name], KINKS.get(name, ())
    alpha, beta = b * rho, b * math.sqrt(max(1.0 - rho * rho, 0.0))
    pts1 = {(k - m_v) / a for k in kinks}
    if alpha:
        # Where the mean of u crosses a kink, the inner integral changes on the scale beta / |alpha| (tiny
        # as rho -> +-1): a geometric mesh down to that scale lets the adaptive rule see the layer.
        width = beta / abs(alpha)
        for k in kinks:
            c = (k - m_u) / alpha
            pts1 |= {c} | {
                c + sgn * width * 2.0**j
                for j in range(-4, 40)
                for sgn in (-1, 1)
                if width * 2.0**j < 2 * SPAN
            }
    pts1 = sorted(p for p in pts1 if -SPAN < p < SPAN)

    def inner(z1: float) -> float:
        fv = f(m_v + a * z1)
        mu = m_u + alpha * z1
        if beta == 0.0:
            return (f(mu) - fv) ** 2
        pts2 = [p for p in sorted((k - mu) / beta for k in kinks) if -SPAN < p < SPAN]
        val, _ = integrate.quad(
            lambda z2: math.exp(-0.5 * z2 * z2) * (f(mu + beta * z2) - fv) ** 2,
            -SPAN,
            SPAN,
            points=pts2 or None,
            epsabs=0.0,
            epsrel=epsrel,
            limit=400,
        )
        return PHI * val

    val, _ = integrate.quad(
        lambda z1: PHI * math.exp(-0.5 * z1 * z1) * inner(z1),
        -SPAN,
        SPAN,
        points=pts1 or None,
        epsabs=0.0,
        epsrel=epsrel,
        limit=2000,
    )
    return val


def moments(m_u, m_v, a, b, rho):
    t = lambda x: torch.tensor([x], dtype=F64)  # noqa: E731
    cond = b * b * (1.0 - rho) * (1.0 + rho)
    return UnitMoments(t(m_u), t(m_v), t(b * b), t(a * a), t(a * b * rho), t(cond))


def table_bvn():
    print("## bvn: |bvn_cdf - reference|, absolute")
    mpmath.mp.dps = 30
    hs = (-6.0, -3.0, -1.5, -0.3, 0.0, 0.4, 1.0, 2.5, 5.0)
    rhos = (-1.0, -0.999999, -0.99, -0.93, -0.9, -0.5, 0.0, 0.3, 0.8, 0.92, 0.95, 0.999, 0.999999, 1.0)
    worst_mp = worst_sp = 0.0
    arg_mp = arg_sp = None
    for rho in rhos:
        for h in hs:
            for k in hs:
                ours = float(
                    bvn_cdf(
                        torch.tensor(h, dtype=F64), torch.tensor(k, dtype=F64), torch.tensor(rho, dtype=F64)
                    )
                )
                if abs(rho) == 1.0:
                    ref = (
                        mpmath.ncdf(min(h, k))
                        if rho > 0
                        else max(mpmath.mpf(0), mpmath.ncdf(h) - mpmath.ncdf(-k))
                    )
                else:

                    def dens(t, h=h, k=k):
                        q = 1 - t * t
                        return mpmath.exp(-(h * h - 2 * t * h * k + k * k) / (2 * q)) / (
                            2 * mpmath.pi * mpmath.sqrt(q)
                        )

                    ref = mpmath.ncdf(h) * mpmath.ncdf(k) + mpmath.quad(dens, [0, rho])
                    sp = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([h, k])
                    if abs(ours - sp) > worst_sp:
                        worst_sp, arg_sp = abs(ours - sp), (h, k, rho)
                err = abs(ours - float(ref))
                if err > worst_mp:
                    worst_mp, arg_mp = err, (h, k, rho)
    n = len(hs) ** 2 * len(rhos)
    print(f"{n} points h, k in {hs}, rho in {rhos}")
    print(f"vs mpmath (30 digits): max abs error {worst_mp:.1e} at (h, k, rho) = {arg_mp}")
    print(
        f"vs scipy.stats.multivariate_normal.cdf (|rho| < 1): max abs difference {worst_sp:.1e} at {arg_sp}"
    )


CENTRED = [
    (a, b, rho)
    for a in (0.1, 0.5, 1.0, 3.0)
    for b in (0.1, 1.0, 3.0)
    for rho in (-0.999999, -0.99, -0.3, 0.5, 0.9, 0.999, 0.999999)
]


def _worst(values, refs, cases):
    errs = [abs(v - r) / r for v, r in zip(values, refs, strict=True)]
    i = int(np.argmax(errs))
    return errs[i], cases[i]


def _old_quadrature(name, a, b, rho, n):
    W = torch.tensor([[a, 0.0]], dtype=F64)
    Y = torch.tensor([[b * rho, b * math.sqrt(1 - rho * rho)]], dtype=F64)
    return float(_quadrature_loss(W, Y, parse_activation(name), n))


def table_centred():
    print("## centred: worst relative error per unit, x ~ N(0, I)")
    rhos = "(-0.999999, -0.99, -0.3, 0.5, 0.9, 0.999, 0.999999)"
    print(f"{len(CENTRED)} units: a in (0.1, 0.5, 1, 3), b in (0.1, 1, 3), rho in {rhos}")
    for name, old_n in (("relu6", 128), ("hardswish", 192)):
        refs = [reference(name, 0.0, 0.0, a, b, rho) for a, b, rho in CENTRED]
        new = [float(unit_loss(moments(0.0, 0.0, a, b, rho), name)) for a, b, rho in CENTRED]
        old = [_old_quadrature(name, a, b, rho, old_n) for a, b, rho in CENTRED]
        e_new, c_new = _worst(new, refs, CENTRED)
        e_old, c_old = _worst(old, refs, CENTRED)
        print(
            f"{name}: closed form {e_new:.1e} (worst unit a, b, rho = {c_new}); "
            f"old Gauss-Hermite n={old_n} {e_old:.1e} (at {c_old})",
            flush=True,
        )
    ns = (32, 48, 64, 96, 128, 192, 256)
    print("smooth, Gauss-Hermite | " + " | ".join(f"n={n}" for n in ns))
    for name in ("silu", "gelu", "tanh", "sigmoid"):
        refs = [reference(name, 0.0, 0.0, a, b, rho) for a, b, rho in CENTRED]
        row = []
        for n in ns:
            vals = [_gh(name, 0.0, 0.0, a, b, rho, n) for a, b, rho in CENTRED]
            row.append(f"{_worst(vals, refs, CENTRED)[0]:.1e}")
        print(f"{name} | " + " | ".join(row), flush=True)


def _gh(name, m_u, m_v, a, b, rho, n):
    t = lambda x: torch.tensor([x], dtype=F64)  # noqa: E731
    beta = b * math.sqrt((1 - rho) * (1 + rho))
    return float(_hermite_unit_loss(t(m_u), t(m_v), t(a), t(b * rho), t(beta), parse_activation(name), n)[0])


MEANS = ((0.0, 0.0), (-1.5, 0.5), (2.0, 2.5), (-3.0, -2.0), (4.0, 1.0))
OFFSETS = [
    (mu, mv, a, b, rho)
    for mu, mv in MEANS
    for a in (0.3, 1.0, 3.0)
    for b in (0.3, 1.0, 3.0)
    for rho in (-0.99, 0.5, 0.999)
]


def table_offsets():
    print("## offsets: worst relative error per unit with means (unit_loss)")
    print(f"{len(OFFSETS)} units: (m_u, m_v) in {MEANS}, a, b in (0.3, 1, 3), rho in (-0.99, 0.5, 0.999)")
    for name in ("relu", "leaky_relu(0.2)", "relu6", "hardswish", "silu", "gelu", "tanh", "sigmoid"):
        refs = [reference(name, *c) for c in OFFSETS]
        vals = [float(unit_loss(moments(*c), name)) for c in OFFSETS]
        err, case = _worst(vals, refs, OFFSETS)
        how = "closed form" if name in KINKS else f"Gauss-Hermite n={QUADRATURE_NODES[name]}"
        print(f"{name} ({how}): {err:.1e} (worst unit m_u, m_v, a, b, rho = {case})", flush=True)


def reference_self_check():
    """The reference against the arc-cosine closed form (relu, leaky relu), by mpmath at 50 digits."""
    print("## reference self-check: reference vs Theorem 1.4 in mpmath (50 digits), centred units")
    mpmath.mp.dps = 50
    for name, alpha in (("relu", 0.0), ("leaky_relu(0.2)", 0.2)):
        refs, exact = [], []
        for a, b, rho in CENTRED:
            rr = mpmath.mpf(rho)
            g = (mpmath.sqrt((1 - rr) * (1 + rr)) + (mpmath.pi - mpmath.acos(rr)) * rr) / mpmath.pi
            val = (1 + alpha**2) / 2 * (a * a + b * b) - 2 * alpha * a * b * rr - (1 - alpha) ** 2 * a * b * g
            exact.append(float(val))
            refs.append(reference(name, 0.0, 0.0, a, b, rho))
        err, case = _worst(refs, exact, CENTRED)
        print(f"{name}: reference's max relative error {err:.1e} (at a, b, rho = {case})", flush=True)


TABLES = {"bvn": table_bvn, "self": reference_self_check, "centred": table_centred, "offsets": table_offsets}

if __name__ == "__main__":
    for key in sys.argv[1:] or list(TABLES):
        TABLES[key]()
