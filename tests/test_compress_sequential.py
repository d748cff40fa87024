"""compress(sequential=True): each layer fitted on its inputs in the partly compressed model against the
original layer's output (nlinit.sequential, docs/theory.md section 11.5).

Checked: asymmetric_target is the least-squares regression; sequential ``whiten`` gives the second layer the
rank-r minimizer of the calibration output error computed independently (lstsq + reduced-rank regression);
the first layer is solved exactly as without ``sequential``; the end-to-end guarantee on a two-layer net; one
layer's statistics alive at a time; a failing pass leaves the model unchanged (bad values of ``sequential``
are in tests/test_compress.py's table)."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import scipy.linalg
import torch
from nets import assert_unchanged, seeded_model, snapshot
from test_compress import FAST, NETS, SMALL, inputs, installed
from torch import nn

import nlinit.compress as compress_module
import nlinit.sequential as sequential
from nlinit.calibration import LayerStats
from nlinit.compress import METHODS, compress
from nlinit.layer_function import whitener
from nlinit.sequential import asymmetric_target

F64 = torch.float64


def two_layer() -> nn.Sequential:
    """Linear -> ReLU -> Linear with biases, float64: the second layer's output is the model's."""
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 7)).double().eval()


def calibration(n: int = 400) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return 0.5 + torch.randn(n, 8, generator=g, dtype=F64) @ torch.randn(8, 8, generator=g, dtype=F64)


EXACT = {"rank_scale": 0.5, "method": "whiten", "factorize_stem": True, "factorize_classifier": True}
EXACT |= {"calibration_samples": 16, "calibration_heldout": 0, "progress": False}  # every input in the fit


def test_asymmetric_target_is_the_least_squares_regression():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 5, generator=g, dtype=F64) + 1.0
    Xh = X @ torch.randn(5, 5, generator=g, dtype=F64) + 0.3 * torch.randn(300, 5, generator=g, dtype=F64)
    W, b = torch.randn(4, 5, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    s = LayerStats.from_samples(torch.cat([X, Xh], 1))
    W_eff, b_eff = asymmetric_target(W, b, s.mean[:5], s.mean[5:], s.cov[:5, 5:], s.cov[5:, 5:])
    # lstsq of the target W x + b on [x^, 1]: the same affine map
    A = torch.cat([Xh, torch.ones(300, 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(A, X @ W.T + b).solution
    # float64 rounding amplified by cond(Sigma^) (~1e2 here) in the normal equations: 1e-10 is ample
    torch.testing.assert_close(W_eff, coef[:5].T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b_eff, coef[5], rtol=1e-10, atol=1e-10)
    # x^ = x: the layer itself
    W_same, b_same = asymmetric_target(W, b, s.mean[:5], s.mean[:5], s.cov[:5, :5], s.cov[:5, :5])
    torch.testing.assert_close(W_same, W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b_same, b, rtol=1e-12, atol=1e-12)


def test_a_conv_problem_is_the_regression_of_its_original_output_on_its_patches():
    """The paired pass on a strided, dilated, reflect-padded conv: x^'s statistics and (W_eff, b_eff)
    equal those computed from the two models' unfolded patches (channel layout: F.unfold's order)."""
    reference = seeded_model(
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 5, 3, stride=2, dilation=2, padding=2, padding_mode="reflect"),
        )
    ).double()
    model = copy.deepcopy(reference)
    with torch.no_grad():  # an "already compressed" first layer: its inputs x^ differ from x
        model[0].weight.mul_(0.8).add_(0.05)
    x0 = torch.randn(40, 3, 9, 9, generator=torch.Generator().manual_seed(1), dtype=F64)
    collect = {"batches": None, "samples": 0, "heldout": 0}
    stats, target = sequential._layer_problem(reference, model, "2", x0, True, 0, collect)

    def patches(m: nn.Sequential) -> torch.Tensor:
        with torch.no_grad():
            h = torch.nn.functional.pad(torch.relu(m[0](x0)), (2, 2, 2, 2), mode="reflect")
        return torch.nn.functional.unfold(h, 3, dilation=2, stride=2).transpose(1, 2).reshape(-1, 36)

    X, Xh = patches(reference), patches(model)
    torch.testing.assert_close(stats.mean, Xh.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.cov, torch.cov(Xh.T, correction=0), rtol=1e-10, atol=1e-12)
    conv = reference[2]
    T = X @ conv.weight.reshape(5, -1).T + conv.bias
    coef = torch.linalg.lstsq(torch.cat([Xh, torch.ones(len(Xh), 1, dtype=F64)], 1), T).solution
    # float64 rounding amplified by cond(Sigma^) (~30 here; < 1e3 asserted, so whitener's floor does not
    # bite) in the normal equations: <= ~1e3 eps ~ 1e-13 relative (measured 1e-14)
    assert torch.linalg.cond(torch.cov(Xh.T)) < 1e3
    torch.testing.assert_close(target.weight.reshape(5, -1), coef[:-1].T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(target.bias, coef[-1], rtol=1e-10, atol=1e-12)
    assert target.padding_mode == "reflect" and target.stride == (2, 2) and target.dilation == (2, 2)


def test_whitener_needs_no_eigendecomposition(monkeypatch):
    """torch's eigh failed to converge on a 4608 x 4608 patch covariance of 19 vectors (ResNet-18's layer4
    at 32 px, in a sequential pass), when whitener floored eigenvalues. Its pivoted Cholesky calls no
    eigensolver: a rank-4 covariance (5 centered vectors in 12 dimensions) gets 8 directions filled in."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 12, generator=g, dtype=F64)
    cov = torch.cov(X.T, correction=0)

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", fail)
    monkeypatch.setattr(scipy.linalg, "eigh", fail)
    got = whitener(cov, 12)
    assert got.floored == 8
    lam = 1e-6 * float(cov.diagonal().max())
    assert float((got.L @ got.L.T - cov).abs().max()) <= lam * (1 + 1e-9)
    torch.testing.assert_close(got.L_inv @ got.L, torch.eye(12, dtype=F64), rtol=0, atol=1e-9)


