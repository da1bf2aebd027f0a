"""Bounded compute (tica.cost): every model costs an image before any work, a stream over the
budget is refused quickly in the library, the CLI and the server, and with no model named the
preset that suits the image is picked and said."""

from __future__ import annotations

import io
import json
import time

import math

import numpy as np
import pytest
import torch
from PIL import Image

import tica
from tica.nn import bands
from tica import api, bitstream, cost
from tica.cli import main
from tica.image import read_image
from tica.config import quality_code

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def cifar():
    return tica.load("tica-cifar")


@pytest.fixture(scope="module")
def photo():
    return tica.load("tica-photo")


def crafted(model, side: int, count: int = 1) -> bytes:
    """A well-formed container for `count` side x side images of `model`: its header holds
    the sizes, each payload is 64 arbitrary bytes. Building it costs nothing, decoding it all
    the work of a real stream of that size."""
    codes = None if model.quality_range is None else [quality_code(model.config.default_quality)] * count
    return bitstream.pack(model.model_id, [(side, side)] * count, [bytes(range(1, 65))] * count,
                          codes)


# Over the default budget whatever the attention mode: four 2048x2048 images through the
# CIFAR model (a 1024x1024 one, the stream, fits now: attention runs in windows).
RUNAWAY = (2048, 4)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


