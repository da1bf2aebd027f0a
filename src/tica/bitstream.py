"""The tica container: one or many entropy-coded images in a small, checked envelope.

Layout, version 1 (all integers unsigned; varint = LEB128, at most 4 bytes)::

    offset  size  field
    0       2     magic b"\\x74\\xca"
    2       1     version (high nibble) | flags (low nibble: 1 = batch, 2 = all one size,
                  4 = a quality code follows the model id)
    3       2     model id, big-endian: first two bytes of the model's SHA-256 fingerprint
    single image:  varint H, varint W, [flag 4: varint quality code], payload
    batch:         varint count, sizes (once if flag 2, else per image: H, W),
                   [flag 4: varint quality code per image],
                   varint payload length for every image but the last, payloads

A variable-rate model's stream records the quality q each image was coded at as the code
round((q - 1) * 16) (flag 4), so decoders need no flag; a fixed-rate model's stream has none.
    end     4     CRC-32 of every byte before it, big-endian

A single 32x32 image costs 11 bytes of container (Kodak-sized: 13); a batch adds one or two
bytes an image. A payload is the ANS stream of one image (z, then y). The CRC is 32 bits
rather than 16 because a corrupt stream that passes it would decode silently to garbage:
at 2^-16, one in a few thousand damaged streams would.

Parsing validates every size against `Limits` *before* anything is allocated from it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from .errors import BitstreamError, BitstreamLimitError

MAGIC = b"\x74\xca"
VERSION = 1
FLAG_BATCH = 0x1
FLAG_UNIFORM = 0x2
FLAG_QUALITY = 0x4
MAX_QUALITY_CODE = 1 << 10
_MAX_VARINT_BYTES = 4
_CRC_BYTES = 4
_FIXED = len(MAGIC) + 1 + 2


@dataclass(frozen=True)
class Limits:
    """What a decoder accepts; a server should tighten these to its own budget."""

    max_side: int = 16384
    max_pixels: int = 1 << 24          # per image
    max_images: int = 4096
    max_total_pixels: int = 1 << 26    # per stream


@dataclass(frozen=True)
class Stream:
    model_id: int
    sizes: tuple[tuple[int, int], ...]
    payloads: tuple[bytes, ...]
    quality_codes: tuple[int, ...] | None = None   # variable rate: each image's quality code

    @property
    def is_batch(self) -> bool:
        return len(self.payloads) != 1

    def subset(self, indexes: list[int]) -> "Stream":
        """The stream of some of its images (their sizes, payloads and quality codes)."""
        codes = self.quality_codes
        return Stream(self.model_id, tuple(self.sizes[i] for i in indexes),
                      tuple(self.payloads[i] for i in indexes),
                      None if codes is None else tuple(codes[i] for i in indexes))

    @staticmethod
    def concat(streams: list["Stream"]) -> "Stream":
        """One stream of the images of several streams of one model, in order."""
        codes = [s.quality_codes for s in streams]
        if len({c is None for c in codes}) > 1:
            raise ValueError("streams with and without quality codes do not make one stream")
        return Stream(streams[0].model_id, tuple(x for s in streams for x in s.sizes),
                      tuple(p for s in streams for p in s.payloads),
                      None if codes[0] is None else tuple(c for cs in codes for c in cs))


def _varint(value: int) -> bytes:
    if not 0 <= value < 1 << (7 * _MAX_VARINT_BYTES):
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, end: int, pos: int) -> None:
        self.data, self.end, self.pos = data, end, pos

    def varint(self, what: str) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            if self.pos >= self.end:
                raise BitstreamError(f"truncated stream: missing {what}")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i:
                    raise BitstreamError(f"malformed stream: overlong encoding of {what}")
                return value
        raise BitstreamError(f"malformed stream: {what} is longer than {_MAX_VARINT_BYTES} bytes")

    def size(self, limits: Limits) -> tuple[int, int]:
        h, w = self.varint("image height"), self.varint("image width")
        if h < 1 or w < 1:
            raise BitstreamError(f"malformed stream: image size {w}x{h}")
        _check_size(h, w, limits)
        return h, w


def _check_size(h: int, w: int, limits: Limits) -> None:
    if h > limits.max_side or w > limits.max_side:
        raise BitstreamLimitError(f"image size {w}x{h} exceeds the limit of "
                                  f"{limits.max_side} pixels a side")
    if h * w > limits.max_pixels:
        raise BitstreamLimitError(f"image size {w}x{h} exceeds the limit of "
                                  f"{limits.max_pixels} pixels")


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_images:
        raise BitstreamLimitError(f"batch of {count} images exceeds the limit of "
                                  f"{limits.max_images}")


def _check_total(sizes, limits: Limits) -> None:
    if sum(h * w for h, w in sizes) > limits.max_total_pixels:
        raise BitstreamLimitError(f"stream holds more than {limits.max_total_pixels} pixels")


def check_sizes(sizes: list[tuple[int, int]], limits: Limits = Limits()) -> None:
    """BitstreamLimitError if a stream of images of `sizes` ((H, W) each) is over `limits`:
    what `unpack` would refuse, for an encoder to ask before it writes such a stream."""
    _check_count(len(sizes), limits)
    for h, w in sizes:
        _check_size(h, w, limits)
    _check_total(sizes, limits)


def pack(model_id: int, sizes: list[tuple[int, int]], payloads: list[bytes],
         quality_codes: list[int] | None = None) -> bytes:
    """Wrap payloads (one per image) and their image sizes into a container; a
    variable-rate model's streams also record the quality they were coded at."""
    if not payloads or len(sizes) != len(payloads):
        raise ValueError("need one size per payload and at least one payload")
    if not 0 <= model_id < 1 << 16:
        raise ValueError("model id must fit in 16 bits")
    if quality_codes is not None and (len(quality_codes) != len(payloads) or not all(
            0 <= c < MAX_QUALITY_CODE for c in quality_codes)):
        raise ValueError(f"need one quality code in 0..{MAX_QUALITY_CODE - 1} per payload")
    out = bytearray(MAGIC)
    batch = len(payloads) > 1
    uniform = batch and len(set(sizes)) == 1
    flags = ((FLAG_BATCH if batch else 0) | (FLAG_UNIFORM if uniform else 0)
             | (FLAG_QUALITY if quality_codes is not None else 0))
    out.append(VERSION << 4 | flags)
    out += model_id.to_bytes(2, "big")
    if batch:
        out += _varint(len(payloads))
    for h, w in sizes[:1] if uniform or not batch else sizes:
        out += _varint(h) + _varint(w)
    for code in quality_codes or ():
        out += _varint(code)
    for payload in payloads[:-1]:
        out += _varint(len(payload))
    for payload in payloads:
        out += payload
    out += zlib.crc32(out).to_bytes(_CRC_BYTES, "big")
    return bytes(out)


