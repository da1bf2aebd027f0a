"""Shared fixtures: small coding-ready models and real images from ../shared/data."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch

import tica
from PIL import Image

from tica.image import decode_image

from _server import ServerProcess

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TICA_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set TICA_DATA)")
    return path


@pytest.fixture(scope="session")
def kodak_path() -> Path:
    return _need(DATA / "kodak" / "kodim23.png")


@pytest.fixture(scope="session")
def cifar_samples() -> list[tuple[bytes, str]]:
    """Two JPEG test images of every CIFAR-10 class, read straight from the archive."""
    archive = _need(DATA / "cifar10-jpeg.tar.gz")
    found: dict[str, list[bytes]] = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) == 4 and parts[1] == "test" and member.isfile():
                items = found.setdefault(parts[2], [])
                if len(items) < 2:
                    items.append(tar.extractfile(member).read())
                if len(found) == 10 and all(len(v) == 2 for v in found.values()):
                    break
            elif len(parts) > 1 and parts[1] == "train":
                break
    return [(data, label) for label, items in sorted(found.items()) for data in items]


@pytest.fixture(scope="session")
def cifar_images(cifar_samples) -> torch.Tensor:
    return torch.stack([decode_image(data) for data, _ in cifar_samples])


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
