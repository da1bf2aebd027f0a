"""The container: layout, overhead, and typed errors on every kind of malformed input."""

from __future__ import annotations

import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tica
from tica import bitstream
from tica.bitstream import Limits, pack, unpack
from tica.errors import BitstreamError, ModelMismatchError

from corruption import MUTATIONS, mutate


def _fix_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "big")


def test_round_trip_single_and_batch():
    one = pack(0xBEEF, [(32, 32)], [b"abcd"])
    s = unpack(one)
    assert (s.model_id, s.sizes, s.payloads, s.is_batch) == (0xBEEF, ((32, 32),), (b"abcd",), False)
    sizes = [(32, 32), (5, 700), (32, 32)]
    payloads = [b"x" * 4, b"y" * 300, b"z" * 8]
    s = unpack(pack(7, sizes, payloads))
    assert list(s.sizes) == sizes and list(s.payloads) == payloads and s.is_batch
    uniform = unpack(pack(7, [(32, 32)] * 3, payloads))
    assert uniform.sizes == ((32, 32),) * 3


def test_overhead_is_small():
    payload = b"p" * 100
    assert len(pack(1, [(32, 32)], [payload])) - 100 == 11
    assert len(pack(1, [(512, 768)], [payload])) - 100 == 13
    batch = pack(1, [(32, 32)] * 100, [payload] * 100)
    assert (len(batch) - 100 * 100) / 100 <= 1.2          # one length byte an image, amortised


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: b"PK" + d[2:], "magic"),
    (lambda d: d[:2] + bytes([0x21]) + d[3:], "version"),
    (lambda d: d[:-1], "checksum"),
    (lambda d: d[:5], "truncated|checksum"),
    (lambda d: d + b"\x00", "checksum"),
    (lambda d: d[:10] + bytes([d[10] ^ 4]) + d[11:], "checksum"),
    (lambda d: b"", "magic"),
    (lambda d: _fix_crc(d[:2] + bytes([0x1C]) + d[3:-4]), "flags"),
])
def test_malformed_streams_raise_bitstream_error(mutate, reason):
    data = pack(3, [(32, 32)], [b"abcdefgh"])
    with pytest.raises(BitstreamError, match=reason):
        unpack(mutate(data))


@pytest.mark.parametrize("header, reason", [
    (b"\x74\xca\x10\x00\x03" + b"\x00\x20", "malformed stream: image size 32x0"),       # zero height
    (b"\x74\xca\x10\x00\x03" + b"\xff\xff\x7f\xff\xff\x7f", "a side"),                   # 2M x 2M
    (b"\x74\xca\x10\x00\x03" + b"\x81\x80\x01\x20", "32x16385 exceeds"),                 # 16385 high
    (b"\x74\xca\x10\x00\x03" + b"\x80\x40\x80\x40", "exceeds the limit"),                # 8192x8192
    (b"\x74\xca\x11\x00\x03" + b"\xff\xff\xff\x7f", "batch of"),                         # 268M images
    (b"\x74\xca\x13\x00\x03" + b"\x80\x20\x40\x40", "more than"),                        # 4096 images of 64x64
    (b"\x74\xca\x11\x00\x03" + b"\x80\x02", "fewer image sizes"),                        # 256 sizes missing
    (b"\x74\xca\x13\x00\x03" + b"\x03\x20\x20\xff\x7f\x01", "exceed"),                   # lengths > stream
    (b"\x74\xca\x10\x00\x03" + b"\xff\xff\xff\xff\x01", "longer than"),                  # 5-byte varint
    (b"\x74\xca\x10\x00\x03" + b"\x80\x00\x20", "overlong"),
])
def test_forged_headers_with_valid_checksum_are_refused_before_allocation(header, reason):
    limits = Limits(max_total_pixels=1 << 22)
    with pytest.raises(BitstreamError, match=reason):
        unpack(_fix_crc(header + b"abcd"), limits)


