"""The torch-free restricted reader of torch.save files."""

from __future__ import annotations

import collections
import zipfile

import ml_dtypes
import numpy as np
import pytest
from utils import FIXTURES

from vqgan_flax.conversion.torch_pickle import (
    CheckpointError,
    InertObject,
    extract_state_dict,
    load_state_dict,
    load_torch_zip,
)


def test_lightning_fixture_reads_without_lightning():
    checkpoint = load_torch_zip(FIXTURES / "taming_vq" / "last.ckpt")
    assert checkpoint["epoch"] == 7 and checkpoint["global_step"] == 12345
    assert isinstance(checkpoint["state_dict"], collections.OrderedDict)
    (callback_class,) = checkpoint["callbacks"]
    assert issubclass(callback_class, InertObject)
    assert callback_class.__module_name__ == "pytorch_lightning.callbacks.model_checkpoint"
    assert checkpoint["state_dict"]["loss.logvar"].shape == ()
    # Same tensors as the fixture's safetensors export of the model state dict.
    reference = load_state_dict(FIXTURES / "taming_vq" / "model.safetensors")
    for key, value in reference.items():
        np.testing.assert_array_equal(checkpoint["state_dict"][key], value)


@pytest.mark.torch
def test_dtypes_strides_views_and_scalars(tmp_path):
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    tensors = {
        "transposed": base.permute(2, 0, 1),  # non-contiguous
        "slice": base[1, 1:, ::2],  # offset + strides into a shared storage
        "half": torch.linspace(-1, 1, 5, dtype=torch.float16),
        "bf16": torch.linspace(-1, 1, 5, dtype=torch.bfloat16),
        "int64": torch.tensor([1, -2, 3]),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    torch.save({"model": tensors, "note": "plain data", "sizes": torch.Size([1, 2])}, tmp_path / "t.pt")
    loaded = load_torch_zip(tmp_path / "t.pt")
    for name, tensor in tensors.items():
        expected = tensor.detach().float().numpy() if name == "bf16" else tensor.detach().numpy()
        actual = loaded["model"][name]
        assert actual.shape == tuple(tensor.shape), name
        np.testing.assert_array_equal(np.asarray(actual, dtype=expected.dtype), expected, err_msg=name)
    assert loaded["model"]["bf16"].dtype == ml_dtypes.bfloat16
    assert loaded["model"]["half"].dtype == np.float16
    assert loaded["note"] == "plain data" and tuple(loaded["sizes"]) == (1, 2)
    assert set(extract_state_dict(loaded)) == set(tensors)


def test_not_a_zip_checkpoint(tmp_path):
    path = tmp_path / "legacy.pt"
    path.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(CheckpointError, match="legacy.pt: not a zip-format torch checkpoint"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="missing.ckpt: no such file"):
        load_state_dict(tmp_path / "missing.ckpt")


@pytest.mark.torch
def test_missing_storage_is_reported(tmp_path):
    import torch

    torch.save({"w": torch.ones(3)}, tmp_path / "t.pt")
    with zipfile.ZipFile(tmp_path / "t.pt") as src, zipfile.ZipFile(tmp_path / "cut.pt", "w") as dst:
        for name in src.namelist():
            if "/data/" not in name:
                dst.writestr(name, src.read(name))
    with pytest.raises(CheckpointError, match="cut.pt: storage 0 referenced by the pickle is missing"):
        load_torch_zip(tmp_path / "cut.pt")


def test_state_dict_must_hold_tensors():
    with pytest.raises(CheckpointError, match="x.ckpt: no tensors found"):
        extract_state_dict({"state_dict": {"a": 1}}, source="x.ckpt")
    with pytest.raises(CheckpointError, match="holds a list"):
        extract_state_dict([1, 2])