def test_sequential_whiten_is_the_asymmetric_optimum_of_the_second_layer():
    original = seeded_model(two_layer)
    model = copy.deepcopy(original)
    x0 = calibration()
    compress(model, x0, sequential=True, **EXACT)
    with torch.no_grad():
        X = torch.relu(original[0](x0))  # the second layer's inputs in the original model
        Xh = torch.relu(model[0](x0))  # ... and in the compressed one
        T = original[2](X)  # its target: the original output
    r = model[2].rank
    # the rank-r minimizer of sum_n ||T_n - Y x^_n - b'||^2, independently: lstsq of the centered problem,
    # then the reduced-rank regression (the top-r right singular vectors of the fitted values)
    Xc, Tc = Xh - Xh.mean(0), T - T.mean(0)
    B = torch.linalg.lstsq(Xc, Tc).solution  # (12, 7)
    Vr = torch.linalg.svd(Xc @ B, full_matrices=False).Vh[:r].T  # (7, r)
    Y = (B @ Vr @ Vr.T).T
    bias = T.mean(0) - Y @ Xh.mean(0)
    cond = torch.linalg.cond(Xc.T @ Xc)
    assert cond < 1e6  # whitener's floor does not bite: the solution is exact, not ridge-regularized
    # float64: both sides are backward stable, so they differ by ~ cond(Sigma^) (~3e2 here) x eps x
    # sigma_1 / (sigma_r - sigma_r+1) (~5): ~1e-13 (measured 1e-14); without sequential the gap is 6e-2
    torch.testing.assert_close(model[2].U @ model[2].V.T, Y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model[2].bias, bias, rtol=1e-10, atol=1e-10)


def test_sequential_never_raises_the_output_error_of_a_two_layer_net():
    """Layer 1 is the same either way and layer 2's output is the model's, which sequential whiten
    minimizes over rank r on the calibration inputs: its output error is at most the other's."""
    original = seeded_model(two_layer)
    x0 = calibration()
    errors = {}
    for flag in (False, True):
        model = copy.deepcopy(original)
        compress(model, x0, sequential=flag, **EXACT)
        with torch.no_grad():
            errors[flag] = float(((model(x0) - original(x0)) ** 2).sum())
    assert errors[True] <= errors[False] * (1 + 1e-12)  # the minimum, up to float64 rounding
    assert errors[True] < 0.99 * errors[False]  # and here strictly better: x^ differs from x


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("method", ["whiten", "relu-svd", "lfai-data"])
def test_the_first_layer_is_solved_as_without_sequential(net, method):
    build, shape, _ = NETS[net]
    x = inputs(shape)
    kwargs = {"budget": 0.5, "method": method, **SMALL, **FAST.get(method, {})}
    plain, seq = build(), build()
    report = compress(plain, x, **kwargs)
    compress(seq, x, sequential=True, **kwargs)
    first = report.layers[0].name
    a, b = installed(plain)[first], installed(seq)[first]
    for name in ("U", "V", "bias"):
        assert torch.equal(getattr(a, name), getattr(b, name))  # the same statistics and solver: bitwise


@pytest.mark.parametrize("allocate", ["energy", "sensitivity"])
def test_only_one_layer_statistics_are_alive_during_the_pass(monkeypatch, allocate):
    alive: weakref.WeakSet[LayerStats] = weakref.WeakSet()
    post_init = LayerStats.__post_init__

    def track(self: LayerStats) -> None:
        post_init(self)
        alive.add(self)

    counts: list[tuple[str, int]] = []

    def counting(fn, what):
        def wrapped(*args, **kwargs):
            gc.collect()
            counts.append((what, len(alive)))
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(LayerStats, "__post_init__", track)
    monkeypatch.setattr(compress_module, "collect_stats", counting(compress_module.collect_stats, "allocate"))
    monkeypatch.setattr(sequential, "collect_stats", counting(sequential.collect_stats, "collect"))
    monkeypatch.setattr(sequential, "factorize", counting(sequential.factorize, "solve"))
    build, shape, names = NETS["cnn"]
    compress(build(), inputs(shape), budget=0.5, method="whiten", sequential=True, allocate=allocate, **SMALL)
    # the allocation collects each layer's statistics alone, none alive before (the previous layer's were
    # dropped once its error curve was computed); then, before each layer's statistics pass none is
    # alive, and while it is solved exactly its own
    assert counts == [("allocate", 0)] * len(names) + [("collect", 0), ("solve", 1)] * len(names)


