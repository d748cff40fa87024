"""nlinit.finetune: the distillation loss's closed form, a short fine-tune lowering the loss it trains on
(kl, ce and, on a tiny BERT, mse), modes and the teacher left as they were, compress(finetune=k) reporting
the training-free and fine-tuned metrics apart, and bad input raising one line before anything changes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from nets import SmallNet, assert_unchanged, check_one_line_error, seeded_model, snapshot
from torch import nn

from nlinit.compress import compress
from nlinit.finetune import finetune, kl_distillation
from nlinit.layers import LowRankConv2d, LowRankLinear
from nlinit.train import DivergedError

SHAPE = (3, 8, 8)


def images(n: int = 64, seed: int = 1) -> torch.Tensor:
    return 0.3 + torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def nets() -> tuple[nn.Module, nn.Module]:
    """(student, teacher): two differently seeded SmallNets (conv, BatchNorm, depthwise, Linear), eval."""
    return seeded_model(SmallNet, 0).eval(), seeded_model(SmallNet, 1).eval()


@torch.no_grad()
def kl_on(model: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    return float(kl_distillation(model.eval()(x), teacher.eval()(x)))


def test_kl_distillation_is_the_tempered_kl_times_t_squared():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, 7, generator=g, dtype=torch.float64), torch.randn(5, 3, 7, generator=g).double()
    T = 2.5
    p, log_q = F.softmax(t / T, -1), F.log_softmax(s / T, -1)
    expected = T**2 * (p * (p.log() - log_q)).sum(-1).mean()  # the mean over the 15 rows
    torch.testing.assert_close(kl_distillation(s, t, T), expected, rtol=1e-12, atol=0)  # float64 rounding
    shifted = t + torch.randn(5, 3, 1, generator=g).double()  # a per-row constant: the same softmax
    assert float(kl_distillation(shifted, t)) == pytest.approx(0.0, abs=1e-12)
    check_one_line_error(lambda: kl_distillation(s, t[:, :2]), ValueError, r"the model's output \(shape")


def test_kl_fine_tune_lowers_the_distillation_loss_and_restores_modes():
    model, teacher = nets()
    x = images()
    teacher_snap, mean = snapshot(teacher), model.bn.running_mean.clone()
    before = kl_on(model, teacher, x)
    result = finetune(model, x, steps=30, teacher=teacher, lr=1e-2, batch_size=16, progress=False)
    after = kl_on(model, teacher, x)
    assert after < before  # a training run on a fixed small set, measured on that set
    assert len(result["losses"]) == 30 and result["loss_last"] < result["loss_first"]
    assert not model.training and not teacher.training  # each back in its mode (eval)
    assert not torch.equal(model.bn.running_mean, mean)  # trained in train mode: BatchNorm's statistics moved
    assert_unchanged(teacher, teacher_snap)


def test_train_mode_is_restored_and_the_global_rng_untouched():
    model, teacher = nets()
    model.train()
    state = torch.get_rng_state()
    finetune(model, [images(16)], steps=2, teacher=teacher, progress=False)
    assert model.training and not teacher.training
    assert torch.equal(torch.get_rng_state(), state)


def test_ce_on_labelled_batches_lowers_the_cross_entropy():
    model, teacher = nets()
    x = images()
    with torch.no_grad():
        y = teacher(x).argmax(1)
    data = list(zip(x.split(16), y.split(16), strict=True))  # (inputs, labels) pairs

    def ce() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model.eval()(x), y))

    before = ce()
    finetune(model, data, steps=30, loss="ce", lr=1e-2, progress=False)
    assert ce() < before


def test_a_diverging_run_stops_with_one_line():
    model, teacher = nets()
    check_one_line_error(
        lambda: finetune(model, images(), steps=10, teacher=teacher, lr=1e30, progress=False),
        DivergedError,
        r"the fine-tune diverged at step \d+: the kl loss became (nan|inf)",
    )
    assert not model.training


def test_zero_steps_change_nothing():
    model, teacher = nets()
    snap = snapshot(model)
    result = finetune(model, images(), steps=0, teacher=teacher)
    assert_unchanged(model, snap)
    assert result["losses"] == [] and result["loss_first"] is None


def test_data_are_cycled():
    """Two batches, five steps: the fine-tune starts new passes (a list is gone through again)."""
    model, teacher = nets()
    result = finetune(model, [images(8, 1), images(8, 2)], steps=5, teacher=teacher, progress=False)
    assert len(result["losses"]) == 5


def installed(model: nn.Module) -> dict[str, int]:
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, (LowRankConv2d, LowRankLinear))}


def fit_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """As training leaves it: BatchNorm's running statistics those of the data (here x, one batch)."""
    model.bn.reset_running_stats()
    model.bn.momentum = None  # a cumulative average: one batch sets the statistics to x's
    with torch.no_grad():
        model.train()(x)
    model.bn.momentum = 0.1
    return model.eval()


