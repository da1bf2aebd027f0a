"""Entropy coding: exact round trips, escapes, and real bytes within 1% of -sum(log2 p)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tica.entropy import EntropyBottleneck, GaussianConditional, SymbolDecoder, SymbolEncoder
from tica.entropy.coder import PRECISION, CodingTables, quantize_pmf
from tica.entropy.payload import (Z_LIMIT, PayloadDecoder, clamp_z, decode_payload, encode_payload,
                                  encode_z)
from tica.errors import BitstreamError, NotUpdatedError


def test_quantized_pmf_is_exact_and_keeps_every_symbol_codable():
    pmf = np.array([0.5, 0.25, 1e-12, 0.0, 0.2499])
    freqs = quantize_pmf(pmf, tail=1e-9)
    assert freqs.sum() == 1 << PRECISION
    assert (freqs >= 1).all() and freqs.size == pmf.size + 1
    assert abs(freqs[0] / (1 << PRECISION) - 0.5 / pmf.sum()) < 1e-6


def _gaussian() -> GaussianConditional:
    gc = GaussianConditional()
    gc.update()
    return gc


def test_round_trip_with_escapes_is_exact():
    gc = _gaussian()
    rng = np.random.default_rng(0)
    n = 5000
    index = rng.integers(0, len(gc.tables), n)
    values = np.round(rng.normal(0, 1, n) * gc.scale_table.numpy()[index]).astype(np.int64)
    values[::97] = rng.integers(-2**20, 2**20, values[::97].size)   # far outside any table
    values[5] = 2**20                                                # the clamp boundary
    enc = SymbolEncoder()
    enc.encode(values, index, gc.tables)
    dec = SymbolDecoder(enc.finish())
    assert np.array_equal(dec.decode(index, gc.tables), values)
    dec.finish()


def test_a_corrupted_or_truncated_payload_never_crashes_the_decoder():
    gc = _gaussian()
    rng = np.random.default_rng(1)
    index = rng.integers(0, 40, 2000)
    values = np.round(rng.normal(0, 3, 2000)).astype(np.int64)
    enc = SymbolEncoder()
    enc.encode(values, index, gc.tables)
    data = bytearray(enc.finish())
    changed = 0
    variants = [data[:-4], data[4:], data + b"\x01\x00\x00\x00"]
    for pos in range(0, len(data), max(1, len(data) // 50)):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        variants.append(bad)
    for bad in variants:
        try:
            dec = SymbolDecoder(bytes(bad))
            out = dec.decode(index, gc.tables)
            dec.finish()
        except BitstreamError:
            changed += 1
            continue
        assert out.shape == values.shape and np.abs(out).max() <= 2 ** 23
        changed += not np.array_equal(out, values)
    assert changed == len(variants)       # never silently the original symbols


def test_payload_is_within_one_percent_of_the_gaussian_estimate():
    """Realistic latents: continuous scales and means (not table entries), values drawn from
    the model itself; the estimate is the float model's -sum(log2 p)."""
    gc = _gaussian()
    g = torch.Generator().manual_seed(0)
    n = 40000
    scales = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(np.log(0.2), np.log(20), generator=g))
    means = torch.empty(n, dtype=torch.float64).uniform_(-3, 3, generator=g)
    y = means + scales * torch.randn(n, dtype=torch.float64, generator=g)
    symbols = torch.round(y - means)
    y_hat = symbols + means
    estimate_bits = -gc.likelihood(y_hat, scales, means).log2().sum().item()
    enc = SymbolEncoder()
    enc.encode(symbols.long().numpy(), gc.indexes(scales).numpy(), gc.tables)
    payload_bits = 8 * len(enc.finish())
    assert abs(payload_bits / estimate_bits - 1) < 0.01, (payload_bits, estimate_bits)


