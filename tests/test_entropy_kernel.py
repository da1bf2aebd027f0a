"""The rANS kernel: constriction's format byte for byte, the same payloads whatever the
batch or the thread count, bad payloads and tables refused with typed errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import constriction_reference as reference
from tica.entropy import EntropyBottleneck, GaussianConditional
from tica.entropy import parallel
from tica.entropy.coder import (LOOKUP_BITS, PRECISION, BatchDecoder, CodingTables,
                                SymbolDecoder, SymbolEncoder, cumulative_table, encode_batch,
                                lookup_table)
from tica.entropy.payload import PayloadDecoder, encode_payload, encode_payloads
from tica.errors import BitstreamError, CheckpointError, ConfigError


@pytest.fixture(scope="module")
def gaussian() -> CodingTables:
    gc = GaussianConditional()
    gc.update()
    return gc.tables


@pytest.fixture(scope="module")
def factorized() -> CodingTables:
    torch.manual_seed(0)
    eb = EntropyBottleneck(8)
    eb.eval().update()
    return eb.tables


@pytest.fixture
def threads():
    """Set the coder's thread count for one test, restored after."""
    yield parallel.set_threads
    parallel.set_threads(None)


def _segment(rng, tables: CodingTables, n: int, spread: float, escapes: int):
    index = rng.integers(0, len(tables), n)
    values = np.round(rng.normal(0, spread, n) * (tables.lengths[index] / 6)
                      + tables.offsets[index] + tables.lengths[index] // 2).astype(np.int64)
    if n and escapes:
        at = rng.integers(0, n, escapes)
        values[at] = rng.integers(-2 ** 21, 2 ** 21, escapes)      # past the clamp, too
    return values, index


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), n_z=st.integers(0, 300), n_y=st.integers(1, 3000),
       spread=st.floats(0.1, 4.0), escapes=st.integers(0, 20))