# how common image files start: a stream that starts so is an image given where a stream
# belongs, and the error says so
_IMAGE_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                     (b"GIF8", "a GIF image"), (b"II*\x00", "a TIFF image"),
                     (b"MM\x00*", "a TIFF image"), (b"BM", "a BMP image"))


def _not_a_stream(data: bytes) -> str:
    kind = next((name for head, name in _IMAGE_SIGNATURES if bytes(data[:len(head)]) == head),
                "a WebP image" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None)
    if kind is None:
        return "not a tica bitstream (bad magic number)"
    return (f"not a tica bitstream (bad magic number): it is {kind}; `tica encode` makes a "
            "bitstream of it")


def _check_prefix(data: bytes) -> None:
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise BitstreamError(_not_a_stream(data))
    if len(data) < _FIXED + 2 + _CRC_BYTES:
        raise BitstreamError(f"truncated stream: {len(data)} bytes is shorter than any header")
    if data[2] >> 4 != VERSION:
        raise BitstreamError(f"unsupported bitstream version {data[2] >> 4}; this tica reads "
                             f"version {VERSION}: use the tica release that wrote it")


def peek_model_id(data: bytes) -> int:
    """The model id of a stream, from its header alone (`unpack` checks the rest)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"a bitstream must be bytes, got {type(data).__name__}")
    _check_prefix(data)
    return int.from_bytes(data[3:5], "big")


def unpack(data: bytes, limits: Limits = Limits()) -> Stream:
    """Parse and check a container. Raises BitstreamError, never anything else, and never
    allocates more than the input's own size before the limits are checked."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"a bitstream must be bytes, got {type(data).__name__}")
    data = bytes(data)
    _check_prefix(data)
    flags = data[2] & 0x0F
    if flags & ~(FLAG_BATCH | FLAG_UNIFORM | FLAG_QUALITY) or (flags & FLAG_UNIFORM and not flags & FLAG_BATCH):
        raise BitstreamError(f"malformed stream: unknown flags {flags:#x}")
    end = len(data) - _CRC_BYTES
    if zlib.crc32(data[:end]) != int.from_bytes(data[end:], "big"):
        raise BitstreamError("checksum mismatch: the stream is corrupt or truncated")
    model_id = int.from_bytes(data[3:5], "big")
    r = _Reader(data, end, _FIXED)
    count = 1
    if flags & FLAG_BATCH:
        count = r.varint("image count")
        if count < 2:
            raise BitstreamError(f"malformed stream: a batch of {count} image(s)")
        _check_count(count, limits)
    if flags & FLAG_UNIFORM or count == 1:
        sizes = [r.size(limits)] * count
    else:
        # each size takes >= 2 bytes: refuse counts the stream cannot hold before looping
        if 2 * count > end - r.pos:
            raise BitstreamError("truncated stream: fewer image sizes than images")
        sizes = [r.size(limits) for _ in range(count)]
    _check_total(sizes, limits)
    codes = None
    if flags & FLAG_QUALITY:
        if count > end - r.pos:
            raise BitstreamError("truncated stream: fewer quality codes than images")
        codes = tuple(r.varint("quality code") for _ in range(count))
        if max(codes) >= MAX_QUALITY_CODE:
            raise BitstreamError(f"quality code {max(codes)} outside 0..{MAX_QUALITY_CODE - 1}")
    if count - 1 > end - r.pos:
        raise BitstreamError("truncated stream: fewer payload lengths than images")
    lengths = [r.varint("payload length") for _ in range(count - 1)]
    last = end - r.pos - sum(lengths)
    if last < 0:
        raise BitstreamError("truncated stream: payload lengths exceed the stream")
    lengths.append(last)        # a payload may be empty: the coder writes no word for an image
                                # whose every symbol is its table's first (as constriction)
    payloads, pos = [], r.pos
    for n in lengths:
        payloads.append(data[pos:pos + n])
        pos += n
    return Stream(model_id, tuple(sizes), tuple(payloads), codes)


def overhead(stream: Stream) -> int:
    """Container bytes beyond the payloads."""
    return len(pack(stream.model_id, list(stream.sizes), list(stream.payloads),
                    stream.quality_codes)) - sum(len(p) for p in stream.payloads)
