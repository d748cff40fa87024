"""Calibration statistics: exact moments against unfolded inputs, reservoirs, held-out split, bad input."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import seeded
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from nlinit import calibration
from nlinit.calibration import GEMM_BLOCK, LayerStats, collect_stats
from nlinit.layers import LowRankConv2d

# float64 sums of a few thousand float64 products: rounding ~1e-16 per term, so 1e-12 relative is loose
EXACT = 1e-12


def rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def patches(conv: nn.Conv2d, inputs: list[Tensor]) -> Tensor:
    """The reference: every patch the conv meets, (N, c_in kh kw) float64, via ConvGeometry.pad + F.unfold."""
    geometry = LowRankConv2d.like(conv, 1).geometry
    rows = []
    for x in inputs:
        x = x if x.dim() == 4 else x.unsqueeze(0)
        xp, padding = geometry.pad(x.double())
        U = F.unfold(xp, conv.kernel_size, conv.dilation, padding, conv.stride)  # (n, d, L)
        rows.append(U.transpose(1, 2).reshape(-1, U.shape[1]))
    return torch.cat(rows)


def assert_moments(stats: LayerStats, X: Tensor, tol: float = EXACT, every: Tensor | None = None) -> None:
    """stats are the count, mean, second moment and mean |x| of the rows of X (float64); the mean |x| of
    ``every``'s rows when given (with positions < 1, abs_mean is over every patch)."""
    assert stats.count == X.shape[0]
    assert stats.mean.dtype == stats.second.dtype == torch.float64
    assert rel(stats.mean, X.mean(0)) < tol
    A = X if every is None else every
    assert stats.abs_mean is not None and rel(stats.abs_mean, A.abs().mean(0)) < tol
    assert rel(stats.second, X.T @ X / X.shape[0]) < tol
    assert torch.equal(stats.second, stats.second.T)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------------------------------------
# Exact moments


CONVS = [
    # (kernel, stride, padding, dilation, padding_mode)
    ((3, 3), 1, 1, 1, "zeros"),
    ((3, 3), 2, 1, 1, "zeros"),
    ((1, 1), 1, 0, 1, "zeros"),
    ((1, 1), 2, 0, 1, "zeros"),
    ((3, 3), 1, 0, 2, "zeros"),
    ((5, 5), 3, 2, 1, "zeros"),
    ((2, 3), (2, 1), (1, 0), (1, 2), "zeros"),
    ((3, 3), 1, 1, 1, "reflect"),
    ((3, 3), 2, 2, 1, "circular"),
    ((3, 3), 1, 2, 2, "replicate"),
    ((3, 4), 1, "same", (2, 1), "zeros"),
    ((3, 4), 1, "same", 1, "reflect"),
    ((3, 3), 1, "valid", 1, "zeros"),
    ((7, 7), 2, 3, 1, "zeros"),  # a ResNet stem
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note on speed
@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "mode"), CONVS)
def test_conv_moments_equal_unfolded_patches(generator, kernel, stride, padding, dilation, mode) -> None:
    conv = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, padding_mode=mode)
    inputs = [torch.randn(5, 3, 13, 11, generator=generator), torch.randn(2, 3, 13, 11, generator=generator)]
    model = nn.Sequential(conv)
    stats = collect_stats(model, ["0"], inputs)["0"]
    assert stats.d_in == 3 * math.prod(conv.kernel_size)
    assert_moments(stats, patches(conv, inputs))
    assert no_hooks(model)


@given(
    seed=st.integers(0, 2**31 - 1),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    mode=st.sampled_from(["zeros", "reflect", "circular", "replicate"]),
    max_elements=st.sampled_from([1, 200, calibration.DEFAULT_MAX_ELEMENTS]),
)
def test_conv_moments_any_geometry(seed, kernel, stride, padding, dilation, mode, max_elements) -> None:
    """Any conv geometry and any chunk bound: the moments of the unfolded patches, exactly."""
    conv = nn.Conv2d(2, 3, kernel, stride=stride, padding=padding, dilation=dilation, padding_mode=mode)
    x = torch.randn(3, 2, 9, 10, generator=seeded(seed))
    try:
        conv(x)
    except RuntimeError:
        return  # a geometry the conv itself refuses (reflect padding wider than the input, ...)
    stats = collect_stats(nn.Sequential(conv), ["0"], [x], max_elements=max_elements)["0"]
    assert_moments(stats, patches(conv, [x]))


