"""nlinit.sensitivity (projected gradients at layer outputs) and compress(allocate="sensitivity"): c and t
are the projected gradients times the projected inputs summed over positions, the Fisher and output probes
have their expected scale, the pass changes nothing in the model, the curve is the real second-order loss
change of whiten's truncation (brute force, float64), an amplified layer gets more rank, predictions scale
as c^2 with the loss, budget= and macs= are met, bad input is one line."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from nets import FancyNet, assert_unchanged, check_one_line_error, seeded_model, snapshot
from test_compress import NETS, SMALL, inputs
from torch import nn

from nlinit.allocate import max_saving_rank
from nlinit.compress import compress
from nlinit.sensitivity import Projection, projected_gradients


class ConvHead(nn.Module):
    """conv (4 channels at 5x5 positions) -> flatten -> fc1 -> ReLU(inplace) -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1 = nn.Linear(100, 8)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.fc1(self.conv(x).flatten(1))))


def half_square(out: torch.Tensor) -> torch.Tensor:
    """0.5 ||f(x)||^2 summed over the batch: its gradient at the output is the output itself."""
    return 0.5 * out.square().sum()


def random_projection(layer: nn.Module, rank: int, generator: torch.Generator) -> Projection:
    m, d = layer.weight.shape[0], layer.weight[0].numel()
    A, B, mu, center = (
        torch.randn(*shape, generator=generator) for shape in ((rank, d), (rank, m), (d,), (m,))
    )
    return Projection(A, B, mu, center)


def test_c_and_total_are_the_projected_gradients_times_the_projected_inputs_summed_over_positions(generator):
    model = seeded_model(ConvHead).eval()
    x = torch.randn(40, 3, 5, 5, generator=generator)
    proj = {n: random_projection(getattr(model, n), 3, generator) for n in ("conv", "fc1")}
    got = projected_gradients(model, proj, x, loss=half_square, batch_size=16)  # 16 + 16 + 8
    with torch.no_grad():  # by hand: g_out = out, back through fc, the ReLU's mask, fc1
        y0 = model.conv(x)
        y1 = model.fc1(y0.flatten(1))
        g1 = (model.fc(y1.relu()) @ model.fc.weight) * (y1 > 0)  # the mask: fc1's output, not the ReLU's
        g0 = (g1 @ model.fc1.weight).reshape(40, 4, 5, 5)
        patches = F.unfold(x, 3, padding=1).transpose(1, 2)  # (40, 25 positions, 27), channel layout
    assert got.count == 40 and got.loss == "callable half_square"
    for name, X, G, Y in (
        ("fc1", y0.flatten(1)[:, None], g1[:, None], y1[:, None]),
        ("conv", patches, g0.flatten(2).transpose(1, 2), y0.flatten(2).transpose(1, 2)),
    ):
        p = proj[name]
        P = (X.double() - p.mean.double()) @ p.inputs.double().T  # A (x_p - mu)
        c = torch.einsum("npr,npr->nr", G.double() @ p.outputs.double().T, P)
        t = (G.double() * (Y.double() - p.center.double())).sum((1, 2))
        # float32 projections and gradients in the pass: a few ulps of sums of ~100 terms
        torch.testing.assert_close(got.c[name], c, rtol=1e-4, atol=1e-4 * float(c.abs().max()))
        torch.testing.assert_close(got.total[name], t, rtol=1e-4, atol=1e-4 * float(t.abs().max()))


def test_the_output_probe_and_the_fisher_have_their_expected_second_moment(generator):
    """At the model's output itself, t_n = g_n . v_n with v = y - center: the probe's g = r gives E t^2 =
    ||v||^2; the Fisher's g = p - e_y with y ~ p gives E t^2 = v^T (diag p - p p^T) v (labels from argmax
    would give ((p - e_max) . v)^2)."""
    n = 4000
    x = torch.randn(n, 6, generator=generator)
    embed = nn.Sequential(seeded_model(lambda: nn.Linear(6, 16)), nn.Unflatten(1, (4, 4)))  # a 3-D output
    proj = {"0": random_projection(embed[0], 2, generator)}
    got = projected_gradients(embed, proj, x, generator=generator)
    assert got.loss == "auto: output"
    with torch.no_grad():
        v2 = (embed[0](x).double() - proj["0"].center.double()).square().sum(1)
    # t^2 = v2 chi^2_1: the mean of n has relative standard deviation below ~sqrt(2 / n) max/mean v2
    assert float(got.total["0"].square().mean()) == pytest.approx(float(v2.mean()), rel=0.08)

    classifier = nn.Sequential(seeded_model(lambda: nn.Linear(6, 5)))
    with torch.no_grad():
        classifier[0].weight.mul_(3)  # peaked but not saturated softmaxes
        y = classifier(x).double()
    p = y.softmax(1)
    proj = {"0": Projection(torch.ones(1, 6), torch.ones(1, 5), None, torch.zeros(5))}
    got = projected_gradients(classifier, proj, x, generator=generator)
    assert got.loss == "auto: fisher"
    fisher = float(((p * y.square()).sum(1) - (p * y).sum(1).square()).mean())
    argmax = float(((p - F.one_hot(p.argmax(1), 5)) * y).sum(1).square().mean())
    assert float(got.total["0"].square().mean()) == pytest.approx(fisher, rel=0.1)
    assert abs(fisher - argmax) > 0.3 * fisher  # the test tells the two apart


