"""nlinit.compress: every method on a tiny CNN (conv -> eval BatchNorm -> ReLU) and an MLP with biases,
budgets met, ranks installed as allocated, whiten's realized whitened error equal to the energy curve's
prediction, asvd at alpha = 0 equal to svd, MACs, save/load round trip, bad input changes nothing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from nets import assert_unchanged, seeded_model, snapshot
from torch import nn

from nlinit import collect_stats
from nlinit.allocate import max_saving_rank
from nlinit.checkpoint import load_model_state
from nlinit.compress import METHODS, compress
from nlinit.layer_function import whitener
from nlinit.layers import LowRankConv2d, LowRankLinear


class TinyCNN(nn.Module):
    """stem -> [conv -> BN -> relu] x 2 (the second strided) -> pool -> fc1 (relu) -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.fc1 = nn.Linear(24, 32)
        self.fc = nn.Linear(32, 10)
        with torch.no_grad():  # a "trained" eval-mode BatchNorm: non-trivial statistics and affine
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))  # (N, 8, 8, 8)
        x = F.relu(self.bn1(self.c1(x)))  # (N, 16, 8, 8)
        x = F.relu(self.bn2(self.c2(x)))  # (N, 24, 4, 4)
        x = F.relu(self.fc1(x.mean((2, 3))))  # (N, 32)
        return self.fc(x)


def biased_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(12, 40),
        nn.ReLU(),
        nn.Linear(40, 32),
        nn.ReLU(),
        nn.Linear(32, 24),
        nn.ReLU(),
        nn.Linear(24, 5),
    )


NETS = {
    "cnn": (lambda: seeded_model(TinyCNN).eval(), (3, 8, 8), ["c1", "c2", "fc1"]),
    "mlp": (lambda: seeded_model(biased_mlp).eval(), (12,), ["2", "4"]),
}
FAST = {"nlra-opt": {"max_iter": 5, "restarts": 0}, "lfai-data": {"max_epochs": 1, "steps_per_epoch": 5}}
SMALL = {"calibration_samples": 64, "calibration_heldout": 64, "progress": False}


def inputs(shape: tuple[int, ...], n: int = 100, seed: int = 1) -> torch.Tensor:
    """Calibration inputs with a non-zero mean (what the bias refits and whitening react to)."""
    return 0.3 + torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def installed(model: nn.Module) -> dict[str, LowRankConv2d | LowRankLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (LowRankConv2d, LowRankLinear))}


def installed_ranks(model: nn.Module) -> dict[str, int]:
    return {n: m.rank for n, m in installed(model).items()}


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_meets_the_budget(net, method):
    build, shape, names = NETS[net]
    model = build()
    x = inputs(shape)
    report = compress(model, x, budget=0.5, method=method, **SMALL, **FAST.get(method, {}))
    assert [layer.name for layer in report.layers] == names  # stem and classifier kept dense
    assert report.params_after <= 0.5 * report.params_before
    assert installed_ranks(model) == {layer.name: layer.rank for layer in report.layers}
    dense = build()
    added = sum(  # a refitted bias where the dense layer had none (c1, c2 before BatchNorm) is new
        m.bias.numel()
        for n, m in installed(model).items()
        if m.bias is not None and dense.get_submodule(n).bias is None
    )
    saved = report.params_before - report.params_after
    assert report.model_params_after == report.model_params_before - saved + added
    for layer in report.layers:
        assert layer.heldout_method is not None and layer.heldout_svd is not None
        assert 0 <= layer.predicted_error <= 1
    assert report.config["init"] == METHODS[method]
    assert set(report.seconds) == {"statistics", "allocation", "evaluation", "solve"}
    assert torch.isfinite(model(x)).all()
    assert not model.training  # the mode it had


@pytest.mark.parametrize("allocate", ["uniform", "energy", "stable-rank", "sensitivity"])
@pytest.mark.parametrize("budget", [0.2, 0.5])
def test_budget_is_respected_by_every_allocation(allocate, budget):
    model = NETS["cnn"][0]()
    report = compress(model, inputs((3, 8, 8)), budget=budget, method="whiten", allocate=allocate, **SMALL)
    assert report.params_after <= budget * report.params_before
    assert all(1 <= x.rank <= max_saving_rank(*x.shape) for x in report.layers)
    if allocate in ("energy", "sensitivity"):  # greedy stops only when no layer's next rank fits
        slack = budget * report.params_before - report.params_after
        assert all(slack < sum(x.shape) or x.rank == max_saving_rank(*x.shape) for x in report.layers)


