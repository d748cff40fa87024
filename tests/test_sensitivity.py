"""nlinit.sensitivity (gradient energies at layer outputs) and compress(allocate="sensitivity"): the energies
are the per-unit squared gradients summed over positions, the Fisher and output probes have their expected
scale, the pass changes nothing in the model, an amplified layer gets more rank, weights scale as c^2 with
the loss, bad input is one line."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from nets import assert_unchanged, check_one_line_error, seeded_model, snapshot
from test_compress import NETS, SMALL, inputs
from torch import nn

from nlinit.compress import compress
from nlinit.sensitivity import output_gradients


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


def test_energy_is_the_squared_gradient_per_unit_summed_over_positions_and_averaged_over_inputs(generator):
    model = seeded_model(ConvHead).eval()
    x = torch.randn(40, 3, 5, 5, generator=generator)
    grads = output_gradients(model, ["conv", "fc1"], x, loss=half_square, batch_size=16)  # 16 + 16 + 8
    with torch.no_grad():  # by hand: g_out = out, back through fc, the ReLU's mask, fc1
        y1 = model.fc1(model.conv(x).flatten(1))
        g1 = (model.fc(y1.relu()) @ model.fc.weight) * (y1 > 0)  # the mask: fc1's output, not the ReLU's
        g_conv = (g1 @ model.fc1.weight).reshape(40, 4, 5, 5)
    assert grads.count == 40 and grads.loss == "callable half_square"
    # float32 forward and backward in both: a few ulps of sums of ~100 terms
    torch.testing.assert_close(grads.energy["fc1"], g1.double().square().sum(0) / 40, rtol=1e-5, atol=0)
    expected = g_conv.double().square().sum((0, 2, 3)) / 40
    torch.testing.assert_close(grads.energy["conv"], expected, rtol=1e-5, atol=0)


def test_the_output_probe_and_the_fisher_have_their_expected_energy(generator):
    """At the model's output itself: the probe's g = r, so E g_i^2 = 1; the Fisher's g = p - e_y with
    y ~ p, so E ||g||^2 = 1 - ||p||^2 (labels from argmax would give (1 - p_max)^2 + sum_{j != max} p_j^2)."""
    n = 4000
    x = torch.randn(n, 6, generator=generator)
    embed = nn.Sequential(seeded_model(lambda: nn.Linear(6, 16)), nn.Unflatten(1, (4, 4)))  # a 3-D output
    got = output_gradients(embed, ["0"], x, generator=generator)
    assert got.loss == "auto: output"
    # mean of 16 n chi^2_1 / (16 n) draws: standard deviation sqrt(2 / 64000) = 0.0056; 0.03 is 5 of them
    assert float(got.energy["0"].mean()) == pytest.approx(1.0, abs=0.03)

    classifier = nn.Sequential(seeded_model(lambda: nn.Linear(6, 5)))
    with torch.no_grad():
        classifier[0].weight.mul_(3)  # peaked but not saturated softmaxes
        p = classifier(x).softmax(1).double()
    got = output_gradients(classifier, ["0"], x, generator=generator)
    assert got.loss == "auto: fisher"
    fisher = float((1 - p.square().sum(1)).mean())
    top = p.max(1).values
    argmax = float(((1 - top) ** 2 + p.square().sum(1) - top**2).mean())
    # ||g||^2 lies in [0, 2], so the mean of n draws has standard deviation below 1 / sqrt(n) = 0.016
    assert float(got.energy["0"].sum()) == pytest.approx(fisher, abs=0.05)
    assert abs(fisher - argmax) > 0.15  # the test tells the two apart


def test_the_pass_leaves_parameters_grads_buffers_and_mode_unchanged(generator):
    model = NETS["cnn"][0]().train()  # TinyCNN: BatchNorm, whose running statistics train mode would move
    model.fc1.weight.grad = torch.randn_like(model.fc1.weight)
    grad = model.fc1.weight.grad.clone()
    snap = snapshot(model)
    x = inputs((3, 8, 8))
    first = output_gradients(model, ["c1", "c2", "fc1"], x, generator=torch.Generator().manual_seed(0))
    assert model.training
    assert_unchanged(model, snap)
    assert torch.equal(model.fc1.weight.grad, grad)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc1.weight")
    model.eval()
    for p in model.parameters():  # frozen parameters: the outputs are made leaves, the energies the same
        p.requires_grad_(False)
    frozen = output_gradients(model, ["c1", "c2", "fc1"], x, generator=torch.Generator().manual_seed(0))
    assert not model.training
    for name, e in first.energy.items():
        torch.testing.assert_close(frozen.energy[name], e, rtol=1e-12, atol=0)  # the same float32 ops


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
    weights = report.config["sensitivity_weights"]
    assert weights["a"] == pytest.approx(1e4 * weights["b"], rel=1e-4)  # g_a = 100 g_b exactly, up to float32
    assert (
        ranks["sensitivity"]["a"] > ranks["energy"]["a"] and ranks["sensitivity"]["b"] < ranks["energy"]["b"]
    )


def test_weights_are_positive_and_scale_with_the_loss_squared_and_ranks_do_not_move():
    build, shape, names = NETS["cnn"]
    x = inputs(shape)
    auto = compress(build(), x, budget=0.4, method="whiten", allocate="sensitivity", **SMALL)
    assert auto.config["sensitivity_loss"] == "auto: fisher"
    assert all(0 < w < float("inf") for w in auto.config["sensitivity_weights"].values())

    def loss(out: torch.Tensor) -> torch.Tensor:
        return out.logsumexp(1).sum()

    def four_times(out: torch.Tensor) -> torch.Tensor:
        return 4 * loss(out)  # a power of 2: every gradient exactly 4x, every weight exactly 16x

    one, four = (
        compress(build(), x, budget=0.4, method="whiten", allocate="sensitivity", sensitivity_loss=f, **SMALL)
        for f in (loss, four_times)
    )
    w1, w4 = one.config["sensitivity_weights"], four.config["sensitivity_weights"]
    assert list(w1) == names and all(0 < w < float("inf") for w in w1.values())
    assert {n: 16 * w for n, w in w1.items()} == w4
    assert [x.rank for x in one.layers] == [x.rank for x in four.layers]
    assert four.config[
        "sensitivity_loss"
    ] == "callable test_weights_are_positive_and_scale_with_the_loss_" + (
        "squared_and_ranks_do_not_move.<locals>.four_times"
    )


def test_a_hugging_face_like_output_uses_its_last_hidden_state(generator):
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 8)

        def forward(self, x: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(last_hidden_state=self.proj(x).unflatten(1, (2, 4)), pooler_output=None)

    got = output_gradients(seeded_model(Encoder), ["proj"], torch.randn(32, 6, generator=generator))
    assert got.loss == "auto: output" and got.energy["proj"].shape == (8,)


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


class Spare(nn.Sequential):
    """A Linear and a spare one that the forward never calls."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 6))
        self.spare = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](x)


