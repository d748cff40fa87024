"""Bad input to the library's public functions (issue 12), continued: one table per module.

Same conventions as test_bad_inputs_api.py: each case is (call, error type, regex of the message); every case
asserts the error type, that the message matches from its start, and that it is one line.
"""

from __future__ import annotations

import math
import os
import re

import pytest
import torch
from nets import check_one_line_error

from nlinit import data as D
from nlinit import gaussian as G
from nlinit import layer_function as LF
from nlinit import models as M
from nlinit import objective as O
from nlinit import sequential as SQ
from nlinit import subspace as S
from nlinit import theory as T
from nlinit._checks import parse_shard
from nlinit.activations import Activation, parse_activation
from nlinit.experiments import compress_cnn as CC
from nlinit.experiments import compress_minilm as CM
from nlinit.experiments import compress_table as CT
from nlinit.experiments import evidence as E
from nlinit.experiments import sweep as SW

NAN, INF = math.nan, math.inf
W86 = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
W64 = W86.double()
Q62 = torch.linalg.qr(torch.randn(6, 2, generator=torch.Generator().manual_seed(1))).Q
Q62d = Q62.double()
RELU = parse_activation("relu")
NANS62 = torch.full((6, 2), NAN)


_check = check_one_line_error


# ---------------------------------------------------------------------------------------------------------
# nlinit.objective: standardize_rows (a NaN W gave zero rows, a wrong cov a raw matmul error),
# normalized_loss (a wrong cov: a raw matmul error), unit_moments.

OBJECTIVE_CASES = {
    "standardize_rows NaN": (
        lambda: O.standardize_rows(torch.full((3, 3), NAN)),
        ValueError,
        r"W has 9 non-finite \(NaN or Inf\) entries",
    ),
    "standardize_rows Inf": (
        lambda: O.standardize_rows(torch.full((3, 3), INF)),
        ValueError,
        r"W has 9 non-finite",
    ),
    "standardize_rows 1-D": (
        lambda: O.standardize_rows(torch.ones(3)),
        ValueError,
        r"W must be a 2-D \(d_out, d_in\) matrix, got shape \(3,\)$",
    ),
    "standardize_rows int": (
        lambda: O.standardize_rows(torch.ones(3, 3, dtype=torch.long)),
        TypeError,
        r"W must be a floating-point tensor, got dtype torch.int64$",
    ),
    "standardize_rows cov shape": (
        lambda: O.standardize_rows(W86, torch.eye(3)),
        ValueError,
        r"cov must have shape \(6, 6\) \(d_in x d_in, d_in = 6\), got \(3, 3\)$",
    ),
    "standardize_rows cov not PSD": (
        lambda: O.standardize_rows(W86, -torch.eye(6)),
        ValueError,
        r"cov must be positive semi-definite, got smallest eigenvalue -1",
    ),
    "standardize_rows cov NaN": (
        lambda: O.standardize_rows(W86, torch.full((6, 6), NAN)),
        ValueError,
        r"cov has 36 non-finite",
    ),
    "unit_moments Y shape": (
        lambda: O.unit_moments(W86, torch.ones(6, 8)),
        ValueError,
        r"Y must have W's shape \(8, 6\), got \(6, 8\)$",
    ),
    "unit_moments W NaN": (
        lambda: O.unit_moments(torch.full((8, 6), NAN), W86),
        ValueError,
        r"W has 48 non-finite",
    ),
    "unit_moments W 1-D": (
        lambda: O.unit_moments(torch.ones(6), torch.ones(6)),
        ValueError,
        r"W must be a 2-D",
    ),
    "unit_moments W int": (
        lambda: O.unit_moments(torch.ones(8, 6, dtype=torch.long), W86),
        TypeError,
        r"W must be a floating-point tensor",
    ),
    "unit_moments cov shape": (
        lambda: O.unit_moments(W86, W86, cov=torch.eye(5)),
        ValueError,
        r"cov must have shape \(6, 6\)",
    ),
    "unit_moments mean shape": (
        lambda: O.unit_moments(W86, W86, mean=torch.zeros(8)),
        ValueError,
        r"mean must have shape \(6,\) \(one per input, d_in = 6\), got \(8,\)$",
    ),
    "unit_moments scale NaN": (
        lambda: O.unit_moments(W86, W86, scale=NAN),
        ValueError,
        r"scale must be finite, got nan$",
    ),
    "normalized_loss Y shape": (
        lambda: O.normalized_loss(W86, torch.ones(6, 8)),
        ValueError,
        r"Y must have W's shape \(8, 6\), got \(6, 8\)$",
    ),
    "normalized_loss W Inf": (
        lambda: O.normalized_loss(torch.full((8, 6), INF), W86),
        ValueError,
        r"W has 48 non-finite",
    ),
    "normalized_loss Y NaN": (
        lambda: O.normalized_loss(W86, torch.full((8, 6), NAN)),
        ValueError,
        r"Y has 48 non-finite",
    ),
    "normalized_loss W 1-D": (
        lambda: O.normalized_loss(torch.ones(6), torch.ones(6)),
        ValueError,
        r"W must be a 2-D",
    ),
    "normalized_loss W int": (
        lambda: O.normalized_loss(torch.ones(8, 6, dtype=torch.long), W86),
        TypeError,
        r"W must be a floating-point tensor",
    ),
    "normalized_loss cov shape": (
        lambda: O.normalized_loss(W86, W86, cov=torch.eye(3)),
        ValueError,
        r"cov must have shape \(6, 6\) \(d_in x d_in, d_in = 6\), got \(3, 3\)$",
    ),
    "normalized_loss cov asymmetric": (
        lambda: O.normalized_loss(W86, W86, cov=torch.eye(6) + torch.triu(torch.ones(6, 6), 1)),
        ValueError,
        r"cov must be symmetric",
    ),
    "normalized_loss gamma shape": (
        lambda: O.normalized_loss(W86, W86, gamma=torch.ones(3)),
        ValueError,
        r"scale must have shape \(8,\)",
    ),
    "normalized_loss beta str": (
        lambda: O.normalized_loss(W86, W86, beta="0"),
        TypeError,
        r"offset must be a number or a torch.Tensor of shape \(8,\), got str$",
    ),
    "normalized_loss activation": (
        lambda: O.normalized_loss(W86, W86, "nope"),
        ValueError,
        r"unknown activation 'nope'; available:",
    ),
    "normalized_loss relative str": (
        lambda: O.normalized_loss(W86, W86, relative="yes"),
        TypeError,
        r"relative must be a bool, got 'yes'$",
    ),
    "approx_unit_loss tuple": (
        lambda: O.approx_unit_loss((1, 2, 3, 4, 5), RELU),
        TypeError,
        r"moments must be a UnitMoments of tensors, got tuple$",
    ),
    "approx_unit_loss nodes 0": (
        lambda: O.approx_unit_loss(O.unit_moments(W86, W86), RELU, 0),
        ValueError,
        r"nodes must be an int in \[1, 512\], got 0$",
    ),
    "approx_unit_loss activation": (
        lambda: O.approx_unit_loss(O.unit_moments(W86, W86), "nope"),
        ValueError,
        r"unknown activation 'nope'",
    ),
    "mc_loss activation str": (
        lambda: O.mc_loss(W86, W86, "nope"),
        ValueError,
        r"unknown activation 'nope'",
    ),
    "mc_loss generator": (
        lambda: O.mc_loss(W86, W86, RELU, generator=5),
        TypeError,
        r"generator must be a torch.Generator or None, got int$",
    ),
    "mc_loss num_samples": (
        lambda: O.mc_loss(W86, W86, RELU, num_samples=0),
        ValueError,
        r"num_samples must be an int >= 1, got 0$",
    ),
    "sample_loss activation": (
        lambda: O.sample_loss(W86, W86, "nope", torch.ones(4, 6)),
        ValueError,
        r"unknown activation 'nope'",
    ),
    "sample_loss samples width": (
        lambda: O.sample_loss(W86, W86, RELU, torch.ones(4, 5)),
        ValueError,
        r"samples must have shape \(4, 6\) \(N x d_in, d_in = 6\), got \(4, 5\)$",
    ),
    "unit_loss negative variance": (
        lambda: O.unit_loss(
            O.UnitMoments(*(torch.ones(2),) * 2, -torch.ones(2), torch.ones(2), torch.zeros(2))
        ),
        ValueError,
        r"moments.var_u must be >= 0, got min -1$",
    ),
    "resolve_method activation": (
        lambda: O.resolve_method("nope", "auto"),
        ValueError,
        r"unknown activation 'nope'",
    ),
    "resolve_method method": (
        lambda: O.resolve_method(RELU, "nope"),
        ValueError,
        r"unknown method 'nope'; available: auto, exact, mc$",
    ),
    "exact_loss shapes": (
        lambda: O.exact_loss(W86, torch.ones(6, 8), RELU),
        ValueError,
        r"W and Y must be 2-D tensors of one shape, got \(8, 6\) and \(6, 8\)$",
    ),
    "exact_loss activation": (
        lambda: O.exact_loss(W86, W86, "nope"),
        ValueError,
        r"unknown activation 'nope'",
    ),
    "nlra_loss relative str": (
        lambda: O.nlra_loss(W86, W86, relative="yes"),
        TypeError,
        r"relative must be a bool, got 'yes'$",
    ),
    "nlra_loss generator": (
        lambda: O.nlra_loss(W86, W86, method="mc", generator=5),
        TypeError,
        r"generator must be a torch.Generator or None, got int$",
    ),
    "arccos_kernel list": (
        lambda: O.arccos_kernel([0.5]),
        TypeError,
        r"rho must be a floating-point torch.Tensor, got list$",
    ),
    "arccos_kernel int": (
        lambda: O.arccos_kernel(torch.tensor([0])),
        TypeError,
        r"rho must be a floating-point torch.Tensor, got dtype torch.int64$",
    ),
}


@pytest.mark.parametrize("case", OBJECTIVE_CASES.values(), ids=OBJECTIVE_CASES.keys())
def test_objective_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.subspace beyond the SVD: a NaN Q used to give NaN factors, a str alpha a raw TypeError, a wrong
# shape a raw matmul error, max_iter -1 / tol NaN ran anyway.