@pytest.mark.parametrize("allocate", ["energy", "sensitivity"])
def test_the_streamed_allocation_gives_the_ranks_of_the_plain_one(allocate):
    build, shape, _ = NETS["cnn"]
    x = inputs(shape)
    kwargs = {"budget": 0.4, "method": "whiten", "allocate": allocate, **SMALL}
    plain = compress(build(), x, **kwargs)  # every layer's statistics from one pass
    seq = compress(build(), x, sequential=True, **kwargs)  # one layer's per pass
    assert [x.rank for x in seq.layers] == [x.rank for x in plain.layers]
    assert seq.config["calibration_vectors"] == plain.config["calibration_vectors"]
    for a, b in zip(seq.layers, plain.layers, strict=True):
        assert a.predicted_error == pytest.approx(b.predicted_error, rel=1e-12, abs=1e-15)


def test_the_report_records_sequential_and_the_held_out_columns():
    build, shape, names = NETS["cnn"]
    report = compress(build(), inputs(shape), budget=0.5, method="relu-svd", sequential=True, **SMALL)
    assert report.config["sequential"] is True and report.factorize.config["sequential"] is True
    assert "sequential" in report.summary()
    assert [x.name for x in report.layers] == names
    assert all(x.heldout_method is not None and x.heldout_svd is not None for x in report.layers)
    assert [x.name for x in report.factorize.factorized] == names
    # the pass's per-layer statistics count as statistics, not as solve
    assert 0 < report.factorize.seconds_stats <= report.seconds["statistics"]


class SharedThenHead(nn.Module):
    """fc2 called twice per forward (one module, shared weights), then a head whose calls are counted."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.head_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc2(torch.relu(self.fc2(torch.relu(self.fc1(x))))))
        self.head_calls += 1
        return self.head(h)


STOP_NETS = NETS | {"shared": (lambda: seeded_model(SharedThenHead).eval(), (12,), ["fc1", "fc2", "head"])}


def always_full_forwards(monkeypatch) -> None:
    """_Paired never learns its layer's call count, so every forward runs both models to the end."""
    full = property(lambda self: None, lambda self, value: None)
    monkeypatch.setattr(sequential._Paired, "calls", full, raising=False)


@pytest.mark.parametrize("net", sorted(STOP_NETS))
@pytest.mark.parametrize("method", ["whiten", "relu-svd"])
def test_stopping_each_forward_at_the_layer_changes_nothing(monkeypatch, net, method):
    """The pass stops each model's forward at the layer's last call (counted on the first batch); the
    statistics, so the factors, are those of full forwards bit for bit (a shared layer: both calls)."""
    build, shape, _ = STOP_NETS[net]
    batches = list(inputs(shape).split(25))  # several batches: the later ones are cut short
    kwargs = {"budget": 0.5, "method": method, "sequential": True, "factorize_classifier": True, **SMALL}
    cut, full = build(), build()
    compress(cut, batches, **kwargs)
    with monkeypatch.context() as m:
        always_full_forwards(m)
        compress(full, batches, **kwargs)
    a, b = installed(cut), installed(full)
    assert sorted(a) == sorted(b) and len(a) >= 2
    for name in a:
        for attr in ("U", "V", "bias"):
            assert torch.equal(getattr(a[name], attr), getattr(b[name], attr)), (name, attr)


def test_the_pass_skips_what_follows_the_layer(monkeypatch):
    build, shape, _ = STOP_NETS["shared"]
    batches = list(inputs(shape).split(25))
    kwargs = {"budget": 0.5, "method": "whiten", "sequential": True, "factorize_stem": True, **SMALL}
    forwards = []
    paired = sequential._Paired.forward

    def counted(self, *args, **kwargs):
        forwards.append(1)
        return paired(self, *args, **kwargs)

    monkeypatch.setattr(sequential._Paired, "forward", counted)
    cut, full = build(), build()
    compress(cut, batches, **kwargs)
    passed = len(forwards)
    with monkeypatch.context() as m:
        always_full_forwards(m)
        compress(full, batches, **kwargs)
    assert len(forwards) == 2 * passed >= 2 * len(batches)  # fc2's pass (fc1, the first, needs none)
    # every forward of the pass but the first (which counts fc2's calls) ends at fc2's second call
    assert full.head_calls - cut.head_calls == passed - 1


class FailingOnPass(list):
    """A list of batches whose ``fail``-th iteration raises (to break the pass in the middle)."""

    def __init__(self, batches, fail: int) -> None:
        super().__init__(batches)
        self.passes, self.fail = 0, fail

    def __iter__(self):
        self.passes += 1
        if self.passes == self.fail:
            raise RuntimeError("calibration source failed")
        return super().__iter__()


