"""Checkpoints: rebuilt from the file alone, atomic writes, clear errors, no pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import tica
from tica import checkpoint
from tica.io import WeightsInfo
from tica.errors import CheckpointError


def test_round_trip_keeps_identity_and_coding(tmp_path, tica_cifar, cifar_images):
    path = tmp_path / "m.safetensors"
    tica.save_checkpoint(tica_cifar, path, {"quality": 3})
    loaded = tica.load(weights=path)
    assert loaded.fingerprint == tica_cifar.fingerprint
    assert loaded.weights_info == WeightsInfo(quality=3)
    assert loaded.weights_info.to_metadata() == {"quality": 3}
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


def test_a_small_file_naming_a_huge_model_is_refused_before_it_is_built(tmp_path, tica_cifar,
                                                                         monkeypatch):
    """A config of 16,384-wide, 500-deep ViT (hundreds of GB) in a file of one tensor: refused
    from the shapes alone, the model never allocated."""
    import tica.registry as registry
    huge = tica_cifar.config.replace(embed_dim=16384, depth=500)
    path = tmp_path / "huge.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={
        "format": "tica-checkpoint", "format_version": "1", "config": huge.to_json()})
    real = registry.build_model

    def only_on_meta(config, **kwargs):
        assert torch.empty(0).device.type == "meta", "a huge model built for real"
        return real(config, **kwargs)
    monkeypatch.setattr(registry, "build_model", only_on_meta)
    with pytest.raises(CheckpointError, match="does not fit model 'tica-cifar'"):
        tica.load_checkpoint(path)


def _header_metadata(path) -> str:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["metadata"]


def test_weights_info_round_trips_through_save_and_load(tmp_path, tica_cifar):
    info = WeightsInfo(quality=None, rate_points=[[0.3, 1e-4], [30.0, 0.03]], alpha=0.3,
                       beta=1e-4, step=2, train_steps=3510, model="tica-cifar",
                       trained={"where": "cpu", "minutes": 134}, interim=True,
                       extra={"note": "kept", "nested": {"a": [1, 2]}})
    path = tmp_path / "m.safetensors"
    tica.save_checkpoint(tica_cifar, path, info)
    loaded = tica.load_checkpoint(path).weights_info
    assert loaded == info and loaded.classifier_trained is True
    # stored as the flat object it always was: a training record keeps its null quality
    assert json.loads(_header_metadata(path)) == {
        "quality": None, "rate_points": [[0.3, 1e-4], [30.0, 0.03]], "alpha": 0.3, "beta": 1e-4,
        "step": 2, "train_steps": 3510, "model": "tica-cifar", "interim": True,
        "trained": {"where": "cpu", "minutes": 134}, "note": "kept", "nested": {"a": [1, 2]},
        "classifier_trained": True}
    assert WeightsInfo.from_metadata(info.to_metadata()) == info
    bare = tica.create_model("tica-cifar").weights_info
    assert bare == WeightsInfo() and bare.classifier_trained is None      # nothing known
    assert WeightsInfo().to_metadata() == {}
    assert WeightsInfo(untrained=True, seed=0).classifier_trained is False


def test_shipped_files_read_and_write_their_metadata_unchanged(tmp_path):
    """Every shipped file re-saves to the same record; one written before the explicit
    `classifier_trained` field gains it, as its alpha says (alpha 0: a codec-only run)."""
    from tica.registry import read_manifest
    entries = read_manifest()
    assert len(entries) >= 5
    for entry in entries:
        stored = json.loads(_header_metadata(entry.file))
        model = tica.load_checkpoint(entry.file)
        expected = {"classifier_trained": stored.get("alpha") != 0, **stored}
        assert model.weights_info.to_metadata() == expected
        assert model.weights_info.classifier_trained is (stored.get("alpha") != 0)
        tica.save_checkpoint(model, tmp_path / "again.safetensors", model.weights_info, half=True)
        assert json.loads(_header_metadata(tmp_path / "again.safetensors")) == expected


def test_old_metadata_with_alpha_zero_reads_as_a_codec_only_model(tmp_path, tica_cifar):
    path = tmp_path / "codec-only.safetensors"
    tica.save_checkpoint(tica_cifar, path, {"alpha": 0.0, "step": 2, "quality": 2})
    loaded = tica.load(weights=path)
    assert loaded.weights_info.classifier_trained is False and loaded.weights_info.quality == 2
    assert not tica.api.can_classify(loaded)
    # the explicit field wins over alpha, and is stored
    told = WeightsInfo(alpha=1.0, classifier_trained=False)
    tica.save_checkpoint(tica_cifar, path, told)
    assert json.loads(_header_metadata(path)) == {"alpha": 1.0, "classifier_trained": False}
    assert not tica.api.can_classify(tica.load(weights=path))
    assert tica.api.can_classify(tica_cifar)


def test_the_shape_check_stays_cheap():
    """Every preset, and each shipped codec's own config, builds on the meta device without
    Python's meta kernels, which import torch's compiler and sympy (seconds of a command's
    start, the first time): the initialisers keep to native, in-place operations."""
    import subprocess
    import sys
    code = """
import sys, torch
from tica.registry import build_model, find_weights, get_config, list_models, read_checkpoint
configs = [get_config(name) for name in list_models()]
for preset in ("tica-cifar", "tica-photo"):
    configs.append(read_checkpoint(find_weights(preset, "codec").file)[0])
for config in configs:
    with torch.device("meta"):
        build_model(config)
    slow = [m for m in ("sympy", "torch._dynamo") if m in sys.modules]
    assert not slow, (config.name, slow)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