def test_the_pass_leaves_parameters_grads_buffers_and_mode_unchanged(generator):
    model = NETS["cnn"][0]().train()  # TinyCNN: BatchNorm, whose running statistics train mode would move
    model.fc1.weight.grad = torch.randn_like(model.fc1.weight)
    grad = model.fc1.weight.grad.clone()
    snap = snapshot(model)
    x = inputs((3, 8, 8))
    proj = {n: random_projection(getattr(model, n), 2, generator) for n in ("c1", "c2", "fc1")}
    first = projected_gradients(model, proj, x, generator=torch.Generator().manual_seed(0))
    assert model.training
    assert_unchanged(model, snap)
    assert torch.equal(model.fc1.weight.grad, grad)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc1.weight")
    model.eval()
    for p in model.parameters():  # frozen parameters: the outputs are made leaves, c the same
        p.requires_grad_(False)
    frozen = projected_gradients(model, proj, x, generator=torch.Generator().manual_seed(0))
    assert not model.training
    for name, c in first.c.items():
        assert c.shape == (100, 2) and bool(c.any())
        torch.testing.assert_close(frozen.c[name], c, rtol=1e-12, atol=0)  # the same float32 ops


class Amplified(nn.Module):
    """stem -> ReLU -> two identical Linears a, b on the same input -> fc(100 a(h) + b(h)): the loss is
    100x as sensitive to a's output as to b's (no nonlinearity between them and the logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        self.fc = nn.Linear(32, 10)
        with torch.no_grad():
            self.b.load_state_dict(self.a.state_dict())
            self.fc.weight.mul_(0.01)  # logits of order 1, so the Fisher's softmax is not saturated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        return self.fc(100 * self.a(h) + self.b(h))


@pytest.mark.parametrize("loss", ["auto", "output"])
def test_an_amplified_layer_gets_a_larger_share_than_under_energy(loss):
    x = inputs((16,), n=200)
    ranks = {}
    for allocate in ("energy", "sensitivity"):
        report = compress(
            seeded_model(Amplified).eval(), x, budget=0.3, method="whiten", allocate=allocate,
            sensitivity_loss=loss, **SMALL,
        )  # fmt: skip
        ranks[allocate] = {layer.name: layer.rank for layer in report.layers}
    assert set(ranks["energy"]) == {"a", "b"}
    assert abs(ranks["energy"]["a"] - ranks["energy"]["b"]) <= 1  # identical curves: a tie, split
    assert (
        ranks["sensitivity"]["a"] > ranks["energy"]["a"] and ranks["sensitivity"]["b"] < ranks["energy"]["b"]
    )


def test_predictions_are_positive_and_scale_with_the_loss_squared_and_ranks_do_not_move():
    build, shape, names = NETS["cnn"]
    x = inputs(shape)
    auto = compress(build(), x, budget=0.4, method="whiten", allocate="sensitivity", **SMALL)
    assert auto.config["sensitivity_loss"] == "auto: fisher"
    assert all(0 < d < float("inf") for d in auto.config["predicted_loss"].values())

    def loss(out: torch.Tensor) -> torch.Tensor:
        return out.logsumexp(1).sum()

    def four_times(out: torch.Tensor) -> torch.Tensor:
        return 4 * loss(out)  # a power of 2: every gradient exactly 4x, every prediction exactly 16x

    one, four = (
        compress(build(), x, budget=0.4, method="whiten", allocate="sensitivity", sensitivity_loss=f, **SMALL)
        for f in (loss, four_times)
    )
    w1, w4 = one.config["predicted_loss"], four.config["predicted_loss"]
    assert list(w1) == names and all(0 < w < float("inf") for w in w1.values())
    assert {n: 16 * w for n, w in w1.items()} == w4
    assert [x.rank for x in one.layers] == [x.rank for x in four.layers]
    assert four.config[
        "sensitivity_loss"
    ] == "callable test_predictions_are_positive_and_scale_with_the_loss_" + (
        "squared_and_ranks_do_not_move.<locals>.four_times"
    )


def test_a_hugging_face_like_output_uses_its_last_hidden_state(generator):
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 8)

        def forward(self, x: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(last_hidden_state=self.proj(x).unflatten(1, (2, 4)), pooler_output=None)

    model = seeded_model(Encoder)
    proj = {"proj": random_projection(model.proj, 3, generator)}
    got = projected_gradients(model, proj, torch.randn(32, 6, generator=generator), generator=generator)
    assert got.loss == "auto: output" and got.c["proj"].shape == (32, 3) and got.total["proj"].shape == (32,)


class NoTensor(nn.Module):
    """TinyCNN returning only an integer prediction: no floating-point tensor to take a loss of."""

    def __init__(self) -> None:
        super().__init__()
        self.net = NETS["cnn"][0]()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"label": self.net(x).argmax(1)}


def test_a_model_whose_output_holds_no_tensor_is_one_line_and_unchanged():
    model = NoTensor().eval()
    snap = snapshot(model)
    x = inputs((3, 8, 8), n=20)
    check_one_line_error(
        lambda: compress(model, x, budget=0.5, allocate="sensitivity", **SMALL),
        ValueError,
        r"the model's output \(a dict\) holds no floating-point tensor; give sensitivity_loss a callable",
    )
    assert_unchanged(model, snap)
    assert not model.training


def pg(model: nn.Module, x: object, names: tuple[str, ...] = ("0",), **kwargs):
    """projected_gradients with a rank-1 projection per layer."""
    proj = {n: random_projection(model.get_submodule(n), 1, torch.Generator()) for n in names}
    return projected_gradients(model, proj, x, **kwargs)


class Spare(nn.Sequential):
    """A Linear and a spare one that the forward never calls."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 6))
        self.spare = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](x)