def test_linear_and_token_moments(generator) -> None:
    """A Linear's input vectors are its input's last dimension, whatever the leading dims."""
    model = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3))
    tokens = [torch.randn(4, 7, 6, generator=generator), torch.randn(2, 3, 6, generator=generator)]
    stats = collect_stats(model, ["0", "2"], tokens)
    X = torch.cat([t.reshape(-1, 6) for t in tokens]).double()
    assert_moments(stats["0"], X)
    with torch.no_grad():
        hidden = torch.cat([F.gelu(model[0](t)).reshape(-1, 5) for t in tokens]).double()
    assert_moments(stats["2"], hidden, tol=1e-6)  # the model's own float32 forward, recomputed
    assert list(stats) == ["0", "2"]


#: a seed, n <= 40 input rows, and any batching and chunking of them
BATCHING = {
    "seed": st.integers(0, 2**31 - 1),
    "n": st.integers(1, 40),
    "batch_size": st.integers(1, 17),
    "max_elements": st.integers(1, 50),
}


@given(d=st.integers(1, 6), **BATCHING)
def test_linear_stats_equal_from_samples(seed, n, d, batch_size, max_elements) -> None:
    """collect_stats over any batching and chunking = LayerStats.from_samples of all the inputs."""
    X = torch.randn(n, d, generator=seeded(seed))
    got = collect_stats(nn.Linear(d, 2), [""], X, batch_size=batch_size, max_elements=max_elements)[""]
    want = LayerStats.from_samples(X)
    assert got.count == want.count == n
    assert rel(got.mean, want.mean) < EXACT and rel(got.second, want.second) < EXACT
    eig = torch.linalg.eigvalsh(got.cov)
    assert eig.min() >= -1e-12 * max(1.0, float(eig.max()))  # a covariance is PSD (up to rounding)


def test_unbatched_conv_input_and_keyword_call(generator) -> None:
    """An unbatched (c, H, W) conv input and a Linear called as lin(input=x) are both collected."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.lin = nn.Conv2d(2, 3, 3), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(input=self.conv(x[0]).flatten()[:4])

    net = Net()
    x = torch.randn(1, 2, 5, 6, generator=generator)
    stats = collect_stats(net, ["conv", "lin"], [x])
    assert_moments(stats["conv"], patches(net.conv, [x[0]]))
    assert stats["lin"].count == 1


def test_float32_products_within_their_bound(generator) -> None:
    """precision="float32": each entry within gamma_B (|X|^T |X|) / N of the exact moment (B = GEMM_BLOCK,
    the float32 summation bound; float64 adds ~1e-16), on positive inputs whose errors do not cancel."""
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.rand(48, 4, 12, 12, generator=generator) + 0.5  # 6912 patches: more than one block
    stats = collect_stats(nn.Sequential(conv), ["0"], [x], precision="float32")["0"]
    X = patches(conv, [x])
    n, u = X.shape[0], 2.0**-24
    gamma = GEMM_BLOCK * u / (1 - GEMM_BLOCK * u) + 1e-13
    bound = gamma * (X.abs().T @ X.abs()) / n
    assert ((stats.second - X.T @ X / n).abs() <= bound).all()
    assert ((stats.mean - X.mean(0)).abs() <= gamma * X.abs().mean(0)).all()
    assert rel(stats.second, X.T @ X / n) > 0  # really float32 products (not silently float64)


def test_float64_model_uses_float64_products(generator) -> None:
    """A float64 input is never rounded to float32, whatever the precision."""
    lin = nn.Linear(5, 2).double()
    X = torch.randn(300, 5, generator=generator, dtype=torch.float64)
    stats = collect_stats(lin, [""], X, precision="float32")[""]
    assert_moments(stats, X)


# --------------------------------------------------------------------------------------------------------
# Memory: accumulators, results, chunks


def test_memory_bound_per_layer(generator, monkeypatch) -> None:
    """(d + kh)^2 + (K + K_h)(d + 1) float64 numbers while collecting; no chunk over max_elements."""
    conv = nn.Conv2d(3, 5, (3, 2), padding=1)
    model = nn.Sequential(conv)
    d, kh, K, K_h = 3 * 3 * 2, 3, 7, 4
    streams: list[Any] = []
    chunks: list[int] = []
    original_init = calibration._LayerStream.__init__
    original_moments = calibration._ConvStream._moments

    def init(self, *args, **kwargs) -> None:
        original_init(self, *args, **kwargs)
        streams.append(self)

    def moments(self, stream, xp, rows, groups, wo, keep) -> None:
        chunks.append(xp.shape[0])
        original_moments(self, stream, xp, rows, groups, wo, keep)

    monkeypatch.setattr(calibration._LayerStream, "__init__", init)
    monkeypatch.setattr(calibration._ConvStream, "_moments", moments)
    x = torch.randn(20, 3, 8, 8, generator=generator)
    per_image = 10 * max(3 * 10, 9 * (3 * 2 + 1))  # padded rows x max(padded image row, strips + ones)
    stats = collect_stats(model, ["0"], [x], samples=K, heldout=K_h, max_elements=3 * per_image)["0"]
    (stream,) = streams
    held = sum(t.numel() for t in (stream.gram, stream.fit.keys, stream.fit.vectors))
    held += stream.held.keys.numel() + stream.held.vectors.numel()
    assert held == (d + kh) ** 2 + (K + K_h) * (d + 1)
    assert all(t.dtype == torch.float64 for t in (stream.gram, stream.fit.vectors, stream.held.vectors))
    assert max(chunks) == 3 and sum(chunks) == 16  # 20 images, every 5th held out: 16 fit images
    kept = [stats.mean, stats.second, stats.samples, stats.heldout]
    assert sum(t.numel() for t in kept) == d * d + d + (K + K_h) * d


def test_chunk_bound_does_not_change_the_result(generator) -> None:
    """A 1-number chunk bound (one image / one row at a time) gives the default's moments and samples."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    x = torch.randn(9, 2, 8, 8, generator=generator)
    runs = [
        collect_stats(model, ["0", "3"], x, batch_size=4, samples=6, generator=seeded(1), max_elements=m)
        for m in (1, calibration.DEFAULT_MAX_ELEMENTS)
    ]
    for name in ("0", "3"):
        tiny, default = runs[0][name], runs[1][name]
        assert tiny.count == default.count
        assert rel(tiny.second, default.second) < EXACT and rel(tiny.mean, default.mean) < EXACT
        # the keys are drawn in stream order, and torch.rand's CPU sequence does not depend on the calls
        assert torch.equal(tiny.samples, default.samples)