def test_an_image_whose_payload_is_empty_round_trips(tica_cifar):
    """The coder writes no word for an image whose every symbol (z's and y's) is its table's
    first (as constriction does): the container holds that empty payload, alone or beside
    others, and decoding gives the image's latent back."""
    from tica import api
    from tica.entropy.payload import encode_payloads
    model = tica_cifar
    eb, gc = model.entropy_bottleneck.tables, model.gaussian_conditional.tables
    z = np.broadcast_to(eb.offsets[:model.config.N].reshape(1, -1, 1, 1),
                        (2, model.config.N, 4, 4)).copy()
    indexes, means = model._hyper_decode(torch.from_numpy(z), None)
    symbols = gc.offsets[indexes]
    payloads = encode_payloads(z, symbols, indexes, eb, gc)
    assert payloads == [b"", b""]
    expected = model.dequantize(torch.from_numpy(symbols).float() + means)
    for chosen in ([b""], [b"", b""], [b"", b"\x01\x00\x00\x00", b""]):
        stream = unpack(pack(model.model_id, [(32, 32)] * len(chosen), chosen))
        assert stream.payloads == tuple(chosen)
    data = pack(model.model_id, [(32, 32)] * 2, payloads)
    y = torch.cat([y for _, _, y in api.decompress(model, data)])
    assert torch.equal(y, expected)


def test_a_stream_over_the_limits_is_a_limit_error_and_a_malformed_one_is_not():
    """Too large (a server answers 413) is told apart from malformed (400)."""
    from tica.errors import BitstreamLimitError, LimitError
    big = pack(3, [(2000, 3000)], [b"abcdefgh"])
    with pytest.raises(BitstreamLimitError, match="3000x2000 exceeds the limit of 4194304"):
        unpack(big, Limits(max_pixels=1 << 22))
    with pytest.raises(BitstreamError) as exc:
        unpack(_fix_crc(b"\x74\xca\x10\x00\x03" + b"\x00\x20abcd"))
    assert not isinstance(exc.value, LimitError)


def test_non_bytes_input_is_a_bitstream_error():
    with pytest.raises(BitstreamError):
        unpack("not bytes")  # type: ignore[arg-type]


# ---- fuzzing the whole decode path ----------------------------------------------------------

@pytest.fixture(scope="module")
def stream(tica_cifar, cifar_images):
    return tica.compress(tica_cifar, cifar_images[:3])




def _decode_all(model, data: bytes) -> list:
    return [y for _, _, y in tica.decompress(model, data)]


# A hang guard, not a timing: a damaged stream decodes in milliseconds, a hang never ends;
# the bound leaves room for a machine busy with other work (one example once took 2.9 s
# with two other jobs on two cores).
HANG_SECONDS = 10.0


@settings(max_examples=3000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(MUTATIONS, min_size=1, max_size=4))
def test_fuzz_every_damaged_stream_raises_bitstream_error_quickly(tica_cifar, stream, ops):
    bad = mutate(stream, ops)
    if bad == stream:
        return
    start = time.perf_counter()
    with pytest.raises(BitstreamError):
        _decode_all(tica_cifar, bad)
    assert time.perf_counter() - start < HANG_SECONDS


@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_fuzz_forged_checksums_never_crash_or_overallocate(tica_cifar, stream, ops):
    """An attacker can recompute the CRC: then the limits and the decoder itself must hold."""
    bad = _fix_crc(mutate(stream[:-4], ops))
    start = time.perf_counter()
    try:
        latents = _decode_all(tica_cifar, bad)
    except BitstreamError:
        return
    finally:
        assert time.perf_counter() - start < HANG_SECONDS
    for y in latents:            # decoded garbage is still a bounded, well-formed latent
        assert torch.isfinite(y).all() and y.shape[1] == tica_cifar.config.M


def test_stream_for_another_model_is_refused(tica_cifar, hyperprior_cifar, stream):
    with pytest.raises(ModelMismatchError, match="written by model id"):
        tica.reconstruct(hyperprior_cifar, stream)
    other = tica.create_model("tica-cifar", seed=1).eval()
    other.update()
    with pytest.raises(ModelMismatchError):
        tica.reconstruct(other, stream)
    assert bitstream.unpack(stream).model_id == tica_cifar.model_id


def test_peek_reads_the_model_id_and_checks_the_prefix():
    data = pack(0xBEEF, [(32, 32)], [b"abcd"])
    assert bitstream.peek_model_id(data) == 0xBEEF
    for bad, reason in ((b"PK" + data[2:], "magic"), (data[:2] + b"\x21" + data[3:], "version"),
                        (data[:6], "truncated"), (None, "must be bytes")):
        with pytest.raises(BitstreamError, match=reason):
            bitstream.peek_model_id(bad)
