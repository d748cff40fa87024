"""What lies between a layer and its activation: the post-op found by tracing, BatchNorm folded (eval) or
normalizing (train), and the scale-free objective and solvers for normalized layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from strategies import problems, seeded, weight
from torch import nn

import nlinit
from nlinit.activations import Activation
from nlinit.graph import PostOp, trace_layers
from nlinit.objective import arccos_kernel, normalized_loss
from nlinit.subspace import truncated_svd

F64 = torch.float64
NORMALIZED = PostOp("normalized")


class ConvBN(nn.Module):
    """stem -> conv -> BN -> ReLU (x2) -> pooled linear head; BN in whatever mode the module is in."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _convbn(seed: int = 0) -> ConvBN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvBN().double()
    with torch.no_grad():  # non-trivial eval statistics and affine parameters
        g = seeded(seed + 1)
        for bn in (model.bn1, model.bn2):
            bn.running_mean.normal_(0, 0.3, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.normal_(0, 0.2, generator=g)
    return model


def test_trace_finds_batchnorm_in_each_mode():
    model = _convbn()
    graph = trace_layers(model.train())
    assert graph.post_ops["conv1"] == PostOp("normalized", names=("bn1",))
    assert graph.post_ops["stem"] == PostOp() and graph.post_ops["fc"] == PostOp()
    graph = trace_layers(model.eval())
    post = graph.post_ops["conv2"]
    assert (post.kind, post.names, post.describe()) == ("affine", ("bn2",), "BatchNorm2d bn2 (eval: affine)")


def test_folded_affine_is_the_eval_batchnorm():
    model = _convbn().eval()
    s, t = trace_layers(model).post_ops["conv1"].affine()
    z = torch.randn(4, 32, 5, 5, dtype=F64, generator=seeded(2))
    with torch.no_grad():
        torch.testing.assert_close(model.bn1(z), s[:, None, None] * z + t[:, None, None])


def test_no_fold_through_a_concatenation():
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.bn = nn.Linear(4, 8), nn.Linear(4, 8), nn.BatchNorm1d(16)
            self.out = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))

    post = trace_layers(Cat().eval()).post_ops["a"]
    assert post.kind == "none" and "concatenation" in post.note


def test_normalized_loss_is_scale_free_and_relu_closed_form():
    W, Y = weight(0, 7, 5), weight(1, 7, 5)
    rho = (W * Y).sum(1) / (W.norm(dim=1) * Y.norm(dim=1))
    # ReLU, Sigma = I: sum_i (1 - g(rho_i)) (docs/theory.md, section 11); float64 rounding only
    torch.testing.assert_close(normalized_loss(W, Y), (1 - arccos_kernel(rho)).sum(), rtol=1e-12, atol=0)
    scales = torch.rand(7, 1, dtype=F64, generator=seeded(2)) * 5 + 0.1
    for act in ("relu", "silu", "tanh"):
        torch.testing.assert_close(
            normalized_loss(W, scales * Y, act), normalized_loss(W, Y, act), rtol=1e-10, atol=1e-14
        )


@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)", "silu"])
def test_spectral_and_relu_svd_are_the_same_function_under_training_batchnorm(act):
    """The one-line proof of docs/theory.md section 11: relu-svd only rescales spectral's rows, and a
    training-mode BatchNorm removes every positive per-unit scale."""
    model = _convbn().train()
    for bn in (model.bn1, model.bn2):
        bn.eps = 1e-12  # BN's eps, added to each unit's batch variance, is the only scale BN does not remove
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    options = {"rank_scale": 0.25, "activation": act, "fit": "paper"}
    nlinit.factorize(a, init="spectral", **options)
    nlinit.factorize(b, init="relu-svd", **options)
    assert not torch.equal(a.conv1.U @ a.conv1.V.T, b.conv1.U @ b.conv1.V.T)  # the weights differ
    x = torch.randn(8, 3, 12, 12, dtype=F64, generator=seeded(3))
    with torch.no_grad():
        out_a, out_b = a(x), b(x)  # train mode: batch statistics
    # the same function up to float64 rounding through two BatchNorms (and eps / var ~ 1e-11)
    torch.testing.assert_close(out_a, out_b, rtol=1e-8, atol=1e-8 * float(out_a.abs().max()))