def test_compress_reports_training_free_and_fine_tuned_metrics_apart():
    x = images(100)
    original = fit_batchnorm(nets()[0], x)
    reference = original(x).detach()

    def error(m: nn.Module) -> float:  # relative output error against the uncompressed model
        with torch.no_grad():
            return float((m(x) - reference).norm() / reference.norm())

    small = {"calibration_samples": 64, "calibration_heldout": 64, "progress": False, "evaluate": error}
    plain, tuned = copy.deepcopy(original), copy.deepcopy(original)
    free = compress(plain, x, budget=0.4, method="svd", **small)
    report = compress(tuned, x, budget=0.4, method="svd", finetune=40, finetune_lr=3e-3, **small)
    assert report.metric_after == free.metric_after  # the training-free result is what it was (same seed)
    assert report.metric_finetuned == pytest.approx(error(tuned))
    assert report.metric_finetuned < report.metric_after  # distilled from the original: closer to it
    assert installed(tuned) == installed(plain) != {}  # same low-rank layers, same ranks
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, plain.state_dict()[k])]
    assert any(k.endswith((".U", ".V")) for k in changed)  # the factors trained
    assert report.config["finetune"] == 40 and report.config["finetune_loss"] == "kl"
    assert report.seconds["finetune"] > 0 and "finetune" not in free.seconds
    assert "; fine-tuned " in report.summary() and "; fine-tuned " in report.to_markdown()
    data = report.to_dict()
    assert data["metric_finetuned"] == report.metric_finetuned and len(data["finetune"]["losses"]) == 40
    assert free.metric_finetuned is None and free.to_dict()["metric_finetuned"] is None


def test_compress_finetune_zero_is_bit_identical_to_none():
    original, _ = nets()
    x = images(100)
    a, b = copy.deepcopy(original), copy.deepcopy(original)
    small = {"calibration_samples": 64, "calibration_heldout": 64, "progress": False}
    compress(a, x, budget=0.5, method="svd", **small)
    compress(
        b, x, budget=0.5, method="svd", finetune=0, finetune_data=[images(8)], finetune_loss="ce", **small
    )
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)


def test_compress_ce_fine_tune_on_labelled_data():
    original, teacher = nets()
    x = images(100)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    data = list(zip(x.split(25), y.split(25), strict=True))
    report = compress(
        original,
        x,
        budget=0.5,
        method="svd",
        finetune=5,
        finetune_data=data,
        finetune_loss="ce",
        progress=False,
    )
    assert len(report.finetune["losses"]) == 5 and report.config["finetune_loss"] == "ce"


def _gen():
    yield images(4)


BAD = {
    "steps negative": ({"steps": -1}, ValueError, r"steps must be an int >= 0, got -1$"),
    "steps bool": ({"steps": True}, ValueError, r"steps must be an int >= 0, got True$"),
    "steps float": ({"steps": 2.0}, ValueError, r"steps must be an int >= 0, got 2.0$"),
    "loss": ({"loss": "l2"}, ValueError, r"unknown loss 'l2'; available: ce, kl, mse$"),
    "lr zero": ({"lr": 0}, ValueError, r"lr must be a finite number > 0, got 0$"),
    "lr nan": ({"lr": float("nan")}, ValueError, r"lr must be a finite number > 0, got nan$"),
    "weight decay": (
        {"weight_decay": -1.0},
        ValueError,
        r"weight_decay must be a finite number >= 0, got -1.0$",
    ),
    "temperature": ({"temperature": 0.0}, ValueError, r"temperature must be a finite number > 0, got 0.0$"),
    "progress": ({"progress": "yes"}, ValueError, r"progress must be True, False or None, got 'yes'$"),
    "no teacher": (
        {"teacher": None},
        TypeError,
        r"loss 'kl' distills a teacher: teacher must be a torch.nn.Modu",
    ),
    "teacher is model": (
        {"teacher": "self"},
        ValueError,
        r"teacher is the model itself; distill from a copy",
    ),
    "ce with teacher": ({"loss": "ce"}, ValueError, r"loss 'ce' trains on labels and takes no teacher"),
    "ce without labels": (
        {"loss": "ce", "teacher": None},
        ValueError,
        r"loss 'ce' needs \(inputs, labels\) batches; the first batch of data is a Tensor without labels",
    ),
    "data int": (
        {"data": 5},
        TypeError,
        r"data must be batches \(a DataLoader, a list of batches\) or a tensor",
    ),
    "data dict": ({"data": {"x": images(4)}}, TypeError, r"data must be batches .* got dict$"),
    "data generator": (
        {"data": _gen()},
        TypeError,
        r"data is a one-pass iterator \(generator\); give a list",
    ),
    "data empty list": ({"data": []}, ValueError, r"data is empty: give at least one batch$"),
    "data empty tensor": (
        {"data": torch.empty(0, *SHAPE)},
        ValueError,
        r"data is empty: a tensor of \(0, 3, 8, 8\)",
    ),
    "batch kind": ({"data": [["text"]]}, TypeError, r"finetune batch 0 is a str; expected a tensor"),
    "model": ({"model": "net"}, TypeError, r"model must be a torch.nn.Module, got str$"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_changes_nothing(case):
    kwargs, error, message = BAD[case]
    model, teacher = nets()
    model.train()
    snap = snapshot(model)
    call = {"model": model, "data": images(16), "steps": 3, "teacher": teacher, "progress": False, **kwargs}
    if call["teacher"] == "self":
        call["teacher"] = model
    check_one_line_error(lambda: finetune(**call), error, message)
    assert_unchanged(model, snap)
    assert model.training


def test_mse_distills_a_hugging_face_encoder():
    """mse on a tiny BERT's last_hidden_state (a ModelOutput), dict batches: the hidden-state error drops."""
    transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    teacher = seeded_model(lambda: transformers.BertModel(config), 0).eval()
    model = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    g = torch.Generator().manual_seed(2)
    data = [{"input_ids": torch.randint(0, 50, (8, 12), generator=g)} for _ in range(4)]

    def mse() -> float:
        with torch.no_grad():
            model.eval()
            return sum(
                float(F.mse_loss(model(**b).last_hidden_state, teacher(**b).last_hidden_state)) for b in data
            )

    before = mse()
    finetune(model, data, steps=20, loss="mse", teacher=teacher, lr=3e-3, progress=False)
    assert mse() < before