def test_energy_with_whiten_realizes_the_predicted_whitened_error():
    """whiten is the truncated SVD of W~ = diag(s) W L, so its relative whitened error at rank r is the
    curve's tail energy E(r) exactly (up to float32 factors)."""
    build, shape, names = NETS["cnn"]
    model, dense = build(), build()
    x = inputs(shape)
    report = compress(model, x, budget=0.35, method="whiten", allocate="energy", **SMALL)
    stats = collect_stats(dense, names, x, heldout=1)  # the same fit/held-out split as compress
    for layer in report.layers:
        W = dense.get_submodule(layer.name).weight.detach().double().flatten(1)
        Y = model.get_submodule(layer.name).matrix().detach().double()
        L = whitener(stats[layer.name].cov, W.shape[1]).L
        bn = {"c1": dense.bn1, "c2": dense.bn2}.get(layer.name)
        s = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double()[:, None] if bn else 1.0
        realized = torch.linalg.norm(s * (Y - W) @ L) ** 2 / torch.linalg.norm(s * W @ L) ** 2
        assert float(realized) == pytest.approx(layer.predicted_error, rel=1e-4, abs=1e-6)  # float32 U, V


def test_rank_scale_uniform_installs_the_paper_ranks_and_energy_spends_the_same():
    build, shape, _ = NETS["mlp"]
    a, b = build(), build()
    ra = compress(a, inputs(shape), rank_scale=0.25, method="svd", **SMALL)
    assert {x.name: x.rank for x in ra.layers} == {"2": 8, "4": 6}  # round(0.25 * 32), round(0.25 * 24)
    rb = compress(b, inputs(shape), rank_scale=0.25, method="svd", allocate="energy", **SMALL)
    assert rb.params_after <= ra.params_after
    assert sum(x.predicted_error for x in rb.layers) <= sum(x.predicted_error for x in ra.layers) + 1e-12


def test_asvd_with_alpha_zero_gives_the_svd_factors():
    build, shape, names = NETS["cnn"]
    a, b = build(), build()
    x = inputs(shape)
    compress(a, x, budget=0.4, method="svd", **SMALL)
    compress(b, x, budget=0.4, method="asvd", alpha=0.0, **SMALL)
    for name in names:
        la, lb = a.get_submodule(name), b.get_submodule(name)
        assert torch.equal(la.U, lb.U) and torch.equal(la.V, lb.V)


def test_macs_are_params_times_output_positions():
    report = compress(NETS["cnn"][0](), inputs((3, 8, 8)), budget=0.5, method="svd", **SMALL)
    positions = {"c1": 64, "c2": 16, "fc1": 1}  # 8x8 (padding 1), 4x4 (stride 2), one vector
    for x in report.layers:
        assert x.macs_before == x.params_before * positions[x.name]
        assert x.macs_after == x.params_after * positions[x.name]


@pytest.mark.parametrize("allocate", ["uniform", "energy", "stable-rank", "sensitivity"])
@pytest.mark.parametrize("macs", [0.2, 0.5])
def test_macs_budget_is_respected_and_weighs_layers_by_positions(allocate, macs):
    report = compress(
        NETS["cnn"][0](), inputs((3, 8, 8)), macs=macs, method="whiten", allocate=allocate, **SMALL
    )
    assert report.macs_after <= macs * report.macs_before
    assert report.config["macs"] == macs and report.config["budget"] is None
    if allocate in ("energy", "sensitivity"):  # greedy stops only when no layer's next rank fits, in MACs
        slack = macs * report.macs_before - report.macs_after
        assert all(
            slack < x.macs_after // x.rank or x.rank == max_saving_rank(*x.shape) for x in report.layers
        )


def test_macs_budget_cuts_the_many_position_layer_harder_than_a_parameter_budget():
    """c1 runs at 64 positions, c2 at 16 and fc1 at 1: under a MAC budget c1's ranks are 4x c2's price, so
    uniform scale aside, the energy allocation gives c1 a smaller share than under a parameter budget."""
    x = inputs((3, 8, 8))
    by_params = compress(NETS["cnn"][0](), x, budget=0.5, method="whiten", allocate="energy", **SMALL)
    by_macs = compress(NETS["cnn"][0](), x, macs=0.5, method="whiten", allocate="energy", **SMALL)
    share = {
        name: {x.name: x.rank for x in rep.layers}["c1"] / sum(x.rank for x in rep.layers)
        for name, rep in (("params", by_params), ("macs", by_macs))
    }
    assert share["macs"] < share["params"]


