"""nlinit.allocate: budgets met, greedy optimal where the Lagrangian argument says so (brute force on tiny
cases), tail energy is Eckart-Young's error, uniform and stable-rank allocations, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import problems, seeded, weight

from nlinit.allocate import (
    allocation_cost,
    convex_envelope,
    greedy_allocate,
    max_saving_rank,
    sensitivity_curve,
    stable_rank,
    stable_rank_allocate,
    tail_energy,
    uniform_allocate,
)


@st.composite
def convex_problems(draw: st.DrawFn, equal_costs: bool = False):
    """2-3 layers with convex non-increasing curves E(0..R), costs per rank and a feasible budget."""
    layers = draw(st.integers(2, 3))
    curves, costs = {}, {}
    for i in range(layers):
        R = draw(st.integers(1, 4))
        gains = sorted(draw(st.lists(st.integers(0, 20), min_size=R, max_size=R)), reverse=True)
        curve = [float(sum(gains))]
        for g in gains:
            curve.append(curve[-1] - g)  # integer steps: exact arithmetic, no rounding ties
        curves[f"l{i}"] = curve
        costs[f"l{i}"] = 2 if equal_costs else draw(st.integers(1, 4))
    least = sum(costs.values())
    most = sum(costs[n] * (len(c) - 1) for n, c in curves.items())
    return curves, costs, draw(st.integers(least, most + 2))


def brute_force(curves, costs, budget) -> float:
    """min sum_l E_l(r_l) over 1 <= r_l <= R_l with sum_l c_l r_l <= budget."""
    names = list(curves)
    best = math.inf
    for ranks in itertools.product(*(range(1, len(curves[n])) for n in names)):
        if sum(costs[n] * r for n, r in zip(names, ranks)) <= budget:
            best = min(best, sum(curves[n][r] for n, r in zip(names, ranks)))
    return best


def total(curves, ranks) -> float:
    return sum(curves[n][r] for n, r in ranks.items())


@given(convex_problems())
def test_greedy_meets_the_budget_and_the_rank_bounds(problem):
    curves, costs, budget = problem
    ranks = greedy_allocate(curves, costs, budget)
    assert list(ranks) == list(curves)
    assert sum(costs[n] * r for n, r in ranks.items()) <= budget
    assert all(1 <= r <= len(curves[n]) - 1 for n, r in ranks.items())


@given(convex_problems(equal_costs=True))
def test_greedy_is_optimal_with_equal_costs(problem):
    curves, costs, budget = problem
    assert total(curves, greedy_allocate(curves, costs, budget)) == brute_force(curves, costs, budget)


@given(convex_problems())
def test_greedy_is_optimal_for_its_own_cost_at_a_lagrangian_point(problem):
    """When every rank taken gains at least as much per parameter as every rank left (a lambda separates
    them), no allocation costing at most as much has a smaller total error."""
    curves, costs, budget = problem
    ranks = greedy_allocate(curves, costs, budget)
    taken = [(curves[n][r - 1] - curves[n][r]) / costs[n] for n in curves for r in range(2, ranks[n] + 1)]
    nxt = {n: ranks[n] for n in curves if ranks[n] + 1 < len(curves[n])}
    left = [(curves[n][r] - curves[n][r + 1]) / costs[n] for n, r in nxt.items()]
    if taken and left and min(taken) < max(left):
        return  # a step was passed over for not fitting: no optimality claim
    spent = sum(costs[n] * r for n, r in ranks.items())
    assert total(curves, ranks) == brute_force(curves, costs, spent)


def test_greedy_spends_where_the_error_drops_most_per_parameter():
    curves = {"cheap": [1.0, 0.6, 0.3, 0.1], "dear": [1.0, 0.5, 0.2, 0.0]}
    # per parameter: cheap 0.3, 0.2 (cost 1); dear 0.3 / 3 = 0.1, 0.2 / 3 (cost 3)
    assert greedy_allocate(curves, {"cheap": 1, "dear": 3}, budget=6) == {"cheap": 3, "dear": 1}


@given(problems(max_dim=7))
def test_tail_energy_is_the_relative_eckart_young_error(problem):
    seed, d_out, d_in, _ = problem
    W = weight(seed, d_out, d_in)
    E = tail_energy(W)
    P, s, Qh = torch.linalg.svd(W, full_matrices=False)
    for r in range(min(W.shape) + 1):
        Wr = (P[:, :r] * s[:r]) @ Qh[:r]
        assert abs(float(E[r]) - float(torch.linalg.norm(W - Wr) ** 2 / torch.linalg.norm(W) ** 2)) < 1e-12
    assert float(E[0]) == 1.0 and all(E[:-1] >= E[1:])
    gains = E[:-1] - E[1:]
    assert all(gains[:-1] >= gains[1:] - 1e-15)  # convex


def test_max_saving_rank():
    for m, n in [(64, 64), (10, 3), (1, 50), (2, 2), (512, 4608)]:
        R = max_saving_rank(m, n)
        assert R * (m + n) < m * n or R == 0
        assert (R + 1) * (m + n) >= m * n


def test_uniform_with_a_budget_is_the_largest_scale_that_fits():
    shapes = {"a": (64, 144), "b": (128, 576), "c": (10, 64)}
    full = sum(m * n for m, n in shapes.values())
    budget = 0.3 * full
    ranks = uniform_allocate(shapes, budget=budget)
    assert allocation_cost(ranks, shapes) <= budget
    s = max(ranks["b"] / 128, 1e-9)
    bigger = uniform_allocate(shapes, rank_scale=min(1.0, s + 1 / 128))  # the next rank of the widest layer
    assert allocation_cost(bigger, shapes) > budget
    assert uniform_allocate(shapes, rank_scale=0.25) == {"a": 16, "b": 32, "c": 3}  # 2.5 rounds up


def test_stable_rank_allocation_is_proportional_and_fits():
    W = torch.diag(torch.tensor([3.0, 3.0, 3.0, 0.0]))
    assert stable_rank(W) == pytest.approx(3.0)
    shapes = {"a": (64, 64), "b": (64, 64)}
    ranks = stable_rank_allocate({"a": 9.0, "b": 3.0}, shapes, budget=128 * 16)
    assert ranks == {"a": 12, "b": 4}
    W2 = torch.randn(30, 20, generator=seeded(0))
    assert 1.0 <= stable_rank(W2) <= 20


def test_sensitivity_curve_is_half_the_mean_squared_tail_and_the_envelope_is_convex_below():
    g = seeded(5)
    c, sigma, t = (
        torch.randn(30, 4, generator=g),
        torch.tensor([3.0, 2.0, 1.0, 0.5]),
        torch.randn(30, generator=g),
    )
    curve = sensitivity_curve(c, sigma, t)
    for r in range(5):  # t_n minus the first r terms, squared, halved, averaged
        expected = 0.5 * float((t.double() - (c.double()[:, :r] * sigma.double()[:r]).sum(1)).square().mean())
        assert float(curve[r]) == pytest.approx(expected, rel=1e-12)
    assert torch.equal(sensitivity_curve(2 * c, sigma, 2 * t), 4 * curve)  # the loss scaled by 2
    env = convex_envelope(curve)
    assert bool((env <= curve.flip(0).cummax(0).values.flip(0) + 1e-15).all())  # below the envelope
    steps = env[:-1] - env[1:]
    assert bool((steps >= -1e-15).all()) and bool(
        (steps[:-1] >= steps[1:] - 1e-12).all()
    )  # convex, non-increasing
    convex = torch.tensor([5.0, 3.0, 2.0, 1.5, 1.5], dtype=torch.float64)
    assert torch.equal(convex_envelope(convex), convex)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: greedy_allocate({"a": [1, 0]}, {"a": 2}, budget=1), "budget must be at least 2 parameters"),
        (lambda: greedy_allocate({"a": [1]}, {"a": 1}, budget=1), "curve of layer 'a' must give E"),
        (lambda: greedy_allocate({"a": [1, 0]}, {"a": 0}, budget=1), "cost of layer 'a' must be a positive"),
        (lambda: uniform_allocate({"a": (1, 50)}, budget=100), r"layer 'a' \(1x50\) cannot save parameters"),
        (lambda: uniform_allocate({}, rank_scale=0.5), "no layer to allocate ranks to"),
        (lambda: uniform_allocate({"a": (8, 8)}, rank_scale=1.5), r"rank_scale must be a number in \(0, 1\]"),
        (lambda: uniform_allocate({"a": (8, 8)}), "give exactly one of rank_scale and budget"),
        (lambda: stable_rank_allocate({"a": -1.0}, {"a": (8, 8)}, 100), "stable rank of layer 'a'"),
        (lambda: tail_energy(torch.ones(3, 2), max_rank=3), r"max_rank must be an int in \[0, 2\]"),
        (lambda: sensitivity_curve(torch.ones(3), torch.ones(3), torch.ones(3)), "c must be a 2-D floating"),
        (lambda: sensitivity_curve(torch.ones(2, 3), torch.ones(2), torch.ones(2)), r"c \(N, R\), sigma"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