SUBSPACE_CASES = {
    "balance A NaN": (
        lambda: S.balance(torch.full((8, 2), NAN), Q62),
        ValueError,
        r"A has 16 non-finite",
    ),
    "balance Q NaN": (lambda: S.balance(W86[:, :2], NANS62), ValueError, r"Q has 12 non-finite"),
    "balance r differs": (
        lambda: S.balance(torch.ones(8, 3), Q62),
        ValueError,
        r"A \(d_out, r\) and Q \(d_in, r\) must have the same r, got shapes \(8, 3\), \(6, 2\)$",
    ),
    "balance Q not orthonormal": (
        lambda: S.balance(W86[:, :2], 2 * Q62),
        ValueError,
        r"Q must have orthonormal columns, got max \|Q\^T Q - I\| = 3",
    ),
    "balance A list": (lambda: S.balance([[1.0]], Q62), TypeError, r"A must be a torch.Tensor, got list$"),
    "factors_on_subspace Q NaN": (
        lambda: S.factors_on_subspace(W86, NANS62, 0.0),
        ValueError,
        r"Q has 12 non-finite \(NaN or Inf\) entries",
    ),
    "factors_on_subspace Q rows": (
        lambda: S.factors_on_subspace(W86, torch.eye(5)[:, :2], 0.0),
        ValueError,
        r"Q must be a \(d_in, r\) matrix with d_in = 6 and 1 <= r <= 6, got shape \(5, 2\)$",
    ),
    "factors_on_subspace Q 1-D": (
        lambda: S.factors_on_subspace(W86, torch.ones(6), 0.0),
        ValueError,
        r"Q must be a \(d_in, r\) matrix .* got shape \(6,\)$",
    ),
    "factors_on_subspace alpha str": (
        lambda: S.factors_on_subspace(W86, Q62, "relu"),
        ValueError,
        r"alpha must be a finite number \(the leaky slope\) or an Activation, got 'relu'$",
    ),
    "factors_on_subspace alpha NaN": (
        lambda: S.factors_on_subspace(W86, Q62, NAN),
        ValueError,
        r"alpha must be .* got nan$",
    ),
    "factors_on_subspace W NaN": (
        lambda: S.factors_on_subspace(torch.full((8, 6), NAN), Q62, 0.0),
        ValueError,
        r"W has 48 non-finite",
    ),
    "projection_factors Q NaN": (
        lambda: S.projection_factors(W86, NANS62),
        ValueError,
        r"Q has 12 non-finite \(NaN or Inf\) entries",
    ),
    "projection_factors Q not orthonormal": (
        lambda: S.projection_factors(W86, torch.ones(6, 2)),
        ValueError,
        r"Q must have orthonormal columns",
    ),
    "projection_factors Q int": (
        lambda: S.projection_factors(W86, torch.ones(6, 2, dtype=torch.long)),
        TypeError,
        r"Q must be a floating-point tensor, got dtype torch.int64$",
    ),
    "projection_factors W int": (
        lambda: S.projection_factors(torch.ones(8, 6, dtype=torch.long), Q62),
        TypeError,
        r"W must be a floating-point tensor",
    ),
    "subspace_objective alpha str": (
        lambda: S.subspace_objective(W86, Q62, "relu"),
        ValueError,
        r"alpha must be a finite number, got 'relu'$",
    ),
    "subspace_objective alpha Inf": (
        lambda: S.subspace_objective(W86, Q62, INF),
        ValueError,
        r"alpha must be a finite number, got inf$",
    ),
    "subspace_objective Q NaN": (
        lambda: S.subspace_objective(W86, NANS62, 0.0),
        ValueError,
        r"Q has 12 non-finite",
    ),
    "subspace_objective Q batch rows": (
        lambda: S.subspace_objective(W86, torch.zeros(3, 5, 2), 0.0),
        ValueError,
        r"Q must be a \(d_in, r\) matrix or a \(B, d_in, r\) batch with d_in = 6 .* got shape \(3, 5, 2\)$",
    ),
    "subspace_objective dtypes": (
        lambda: S.subspace_objective(W86, Q62d, 0.0),
        ValueError,
        r"W and Q must have one dtype, got torch.float32 and torch.float64$",
    ),
    "normalized_subspace_loss Q NaN": (
        lambda: S.normalized_subspace_loss(W86, NANS62, RELU),
        ValueError,
        r"Q has 12 non-finite",
    ),
    "normalized_subspace_loss activation": (
        lambda: S.normalized_subspace_loss(W86, Q62, "nope"),
        ValueError,
        r"unknown activation 'nope'",
    ),
    "best_normalized_subspace rank": (
        lambda: S.best_normalized_subspace(W86, 99, RELU),
        ValueError,
        r"rank must be an int in \[1, 6\] for a 8x6 weight, got 99$",
    ),
    "best_normalized_subspace W NaN": (
        lambda: S.best_normalized_subspace(torch.full((8, 6), NAN), 2, RELU),
        ValueError,
        r"W has 48 non-finite",
    ),
    "best_normalized_subspace activation": (
        lambda: S.best_normalized_subspace(W86, 2, "nope"),
        ValueError,
        r"unknown activation 'nope'",
    ),
    "best_normalized_subspace svd not an SVD": (
        lambda: S.best_normalized_subspace(W86, 2, RELU, svd=(1, 2, 3)),
        TypeError,
        r"svd must be an SVD \(P, s, Q\) from truncated_svd or None, got tuple$",
    ),
    "ascend_normalized max_iter -1": (
        lambda: S.ascend_normalized(W64, Q62d, RELU, max_iter=-1),
        ValueError,
        r"max_iter must be an int >= 0, got -1$",
    ),
    "ascend_normalized max_iter float": (
        lambda: S.ascend_normalized(W64, Q62d, RELU, max_iter=2.5),
        ValueError,
        r"max_iter must be an int >= 0, got 2.5$",
    ),
    "ascend_normalized tol NaN": (
        lambda: S.ascend_normalized(W64, Q62d, RELU, tol=NAN),
        ValueError,
        r"tol must be a finite number >= 0, got nan$",
    ),
    "ascend_normalized tol -1": (
        lambda: S.ascend_normalized(W64, Q62d, RELU, tol=-1.0),
        ValueError,
        r"tol must be a finite number >= 0, got -1.0$",
    ),
    "ascend_normalized float32": (
        lambda: S.ascend_normalized(W86, Q62, RELU),
        ValueError,
        r"W and Q must be float64, got torch.float32 and torch.float32$",
    ),
    "ascend_normalized Q NaN": (
        lambda: S.ascend_normalized(W64, NANS62.double(), RELU),
        ValueError,
        r"Q has 12 non-finite",
    ),
    "descend_over_subspaces loss": (
        lambda: S.descend_over_subspaces(5, Q62d, max_iter=1, tol=0.0),
        TypeError,
        r"loss must be callable \(a function of the basis\), got int$",
    ),
    "descend_over_subspaces max_iter": (
        lambda: S.descend_over_subspaces(lambda Q: Q.sum(), Q62d, max_iter=-1, tol=0.0),
        ValueError,
        r"max_iter must be an int >= 0, got -1$",
    ),
    "fit_rows_and_offsets d shape": (
        lambda: S.fit_rows_and_offsets(W64, torch.ones(3), Q62d, RELU),
        ValueError,
        r"d must be a floating-point tensor of shape \(8,\), got shape \(3,\), dtype torch.float32$",
    ),
    "fit_rows_and_offsets d NaN": (
        lambda: S.fit_rows_and_offsets(W64, torch.full((8,), NAN), Q62d, RELU),
        ValueError,
        r"d has 8 non-finite",
    ),
    "fit_rows_and_offsets max_iter": (
        lambda: S.fit_rows_and_offsets(W64, torch.zeros(8), Q62d, RELU, max_iter=-1),
        ValueError,
        r"max_iter must be an int >= 0, got -1$",
    ),
    "fit_rows_and_offsets Q NaN": (
        lambda: S.fit_rows_and_offsets(W64, torch.zeros(8), NANS62, RELU),
        ValueError,
        r"Q has 12 non-finite",
    ),
    "fit_rows_and_offsets activation": (
        lambda: S.fit_rows_and_offsets(W64, torch.zeros(8), Q62d, "elu"),
        ValueError,
        r"unknown activation 'elu'; available: gelu",
    ),
    "best_row_norms negative": (
        lambda: S.best_row_norms(-torch.ones(3), torch.ones(3), torch.ones(3), RELU),
        ValueError,
        r"a must be >= 0 \(a norm\), got min -1$",
    ),
    "best_row_norms shape": (
        lambda: S.best_row_norms(torch.ones(3), torch.ones(2), torch.ones(3), RELU),
        ValueError,
        r"proj must be a floating-point tensor of shape \(3,\), got shape \(2,\)",
    ),
    "leaky_norm_factor alpha str": (
        lambda: S.leaky_norm_factor(torch.zeros(3), "0.1"),
        ValueError,
        r"alpha must be a finite number, got '0.1'$",
    ),
    "leaky_norm_factor rho list": (
        lambda: S.leaky_norm_factor([0.5], 0.0),
        TypeError,
        r"rho must be a floating-point torch.Tensor, got list$",
    ),
}


