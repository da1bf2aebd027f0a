"""The `tica` command, end to end and in-process, on photograph-sized and CIFAR-sized images
the tests make (tests/conftest.py)."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from tica.cli import main
from tica.registry import standard_qualities


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_encode_classify_decode_a_photo(tmp_path, photo_path, capsys):
    stream, out = tmp_path / "k.tica", tmp_path / "k.png"
    assert main(["encode", str(photo_path), "-o", str(stream), "--model", "tica-photo", "--json"]) == 0
    enc = _json(capsys)
    assert enc["bytes"] == stream.stat().st_size and enc["images"] == 1
    assert enc["bpp"] == pytest.approx(8 * enc["bytes"] / (768 * 512))
    assert main(["info", str(stream), "--json"]) == 0
    info = _json(capsys)
    assert info["sizes"] == [[512, 768]] and info["bytes"] == enc["bytes"]
    assert info["model"] == "tica-photo q6"           # the id names it; 6 of 8 is the default
    # tica-photo classifies photographs from the stream, in Imagenette's classes
    from tica.config import IMAGENETTE_LABELS
    assert main(["classify", str(stream), "--json"]) == 0
    assert _json(capsys)["top"][0]["label"] in IMAGENETTE_LABELS
    assert main(["decode", str(stream), "-o", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (768, 512) and img.mode == "RGB"


def test_cifar_batch_through_the_cli(tmp_path, cifar_samples, capsys):
    paths = []
    for i, (data, _) in enumerate(cifar_samples[:5]):
        p = tmp_path / f"c{i}.jpg"
        p.write_bytes(data)
        paths.append(str(p))
    stream = tmp_path / "batch.tica"
    assert main(["encode", *paths, "-o", str(stream)]) == 0
    assert "5 image(s)" in capsys.readouterr().out
    assert main(["classify", str(stream), "--json"]) == 0
    res = _json(capsys)
    assert len(res["images"]) == 5 and all(len(e["top"]) == 5 for e in res["images"])
    assert res["bytes"] == stream.stat().st_size
    assert main(["decode", str(stream), "-o", str(tmp_path / "out.png")]) == 0
    for i in range(5):
        with Image.open(tmp_path / f"out_{i:04d}.png") as img:
            assert img.size == (32, 32)
    single = tmp_path / "one.tica"
    assert main(["encode", paths[0], "-o", str(single)]) == 0
    capsys.readouterr()
    assert main(["info", str(single), "--json"]) == 0
    info = _json(capsys)
    # 11 bytes of header and sizes, and one byte for the image's quality code (variable rate)
    assert info["container_bytes"] == 12 and info["qualities"] == [6.0]    # the default point


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_subcommand(capsys):
    out = _help([], capsys)
    assert out.startswith("usage: tica ")
    listed = re.findall(r"^    (\w+)\s{2,}\S", out, re.MULTILINE)
    assert listed == ["encode", "decode", "classify", "serve", "export", "info", "train", "eval",
                      "shards"]


MODEL_FLAGS = ["--model", "--weights", "--quality", "--untrained", "--max-gflop"]


@pytest.mark.parametrize("command, flags", [
    ("encode", ["IMG", "-o OUT.tica", "--output", "--json", "--target-bpp X", *MODEL_FLAGS]),
    ("decode", ["IN.tica", "-o OUT.png", "--output", *MODEL_FLAGS]),
    ("classify", ["IN.tica", "--top-k K", "--server URL", "--json", *MODEL_FLAGS]),
    ("info", ["IN.tica", "--json"]),
    ("serve", ["--host", "--port", "--model", "--weights", "--workers", "--threads",
               "--no-batching", "--max-gflop", "--max-body-bytes", "--max-images"]),
])
def test_every_subcommand_has_help(command, flags, capsys):
    out = _help([command], capsys)
    assert out.startswith("usage: tica " + command)
    assert [f for f in flags if f not in out] == []


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tica: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_exit_non_zero_with_one_line(tmp_path, photo_path, capsys):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    assert main(["encode", str(not_image), "-o", str(tmp_path / "x.tica")]) == 1
    assert "cannot read image" in _one_line_error(capsys)
    assert not (tmp_path / "x.tica").exists()
    assert main(["encode", str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.tica")]) == 1
    assert "cannot read" in _one_line_error(capsys)
    assert main(["info", str(photo_path)]) == 1
    assert "bad magic" in _one_line_error(capsys)
    assert main(["classify", str(tmp_path / "missing.tica")]) == 1
    _one_line_error(capsys)
    stream = tmp_path / "c.tica"
    img = tmp_path / "tiny.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(img)
    assert main(["encode", str(img), "-o", str(stream)]) == 0
    capsys.readouterr()
    data = bytearray(stream.read_bytes())
    data[12] ^= 0x40
    stream.write_bytes(bytes(data))
    assert main(["decode", str(stream), "-o", str(tmp_path / "d.png")]) == 1
    assert "checksum" in _one_line_error(capsys)
    assert not (tmp_path / "d.png").exists()
    assert main(["classify", str(stream), "--model", "tica-s"]) == 1
    _one_line_error(capsys)
    assert main(["encode", str(img), "-o", str(stream), "--quality", "99"]) == 1
    assert re.search("quality|rate point 99", _one_line_error(capsys))
    assert main(["encode", str(img), "-o", str(stream), "--model", "nope"]) == 1
    assert "unknown model" in _one_line_error(capsys)
    with pytest.raises(SystemExit) as exc:
        main(["classify", str(stream), "--top-k", "0"])
    assert exc.value.code == 2


def test_shipped_rate_points_are_found_from_the_stream(tmp_path, cifar_samples, capsys):
    from tica.registry import standard_qualities
    qualities = standard_qualities("tica-cifar")
    if len(qualities) < 2:
        pytest.skip("needs at least two shipped tica-cifar rate points")
    img = tmp_path / "c.jpg"
    img.write_bytes(cifar_samples[0][0])
    sizes = {}
    for q in qualities:
        stream = tmp_path / f"q{q}.tica"
        assert main(["encode", str(img), "-o", str(stream), "--quality", str(q), "--json"]) == 0
        sizes[q] = _json(capsys)["bytes"]
        assert main(["info", str(stream), "--json"]) == 0
        assert _json(capsys)["model"] == f"tica-cifar q{q}"
        assert main(["classify", str(stream), "--json"]) == 0          # no flags: the stream says
        assert _json(capsys)["model"] == f"tica-cifar q{q}"
        assert main(["decode", str(stream), "-o", str(tmp_path / f"q{q}.png")]) == 0
        capsys.readouterr()
    assert sizes[qualities[0]] <= sizes[qualities[-1]]                  # higher quality, more bytes


def test_variable_rate_weights_any_quality_and_a_target_bpp(tmp_path, capsys):
    """A variable-rate checkpoint: --quality takes any number in range, --target-bpp finds
    the quality per image, and decode / classify / info need no flags but the weights."""
    import numpy as np
    import torch
    import tica
    from tica.checkpoint import save_checkpoint
    model = tica.create_model("tica-cifar", seed=5, rate_levels=4, N=16, M=16, embed_dim=32,
                              depth=2, num_heads=2, fam_blocks=(1,)).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(40)
    model.update()
    weights = tmp_path / "vr.safetensors"
    save_checkpoint(model, weights)
    rng = np.random.default_rng(0)
    img = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    w = ["--weights", str(weights)]
    sizes = {}
    for q in ("1", "2.5", "4"):
        out = tmp_path / f"q{q}.tica"
        assert main(["encode", str(img), "-o", str(out), "--quality", q, "--json", *w]) == 0
        enc = _json(capsys)
        sizes[q] = enc["bpp"]
        assert enc["model"] == f"tica-cifar q{float(q):g}"
        assert main(["info", str(out), "--json"]) == 0
        assert _json(capsys)["qualities"] == [float(q)]
        assert main(["classify", str(out), "--json", *w]) == 0
        assert _json(capsys)["quality"] == float(q)
        assert main(["decode", str(out), "-o", str(tmp_path / f"q{q}.png"), *w]) == 0
        capsys.readouterr()
    assert sizes["1"] < sizes["2.5"] < sizes["4"]
    target = (sizes["1"] + sizes["4"]) / 2
    out = tmp_path / "t.tica"
    assert main(["encode", str(img), "-o", str(out), "--target-bpp", str(target), "--json", *w]) == 0
    enc = _json(capsys)
    assert enc["bpp"] <= target and 1 <= enc["qualities"][0] < 4
    assert main(["encode", str(img), "-o", str(out), "--quality", "4.5", *w]) == 1
    assert "outside" in _one_line_error(capsys)
    fixed = tica.create_model("tica-cifar", seed=5, N=16, M=16, embed_dim=32, depth=2,
                              num_heads=2, fam_blocks=(1,)).eval()
    fixed.update()
    save_checkpoint(fixed, tmp_path / "fixed.safetensors", {"quality": 1})
    assert main(["encode", str(img), "-o", str(out), "--target-bpp", "1",
                 "--weights", str(tmp_path / "fixed.safetensors")]) == 1
    assert "fixed-rate" in _one_line_error(capsys)
