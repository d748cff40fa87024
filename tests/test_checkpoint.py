"""Checkpoints: exact round trip through a freshly built model, atomicity, and clear errors."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from nlinit import checkpoint, factorize
from nlinit.checkpoint import (
    CheckpointError,
    _digest,
    load_model,
    load_model_state,
    load_training_state,
    low_rank_structure,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
)
from nlinit.layers import LowRankConv2d, LowRankLinear


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 5),
    )


def _trained(tmp_path, layout: str = "channel"):
    model = _net()
    factorize(
        model, rank_scale=0.25, init="spectral", layout=layout, factorize_stem=True, factorize_classifier=True
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 3, 4, 4)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    meta = {"model": {"name": "net"}, "structure": low_rank_structure(model), "step": 2}
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, opt, meta)
    return model, opt, x, path


@pytest.mark.parametrize("layout", ["channel", "spatial"])
def test_reload_into_fresh_dense_model_is_exact(tmp_path, layout):
    model, _, x, path = _trained(tmp_path, layout)
    fresh = _net()  # dense: the checkpoint's ranks change its shapes
    load_model_state(path, fresh)
    assert isinstance(fresh[0], LowRankConv2d) and fresh[0].layout == layout
    assert isinstance(fresh[3], LowRankLinear) and isinstance(fresh[5], LowRankLinear)
    for (k, a), (k2, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(model(x), fresh(x))


def test_training_state_round_trip_continues_identically(tmp_path):
    model, opt, x, path = _trained(tmp_path)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(123)  # disturb the RNG: loading must restore the saved one
    fresh = _net()
    load_model_state(path, fresh)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    load_training_state(path, fresh_opt)
    assert torch.equal(torch.get_rng_state(), expected_rng)
    for o in (opt, fresh_opt):  # one more identical step on both: momentum buffers must match exactly
        o.zero_grad()
    model(x).square().mean().backward()
    fresh(x).square().mean().backward()
    opt.step(), fresh_opt.step()
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sidecar_matches_header(tmp_path):
    _, _, _, path = _trained(tmp_path)
    assert json.loads(path.with_suffix(".json").read_text()) == read_metadata(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.json", "ckpt.safetensors"]  # no leftovers


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    _, _, _, path = _trained(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fresh = _net()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_model_state(path, fresh)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_garbage_and_missing_files(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        read_metadata(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "missing.safetensors")


def test_checkpoint_of_another_model_is_refused_and_changes_nothing(tmp_path):
    _, _, _, path = _trained(tmp_path)
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 5))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model_state(path, other)
    assert not any(isinstance(m, (LowRankConv2d, LowRankLinear)) for m in other.modules())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


# ---------------------------------------------------------------------------------------------------------
# Integrity (issue 12, defect 5): every problem is a one-line CheckpointError before anything is touched.


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """No layer swapped, every tensor as it was."""
    assert not any(isinstance(m, (LowRankConv2d, LowRankLinear)) for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _data_offset(path) -> int:
    """Where a safetensors file's tensor data starts: 8 bytes of header length, then the header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _rewrite(path, change, *, sign: bool = True) -> None:
    """Rewrite a checkpoint with ``change(meta, tensors)`` applied and re-signed: consistent, but wrong."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["nlinit"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    change(meta, tensors)
    if sign:
        meta["sha256"] = _digest(meta, tensors)
    save_file(tensors, str(path), metadata={"nlinit": json.dumps(meta)})


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_flipped_byte_in_the_tensor_data_is_refused(tmp_path, where):
    _, _, _, path = _trained(tmp_path)
    data = bytearray(path.read_bytes())
    start = _data_offset(path)
    offset = {"first": start, "middle": (start + len(data)) // 2, "last": len(data) - 1}[where]
    data[offset] ^= 0x01  # one bit: the values stay finite and plausible, only the digest can tell
    path.write_bytes(bytes(data))
    fresh = _net()
    before = _state(fresh)
    with pytest.raises(CheckpointError, match=r"is corrupted: its contents do not match its sha256 digest$"):
        load_model_state(path, fresh)
    _assert_untouched(fresh, before)


def test_garbage_tensor_data_is_refused_before_model_optimizer_or_rng_change(tmp_path):
    _, _, _, path = _trained(tmp_path)
    data = bytearray(path.read_bytes())
    start = _data_offset(path)
    data[start:] = (
        torch.full(((len(data) - start) // 4,), float("nan"))
        .numpy()
        .tobytes()
        .ljust(len(data) - start, b"\xff")
    )
    path.write_bytes(bytes(data))
    fresh = _net()
    before, rng = _state(fresh), torch.get_rng_state()
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    for load in (lambda: load_model_state(path, fresh), lambda: load_training_state(path, opt)):
        with pytest.raises(CheckpointError, match="sha256 digest"):
            load()
    _assert_untouched(fresh, before)
    assert torch.equal(torch.get_rng_state(), rng) and opt.state_dict()["state"] == {}


def _header(path, meta: object) -> None:
    """A safetensors file with one tensor and ``meta`` (JSON text or an object) as nlinit metadata."""
    text = meta if isinstance(meta, str) else json.dumps(meta)
    save_file({"model/0.weight": torch.zeros(2)}, str(path), metadata={"nlinit": text})


V2 = {"format": "nlinit-checkpoint/2", "sha256": "0" * 64}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("{not json", "has metadata that is not JSON"),
        ("[1, 2]", "metadata must be a JSON object, got \\[1, 2\\]"),
        ({"format": 3}, "has format 3; this nlinit reads nlinit-checkpoint/1, nlinit-checkpoint/2"),
        ({}, "has format None"),
        ({"format": "nlinit-checkpoint/2"}, "malformed metadata: metadata has no 'sha256'"),
        ({**V2, "sha256": "xyz"}, r"metadata.sha256 must be a string matching"),
        ({**V2, "model": {"name": 5}}, r"metadata.model.name must be a string matching '\.\+', got 5"),
        ({**V2, "model": {"name": "m", "num_classes": 0}}, r"metadata.model.num_classes must be an int >= 1"),
        ({**V2, "structure": []}, "metadata.structure must be a JSON object, got \\[\\]"),
        ({**V2, "structure": {"fc": {"kind": "lin", "rank": 2, "layout": "channel"}}}, "kind must be one of"),
        (
            {**V2, "structure": {"fc": {"kind": "linear", "rank": True, "layout": "channel"}}},
            "rank must be an int",
        ),
        ({**V2, "structure": {"fc": {"kind": "linear", "rank": 2}}}, r"structure\['fc'\] has no 'layout'"),
        (
            {**V2, "optimizer": {"param_groups": [{"params": ["a"]}], "scalars": {}}},
            r"params\[0\] must be an int",
        ),
        ({**V2, "optimizer": {"param_groups": [], "scalars": {"x": {}}}}, "scalars has a key 'x'"),
        ({**V2, "epoch": -1}, "metadata.epoch must be an int >= 0, got -1"),
        ({**V2, "running": [1.0, 2.0]}, "metadata.running must be a list of length 3"),
        ({**V2, "seconds": "NaN"}, "metadata.seconds must be a finite number >= 0"),
    ],
)
def test_malformed_metadata_is_a_one_line_checkpoint_error(tmp_path, meta, message):
    path = tmp_path / "bad.safetensors"
    _header(path, meta)
    fresh = _net()
    before = _state(fresh)
    for call in (read_metadata, read_checkpoint, load_model, lambda p: load_model_state(p, fresh)):
        with pytest.raises(CheckpointError, match=message) as info:
            call(path)
        assert "\n" not in str(info.value)
    _assert_untouched(fresh, before)


def _swap_kind(meta, tensors):
    meta["structure"]["3"]["kind"] = "conv"


def _lower_rank(meta, tensors):
    meta["structure"]["3"]["rank"] -= 1


def _drop_factor(meta, tensors):
    del tensors["model/5.V"]


def _nan_weight(meta, tensors):
    tensors["model/3.U"][0, 0] = float("nan")


def _extra_tensor(meta, tensors):
    tensors["extra"] = torch.zeros(1)


def _short_rng(meta, tensors):
    tensors["rng/cpu"] = tensors["rng/cpu"][:100]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_swap_kind, "low-rank layer '3' is a conv layer but the model has Linear"),
        (_lower_rank, r"gives layer '3' rank 7, but its factors have shapes \(32, 8\) and \(256, 8\)"),
        (_drop_factor, "names low-rank layer '5' but holds no factors"),
        (_nan_weight, r"tensor 'model/3.U' has 1 non-finite \(NaN or Inf\) entries"),
        (_extra_tensor, "unexpected tensor 'extra'"),
        (_short_rng, r"RNG state 'rng/cpu' of dtype torch.uint8 and shape \(100,\)"),
    ],
)
def test_a_consistent_but_wrong_checkpoint_leaves_the_model_whole(tmp_path, change, message):
    """Re-signed files (the digest matches): the structure, factors and RNG are still checked, all before the
    first layer is swapped (the second entry used to fail after the first was replaced)."""
    _, _, _, path = _trained(tmp_path)
    _rewrite(path, change)
    fresh = _net()
    before, rng = _state(fresh), torch.get_rng_state()
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=message):
        load_model_state(path, fresh)
    with pytest.raises(CheckpointError):  # the file's problem, or (for a file that reads) the dense optimizer
        load_training_state(path, opt)
    _assert_untouched(fresh, before)
    assert opt.state_dict()["state"] == {}
    assert torch.equal(torch.get_rng_state(), rng)


def test_format_1_checkpoints_load_with_a_warning_and_every_other_check(tmp_path):
    model, _, x, path = _trained(tmp_path)

    def to_format_1(meta, tensors):
        meta["format"] = "nlinit-checkpoint/1"
        del meta["sha256"]

    _rewrite(path, to_format_1, sign=False)
    fresh = _net()
    with pytest.warns(UserWarning, match="old format 'nlinit-checkpoint/1' without a digest"):
        load_model_state(path, fresh)
    assert torch.equal(model(x), fresh(x))

    _rewrite(path, _nan_weight, sign=False)  # no digest to catch it, but finiteness does
    fresh = _net()
    before = _state(fresh)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="non-finite"):
        load_model_state(path, fresh)
    _assert_untouched(fresh, before)


def test_optimizer_state_of_another_model_is_refused_and_changes_nothing(tmp_path):
    _, _, _, path = _trained(tmp_path)
    fresh = _net()
    load_model_state(path, fresh)
    params = list(fresh.parameters())
    wrong = torch.optim.SGD([params[1], params[0], *params[2:]], lr=0.1, momentum=0.9)  # shapes swapped
    rng = torch.get_rng_state()
    with pytest.raises(
        CheckpointError, match=r"momentum_buffer of parameter 0 has shape \(16, 4\), the parameter \(27, 4\)"
    ):
        load_training_state(path, wrong)
    fewer = torch.optim.SGD(params[:-1], lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=r"parameter groups of sizes \[9\] in the checkpoint, \[8\]"):
        load_training_state(path, fewer)
    assert wrong.state_dict()["state"] == {} and fewer.state_dict()["state"] == {}
    assert torch.equal(torch.get_rng_state(), rng)


# ---------------------------------------------------------------------------------------------------------
# Saving: what cannot be loaded is not written; a full disk keeps the previous file (defects 5 and 6).


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _nan_model() -> nn.Module:
    model = _net()
    with torch.no_grad():
        model[3].weight[0, 0] = float("inf")
    return model


@pytest.mark.parametrize(
    ("path", "model", "metadata", "error", "message"),
    [
        ("c.safetensors", _net, [], TypeError, "metadata must be a dict, got list"),
        ("c.safetensors", _net, {"format": "x"}, ValueError, "metadata key 'format' is reserved"),
        ("c.safetensors", _net, {"sha256": "x"}, ValueError, "metadata key 'sha256' is reserved"),
        ("c.safetensors", _net, {"when": {1, 2}}, ValueError, "metadata must be JSON-serializable"),
        ("c.safetensors", _net, {"loss": float("nan")}, ValueError, "without NaN or Inf"),
        ("c.safetensors", _net, {"structure": {"3": {}}}, ValueError, "differs from the model's"),
        ("c.safetensors", _net, {"epoch": -1}, ValueError, "metadata.epoch must be an int >= 0"),
        ("c.safetensors", _net, {"model": {"name": ""}}, ValueError, "metadata.model.name must be a string"),
        ("c.safetensors", _nan_model, {}, ValueError, r"tensor 'model/3.weight' has 1 non-finite"),
        (".", _net, {}, IsADirectoryError, "checkpoint path '.*' is a directory"),
        ("file/c.safetensors", _net, {}, NotADirectoryError, "cannot be created: '.*file' is a file"),
    ],
)
def test_save_refuses_bad_input_and_writes_nothing(tmp_path, path, model, metadata, error, message):
    (tmp_path / "file").write_text("x")
    with pytest.raises(error, match=message):
        save_checkpoint(tmp_path / path, model(), None, metadata)
    assert _files(tmp_path) == ["file"]


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, _, path = _trained(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(path, model, opt, {"model": {"name": "net"}})
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == before  # no partial file


def _shared_net() -> nn.Sequential:
    torch.manual_seed(0)
    hidden = nn.Linear(16, 16)  # one module, used twice
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), hidden, nn.ReLU(), hidden, nn.ReLU(), nn.Linear(16, 4))


def test_a_shared_module_is_saved_once_and_comes_back_shared(tmp_path):
    """A module used under two names is one low-rank module after factorize; its tensors are the same memory
    in the state dict, which safetensors refused to write. Stored once (the other name an alias), it loads
    into a fresh model as one module under both names again."""
    model = _shared_net()
    factorize(model, rank=4, init="spectral", factorize_stem=True, factorize_classifier=True)
    assert model[2] is model[4] and isinstance(model[2], LowRankLinear)
    path = save_checkpoint(tmp_path / "c.safetensors", model, None, {})
    assert read_metadata(path)["aliases"] == {f"model/4.{k}": f"model/2.{k}" for k in ("U", "V", "bias")}
    fresh = _shared_net()
    load_model_state(path, fresh)
    assert fresh[2] is fresh[4] and isinstance(fresh[2], LowRankLinear)
    x = torch.randn(3, 16)
    assert torch.equal(fresh(x), model(x))
