"""Checkpoints: rebuilt from the file alone, atomic writes, clear errors, no pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import tica
from tica import checkpoint
from tica.errors import CheckpointError


def test_round_trip_keeps_identity_and_coding(tmp_path, tica_cifar, cifar_images):
    path = tmp_path / "m.safetensors"
    tica.save_checkpoint(tica_cifar, path, {"quality": 3})
    loaded = tica.load(weights=path)
    assert loaded.fingerprint == tica_cifar.fingerprint
    assert loaded.checkpoint_metadata == {"quality": 3}
    assert not loaded.training
    data = tica.compress(tica_cifar, cifar_images[:4])
    assert torch.equal(tica.classify_logits(loaded, data), tica.classify_logits(tica_cifar, data))


def test_config_travels_in_the_file(tmp_path):
    model = tica.create_model("tica-cifar", depth=4, fam=False, M=64)
    path = tmp_path / "custom.safetensors"
    tica.save_checkpoint(model, path)
    loaded = tica.load_checkpoint(path)
    assert loaded.config == model.config and loaded.fam is None
    assert not loaded.is_updated          # saved before update(): loads for training
    assert tica.load(weights=path).is_updated


def test_write_is_atomic(tmp_path, tica_cifar, monkeypatch):
    path = tmp_path / "m.safetensors"
    tica.save_checkpoint(tica_cifar, path)
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError):
        tica.save_checkpoint(tica_cifar, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]   # no temp file left


def _bad_files(tmp_path, good: bytes):
    yield "missing", tmp_path / "nope.safetensors", "does not exist"
    p = tmp_path / "truncated.safetensors"
    p.write_bytes(good[: len(good) // 2])
    yield "truncated", p, "not a readable"
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(b"\xff" * 1000)
    yield "garbage", p, "not a readable"
    p = tmp_path / "pickle.pt"
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    yield "pickle", p, "not a readable"
    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    yield "no header", p, "not a tica checkpoint"
    p = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "tica-checkpoint", "format_version": "9"})
    yield "future format", p, "format 9"
    p = tmp_path / "badconfig.safetensors"
    cfg = json.dumps({"name": "x", "arch": "tica", "wings": 2})
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "tica-checkpoint", "format_version": "1", "config": cfg})
    yield "unknown config field", p, "bad config"
    p = tmp_path / "wrongtensors.safetensors"
    cfg = tica.create_model("hyperprior-cifar").config.to_json()
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "tica-checkpoint", "format_version": "1", "config": cfg})
    yield "tensors do not fit", p, "does not fit"


def test_bad_checkpoints_raise_checkpoint_error(tmp_path, tica_cifar):
    good = tmp_path / "good.safetensors"
    tica.save_checkpoint(tica_cifar, good)
    cases = list(_bad_files(tmp_path, good.read_bytes()))
    assert len(cases) == 8
    for what, path, reason in cases:
        with pytest.raises(CheckpointError, match=reason):
            tica.load(weights=path)


def test_wrong_shapes_are_refused(tmp_path, tica_cifar):
    path = tmp_path / "shapes.safetensors"
    tensors = {k: v.clone() for k, v in tica_cifar.state_dict().items()}
    tensors["vit.head.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(path), metadata={"format": "tica-checkpoint", "format_version": "1",
                                             "config": tica_cifar.config.to_json()})
    with pytest.raises(CheckpointError, match="does not fit"):
        tica.load_checkpoint(path)
