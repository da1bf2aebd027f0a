"""Shared fixtures: small coding-ready models, and images the tests make themselves, so that
the suite stands without ../shared/data. The few tests that need the real data sets carry
@pytest.mark.real_data(paths) and are skipped, naming the missing path, where they are absent."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import tica
from PIL import Image, ImageDraw

from tica.config import CIFAR10_LABELS
from tica.image import read_image

from _server import ServerProcess

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TICA_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """@pytest.mark.real_data("kodak/kodim23.png", ...): skip, naming what is missing, unless
    every path (relative to DATA) exists."""
    for item in items:
        marker = item.get_closest_marker("real_data")
        if marker is None:
            continue
        missing = [str(DATA / p) for p in marker.args or ("",) if not (DATA / p).exists()]
        if missing:
            item.add_marker(pytest.mark.skip(
                reason=f"real data not found: {', '.join(missing)} (set TICA_DATA, or put the "
                       f"data sets at {REPO.parent / 'shared' / 'data'})"))


@pytest.fixture
def kodak_path(request) -> Path:
    """A real Kodak photograph, for the tests that are about real photographs only."""
    marker = request.node.get_closest_marker("real_data")
    assert marker is not None and "kodak/kodim23.png" in marker.args, \
        'a test reading the real data is marked @pytest.mark.real_data("kodak/kodim23.png")'
    return DATA / "kodak" / "kodim23.png"


def made_up_photo(width: int, height: int, seed: int) -> Image.Image:
    """An RGB image with a photograph's statistics, roughly: smooth shading, mid-scale texture,
    a few hard-edged objects and sensor noise, so that codecs spend bytes on it as on a photo
    (a flat colour would cost them nothing)."""
    rng = np.random.default_rng(seed)

    def field(cells_x: int, cells_y: int, channels: int) -> np.ndarray:   # (H, W, C), smooth
        low = rng.integers(0, 256, (cells_y, cells_x, channels), dtype=np.uint8)
        planes = [Image.fromarray(low[..., c]).resize((width, height), Image.BICUBIC)
                  for c in range(channels)]
        return np.stack([np.asarray(p, np.float32) for p in planes], -1)

    coarse = (max(2, width // 96), max(2, height // 96))
    # luminance and colour vary together, as in a photograph, plus a finer texture
    x = 0.55 * field(*coarse, 1) + 0.3 * field(*coarse, 3) + \
        0.15 * field(max(2, width // 6), max(2, height // 6), 1)
    img = Image.fromarray(x.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (int(rng.integers(max(2, s // 10), max(3, s // 3))) for s in (width, height))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
    noisy = np.asarray(img, np.float32) + rng.normal(0, 1.5, (height, width, 3))
    return Image.fromarray(noisy.round().clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def photo_path(tmp_path_factory) -> Path:
    """A made-up 768x512 photograph (Kodak's size, landscape) as PNG."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    made_up_photo(768, 512, seed=23).save(path)
    return path


@pytest.fixture(scope="session")
def cifar_samples() -> list[tuple[bytes, str]]:
    """Two made-up 32x32 JPEG images per CIFAR-10 class, in the classes' order (as CIFAR-10's
    test set is read): (file bytes, label)."""
    samples = []
    for i, label in enumerate(CIFAR10_LABELS):
        for j in range(2):
            buf = io.BytesIO()
            made_up_photo(32, 32, seed=100 + 2 * i + j).save(buf, format="JPEG", quality=90)
            samples.append((buf.getvalue(), label))
    return samples


@pytest.fixture(scope="session")
def cifar_images(cifar_samples) -> torch.Tensor:
    return torch.stack([read_image(data) for data, _ in cifar_samples])


def _ready(name: str, **overrides):
    model = tica.create_model(name, **overrides).eval()
    model.update()
    return model


@pytest.fixture(scope="session")
def tica_cifar():
    return _ready("tica-cifar")


@pytest.fixture(scope="session")
def hyperprior_cifar():
    return _ready("hyperprior-cifar")


@pytest.fixture(scope="session")
def tica_photo():
    return _ready("tica-photo")


def _image_bytes(color, size=(32, 32), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def archive(tmp_path, monkeypatch) -> Path:
    """A tiny ImageFolder archive in the CIFAR layout: data/{train,test}/{a,b}/N.png."""
    monkeypatch.setenv("TICA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 3), ("test", 2)):
            for label, color in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
                for i in range(n):
                    data = _image_bytes(color)
                    info = tarfile.TarInfo(f"data/{split}/{label}/{i:04d}.png")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def live_server():
    """`tica serve` in its own process on a free loopback port: its URL."""
    server = ServerProcess()
    yield server.url
    server.stop()


def load_module(path: Path, name: str | None = None):
    """A script or extension file (benchmarks/, scripts/, a built kernel) as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name or Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refinement_moves(model, images, quality: float = 2.0, steps: int = 5) -> list[int]:
    """Indexes of the images whose stream `steps` of encoder-side refinement changes (it keeps
    the plain latents where no step lowers the objective: with the shipped tica-cifar, about
    a third of the made-up images at q2). Tests of what refinement writes use those."""
    found = [i for i, x in enumerate(images)
             if tica.compress(model, x, quality=quality, refine=steps)
             != tica.compress(model, x, quality=quality)]
    assert found, "refinement changed no image's stream"
    return found