def test_a_failure_in_the_middle_of_the_pass_puts_every_layer_back():
    build, shape, _ = NETS["cnn"]
    model = build()
    snap = snapshot(model)
    # pass 1: statistics; 2: the first layer (solved and swapped in); 3: the second layer fails
    batches = FailingOnPass(inputs(shape).split(25), fail=3)
    with pytest.raises(RuntimeError, match="calibration source failed"):
        compress(model, batches, budget=0.5, method="whiten", sequential=True, **SMALL)
    assert batches.passes == 3
    assert_unchanged(model, snap)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_sequentially_within_the_budget(method):
    build, shape, names = NETS["cnn"]
    model = build()
    report = compress(
        model, inputs(shape), budget=0.5, method=method, sequential=True, **SMALL, **FAST.get(method, {})
    )
    assert sorted(installed(model)) == sorted(names)
    assert report.params_after <= 0.5 * report.params_before


def test_run_grid_keeps_sequential_rows_beside_the_plain_ones():
    from nlinit.experiments.compress_table import run_grid

    calls: list[tuple[float, str, str]] = []

    def run(budget: float, method: str, allocate: str) -> dict[str, float]:
        calls.append((budget, method, allocate))
        return {"params_kept": budget}

    rows: list[dict] = []
    run_grid(rows, [0.5], ["whiten"], ["uniform"], run, lambda row: None, "+sequential")
    run_grid(rows, [0.5], ["whiten"], ["uniform"], run, lambda row: None, "+sequential")  # done: skipped
    run_grid(rows, [0.5], ["whiten"], ["uniform"], run, lambda row: None)  # the plain method: a new row
    assert [r["method"] for r in rows] == ["whiten+sequential", "whiten"]
    assert calls == [(0.5, "whiten", "uniform")] * 2  # run gets the method itself


# --------------------------------------------------------------------------------------------------------
# The block chain: each layer's pass runs its block alone on kept inputs (O(L) block forwards)


class Block(nn.Module):
    """x + fc2(relu(fc1(x))) * scale: a residual block whose second input is a keyword."""

    def __init__(self, d: int = 10) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.calls = 0

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        self.calls += isinstance(x, torch.Tensor)  # forwards, not torch.fx's symbolic traces
        return x + self.fc2(torch.relu(self.fc1(x))) * scale


class Stack(nn.Module):
    """stem -> K blocks in a ModuleList -> head; ``gap`` puts a ReLU between the blocks (no longer a chain:
    a block's input is not the previous block's output)."""

    def __init__(self, k: int, gap: bool = False) -> None:
        super().__init__()
        self.stem, self.head = nn.Linear(6, 10), nn.Linear(10, 3)
        self.blocks = nn.ModuleList(Block() for _ in range(k))
        self.gap = gap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, scale = self.stem(x), torch.full((1,), 0.5)
        for block in self.blocks:
            h = block(h, scale=scale)
            h = torch.relu(h) if self.gap else h
        return self.head(h)


def stack_compress(k: int, chain: bool, monkeypatch, gap: bool = False) -> nn.Module:
    """A seeded Stack(k) compressed sequentially (whiten, uniform 0.5, no held-out split), with or without
    the block chain."""
    model = seeded_model(lambda: Stack(k, gap)).eval()
    x = inputs((6,), n=120)
    with monkeypatch.context() as m:
        if not chain:
            m.setattr(sequential, "_blocks", lambda *args: None)
        kwargs = SMALL | {"calibration_heldout": 0}
        compress(model, list(x.split(40)), budget=0.5, method="whiten", sequential=True, **kwargs)
    return model


def test_the_chain_gives_the_whole_forwards_factors_bit_for_bit(monkeypatch):
    """Without a held-out split both routes run the same operations on the same tensors: every layer's
    inputs, so its statistics and factors, are equal bit for bit."""
    a, b = stack_compress(3, True, monkeypatch), stack_compress(3, False, monkeypatch)
    got, want = installed(a), installed(b)
    assert sorted(got) == sorted(f"blocks.{k}.fc{i}" for k in range(3) for i in (1, 2))
    for name in got:
        for attr in ("U", "V", "bias"):
            assert torch.equal(getattr(got[name], attr), getattr(want[name], attr)), (name, attr)


def test_the_chain_costs_block_forwards_linear_in_the_depth(monkeypatch):
    """Block forwards over a whole sequential pass: with the chain, each layer's pass runs its own block
    (both models) and moving on runs each block once, so the count grows by the same amount per added
    pair of blocks; from whole forwards each layer's pass runs every block before it (quadratic)."""

    def block_calls(k: int, chain: bool) -> int:  # in the sequential pass (not the allocation's passes)
        counts = []
        solve = compress_module._factorize_sequential

        def counted(model, *args, **kwargs):
            before = sum(b.calls for b in model.blocks)
            report = solve(model, *args, **kwargs)
            counts.append(sum(b.calls for b in model.blocks) - before)
            return report

        with monkeypatch.context() as m:
            m.setattr(compress_module, "_factorize_sequential", counted)
            stack_compress(k, chain, m)
        return counts[0]

    chained = [block_calls(k, True) for k in (2, 4, 6)]
    whole = [block_calls(k, False) for k in (2, 4, 6)]
    assert chained[2] - chained[1] == chained[1] - chained[0] > 0  # linear
    assert whole[2] - whole[1] > whole[1] - whole[0] > 0  # quadratic
    assert chained[2] < whole[2]


