"""Edge export: ONNX networks that give the same integers as PyTorch, and streams encoded
through them decode on the PyTorch side bit-exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tica

pytest.importorskip("onnxruntime")
from tica.cli import main  # noqa: E402
from tica.errors import CheckpointError, TicaError  # noqa: E402
from tica.export import EdgeEncoder, export_onnx  # noqa: E402
from tica.io import sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def cifar_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("edge")
    assert main(["export", "--onnx", str(out), "--quality", "1"]) == 0
    return out


def _decoded(model, data):
    return torch.cat([y for _, _, y in tica.decompress(model, data)])


def test_edge_streams_decode_bit_exactly_on_the_server(cifar_export, cifar_images):
    model = tica.load("tica-cifar")
    meta = json.loads((cifar_export / "edge.json").read_text())
    assert meta["model_id"] == f"{model.model_id:04x}" and meta["quality"] == 1
    encoder = EdgeEncoder(cifar_export)
    differing = 0
    for image in cifar_images[:6]:
        data = encoder.compress(image.numpy())
        _, symbols, y_hat, _ = encoder.latent(image.numpy())
        # bit-exact: the symbols plus means the edge coded, times the inverse gain
        assert torch.equal(_decoded(model, data)[0], model.dequantize(torch.from_numpy(y_hat)[None], 1)[0])
        reference = model.analyze(image[None], 1)[3][0]
        differing += int((torch.from_numpy(symbols) != reference).sum())
        assert tica.classify(model, data)[0][0].index == tica.classify(
            model, tica.compress(model, image, quality=1))[0][0].index
    assert differing <= 6          # float32 g_a may move a rare value across a rounding edge


def test_hyper_network_is_exact_at_photo_size(tmp_path, tica_photo, photo_path):
    from tica.image import read_image
    meta = export_onnx(tica_photo, tmp_path)
    assert meta["check"]["index_equal"] and meta["check"]["mean_equal"]
    encoder = EdgeEncoder(tmp_path)
    image = read_image(photo_path)[:, :200, :330]                 # not a multiple of the stride
    z, _, y_hat, index = encoder.latent(image.numpy())
    z_int, indexes, means, _ = tica_photo.analyze(image[None])
    # given the same z, the ONNX indexes and means equal the exact integer h_s's
    onnx_index, onnx_mean = encoder.hyper(z_int.numpy())
    assert np.array_equal(onnx_index, indexes) and np.array_equal(onnx_mean, means.numpy())
    data = encoder.compress(image.numpy())
    assert torch.equal(_decoded(tica_photo, data)[0], torch.from_numpy(y_hat))


def test_a_tampered_export_is_refused(tmp_path, cifar_export):
    import shutil
    copy = tmp_path / "edge"
    shutil.copytree(cifar_export, copy)
    with open(copy / "hyper.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    with pytest.raises(CheckpointError, match="does not match"):
        EdgeEncoder(copy)
    shutil.copy(cifar_export / "hyper.onnx", copy / "hyper.onnx")
    meta = json.loads((cifar_export / "edge.json").read_text())
    for bad, reason in (({}, "not a version-1"), ([1, 2], "not a version-1"),
                        ({**meta, "model_id": "zz"}, "malformed"),
                        ({**meta, "files": {"tables.npz": meta["files"]["tables.npz"]}},
                         "malformed"),       # files left unchecked would load unverified
                        ({k: v for k, v in meta.items() if k != "stride"}, "malformed")):
        (copy / "edge.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=reason):
            EdgeEncoder(copy)
    (copy / "analysis.onnx").write_bytes(b"not an onnx model")      # listed with its hash
    (copy / "edge.json").write_text(json.dumps(
        {**meta, "files": {**meta["files"], "analysis.onnx": sha256_file(copy / "analysis.onnx")}}))
    with pytest.raises(CheckpointError, match="not a usable tica edge export"):
        EdgeEncoder(copy)


def test_an_export_that_fails_its_check_leaves_no_edge_json(tmp_path, monkeypatch):
    import tica.export as export
    model = tica.load("tica-cifar")

    def inexact(*args, **kwargs):
        raise TicaError("the exported hyper network is not exact: {...}")
    monkeypatch.setattr(export, "check_export", inexact)
    with pytest.raises(TicaError, match="not exact"):
        export.export_onnx(model, tmp_path / "edge")
    assert (tmp_path / "edge" / "analysis.onnx").is_file()
    assert not (tmp_path / "edge" / "edge.json").exists()
    with pytest.raises(CheckpointError, match="not a tica edge export"):
        EdgeEncoder(tmp_path / "edge")


@pytest.mark.parametrize("entropy_gain", [False, True], ids=["gain-on-y", "entropy-gain"])
def test_a_variable_rate_model_exports_at_one_quality_and_its_streams_say_so(tmp_path,
                                                                            entropy_gain):
    model = tica.create_model("tica-cifar", seed=4, rate_levels=3, N=16, M=16, embed_dim=32,
                              depth=2, num_heads=2, fam_blocks=(1,),
                              entropy_gain=entropy_gain).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(40)
    model.update()
    meta = export_onnx(model, tmp_path, quality=2.5)
    assert meta["quality"] == 2.5 and meta["check"]["index_equal"]
    encoder = EdgeEncoder(tmp_path)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    data = encoder.compress(image.numpy())
    assert tica.api.stream_qualities(tica.bitstream.unpack(data)) == [2.5]
    _, _, y_hat, _ = encoder.latent(image.numpy())
    expected = model.dequantize(torch.from_numpy(y_hat)[None], 2.5)
    assert torch.equal(_decoded(model, data), expected)          # decoded with no flags


def test_the_edge_and_the_model_write_the_same_payload_bytes(cifar_export, cifar_images):
    """One coding path: where ONNX's g_a gives the same symbols as PyTorch's, the edge's
    payload is byte for byte the model's, and both are `encode_payload` of those symbols."""
    from tica.entropy.payload import encode_payload
    model = tica.load("tica-cifar")
    encoder = EdgeEncoder(cifar_export)
    same = 0
    for image in cifar_images[:6]:
        edge = tica.bitstream.unpack(encoder.compress(image.numpy())).payloads[0]
        z, symbols, _, index = encoder.latent(image.numpy())
        assert edge == encode_payload(z.astype(np.int64), symbols.astype(np.int64), index,
                                      model.entropy_bottleneck.tables,
                                      model.gaussian_conditional.tables)
        z_int, indexes, _, reference = model.analyze(image[None], 1)
        served = model.compress(image[None], 1)[0]
        assert served == encode_payload(z_int[0].long().numpy(), reference[0].long().numpy(),
                                        indexes[0], model.entropy_bottleneck.tables,
                                        model.gaussian_conditional.tables)
        if np.array_equal(z, z_int[0].numpy()) and np.array_equal(symbols, reference[0].numpy()):
            assert edge == served
            same += 1
    assert same >= 3


def test_a_narrow_integer_h_s_exports_with_its_own_widths(tmp_path, cifar_images):
    """A model whose integer h_s is narrower (ModelConfig.hs_*) exports the same widths: the
    edge's indexes and means equal the model's own for the same z."""
    model = tica.create_model("tica-cifar", N=32, M=48, hs_weight_bits=7, hs_act_frac_bits=5,
                              hs_act_bits=7).eval()
    model.update()
    meta = export_onnx(model, tmp_path)
    assert meta["check"]["index_equal"] and meta["check"]["mean_equal"]
    z_int, indexes, means, _ = model.analyze(cifar_images[:4])
    encoder = EdgeEncoder(tmp_path)
    for i in range(4):                                  # the edge codes one image at a time
        onnx_index, onnx_mean = encoder.hyper(z_int[i:i + 1].numpy())
        assert np.array_equal(onnx_index, indexes[i:i + 1])
        assert np.array_equal(onnx_mean, means[i:i + 1].numpy())
    wide = tica.create_model("tica-cifar", N=32, M=48).eval()
    wide.load_state_dict(model.state_dict())
    wide.update()              # the same weights with the default widths: other numbers
    assert not torch.equal(wide.analyze(cifar_images[:4])[2], means)
