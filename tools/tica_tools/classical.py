"""Classical image codecs (JPEG, WebP, AVIF, JPEG XL) as baselines: encode at a quality
setting to real file bytes, decode them back, and measure the part of a file that a deployment
could not share out of band.

Payload bytes (the "without headers" column of the results) are read from each file's own
structure, not estimated:

* JPEG: SOI + the SOS segment + the entropy-coded data + EOI; APPn, DQT, DHT, SOF and COM
  segments are dropped (an abbreviated JPEG stream with the tables sent once, as JPEG allows).
* WebP: the VP8 bitstream inside its chunk, minus the 7-byte key-frame start code and
  dimensions; the 12-byte RIFF header and the 8-byte chunk header are dropped.
* AVIF: the contents of the `mdat` box (the AV1 OBUs, sequence header included); the
  `ftyp`/`meta` boxes (~250-300 bytes) are dropped.
* JPEG XL: the bare codestream, written without the ISO BMFF container; its own headers are
  a few bytes and are not separated.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from tica.errors import TicaError
from tica.evaluate import Coded, Pipeline, classify_pixels


def _pil_encode(fmt: str, **options) -> Callable[[np.ndarray, float], bytes]:
    def encode(rgb: np.ndarray, quality: float) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buf, format=fmt, quality=int(quality), **options)
        return buf.getvalue()
    return encode


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _jxl_encode(rgb: np.ndarray, distance: float) -> bytes:
    import imagecodecs
    return bytes(imagecodecs.jpegxl_encode(np.ascontiguousarray(rgb), distance=float(distance),
                                           effort=7, usecontainer=False))


def _jxl_decode(data: bytes) -> np.ndarray:
    import imagecodecs
    return np.asarray(imagecodecs.jpegxl_decode(data))[..., :3]


def jpeg_payload(data: bytes) -> int:
    """Bytes of SOI + SOS segment(s) + entropy-coded data + EOI."""
    if data[:2] != b"\xff\xd8":
        raise TicaError("not a JPEG file")
    total, pos = 2, 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise TicaError(f"bad JPEG marker at byte {pos}")
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xDA:                        # SOS: header, then scan data up to EOI
            return total + (len(data) - pos)
        pos += 2 + length
    raise TicaError("JPEG file has no scan")


def webp_payload(data: bytes) -> int:
    """The VP8 key frame without its 7-byte start code and dimensions."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise TicaError("not a WebP file")
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if tag == b"VP8 ":
            return size - 7
        if tag == b"VP8L":
            return size
        pos += 8 + size + (size & 1)
    raise TicaError("WebP file has no VP8/VP8L chunk")


def avif_payload(data: bytes) -> int:
    """Contents of the top-level `mdat` box(es)."""
    pos, payload, found = 0, 0, False
    while pos + 8 <= len(data):
        size, tag = struct.unpack(">I", data[pos:pos + 4])[0], data[pos + 4:pos + 8]
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = len(data) - pos
        if size < header:
            raise TicaError("bad AVIF box size")
        if tag == b"mdat":
            payload += size - header
            found = True
        pos += size
    if not found:
        raise TicaError("AVIF file has no mdat box")
    return payload


@dataclass(frozen=True)
class ClassicalCodec:
    """A classical codec at a sweep of quality settings (`qualities`; for JPEG XL they are
    Butteraugli distances, where smaller is better)."""

    name: str
    qualities: tuple[float, ...]
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    payload: Callable[[bytes], int]

    def roundtrip(self, rgb: np.ndarray, quality: float) -> tuple[bytes, np.ndarray]:
        """(H, W, 3) uint8 -> (file bytes, decoded (H, W, 3) uint8)."""
        data = self.encode(rgb, quality)
        return data, self.decode(data)


CLASSICAL_CODECS: dict[str, ClassicalCodec] = {
    "jpeg": ClassicalCodec("jpeg", (2, 5, 10, 25, 50, 75, 90, 95), _pil_encode("JPEG"), _pil_decode,
                           jpeg_payload),
    "webp": ClassicalCodec("webp", (0, 10, 25, 50, 75, 90, 95), _pil_encode("WEBP", method=6),
                           _pil_decode, webp_payload),
    "avif": ClassicalCodec("avif", (10, 20, 30, 40, 50, 60, 70, 85), _pil_encode("AVIF", speed=6),
                           _pil_decode, avif_payload),
    "jxl": ClassicalCodec("jxl", (12.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0), _jxl_encode, _jxl_decode,
                          lambda data: len(data)),
}


def get_codec(name: str) -> ClassicalCodec:
    if name not in CLASSICAL_CODECS:
        raise TicaError(f"unknown codec {name!r}; known: {', '.join(CLASSICAL_CODECS)}")
    return CLASSICAL_CODECS[name]


class ClassicalPipeline(Pipeline):
    """A classical codec at one quality setting, image files decoded, then a pixel
    classifier (if any)."""

    def __init__(self, codec: ClassicalCodec, quality: float, classifier=None,
                 name: str | None = None) -> None:
        self.codec, self.quality, self.classifier = codec, quality, classifier
        self.name = name or codec.name

    def run(self, x: torch.Tensor, classify: bool = True) -> Coded:
        rgb = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        nbytes, payload, decoded = [], [], []
        for img in rgb:
            data, out = self.codec.roundtrip(img, self.quality)
            nbytes.append(len(data))
            payload.append(self.codec.payload(data))
            decoded.append(torch.from_numpy(out.copy()).permute(2, 0, 1))
        x_hat = torch.stack(decoded).float() / 255
        logits = (classify_pixels(self.classifier, x_hat)
                  if classify and self.classifier is not None else None)
        return Coded(nbytes, payload, x_hat, logits)