def stack_allocation(k: int, chain: bool, monkeypatch, allocate: str = "energy") -> tuple[list, int]:
    """A seeded Stack(k)'s sequential allocation (whiten, budget 0.5; no held-out split, which the chain
    declines here: the ``scale`` keyword has no batch rows to cut): each layer's (name, statistics, error
    curve, stable rank) and the block forwards run before the sequential pass."""
    model = seeded_model(lambda: Stack(k)).eval()
    x = list(inputs((6,), n=120).split(40))
    seen = []

    def stop(model, *args, **kwargs):  # the allocation is done: count, and skip the pass
        seen.append(sum(b.calls for b in model.blocks))
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(compress_module, "_factorize_sequential", stop)
        if not chain:
            m.setattr(sequential, "_blocks", lambda *args: None)
        rows: list = []
        m.setattr(compress_module, "_error_curves", recorded(compress_module._error_curves, rows))
        kwargs = SMALL | {"calibration_heldout": 0}
        with pytest.raises(KeyboardInterrupt):
            compress(model, x, budget=0.5, method="whiten", allocate=allocate, sequential=True, **kwargs)
    return rows, seen[0]


def recorded(fn, rows: list):
    """``fn`` (compress's _error_curves) recording each layer's statistics (every field, as lists: exact
    comparisons), error curve and stable rank."""

    def wrapped(p, stats, *args):
        out = fn(p, stats, *args)
        fields = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in vars(stats).items()}
        rows.append((p.name, fields, out[0].tolist(), out[1]))
        return out

    return wrapped


@pytest.mark.parametrize("allocate", ["energy", "sensitivity"])
def test_the_streamed_allocation_on_the_chain_is_whole_forwards_bit_for_bit(monkeypatch, allocate):
    """The allocation's statistics of one layer at a time from the chain's kept block inputs: every layer's
    error curve and stable rank equal those of whole forwards bit for bit (the same operations on the same
    tensors; with the held-out split: the ResNet-20 test below)."""
    chained, _ = stack_allocation(3, True, monkeypatch, allocate)
    whole, _ = stack_allocation(3, False, monkeypatch, allocate)
    assert [r[0] for r in chained] == [f"blocks.{k}.fc{i}" for k in range(3) for i in (1, 2)]
    assert chained == whole


def test_the_streamed_allocation_costs_block_forwards_linear_in_the_depth(monkeypatch):
    """Block forwards before the sequential pass (the output positions' first batch, then one layer's
    statistics at a time): linear in the depth on the chain, quadratic from whole forwards."""
    chained = [stack_allocation(k, True, monkeypatch)[1] for k in (2, 4, 6)]
    whole = [stack_allocation(k, False, monkeypatch)[1] for k in (2, 4, 6)]
    assert chained[2] - chained[1] == chained[1] - chained[0] > 0  # linear
    assert whole[2] - whole[1] > whole[1] - whole[0] > 0  # quadratic
    assert chained[2] < whole[2]


def test_a_model_that_is_not_a_chain_is_passed_by_whole_forwards(monkeypatch):
    """A ReLU between the blocks: block k+1's input is not block k's output, so capture declines and the
    pass runs whole forwards (the factors of the pass without the chain, bit for bit)."""
    model = seeded_model(lambda: Stack(3, gap=True)).eval()
    blocks = sequential._blocks(model, ["blocks.0.fc1", "blocks.2.fc2"])
    assert blocks == ["blocks.0", "blocks.1", "blocks.2"]
    names = ["blocks.0.fc1", "blocks.2.fc2"]
    assert sequential._Chain.capture(model, blocks, names, inputs((6,)), None, False) is None
    plain = seeded_model(lambda: Stack(3)).eval()
    assert sequential._Chain.capture(plain, blocks, names, inputs((6,)), None, False) is not None
    a = stack_compress(3, True, monkeypatch, gap=True)
    b = stack_compress(3, False, monkeypatch, gap=True)
    for name, layer in installed(a).items():
        assert torch.equal(layer.U, installed(b)[name].U), name


