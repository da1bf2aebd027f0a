"""Classical codec baselines: real files, their decoded pixels, and the header-free payload."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image

from tica_tools.classical import CLASSICAL_CODECS, avif_payload, get_codec, jpeg_payload, webp_payload
from tica.errors import TicaError


@pytest.fixture(scope="module")
def crop(photo_path) -> np.ndarray:
    return np.asarray(Image.open(photo_path).convert("RGB"))[200:264, 300:364].copy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


@pytest.mark.parametrize("name", list(CLASSICAL_CODECS))
def test_sweep_trades_bytes_for_quality(name, crop):
    codec = get_codec(name)
    sizes, psnrs = [], []
    for q in (codec.qualities[0], codec.qualities[-1]):
        data, decoded = codec.roundtrip(crop, q)
        assert decoded.shape == crop.shape and decoded.dtype == np.uint8
        assert 0 < codec.payload(data) <= len(data)
        sizes.append(len(data))
        psnrs.append(_psnr(decoded, crop))
    assert sizes[1] > sizes[0] and psnrs[1] > psnrs[0] + 5     # the best setting costs and pays


def _segments(data: bytes) -> list[tuple[int, int]]:
    """(marker, bytes incl. marker) of every JPEG segment before the scan."""
    out, pos = [], 2
    while data[pos + 1] != 0xDA:
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        out.append((data[pos + 1], 2 + length))
        pos += 2 + length
    return out


def test_jpeg_payload_drops_tables_and_headers(crop):
    data = get_codec("jpeg").encode(crop, 50)
    segments = _segments(data)
    markers = {m for m, _ in segments}
    assert 0xDB in markers and 0xC4 in markers and 0xC0 in markers       # DQT, DHT, SOF0
    assert jpeg_payload(data) == len(data) - sum(n for _, n in segments)
    assert sum(n for m, n in segments if m in (0xDB, 0xC4)) > 300          # what is shared


def test_webp_and_avif_payloads_are_their_bitstreams(crop):
    webp = get_codec("webp").encode(crop, 50)
    chunk = struct.unpack("<I", webp[16:20])[0]
    assert webp[12:16] == b"VP8 " and webp_payload(webp) == chunk - 7
    avif = get_codec("avif").encode(crop, 50)
    at = avif.index(b"mdat") - 4
    assert avif_payload(avif) == struct.unpack(">I", avif[at:at + 4])[0] - 8
    assert len(avif) - avif_payload(avif) > 100                            # the boxes dropped


def test_bad_files_are_typed_errors():
    for parse in (jpeg_payload, webp_payload, avif_payload):
        with pytest.raises(TicaError):
            parse(b"\x00" * 40)
    with pytest.raises(TicaError):
        jpeg_payload(b"\xff\xd8\xff\xdb\x00\x04\x00\x00")                 # no scan
    with pytest.raises(TicaError, match="unknown codec"):
        get_codec("bpg")