def test_payload_is_within_one_percent_of_the_factorized_estimate():
    """Fit the factorized density (and its quantiles) to Laplacian data, then code it."""
    torch.manual_seed(0)
    eb = EntropyBottleneck(4)
    density = [p for n, p in eb.named_parameters() if n != "quantiles"]
    opt = torch.optim.Adam([{"params": density, "lr": 0.02},
                            {"params": [eb.quantiles], "lr": 0.5}])   # aux: tails are far out
    scales = torch.tensor([0.5, 1.5, 3.0, 8.0]).view(1, 4, 1, 1)
    for _ in range(400):
        z = torch.distributions.Laplace(0.0, 1.0).sample((64, 4, 4, 4)) * scales
        _, lik = eb.train()(z)
        loss = -lik.log2().mean() + eb.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    eb.eval().update()
    z = torch.distributions.Laplace(0.0, 1.0).sample((1, 4, 64, 64)) * scales
    z_hat, lik = eb(z, "round")
    estimate_bits = -lik.log2().sum().item()
    values = z_hat[0].long().numpy()
    index = np.broadcast_to(np.arange(4)[:, None, None], values.shape)
    enc = SymbolEncoder()
    enc.encode(values, index, eb.tables)
    data = enc.finish()
    assert abs(8 * len(data) / estimate_bits - 1) < 0.01, (8 * len(data), estimate_bits)
    dec = SymbolDecoder(data)
    assert np.array_equal(dec.decode(index, eb.tables).reshape(values.shape), values)
    dec.finish()


def test_coding_before_update_is_a_clear_error():
    with pytest.raises(NotUpdatedError, match="update()"):
        GaussianConditional().tables
    with pytest.raises(NotUpdatedError, match="update()"):
        CodingTables(torch.zeros(0, 0), torch.zeros(0), torch.zeros(0))


def test_scale_index_picks_the_nearest_table_entry_in_log_scale():
    gc = _gaussian()
    table = gc.scale_table
    assert torch.equal(gc.indexes(table), torch.arange(len(table)))
    assert gc.indexes(torch.tensor([0.0, 0.05, 1e6])).tolist() == [0, 0, len(table) - 1]
    mid = (table[10] * table[11]).sqrt()
    assert gc.indexes(mid * 0.999).item() == 10 and gc.indexes(mid * 1.001).item() == 11


@pytest.mark.parametrize("data", [b"abc", b"\x00\x00\x00\x00"])
def test_decoder_rejects_malformed_payload_bytes(data):
    gc = _gaussian()
    with pytest.raises(BitstreamError):
        dec = SymbolDecoder(data)
        dec.decode(np.zeros(10, np.int64), gc.tables)
        dec.finish()


def test_an_empty_payload_is_every_symbol_at_its_tables_first_entry():
    """The coder (as constriction) writes no word at all where every symbol is its table's
    first entry: the state never leaves 0. The decoder reads that empty payload back."""
    gc = _gaussian()
    index = np.arange(5, dtype=np.int64)
    values = np.asarray(gc.tables.offsets)[index].astype(np.int64)  # each table's first value
    enc = SymbolEncoder()
    enc.encode(values, index, gc.tables)
    data = enc.finish()
    assert data == b""
    dec = SymbolDecoder(data)
    assert np.array_equal(dec.decode(index, gc.tables), values)
    dec.finish()


def test_update_refits_the_quantiles_so_the_tables_hold_all_but_the_tail_mass():
    """A density trained briefly on z ~ N(0, 2^2) without the auxiliary loss: its quantiles
    stay at their +-10 start, and update() sets them from the learned CDF by bisection."""
    torch.manual_seed(0)
    eb = EntropyBottleneck(4, tail_mass=1e-3)
    params = [p for n, p in eb.named_parameters() if not n.endswith("quantiles")]
    opt = torch.optim.Adam(params, lr=3e-2)
    for _ in range(300):
        z = torch.randn(32, 4, 4, 4) * 2
        _, lik = eb(z, "noise")
        loss = -torch.log2(lik).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(eb.quantiles[:, 0, 0], torch.full((4,), -10.0))
    eb.update()
    q = eb.quantiles.detach()[:, 0]
    with torch.no_grad():
        cdf = torch.sigmoid(eb._logits_cumulative(eb.quantiles.detach(), stop_gradient=True))[:, 0]
    assert torch.allclose(cdf[:, 0], torch.full((4,), 5e-4), rtol=1e-3)     # tail_mass / 2
    assert torch.allclose(cdf[:, 2], torch.full((4,), 1 - 5e-4), rtol=1e-6)
    assert ((q[:, 1] - 0).abs() < 1).all() and ((q[:, 2] - q[:, 0]) > 8).all()
    # the coding tables cover [floor(q_low), ceil(q_high)]: all but tail_mass of the mass
    tables = eb.tables
    for c in range(4):
        n = tables.lengths[c]
        in_table = tables.freqs[c, :n].sum() / (1 << PRECISION)
        assert in_table > 1 - 1e-3 - 1e-4
        assert tables.offsets[c] == math.floor(q[c, 0]) and tables.offsets[c] + n - 1 == math.ceil(q[c, 2])


