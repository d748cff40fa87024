"""Statistics without the input covariance (collect_stats(input_cov=False)): where d_out < d_in only the
outputs' covariance W Sigma W^T is measured; the whitened solvers give the same factors from it, the report's
objectives come from the outputs' coordinates (exactly the Gaussian objective), and whatever needs Sigma
itself says so in one line."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import layer_function_case, seeded, weight
from torch import Tensor, nn

from nlinit.activations import Activation
from nlinit.calibration import LayerStats, collect_stats
from nlinit.factorize import factorize
from nlinit.inits import INITS, get_init, init_factors
from nlinit.layer_function import (
    LayerFunction,
    relative_objectives,
    row_space_coefficients,
    to_whitened,
    whitened_problem,
    whitener,
)
from nlinit.objective import nlra_loss, normalized_loss

F64 = torch.float64


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def net() -> nn.Module:
    """Narrowing and widening layers: a 3 x 3 conv 3 -> 8 (d_in 27 > 8), a 1 x 1 conv 8 -> 16 (widening), a
    3 x 3 conv 16 -> 8 with a BatchNorm, a Linear 128 -> 12 and a Linear 12 -> 20 (widening)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1),
        nn.ReLU(),
        nn.Conv2d(16, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 20),
    ).eval()


LAYERS = ["0", "2", "4", "8", "10"]
NARROWING = {"0": True, "2": False, "4": True, "8": True, "10": False}


def images(generator: torch.Generator, n: int = 24) -> Tensor:
    return torch.randn(n, 3, 8, 8, generator=generator) + 0.2


def channel(module: nn.Module) -> Tensor:
    return module.weight.detach().reshape(module.weight.shape[0], -1)


# --------------------------------------------------------------------------------------------------------
# collect_stats(input_cov=False)


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_only_narrowing_layers_skip_the_second_moment(generator, p) -> None:
    """second is None exactly where out_cov is measured; every other field is what input_cov=True gives
    (the same reservoirs and counts, the same out_cov); the mean is over every patch, so with positions < 1
    it is the exact mean of collect_stats(positions=1), not the kept patches' mean."""
    model, x = net(), images(generator)
    kwargs = {"samples": 6, "heldout": 4, "positions": p}
    full = collect_stats(model, LAYERS, x, generator=seeded(1), **kwargs)
    part = collect_stats(model, LAYERS, x, generator=seeded(1), input_cov=False, **kwargs)
    exact = collect_stats(model, LAYERS, x, generator=seeded(1), heldout=4)
    for name in LAYERS:
        a, b = full[name], part[name]
        assert (b.second is None) == NARROWING[name] == (b.out_cov is not None)
        assert (b.cov is None) == NARROWING[name]
        assert b.count == a.count
        for field in ("samples", "heldout", "abs_mean", "out_cov"):
            got, want = getattr(b, field), getattr(a, field)
            assert (got is None and want is None) or torch.equal(got, want), field
        if NARROWING[name]:  # float64 sums of the same float32 values in another order: ~1e-16 relative
            assert rel(b.mean, exact[name].mean) < 1e-12
        else:
            assert torch.equal(b.second, a.second) and torch.equal(b.mean, a.mean)


def test_layer_stats_needs_second_or_out_cov() -> None:
    with pytest.raises(ValueError, match=re.escape("LayerStats.second may be None only with out_cov given")):
        LayerStats(count=3, mean=torch.zeros(4, dtype=F64), second=None)
    stats = LayerStats(count=3, mean=torch.zeros(4, dtype=F64), second=None, out_cov=torch.eye(2, dtype=F64))
    fn = LayerFunction.from_stats(stats)
    assert stats.cov is None and fn.cov is None and fn.cov_unmeasured and not fn.is_plain


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_cov": "no"}, "input_cov must be a bool, got 'no'"),
        ({"input_cov": False, "outputs": False}, "input_cov=False needs outputs=True"),
    ],
)
def test_bad_input_cov_is_one_line(kwargs, message) -> None:
    model = nn.Sequential(nn.Linear(5, 2))
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        collect_stats(model, ["0"], torch.randn(4, 5), **kwargs)
    assert "\n" not in str(info.value)
    assert not model[0]._forward_pre_hooks and not model[0]._forward_hooks


# --------------------------------------------------------------------------------------------------------
# Solvers: the same factors without Sigma