def test_evaluate_runs_before_and_after():
    build, shape, _ = NETS["mlp"]
    model, x = build(), inputs(shape)
    reference = model(x).detach()

    def error(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x) - reference).norm() / reference.norm())

    report = compress(model, x, budget=0.3, method="relu-svd", evaluate=error, **SMALL)
    assert report.metric_before == 0.0
    assert report.metric_after == pytest.approx(error(model))
    assert report.metric_after > 0


def test_save_writes_the_reports_and_a_checkpoint_that_loads(tmp_path):
    build, shape, _ = NETS["cnn"]
    model, x = build(), inputs(shape)
    report = compress(model, x, budget=0.5, method="relu-svd", allocate="energy", **SMALL)
    out = report.save(tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == [
        "model.json",
        "model.safetensors",
        "report.csv",
        "report.json",
        "report.md",
    ]
    data = json.loads((out / "report.json").read_text())
    assert [x["rank"] for x in data["layers"]] == [x.rank for x in report.layers]
    assert (out / "report.csv").read_text().splitlines()[0].startswith("name,kind,shape,rank,")
    fresh = build()
    load_model_state(out / "model.safetensors", fresh)
    assert installed_ranks(fresh) == installed_ranks(model)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


BAD = {
    "budget-1": ({"budget": 1.0}, ValueError, r"budget must be a fraction in \(0, 1\) of the layers' para"),
    "budget-0": (
        {"budget": 0},
        ValueError,
        r"budget must be a fraction in \(0, 1\) of the layers' parameters kept, got 0$",
    ),
    "both": ({"budget": 0.5, "rank_scale": 0.5}, ValueError, "give exactly one of budget, macs and rank_sc"),
    "budget-and-macs": (
        {"budget": 0.5, "macs": 0.5},
        ValueError,
        "give exactly one of budget, macs and rank",
    ),
    "neither": (
        {},
        ValueError,
        "give exactly one of budget, macs and rank_scale, got budget=None, macs=None, rank_scale=None$",
    ),
    "macs-1": ({"macs": 1}, ValueError, r"macs must be a fraction in \(0, 1\) of the layers' multiply-accu"),
    "macs-str": ({"macs": "0.5"}, ValueError, r"macs must be a fraction .* got '0.5'$"),
    "tiny-macs": ({"macs": 0.001}, ValueError, r"macs 0.001 keeps .* MACs per input .* \(macs >= 0\.\d+\)$"),
    "method": ({"budget": 0.5, "method": "svd2"}, ValueError, "unknown method 'svd2'; available: asvd, "),
    "allocate": ({"budget": 0.5, "allocate": "greedy"}, ValueError, "unknown allocate 'greedy'; available: "),
    "sensitivity-loss": (
        {"budget": 0.5, "allocate": "sensitivity", "sensitivity_loss": "kl"},
        ValueError,
        "sensitivity_loss must be one of auto, fisher, output or a callable output -> scalar loss, got 'kl'$",
    ),
    "sensitivity-loss-type": (
        {"budget": 0.5, "sensitivity_loss": 2},
        ValueError,
        "sensitivity_loss must be one",
    ),
    "sensitivity-loss-non-scalar": (
        {"budget": 0.5, "allocate": "sensitivity", "sensitivity_loss": lambda out: out},
        ValueError,
        r"sensitivity_loss must return a floating-point 0-dim tensor, got shape \(20, 10\)$",
    ),
    "tiny-budget": ({"budget": 0.01}, ValueError, r"budget 0.01 keeps .* below the .* \(budget >= 0\.\d+\)"),
    "option": ({"budget": 0.5, "method": "svd", "alpha": 0.1}, ValueError, "unknown option 'alpha' for init"),
    "empty": ({"budget": 0.5, "calibration": []}, ValueError, "calibration is empty"),
    "nan": ({"budget": 0.5, "calibration": torch.full((4, 3, 8, 8), float("nan"))}, ValueError, "non-finite"),
    "nothing": ({"budget": 0.5, "exclude": ["c*", "fc1"]}, ValueError, "nothing to compress"),
    "stats-not-mapping": (
        {"budget": 0.5, "stats": [1]},
        TypeError,
        "stats must be a {layer name: LayerStats}",
    ),
    "stats-missing-layer": (
        {"budget": 0.5, "stats": {}},
        ValueError,
        r"stats has no LayerStats for layer 'c1' \(got none\); collect_stats it$",
    ),
    "finetune-negative": (
        {"budget": 0.5, "finetune": -1},
        ValueError,
        r"finetune must be an int >= 0, got -1$",
    ),
    "finetune-bool": (
        {"budget": 0.5, "finetune": True},
        ValueError,
        r"finetune must be an int >= 0, got True$",
    ),
    "finetune-float": (
        {"budget": 0.5, "finetune": 2.0},
        ValueError,
        r"finetune must be an int >= 0, got 2.0$",
    ),
    "finetune-loss": (
        {"budget": 0.5, "finetune_loss": "l2"},
        ValueError,
        "unknown finetune_loss 'l2'; available",
    ),
    "finetune-lr": (
        {"budget": 0.5, "finetune_lr": 0.0},
        ValueError,
        r"finetune_lr must be a finite number > 0",
    ),
    "finetune-data-int": (
        {"budget": 0.5, "finetune": 2, "finetune_data": 5},
        TypeError,
        r"finetune_data must be batches \(a DataLoader, a list of batches\) or a tensor of inputs, got int$",
    ),
    "finetune-data-empty": (
        {"budget": 0.5, "finetune": 2, "finetune_data": []},
        ValueError,
        r"finetune_data is empty: give at least one batch$",
    ),
    "finetune-data-iterator": (
        {"budget": 0.5, "finetune": 2, "finetune_data": iter([torch.ones(2, 3, 8, 8)])},
        TypeError,
        r"finetune_data is a one-pass iterator \(list_iterator\)",
    ),
    "finetune-ce-unlabelled": (  # the default data, the calibration tensor, has no labels
        {"budget": 0.5, "finetune": 2, "finetune_loss": "ce"},
        ValueError,
        r"loss 'ce' needs \(inputs, labels\) batches; the first batch of the calibration data \(finetune_d",
    ),
    "sequential-str": (
        {"budget": 0.5, "sequential": "yes"},
        ValueError,
        "sequential must be True or False, got 'yes'$",
    ),
    "sequential-int": (
        {"budget": 0.5, "sequential": 1},
        ValueError,
        "sequential must be True or False, got 1$",
    ),
    "sequential-iterator": (
        {"budget": 0.5, "sequential": True, "calibration": iter([torch.zeros(4, 3, 8, 8)])},
        TypeError,
        "sequential=True passes over calibration once per layer; got a list_iterator, which one pass uses",
    ),
}


@pytest.mark.parametrize("net", sorted(NETS))
def test_stats_collected_once_give_the_same_compression(net):
    # a grid collects the statistics of every Linear / Conv2d once (a superset of compress's layers) and
    # passes them to each compress call: each layer's reservoirs are seeded by its name, so the factors,
    # biases and report equal those of compress collecting its own
    make, shape, _ = NETS[net]
    x = inputs(shape)
    model = make()
    every = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    stats = collect_stats(model, every, x, samples=64, heldout=64, generator=torch.Generator().manual_seed(3))
    a, b = make(), make()
    ra = compress(a, x, budget=0.5, method="relu-svd", allocate="energy", seed=3, **SMALL)
    rb = compress(b, x, budget=0.5, method="relu-svd", allocate="energy", seed=3, stats=stats, **SMALL)
    assert [(x.name, x.rank, x.macs_after) for x in ra.layers] == [
        (x.name, x.rank, x.macs_after) for x in rb.layers
    ]
    assert [x.heldout_method for x in ra.layers] == [x.heldout_method for x in rb.layers]
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_changes_nothing(case):
    kwargs, error, message = BAD[case]
    model = NETS["cnn"][0]()
    snap = snapshot(model)
    kwargs = {"calibration": inputs((3, 8, 8), n=20), **SMALL, **kwargs}
    with pytest.raises(error, match=message) as info:
        compress(model, **kwargs)
    assert "\n" not in str(info.value)
    assert_unchanged(model, snap)
    assert not model.training


def test_train_mode_is_restored_and_running_stats_untouched():
    model = NETS["cnn"][0]().train()
    before = copy.deepcopy(model.bn1.running_mean)
    compress(model, inputs((3, 8, 8)), budget=0.5, method="svd", **SMALL)
    assert model.training
    assert torch.equal(model.bn1.running_mean, before)
