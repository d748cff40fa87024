"""Bad input to the library's public functions (issue 12), one table per module.

Each case is (call, error type, regex of the message). Every case asserts the error type, that the message
matches from its start, and that it is one line; the cases that take a model or a registry assert that it
is as it was. train, run_sweep and the command line are in test_bad_inputs.py, factorize in
test_factorize_bad_input.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from nets import assert_unchanged, check_one_line_error, seeded_model, snapshot

from nlinit import allocate as A
from nlinit import inits as I
from nlinit import layer_function as LF
from nlinit import matrix_view as MV
from nlinit import subspace as S
from nlinit.activations import Activation, parse_activation
from nlinit.bounds import certify, nlra_lower_bound
from nlinit.calibration import collect_stats
from nlinit.checkpoint import apply_low_rank_structure, low_rank_structure
from nlinit.compress import compress
from nlinit.experiments.sweep import run_dir, write_report
from nlinit.graph import trace_layers
from nlinit.layers import LowRankConv2d, LowRankLinear, frobenius_decay, low_rank_layers

NAN, INF = math.nan, math.inf
W86 = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))


_check = check_one_line_error


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


# ---------------------------------------------------------------------------------------------------------
# nlinit.subspace: the SVD entry points (a NaN W used to give an empty SVD, rank 99 a smaller one).

SUBSPACE_CASES = {
    "truncated_svd rank 0": (
        lambda: S.truncated_svd(W86, 0),
        ValueError,
        r"rank must be an int in \[1, 6\] for a 8x6 weight, got 0$",
    ),
    "truncated_svd rank too big": (lambda: S.truncated_svd(W86, 99), ValueError, r"rank must .* got 99$"),
    "truncated_svd rank bool": (lambda: S.truncated_svd(W86, True), ValueError, r"rank must .* got True$"),
    "truncated_svd rank float": (lambda: S.truncated_svd(W86, 2.0), ValueError, r"rank must .* got 2.0$"),
    "truncated_svd method": (
        lambda: S.truncated_svd(W86, 2, method="nope"),
        ValueError,
        r"unknown method 'nope'; available: auto, gram, randomized$",
    ),
    "truncated_svd NaN": (
        lambda: S.truncated_svd(torch.full((4, 4), NAN), 2),
        ValueError,
        r"W has 16 non-finite \(NaN or Inf\) entries",
    ),
    "truncated_svd 1-D": (lambda: S.truncated_svd(torch.ones(4), 2), ValueError, r"W must be a 2-D"),
    "truncated_svd int": (
        lambda: S.truncated_svd(torch.ones(4, 4, dtype=torch.int32), 2),
        TypeError,
        r"W must be a floating-point tensor, got dtype torch.int32$",
    ),
    "truncated_svd list": (
        lambda: S.truncated_svd([[1.0]], 1),
        TypeError,
        r"W must be a torch.Tensor, got list$",
    ),
    "top_svd rank 0": (lambda: S.top_svd(W86, 0), ValueError, r"rank must be an int in \[1, 6\]"),
    "top_svd Inf": (lambda: S.top_svd(torch.full((4, 4), INF), 2), ValueError, r"W has 16 non-finite"),
    "top_svd wrong svd": (
        lambda: S.top_svd(W86, 2, S.truncated_svd(W86, 3)),
        ValueError,
        r"svd has shapes P \(8, 3\)",
    ),
    "randomized_svd rank 0": (
        lambda: S.randomized_svd(W86, 0),
        ValueError,
        r"rank must be an int in \[1, 6\]",
    ),
    "randomized_svd NaN": (
        lambda: S.randomized_svd(torch.full((4, 4), NAN), 2),
        ValueError,
        r"W has 16 non-fin",
    ),
    "randomized_svd oversample": (
        lambda: S.randomized_svd(W86, 2, oversample=-1),
        ValueError,
        r"oversample must be an int >= 0, got -1$",
    ),
    "randomized_svd max_iter": (
        lambda: S.randomized_svd(W86, 2, max_iter=1.5),
        ValueError,
        r"max_iter must be an int >= 0, got 1.5$",
    ),
    "randomized_svd tol NaN": (
        lambda: S.randomized_svd(W86, 2, tol=NAN),
        ValueError,
        r"tol must be a finite number > 0, got nan$",
    ),
    "randomized_svd max_stable_rank": (
        lambda: S.randomized_svd(W86, 2, max_stable_rank=0),
        ValueError,
        r"max_stable_rank must be a finite number > 0, got 0$",
    ),
}


@pytest.mark.parametrize("case", SUBSPACE_CASES.values(), ids=SUBSPACE_CASES.keys())
def test_subspace_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.layer_function.whitener (a (3, 3) cov for d_in = 4 used to be whitened without a word).

WHITENER_CASES = {
    "d_in 0": (lambda: LF.whitener(None, 0), ValueError, r"d_in must be an int >= 1, got 0$"),
    "d_in float": (lambda: LF.whitener(torch.eye(3), 3.0), ValueError, r"d_in must be an int >= 1, got 3.0$"),
    "cov shape": (
        lambda: LF.whitener(torch.eye(3), 4),
        ValueError,
        r"cov must be a floating-point \(4, 4\) tensor, got shape \(3, 3\), dtype torch.float32$",
    ),
    "cov 1-D": (lambda: LF.whitener(torch.ones(3), 3), ValueError, r"cov must be .* got shape \(3,\)"),
    "cov int": (
        lambda: LF.whitener(torch.eye(3, dtype=torch.long), 3),
        ValueError,
        r"cov must be .* dtype torch.int64$",
    ),
    "cov list": (lambda: LF.whitener([[1.0]], 1), ValueError, r"cov must be .* got list$"),
    "cov NaN": (lambda: LF.whitener(torch.full((3, 3), NAN), 3), ValueError, r"cov has 9 non-finite"),
    "floor negative": (
        lambda: LF.whitener(torch.eye(3), 3, floor=-1.0),
        ValueError,
        r"floor must be a number in",
    ),
    "floor 0": (
        lambda: LF.whitener(torch.eye(3), 3, floor=0),
        ValueError,
        r"floor must be a number in \(0, 1\]",
    ),
    "floor NaN": (lambda: LF.whitener(torch.eye(3), 3, floor=NAN), ValueError, r"floor must .* got nan$"),
    "floor 2": (lambda: LF.whitener(None, 3, floor=2.0), ValueError, r"floor must .* got 2.0$"),
}


@pytest.mark.parametrize("case", WHITENER_CASES.values(), ids=WHITENER_CASES.keys())
def test_whitener_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.inits: the registry (a bad register_init used to enter the registry and break list_inits),
# init_factors' generator, sample_weight.


def _fn(W, rank, *, activation, generator):
    return W[:, :rank], torch.eye(W.shape[1])[:, :rank]


INIT_CASES = {
    "register_init empty name": (
        lambda: I.register_init("", _fn),
        ValueError,
        r"init name must be a non-empty string without whitespace, got ''$",
    ),
    "register_init int name": (lambda: I.register_init(5, _fn), ValueError, r"init name must .* got 5$"),
    "register_init spaces": (
        lambda: I.register_init("my init", _fn),
        ValueError,
        r"init name must .* 'my init'$",
    ),
    "register_init duplicate": (
        lambda: I.register_init("spectral", _fn),
        ValueError,
        r"init 'spectral' is already registered$",
    ),
    "register_init auto": (
        lambda: I.register_init("auto", _fn),
        ValueError,
        r"init 'auto' is already registered$",
    ),
    "register_init not callable": (
        lambda: I.register_init("zz-test-init", 5),
        TypeError,
        r"fn of init 'zz-test-init' must be callable, got int$",
    ),
    "get_init unknown": (
        lambda: I.get_init("nope"),
        ValueError,
        r"unknown init 'nope'; available: asvd, baseline",
    ),
    "get_init int": (lambda: I.get_init(5), ValueError, r"unknown init 5; available: asvd"),
    "init_options unknown": (
        lambda: I.init_options("nope"),
        ValueError,
        r"unknown init 'nope'; available: asvd",
    ),
    "check_init_options unknown option": (
        lambda: I.check_init_options("spectral", {"x": 1}),
        ValueError,
        r"unknown option 'x' for init 'spectral'; available: none$",
    ),
    "init_factors rank 0": (lambda: I.init_factors(W86, 0), ValueError, r"rank must be an int in \[1, 6\]"),
    "init_factors rank bool": (lambda: I.init_factors(W86, True), ValueError, r"rank must .* got True$"),
    "init_factors unknown init": (
        lambda: I.init_factors(W86, 2, init="nope"),
        ValueError,
        r"unknown init 'nope'",
    ),
    "init_factors unknown activation": (
        lambda: I.init_factors(W86, 2, activation="nope"),
        ValueError,
        r"unknown activation 'nope'; available: gelu",
    ),
    "init_factors NaN": (
        lambda: I.init_factors(torch.full((4, 4), NAN), 2),
        ValueError,
        r"W has 16 non-finite",
    ),
    "init_factors int W": (
        lambda: I.init_factors(torch.ones(4, 4, dtype=torch.long), 2),
        TypeError,
        r"W must be a floating-point tensor",
    ),
    "init_factors option": (
        lambda: I.init_factors(W86, 2, init="spectral", nope=1),
        ValueError,
        r"unknown option 'nope' for init 'spectral'",
    ),
    "init_factors generator": (
        lambda: I.init_factors(W86, 2, init="baseline", generator=5),
        TypeError,
        r"generator must be a torch.Generator or None, got int$",
    ),
    "sample_weight distribution": (
        lambda: I.sample_weight((4, 4), "nope"),
        ValueError,
        r"unknown distribution 'nope'; available: kaiming-normal, torch-default, trunc-normal$",
    ),
    "sample_weight negative shape": (
        lambda: I.sample_weight((4, -4)),
        ValueError,
        r"shape must be a tuple of at least 2 ints >= 1, got \(4, -4\)$",
    ),
    "sample_weight 1-D shape": (lambda: I.sample_weight((4,)), ValueError, r"shape must be .* got \(4,\)$"),
    "sample_weight fan_in 0": (
        lambda: I.sample_weight((4, 4), fan_in=0),
        ValueError,
        r"fan_in must be an int >= 1, got 0$",
    ),
    "sample_weight fan_in NaN": (
        lambda: I.sample_weight((4, 4), fan_in=NAN),
        ValueError,
        r"fan_in must .* nan$",
    ),
    "full_rank_weight source": (
        lambda: I.full_rank_weight(torch.nn.Linear(3, 4), "nope"),
        ValueError,
        r"unknown source 'nope'; available: existing, fresh$",
    ),
}


@pytest.mark.parametrize("case", INIT_CASES.values(), ids=INIT_CASES.keys())
def test_inits_bad_input_leaves_the_registry_as_it_was(case):
    before = dict(I.INITS)
    _check(*case)
    assert before == I.INITS
    assert I.list_inits() == sorted(before)


# ---------------------------------------------------------------------------------------------------------
# nlinit.matrix_view, nlinit.activations, the low-rank layers' constructors.

MODULE_CASES = {
    "kernel_to_matrix 3-D": (
        lambda: MV.kernel_to_matrix(torch.randn(3, 3, 3)),
        ValueError,
        r"K must be a \(c_out, c_in, kh, kw\) kernel or a 2-D matrix tensor, got shape \(3, 3, 3\)$",
    ),
    "kernel_to_matrix list": (lambda: MV.kernel_to_matrix([1, 2]), ValueError, r"K must be .* got list$"),
    "kernel_to_matrix layout": (
        lambda: MV.kernel_to_matrix(torch.randn(4, 3, 3, 3), layout="diag"),
        ValueError,
        r"unknown layout 'diag'; available: channel, spatial$",
    ),
    "matrix_to_kernel wrong size": (
        lambda: MV.matrix_to_kernel(torch.randn(4, 27), (4, 3, 3, 2)),
        ValueError,
        r"W must have shape \(4, 18\) for kernel shape \(4, 3, 3, 2\), got shape \(4, 27\)$",
    ),
    "matrix_to_kernel 3-D kernel shape": (
        lambda: MV.matrix_to_kernel(torch.randn(4, 27), (4, 3, 9)),
        ValueError,
        r"kernel_shape must be \(c_out, c_in, kh, kw\) or \(out, in\), ints >= 1, got \(4, 3, 9\)$",
    ),
    "matrix_shape negative": (
        lambda: MV.matrix_shape((4, -3, 3, 3)),
        ValueError,
        r"kernel_shape must .*-3, 3, 3\)$",
    ),
    "matrix_shape float": (
        lambda: MV.matrix_shape((4, 3.0, 3, 3)),
        ValueError,
        r"kernel_shape must .* 3.0, 3, 3\)$",
    ),
    "matrix_shape layout": (lambda: MV.matrix_shape((4, 3, 3, 3), "x"), ValueError, r"unknown layout 'x'"),
    "parse_activation unknown": (
        lambda: parse_activation("nope"),
        ValueError,
        r"unknown activation 'nope'; available: gelu, hardswish",
    ),
    "parse_activation int": (lambda: parse_activation(5), ValueError, r"unknown activation 5; available"),
    "Activation unknown parameter": (
        lambda: Activation("relu", slope=1.0),
        ValueError,
        r"activation 'relu' takes parameters none, got slope$",
    ),
    "Activation NaN parameter": (
        lambda: Activation("leaky_relu", negative_slope=NAN),
        ValueError,
        r"activation 'leaky_relu' parameter negative_slope must be a finite number, got nan$",
    ),
    "Activation str parameter": (
        lambda: Activation("leaky_relu", negative_slope="0.1"),
        ValueError,
        r"activation 'leaky_relu' parameter negative_slope must be a finite number, got '0.1'$",
    ),
    "LowRankLinear rank 0": (
        lambda: LowRankLinear(4, 3, 0),
        ValueError,
        r"rank must be an int in \[1, 3\] for a 3x4 weight, got 0$",
    ),
    "LowRankLinear rank bool": (lambda: LowRankLinear(4, 3, True), ValueError, r"rank must .* got True$"),
    "LowRankLinear in_features 0": (
        lambda: LowRankLinear(0, 3, 1),
        ValueError,
        r"in_features must be an int >= 1, got 0$",
    ),
    "LowRankLinear in_features float": (
        lambda: LowRankLinear(2.0, 3, 1),
        ValueError,
        r"in_features .* got 2.0$",
    ),
    "LowRankLinear out_features str": (
        lambda: LowRankLinear(2, "3", 1),
        ValueError,
        r"out_features .* got '3'$",
    ),
    "LowRankLinear bias str": (
        lambda: LowRankLinear(4, 3, 1, bias="no"),
        TypeError,
        r"bias must be a bool, got 'no'$",
    ),
    "LowRankConv2d rank too big": (
        lambda: LowRankConv2d(3, 4, 3, 5),
        ValueError,
        r"rank must be an int in \[1, 4\]",
    ),
    "LowRankConv2d layout": (
        lambda: LowRankConv2d(3, 4, 3, 1, layout="x"),
        ValueError,
        r"unknown layout 'x'",
    ),
    "LowRankConv2d in_channels 0": (
        lambda: LowRankConv2d(0, 4, 3, 1),
        ValueError,
        r"in_channels must be an int >= 1, got 0$",
    ),
    "LowRankConv2d kernel_size 0": (
        lambda: LowRankConv2d(3, 4, 0, 1),
        ValueError,
        r"kernel_size must be an int >= 1 or a pair of them, got 0$",
    ),
    "LowRankConv2d stride 0": (
        lambda: LowRankConv2d(3, 4, 3, 1, stride=(1, 0)),
        ValueError,
        r"stride must be an int >= 1 or a pair of them, got \(1, 0\)$",
    ),
    "LowRankConv2d padding -1": (
        lambda: LowRankConv2d(3, 4, 3, 1, padding=-1),
        ValueError,
        r"padding must be an int >= 0 or a pair of them, got -1$",
    ),
    "LowRankConv2d dilation float": (
        lambda: LowRankConv2d(3, 4, 3, 1, dilation=1.5),
        ValueError,
        r"dilation must be an int >= 1 or a pair of them, got 1.5$",
    ),
    "LowRankConv2d padding_mode": (
        lambda: LowRankConv2d(3, 4, 3, 1, padding_mode="x"),
        ValueError,
        r"unknown padding_mode 'x'; available: circular, reflect, replicate, zeros$",
    ),
    "LowRankConv2d same with stride": (
        lambda: LowRankConv2d(3, 4, 3, 1, stride=2, padding="same"),
        ValueError,
        r"padding='same' needs stride 1, got stride=\(2, 2\)$",
    ),
}


@pytest.mark.parametrize("case", MODULE_CASES.values(), ids=MODULE_CASES.keys())
def test_matrix_view_activation_and_layer_constructors_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# Functions that take a model: trace_layers, low_rank_layers, frobenius_decay, low_rank_structure,
# apply_low_rank_structure. The model is as it was after each.

MODEL_CASES = {
    "trace_layers str": (
        lambda m: trace_layers("model"),
        TypeError,
        r"model must be a torch.nn.Module, got str$",
    ),
    "low_rank_layers str": (
        lambda m: low_rank_layers("m"),
        TypeError,
        r"model must be a torch.nn.Module, got str$",
    ),
    "frobenius_decay dict": (
        lambda m: frobenius_decay(m.state_dict()),
        TypeError,
        r"model must be a torch.nn.Module, got OrderedDict$",
    ),
    "low_rank_structure None": (
        lambda m: low_rank_structure(None),
        TypeError,
        r"model must be .* got NoneType$",
    ),
    "apply_low_rank_structure list": (
        lambda m: apply_low_rank_structure(m, []),
        TypeError,
        r"structure must be a dict \{module name: entry\}, got list$",
    ),
    "apply_low_rank_structure not a model": (
        lambda m: apply_low_rank_structure("m", {}),
        TypeError,
        r"model must be a torch.nn.Module, got str$",
    ),
    "apply_low_rank_structure unknown layer": (
        lambda m: apply_low_rank_structure(m, {"9": {"kind": "linear", "rank": 1, "layout": "channel"}}),
        ValueError,
        r"low-rank layer '9' is not a module of this model$",
    ),
    "apply_low_rank_structure wrong kind": (
        lambda m: apply_low_rank_structure(m, {"0": {"kind": "conv", "rank": 1, "layout": "channel"}}),
        ValueError,
        r"low-rank layer '0' is a conv layer but the model has Linear$",
    ),
    "apply_low_rank_structure no rank": (
        lambda m: apply_low_rank_structure(m, {"0": {"kind": "linear", "layout": "channel"}}),
        ValueError,
        r"structure\['0'\] has no 'rank'$",
    ),
    "apply_low_rank_structure rank too big (second entry)": (
        lambda m: apply_low_rank_structure(
            m,
            {
                "0": {"kind": "linear", "rank": 2, "layout": "channel"},
                "2": {"kind": "linear", "rank": 99, "layout": "channel"},
            },
        ),
        ValueError,
        r"rank must be an int in \[1, 10\] for a 10x48 weight, got 99$",
    ),
}


def _small() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(20, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))


@pytest.mark.parametrize("case", MODEL_CASES.values(), ids=MODEL_CASES.keys())
def test_model_functions_bad_input_leave_the_model_as_it_was(case):
    model = seeded_model(_small)
    snap = snapshot(model)
    call, error, message = case
    _check(lambda: call(model), error, message)
    assert_unchanged(model, snap)


# ---------------------------------------------------------------------------------------------------------
# collect_stats and compress (the model is as it was after each), certify / nlra_lower_bound, write_report
# (nothing written).

X6 = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
Y2 = W86[:, :2] @ torch.eye(2, 6)  # rank 2, W's shape

CALIBRATION_CASES = {
    "collect_stats model str": (
        lambda m: collect_stats("m", ["0"], X6),
        TypeError,
        r"model must be an nn.Module, got str$",
    ),
    "collect_stats unknown layer": (
        lambda m: collect_stats(m, ["9"], X6),
        ValueError,
        r"layer '9' is not a module of the model$",
    ),
    "collect_stats layers str": (
        lambda m: collect_stats(m, "0", X6),
        TypeError,
        r"layers must be a list of module names or a \{name: module\} mapping, got str '0'",
    ),
    "collect_stats batches 0": (
        lambda m: collect_stats(m, ["0"], X6, batches=0),
        ValueError,
        r"batches must be",
    ),
    "collect_stats batch_size bool": (
        lambda m: collect_stats(m, ["0"], X6, batch_size=True),
        ValueError,
        r"batch_size must be an int >= 1, got True$",
    ),
    "collect_stats samples -1": (
        lambda m: collect_stats(m, ["0"], X6, samples=-1),
        ValueError,
        r"samples must",
    ),
    "collect_stats precision": (
        lambda m: collect_stats(m, ["0"], X6, precision="half"),
        ValueError,
        r"unknown precision 'half'; available: float32, float64$",
    ),
    "collect_stats positions NaN": (
        lambda m: collect_stats(m, ["0"], X6, positions=NAN),
        ValueError,
        r"positions must be a number in \(0, 1\], got nan$",
    ),
    "collect_stats NaN data": (
        lambda m: collect_stats(m, ["0"], torch.full((4, 6), NAN)),
        ValueError,
        r"calibration batch 0 gives layer '0' an input with 24 non-finite",
    ),
    "collect_stats wrong width": (
        lambda m: collect_stats(m, ["0"], torch.randn(4, 5)),
        ValueError,
        r"calibration batch 0 failed in the model's forward: RuntimeError: mat1 and mat2",
    ),
    "collect_stats no rows": (
        lambda m: collect_stats(m, ["0"], torch.randn(0, 6)),
        ValueError,
        r"layer '0' never ran during calibration",
    ),
    "compress model str": (
        lambda m: compress("m", X6, rank_scale=0.5),
        TypeError,
        r"model must be an nn.Module",
    ),
    "compress rank_scale 0": (
        lambda m: compress(m, X6, rank_scale=0),
        ValueError,
        r"rank_scale must be a number in \(0, 1\], got 0$",
    ),
    "compress budget NaN": (
        lambda m: compress(m, X6, budget=NAN),
        ValueError,
        r"budget must be a fraction in \(0, 1\) of the layers' parameters kept, got nan$",
    ),
    "compress method": (
        lambda m: compress(m, X6, rank_scale=0.5, method="x"),
        ValueError,
        r"unknown method 'x'; available: asvd, lfai-data",
    ),
    "compress allocate": (
        lambda m: compress(m, X6, rank_scale=0.5, allocate="x"),
        ValueError,
        r"unknown allocate 'x'; available: energy, sensitivity, stable-rank, uniform$",
    ),
    "compress seed float": (
        lambda m: compress(m, X6, rank_scale=0.5, seed=1.5),
        ValueError,
        r"seed must be an int >= 0, got 1.5$",
    ),
    "compress include str": (
        lambda m: compress(m, X6, rank_scale=0.5, include="0"),
        TypeError,
        r"include must be a list of module-name patterns, got str '0'",
    ),
    "compress NaN data": (
        lambda m: compress(
            m, torch.full((4, 6), NAN), rank_scale=0.5, factorize_stem=True, factorize_classifier=True
        ),
        ValueError,
        r"calibration batch 0 gives layer '0' an input with 24 non-finite",
    ),
}


def _tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))


@pytest.mark.parametrize("case", CALIBRATION_CASES.values(), ids=CALIBRATION_CASES.keys())
def test_collect_stats_and_compress_bad_input_leave_the_model_as_it_was(case):
    model = seeded_model(_tiny)
    snap = snapshot(model)
    call, error, message = case
    _check(lambda: call(model), error, message)
    assert_unchanged(model, snap)


BOUNDS_CASES = {
    "certify rank 0": (lambda: certify(W86, Y2, 0), ValueError, r"rank must be an int in \[1, 6\] for a 8x6"),
    "certify rank above Y's": (lambda: certify(W86, W86, 2), ValueError, r"Y has numerical rank 6 > rank=2"),
    "certify Y shape": (
        lambda: certify(W86, torch.randn(6, 6), 2),
        ValueError,
        r"Y must have W's shape \(8, 6\), got \(6, 6\)$",
    ),
    "certify Y NaN": (lambda: certify(W86, torch.full((8, 6), NAN), 2), ValueError, r"Y has 48 non-finite"),
    "certify W Inf": (lambda: certify(torch.full((8, 6), INF), Y2, 2), ValueError, r"W has 48 non-finite"),
    "certify activation": (lambda: certify(W86, Y2, 2, "nope"), ValueError, r"unknown activation 'nope'"),
    "certify sigmoid": (
        lambda: certify(W86, Y2, 2, "sigmoid"),
        NotImplementedError,
        r"certified lower bounds need a leaky-ReLU-family activation; got 'sigmoid'",
    ),
    "certify max_iter 0": (
        lambda: certify(W86, Y2, 2, max_iter=0),
        ValueError,
        r"max_iter must be an int >= 1",
    ),
    "nlra_lower_bound rank bool": (
        lambda: nlra_lower_bound(W86, True),
        ValueError,
        r"rank must .* got True$",
    ),
    "nlra_lower_bound max_iter -1": (
        lambda: nlra_lower_bound(W86, 2, max_iter=-1),
        ValueError,
        r"max_iter must be an int >= 1, got -1$",
    ),
    "nlra_lower_bound W int": (
        lambda: nlra_lower_bound(torch.ones(4, 4, dtype=torch.long), 2),
        TypeError,
        r"W must be a floating-point tensor",
    ),
}


@pytest.mark.parametrize("case", BOUNDS_CASES.values(), ids=BOUNDS_CASES.keys())
def test_bounds_bad_input(case):
    _check(*case)


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("nope", r"no finished runs under '.*nope' \(expected runs/\*/summary.json\)$"),
        (".", r"no finished runs under '.*' \(expected runs/\*/summary.json\)$"),
    ],
)
def test_write_report_bad_input_writes_nothing(tmp_path, monkeypatch, root, message):
    monkeypatch.chdir(tmp_path)
    _check(lambda: write_report(tmp_path / root), ValueError, message)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# Probes that were still wrong after the first audit (each a regression case)

LATE_CASES = {
    "ConvGeometry layout": (
        lambda: MV.ConvGeometry((4, 3, 3, 3), "x"),
        ValueError,
        r"unknown layout 'x'",
    ),
    "ConvGeometry stride 0": (
        lambda: MV.ConvGeometry((4, 3, 3, 3), stride=(0, 1)),
        ValueError,
        r"stride must be a tuple of 2 ints >= 1, got \(0, 1\)$",
    ),
    "ConvGeometry kernel 3-D": (
        lambda: MV.ConvGeometry((4, 3, 3)),
        ValueError,
        r"kernel_shape must be a tuple of 4 ints >= 1",
    ),
    "ConvGeometry padding_mode": (
        lambda: MV.ConvGeometry((4, 3, 3, 3), padding_mode="x"),
        ValueError,
        r"unknown padding_mode 'x'",
    ),
    "run_dir seed -1": (
        lambda: run_dir("r", "relu-svd", 0.1, -1),
        ValueError,
        r"seed must be an int >= 0, got -1",
    ),
    "full_rank_weight Conv1d": (
        lambda: I.full_rank_weight(torch.nn.Conv1d(3, 4, 3)),
        TypeError,
        r"layer must be an nn.Linear or nn.Conv2d, got Conv1d$",
    ),
    "canonical_signs 1-D": (
        lambda: S.canonical_signs(torch.ones(3), torch.ones(3)),
        ValueError,
        r"U and V must be \(m, r\) and \(n, r\) matrices",
    ),
    "auto_init layout": (
        lambda: I.auto_init(parse_activation("relu"), "x"),
        ValueError,
        r"unknown layout 'x'",
    ),
    "whitener asymmetric": (
        lambda: LF.whitener(torch.tensor([[1.0, 0.5], [0.0, 1.0]]), 2),
        ValueError,
        r"cov must be symmetric",
    ),
}


@pytest.mark.parametrize("case", LATE_CASES.values(), ids=LATE_CASES.keys())
def test_late_probes_bad_input(case):
    _check(*case)