SIGMA_FREE = sorted(n for n, info in INITS.items() if info.uses_function and not info.needs_cov)


def test_the_registry_says_which_inits_read_sigma() -> None:
    """lfai maps its random start through L itself; every other data-aware init reads W Sigma W^T only."""
    assert [n for n, info in INITS.items() if info.needs_cov] == ["lfai"]
    assert {"whiten", "relu-svd", "nlra-opt", "lfai-ws", "lfai-data"} <= set(SIGMA_FREE)


@pytest.mark.parametrize("init", ["whiten", "relu-svd", "nlra-opt", "lfai-ws", "lfai-data", "asvd"])
@pytest.mark.parametrize("name", ["4", "8"])
def test_sigma_free_statistics_give_the_same_factors(generator, init, name) -> None:
    """The whitened solvers read K = diag(s) out_cov diag(s) either way (with Sigma after a check that
    passes), so the factors and bias are bit for bit the same; lfai-ws / lfai-data are seeded alike."""
    model, x = net(), images(generator, 40)
    full = collect_stats(model, [name], x, samples=32, heldout=16, generator=seeded(2))[name]
    part = collect_stats(model, [name], x, samples=32, heldout=16, generator=seeded(2), input_cov=False)[name]
    layer = model.get_submodule(name)
    W = channel(layer)
    options = {"max_epochs": 2} if init.startswith("lfai") else {}
    got = [
        init_factors(
            W,
            2,
            init,
            "relu",
            function=LayerFunction.from_stats(s, bias=layer.bias),
            generator=seeded(3),
            **options,
        )
        for s in (full, part)
    ]
    assert torch.equal(got[0].U, got[1].U) and torch.equal(got[0].V, got[1].V)
    assert torch.equal(got[0].bias, got[1].bias)


def test_what_needs_sigma_says_so() -> None:
    """lfai's random start, to_whitened and a widening layer's whitened problem need Sigma: one line each."""
    W = weight(0, 4, 10)
    fn = layer_function_case(0, 4, 10)
    blind = LayerFunction(mean=fn.mean, bias=fn.bias, out_cov=W @ fn.cov @ W.T)
    with pytest.raises(ValueError, match=r"L = Sigma W\^T M needs the input covariance Sigma") as info:
        init_factors(W, 2, "lfai", "relu", function=blind, max_epochs=1)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="to_whitened needs the input covariance Sigma"):
        to_whitened(W, blind, whitener(None, 10))
    wide = LayerFunction(out_cov=torch.eye(10, dtype=F64))
    with pytest.raises(ValueError, match=r"the whitened problem of a 10x4 layer \(d_in <= d_out\) needs"):
        whitened_problem(weight(0, 10, 4), wide)


# --------------------------------------------------------------------------------------------------------
# Objectives in the outputs' coordinates


def _blind(fn: LayerFunction, W: Tensor) -> LayerFunction:
    """fn without Sigma, with its exact out_cov = W Sigma W^T."""
    K = W @ fn.cov @ W.T
    return LayerFunction(mean=fn.mean, bias=fn.bias, scale=fn.scale, shift=fn.shift, out_cov=(K + K.T) / 2)


@pytest.mark.parametrize("act", ["relu", "gelu", "identity"])
@pytest.mark.parametrize("bn", [True, False])
def test_relative_objectives_on_outputs_equal_the_gaussian_ones(act, bn) -> None:
    """For candidates with rows in W's row space (whiten, relu-svd, a plain SVD, W itself) the objective is a
    function of W x alone: the same value from out_cov as from Sigma, to float64 rounding through a
    least-squares solve (K's condition ~1e2 here: 1e-9 is loose). A random V (rows off the row space) gets
    None, the rest of the list is still computed."""
    W = weight(1, 6, 15)
    fn = layer_function_case(1, 6, 15, bn=bn)
    cands = []
    for init in ("whiten", "relu-svd"):
        f = init_factors(W, 3, init, act, function=fn)
        cands.append((f.U, f.V, f.bias))
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    cands.append((U[:, :2] * S[:2], Vh[:2].T, None))
    cands.append((torch.eye(6, dtype=F64), W.T.clone(), fn.bias))  # Y = W: R = 0
    cands.append((torch.randn(6, 2, dtype=F64, generator=seeded(4)), weight(5, 15, 2), None))
    want = relative_objectives(W, cands, Activation(act), fn)
    got = relative_objectives(W, cands, Activation(act), _blind(fn, W))
    assert got[-1] is None and want[-1] is not None
    for g, w in zip(got[:-1], want[:-1]):
        assert g is not None and w is not None
        assert abs(g - w) <= 1e-9 * max(abs(w), 1e-3)
    assert abs(got[3]) < 1e-12