def test_payloads_are_constrictions_byte_for_byte_both_ways(seed, n_z, n_y, spread, escapes):
    """Two segments with their own tables (z's factorized, y's Gaussian), values in and far
    outside the tables: the kernel writes exactly constriction's words, and each reads what
    the other wrote."""
    gc = GaussianConditional()
    gc.update()
    torch.manual_seed(seed % 1000)
    eb = EntropyBottleneck(5)
    eb.eval().update()
    rng = np.random.default_rng(seed)
    z, z_index = _segment(rng, eb.tables, n_z, spread, escapes // 4)
    y, y_index = _segment(rng, gc.tables, n_y, spread, escapes)
    segments = [(z, z_index, eb.tables), (y, y_index, gc.tables)]
    ours = SymbolEncoder()
    for values, index, tables in segments:
        ours.encode(values, index, tables)
    data = ours.finish()
    assert data == reference.encode(segments)
    clamped = [np.clip(z, -2 ** 20, 2 ** 20), np.clip(y, -2 ** 20, 2 ** 20)]
    theirs = reference.decode(data, [(z_index, eb.tables), (y_index, gc.tables)])
    assert all(np.array_equal(a, b) for a, b in zip(theirs, clamped))
    dec = SymbolDecoder(data)
    assert np.array_equal(dec.decode(z_index, eb.tables), clamped[0])
    assert np.array_equal(dec.decode(y_index, gc.tables), clamped[1])
    dec.finish()


def test_the_cumulative_tables_are_constrictions_quantisation(gaussian):
    """Left cumulatives strictly increasing from 0 to 2^24, each entry within a unit of its
    integer frequency scaled by (2^24 - n) / 2^24 (constriction reserves one unit each)."""
    cdf = gaussian.cdf.astype(np.int64)
    for t in range(len(gaussian)):
        n = gaussian.lengths[t] + 1
        assert cdf[t, 0] == 0 and cdf[t, n] == 1 << PRECISION
        assert (np.diff(cdf[t, : n + 1]) >= 1).all()
        scaled = gaussian.freqs[t, :n] * (1 - n / 2 ** PRECISION) + 1
        assert np.abs(np.diff(cdf[t, : n + 1]) - scaled).max() < 1


@pytest.mark.parametrize("own_team", [True, False])
def test_a_batch_codes_as_its_images_do_whatever_the_thread_count(gaussian, factorized, threads,
                                                                  own_team, monkeypatch):
    """The same payloads and symbols on any number of threads: the kernel's own OpenMP
    team (where it is built with it) or, without, ranges on the coder's pool."""
    from tica.entropy import coder
    if own_team and not coder._rans.openmp:
        pytest.skip("the rANS kernel was built without OpenMP")
    monkeypatch.setattr(coder._rans, "openmp", int(own_team))
    rng = np.random.default_rng(3)
    B, z_shape, y_shape = 37, (8, 3, 4), (12, 6, 8)
    z = rng.integers(-4, 5, (B, *z_shape))
    z[5, 0, 0, 0] = 3000                                              # an escape
    y_index = rng.integers(0, len(gaussian), (B, *y_shape))
    symbols = np.round(rng.normal(0, 2, (B, *y_shape))).astype(np.int64)
    symbols[7, 1, 2, 3] = -70000
    single = [encode_payload(z[b], symbols[b], y_index[b], factorized, gaussian) for b in range(B)]
    for n in (1, 2, 5):
        threads(n)
        parallel.MIN_SYMBOLS_PER_RANGE, saved = 1, parallel.MIN_SYMBOLS_PER_RANGE
        try:
            assert parallel.ranges(B, 1000, n)[-1][1] == B
            assert encode_payloads(z, symbols, y_index, factorized, gaussian) == single
            reader = PayloadDecoder(single)
            assert np.array_equal(reader.decode_z(z_shape, factorized), z)
            assert np.array_equal(reader.decode_y(y_index, gaussian), symbols)
        finally:
            parallel.MIN_SYMBOLS_PER_RANGE = saved


def test_a_bad_image_in_the_middle_of_a_parallel_batch_is_refused(gaussian, threads):
    """One image's out-of-range table index, coded among others on several threads (the
    kernel's team or the pool), is a typed error, whichever thread met it."""
    rng = np.random.default_rng(9)
    B, n = 23, 40
    values = rng.integers(-3, 4, (B, n))
    index = rng.integers(0, len(gaussian), (B, n))
    index[13, 17] = len(gaussian)
    threads(4)
    parallel.MIN_SYMBOLS_PER_RANGE, saved = 1, parallel.MIN_SYMBOLS_PER_RANGE
    try:
        with pytest.raises(ValueError, match="out of range"):
            encode_batch([(values, index, gaussian)], B)
        index[13, 17] = 0
        payloads = encode_batch([(values, index, gaussian)], B)
        reader = BatchDecoder(payloads)
        index[13, 17] = -1
        with pytest.raises(ValueError, match="out of range"):
            reader.decode(index, gaussian)
    finally:
        parallel.MIN_SYMBOLS_PER_RANGE = saved


def test_the_lookup_starts_each_slice_at_its_entry_and_decoding_needs_nothing_of_it(
        gaussian, factorized):
    """Each slice of the quantiles starts at the entry its first quantile decodes to (a
    binary search's answer); and decoding finds every symbol from any lookup, right or
    wrong (all zeros, all past the end, random): the lookup buys speed, never the answer."""
    for tables in (gaussian, factorized):
        assert tables.lookup.shape == (len(tables), 2 ** LOOKUP_BITS)
        for t in range(len(tables)):
            row = tables.cdf[t, :tables.lengths[t] + 1].astype(np.int64)
            for k in range(0, 2 ** LOOKUP_BITS, 7):
                q = k << (PRECISION - LOOKUP_BITS)
                assert tables.lookup[t, k] == np.searchsorted(row, q, side="right") - 1
    rng = np.random.default_rng(5)
    z = rng.integers(-6, 7, (3, 8, 4, 4))
    y_index = rng.integers(0, len(gaussian), (3, 12, 8, 8))
    symbols = np.round(rng.normal(0, 20, y_index.shape)).astype(np.int64)
    symbols[1, 0, 0, 0] = 5000                                        # an escape
    payloads = encode_payloads(z, symbols, y_index, factorized, gaussian)
    saved = gaussian.lookup, factorized.lookup
    try:
        for wrong in (np.zeros_like, lambda a: np.full_like(a, 2 ** 16 - 1),
                      lambda a: rng.integers(0, 2 ** 16, a.shape).astype(np.uint16)):
            gaussian.lookup, factorized.lookup = wrong(saved[0]), wrong(saved[1])
            reader = PayloadDecoder(payloads)
            assert np.array_equal(reader.decode_z(z.shape[1:], factorized), z)
            assert np.array_equal(reader.decode_y(y_index, gaussian), symbols)
    finally:
        gaussian.lookup, factorized.lookup = saved
    assert np.array_equal(lookup_table(gaussian.cdf, gaussian.lengths), gaussian.lookup)


def test_every_entry_of_every_table_decodes_with_any_lookup(gaussian):
    """Each value of each table once, the rare tail entries of the wide tables included
    (hundreds of them share one slice of the quantiles, where decoding bisects instead of
    stepping): exact with the right lookup and with wrong ones."""
    index = np.repeat(np.arange(len(gaussian)), gaussian.lengths)
    values = np.concatenate([gaussian.offsets[t] + np.arange(gaussian.lengths[t])
                             for t in range(len(gaussian))])
    order = np.random.default_rng(3).permutation(values.size)
    index, values = index[order], values[order]
    payload = encode_batch([(values[None], index, gaussian)], 1)
    saved = gaussian.lookup
    try:
        shuffled = np.random.default_rng(4).permutation(saved.ravel()).reshape(saved.shape)
        for lookup in (saved, np.zeros_like(saved), np.full_like(saved, 2 ** 16 - 1), shuffled,
                       np.sort(shuffled, axis=1)):
            gaussian.lookup = lookup
            reader = BatchDecoder(payload)
            assert np.array_equal(reader.decode(index, gaussian)[0], values)
            reader.finish()
    finally:
        gaussian.lookup = saved


def test_ranges_split_evenly_and_keep_small_batches_whole():
    assert parallel.ranges(10, 100_000, 3) == [(0, 3), (3, 6), (6, 10)]
    assert parallel.ranges(10, 100, 8) == [(0, 10)]                  # 1,000 symbols: one range
    assert parallel.ranges(3, 100_000, 8) == [(0, 1), (1, 2), (2, 3)]
    assert parallel.ranges(0, 100, 4) == [(0, 0)]


def test_the_thread_count_comes_from_the_call_the_environment_or_the_cores(monkeypatch, threads):
    monkeypatch.delenv(parallel.ENV, raising=False)
    assert parallel.threads() == parallel.available_cores()
    monkeypatch.setenv(parallel.ENV, "3")
    assert parallel.threads() == 3
    threads(2)
    assert parallel.threads() == 2
    threads(None)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(parallel.ENV, bad)
        with pytest.raises(ConfigError, match=parallel.ENV):
            parallel.threads()
    with pytest.raises(ConfigError):
        parallel.set_threads(0)


def test_in_order_runs_items_at_once_on_the_pool_and_yields_them_in_order(threads):
    """parallel.in_order: several items at once on the pool's threads, each call within
    one_share(1) (its kernels on one thread: `threads()` is 1 there), the results in the
    items' order whichever finishes first; an item's exception raised where its result
    would be; closing early cancels the items not started; one thread, one item, or a
    caller that is itself a share: in the caller's thread, one after another."""
    import threading
    import time
    threads(2)
    seen = []

    def work(i: int) -> int:
        seen.append((i, threading.current_thread().name, parallel.threads(), parallel.share()))
        time.sleep(0.02 * (5 - i % 5))                 # later items finish first
        if i == 7:
            raise ValueError("item 7")
        return i * i

    got = []
    with pytest.raises(ValueError, match="item 7"):
        for value in parallel.in_order(work, range(10)):
            got.append(value)
    assert got == [i * i for i in range(7)]
    ran = [s for s in seen if s[0] < 7]
    assert all(name.startswith("tica-coder") and n == 1 and share == 1
               for _, name, n, share in ran)
    assert len({name for _, name, _, _ in ran}) == 2
    seen.clear()
    items = parallel.in_order(work, range(10))
    assert next(items) == 0
    items.close()
    time.sleep(0.2)
    assert len(seen) <= 3                         # item 0, the one running, the next queued
    for n, share in ((1, None), (2, 1)):
        threads(n)
        seen.clear()
        with parallel.one_share(share) if share else _nothing():
            assert list(parallel.in_order(work, range(3))) == [0, 1, 4]
        me = threading.current_thread().name
        assert [name for _, name, _, _ in seen] == [me] * 3
    threads(2)
    assert list(parallel.in_order(work, [3])) == [9]
    assert parallel.share() is None and parallel.threads() == 2


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_corrupt_payloads_decode_to_wrong_values_or_a_typed_error_never_a_crash(gaussian):
    """Random words, cut and padded payloads: the decoder never reads out of bounds and never
    hangs; each ends in BitstreamError or in values it can bound, never silently in the
    original ones (integrity itself is the container's CRC)."""
    rng = np.random.default_rng(5)
    index = rng.integers(0, len(gaussian), (2, 500))
    values = rng.integers(-9, 10, (2, 500))
    good = encode_batch([(values, index, gaussian)], 2)
    cases = [rng.integers(1, 2 ** 32, size, dtype=np.uint64).astype("<u4").tobytes()
             for size in (1, 2, 3, 50, 2000)]
    cases += [good[1][:-4], good[1][4:], good[1] + b"\x01\x00\x00\x00", good[1][:4]]
    for data in cases:
        try:
            reader = BatchDecoder([good[0], data])
            out = reader.decode(index, gaussian)
            reader.finish()
        except BitstreamError as exc:
            assert "image 1" in str(exc)
            continue
        assert np.array_equal(out[0], values[0]) and not np.array_equal(out[1], values[1])
        assert np.abs(out).max() < 2 ** 24                      # no garbage beyond an escape
    for bad in (b"abc", b"\x01\x00\x00\x00\x00\x00\x00\x00"):   # ragged, zero word
        with pytest.raises(BitstreamError, match="image 1"):
            BatchDecoder([good[0], bad])


def test_tables_that_could_not_have_been_built_are_refused():
    freqs = torch.tensor([[1 << 23, 1 << 23, 0]])
    with pytest.raises(CheckpointError):                     # no probability mass at all
        CodingTables(torch.zeros(1, 3), torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(CheckpointError):                     # longer than its frequencies
        CodingTables(freqs, torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(CheckpointError):
        cumulative_table(np.array([[-1.0, 2.0 ** 24]]), np.array([1]))
    table = CodingTables(freqs, torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="out of range"):  # a table index past the tables
        encode_batch([(np.zeros((1, 3), np.int64), np.array([0, 1, 0]), table)], 1)


def test_the_kernel_refuses_what_its_callers_could_get_wrong_instead_of_crashing(gaussian):
    """What only a direct caller could pass (BatchDecoder and CodingTables never do) is a
    ValueError, not a read out of bounds: a read position past its payload, a table length
    that overflows int32 arithmetic."""
    from tica.entropy import _rans
    good = encode_batch([(np.zeros((1, 10), np.int64), np.zeros(10, np.int64), gaussian)], 1)
    reader = BatchDecoder(good)
    spec = gaussian.segment(np.zeros(10, np.int64), 1)
    for position in (1 << 40, -1, len(good[0]) // 4 + 1):
        with pytest.raises(ValueError, match="out of range"):
            _rans.decode(spec, reader._words, reader._starts, reader._states,
                         np.array([position], np.int64), np.empty((1, 10), np.int32), 1, 0, 1, 1)
    wide = (np.array([0, 1 << PRECISION], np.uint32), 2, np.array([2 ** 31 - 1], np.int32),
            np.zeros(1, np.int32), np.zeros(4, np.int32), 4, 0, np.zeros(1, np.uint16), 0)
    with pytest.raises(ValueError, match="malformed"):
        _rans.decode(wide, reader._words, reader._starts, reader._states, reader._positions,
                     np.empty((1, 4), np.int32), 1, 0, 1, 1)
    assert np.array_equal(reader.decode(np.zeros(10, np.int64), gaussian), np.zeros((1, 10)))


def test_a_payload_decoding_to_values_no_encoder_writes_is_a_bitstream_error(gaussian):
    """Escapes whose overflow puts a value past +-2^20 (the encoder clamps there): refused,
    naming the image, where they had decoded to values up to 2^22."""
    index = np.zeros(64, np.int64)
    good = encode_batch([(np.zeros((1, 64), np.int64), index, gaussian)], 1)[0]
    reader = BatchDecoder([good, b"\xff" * 256])
    with pytest.raises(BitstreamError, match="image 1: a decoded value lies beyond"):
        reader.decode(index, gaussian)