class Flat(nn.Sequential):
    """A Linear on the batch's (inputs x tokens) rows flattened together."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](x.flatten(0, 1)).unflatten(0, x.shape[:2])


BAD = {
    "fisher of a 3-D output": (
        lambda: pg(nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3))),
                                 torch.randn(5, 4), loss="fisher"),
        ValueError,
        r"sensitivity_loss='fisher' needs \(batch, classes\) logits, got a model output of shape \(5, 2, 3\)",
    ),
    "a loss not depending on the layers": (
        lambda: pg(nn.Sequential(nn.Linear(4, 6)), torch.randn(5, 4),
                                 loss=lambda out: torch.tensor(1.0)),
        ValueError,
        r"calibration batch 0: the sensitivity loss \(callable .*\) does not depend on the outputs of the la",
    ),
    "a non-finite loss": (
        lambda: pg(nn.Sequential(nn.Linear(4, 6)), torch.randn(5, 4),
                                 loss=lambda out: out.sum() * float("inf")),
        ValueError,
        r"calibration batch 0: sensitivity_loss returned (-?inf|nan)$",
    ),
    "a non-scalar loss": (
        lambda: pg(nn.Sequential(nn.Linear(4, 6)), torch.randn(5, 4), loss=lambda o: o),
        ValueError,
        r"sensitivity_loss must return a floating-point 0-dim tensor, got shape \(5, 6\)$",
    ),
    "an unknown loss": (
        lambda: pg(nn.Sequential(nn.Linear(4, 6)), torch.randn(5, 4), loss="kl"),
        ValueError,
        r"sensitivity_loss must be one of auto, fisher, output or a callable output -> scalar loss, got 'kl'",
    ),
    "empty calibration": (
        lambda: pg(nn.Sequential(nn.Linear(4, 6)), []),
        ValueError,
        r"calibration is empty",
    ),
    "a layer that never runs": (
        lambda: pg(Spare(), [torch.randn(5, 4)], ("0", "spare")),
        ValueError,
        r"layer 'spare' never ran in the model's forward on the calibration data$",
    ),
    "batches 0": (
        lambda: pg(nn.Sequential(nn.Linear(4, 6)), torch.randn(5, 4), batches=0),
        ValueError,
        r"batches must be an int >= 1, got 0$",
    ),
    "a projection of the wrong shape": (
        lambda: projected_gradients(nn.Sequential(nn.Linear(4, 6)),
                                    {"0": Projection(torch.ones(2, 5), torch.ones(2, 6))}, torch.randn(5, 4)),
        ValueError,
        r"projections\['0'\].inputs must be a floating-point tensor of shape \(2, 4\) for the layer's 6x4",
    ),
    "not a projection": (
        lambda: projected_gradients(nn.Sequential(nn.Linear(4, 6)), {"0": torch.ones(2, 4)},
                                    torch.randn(5, 4)),
        TypeError,
        r"projections\['0'\] must be a Projection, got Tensor$",
    ),
    "a layer whose rows are not the model inputs": (
        lambda: pg(Flat(), torch.randn(5, 2, 4)),
        ValueError,
        r"calibration batch 0: layer '0''s output has 10 rows on its first dimension, the batch 5 model",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_input(case):
    check_one_line_error(*case)


class Tokens(nn.Module):
    """conv (stem) -> BN -> ReLU -> conv (stride 2) -> BN (one unit with scale 0) -> ReLU -> 16 tokens of 6
    -> Linear per token (called twice) -> ReLU -> mean over tokens -> fc: every kind of position."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6)
        self.tok = nn.Linear(6, 10)
        self.fc = nn.Linear(10, 4)
        with torch.no_grad():
            for bn in (self.b1, self.b2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 2.0)
                bn.bias.uniform_(-0.5, 0.5)
            self.b2.weight[0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        t = h.flatten(2).transpose(1, 2)  # (n, 16, 6)
        return self.fc((F.relu(self.tok(t)) + F.relu(self.tok(0.5 * t))).mean(1))


def fisher_like(out: torch.Tensor) -> torch.Tensor:
    """A fixed smooth per-sample loss summed over the batch (its gradient is not 0 in expectation, which
    the identity below does not need)."""
    return (torch.logsumexp(out, 1) - out[:, 0] + 0.1 * out[:, 1].square()).sum()


@pytest.mark.parametrize(
    ("build", "names", "budget"),
    [
        (Tokens, {"c1", "c2", "tok", "fc"}, 0.3),
        (Tokens, {"c1", "c2", "tok", "fc"}, 0.6),
        (FancyNet, {"c1", "c2", "c3", "c4", "c5", "fc"}, 0.4),  # stride, dilation, padding modes
    ],
)
def test_the_curve_is_the_second_order_loss_change_of_the_truncated_layer_exactly(build, names, budget):
    """Delta_l(r) from c (compress's predicted_loss at the rank it gave) equals 1/2 mean_n (sum_p g . dy)^2
    with dy the real output change of the layer that whiten put in at that rank, on the calibration inputs:
    the same quantity, so float64 rounding apart (measured 2e-14 relative; 1e-11 allowed)."""
    model = seeded_model(build).double().eval()
    dense = copy.deepcopy(model)
    x = inputs((3, 8, 8), n=40).double()
    report = compress(
        model, x, budget=budget, method="whiten", allocate="sensitivity", sensitivity_loss=fisher_like,
        factorize_stem=True, factorize_classifier=True, calibration_batches=None, **SMALL,
    )  # fmt: skip
    predicted = report.config["predicted_loss"]
    assert set(predicted) == names
    kept: dict[str, list] = {n: [] for n in predicted}
    handles = [
        getattr(dense, n).register_forward_hook(lambda m, a, y, n=n: kept[n].append((a[0], y)))
        for n in predicted
    ]
    loss = fisher_like(dense(x))
    for h in handles:
        h.remove()
    for name, calls in kept.items():
        grads = torch.autograd.grad(loss, [y for _, y in calls], retain_graph=True)
        low = getattr(model, name)
        change = sum(
            (g * (low(a) - y)).flatten(1).sum(1) for (a, y), g in zip(calls, grads)
        )  # sum_p g_{n,p} . dy_{n,p}, every call
        direct = 0.5 * float(change.detach().square().mean())
        assert direct > 0
        assert predicted[name] == pytest.approx(direct, rel=1e-11), name


@pytest.mark.parametrize("kind", ["budget", "macs"])
def test_ranks_are_within_bounds_and_the_budget_is_met(kind):
    build, shape, names = NETS["cnn"]
    report = compress(
        build().eval(), inputs(shape), method="whiten", allocate="sensitivity", **{kind: 0.4}, **SMALL
    )
    assert [x.name for x in report.layers] == names
    assert all(1 <= x.rank <= max_saving_rank(*x.shape) for x in report.layers)
    spent = sum(x.params_after if kind == "budget" else x.macs_after for x in report.layers)
    assert spent <= report.config["budget_params"]