# --------------------------------------------------------------------------------------------------------
# Reservoirs and the held-out split


def index_model(d: int = 3) -> nn.Module:
    """A Linear whose input row n is the model input row n (column 0 holds the sample index)."""
    return nn.Sequential(nn.Linear(d, 2))


def indexed(n: int, d: int = 3) -> Tensor:
    x = torch.randn(n, d, generator=seeded(n))
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


def test_reservoir_is_a_deterministic_subset(generator) -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(6, 2, 5, 5, generator=generator)
    X = patches(conv, [x])

    def run(seed: int, k: int) -> Tensor:
        stats = collect_stats(nn.Sequential(conv), ["0"], x, batch_size=4, samples=k, generator=seeded(seed))
        return stats["0"].samples

    first, again, other = run(0, 40), run(0, 40), run(1, 40)
    assert first.shape == (40, 18) and first.dtype == torch.float64
    assert torch.equal(first, again) and not torch.equal(first, other)
    match = (first[:, None] == X[None]).all(-1)  # (40, N): sample k is patch n
    assert match.any(1).all()  # every sample is one of the patches
    assert match.float().argmax(1).unique().numel() == 40  # no patch twice
    assert run(0, 1000).shape == (X.shape[0], 18)  # fewer vectors than K: all of them


def test_reservoir_is_uniform() -> None:
    """Each of N = 20 inputs lands in a K = 5 reservoir with probability 1/4; over R = 400 seeds its count is
    Binomial(400, 1/4) (mean 100, sd 8.66). All 20 counts within 4.5 sd fails with probability < 20 * 7e-6
    under uniformity (the seeds are fixed, so the test is deterministic); a sampler that favours early or
    late inputs, or one chunk of the stream, misses it by far."""
    x = indexed(20)
    batches = [x[:3], x[3:10], x[10:]]  # merges across uneven chunks
    counts = torch.zeros(20)
    for seed in range(400):
        kept = collect_stats(index_model(), ["0"], batches, samples=5, generator=seeded(seed))["0"].samples
        counts[kept[:, 0].long()] += 1
    assert counts.sum() == 400 * 5
    assert (counts - 100).abs().max() < 4.5 * math.sqrt(400 * 0.25 * 0.75)