@pytest.mark.parametrize("case", SUBSPACE_CASES.values(), ids=SUBSPACE_CASES.keys())
def test_subspace_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.layer_function: svd_rows_and_offsets, whitened_problem, to_whitened, from_whitened (a wrong fn
# or white used to give a raw AttributeError or matmul error).

FN8 = LF.LayerFunction(bias=torch.zeros(8, dtype=torch.float64))
WHITE = LF.whitener(None, 6)

LAYER_FUNCTION_CASES = {
    "svd_rows_and_offsets rank 0": (
        lambda: LF.svd_rows_and_offsets(W86, 0, RELU, FN8),
        ValueError,
        r"rank must be an int in \[1, 6\] for a 8x6 weight, got 0$",
    ),
    "svd_rows_and_offsets W NaN": (
        lambda: LF.svd_rows_and_offsets(torch.full((8, 6), NAN), 2, RELU, FN8),
        ValueError,
        r"W has 48 non-finite",
    ),
    "svd_rows_and_offsets fn dict": (
        lambda: LF.svd_rows_and_offsets(W86, 2, RELU, {}),
        TypeError,
        r"fn must be a LayerFunction, got dict$",
    ),
    "svd_rows_and_offsets fn shape": (
        lambda: LF.svd_rows_and_offsets(W86, 2, RELU, LF.LayerFunction(bias=torch.zeros(3))),
        ValueError,
        r"bias must have shape \(8,\) for a 8x6 weight, got \(3,\)$",
    ),
    "svd_rows_and_offsets activation": (
        lambda: LF.svd_rows_and_offsets(W86, 2, "nope", FN8),
        ValueError,
        r"unknown activation 'nope'",
    ),
    "whitened_problem W 1-D": (
        lambda: LF.whitened_problem(torch.ones(6), FN8),
        ValueError,
        r"W must be a 2-D",
    ),
    "whitened_problem fn None": (
        lambda: LF.whitened_problem(W86, None),
        TypeError,
        r"fn must be a LayerFunction, got NoneType$",
    ),
    "whitened_problem cov shape": (
        lambda: LF.whitened_problem(W86, LF.LayerFunction(cov=torch.eye(5))),
        ValueError,
        r"cov must have shape \(6, 6\) for a 8x6 weight, got \(5, 5\)$",
    ),
    "to_whitened white tuple": (
        lambda: LF.to_whitened(W86, FN8, (None, None)),
        TypeError,
        r"white must be a Whitened \(from whitener or whitened_problem\), got tuple$",
    ),
    "to_whitened white shape": (
        lambda: LF.to_whitened(W86, FN8, LF.whitener(torch.eye(5), 5)),
        ValueError,
        r"white must have L \(d_in, k\) and L_inv \(k, d_in\) with d_in = 6, or both None, got \(5, 5\)",
    ),
    "from_whitened U shape": (
        lambda: LF.from_whitened(torch.ones(3, 2), Q62, None, FN8, WHITE, W86),
        ValueError,
        r"U and V must be \(8, r\) and \(6, r\) for a 8x6 W and this white, got \(3, 2\) and \(6, 2\)$",
    ),
    "from_whitened V NaN": (
        lambda: LF.from_whitened(torch.ones(8, 2), NANS62, None, FN8, WHITE, W86),
        ValueError,
        r"V has 12 non-finite",
    ),
    "from_whitened d_new shape": (
        lambda: LF.from_whitened(torch.ones(8, 2), Q62, torch.zeros(3), FN8, WHITE, W86),
        ValueError,
        r"d_new must be a floating-point \(8,\) tensor or None, got \(3,\)$",
    ),
    "LayerFunction samples list": (
        lambda: LF.LayerFunction(samples=[1]),
        ValueError,
        r"LayerFunction.samples must be a 2-D floating-point tensor, got list$",
    ),
    "LayerFunction heldout NaN": (
        lambda: LF.LayerFunction(heldout=torch.full((2, 6), NAN)),
        ValueError,
        r"LayerFunction.heldout has 12 non-finite",
    ),
    "LayerFunction cov not square": (
        lambda: LF.LayerFunction(cov=torch.ones(3, 4)),
        ValueError,
        r"LayerFunction.cov must be square, got shape \(3, 4\)$",
    ),
    "LayerFunction normalized int": (
        lambda: LF.LayerFunction(normalized=1),
        ValueError,
        r"LayerFunction.normalized must be a bool, got 1$",
    ),
    "LayerFunction.check d_out 0": (
        lambda: LF.LayerFunction().check(0, 6),
        ValueError,
        r"d_out must be an int >= 1, got 0$",
    ),
    "LayerFunction.from_stats str": (
        lambda: LF.LayerFunction.from_stats("x"),
        TypeError,
        r"stats must be a LayerStats \(from collect_stats\), got str$",
    ),
}


@pytest.mark.parametrize("case", LAYER_FUNCTION_CASES.values(), ids=LAYER_FUNCTION_CASES.keys())
def test_layer_function_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.gaussian (a NaN h or a rho of 2 gave a number, an int tensor a truncated CDF of 0, a list a raw
# TypeError) and nlinit.theory.

t = torch.tensor
RELU_PP = G.PiecewisePolynomial((0.0,), ((0.0,), (0.0, 1.0)))
ONE = t([1.0])
ZERO = t([0.0])

GAUSSIAN_THEORY_CASES = {
    "bvn_upper list": (
        lambda: G.bvn_upper([0.0], t(0.0), t(0.5)),
        TypeError,
        r"h must be a floating-point torch.Tensor, got list$",
    ),
    "bvn_upper h NaN": (
        lambda: G.bvn_upper(t(NAN), t(0.0), t(0.5)),
        ValueError,
        r"h must be finite, got 1 values that are not \(e.g. nan\)$",
    ),
    "bvn_upper rho 2": (
        lambda: G.bvn_upper(t(0.0), t(0.0), t(2.0)),
        ValueError,
        r"rho must be in \[-1, 1\], got 1 values that are not \(e.g. 2.0\)$",
    ),
    "bvn_upper r -1": (
        lambda: G.bvn_upper(t(0.0), t(0.0), t(0.5), t(-1.0)),
        ValueError,
        r"r must be in \[0, 1\]",
    ),
    "bvn_cdf rho NaN": (
        lambda: G.bvn_cdf(t(0.0), t(0.0), t(NAN)),
        ValueError,
        r"rho must be in \[-1, 1\], got 1 values that are not \(e.g. nan\)$",
    ),
    "bvn_cdf k Inf": (lambda: G.bvn_cdf(t(0.0), t(INF), t(0.0)), ValueError, r"k must be finite"),
    "bvn_cdf float": (
        lambda: G.bvn_cdf(0.0, t(0.0), t(0.5)),
        TypeError,
        r"h must be a floating-point torch.Tensor, got float$",
    ),
    "bvn_cdf int": (
        lambda: G.bvn_cdf(t(0), t(0), t(0)),
        TypeError,
        r"h must be a floating-point torch.Tensor, got dtype torch.int64$",
    ),
    "bvn_cdf shapes": (
        lambda: G.bvn_cdf(t([0.0, 1.0]), t([0.0, 1.0, 2.0]), t(0.5)),
        ValueError,
        r"h, k, rho must broadcast to one shape, got h \(2,\), k \(3,\), rho \(\)$",
    ),
    "PiecewisePolynomial NaN kink": (
        lambda: G.PiecewisePolynomial((NAN,), ((0.0,), (1.0,))),
        ValueError,
        r"kinks must be a tuple of finite numbers, got \(nan,\)$",
    ),
    "PiecewisePolynomial str coefficient": (
        lambda: G.PiecewisePolynomial((0.0,), ((0.0,), ("a",))),
        ValueError,
        r"coeffs must be a tuple of non-empty tuples of finite numbers \(one per piece\), got",
    ),
    "PiecewisePolynomial empty piece": (
        lambda: G.PiecewisePolynomial((0.0,), ((0.0,), ())),
        ValueError,
        r"coeffs must be",
    ),
    "piecewise_pair_loss f str": (
        lambda: G.piecewise_pair_loss("relu", ZERO, ZERO, ONE, ONE, ZERO),
        TypeError,
        r"f must be a PiecewisePolynomial, got str$",
    ),
    "piecewise_pair_loss NaN": (
        lambda: G.piecewise_pair_loss(RELU_PP, t([NAN]), ZERO, ONE, ONE, ZERO),
        ValueError,
        r"mean_u has 1 non-finite \(NaN or Inf\) entries$",
    ),
    "piecewise_pair_loss negative variance": (
        lambda: G.piecewise_pair_loss(RELU_PP, ZERO, ZERO, -ONE, ONE, ZERO),
        ValueError,
        r"var_u must be >= 0, got min -1$",
    ),
    "piecewise_pair_loss shapes": (
        lambda: G.piecewise_pair_loss(RELU_PP, t([0.0, 1.0]), ZERO, ONE, ONE, ZERO),
        ValueError,
        r"mean_v has shape \(1,\), but mean_u has \(2,\)$",
    ),
    "piecewise_pair_loss not a covariance": (
        lambda: G.piecewise_pair_loss(RELU_PP, ZERO, ZERO, ONE, ONE, 5 * ONE),
        ValueError,
        r"cov_uv\^2 must be <= var_u var_v \(a covariance\), got 1 units above$",
    ),
    "piecewise_pair_loss list": (
        lambda: G.piecewise_pair_loss(RELU_PP, [0.0], ZERO, ONE, ONE, ZERO),
        TypeError,
        r"mean_u must be a floating-point torch.Tensor, got list$",
    ),
    "unit_rows generator": (
        lambda: T.unit_rows(3, 3, generator=5),
        TypeError,
        r"generator must be a torch.Generator or None, got int$",
    ),
    "unit_rows m 0": (lambda: T.unit_rows(0, 3), ValueError, r"m must be an int >= 1, got 0$"),
    "unit_rows dtype": (
        lambda: T.unit_rows(3, 3, dtype=torch.long),
        TypeError,
        r"dtype must be a floating-point torch.dtype",
    ),
    "g_minus_rho 2": (lambda: T.g_minus_rho(t([2.0])), ValueError, r"rho must lie in \[-1, 1\]"),
    "g_minus_rho list": (lambda: T.g_minus_rho([0.5]), TypeError, r"rho must be a floating-point"),
    "svd_rho rank in list": (
        lambda: T.svd_rho(torch.eye(3), [1, 9]),
        ValueError,
        r"rank must be an int in \[1, 3\] for a 3x3 weight, got 9$",
    ),
    "svd_rho empty list": (
        lambda: T.svd_rho(torch.eye(3), []),
        ValueError,
        r"rank must be an int or a non-empty",
    ),
    "svd_rho W NaN": (lambda: T.svd_rho(torch.full((3, 3), NAN), 1), ValueError, r"W has 9 non-finite"),
    "fig32_value rank 0": (
        lambda: T.fig32_value(torch.eye(3), 0),
        ValueError,
        r"rank must be an int in \[1, 3\]",
    ),
    "fig32_value zero row": (
        lambda: T.fig32_value(torch.zeros(3, 3), 1),
        ValueError,
        r"fig32_value needs rows of nonzero norm",
    ),
    "theorem_339_bound int W": (
        lambda: T.theorem_339_bound(torch.eye(3, dtype=torch.long), 1),
        TypeError,
        r"W must be a floating-point",
    ),
    "corollary_L str": (
        lambda: T.corollary_L("a"),
        ValueError,
        r"x must be a number or an array of numbers in \[0, 1\], got 'a'$",
    ),
    "corollary_L NaN": (
        lambda: T.corollary_L(NAN),
        ValueError,
        r"x must lie in \[0, 1\], got 1 values outside \(e.g. nan\)$",
    ),
    "corollary_bound rank > d": (
        lambda: T.corollary_bound(5, 3),
        ValueError,
        r"rank must be an int in \[1, 3\]",
    ),
    "energy_bound rank": (
        lambda: T.energy_bound(torch.eye(3), 4),
        ValueError,
        r"rank must be an int in \[1, 3\]",
    ),
    "log_hyp1f1 NaN": (
        lambda: T.log_hyp1f1(NAN, 1.0, 1.0),
        ValueError,
        r"log_hyp1f1: a must be a finite number, got nan$",
    ),
    "log_hyp1f1 a > b": (lambda: T.log_hyp1f1(2.0, 1.0, 1.0), ValueError, r"log_hyp1f1 needs 0 < a <= b"),
    "remark_union_term reading": (
        lambda: T.remark_union_term(10, 2, 10, "x"),
        ValueError,
        r"unknown reading 'x'; available: net, per-unit$",
    ),
    "remark_bound m 0": (lambda: T.remark_bound(10, 2, 0), ValueError, r"m must be an int >= 1, got 0$"),
}


@pytest.mark.parametrize("case", GAUSSIAN_THEORY_CASES.values(), ids=GAUSSIAN_THEORY_CASES.keys())
def test_gaussian_and_theory_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.data (a std of 0 made infinite pixels, float labels were truncated, a negative seed was numpy's
# message) and nlinit.models (num_classes 0 built a model with no output, in_channels -1 a raw error).

U8 = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
LABELS = torch.zeros(2, dtype=torch.long)

DATA_MODELS_CASES = {
    "read_idx path int": (
        lambda: D.read_idx(5),
        ValueError,
        r"path must be a non-empty str or PathLike, got 5$",
    ),
    "read_idx ndim str": (
        lambda: D.read_idx("/nonexistent.gz", ndim="3"),
        ValueError,
        r"ndim must be an int >= 0, got '3'$",
    ),
    "stratified_subset seed -1": (
        lambda: D.stratified_subset([0, 1, 0, 1], 2, -1),
        ValueError,
        r"seed must be an int >= 0, got -1$",
    ),
    "stratified_subset seed float": (
        lambda: D.stratified_subset([0, 1, 0, 1], 2, 1.5),
        ValueError,
        r"seed must be an int >= 0, got 1.5$",
    ),
    "stratified_subset labels 2-D": (
        lambda: D.stratified_subset([[0, 1], [0, 1]], 2, 0),
        ValueError,
        r"labels must be a 1-D sequence of ints, got \[\[0, 1\], \[0, 1\]\]$",
    ),
    "stratified_subset labels str": (
        lambda: D.stratified_subset(["a", "b"], 1, 0),
        ValueError,
        r"labels must be a 1-D sequence of ints",
    ),
    "stratified_subset size": (
        lambda: D.stratified_subset([0, 1], 3, 0),
        ValueError,
        r"subset size must be an int in \[1, 2\], got 3$",
    ),
    "TensorImageDataset images list": (
        lambda: D.TensorImageDataset([1], LABELS, [0.5], [0.5]),
        TypeError,
        r"images must be a torch.Tensor, got list$",
    ),
    "TensorImageDataset std 0": (
        lambda: D.TensorImageDataset(U8, LABELS, [0.5], [0.0]),
        ValueError,
        r"std must be > 0 in every channel, got \[0.0\]$",
    ),
    "TensorImageDataset mean NaN": (
        lambda: D.TensorImageDataset(U8, LABELS, [NAN], [1.0]),
        ValueError,
        r"mean must be a sequence of finite numbers \(one per channel\), got \[nan\]$",
    ),
    "TensorImageDataset float labels": (
        lambda: D.TensorImageDataset(U8, torch.tensor([0.5, 1.7]), [0.5], [1.0]),
        ValueError,
        r"labels must be an integer tensor, got dtype torch.float32$",
    ),
    "TensorImageDataset flip str": (
        lambda: D.TensorImageDataset(U8, LABELS, [0.5], [1.0], flip="yes"),
        ValueError,
        r"flip must be a bool, got 'yes'$",
    ),
    "TensorImageDataset set_epoch -1": (
        lambda: D.TensorImageDataset(U8, LABELS, [0.5], [1.0]).set_epoch(-1),
        ValueError,
        r"epoch must be an int >= 0, got -1$",
    ),
    "ImageFolderDataset folder str": (
        lambda: D.ImageFolderDataset("x", lambda x: x),
        TypeError,
        r"folder must be a torchvision ImageFolder, got str$",
    ),
    "build_datasets synthetic option": (
        lambda: D.build_datasets("synthetic", nope=1),
        ValueError,
        r"unknown synthetic option 'nope'; available: data_seed, image_size",
    ),
    "synthetic_images noise NaN": (
        lambda: D.synthetic_images(noise=NAN),
        ValueError,
        r"noise must be a finite number >= 0, got nan$",
    ),
    "mlp num_classes 0": (
        lambda: M.mlp(num_classes=0),
        ValueError,
        r"num_classes must be an int >= 1, got 0$",
    ),
    "mlp depth -1": (lambda: M.mlp(depth=-1), ValueError, r"depth must be an int >= 0, got -1$"),
    "mlp hidden str": (lambda: M.mlp(hidden="5"), ValueError, r"hidden must be an int >= 1, got '5'$"),
    "relu_mlp batchnorm str": (
        lambda: M.relu_mlp(batchnorm="no"),
        ValueError,
        r"batchnorm must be a bool, got 'no'$",
    ),
    "relu_mlp in_channels 0": (
        lambda: M.relu_mlp(in_channels=0),
        ValueError,
        r"in_channels must be an int >= 1, got 0$",
    ),
    "wide_mlp num_classes float": (
        lambda: M.wide_mlp(num_classes=2.0),
        ValueError,
        r"num_classes must be an int >= 1, got 2.0$",
    ),
    "wide_mlp_bn width 0": (lambda: M.wide_mlp_bn(width=0), ValueError, r"width must be an int >= 1, got 0$"),
    "resnet20 num_classes 0": (
        lambda: M.resnet20(num_classes=0),
        ValueError,
        r"num_classes must be .* got 0$",
    ),
    "resnet32 in_channels -1": (
        lambda: M.resnet32(in_channels=-1),
        ValueError,
        r"in_channels must be an int >= 1, got -1$",
    ),
    "resnet56 num_classes bool": (lambda: M.resnet56(num_classes=True), ValueError, r"num_classes .* True$"),
    "mixer_tiny num_classes 0": (lambda: M.mixer_tiny(num_classes=0), ValueError, r"num_classes .* got 0$"),
    "efficientnet_tiny num_classes 0": (
        lambda: M.efficientnet_tiny(num_classes=0),
        ValueError,
        r"num_classes must be an int >= 1, got 0$",
    ),
    "CifarResNet depth str": (
        lambda: M.CifarResNet("20"),
        ValueError,
        r"depth must be 6n \+ 2 with n >= 1 \(20, 32, 44, 56, 110, ...\), got '20'$",
    ),
    "CifarResNet depth 21": (lambda: M.CifarResNet(21), ValueError, r"depth must be 6n \+ 2 .* got 21$"),
    "Mixer image_size": (
        lambda: M.Mixer(10, 1, image_size=30),
        ValueError,
        r"image_size must be a multiple of patch=7, got 30$",
    ),
    "Mixer depth 0": (lambda: M.Mixer(depth=0), ValueError, r"depth must be an int >= 1, got 0$"),
    "MixerBlock tokens 0": (
        lambda: M.MixerBlock(0, 4, 4, 4),
        ValueError,
        r"tokens must be an int >= 1, got 0$",
    ),
    "conv3x3 in_planes 0": (lambda: M.conv3x3(0, 3), ValueError, r"in_planes must be an int >= 1, got 0$"),
    "BasicBlock stride 0": (
        lambda: M.BasicBlock(3, 3, stride=0),
        ValueError,
        r"stride must be an int >= 1, got 0$",
    ),
    "PadShortcut fewer planes": (
        lambda: M.PadShortcut(4, 2, 2),
        ValueError,
        r"planes must be an int >= 4, got 2$",
    ),
    "build_model unknown": (
        lambda: M.build_model("nope"),
        ValueError,
        r"unknown model 'nope'; available: alexnet",
    ),
    "build_model num_classes 0": (
        lambda: M.build_model("resnet18", 0),
        ValueError,
        r"num_classes must be an int >= 1, got 0$",
    ),
    "build_model small_input str": (
        lambda: M.build_model("resnet18", small_input="yes"),
        ValueError,
        r"small_input must be a bool, got 'yes'$",
    ),
}


@pytest.mark.parametrize("case", DATA_MODELS_CASES.values(), ids=DATA_MODELS_CASES.keys())
def test_data_and_models_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.experiments: evidence, sweep's report helpers, the compression grids' entry points. Every case
# gets an empty directory and must leave it empty (checked before any work or output). Before: the evidence
# report of a missing root wrote an empty report (and its directory), a bad --images wrote
# depth_provenance.json first, a str level / unknown key / bad shard gave raw errors, write_csv([]) wrote a
# "name" header, the compression grids loaded the model or data before a bad budget raised.

X1 = torch.ones(2, 1, 28, 28)
ROW = {"init": "spectral", "rank_scale": 0.1, "seed": 0, "final_test_top1": 80.0}


def _lin() -> torch.nn.Module:
    return torch.nn.Linear(3, 2)


EXPERIMENT_CASES = {
    "write_evidence_report missing root": (
        lambda d: E.write_evidence_report(d / "nope", d / "out"),
        FileNotFoundError,
        r"root '.*nope' is not a directory \(the sweeps' root, e.g. results/sweep\)$",
    ),
    "write_evidence_report no finished sweep": (
        lambda d: E.write_evidence_report(d, d / "out"),
        ValueError,
        r"no finished runs of the grid's sweeps under '.*' \(expected <sweep>/runs/\*/summary.json for a "
        r"sweep among fmnist-wide_mlp, ",
    ),
    "write_evidence_report root int": (
        lambda d: E.write_evidence_report(5, d / "out"),
        ValueError,
        r"root must be a non-empty path, got 5$",
    ),
    "run_grid shard": (
        lambda d: E.run_grid(d / "g", shard=(2, 1)),
        ValueError,
        r"shard must be i/n with 0 <= i < n, got \(2, 1\)$",
    ),
    "run_grid specs": (
        lambda d: E.run_grid(d / "g", specs=["x"]),
        TypeError,
        r"specs must hold SweepSpec, got str$",
    ),
    "run_grid no specs": (
        lambda d: E.run_grid(d / "g", specs=[]),
        TypeError,
        r"specs must be a non-empty sequence of SweepSpec, got \[\]$",
    ),
    "function_error not a model": (
        lambda d: E.function_error("m", _lin(), torch.ones(2, 3)),
        TypeError,
        r"full must be a torch.nn.Module, got str$",
    ),
    "function_error x list": (
        lambda d: E.function_error(_lin(), _lin(), [1.0]),
        ValueError,
        r"x must be a floating-point batch \(N >= 1, ...\) of inputs, got list$",
    ),
    "function_error x NaN": (
        lambda d: E.function_error(_lin(), _lin(), torch.full((2, 3), NAN)),
        ValueError,
        r"x has 6 non-finite",
    ),
    "test_images count 0": (
        lambda d: E.test_images(0),
        ValueError,
        r"count must be an int in \[1, 10000\], got 0$",
    ),
    "test_images seed -1": (lambda d: E.test_images(5, -1), ValueError, r"seed must be an int >= 0, got -1$"),
    "depth_rows depths": (
        lambda d: E.depth_rows(X1, batchnorm=False, seed=0, depths=[0, 2]),
        ValueError,
        r"depths must be ints >= 1, got \[0, 2\]$",
    ),
    "depth_rows depths str": (
        lambda d: E.depth_rows(X1, batchnorm=False, seed=0, depths=["2"]),
        ValueError,
        r"depths must be ints >= 1, got \['2'\]$",
    ),
    "depth_rows batchnorm": (
        lambda d: E.depth_rows(X1, batchnorm="no", seed=0),
        ValueError,
        r"batchnorm must be a bool, got 'no'$",
    ),
    "depth_rows rank scale": (
        lambda d: E.depth_rows(X1, batchnorm=False, seed=0, rank_scales=[2.0]),
        ValueError,
        r"rank_scale must be a number in \(0, 1\], got 2.0$",
    ),
    "depth_rows init": (
        lambda d: E.depth_rows(X1, batchnorm=False, seed=0, inits=["nope"]),
        ValueError,
        r"unknown init 'nope'; available: asvd",
    ),
    "depth_rows init_options": (
        lambda d: E.depth_rows(X1, batchnorm=False, seed=0, init_options={"spectral": {"x": 1}}),
        ValueError,
        r"unknown option 'x' for init 'spectral'; available: none$",
    ),
    "depth_rows width": (
        lambda d: E.depth_rows(X1, batchnorm=False, seed=0, width=0),
        ValueError,
        r"width must be an int >= 1, got 0$",
    ),
    "run_depth_study images": (
        lambda d: E.run_depth_study(d / "out", images=0),
        ValueError,
        r"images must be an int in \[1, 10000\], got 0$",
    ),
    "run_depth_study seeds": (
        lambda d: E.run_depth_study(d / "out", seeds=[-1]),
        ValueError,
        r"seed must be an int >= 0, got -1$",
    ),
    "run_depth_study batchnorm": (
        lambda d: E.run_depth_study(d / "out", batchnorm=["no"]),
        ValueError,
        r"batchnorm must be a non-empty list of bools, got \['no'\]$",
    ),
    "summarize unknown key": (
        lambda d: SW.summarize([ROW], "nope"),
        ValueError,
        r"rows\[0\] has no 'nope'; its keys are init, rank_scale, seed, final_test_top1$",
    ),
    "summarize NaN": (
        lambda d: SW.summarize([{**ROW, "final_test_top1": NAN}]),
        ValueError,
        r"rows\[0\]\['final_test_top1'\] must be a finite number, got nan$",
    ),
    "summarize rows dict": (
        lambda d: SW.summarize(ROW),
        TypeError,
        r"rows must be a list of dicts \(as collect returns\), got dict$",
    ),
    "paired_differences level str": (
        lambda d: SW.paired_differences([ROW], level="0.9"),
        ValueError,
        r"level must be in \(0, 1\), got '0.9'$",
    ),
    "paired_differences reference": (
        lambda d: SW.paired_differences([ROW], reference=5),
        ValueError,
        r"reference must be an init name, got 5$",
    ),
    "paired_differences missing seed": (
        lambda d: SW.paired_differences([{"init": "a", "rank_scale": 0.1, "final_test_top1": 1.0}]),
        ValueError,
        r"rows\[0\] has no 'seed'",
    ),
    "paired_table digits": (
        lambda d: SW.paired_table([], digits=-1),
        ValueError,
        r"digits must be an int in \[0, 15\], got -1$",
    ),
    "paired_table items": (
        lambda d: SW.paired_table([1]),
        TypeError,
        r"pairs must hold PairedDifference \(from paired_differences\), got int$",
    ),
    "markdown_table higher_is_better": (
        lambda d: SW.markdown_table([ROW], higher_is_better="yes"),
        ValueError,
        r"higher_is_better must be a bool, got 'yes'$",
    ),
    "markdown_table digits": (
        lambda d: SW.markdown_table([ROW], digits=2.5),
        ValueError,
        r"digits must be an int in \[0, 15\], got 2.5$",
    ),
    "write_csv no rows": (
        lambda d: SW.write_csv(d / "x.csv", []),
        ValueError,
        r"rows must hold at least one row \(a dict\)$",
    ),
    "write_csv other keys": (
        lambda d: SW.write_csv(d / "x.csv", [{"a": 1}, {"b": 2}]),
        ValueError,
        r"rows\[1\] has keys b; rows\[0\] has a$",
    ),
    "run_dir init with a slash": (
        lambda d: SW.run_dir(d, "a/b", 0.1, 0),
        ValueError,
        r"init must be an init name \(no spaces or slashes\), got 'a/b'$",
    ),
    "collect root int": (lambda d: SW.collect(5), ValueError, r"root must be a non-empty path, got 5$"),
    "compress_cnn budget 1.5": (
        lambda d: CC.main(["--checkpoint", str(d / "none"), "--out", str(d / "o"), "--budgets", "1.5"]),
        ValueError,
        r"budget must be a fraction in \(0, 1\) of the layers' parameters kept, got 1.5$",
    ),
    "compress_cnn budget twice": (
        lambda d: CC.main(
            ["--checkpoint", str(d / "none"), "--out", str(d / "o"), "--budgets", "0.5", "0.5"]
        ),
        ValueError,
        r"--budgets has 0.5 more than once: \[0.5, 0.5\]$",
    ),
    "compress_cnn RememberedTeacher of a str": (
        lambda d: CC.RememberedTeacher("x"),  # type: ignore[arg-type]
        TypeError,
        r"teacher must be a torch.nn.Module, got str$",
    ),
    "compress_cnn missing checkpoint": (
        lambda d: CC.main(["--checkpoint", str(d / "none"), "--out", str(d / "o")]),
        FileNotFoundError,
        r"--checkpoint '.*none' is not a file \(a checkpoint of nlinit train\)$",
    ),
    "compress_cnn calibration images": (
        lambda d: CC.main(
            ["--checkpoint", str(d / "none"), "--out", str(d / "o"), "--calibration-images", "0"]
        ),
        ValueError,
        r"--calibration-images must be an int >= 1, got 0$",
    ),
    "compress_cnn seed": (
        lambda d: CC.main(["--checkpoint", str(d / "none"), "--out", str(d / "o"), "--seed", "-1"]),
        ValueError,
        r"--seed must be an int >= 0, got -1$",
    ),
    "compress_cnn finetune epochs": (
        lambda d: CC.main(
            ["--checkpoint", str(d / "none"), "--out", str(d / "o"), "--finetune-epochs", "-1"]
        ),
        ValueError,
        r"--finetune-epochs must be an int >= 0, got -1$",
    ),
    "compress_minilm finetune epochs": (
        lambda d: CM.main(["--out", str(d / "o"), "--finetune-epochs", "-2"]),
        ValueError,
        r"--finetune-epochs must be an int >= 0, got -2$",
    ),
    "compress_minilm budget 0": (
        lambda d: CM.main(["--out", str(d / "o"), "--budgets", "0"]),
        ValueError,
        r"budget must be a fraction in \(0, 1\) of the layers' parameters kept, got 0.0$",
    ),
    "compress_minilm budget NaN": (
        lambda d: CM.main(["--out", str(d / "o"), "--budgets", "nan"]),
        ValueError,
        r"budget must be .* got nan$",
    ),
    "compress_minilm shard": (
        lambda d: CM.main(["--out", str(d / "o"), "--shard", "0/0"]),
        ValueError,
        r"shard must be i/n with 0 <= i < n, got \(0, 0\)$",
    ),
    "compress_cnn shard": (
        lambda d: CC.main(["--checkpoint", str(d / "none"), "--out", str(d / "o"), "--shard", "a/b"]),
        ValueError,
        r"--shard must look like i/n \(e.g. 0/4\), got 'a/b'$",
    ),
    "compress_minilm max tokens": (
        lambda d: CM.main(["--out", str(d / "o"), "--max-tokens", "0"]),
        ValueError,
        r"--max-tokens must be an int in \[1, 512\], got 0$",
    ),
    "compress_minilm calibration": (
        lambda d: CM.main(["--out", str(d / "o"), "--calibration", "0"]),
        ValueError,
        r"--calibration: count must be an int in \[1, \d+\] \(paragraphs available\), got 0$",
    ),
    "compress_cnn top1 empty data": (
        lambda d: CC.top1(_lin(), []),
        ValueError,
        r"data must be a non-empty dataset of \(image, label\) pairs, got \[\]$",
    ),
    "compress_cnn top1 batch_size": (
        lambda d: CC.top1(_lin(), [(torch.ones(3), 0)], batch_size=0),
        ValueError,
        r"batch_size must be an int >= 1, got 0$",
    ),
    "compress_cnn top1 model": (
        lambda d: CC.top1("m", [(torch.ones(3), 0)]),
        TypeError,
        r"model must be a torch.nn.Module, got str$",
    ),
    "SweepSpec epochs 0": (
        lambda d: E.SweepSpec("s", "mlp", (0.1,), (0,), 0),
        ValueError,
        r"SweepSpec.epochs must be an int >= 1, got 0$",
    ),
    "SweepSpec rank scale 2": (
        lambda d: E.SweepSpec("s", "mlp", (2.0,), (0,), 1),
        ValueError,
        r"rank_scale must be a number in \(0, 1\], got 2.0$",
    ),
    "SweepSpec seeds list": (
        lambda d: E.SweepSpec("s", "mlp", (0.1,), [0], 1),
        ValueError,
        r"SweepSpec.seeds must be a non-empty tuple, got \[0\]$",
    ),
    "SweepSpec extra seeds at a rank scale it lacks": (
        lambda d: E.SweepSpec("s", "mlp", (0.1,), (0,), 1, extra_seeds={0.2: (1,)}),
        ValueError,
        r"SweepSpec.extra_seeds must map rank scales of the sweep \(0.1,\) to non-empty tuples of seeds, "
        r"got 0.2: \(1,\)$",
    ),
    "SweepSpec extra seed negative": (
        lambda d: E.SweepSpec("s", "mlp", (0.1,), (0,), 1, extra_seeds={0.1: (-1,)}),
        ValueError,
        r"SweepSpec extra seed must be an int >= 0, got -1$",
    ),
    "SweepSpec name with a slash": (
        lambda d: E.SweepSpec("a/b", "mlp", (0.1,), (0,), 1),
        ValueError,
        r"SweepSpec.name must be a directory name \(no slashes or spaces\), got 'a/b'$",
    ),
    "markdown_tables no rows": (
        lambda d: E.markdown_tables([]),
        ValueError,
        r"rows must be a non-empty list of depth_rows rows, got \[\]$",
    ),
    "markdown_tables missing key": (
        lambda d: E.markdown_tables([{"batchnorm": False}]),
        ValueError,
        r"rows\[0\] has no 'rank_scale'; depth_rows rows have batchnorm, rank_scale",
    ),
    "plot_depth no rows": (
        lambda d: E.plot_depth([], d / "x.png"),
        ValueError,
        r"rows must be a non-empty list",
    ),
}


@pytest.mark.parametrize("case", EXPERIMENT_CASES.values(), ids=EXPERIMENT_CASES.keys())
def test_experiments_bad_input_writes_nothing(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call, error, message = case
    _check(lambda: call(tmp_path), error, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "--root", "nope"], r"report: error: root 'nope' is not a directory"),
        (["report", "--root", "."], r"report: error: no finished runs of the grid's sweeps under '.'"),
        (["sweeps", "--root", "r", "--shard", "x"], r"sweeps: error: --shard must look like i/n"),
        (
            ["sweeps", "--root", "r", "--shard", "3/2"],
            r"sweeps: error: shard must be i/n with 0 <= i < n, got \(3, 2\)",
        ),
        (
            ["depth", "--out", "d", "--images", "20000"],
            r"depth: error: images must be an int in \[1, 10000\]",
        ),
        (["depth", "--out", "d", "--inits", "nope"], r"depth: error: unknown init 'nope'"),
        (
            ["depth", "--out", "d", "--rank-scales", "0"],
            r"depth: error: rank_scale must be a number in \(0, 1\]",
        ),
    ],
)
def test_evidence_command_line_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, monkeypatch, capsys, argv, message
):
    monkeypatch.chdir(tmp_path)
    assert E.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err, err
    assert re.match(r"python -m nlinit.experiments.evidence " + message, err), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory")