class Borrowing(Stack):
    """Block 1 also runs block 0's fc1 (a module shared between blocks): not a chain of separate blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](self.stem(x), scale=torch.ones(1))
        return self.head(self.blocks[1](h, scale=torch.ones(1)) + self.blocks[0].fc2(self.blocks[0].fc1(h)))


def test_a_layer_called_outside_its_block_declines_the_chain():
    model = seeded_model(lambda: Borrowing(2)).eval()
    names = [f"blocks.{k}.fc{i}" for k in range(2) for i in (1, 2)]
    blocks = sequential._blocks(model, names)
    assert blocks == ["blocks.0", "blocks.1"]
    assert sequential._Chain.capture(model, blocks, names, inputs((6,)), None, False) is None


def test_blocks_are_the_flattened_children_from_the_first_holding_a_layer_to_the_last():
    model = Stack(3)
    assert sequential._blocks(model, ["blocks.1.fc1", "blocks.2"]) == ["blocks.1", "blocks.2"]
    assert sequential._blocks(model, ["blocks.0.fc1", "blocks.2.fc2"]) == ["blocks.0", "blocks.1", "blocks.2"]
    # one block holds both: the blocks inside it (here the layers; capture then finds no chain: a ReLU)
    assert sequential._blocks(model, ["blocks.1.fc1", "blocks.1.fc2"]) == ["blocks.1.fc1", "blocks.1.fc2"]
    assert sequential._blocks(model, ["blocks.1.fc1"]) is None  # one layer: nothing to keep
    # the stem is a block too (registration order: stem, head, blocks; capture checks the calls' order)
    assert sequential._blocks(model, ["stem", "blocks.1.fc1"]) == ["stem", "head", "blocks.0", "blocks.1"]
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    assert sequential._blocks(seq, ["0", "2"]) == ["0", "1", "2"]  # the layers are blocks themselves


def test_a_resnets_residual_blocks_chain_across_its_stages(monkeypatch):
    """ResNet-20: layer1.0 ... layer3.2 (three nn.Sequential stages, flattened) are one chain; the allocation
    (energy: every layer's error curve) and the pass give those of whole forwards bit for bit, with the
    held-out split."""
    from nlinit.models import resnet20

    names = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)]
    model = seeded_model(lambda: resnet20(10, 1)).eval()
    blocks = sequential._blocks(model, names)
    assert blocks == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    x = list(inputs((1, 12, 12), n=48).split(24))
    assert sequential._Chain.capture(model, blocks, names, x, None, True) is not None
    got, rows = {}, {}
    for chain in (True, False):
        m = copy.deepcopy(model)
        with monkeypatch.context() as patch:
            if not chain:
                patch.setattr(sequential, "_blocks", lambda *args: None)
            rows[chain] = []
            patch.setattr(
                compress_module, "_error_curves", recorded(compress_module._error_curves, rows[chain])
            )
            compress(m, x, budget=0.5, method="whiten", sequential=True, allocate="energy", **SMALL)
        got[chain] = m.state_dict()
    assert [r[0] for r in rows[True]] == names
    assert rows[True] == rows[False]  # the allocation's statistics (reservoirs too), one layer's at a time
    assert got[True].keys() == got[False].keys()
    assert all(torch.equal(v, got[False][k]) for k, v in got[True].items())


class Plain(nn.Module):
    """x + fc2(relu(fc1(x))): a residual block of one input."""

    def __init__(self, d: int = 10) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Mutating(Plain):
    """A Plain block that halves its own input in place after using it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        x.mul_(0.5)
        return y


class Chain(nn.Module):
    """stem -> 3 Plain blocks in ``self.<container>`` -> head. ``between``: "relu_" (an in-place ReLU
    between the blocks: block k+1 gets block k's output object, changed), "mutate" (the model's loop halves
    each block's input in place after the block), "inside" (Mutating blocks: each block does it itself),
    "seq_first" (inputs (N, S, 6), the blocks on (S, N, 10)), "static" (the stem's output copied into one
    tensor reused by every forward: the kept inputs of all batches are one object), "cache" (every block
    gets one shared list as a keyword, to which it appends: state the replays would change)."""

    def __init__(self, container: str = "blocks", between: str = "") -> None:
        super().__init__()
        self.stem, self.head = nn.Linear(6, 10), nn.Linear(10, 3)
        self.container, self.between = container, between
        kind = {
            "inside": Mutating,
            "cache": CacheBlock,
            "tuple": TupleBlock,
            "scale_": ScaleBlock,
            "mix": MixingBlock,
        }.get(between, Plain)
        self.add_module(container, nn.ModuleList(kind() for _ in range(3)))
        self.buffer: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h.transpose(0, 1) if self.between == "seq_first" else h
        if self.between == "static":
            if self.buffer is None or self.buffer.shape != h.shape:  # one per batch shape
                self.buffer = torch.empty_like(h)
            h = self.buffer.copy_(h)
        kwargs = {
            "cache": {"cache": []},
            "tuple": {"pos": (torch.ones_like(h),)},  # per sample, in a tuple (which the split does not cut)
            "scale_": {"scale": torch.ones(1)},
        }.get(self.between, {})
        for block in self.get_submodule(self.container):
            y = block(h, **kwargs)
            if self.between == "mutate":
                h.mul_(0.5)
            h = torch.relu_(y) if self.between == "relu_" else y
        h = h.transpose(0, 1) if self.between == "seq_first" else h
        return self.head(h)


class TupleBlock(Plain):
    """A Plain block scaled by a per-sample tensor passed in a tuple."""

    def forward(self, x: torch.Tensor, pos: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        return super().forward(x) * pos[0]


class ScaleBlock(Plain):
    """A Plain block times a shared ``scale`` tensor, which it doubles in place (every block sees another)."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        assert scale is not None
        y = super().forward(x) * scale
        scale.mul_(2)
        return y


class MixingBlock(Plain):
    """A Plain block on its batch's centred rows: each sample's output depends on the others."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x - x.mean(0))


class CacheBlock(Plain):
    """A Plain block appending its output to a shared ``cache`` list (a key-value cache's pattern)."""

    def forward(self, x: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        y = super().forward(x)
        if cache is not None:
            cache.append(y)
        return y


CHAIN_LAYERS = [f"blocks.{k}.fc{i}" for k in range(3) for i in (1, 2)]


def compressed_both_ways(model: nn.Module, x, monkeypatch, **kwargs) -> tuple[dict, dict]:
    """The state dicts of two copies of ``model`` compressed sequentially (whiten, energy allocation,
    ``kwargs``): with the chain where capture takes it, and from whole forwards."""
    got = {}
    for chain in (True, False):
        m = copy.deepcopy(model)
        with monkeypatch.context() as patch:
            if not chain:
                patch.setattr(sequential, "_blocks", lambda *args: None)
            compress(m, x, method="whiten", sequential=True, allocate="energy", **kwargs)
        got[chain] = m.state_dict()
    return got[True], got[False]


@pytest.mark.filterwarnings("ignore:could not trace the model")  # "static": control flow on a shape
@pytest.mark.parametrize("between", ["relu_", "mutate", "inside", "static", "cache", "scale_"])
def test_an_in_place_change_of_a_blocks_input_declines_the_chain(monkeypatch, between):
    """Block k+1's input is block k's output object, but changed in place after block k, or a block's input
    changed after it began (by the model, by the block itself), or all batches' block-0 inputs are one
    reused tensor, or the blocks share an object they change (a cache, a tensor written in place):
    replaying the blocks on kept inputs would not be the model's computation, so capture declines, and
    compress gives the whole forwards' factors."""
    model = seeded_model(lambda: Chain(between=between)).eval()
    blocks = sequential._blocks(model, CHAIN_LAYERS)
    x = list(inputs((6,), n=60).split(20))  # several batches (one reused tensor shows from the second)
    assert sequential._Chain.capture(model, blocks, CHAIN_LAYERS, x, None, False) is None
    plain = seeded_model(lambda: Chain()).eval()
    assert sequential._Chain.capture(plain, blocks, CHAIN_LAYERS, x, None, False) is not None
    chained, whole = compressed_both_ways(model, x, monkeypatch, budget=0.5, **SMALL)
    assert all(torch.equal(v, whole[k]) for k, v in chained.items())


def test_a_sequence_first_layout_declines_the_chain_under_the_held_out_split():
    """Inputs (N, S, d) with N = S, blocks on (S, N, d): block 0's first dimension has the model input's
    size, but its rows are sequence positions, not samples. The held-out split (of samples) cannot be made
    on block 0's rows, so capture declines with it; without it the chain is exact."""
    model = seeded_model(lambda: Chain(between="seq_first")).eval()
    blocks = sequential._blocks(model, CHAIN_LAYERS)
    x = list(inputs((8, 6), n=16).split(8))  # batches of N = 8 samples of S = 8 positions
    assert sequential._Chain.capture(model, blocks, CHAIN_LAYERS, x, None, True) is None
    assert sequential._Chain.capture(model, blocks, CHAIN_LAYERS, x, None, False) is not None
    flat = seeded_model(lambda: Chain()).eval()  # batch-first: the rows are the samples
    assert sequential._Chain.capture(flat, blocks, CHAIN_LAYERS, x, None, True) is not None


def test_blocks_under_any_child_name_keep_their_layer_names(monkeypatch):
    """The streamed allocation's runner holds each block at its model path (here under a child named
    ``path``): every statistic, reservoirs included, equals whole forwards' (no held-out split: with it the
    Linear stem on a held-out part rounds otherwise than on the whole batch, ~1e-7)."""
    model = seeded_model(lambda: Chain(container="path")).eval()
    x = list(inputs((6,), n=120).split(40))
    rows: dict[bool, list] = {}
    captured = []
    capture = sequential._Chain.capture.__func__
    for chain in (True, False):
        rows[chain] = []
        with monkeypatch.context() as m:
            if not chain:
                m.setattr(sequential, "_blocks", lambda *args: None)
            else:
                spy = classmethod(
                    lambda cls, *a, **kw: captured.append(capture(cls, *a, **kw)) or captured[-1]
                )
                m.setattr(sequential._Chain, "capture", spy)
            m.setattr(compress_module, "_error_curves", recorded(compress_module._error_curves, rows[chain]))
            kwargs = SMALL | {"calibration_heldout": 0}
            compress(copy.deepcopy(model), x, budget=0.5, method="whiten", sequential=True, **kwargs)
    assert [r[0] for r in rows[True]] == [n.replace("blocks", "path") for n in CHAIN_LAYERS]
    assert len(captured) == 2 and all(c is not None for c in captured)  # the chain ran (allocation, pass)
    assert rows[True] == rows[False]


def test_layer_free_in_place_blocks_stay_in_the_chain(monkeypatch):
    """A Sequential's in-place ReLU between its Linear layers is a block of its own, holding no layer: it
    changes its input, but no replay runs it twice on one input, so the chain keeps it and gives the
    whole forwards' factors bit for bit (no held-out split)."""

    def net() -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(6, 10), nn.ReLU(inplace=True), nn.Linear(10, 10), nn.ReLU(inplace=True),
            nn.Linear(10, 10), nn.ReLU(inplace=True), nn.Linear(10, 3),
        )  # fmt: skip

    model = seeded_model(net).eval()
    x = list(inputs((6,), n=120).split(40))
    names = ["2", "4"]  # the stem and the classifier stay dense
    blocks = sequential._blocks(model, names)
    assert blocks == ["2", "3", "4"]
    assert sequential._Chain.capture(model, blocks, names, x, None, False) is not None
    kwargs = SMALL | {"calibration_heldout": 0}
    chained, whole = compressed_both_ways(model, x, monkeypatch, rank_scale=0.5, **kwargs)
    assert all(torch.equal(v, whole[k]) for k, v in chained.items())


def test_inference_tensors_decline_the_chain_without_failing():
    """Calibration made under torch.inference_mode: block 0's input is the model input, an inference tensor
    with no version counter, so nothing can be checked: capture declines and compress runs whole forwards."""
    model = seeded_model(lambda: nn.Sequential(Plain(6), Plain(6), Plain(6))).eval()
    with torch.inference_mode():
        x = inputs((6,), n=60)
    names = [f"{k}.fc{i}" for k in range(3) for i in (1, 2)]
    assert sequential._Chain.capture(model, ["0", "1", "2"], names, x, None, False) is None
    report = compress(model, x, budget=0.5, method="whiten", sequential=True, factorize_stem=True, **SMALL)
    assert [r.name for r in report.layers] == names[:-1]  # the last Linear, the classifier, stays dense


def test_the_allocations_kept_inputs_are_freed_before_the_pass(monkeypatch):
    chains: list[weakref.ref] = []
    capture = sequential._Chain.capture.__func__
    solve = compress_module._factorize_sequential
    alive_at_pass = []

    def spy(cls, *args, **kwargs):
        chain = capture(cls, *args, **kwargs)
        chains.append(weakref.ref(chain))
        return chain

    def pass_(*args, **kwargs):
        gc.collect()
        alive_at_pass.append([c() is not None for c in chains])
        return solve(*args, **kwargs)

    monkeypatch.setattr(sequential._Chain, "capture", classmethod(spy))
    monkeypatch.setattr(compress_module, "_factorize_sequential", pass_)
    compress(seeded_model(lambda: Chain()).eval(), inputs((6,), n=60), budget=0.5, sequential=True, **SMALL)
    assert alive_at_pass == [[False]] and len(chains) == 2  # the allocation's, dead; then the pass's


class FixedBatch(Chain):
    """A Chain that runs only on batches of 20 (its held-out parts fail)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 20:
            raise RuntimeError("batches of 20 only")
        return super().forward(x)


def test_a_model_failing_on_part_of_a_batch_declines_the_split_chain():
    """_rows_align runs the model on every other row of the first batch: a model that cannot is declined
    (whole forwards then report the failure themselves), not an error about a batch the user never gave."""
    model = seeded_model(FixedBatch).eval()
    blocks = sequential._blocks(model, CHAIN_LAYERS)
    x = list(inputs((6,), n=60).split(20))
    assert sequential._Chain.capture(model, blocks, CHAIN_LAYERS, x, None, False) is not None
    assert sequential._Chain.capture(model, blocks, CHAIN_LAYERS, x, None, True) is None


def test_the_rows_check_tolerates_the_rounding_of_the_dtype():
    """A batch and its part may round differently (GEMMs blocked otherwise): 1e-5 of the largest entry in
    float32 and float64, 4 eps in a coarser dtype (bfloat16 eps = 2^-7, float16 2^-10)."""
    assert sequential._rounding(torch.zeros(2)) == 1e-5
    assert sequential._rounding(torch.zeros(2, dtype=torch.float64)) == 1e-5
    assert sequential._rounding(torch.zeros(2, dtype=torch.bfloat16)) == 4 * 2.0**-7
    assert sequential._rounding(torch.zeros(2, dtype=torch.float16)) == 4 * 2.0**-10


@pytest.mark.parametrize("between", ["tuple", "mix"])
def test_samples_the_split_cannot_cut_on_kept_inputs_decline_it(between):
    """Under the held-out split: a per-sample tensor inside a tuple input (the split cuts only tensors), or
    blocks that mix their batch's rows (block 0's input aligns, the last block's output does not): the chain
    is declined with the split and kept without it."""
    model = seeded_model(lambda: Chain(between=between)).eval()
    blocks = sequential._blocks(model, CHAIN_LAYERS)
    x = list(inputs((6,), n=60).split(20))
    assert sequential._Chain.capture(model, blocks, CHAIN_LAYERS, x, None, True) is None
    assert sequential._Chain.capture(model, blocks, CHAIN_LAYERS, x, None, False) is not None