def test_heldout_is_disjoint_from_fit_data() -> None:
    """Every 5th model-input sample is held out: its vectors are in no moment and no fit sample."""
    x = indexed(23)
    stats = collect_stats(index_model(), ["0"], x, batch_size=6, samples=100, heldout=100)["0"]
    index = torch.arange(23)
    assert_moments(stats, x[index % 5 != 4].double())
    assert stats.samples is not None and stats.heldout is not None
    assert sorted(stats.samples[:, 0].long().tolist()) == index[index % 5 != 4].tolist()
    assert sorted(stats.heldout[:, 0].long().tolist()) == [4, 9, 14, 19]


def test_heldout_conv_patches_come_from_heldout_images(generator) -> None:
    conv = nn.Conv2d(2, 3, 2)
    x = torch.randn(10, 2, 4, 4, generator=generator)
    x[:, 0] = torch.arange(10.0)[:, None, None]  # channel 0 of every patch holds its image's index
    stats = collect_stats(nn.Sequential(conv), ["0"], x, batch_size=3, heldout=50, heldout_every=3)["0"]
    assert stats.heldout is not None
    assert set(stats.heldout[:, 0].long().tolist()) == {2, 5, 8}
    assert stats.count == 7 * 9  # 7 fit images of 3 x 3 positions
    fit = torch.tensor([0, 1, 3, 4, 6, 7, 9])
    assert_moments(stats, patches(conv, [x[fit]]))


# --------------------------------------------------------------------------------------------------------
# Shared layers, batch formats


def test_shared_module_accumulates_every_call(generator) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(torch.relu(self.lin(x)))

    net = Twice()
    net.alias = net.lin  # one module under two names
    x = torch.randn(10, 4, generator=generator)
    stats = collect_stats(net, {"lin": net.lin, "alias": net.lin}, [x])
    with torch.no_grad():
        second_call = torch.relu(net.lin(x))
    assert_moments(stats["lin"], torch.cat([x, second_call]).double(), tol=1e-6)
    assert stats["alias"] is stats["lin"]