@pytest.mark.parametrize("init", ["relu-svd", "nlra-opt"])
@pytest.mark.parametrize("act", ["relu", "silu"])
@given(problem=problems(max_dim=7))
def test_normalized_solvers_never_worse_than_spectral(init, act, problem):
    seed, d_out, d_in, rank = problem
    W = weight(seed, d_out, d_in) * torch.rand(d_out, 1, dtype=F64, generator=seeded(seed)).add(0.1)
    U, V = (
        nlinit.init_factors(W, rank, init, act, post=NORMALIZED, max_iter=20)
        if init == "nlra-opt"
        else (nlinit.init_factors(W, rank, init, act, post=NORMALIZED))
    )
    Us, Vs = nlinit.init_factors(W, rank, "spectral")
    assert float(normalized_loss(W, U @ V.T, act)) <= float(normalized_loss(W, Us @ Vs.T, act)) + 1e-12


def test_normalized_nlra_opt_helps_when_row_norms_are_unequal():
    # a few loud units dominate spectral's subspace; normalization weighs every unit the same
    W = weight(0, 40, 30) * torch.cat([torch.full((4, 1), 20.0), torch.ones(36, 1)]).to(F64)
    U, V = nlinit.init_factors(W, 5, "nlra-opt", post=NORMALIZED, max_iter=0)  # the better start alone
    Us, Vs = nlinit.init_factors(W, 5, "spectral")
    assert float(normalized_loss(W, U @ V.T)) < 0.95 * float(normalized_loss(W, Us @ Vs.T))


@given(problem=problems(max_dim=7))
def test_normalized_relu_svd_is_spectral(problem):
    """Under a normalization the row norms are free, so the optimum on the SVD subspace is W P_S: spectral's
    product, returned as spectral's very factors."""
    seed, d_out, d_in, rank = problem
    W = weight(seed, d_out, d_in)
    U, V = nlinit.init_factors(W, rank, "relu-svd", post=NORMALIZED)
    Us, Vs = truncated_svd(W, rank).factors()
    assert torch.equal(U, Us) and torch.equal(V, Vs)


def test_factorize_uses_and_reports_the_normalized_objective():
    model = _convbn().train()
    report = nlinit.factorize(model, rank_scale=0.25)
    reps = {r.name: r for r in report.factorized}
    assert set(reps) == {"conv1", "conv2"}
    for name, rep in reps.items():
        assert rep.post_op == f"bias; BatchNorm2d bn{name[-1]} (train: normalized)"
        assert rep.objective_method == "exact, normalized" and rep.init == "relu-svd"
        assert rep.objective_init <= rep.objective_spectral + 1e-12
    assert "(train: normalized)" in report.to_markdown()
    plain = nlinit.factorize(_convbn().train(), rank_scale=0.25, fit="paper")
    assert {r.objective_method for r in plain.factorized} == {"exact"}
    assert report.config["fit"] == "layer" and plain.config["fit"] == "paper"


def test_fit_paper_is_the_papers_objective_whatever_follows_the_layer():
    # fit="paper" ignores the bias and the training-mode BatchNorm: each layer's factors are those of its
    # weight alone under x ~ N(0, I) (init_factors); fit="layer" fits the normalized objective instead, where
    # relu-svd's optimum is spectral's product (docs/theory.md 11.3), so the two differ.
    model = _convbn().train()
    weights = {n: getattr(model, n).weight.detach().clone() for n in ("conv1", "conv2")}
    paper = copy.deepcopy(model)
    nlinit.factorize(paper, rank=3, init="relu-svd", fit="paper")
    layer = copy.deepcopy(model)
    nlinit.factorize(layer, rank=3, init="relu-svd")
    for name, W in weights.items():
        U, V = nlinit.init_factors(W.reshape(W.shape[0], -1), 3, "relu-svd", activation="relu")
        torch.testing.assert_close(getattr(paper, name).matrix(), U @ V.T, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(layer.conv1.matrix(), paper.conv1.matrix(), rtol=1e-3)


def test_post_must_be_a_post_op():
    with pytest.raises(TypeError, match="post must be a PostOp"):
        nlinit.init_factors(weight(0, 6, 5), 2, "relu-svd", post="normalized")  # type: ignore[arg-type]


def test_normalized_objective_of_an_activation_is_weighted_equally():
    act = Activation("relu")
    W = torch.tensor([[10.0, 0.0], [0.0, 0.1]], dtype=F64)
    Y = torch.tensor([[10.0, 0.0], [0.0, 0.0]], dtype=F64)  # loses the quiet unit only
    # unit 1 is a constant unit after normalization: E (relu(0) - relu(z))^2 = 1/2 for z ~ N(0, 1)
    torch.testing.assert_close(normalized_loss(W, Y, act), torch.tensor(0.5, dtype=F64), rtol=1e-12, atol=0)
