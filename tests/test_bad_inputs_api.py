"""Bad input to the library's public functions (issue 12), one table per module.

Each case is (call, error type, regex of the message). Every case asserts the error type, that the message
matches from its start, and that it is one line; the cases that take a model or a registry assert that it
is as it was. train, run_sweep and the command line are in test_bad_inputs.py, factorize in
test_factorize_bad_input.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch

from nlinit import allocate as A

NAN, INF = math.nan, math.inf
W86 = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))


def _check(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        call()
    text = str(info.value)
    assert re.match(message, text), text
    assert "\n" not in text, text


# ---------------------------------------------------------------------------------------------------------
# nlinit.allocate

SHAPES = {"a": (8, 6), "b": (16, 16)}
COSTS = {"a": 14, "b": 32}
CURVES = {"a": [1.0, 0.5, 0.2], "b": [1.0, 0.3, 0.1]}

ALLOCATE_CASES = {
    "max_saving_rank rows 0": (
        lambda: A.max_saving_rank(0, 5),
        ValueError,
        r"rows must be an int >= 1, got 0$",
    ),
    "max_saving_rank cols -1": (
        lambda: A.max_saving_rank(5, -1),
        ValueError,
        r"cols must be an int >= 1, got -1$",
    ),
    "max_saving_rank float": (
        lambda: A.max_saving_rank(2.5, 5),
        ValueError,
        r"rows must be an int >= 1, got 2.5$",
    ),
    "max_saving_rank bool": (
        lambda: A.max_saving_rank(True, 5),
        ValueError,
        r"rows must be an int >= 1, got True",
    ),
    "max_saving_rank str": (
        lambda: A.max_saving_rank("4", 5),
        ValueError,
        r"rows must be an int >= 1, got '4'$",
    ),
    "allocation_cost unknown layer": (
        lambda: A.allocation_cost({"a": 2, "c": 1}, SHAPES),
        ValueError,
        r"layer 'c' has a rank but no shape; shapes has \['a', 'b'\]$",
    ),
    "allocation_cost rank < 1": (
        lambda: A.allocation_cost({"a": -2}, SHAPES),
        ValueError,
        r"rank must be an int in \[1, 6\] for a 8x6 weight at 'a', got -2$",
    ),
    "allocation_cost rank too big": (
        lambda: A.allocation_cost({"a": 99}, SHAPES),
        ValueError,
        r"rank must be an int in \[1, 6\] for a 8x6 weight at 'a', got 99$",
    ),
    "allocation_cost float rank": (
        lambda: A.allocation_cost({"a": 2.5}, SHAPES),
        ValueError,
        r"rank must .* got 2.5$",
    ),
    "allocation_cost bool rank": (
        lambda: A.allocation_cost({"a": True}, SHAPES),
        ValueError,
        r"rank must .* got True$",
    ),
    "allocation_cost bad shape": (
        lambda: A.allocation_cost({"a": 1}, {"a": (8, 0)}),
        ValueError,
        r"shape of layer 'a' must be a pair of ints >= 1 \(rows, cols\), got \(8, 0\)$",
    ),
    "stable_rank 1-D": (
        lambda: A.stable_rank(torch.ones(5)),
        ValueError,
        r"W must be a 2-D .* got shape \(5,\)$",
    ),
    "stable_rank NaN": (lambda: A.stable_rank(torch.full((3, 3), NAN)), ValueError, r"W has 9 non-finite"),
    "stable_rank list": (lambda: A.stable_rank([[1.0]]), TypeError, r"W must be a torch.Tensor, got list$"),
    "stable_rank int": (
        lambda: A.stable_rank(torch.ones(3, 3, dtype=torch.long)),
        TypeError,
        r"W must be a float",
    ),
    "tail_energy 3-D": (lambda: A.tail_energy(torch.ones(2, 3, 4)), ValueError, r"W must be a 2-D"),
    "tail_energy Inf": (lambda: A.tail_energy(torch.full((2, 2), INF)), ValueError, r"W has 4 non-finite"),
    "tail_energy max_rank -1": (
        lambda: A.tail_energy(W86, -1),
        ValueError,
        r"max_rank must be an int in \[0, 6\] for a 8x6 W, got -1$",
    ),
    "tail_energy max_rank 99": (
        lambda: A.tail_energy(W86, 99),
        ValueError,
        r"max_rank must be an int in \[0, 6\]",
    ),
    "tail_energy max_rank float": (lambda: A.tail_energy(W86, 2.0), ValueError, r"max_rank must .* got 2.0$"),
    "tail_energy max_rank bool": (
        lambda: A.tail_energy(W86, True),
        ValueError,
        r"max_rank must .* got True$",
    ),
    "uniform neither": (
        lambda: A.uniform_allocate(SHAPES),
        ValueError,
        r"give exactly one of rank_scale and budget",
    ),
    "uniform both": (
        lambda: A.uniform_allocate(SHAPES, rank_scale=0.1, budget=500),
        ValueError,
        r"give exactly one of rank_scale and budget, got 0.1 and 500$",
    ),
    "uniform rank_scale 0": (
        lambda: A.uniform_allocate(SHAPES, rank_scale=0),
        ValueError,
        r"rank_scale must be a number in \(0, 1\], got 0$",
    ),
    "uniform rank_scale NaN": (
        lambda: A.uniform_allocate(SHAPES, rank_scale=NAN),
        ValueError,
        r"rank_scale .* nan$",
    ),
    "uniform rank_scale 2": (
        lambda: A.uniform_allocate(SHAPES, rank_scale=2.0),
        ValueError,
        r"rank_scale .* 2.0$",
    ),
    "uniform budget NaN": (
        lambda: A.uniform_allocate(SHAPES, budget=NAN),
        ValueError,
        r"budget must be at least 46 parameters \(rank 1 in each of the 2 layers\), got nan$",
    ),
    "uniform budget Inf": (
        lambda: A.uniform_allocate(SHAPES, budget=INF),
        ValueError,
        r"budget must .* got inf$",
    ),
    "uniform budget too small": (
        lambda: A.uniform_allocate(SHAPES, budget=10),
        ValueError,
        r"budget must .* 10$",
    ),
    "uniform budget bool": (
        lambda: A.uniform_allocate(SHAPES, budget=True),
        ValueError,
        r"budget must .* True$",
    ),
    "uniform budget str": (
        lambda: A.uniform_allocate(SHAPES, budget="500"),
        ValueError,
        r"budget must .* '500'$",
    ),
    "uniform no layers": (
        lambda: A.uniform_allocate({}, rank_scale=0.5),
        ValueError,
        r"no layer to allocate ranks",
    ),
    "uniform shape 0": (
        lambda: A.uniform_allocate({"a": (0, 5)}, rank_scale=0.5),
        ValueError,
        r"shape of layer 'a' must be a pair of ints >= 1 \(rows, cols\), got \(0, 5\)$",
    ),
    "uniform shape 1-D": (
        lambda: A.uniform_allocate({"a": (5,)}, rank_scale=0.5),
        ValueError,
        r"shape of layer 'a' must be .* got \(5,\)$",
    ),
    "uniform shape float": (
        lambda: A.uniform_allocate({"a": (5.0, 3)}, rank_scale=0.5),
        ValueError,
        r"shape of layer 'a' must be .* got \(5.0, 3\)$",
    ),
    "uniform shapes list": (
        lambda: A.uniform_allocate([(5, 3)], rank_scale=0.5),
        TypeError,
        r"shapes must be a mapping \{layer: \(rows, cols\)\}, got list$",
    ),
    "uniform no saving": (
        lambda: A.uniform_allocate({"a": (1, 50)}, rank_scale=0.5),
        ValueError,
        r"layer 'a' \(1x50\) cannot save parameters at any rank",
    ),
    "greedy budget NaN": (
        lambda: A.greedy_allocate(CURVES, COSTS, NAN),
        ValueError,
        r"budget must be at least 46 .*nan$",
    ),
    "greedy budget -1": (lambda: A.greedy_allocate(CURVES, COSTS, -1.0), ValueError, r"budget must .* -1.0$"),
    "greedy budget str": (
        lambda: A.greedy_allocate(CURVES, COSTS, "99"),
        ValueError,
        r"budget must .* '99'$",
    ),
    "greedy missing cost": (
        lambda: A.greedy_allocate(CURVES, {"a": 14}, 100),
        ValueError,
        r"cost of layer 'b' must be a positive int, got None$",
    ),
    "greedy cost 0": (
        lambda: A.greedy_allocate(CURVES, {**COSTS, "a": 0}, 100),
        ValueError,
        r"cost of layer 'a' .*0$",
    ),
    "greedy cost float": (
        lambda: A.greedy_allocate(CURVES, {**COSTS, "a": 1.5}, 100),
        ValueError,
        r"cost of layer 'a' .*1.5$",
    ),
    "greedy curve NaN": (
        lambda: A.greedy_allocate({"a": [1.0, NAN, 0.0]}, {"a": 3}, 100),
        ValueError,
        r"curve of layer 'a' must hold finite numbers, got nan$",
    ),
    "greedy curve str": (
        lambda: A.greedy_allocate({"a": [1.0, "0.5"]}, {"a": 3}, 100),
        ValueError,
        r"curve of layer 'a' must hold finite numbers, got '0.5'$",
    ),
    "greedy curve short": (
        lambda: A.greedy_allocate({"a": [1.0]}, {"a": 3}, 100),
        ValueError,
        r"curve of layer 'a' must give E\(0..R\) with R >= 1, got 1 values$",
    ),
    "greedy curve 2-D": (
        lambda: A.greedy_allocate({"a": torch.ones(2, 2)}, {"a": 3}, 100),
        ValueError,
        r"curve of layer 'a' must be a 1-D tensor or a list of numbers, got \(2, 2\)$",
    ),
    "greedy curve str type": (
        lambda: A.greedy_allocate({"a": "abc"}, {"a": 3}, 100),
        ValueError,
        r"curve of layer 'a' must be a 1-D tensor or a list of numbers, got str$",
    ),
    "greedy no layers": (
        lambda: A.greedy_allocate({}, {}, 100),
        ValueError,
        r"no layer to allocate ranks to$",
    ),
    "stable_rank_allocate NaN": (
        lambda: A.stable_rank_allocate({"a": NAN, "b": 1.0}, SHAPES, 200),
        ValueError,
        r"stable rank of layer 'a' must be a finite number >= 0, got nan$",
    ),
    "stable_rank_allocate Inf": (
        lambda: A.stable_rank_allocate({"a": INF, "b": 1.0}, SHAPES, 200),
        ValueError,
        r"stable rank of layer 'a' must be a finite number >= 0, got inf$",
    ),
    "stable_rank_allocate negative": (
        lambda: A.stable_rank_allocate({"a": -1.0, "b": 1.0}, SHAPES, 200),
        ValueError,
        r"stable rank of layer 'a' .* got -1.0$",
    ),
    "stable_rank_allocate bool": (
        lambda: A.stable_rank_allocate({"a": True, "b": 1.0}, SHAPES, 200),
        ValueError,
        r"stable rank of layer 'a' .* got True$",
    ),
    "stable_rank_allocate missing": (
        lambda: A.stable_rank_allocate({"a": 1.0}, SHAPES, 200),
        ValueError,
        r"stable rank of layer 'b' .* got None$",
    ),
    "stable_rank_allocate budget": (
        lambda: A.stable_rank_allocate({"a": 1.0, "b": 1.0}, SHAPES, 2.0),
        ValueError,
        r"budget must be at least 46 parameters .* got 2.0$",
    ),
}


@pytest.mark.parametrize("case", ALLOCATE_CASES.values(), ids=ALLOCATE_CASES.keys())
def test_allocate_bad_input(case):
    _check(*case)