class SharedThenTail(nn.Module):
    """fc1, then lin called twice (one module), then a tail whose calls are counted."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.lin, self.tail = nn.Linear(5, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.tail_calls = 0

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(torch.relu(self.lin(torch.relu(self.fc1(x)))))
        self.tail_calls += 1
        return self.tail(torch.relu(h))


def full_forwards(monkeypatch) -> None:
    """collect_stats counts calls but never stops a forward."""
    monkeypatch.setattr(calibration._State, "count_call", lambda self, module, args, output: None)


@pytest.mark.parametrize("layers", [["fc1"], ["lin"], ["fc1", "lin"], ["lin", "tail"]])
@pytest.mark.parametrize("heldout", [0, 4])
def test_stopping_at_the_last_call_changes_no_statistic(generator, monkeypatch, layers, heldout) -> None:
    """Every forward after the first ends at the layers' last call (a shared layer: its second); the
    statistics, reservoirs and output covariances are those of full forwards, bit for bit."""
    net = SharedThenTail()
    batches = list(torch.randn(30, 5, generator=generator).split(7))
    kwargs = {"samples": 6, "heldout": heldout, "generator": torch.Generator().manual_seed(0)}
    cut = collect_stats(net, layers, batches, **kwargs)
    cut_tail = net.tail_calls
    with monkeypatch.context() as m:
        full_forwards(m)
        kwargs["generator"] = torch.Generator().manual_seed(0)
        full = collect_stats(net, layers, batches, **kwargs)
    forwards = net.tail_calls - cut_tail  # the full run: every forward reaches the tail
    assert forwards >= len(batches)
    assert cut_tail == (forwards if "tail" in layers else 1)  # only the counting forward reaches the tail
    for name in layers:
        for field in ("count", "mean", "second", "abs_mean", "samples", "heldout", "out_cov"):
            a, b = getattr(cut[name], field), getattr(full[name], field)
            assert (a is None and b is None) or (torch.equal(a, b) if isinstance(a, Tensor) else a == b)
    assert no_hooks(net)


class KeywordNet(nn.Module):
    """An HF-style model: called as model(**batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.proj = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.proj(self.embed(input_ids) * attention_mask[..., None])


def test_batch_formats(generator) -> None:
    """(x, y) from a DataLoader, a list of tensors, one tensor, dict batches, and the batches cap."""
    x = torch.randn(12, 3, generator=generator)
    lin = nn.Linear(3, 2)
    loader = DataLoader(TensorDataset(x, torch.zeros(12)), batch_size=5)
    for calib, kw in [(loader, {}), (list(x.split(5)), {}), (x, {"batch_size": 5})]:
        assert_moments(collect_stats(lin, [""], calib, **kw)[""], x.double())
        assert collect_stats(lin, [""], calib, batches=2, **kw)[""].count == 10

    net = KeywordNet()
    ids = torch.randint(0, 10, (6, 5), generator=generator)
    mask = torch.ones(6, 5)
    batch = {"input_ids": ids, "attention_mask": mask}
    stats = collect_stats(net, ["proj"], [batch], heldout=3, heldout_every=3)["proj"]
    with torch.no_grad():
        fit = net.embed(ids[[0, 1, 3, 4]]).reshape(-1, 4).double()
    assert_moments(stats, fit)


def test_model_mode_and_parameters_untouched(generator) -> None:
    """Statistics run the model as it is: an eval-mode model stays in eval mode with the same state."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collect_stats(model, ["0"], torch.randn(4, 1, 6, 6, generator=generator))
    assert not model.training and no_hooks(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------------------------
# LayerStats


def test_layer_stats_from_samples(generator) -> None:
    X = torch.randn(50, 4, generator=generator)
    stats = LayerStats.from_samples(X)
    X64 = X.double()
    assert stats.count == 50 and stats.d_in == 4
    assert torch.allclose(stats.cov, torch.cov(X64.T, correction=0), rtol=0, atol=1e-14)
    assert torch.equal(stats.samples, X64)
    assert LayerStats.from_samples(X, samples=0).samples is None
    some = LayerStats.from_samples(X, samples=7, generator=seeded(3)).samples
    assert some.shape == (7, 4) and (some[:, None] == X64[None]).all(-1).any(1).all()
    held = LayerStats.from_samples(X, heldout=torch.randn(3, 4, generator=generator)).heldout
    assert held.shape == (3, 4) and held.dtype == torch.float64
    assert stats.check(4, "fc") is stats


def zeros(*shape: int) -> Tensor:
    return torch.zeros(shape, dtype=torch.float64)


def from_samples(n: int = 5, d: int = 4, **kwargs: Any) -> LayerStats:
    return LayerStats.from_samples(torch.randn(n, d), **kwargs)


LAYER_STATS_ERRORS: list[tuple[Callable[[], object], type[Exception], str]] = [
    (
        lambda: from_samples().check(36, "layer1.0.conv1"),
        ValueError,
        r"stats for layer1.0.conv1 are over 4-dim input vectors, but the weight has d_in=36",
    ),
    (lambda: from_samples(n=0), ValueError, r"X must have at least one row"),
    (lambda: LayerStats.from_samples(torch.randn(5)), ValueError, r"X must be a 2-D"),
    (lambda: LayerStats.from_samples(torch.full((2, 2), math.nan)), ValueError, r"X has 4 non-finite"),
    (lambda: from_samples(samples=6), ValueError, r"samples must be an int in \[0, 5\], got 6"),
    (lambda: from_samples(heldout=torch.randn(2, 3)), ValueError, r"heldout must have 4 columns"),
    (
        lambda: LayerStats(0, zeros(2), zeros(2, 2)),
        ValueError,
        r"LayerStats.count must be an int >= 1, got 0",
    ),
    (
        lambda: LayerStats(1, torch.zeros(2), torch.zeros(2, 2)),
        TypeError,
        r"LayerStats.mean must be a float64 tensor, got torch.float32",
    ),
    (
        lambda: LayerStats(1, zeros(2), zeros(3, 3)),
        ValueError,
        r"LayerStats.second must have shape \(2, 2\) to match mean, got \(3, 3\)",
    ),
    (
        lambda: LayerStats(1, zeros(2), zeros(2, 2), zeros(3, 3)),
        ValueError,
        r"LayerStats.samples must be a float64 \(K, 2\) tensor or None, got \(3, 3\)",
    ),
]


@pytest.mark.parametrize(("make", "error", "message"), LAYER_STATS_ERRORS)
def test_layer_stats_bad_input(make, error, message) -> None:
    with pytest.raises(error, match=message) as info:
        make()
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------------
# Bad input: one line naming the layer, the model unchanged, no hooks behind


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(x)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def overflowing() -> nn.Module:
    """An mlp whose first layer overflows to Inf on inputs of ones."""
    model = mlp()
    with torch.no_grad():
        model[0].weight.fill_(2e38)
    return model


def good() -> list[Tensor]:
    return [torch.randn(4, 3, generator=seeded(0)), torch.randn(4, 3, generator=seeded(1))]


def nan_batch() -> list[Tensor]:
    x = good()
    x[1][2, 1] = math.nan
    return x


def keyword_batch() -> list[dict[str, Tensor]]:
    return [{"input_ids": torch.zeros(3, 2, dtype=torch.long), "attention_mask": torch.ones(2, 2)}]


def grouped() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))


E, T = ValueError, TypeError
# (model, layers, calibration, keyword arguments, exception, message)
BAD_INPUT: list[tuple[Callable[[], nn.Module], object, Callable[[], object], dict, type[Exception], str]] = [
    (mlp, ["0"], lambda: [], {}, E, r"calibration is empty: no batch reached the 1 layer\(s\) '0'"),
    (mlp, ["0"], lambda: iter(()), {}, E, r"calibration is empty"),
    (mlp, ["0"], good, {"positions": 0.0}, E, r"positions must be a number in \(0, 1\], got 0.0"),
    (mlp, ["0"], good, {"positions": 1.5}, E, r"positions must be a number in \(0, 1\], got 1.5"),
    (mlp, ["0"], good, {"positions": True}, E, r"positions must be a number in \(0, 1\], got True"),
    (
        mlp,
        ["0", "2"],
        lambda: [good()[0], torch.randn(4, 5)],
        {},
        E,
        r"calibration batch 1 failed in the model's forward: RuntimeError: mat1 and mat2 shapes",
    ),
    (mlp, ["0"], nan_batch, {}, E, r"calibration batch 1 gives layer '0' an input with 1 non-finite \(NaN"),
    # an overflow inside the model: Inf reaches the second layer only
    (
        overflowing,
        ["2"],
        lambda: [torch.ones(2, 3)],
        {},
        E,
        r"batch 0 gives layer '2' an input with 8 non-fin",
    ),
    (Unused, ["used", "unused"], good, {}, E, r"layer 'unused' never ran during calibration \(2 batch"),
    (mlp, ["0", "nope"], good, {}, E, r"layer 'nope' is not a module of the model"),
    (mlp, ["1"], good, {}, T, r"layer '1' is a ReLU; calibration statistics are for nn.Linear and nn.Conv2d"),
    (mlp, {"0": nn.Linear(3, 4)}, good, {}, E, r"layers\['0'\] is not the model's module '0'"),
    (mlp, "0", good, {}, T, r"layers must be a list of module names .* got str '0'; write layers=\['0'\]"),
    (mlp, [], good, {}, E, r"layers is empty"),
    (grouped, ["0"], good, {}, NotImplementedError, r"layer '0' is a grouped conv \(groups=2\)"),
    (mlp, ["0"], good, {"batches": 0}, E, r"batches must be an int >= 1, got 0"),
    (mlp, ["0"], good, {"batches": 1.5}, E, r"batches must be an int >= 1, got 1.5"),
    (mlp, ["0"], good, {"batches": True}, E, r"batches must be an int >= 1, got True"),
    (mlp, ["0"], good, {"samples": -1}, E, r"samples must be an int >= 0, got -1"),
    (mlp, ["0"], good, {"samples": 2.0}, E, r"samples must be an int >= 0, got 2.0"),
    (mlp, ["0"], good, {"heldout": -3}, E, r"heldout must be an int >= 0, got -3"),
    (mlp, ["0"], good, {"heldout_every": 1}, E, r"heldout_every must be an int >= 2, got 1"),
    (mlp, ["0"], good, {"batch_size": 0}, E, r"batch_size must be an int >= 1, got 0"),
    (mlp, ["0"], good, {"max_elements": 0}, E, r"max_elements must be an int >= 1, got 0"),
    (mlp, ["0"], good, {"precision": "f16"}, E, r"unknown precision 'f16'; available: float32, float64"),
    (mlp, ["0"], lambda: ["abc"], {}, T, r"calibration batch 0 is a str; expected a tensor"),
    (
        mlp,
        ["0"],
        lambda: {"x": torch.randn(2, 3)},
        {},
        T,
        r"calibration must be an iterable .* got dict; wrap",
    ),
    (
        mlp,
        ["0"],
        lambda: [torch.randn(3, 3)],
        {"heldout": 2},
        E,
        r"layer .0. got no held-out input: heldout=2 .* one model-input sample in 5 .*, and the stream had 3",
    ),
    (
        KeywordNet,
        ["proj"],
        keyword_batch,
        {"heldout": 1},
        E,
        r"batch 0: the held-out split needs one batch size",
    ),
]


@pytest.mark.parametrize(("make_model", "layers", "calib", "kwargs", "error", "message"), BAD_INPUT)
def test_bad_input(make_model, layers, calib, kwargs, error, message) -> None:
    model = make_model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message) as info:
        collect_stats(model, layers, calib(), **kwargs)
    assert "\n" not in str(info.value)
    assert no_hooks(model) and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_forward_failure_keeps_the_cause() -> None:
    with pytest.raises(ValueError, match="batch 0 failed") as info:
        collect_stats(mlp(), ["0"], [torch.randn(2, 7)])
    assert isinstance(info.value.__cause__, RuntimeError)


def test_samples_do_not_depend_on_other_layers(generator) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(30, 3, generator=generator)
    alone = collect_stats(model, ["2"], x, samples=5, generator=seeded(7))["2"].samples
    both = collect_stats(model, ["0", "2"], x, samples=5, generator=seeded(7))["2"].samples
    assert torch.equal(alone, both)


# --------------------------------------------------------------------------------------------------------
# Position subsets (positions < 1)


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_position_subset_is_the_moments_of_the_kept_patches(generator, p) -> None:
    """With positions = p a conv's moments are exactly those of the patches in the kept (image, w) columns
    (all output rows), whatever the chunking; the mask is position_mask of the layer's own seed."""
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    inputs = [torch.randn(5, 3, 13, 11, generator=generator), torch.randn(2, 3, 13, 11, generator=generator)]
    X = patches(conv, inputs)
    ho, wo = conv(inputs[0]).shape[2:]
    base = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(7)))
    mask = calibration.position_mask(calibration._layer_seeds(base, "0")[2], 0, 7, wo, p)
    kept = X[mask[:, None, :].expand(7, ho, wo).flatten()]
    assert 0 < kept.shape[0] < X.shape[0]
    for max_elements in (1, calibration.DEFAULT_MAX_ELEMENTS):
        stats = collect_stats(
            nn.Sequential(conv),
            ["0"],
            inputs,
            positions=p,
            max_elements=max_elements,
            generator=torch.Generator().manual_seed(7),
        )["0"]
        assert_moments(stats, kept, every=X)