BAD = {
    "fisher of a 3-D output": (
        lambda: output_gradients(nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3))), ["0"],
                                 torch.randn(5, 4), loss="fisher"),
        ValueError,
        r"sensitivity_loss='fisher' needs \(batch, classes\) logits, got a model output of shape \(5, 2, 3\)",
    ),
    "a loss not depending on the layers": (
        lambda: output_gradients(nn.Sequential(nn.Linear(4, 6)), ["0"], torch.randn(5, 4),
                                 loss=lambda out: torch.tensor(1.0)),
        ValueError,
        r"calibration batch 0: the sensitivity loss \(callable .*\) does not depend on the outputs of the la",
    ),
    "a non-finite loss": (
        lambda: output_gradients(nn.Sequential(nn.Linear(4, 6)), ["0"], torch.randn(5, 4),
                                 loss=lambda out: out.sum() * float("inf")),
        ValueError,
        r"calibration batch 0: sensitivity_loss returned (-?inf|nan)$",
    ),
    "a non-scalar loss": (
        lambda: output_gradients(nn.Sequential(nn.Linear(4, 6)), ["0"], torch.randn(5, 4), loss=lambda o: o),
        ValueError,
        r"sensitivity_loss must return a floating-point 0-dim tensor, got shape \(5, 6\)$",
    ),
    "an unknown loss": (
        lambda: output_gradients(nn.Sequential(nn.Linear(4, 6)), ["0"], torch.randn(5, 4), loss="kl"),
        ValueError,
        r"sensitivity_loss must be one of auto, fisher, output or a callable output -> scalar loss, got 'kl'",
    ),
    "empty calibration": (
        lambda: output_gradients(nn.Sequential(nn.Linear(4, 6)), ["0"], []),
        ValueError,
        r"calibration is empty",
    ),
    "a layer that never runs": (
        lambda: output_gradients(Spare(), ["0", "spare"], [torch.randn(5, 4)]),
        ValueError,
        r"layer 'spare' never ran in the model's forward on the calibration data$",
    ),
    "batches 0": (
        lambda: output_gradients(nn.Sequential(nn.Linear(4, 6)), ["0"], torch.randn(5, 4), batches=0),
        ValueError,
        r"batches must be an int >= 1, got 0$",
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


@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_the_curve_is_the_second_order_loss_change_of_the_truncated_layer_exactly(budget):
    """Delta_l(r) from c (compress's predicted_loss at the rank it gave) equals 1/2 mean_n (sum_p g . dy)^2
    with dy the real output change of the layer that whiten put in at that rank, on the calibration inputs:
    the same quantity, so float64 rounding apart (measured 2e-14 relative; 1e-11 allowed)."""
    model = seeded_model(Tokens).double().eval()
    dense = copy.deepcopy(model)
    x = inputs((3, 8, 8), n=40).double()
    report = compress(
        model, x, budget=budget, method="whiten", allocate="sensitivity", sensitivity_loss=fisher_like,
        factorize_stem=True, factorize_classifier=True, calibration_batches=None, **SMALL,
    )  # fmt: skip
    predicted = report.config["predicted_loss"]
    assert set(predicted) == {"c1", "c2", "tok", "fc"}
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
