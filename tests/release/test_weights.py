"""weights.py: unreadable files and strict loading fail with one clear WeightsError naming the file."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from colorflow_core.errors import WeightsError
from colorflow_core.weights import load_state_dict_file, load_strict


def _state() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4)}


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_round_trip_and_truncated_file(tmp_path, suffix):
    file = tmp_path / f"w{suffix}"
    state = _state()
    save_file(state, str(file)) if suffix == ".safetensors" else torch.save(state, file)
    loaded = load_state_dict_file(file)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)

    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt") as err:
        load_state_dict_file(file)
    assert str(file) in str(err.value)


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict_file(tmp_path / "nope.bin")
    odd = tmp_path / "w.npz"
    odd.write_bytes(b"xx")
    with pytest.raises(WeightsError, match="unknown weight format"):
        load_state_dict_file(odd)


class _NotATensor:
    pass


def test_pickle_with_non_tensors(tmp_path):
    plain = tmp_path / "plain.bin"
    torch.save({"a.weight": torch.ones(2), "step": 3}, plain)
    with pytest.raises(WeightsError, match="does not hold a state dict of tensors"):
        load_state_dict_file(plain)
    # An arbitrary object is refused by torch.load(weights_only=True): no code from the file runs.
    code = tmp_path / "code.bin"
    torch.save({"a.weight": _NotATensor()}, code)
    with pytest.raises(WeightsError, match=str(code.name)):
        load_state_dict_file(code)


def test_nested_state_dict_is_unwrapped(tmp_path):
    file = tmp_path / "ckpt.pth"
    torch.save({"state_dict": _state()}, file)
    assert set(load_state_dict_file(file)) == {"a.weight", "a.bias"}


def test_strict_load_reports_everything_at_once():
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    del state["1.bias"]
    state["0.weight"] = torch.zeros(5, 3)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as err:
        load_strict(module, state, "model.bin")
    message = str(err.value)
    assert "model.bin" in message
    assert "missing 1.bias" in message
    assert "unexpected extra.weight" in message
    assert "0.weight: file (5, 3) vs model (4, 3)" in message


def test_strict_load_loads_and_ignores():
    module = nn.Linear(3, 4)
    state = {"weight": torch.ones(4, 3), "bias": torch.ones(4), "after_proj.weight": torch.ones(1)}
    load_strict(module, state, "x.bin", ignore=["after_proj.weight"])
    assert torch.equal(module.weight, torch.ones(4, 3))