def test_position_mask_is_a_fair_coin_per_column() -> None:
    """Each column is kept with probability p: over 10^5 columns the kept fraction is within 5 standard
    errors of p, and it does not depend on the column or on how the images are split."""
    n, wo, p = 5000, 20, 0.25
    mask = calibration.position_mask(12345, 0, n, wo, p)
    se = math.sqrt(p * (1 - p) / (n * wo))
    assert abs(float(mask.double().mean()) - p) < 5 * se
    per_column = mask.double().mean(0)
    assert float((per_column - p).abs().max()) < 5 * math.sqrt(p * (1 - p) / n)
    split = torch.cat(
        [
            calibration.position_mask(12345, 0, 1234, wo, p),
            calibration.position_mask(12345, 1234, n - 1234, wo, p),
        ]
    )
    assert torch.equal(split, mask)


def test_positions_leave_linear_layers_exact(generator) -> None:
    model = mlp()
    inputs = [torch.randn(9, 3, generator=generator)]
    exact = collect_stats(model, ["0"], inputs)["0"]
    sub = collect_stats(model, ["0"], inputs, positions=0.5)["0"]
    assert sub.count == exact.count and torch.equal(sub.second, exact.second)


def test_abs_mean_is_checked_on_construction() -> None:
    mean, second = torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"LayerStats.abs_mean must be a float64 \(3,\) tensor or None"):
        LayerStats(1, mean, second, abs_mean=torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"LayerStats.abs_mean must be >= 0, got min -1.0"):
        LayerStats(1, mean, second, abs_mean=torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------------------------------------
# _paired=True: a Linear's [x; x^] without x's own second moment (sequential compression's probe)


@given(h=st.integers(1, 5), precision=st.sampled_from(["float64", "float32"]), **BATCHING)
def test_paired_stats_measure_all_but_the_first_halfs_own_block(
    seed, n, h, batch_size, max_elements, precision
) -> None:
    """Every field as without ``_paired`` (the moments up to float rounding: the same sums blocked otherwise;
    the reservoirs, counts and |x| bit for bit), except the first half's block of ``second``: zeros."""
    X = torch.randn(n, 2 * h, generator=seeded(seed))
    kw = {"batch_size": batch_size, "max_elements": max_elements, "precision": precision, "samples": 4}
    kw |= {"generator": torch.Generator().manual_seed(seed)}
    layer = nn.Linear(2 * h, 3)
    full = collect_stats(layer, [""], X, **kw)[""]
    kw["generator"] = torch.Generator().manual_seed(seed)
    pair = collect_stats(layer, [""], X, _paired=True, **kw)[""]
    assert pair.count == full.count and torch.equal(pair.samples, full.samples)
    assert torch.equal(pair.abs_mean, full.abs_mean)
    assert (pair.out_cov is None) == (h < 2) and (full.out_cov is None) == (h < 2)  # measured: d_out < d_in
    assert h < 2 or torch.equal(pair.out_cov, full.out_cov)
    # float32 products: n <= 40 < GEMM_BLOCK terms summed in float32, each sum within n u (|X|^T |X|) of the
    # exact one (u = 2^-24), so the two within 80 u ~ 4.8e-6 of the scale; float64: ~1e-16 per term
    assert n < GEMM_BLOCK
    tol = EXACT if precision == "float64" else 1e-5
    scale = float((X.abs().T @ X.abs()).max()) / n
    assert float((pair.mean - full.mean).abs().max()) <= tol * max(scale, 1.0)
    assert torch.equal(pair.second[:h, :h], torch.zeros(h, h, dtype=torch.float64))
    mask = torch.ones(2 * h, 2 * h, dtype=torch.bool)
    mask[:h, :h] = False
    assert float((pair.second - full.second)[mask].abs().max()) <= tol * max(scale, 1.0)
    assert torch.equal(pair.second, pair.second.T)


def test_paired_float32_products_over_many_blocks(generator) -> None:
    """n > GEMM_BLOCK rows in float32: blocks of GEMM_BLOCK products summed in float32, the blocks in
    float64; each entry of either within gamma_B (|X|^T |X|) / n of the exact moment (gamma_B ~ 2.4e-4, the
    worst case), so the two within twice that."""
    n = 2 * GEMM_BLOCK + 7
    X = torch.randn(n, 6, generator=generator)
    full = collect_stats(nn.Linear(6, 2), [""], X, precision="float32")[""]
    pair = collect_stats(nn.Linear(6, 2), [""], X, precision="float32", _paired=True)[""]
    u = 2.0**-24
    gamma = GEMM_BLOCK * u / (1 - GEMM_BLOCK * u)
    bound = 2 * gamma * (X.abs().T @ X.abs()).double() / n
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[:3, :3] = False
    assert bool(((pair.second - full.second).abs() <= bound)[mask].all())
    assert torch.equal(pair.second[:3, :3], torch.zeros(3, 3, dtype=torch.float64))


def test_paired_leaves_conv_layers_whole(generator) -> None:
    conv = nn.Conv2d(4, 3, 3, padding=1)
    x = torch.randn(3, 4, 6, 6, generator=generator)
    a = collect_stats(conv, [""], x)[""]
    b = collect_stats(conv, [""], x, _paired=True)[""]
    assert torch.equal(a.second, b.second) and torch.equal(a.mean, b.mean)


@pytest.mark.parametrize(
    ("d_in", "paired", "message"),
    [
        (4, "yes", "_paired must be a bool, got 'yes'"),
        (5, True, "_paired=True needs an even d_in (two halves [x; x^]); layer '0' has 5"),
    ],
)
def test_bad_paired_is_one_line(d_in, paired, message) -> None:
    model = nn.Sequential(nn.Linear(d_in, 2))
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        collect_stats(model, ["0"], torch.randn(4, d_in), _paired=paired)
    assert "\n" not in str(info.value)
    assert no_hooks(model)