def _payload_case(seed: int, z_shape=(4, 3, 5), y_shape=(6, 6, 10)):
    """Tables, and one image's z, y symbols and y table indexes (with escapes in both)."""
    eb = EntropyBottleneck(z_shape[0])
    eb.eval().update()
    gc = _gaussian()
    rng = np.random.default_rng(seed)
    z = rng.integers(-6, 7, z_shape)
    z[0, 0, 0] = Z_LIMIT                                          # far outside z's tables
    y_index = rng.integers(0, len(gc.tables), y_shape)
    symbols = np.round(rng.normal(0, 1, y_shape) * gc.scale_table.numpy()[y_index]).astype(np.int64)
    symbols[0, 0, :3] = [5000, -5000, 2 ** 20]
    return eb.tables, gc.tables, z, symbols, y_index


def test_payload_round_trips_and_is_z_by_channel_then_y():
    z_tables, y_tables, z, symbols, y_index = _payload_case(0)
    data = encode_payload(z, symbols, y_index, z_tables, y_tables)
    # the layout, spelled out: z with its channel's table, then y with its own indexes
    enc = SymbolEncoder()
    enc.encode(z, np.broadcast_to(np.arange(z.shape[0])[:, None, None], z.shape), z_tables)
    enc.encode(symbols, y_index, y_tables)
    assert data == enc.finish()
    z_only = encode_z(z, z_tables)                   # the side information on its own
    assert len(z_only) < len(data)
    assert np.array_equal(PayloadDecoder([z_only]).decode_z(z.shape, z_tables)[0], z)
    seen = []
    z_out, y_out = decode_payload(data, z.shape, z_tables, y_tables,
                                  lambda z_batch: seen.append(z_batch) or y_index[None])
    assert np.array_equal(z_out, z) and np.array_equal(y_out, symbols)
    assert len(seen) == 1 and np.array_equal(seen[0], z[None])   # y's tables come from z


def test_payload_decoder_reads_a_batch_and_refuses_a_truncated_payload():
    cases = [_payload_case(seed) for seed in (1, 2)]
    z_tables, y_tables = cases[0][:2]
    payloads = [encode_payload(z, s, i, z_tables, y_tables) for _, _, z, s, i in cases]
    reader = PayloadDecoder(payloads)
    z = reader.decode_z(cases[0][2].shape, z_tables)
    assert np.array_equal(z, np.stack([c[2] for c in cases]))
    symbols = reader.decode_y(np.stack([c[4] for c in cases]), y_tables)
    assert np.array_equal(symbols, np.stack([c[3] for c in cases]))
    with pytest.raises(BitstreamError):
        decode_payload(payloads[0][:-4], z.shape[1:], z_tables, y_tables, lambda _: cases[0][4][None])


def test_clamp_z_rounds_into_the_integer_h_s_range():
    z = torch.tensor([-1e6, -2.5, -0.4, 0.5, 1.5, Z_LIMIT + 0.4, 1e6])
    assert clamp_z(z).tolist() == [-Z_LIMIT, -2, 0, 0, 2, Z_LIMIT, Z_LIMIT]
    assert Z_LIMIT == 2 ** 12 - 1