def test_evidence_report_of_an_unreadable_root_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        assert E.main(["report", "--root", "locked", "--out", "out"]) == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert err == "python -m nlinit.experiments.evidence report: error: root 'locked' is not readable", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked"]


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (CC.main, ["--checkpoint", "ckpt", "--out", "o", "--methods", "nope"]),
        (CC.main, ["--checkpoint", "ckpt", "--out", "o", "--allocations", "nope"]),
        (CC.main, ["--checkpoint", "ckpt", "--out", "o", "--budgets", "half"]),
        (CM.main, ["--out", "o", "--methods", "nope"]),
        (CM.main, ["--out", "o", "--allocations", "nope"]),
    ],
)
def test_compression_grids_refuse_unknown_choices_before_loading(tmp_path, monkeypatch, capsys, main, argv):
    """argparse refuses an unknown method or allocation: exit 2, one line on stderr, nothing written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --" in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("main", [CC.main, CM.main])
def test_compression_grids_refuse_an_out_that_is_a_file_before_loading(tmp_path, monkeypatch, main):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o").write_text("x")
    argv = ["--out", "o"] if main is CM.main else ["--checkpoint", "ckpt", "--out", "o"]
    _check(lambda: main(argv), NotADirectoryError, r"--out 'o' is a file; a directory is needed$")
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


@pytest.mark.parametrize(
    "module, argv",
    [
        ("evidence", ["sweeps", "--only", "nope"]),
        ("compress_cnn", ["--checkpoint", "x", "--out", "y", "--methods", "svd2"]),
        ("compress_minilm", ["--out", "y", "--allocations", "greedy"]),
    ],
)
def test_experiment_command_lines_give_one_line_errors(module, argv, capsys):
    """An argument argparse itself refuses (an unknown choice) is one line on stderr and exit 2."""
    import importlib

    main = importlib.import_module(f"nlinit.experiments.{module}").main
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: argument" in err and "invalid choice" in err, err


# ---------------------------------------------------------------------------------------------------------
# nlinit.layer_function.relative_objectives (the report's objectives on the layer function)

_RW = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
_RU, _RV = torch.ones(5, 2, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64)
RELATIVE_CASES = {
    "W 1-D": (
        lambda: LF.relative_objectives(torch.ones(4), [], Activation("relu"), LF.LayerFunction()),
        ValueError,
        r"W must be a 2-D",
    ),
    "fn not a LayerFunction": (
        lambda: LF.relative_objectives(_RW, [], Activation("relu"), None),
        TypeError,
        r"fn must be a LayerFunction, got NoneType$",
    ),
    "activation without an exact objective": (
        lambda: LF.relative_objectives(_RW, [], "softplus", LF.LayerFunction()),
        (ValueError, NotImplementedError),
        r"(exact objective for activation|unknown activation)",
    ),
    "candidates not a list": (
        lambda: LF.relative_objectives(_RW, (_RU, _RV, None), Activation("relu"), LF.LayerFunction()),
        TypeError,
        r"candidates must be a list of \(U, V, bias\) triples, got tuple$",
    ),
    "a pair, not a triple": (
        lambda: LF.relative_objectives(_RW, [(_RU, _RV)], Activation("relu"), LF.LayerFunction()),
        ValueError,
        r"candidates\[0\] must be a \(U, V, bias\) triple",
    ),
    "V of the wrong height": (
        lambda: LF.relative_objectives(_RW, [(_RU, _RU, None)], Activation("relu"), LF.LayerFunction()),
        ValueError,
        r"candidates\[0\] has U \(5, 2\) and V \(5, 2\); a 5x4 W needs \(5, r\) and \(4, r\)$",
    ),
    "NaN U": (
        lambda: LF.relative_objectives(_RW, [(_RU * NAN, _RV, None)], Activation("relu"), LF.LayerFunction()),
        ValueError,
        r"candidates\[0\] U has 10 non-finite",
    ),
    "bias of the wrong length": (
        lambda: LF.relative_objectives(
            _RW, [(_RU, _RV, torch.ones(4))], Activation("relu"), LF.LayerFunction()
        ),
        ValueError,
        r"candidates\[0\] bias must be None or a \(5,\) tensor, got \(4,\)$",
    ),
    "cov that does not fit W": (
        lambda: LF.relative_objectives(
            _RW,
            [(_RU, _RV, None)],
            Activation("relu"),
            LF.LayerFunction(cov=torch.eye(3, dtype=torch.float64)),
        ),
        ValueError,
        r"cov must have shape \(4, 4\) for a 5x4 weight, got \(3, 3\)$",
    ),
    "samples of the wrong width": (
        lambda: LF.relative_objectives(
            _RW, [(_RU, _RV, None)], Activation("relu"), LF.LayerFunction(), samples=torch.ones(3, 5)
        ),
        ValueError,
        r"samples must be an \(N >= 1, 4\) tensor for a 5x4 W, got shape \(3, 5\)$",
    ),
    "samples with NaN": (
        lambda: LF.relative_objectives(
            _RW, [(_RU, _RV, None)], Activation("relu"), LF.LayerFunction(), samples=torch.full((3, 4), NAN)
        ),
        ValueError,
        r"samples has 12 non-finite",
    ),
    "samples with an unknown activation": (
        lambda: LF.relative_objectives(_RW, [], "nope", LF.LayerFunction(), samples=torch.ones(3, 4)),
        ValueError,
        r"unknown activation 'nope'",
    ),
    "Sigma unmeasured on a widening layer": (
        lambda: LF.whitened_problem(
            torch.ones(5, 4), LF.LayerFunction(out_cov=torch.eye(5, dtype=torch.float64))
        ),
        ValueError,
        r"the whitened problem of a 5x4 layer \(d_in <= d_out\) needs the input covariance Sigma",
    ),
    "row_space_coefficients W 1-D": (
        lambda: LF.row_space_coefficients(torch.ones(4), torch.ones(4, 2)),
        ValueError,
        r"W must be a 2-D",
    ),
    "row_space_coefficients M NaN": (
        lambda: LF.row_space_coefficients(_RW, torch.full((4, 2), NAN)),
        ValueError,
        r"M has 8 non-finite",
    ),
    "row_space_coefficients M rows": (
        lambda: LF.row_space_coefficients(_RW, torch.ones(5, 2)),
        ValueError,
        r"M must have 4 rows \(W's columns\), got shape \(5, 2\)$",
    ),
}


@pytest.mark.parametrize("case", sorted(RELATIVE_CASES))
def test_relative_objectives_bad_input(case):
    call, error, message = RELATIVE_CASES[case]
    _check(call, error, message)


# ---------------------------------------------------------------------------------------------------------
# nlinit.hf: mean_pool (a wrong mask: a raw broadcast error; an int, empty or NaN input, a mask of other
# values than 0/1: a silent result), token_batches / embed (max_length 0 or 2.5 and batch_size True were
# accepted, batch_size 0 a raw range() error), bert_activations, load_minilm's device (checked before
# anything loads). The model is test_hf.py's tiny random BERT (imported inside the call: no transformers,
# those cases skip).


def _tiny_bert():
    pytest.importorskip("transformers", reason="the hf extra is not installed")
    from test_hf import _tiny_bert as tiny

    return tiny()


def _tokenizer(texts, truncation=True, max_length=8, padding=False, return_tensors=None):
    return {"input_ids": [[1 + len(w) for w in t.split()][:max_length] for t in texts]}


H234 = torch.ones(2, 3, 4)
M23 = torch.ones(2, 3, dtype=torch.long)


def _hf():
    from nlinit import hf

    return hf


HF_CASES = {
    "mean_pool mask shape": (
        lambda: _hf().mean_pool(H234, torch.ones(2, 5)),
        ValueError,
        r"attention_mask must have shape \(2, 3\) \(B, T of last_hidden\), got \(2, 5\)$",
    ),
    "mean_pool 2-D hidden": (
        lambda: _hf().mean_pool(torch.ones(2, 3), M23),
        ValueError,
        r"last_hidden must be a non-empty \(B, T, d\) tensor, got shape \(2, 3\)$",
    ),
    "mean_pool no batch": (
        lambda: _hf().mean_pool(torch.ones(0, 3, 4), torch.ones(0, 3)),
        ValueError,
        r"last_hidden must be a non-empty \(B, T, d\) tensor, got shape \(0, 3, 4\)$",
    ),
    "mean_pool no tokens": (
        lambda: _hf().mean_pool(torch.ones(2, 0, 4), torch.ones(2, 0)),
        ValueError,
        r"last_hidden must be a non-empty \(B, T, d\) tensor, got shape \(2, 0, 4\)$",
    ),
    "mean_pool int hidden": (
        lambda: _hf().mean_pool(H234.long(), M23),
        TypeError,
        r"last_hidden must be a floating-point tensor, got dtype torch.int64$",
    ),
    "mean_pool list hidden": (
        lambda: _hf().mean_pool([[[1.0]]], M23),
        TypeError,
        r"last_hidden must be a torch.Tensor, got list$",
    ),
    "mean_pool list mask": (
        lambda: _hf().mean_pool(H234, [[1, 1, 1]]),
        TypeError,
        r"attention_mask must be a torch.Tensor, got list$",
    ),
    "mean_pool mask 0.5": (
        lambda: _hf().mean_pool(H234, torch.full((2, 3), 0.5)),
        ValueError,
        r"attention_mask must hold only 0 \(padding\) and 1 \(token\)$",
    ),
    "mean_pool mask -1": (
        lambda: _hf().mean_pool(H234, -M23),
        ValueError,
        r"attention_mask must hold only 0",
    ),
    "mean_pool NaN": (
        lambda: _hf().mean_pool(torch.full((2, 3, 4), NAN), M23),
        ValueError,
        r"last_hidden has 24 non-finite \(NaN or Inf\) entries",
    ),
    "token_batches max_length 0": (
        lambda: _hf().token_batches(_tokenizer, ["a b"], max_length=0),
        ValueError,
        r"max_length must be an int >= 1, got 0$",
    ),
    "token_batches max_length float": (
        lambda: _hf().token_batches(_tokenizer, ["a b"], max_length=2.5),
        ValueError,
        r"max_length must be an int >= 1, got 2.5$",
    ),
    "token_batches batch_size 0": (
        lambda: _hf().token_batches(_tokenizer, ["a b"], batch_size=0),
        ValueError,
        r"batch_size must be an int >= 1, got 0$",
    ),
    "token_batches batch_size bool": (
        lambda: _hf().token_batches(_tokenizer, ["a b"], batch_size=True),
        ValueError,
        r"batch_size must be an int >= 1, got True$",
    ),
    "token_batches empty": (
        lambda: _hf().token_batches(_tokenizer, []),
        ValueError,
        r"texts must be a non-empty list of strings, got list \[\]$",
    ),
    "token_batches a string": (
        lambda: _hf().token_batches(_tokenizer, "a b"),
        ValueError,
        r"texts must be a non-empty list of strings, got str 'a b'$",
    ),
    "token_batches not strings": (
        lambda: _hf().token_batches(_tokenizer, ["a", 3]),
        ValueError,
        r"texts must be strings, got int 3$",
    ),
    "embed empty": (
        lambda: _hf().embed(_tiny_bert(), _tokenizer, []),
        ValueError,
        r"texts must be a non-empty list of strings, got list \[\]$",
    ),
    "embed not strings": (
        lambda: _hf().embed(_tiny_bert(), _tokenizer, [None]),
        ValueError,
        r"texts must be strings, got NoneType None$",
    ),
    "embed batch_size 0": (
        lambda: _hf().embed(_tiny_bert(), _tokenizer, ["a b"], batch_size=0),
        ValueError,
        r"batch_size must be an int >= 1, got 0$",
    ),
    "embed max_length -1": (
        lambda: _hf().embed(_tiny_bert(), _tokenizer, ["a b"], max_length=-1),
        ValueError,
        r"max_length must be an int >= 1, got -1$",
    ),
    "embed max_length str": (
        lambda: _hf().embed(_tiny_bert(), _tokenizer, ["a b"], max_length="8"),
        ValueError,
        r"max_length must be an int >= 1, got '8'$",
    ),
    "embed not a model": (
        lambda: _hf().embed("bert", _tokenizer, ["a b"]),
        TypeError,
        r"model must be a torch.nn.Module, got str$",
    ),
    "bert_activations not a module": (
        lambda: _hf().bert_activations("bert"),
        TypeError,
        r"model must be a torch.nn.Module, got str$",
    ),
    "bert_activations no config": (
        lambda: _hf().bert_activations(torch.nn.Linear(2, 2)),
        ValueError,
        r"model.config.hidden_act must be one of gelu, relu, silu, swish "
        r"\(a BERT-style transformers model\), got None$",
    ),
    "load_minilm device": (
        lambda: _hf().load_minilm("gpu0"),
        ValueError,
        r"device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu0'$",
    ),
    "load_minilm device type": (
        lambda: _hf().load_minilm(["cpu"]),
        ValueError,
        r"device must be a torch device such as 'cpu' or 'cuda:0', got \['cpu'\]$",
    ),
}


@pytest.mark.parametrize("case", HF_CASES.values(), ids=HF_CASES.keys())
def test_hf_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.report: markdown_table (a short row gave a broken table, a non-str cell a raw join error),
# FactorizeReport.mean_objective (an unknown name gave NaN), FactorizeReport.save (any suffix was written
# as markdown; a directory: a raw error). Nothing is written.


def _report():
    from nlinit.report import FactorizeReport, LayerReport

    layer = LayerReport(
        name="fc", kind="linear", shape=(4, 3), status="factorized", params_before=12, params_after=7, rank=1
    )
    return FactorizeReport(layers=[layer], config={"init": "spectral"})


def _markdown_table(*args, **kwargs):
    from nlinit.report import markdown_table

    return markdown_table(*args, **kwargs)


def _file_at(d, name):
    (d / name).write_text("x")
    return d / name


REPORT_CASES = {
    "markdown_table short row": (
        lambda d: _markdown_table(["a", "b"], [["1"]]),
        ValueError,
        r"rows\[0\] must be a list of 2 strings \(one per column\), got \['1'\]$",
    ),
    "markdown_table long row": (
        lambda d: _markdown_table(["a"], [["1"], ["2", "3"]]),
        ValueError,
        r"rows\[1\] must be a list of 1 strings \(one per column\), got \['2', '3'\]$",
    ),
    "markdown_table row a string": (
        lambda d: _markdown_table(["a", "b"], ["xy"]),
        ValueError,
        r"rows\[0\] must be a list of 2 strings",
    ),
    "markdown_table int cell": (
        lambda d: _markdown_table(["a"], [[1]]),
        TypeError,
        r"rows\[0\] must hold strings, got int 1$",
    ),
    "markdown_table line break": (
        lambda d: _markdown_table(["a"], [["x\ny"]]),
        ValueError,
        r"rows\[0\] has a line break in a cell; a table row is one line$",
    ),
    "markdown_table head a string": (
        lambda d: _markdown_table("ab", []),
        TypeError,
        r"head must be a non-empty list of strings, got 'ab'$",
    ),
    "markdown_table no head": (
        lambda d: _markdown_table([], []),
        TypeError,
        r"head must be a non-empty list of strings, got \[\]$",
    ),
    "markdown_table rows None": (
        lambda d: _markdown_table(["a"], None),
        TypeError,
        r"rows must be a list of rows \(lists of strings\), got NoneType$",
    ),
    "markdown_table footer": (
        lambda d: _markdown_table(["a"], [], footer=3),
        TypeError,
        r"footer must be a string, got int$",
    ),
    "mean_objective unknown": (
        lambda d: _report().mean_objective("whiten"),
        ValueError,
        r"unknown objective 'whiten'; available: heldout_init, heldout_spectral, heldout_whiten, init, "
        r"spectral$",
    ),
    "mean_objective not a str": (
        lambda d: _report().mean_objective(None),
        ValueError,
        r"unknown objective None; available:",
    ),
    "save .txt": (
        lambda d: _report().save(d / "r.txt"),
        ValueError,
        r"path must end in .json, .csv, .md, got '.*r.txt'$",
    ),
    "save no suffix": (
        lambda d: _report().save(d / "sub" / "report"),
        ValueError,
        r"path must end in .json, .csv, .md, got '.*report'$",
    ),
    "save a directory": (
        lambda d: _report().save((d / "x.json").mkdir() or d / "x.json"),
        IsADirectoryError,
        r"path '.*x.json' is a directory; a file name is needed$",
    ),
    "save under a file": (
        lambda d: _report().save(_file_at(d, "f") / "r.md"),
        NotADirectoryError,
        r"path '.*f/r.md' cannot be created: '.*f' is a file$",
    ),
    "save not a path": (
        lambda d: _report().save(3),
        TypeError,
        r"path must be a str or os.PathLike, got int$",
    ),
}


@pytest.mark.parametrize("case", REPORT_CASES.values(), ids=REPORT_CASES.keys())
def test_report_bad_input_writes_nothing(case, tmp_path):
    call, error, message = case
    _check(lambda: call(tmp_path), error, message)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left in ([], ["x.json"], ["f"]), left  # only what the case itself made


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_report_save_unwritable_is_one_line_and_writes_nothing(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        _check(lambda: _report().save(locked / "r.json"), PermissionError, r"path '.*r.json' is not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_report_valid_input_unchanged(tmp_path):
    """The checks leave valid input alone: a table as before (a '|' in a cell escaped), every suffix saved."""
    assert _markdown_table(["a", "b"], [["1", "x|y"]], "f") == "| a | b |\n|---|---|\n| 1 | x\\|y |\n\nf\n"
    report = _report()
    assert math.isnan(report.mean_objective("heldout_whiten"))
    for suffix in (".json", ".csv", ".md"):
        assert report.save(tmp_path / "new" / f"r{suffix}").is_file()


# ---------------------------------------------------------------------------------------------------------
# nlinit.experiments.retrieval: pair_from_docstring / docstring_pairs / calibration_paragraphs (negative,
# float or crossed character bounds: silent empty results or a raw slice error; non-str module names: a
# silent []), retrieval_metrics (NaN or zero embeddings: a silent perfect score; a list: a raw error).

from nlinit.experiments import retrieval as RT  # noqa: E402

DOC = "A long enough summary line.\n\n" + "word " * 40
ONES32 = torch.ones(3, 2)

RETRIEVAL_CASES = {
    "pair_from_docstring doc int": (
        lambda: RT.pair_from_docstring(3),
        TypeError,
        r"doc must be a str or None, got int$",
    ),
    "pair_from_docstring min negative": (
        lambda: RT.pair_from_docstring(DOC, min_document_chars=-1),
        ValueError,
        r"min_document_chars must be an int >= 0, got -1$",
    ),
    "pair_from_docstring max 0": (
        lambda: RT.pair_from_docstring(DOC, max_document_chars=0),
        ValueError,
        r"max_document_chars must be an int >= 40, got 0$",
    ),
    "pair_from_docstring max float": (
        lambda: RT.pair_from_docstring(DOC, max_document_chars=100.5),
        ValueError,
        r"max_document_chars must be an int >= 40, got 100.5$",
    ),
    "pair_from_docstring max below min": (
        lambda: RT.pair_from_docstring(DOC, min_document_chars=50, max_document_chars=49),
        ValueError,
        r"max_document_chars must be an int >= 50, got 49$",
    ),
    "docstring_pairs int names": (
        lambda: RT.docstring_pairs([1]),
        TypeError,
        r"modules must be module names \(non-empty strings\), got 1$",
    ),
    "docstring_pairs not a list": (
        lambda: RT.docstring_pairs(3),
        TypeError,
        r"modules must be a list of module names or None, got int$",
    ),
    "docstring_pairs a string": (
        lambda: RT.docstring_pairs("json"),
        TypeError,
        r"modules must be a list of module names, got the string 'json'$",
    ),
    "docstring_pairs min bool": (
        lambda: RT.docstring_pairs(["json"], min_document_chars=True),
        ValueError,
        r"min_document_chars must be an int >= 0, got True$",
    ),
    "docstring_pairs max below min": (
        lambda: RT.docstring_pairs(["json"], min_document_chars=100, max_document_chars=50),
        ValueError,
        r"max_document_chars must be an int >= 100, got 50$",
    ),
    "calibration_paragraphs 0": (
        lambda: RT.calibration_paragraphs(0),
        ValueError,
        r"count must be an int in \[1, \d+\] \(paragraphs available\), got 0$",
    ),
    "calibration_paragraphs float": (
        lambda: RT.calibration_paragraphs(2.0),
        ValueError,
        r"count must be an int in \[1, \d+\] \(paragraphs available\), got 2.0$",
    ),
    "calibration_paragraphs too many": (
        lambda: RT.calibration_paragraphs(10**9),
        ValueError,
        r"count must be an int in \[1, \d+\] \(paragraphs available\), got 1000000000$",
    ),
    "calibration_paragraphs min_chars": (
        lambda: RT.calibration_paragraphs(2, min_chars=-3),
        ValueError,
        r"min_chars must be an int >= 0, got -3$",
    ),
    "calibration_paragraphs max_chars": (
        lambda: RT.calibration_paragraphs(2, max_chars=0),
        ValueError,
        r"max_chars must be an int >= 200, got 0$",
    ),
    "calibration_paragraphs max_chars float": (
        lambda: RT.calibration_paragraphs(2, max_chars=500.5),
        ValueError,
        r"max_chars must be an int >= 200, got 500.5$",
    ),
    "retrieval_metrics shapes": (
        lambda: RT.retrieval_metrics(ONES32, torch.ones(2, 2)),
        ValueError,
        r"queries and documents must be \(n, d\) embeddings of the same shape with n >= 1, got \(3, 2\) and "
        r"\(2, 2\)$",
    ),
    "retrieval_metrics widths": (
        lambda: RT.retrieval_metrics(ONES32, torch.ones(3, 4)),
        ValueError,
        r"queries and documents must be \(n, d\) embeddings .* got \(3, 2\) and \(3, 4\)$",
    ),
    "retrieval_metrics 1-D": (
        lambda: RT.retrieval_metrics(torch.ones(3), torch.ones(3)),
        ValueError,
        r"queries and documents must be \(n, d\) embeddings .* got \(3,\) and \(3,\)$",
    ),
    "retrieval_metrics empty": (
        lambda: RT.retrieval_metrics(torch.ones(0, 2), torch.ones(0, 2)),
        ValueError,
        r"queries and documents must be \(n, d\) embeddings .* got \(0, 2\) and \(0, 2\)$",
    ),
    "retrieval_metrics width 0": (
        lambda: RT.retrieval_metrics(torch.ones(2, 0), torch.ones(2, 0)),
        ValueError,
        r"queries and documents must be \(n, d\) embeddings .* got \(2, 0\) and \(2, 0\)$",
    ),
    "retrieval_metrics NaN queries": (
        lambda: RT.retrieval_metrics(torch.full((3, 2), NAN), ONES32),
        ValueError,
        r"queries has 6 non-finite \(NaN or Inf\) entries",
    ),
    "retrieval_metrics Inf documents": (
        lambda: RT.retrieval_metrics(ONES32, torch.tensor([[1.0, 0.0], [INF, 1.0], [0.0, 1.0]])),
        ValueError,
        r"documents has 1 non-finite \(NaN or Inf\) entries",
    ),
    "retrieval_metrics zero row": (
        lambda: RT.retrieval_metrics(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.eye(2)),
        ValueError,
        r"queries row 1 is all zeros; cosine similarity needs nonzero embeddings$",
    ),
    "retrieval_metrics bool": (
        lambda: RT.retrieval_metrics(torch.eye(2, dtype=torch.bool), torch.eye(2)),
        TypeError,
        r"queries must be a real tensor, got dtype torch.bool$",
    ),
    "retrieval_metrics list": (
        lambda: RT.retrieval_metrics([[1.0]], torch.ones(1, 1)),
        TypeError,
        r"queries must be a torch.Tensor, got list$",
    ),
}


@pytest.mark.parametrize("case", RETRIEVAL_CASES.values(), ids=RETRIEVAL_CASES.keys())
def test_retrieval_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.allocate.rank_costs: positions per layer (missing, 0, float, bool), and positions not a mapping
# (a raw AttributeError).

from nlinit import allocate as A  # noqa: E402

SHAPES = {"a": (2, 3), "b": (4, 5)}

RANK_COSTS_CASES = {
    "uniform_allocate costs not a mapping": (
        lambda: A.uniform_allocate(SHAPES, budget=100, costs=[5, 9]),
        TypeError,
        r"costs must be a mapping \{layer: cost per rank\}, got list$",
    ),
    "uniform_allocate cost 0": (
        lambda: A.uniform_allocate(SHAPES, budget=100, costs={"a": 0, "b": 9}),
        ValueError,
        r"cost of layer 'a' must be a positive int, got 0$",
    ),
    "uniform_allocate budget below rank 1 in MACs": (
        lambda: A.uniform_allocate(SHAPES, budget=10, costs={"a": 5, "b": 90}),
        ValueError,
        r"budget must be at least 95 cost units \(rank 1 in each of the 2 layers\), got 10$",
    ),
    "stable_rank_allocate cost missing": (
        lambda: A.stable_rank_allocate({"a": 1.0, "b": 1.0}, SHAPES, 100, costs={"a": 5}),
        ValueError,
        r"cost of layer 'b' must be a positive int, got None$",
    ),
    "positions missing": (
        lambda: A.rank_costs(SHAPES, {"a": 4}),
        ValueError,
        r"positions of layer 'b' must be a positive int, got None$",
    ),
    "positions 0": (
        lambda: A.rank_costs(SHAPES, {"a": 0, "b": 1}),
        ValueError,
        r"positions of layer 'a' must be a positive int, got 0$",
    ),
    "positions float": (
        lambda: A.rank_costs(SHAPES, {"a": 1, "b": 2.0}),
        ValueError,
        r"positions of layer 'b' must be a positive int, got 2.0$",
    ),
    "positions bool": (
        lambda: A.rank_costs(SHAPES, {"a": True, "b": 1}),
        ValueError,
        r"positions of layer 'a' must be a positive int, got True$",
    ),
    "positions None": (
        lambda: A.rank_costs(SHAPES, None),
        TypeError,
        r"positions must be a mapping \{layer: positions per input\}, got NoneType$",
    ),
    "positions a list": (
        lambda: A.rank_costs(SHAPES, [1, 2]),
        TypeError,
        r"positions must be a mapping \{layer: positions per input\}, got list$",
    ),
}


@pytest.mark.parametrize("case", RANK_COSTS_CASES.values(), ids=RANK_COSTS_CASES.keys())
def test_rank_costs_bad_input(case):
    _check(*case)


# ---------------------------------------------------------------------------------------------------------
# nlinit.sequential.asymmetric_target (compress(sequential=True)'s regression target)

E6 = torch.eye(6, dtype=torch.float64)
Z6 = torch.zeros(6, dtype=torch.float64)
ASYMMETRIC_CASES = {
    "W 1-D": (
        lambda: SQ.asymmetric_target(Z6, None, Z6, Z6, E6, E6),
        ValueError,
        r"W must be a 2-D \(d_out, d_in\) matrix, got shape \(6,\)$",
    ),
    "bias shape": (
        lambda: SQ.asymmetric_target(W64, Z6, Z6, Z6, E6, E6),
        ValueError,
        r"bias must be a floating-point \(8,\) tensor for a 8x6 W, got \(6,\)$",
    ),
    "mean_hat list": (
        lambda: SQ.asymmetric_target(W64, None, Z6, [0.0] * 6, E6, E6),
        ValueError,
        r"mean_hat must be a floating-point \(6,\) tensor for a 8x6 W, got list$",
    ),
    "cross NaN": (
        lambda: SQ.asymmetric_target(W64, None, Z6, Z6, torch.full((6, 6), NAN, dtype=torch.float64), E6),
        ValueError,
        r"cross has 36 non-finite",
    ),
    "cov_hat shape": (
        lambda: SQ.asymmetric_target(W64, None, Z6, Z6, E6, torch.eye(5, dtype=torch.float64)),
        ValueError,
        r"cov_hat must be a floating-point \(6, 6\) tensor for a 8x6 W, got \(5, 5\)$",
    ),
    "cov_hat asymmetric": (
        lambda: SQ.asymmetric_target(W64, None, Z6, Z6, E6, torch.triu(E6 + 1)),
        ValueError,
        r"cov must be symmetric, got max \|cov - cov\^T\| = 1$",
    ),
}


@pytest.mark.parametrize("case", sorted(ASYMMETRIC_CASES))
def test_asymmetric_target_bad_input(case):
    _check(*ASYMMETRIC_CASES[case])


# ---------------------------------------------------------------------------------------------------------
# nlinit.experiments.compress_table: grid_stats (statistics once per grid) and commands (commands.txt)

GRID_STATS_CASES = {
    "model not a module": (
        lambda: CT.grid_stats("resnet20", torch.ones(2, 6), 0),
        TypeError,
        r"model must be a torch.nn.Module, got str$",
    ),
    "seed negative": (
        lambda: CT.grid_stats(torch.nn.Linear(6, 4), torch.ones(2, 6), -1),
        ValueError,
        r"seed must be an int >= 0, got -1$",
    ),
    "seed float": (
        lambda: CT.grid_stats(torch.nn.Linear(6, 4), torch.ones(2, 6), 0.5),
        ValueError,
        r"seed must be an int",
    ),
    "no layer": (
        lambda: CT.grid_stats(torch.nn.ReLU(), torch.ones(2, 6), 0),
        ValueError,
        r"model has no Linear or Conv2d layer to collect statistics for \(ReLU\)$",
    ),
    "NaN calibration": (
        lambda: CT.grid_stats(torch.nn.Linear(6, 4), torch.full((2, 6), NAN), 0),
        ValueError,
        r".*non-finite",
    ),
}


GRID_SHARD_CASES = {
    "run_grid shard past the end": (
        lambda: CT.run_grid([], [0.5], ["svd"], ["uniform"], lambda *c: {}, lambda row: None, shard=(1, 1)),
        ValueError,
        r"shard must be i/n with 0 <= i < n, got \(1, 1\)$",
    ),
    "run_grid shard a string": (
        lambda: CT.run_grid([], [0.5], ["svd"], ["uniform"], lambda *c: {}, lambda row: None, shard="0/1"),
        ValueError,
        r"shard must be i/n with 0 <= i < n, got '0/1'$",
    ),
    "parse_shard no slash": (
        lambda: parse_shard("2", name="--shard"),
        ValueError,
        r"--shard must look like i/n \(e.g. 0/4\), got '2'$",
    ),
    "parse_shard negative": (
        lambda: parse_shard("-1/2"),
        ValueError,
        r"shard must look like i/n \(e.g. 0/4\), got '-1/2'$",
    ),
    "parse_shard i = n": (
        lambda: parse_shard("3/3"),
        ValueError,
        r"shard must be i/n with 0 <= i < n, got \(3, 3\)$",
    ),
}


def test_merge_rows_row_without_its_cell_writes_nothing(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("method,allocate,budget\nsvd,uniform,0.5\n")
    good = {"method": "whiten", "allocate": "uniform", "budget": 0.5}
    _check(
        lambda: CT.merge_rows(
            path, [good, {"method": "svd", "budget": 0.3}], ["method", "allocate", "budget"]
        ),
        ValueError,
        r"a grid row needs method, allocate and budget, got one without allocate: ",
    )
    assert path.read_text() == "method,allocate,budget\nsvd,uniform,0.5\n"


@pytest.mark.parametrize("case", sorted(GRID_SHARD_CASES))
def test_grid_shard_bad_input(case):
    _check(*GRID_SHARD_CASES[case])


@pytest.mark.parametrize("case", sorted(GRID_STATS_CASES))
def test_grid_stats_bad_input(case):
    _check(*GRID_STATS_CASES[case])


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("", r"command must be a non-empty one-line string, got ''$"),
        ("   ", r"command must be a non-empty one-line string, got '   '$"),
        ("a\nb", r"command must be a non-empty one-line string, got 'a\\nb'$"),
        (None, r"command must be a non-empty one-line string, got None$"),
    ],
)
def test_grid_commands_bad_command_writes_nothing(tmp_path, command, message):
    (tmp_path / "commands.txt").write_text("first\n")
    _check(lambda: CT.commands(tmp_path, command), ValueError, message)
    assert (tmp_path / "commands.txt").read_text() == "first\n"


def test_grid_commands_out_not_a_directory_writes_nothing(tmp_path):
    _check(lambda: CT.commands(tmp_path / "none", "cmd"), ValueError, r"out must be an existing directory")
    assert not (tmp_path / "none").exists()


def test_grid_commands_lists_every_command_once_in_order(tmp_path):
    assert CT.commands(tmp_path, "a --x") == "Command: `a --x`"
    assert CT.commands(tmp_path, "b") == "Commands (in order): `a --x`; `b`"
    assert CT.commands(tmp_path, "a --x") == "Commands (in order): `a --x`; `b`"  # repeated: once
    assert (tmp_path / "commands.txt").read_text() == "a --x\nb\n"