@settings(max_examples=25, deadline=None)
@given(
    d_out=st.integers(1, 6),
    extra=st.integers(1, 8),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_row_space_coefficients(d_out, extra, k, seed) -> None:
    """M = W^T B0 is recovered (W^T B = M to rounding); M plus a component orthogonal to W's rows of
    relative size 1e-3 (100x the tolerance) is refused."""
    d_in = d_out + extra
    W = weight(seed, d_out, d_in)
    B0 = torch.randn(d_out, k, dtype=F64, generator=seeded(seed + 1))
    M = W.T @ B0
    B = row_space_coefficients(W, M)
    assert B is not None and B.shape == (d_out, k)
    assert rel(W.T @ B, M) < 1e-9
    Q, _ = torch.linalg.qr(W.T, mode="complete")
    off = Q[:, d_out:] @ torch.randn(extra, k, dtype=F64, generator=seeded(seed + 2))  # orthogonal to rows
    if float(M.norm()) > 1e-6:
        assert row_space_coefficients(W, M + 1e-3 * off * M.norm() / off.norm()) is None


def test_row_space_coefficients_bad_input() -> None:
    with pytest.raises(ValueError, match=re.escape("M must have 5 rows (W's columns), got shape (4, 2)")):
        row_space_coefficients(torch.randn(3, 5), torch.randn(4, 2))


# --------------------------------------------------------------------------------------------------------
# factorize: collects what the init needs, reports the same objectives


@pytest.mark.parametrize("init", ["relu-svd", "whiten"])
def test_factorize_without_sigma_matches_factorize_with_it(generator, init) -> None:
    """factorize(calibration=...) collects no Sigma for the narrowing layers of a relu-svd / whiten call;
    the same call on statistics with Sigma (stats=..., same seed) gives the same layers bit for bit and the
    same report objectives: from out_cov the float32 layer's V is projected onto W's row space, dropping its
    rounding (~6e-8 relative) that the objective from Sigma sees: agreement to ~1e-8, 1e-6 leaves a margin."""
    model, x = net(), images(generator, 40)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    names = ["0", "2", "4", "8"]
    rep_a = factorize(a, rank_scale=0.5, init=init, calibration=[x], factorize_stem=True, include=names)
    stats = collect_stats(model, names, [x], samples=512, heldout=512, generator=seeded(0))
    rep_b = factorize(b, rank_scale=0.5, init=init, stats=stats, factorize_stem=True, include=names)
    for ra, rb in zip(rep_a.layers, rep_b.layers):
        assert ra.name == rb.name and ra.factorized == rb.factorized
        if not ra.factorized:
            continue
        for field in ("objective_init", "objective_spectral"):
            va, vb = getattr(ra, field), getattr(rb, field)
            assert va is not None and abs(va - vb) <= 1e-6 * max(abs(vb), 1e-3), (ra.name, field)
        for field in ("heldout_init", "heldout_spectral", "heldout_whiten"):
            assert getattr(ra, field) == getattr(rb, field)
    for name in names:
        la, lb = a.get_submodule(name), b.get_submodule(name)
        assert torch.equal(la.U, lb.U) and torch.equal(la.V, lb.V)


def test_normalized_objective_on_outputs() -> None:
    """The scale-free objective (train-mode BatchNorm) of Y = B^T W from out_cov equals the one from Sigma."""
    W = weight(2, 5, 12)
    fn = layer_function_case(2, 5, 12, bn=False)
    Y = (torch.linalg.svd(W, full_matrices=False).U[:, :2] @ torch.randn(2, 5, dtype=F64)) @ W
    want = normalized_loss(W, Y, "relu", relative=True, cov=fn.cov)
    B = row_space_coefficients(W, Y.T)
    K = W @ fn.cov @ W.T
    got = normalized_loss(torch.eye(5, dtype=F64), B.T, "relu", relative=True, cov=(K + K.T) / 2)
    assert abs(float(got) - float(want)) < 1e-10


def test_lfai_keeps_sigma_in_factorize(generator) -> None:
    """factorize with init='lfai' (needs_cov) collects Sigma for every layer, so it runs."""
    model, x = net(), images(generator, 16)
    assert get_init("lfai").needs_cov
    report = factorize(model, rank_scale=0.5, init="lfai", calibration=[x], include=["8"], max_epochs=1)
    assert [r.name for r in report.layers if r.factorized] == ["8"]


def test_memory_without_the_second_moment(generator, monkeypatch) -> None:
    """A narrowing conv with input_cov=False holds 2 d_in + (K + K_h)(d_in + 1) + (d_out + 1)^2 float64
    numbers while collecting (no (d_in + kh)^2 Gram), and never pads a chunk without a reservoir."""
    from nlinit import calibration

    conv = nn.Conv2d(3, 5, (3, 2), padding=1)
    d, K, K_h, d_out = 3 * 3 * 2, 7, 4, 5
    streams: list = []
    padded: list[int] = []
    original_init, original_pad = calibration._LayerStream.__init__, calibration._ConvStream.pad

    def init(self, *args, **kwargs) -> None:
        original_init(self, *args, **kwargs)
        streams.append(self)

    def pad(self, x: Tensor) -> Tensor:
        padded.append(x.shape[0])
        return original_pad(self, x)

    monkeypatch.setattr(calibration._LayerStream, "__init__", init)
    monkeypatch.setattr(calibration._ConvStream, "pad", pad)
    x = torch.randn(20, 3, 8, 8, generator=generator)
    kwargs = {"input_cov": False, "generator": seeded(0)}
    collect_stats(nn.Sequential(conv), ["0"], [x], samples=K, heldout=K_h, **kwargs)
    stream = streams[-1]
    held = [stream.gram, stream.abs_sum, stream.total, stream.out_gram, stream.fit.keys, stream.fit.vectors]
    held += [stream.held.keys, stream.held.vectors]
    assert sum(t.numel() for t in held) == 2 * d + (K + K_h) * (d + 1) + (d_out + 1) ** 2
    padded.clear()
    collect_stats(nn.Sequential(conv), ["0"], [x], **kwargs)  # no reservoir: only the image sums are padded
    assert padded and all(n == 1 for n in padded)


# --------------------------------------------------------------------------------------------------------
# Held-out objectives from the factors


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
@pytest.mark.parametrize("bn", [True, False])
def test_relative_objectives_on_samples_equal_nlra_loss(act, bn) -> None:
    """relative_objectives(samples=X) is nlra_loss(samples=X, relative=True) per candidate, W x formed once:
    the same sums in float64 in another order (1e-12 relative), for any activation (tanh has no exact
    Gaussian objective, and needs none here)."""
    W = weight(3, 7, 12)
    fn = layer_function_case(3, 7, 12, bn=bn)
    X = torch.randn(300, 12, dtype=F64, generator=seeded(5)) + 0.4
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    cands = [
        (U[:, :3] * S[:3], Vh[:3].T, None),
        (torch.randn(7, 2, dtype=F64, generator=seeded(6)), weight(7, 12, 2), 0.1 * torch.ones(7, dtype=F64)),
    ]
    got = relative_objectives(W, cands, Activation(act), fn, samples=X)
    s = fn.scale if fn.scale is not None else torch.ones(7, dtype=F64)
    t = fn.shift if fn.shift is not None else torch.zeros(7, dtype=F64)
    for value, (Uc, Vc, b) in zip(got, cands):
        offset_y = s * (b if b is not None else torch.zeros(7, dtype=F64)) + t
        want = nlra_loss(
            W, Uc @ Vc.T, act, relative=True, samples=X, scale=s, offset=fn.offset(W), offset_y=offset_y
        )
        assert value is not None and abs(value - float(want)) <= 1e-12 * float(want)


def test_relative_objectives_samples_must_fit_w() -> None:
    W = weight(0, 3, 5)
    with pytest.raises(ValueError, match=re.escape("samples must be an (N >= 1, 5) tensor for a 3x5 W, got")):
        relative_objectives(W, [], Activation("relu"), LayerFunction(), samples=torch.randn(4, 6))