# ---- the cost model --------------------------------------------------------------------------
def _counted_gflop(fn) -> float:
    """FLOPs torch counts for fn, without attention (which the counter does not see on every
    version): the convolutions and linear layers."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    flops = sum(n for op, n in counter.get_flop_counts()["Global"].items()
                if "attention" not in str(op))
    return flops / 1e9


@pytest.mark.parametrize("name, overrides, size", [
    ("tica-cifar", {}, (32, 32)), ("tica-cifar", {}, (40, 72)),
    ("tica-cifar", {"act": "gdn", "res_blocks": 1}, (32, 48)), ("tica-cifar", {"fam": False}, (32, 32)),
    ("hyperprior-cifar", {}, (32, 32)), ("tica-photo", {}, (96, 160)),
    ("tica-cifar", {}, (256, 320)),                    # 64x80 tokens: attention in 8x8 windows
    ("tica-cifar", {"distill_token": True}, (32, 32)),
    ("tica-cifar", {"distill_token": True}, (256, 320)),
    ("tica-cifar", {"hs_mid": 40, "hs_kernel": 1}, (32, 48)),   # an h_s of another shape
    ("tica-cifar", {"hs_first_kernel": 3, "hs_kernel": 1}, (40, 72)),
    ("tica-cifar", {"hs_mid_kernel": 3, "hs_kernel": 1}, (40, 72)),
])
def test_estimate_matches_counted_flops(name, overrides, size, monkeypatch):
    """With the float64 and symbol weights at 1 and 0, the estimate is exactly the
    convolutions and linear layers torch counts, plus attention (4 n^2 D a block). The
    integer h_s as the float64 convolutions it is counted as (int8 digit products are the
    same integers in more, cheaper products)."""
    from tica.nn import integer
    monkeypatch.setattr(integer, "digit_gemm", lambda: (None, 0.0))
    monkeypatch.setattr(cost, "FLOAT64_WEIGHT", 1.0)
    monkeypatch.setattr(cost, "SYMBOL_FLOPS", 0.0)
    monkeypatch.setattr(bands, "BAND_BYTES", 1 << 40)   # whole: bands re-run their halos
    model = tica.create_model(name, **overrides).eval()
    model.update()
    x = torch.rand(1, 3, *size)
    assert model.cost(size, "encode") == pytest.approx(_counted_gflop(lambda: model.analyze(x)), rel=1e-6)
    y_hat = model.latent(x)
    h_s = cost.hyper_flops(model.config, model.latent_grid(size))[1] / 1e9
    c, n = model.config, 1 + y_hat.shape[-2] * y_hat.shape[-1]
    counted = {"reconstruct": _counted_gflop(lambda: model.reconstruct_latent(y_hat, size))}
    if "classify" in model.operations:
        counted["classify"] = _counted_gflop(lambda: model.classify_latent(y_hat))
    for op, flops in counted.items():
        blocks = (c.depth if op == "classify" or not c.fam else max(c.fam_blocks)) if hasattr(model, "vit") else 0
        count, n = model.vit.sequences(model.latent_grid(size), op == "classify") if blocks else (1, n)
        attention = count * blocks * 4 * n * n * c.embed_dim / 1e9
        assert model.cost(size, op) - h_s - attention == pytest.approx(flops, rel=1e-6), op


def test_pixel_vit_cost_matches_counted_flops():
    model = tica.create_model("vit-pixel-cifar").eval()
    c, n = model.config, 1 + 64
    attention = c.depth * 4 * n * n * c.embed_dim / 1e9
    counted = _counted_gflop(lambda: model.classify_pixels(torch.rand(1, 3, 32, 32)))
    assert model.cost((32, 32), "classify") - attention == pytest.approx(counted, rel=1e-6)
    with pytest.raises(tica.ConfigError, match="only classify"):
        model.cost((32, 32), "reconstruct")


def test_global_attention_makes_a_large_grid_of_tokens_the_costly_case(cifar, photo):
    # entropy decoding grows with the area; classification with its square, through global
    # attention (tests/test_large_grids.py: the windows that make it linear again)
    assert cifar.cost((1024, 1024), "decompress") == pytest.approx(16 * cifar.cost((256, 256), "decompress"))
    cifar.vit.attention = photo.vit.attention = "global"
    try:
        assert cifar.cost((1024, 1024), "classify") > 150 * cifar.cost((256, 256), "classify")
        # the same 1024x1024 image costs the photo model (16x downsampling) ~1/85 of that
        assert photo.cost((1024, 1024), "classify") < cifar.cost((1024, 1024), "classify") / 50
    finally:
        cifar.vit.attention = photo.vit.attention = "auto"
    t0 = time.perf_counter()
    for side in range(32, 4096, 32):
        cifar.cost((side, side), "classify")
    assert time.perf_counter() - t0 < 0.5                  # 127 estimates: no forward pass


def test_the_default_budget_holds_every_legitimate_use_and_refuses_the_runaway(cifar, photo):
    budget = tica.Budget()
    assert budget.max_gflop == cost.DEFAULT_MAX_GFLOP == 2000
    # photographs up to the server's limits (4 Mpixel, 4096 a side) with the photo model
    for size in [(2048, 2048), (1024, 4096), (512, 768)]:
        assert 0 < budget.check(photo, [size], photo.operations) < 0.6 * budget.max_gflop
    assert budget.check(photo, [(512, 768)] * 24, ["reconstruct"]) < budget.max_gflop   # all of Kodak
    # CIFAR-size images with the CIFAR model, up to the server's 64 images a stream
    assert budget.check(cifar, [(32, 32)] * 64, cifar.operations) < 40
    assert budget.check(cifar, [(64, 64)] * 64, cifar.operations) < 200
    # the stream, a 1024x1024 image through tica-cifar (65,536 tokens), fits with
    # windowed attention; four 2048x2048 ones do not
    assert budget.check(cifar, [(1024, 1024)], cifar.operations) < budget.max_gflop / 2
    side, count = RUNAWAY
    with pytest.raises(tica.BudgetError) as exc:
        budget.check(cifar, [(side, side)] * count, cifar.operations)
    assert exc.value.cost > 2 * budget.max_gflop and exc.value.limit == 2000
    assert "4 image(s) of up to 2048x2048 with tica-cifar" in str(exc.value)
    with pytest.raises(tica.ConfigError, match="positive"):
        tica.Budget(max_gflop=0)


# ---- the library -----------------------------------------------------------------------------
def test_library_refuses_before_any_decoding(cifar, monkeypatch):
    data = crafted(cifar, *RUNAWAY)

    def never(*args, **kwargs):
        raise AssertionError("decoding started")
    monkeypatch.setattr(cifar, "decompress", never)
    # entropy decoding alone is linear in the area: 1024x1024 fits, two 4096x4096 do not
    assert cifar.cost((1024, 1024), "decompress") < 250 < 2000 \
        < 2 * cifar.cost((4096, 4096), "decompress")
    huge = crafted(cifar, 4096, count=2)
    for call in (lambda: tica.classify(cifar, data), lambda: tica.reconstruct(cifar, data),
                 lambda: tica.decompress(cifar, huge)):             # raises on the call, not on next()
        t0 = time.perf_counter()
        with pytest.raises(tica.BudgetError):
            call()
        assert time.perf_counter() - t0 < 1.0
    with pytest.raises(AssertionError, match="decoding started"):   # a raised budget lets it through
        tica.classify(cifar, data, budget=tica.Budget(max_gflop=1e6))
    with pytest.raises(AssertionError, match="decoding started"):   # None: unbounded
        tica.reconstruct(cifar, data, budget=None)


def test_compress_refuses_a_stream_its_decoder_would_refuse(cifar, monkeypatch):
    monkeypatch.setattr(cifar, "analyze", lambda *a, **k: pytest.fail("encoding started"))
    with pytest.raises(tica.BudgetError, match="2048x2048 with tica-cifar"):
        tica.compress(cifar, torch.zeros(1, 3, 2048, 2048).expand(4, -1, -1, -1))
    with pytest.raises(tica.BudgetError, match="64 image"):       # the total of a batch counts
        tica.compress(cifar, torch.zeros(64, 3, 32, 32), budget=tica.Budget(max_gflop=15))
    # within any budget, but over what a stream may hold (bitstream.Limits): a side, a count
    from tica.errors import LimitError
    limits = tica.Limits()
    for images in (torch.zeros(1, 3, 8, limits.max_side + 16),
                   torch.zeros(1, 3, 32, 32).expand(limits.max_images + 1, -1, -1, -1)):
        with pytest.raises(LimitError, match="would be refused by its decoder"):
            tica.compress(cifar, images, budget=None)


# ---- the default model -----------------------------------------------------------------------
def test_choose_model_by_image_size():
    assert tica.choose_model([(32, 32)]) == "tica-cifar"
    assert tica.choose_model([(64, 64), (20, 50)]) == "tica-cifar"
    assert tica.choose_model([(65, 10)]) == "tica-photo"
    assert tica.choose_model([(384, 512)]) == "tica-photo"
    assert tica.choose_model([(32, 32), (32, 100)]) == "tica-photo"   # one stream, one model


def test_encode_with_no_model_picks_and_says_so(tmp_path, photo_path, capsys):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (32, 32), (120, 130, 140)).save(small)
    with Image.open(photo_path) as img:
        img.crop((0, 0, 512, 384)).save(large)
    assert main(["encode", str(small), "-o", str(tmp_path / "s.tica"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "picked tica-cifar" in err and json.loads(out)["model"] == api.describe(tica.load("tica-cifar"))
    assert main(["encode", str(large), "-o", str(tmp_path / "l.tica")]) == 0
    out, err = capsys.readouterr()
    assert "picked tica-photo (largest side 512 px" in err
    label = api.describe(tica.load("tica-photo"))                  # e.g. "tica-photo q4"
    assert "512x384" in out and f"[{label}]" in out
    assert api.inspect((tmp_path / "l.tica").read_bytes())["model"] == label
    assert "warning" not in err                                   # a photo beats its PNG
    # a named model is used as named, and nothing is picked
    assert main(["encode", str(small), "-o", str(tmp_path / "n.tica"), "--model", "tica-cifar",
                 "--quality", "1"]) == 0
    assert "picked" not in capsys.readouterr().err
    # classify on a codec-only photo model keeps its clear error
    if not api.can_classify(tica.load("tica-photo")):
        assert main(["classify", str(tmp_path / "l.tica")]) == 1
        assert "alpha = 0" in capsys.readouterr().err


def test_a_stream_larger_than_png_is_said(tmp_path, capsys):
    # a two-colour checkerboard of 4x4 squares: PNG's best case (141 bytes), and sharp edges
    # that a codec trained on photographs spends far more on
    flat, noise = tmp_path / "checker.png", tmp_path / "noise.png"
    squares = ((np.indices((32, 32)).sum(0) // 4) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([squares] * 3, -1)).save(flat)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise)
    assert main(["encode", str(flat), "-o", str(tmp_path / "f.tica"), "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["png_bytes"] == api.png_bytes(read_image(flat))
    assert report["bytes"] > report["png_bytes"]
    assert err.count("tica: warning:") == 1
    assert f"({report['bytes']} bytes) is larger than the same image(s) as lossless PNG " \
           f"({report['png_bytes']} bytes)" in err
    assert main(["encode", str(noise), "-o", str(tmp_path / "n.tica"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["bytes"] < json.loads(out)["png_bytes"] and "warning" not in err


# ---- the CLI ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["decode", "classify"])
def test_cli_refuses_quickly_naming_the_flag(command, tmp_path, cifar, capsys):
    stream = tmp_path / "big.tica"
    stream.write_bytes(crafted(cifar, *RUNAWAY))
    args = [command, str(stream)] + (["-o", str(tmp_path / "out.png")] if command == "decode" else [])
    t0 = time.perf_counter()
    assert main(args) == 1
    assert time.perf_counter() - t0 < 5.0                        # model load included
    err = capsys.readouterr().err.strip()
    assert err.startswith("tica: error: ") and "\n" not in err
    assert "2048x2048 with tica-cifar" in err and "over the budget of 2,000 GFLOP" in err
    assert "pass --max-gflop" in err
    assert not (tmp_path / "out.png").exists()
    # the flag moves the line: a 128x128 stream is refused just under its cost, decoded at it
    stream.write_bytes(crafted(cifar, 128))
    need = math.ceil(cifar.cost((128, 128), "reconstruct" if command == "decode" else "classify"))
    assert need >= 2
    assert main(args + ["--max-gflop", str(need - 1)]) == 1
    assert f"pass --max-gflop {need} to allow it" in capsys.readouterr().err
    assert main(args + ["--max-gflop", str(need)]) == 0


def test_cli_encode_refuses_before_writing(tmp_path, cifar, capsys):
    image = tmp_path / "big.png"
    Image.new("RGB", (4096, 2048), (128, 128, 128)).save(image)
    out = tmp_path / "big.tica"
    worst = max(cost.stream_cost(cifar, [(2048, 4096)], op) for op in cifar.operations)
    assert worst > 2000
    assert main(["encode", str(image), "-o", str(out), "--model", "tica-cifar"]) == 1
    err = capsys.readouterr().err
    assert f"with tica-cifar would cost about {worst:,.0f} GFLOP" in err
    assert f"--max-gflop {math.ceil(worst)}" in err
    assert not out.exists()


# ---- the server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from tica.serve import ServeConfig, create_app
    with TestClient(create_app(ServeConfig(batch_window_ms=1)), raise_server_exceptions=False) as c:
        yield c


def test_server_answers_413_before_decoding(client, cifar, cifar_images):
    from fastapi.testclient import TestClient
    from tica.serve import ServeConfig, create_app
    # /v1/classify reads every image of the stream; /v1/reconstruct one, and the largest the
    # server takes (4 Mpixel) fits the default budget with windowed attention: a server with
    # a lower budget refuses it
    with TestClient(create_app(ServeConfig(batch_window_ms=1, max_gflop=100)),
                    raise_server_exceptions=False) as strict:
        for server, path, data, size in [
                (client, "/v1/classify", crafted(cifar, *RUNAWAY), 2048),
                (strict, "/v1/reconstruct", crafted(cifar, 1024), 1024)]:
            t0 = time.perf_counter()
            r = server.post(path, content=data, headers=OCTET)
            assert time.perf_counter() - t0 < 1.0
            assert r.status_code == 413 and r.json()["error"] == "BudgetError"
            assert f"{size}x{size} with tica-cifar" in r.json()["detail"]
            assert "this server allows a request" in r.json()["detail"]
            assert server.app.state.batcher.stats.requests == 0   # nothing reached a worker
    # a full CIFAR batch is well inside it
    many = tica.compress(cifar, cifar_images[:1].repeat(64, 1, 1, 1))
    r = client.post("/v1/classify", content=many, headers=OCTET)
    assert r.status_code == 200 and len(r.json()["images"]) == 64
    assert client.get("/v1/models").json()["limits"]["max_gflop"] == 2000


def test_server_encode_picks_the_model_for_the_image(client, cifar, photo, photo_path):
    small = _png(Image.new("RGB", (32, 32), (200, 10, 10)))
    r = client.post("/v1/encode", content=small, headers=OCTET)
    assert r.status_code == 200 and r.headers["X-Tica-Model"] == api.describe(cifar)
    with Image.open(photo_path) as img:
        large = _png(img.crop((0, 0, 512, 384)))
    r = client.post("/v1/encode", content=large, headers=OCTET)
    assert r.status_code == 200 and r.headers["X-Tica-Model"] == api.describe(photo)
    assert api.inspect(r.content)["model"] == api.describe(photo) and len(r.content) < len(large)
    r = client.post("/v1/encode?model=tica-cifar&quality=1", content=small, headers=OCTET)
    assert r.headers["X-Tica-Model"] == "tica-cifar q1"
    if photo.quality_range is None:                 # fixed-rate rate points: 2.5 is tica-cifar's only
        r = client.post("/v1/encode?quality=2.5", content=large, headers=OCTET)
        assert r.status_code == 422 and r.json()["error"] == "UnknownQuality"
        assert "tica-photo [" in r.json()["detail"]
    r = client.post("/v1/encode?model=nope", content=small, headers=OCTET)
    assert r.status_code == 422 and r.json()["error"] == "UnknownModel"
    # a named model that would write a stream over the budget: refused before encoding
    big = _png(Image.new("RGB", (4096, 2048), (128, 128, 128)))
    assert max(cost.stream_cost(cifar, [(2048, 4096)], op) for op in cifar.operations) > 2000
    t0 = time.perf_counter()
    r = client.post("/v1/encode?model=tica-cifar", content=big, headers=OCTET)
    assert r.status_code == 413 and r.json()["error"] == "BudgetError"
    assert time.perf_counter() - t0 < 2.0
    auto = client.get("/v1/models").json()["auto"]
    assert auto == {"on": True, "small_side": 64, "small": "tica-cifar", "large": "tica-photo"}
