"""Exact entropy coding of integer symbols with rANS (tica/entropy/_rans.c).

Every symbol is coded with one of a set of discrete tables (`CodingTables`), chosen by an
integer index that encoder and decoder compute identically. A table covers the values
offset .. offset+length-1 plus an escape symbol; a value outside that range is coded as
the escape, followed by its overflow with a uniform bypass code (Elias-gamma style: the bit
count, then the bits).

A payload is a sequence of segments (one image's z, then its y), each decoded as: the
symbols grouped by table index, then the escapes' bit counts, then their bits. The words
are those of constriction's AnsCoder (64-bit state, 32-bit words, 24-bit probabilities,
its "fast" categorical quantisation), so payloads written by either read with the other.

The kernel codes a whole batch of images per call with the GIL released, split across the
coder's thread pool (`tica.entropy.parallel`): one call per segment per batch, none per
image or per table.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import BitstreamError, CheckpointError, NotUpdatedError
from .parallel import map_ranges

try:
    from . import _rans
except ImportError as exc:                  # a checkout run without installing
    raise ImportError("tica's compiled entropy coder (tica/entropy/_rans) is not built: "
                      "pip install tica (in a checkout: pip install -e .), or run "
                      "scripts/build_kernel.py") from exc

PRECISION = 24              # bits of the integer frequencies (the ANS precision)
MAX_ESCAPE_BITS = 23        # an escaped overflow has at most this many bits
MAX_ABS_VALUE = 2 ** 20     # values are clamped to +-this before coding
LOOKUP_BITS = 8             # decoding finds a quantile's entry from its top 8 bits


def quantize_pmf(pmf: np.ndarray, tail: float) -> np.ndarray:
    """Integer frequencies summing to 2^PRECISION for pmf (K,) plus an escape of mass `tail`.

    Every symbol keeps a frequency >= 1 so anything in range stays codable; the rounding
    remainder goes to the most probable symbol.
    """
    probs = np.append(np.clip(np.asarray(pmf, np.float64), 0, None), max(float(tail), 0.0))
    probs /= probs.sum()
    total = 1 << PRECISION
    freqs = np.floor(probs * (total - probs.size)).astype(np.int64) + 1
    freqs[np.argmax(freqs)] += total - int(freqs.sum())
    return freqs


def cumulative_table(freqs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(T, L_max + 2) uint32 left cumulatives of each table's first lengths[t] + 1 entries,
    then 2^PRECISION: the integers constriction's `Categorical(freqs / 2^PRECISION,
    perfect=False)` codes with. Its quantisation, step by step in float64 (sequential sums,
    truncation): entry i starts at floor(cum_i * (2^P - n) / total) + i, so every entry
    keeps a probability >= 1."""
    T, width = len(lengths), int(lengths.max()) + 2
    n = lengths.astype(np.int64) + 1
    probs = np.zeros((T, width - 1), np.float64)
    cols = np.arange(width - 1)
    inside = cols[None, :] < n[:, None]
    probs[inside] = (np.asarray(freqs, np.float64)[:, : width - 1] / float(1 << PRECISION))[inside]
    running = np.add.accumulate(probs, axis=1)              # sequential, as constriction sums
    total = running[np.arange(T), n - 1]
    if not (np.isfinite(total).all() and (total > 0).all() and (probs >= 0).all()):
        raise CheckpointError("a coding table has negative or no probability mass: the "
                              "checkpoint is corrupt; run model.update() to rebuild the tables")
    scale = (float(1 << PRECISION) - n) / total
    before = np.concatenate([np.zeros((T, 1)), running[:, :-1]], axis=1)
    cdf = np.floor(before * scale[:, None]).astype(np.int64) + cols[None, :]
    cdf = np.where(inside, cdf, 1 << PRECISION)
    cdf = np.concatenate([cdf, np.full((T, 1), 1 << PRECISION)], axis=1)
    if (np.diff(cdf, axis=1)[inside] < 1).any():
        raise CheckpointError("a coding table is not increasing: the checkpoint is corrupt")
    return np.ascontiguousarray(cdf, np.uint32)


def lookup_table(cdf: np.ndarray, lengths: np.ndarray, bits: int = LOOKUP_BITS) -> np.ndarray:
    """(T, 2^bits) uint16: per table, for each slice of the quantiles (their top `bits`
    bits), the last entry that starts at or before the slice's first quantile. Decoding
    starts its search there (tica/entropy/_rans.c, dec_table), so it takes about one step
    instead of a binary search; the answer does not depend on it."""
    edges = np.arange(1 << bits, dtype=np.int64) << (PRECISION - bits)
    out = np.empty((len(lengths), 1 << bits), np.uint16)
    for t, length in enumerate(lengths):
        row = cdf[t, :int(length) + 1].astype(np.int64)
        out[t] = np.minimum(np.searchsorted(row, edges, side="right") - 1, 2 ** 16 - 1)
    return out


class CodingTables:
    """A stack of discrete distributions, one row per table index.

    freqs: (T, L_max + 1) int, row t uses its first lengths[t] + 1 entries (the last being
    the escape); offsets[t] is the value coded by symbol 0.
    """

    def __init__(self, freqs: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor) -> None:
        self.freqs = freqs.cpu().numpy().astype(np.float64)
        self.lengths = lengths.cpu().numpy().astype(np.int64)
        self.offsets = offsets.cpu().numpy().astype(np.int64)
        if self.lengths.size == 0:
            raise NotUpdatedError(
                "entropy coding tables are empty: call model.update() after training "
                "(or load a checkpoint that was saved after update())")
        if (self.lengths < 1).any() or self.lengths.max() + 1 > self.freqs.shape[1]:
            raise CheckpointError("coding table lengths do not fit their frequencies: the "
                                  "checkpoint is corrupt")
        self.cdf = cumulative_table(self.freqs, self.lengths)
        self.lookup = lookup_table(self.cdf, self.lengths)
        self._lengths32 = np.ascontiguousarray(self.lengths, np.int32)
        self._offsets32 = np.ascontiguousarray(self.offsets, np.int32)

    def __len__(self) -> int:
        return self.lengths.size

    def segment(self, index: np.ndarray, batch: int) -> tuple:
        """The kernel's description of symbols coded with table `index`: (n,) shared by
        every image of the batch, or (B, n) one row per image."""
        index = np.asarray(index)
        per_image = index.ndim == 2
        if per_image and index.shape[0] != batch:
            raise ValueError(f"{index.shape[0]} rows of table indexes for {batch} images")
        flat = np.ascontiguousarray(index, np.int32)
        return (self.cdf, self.cdf.shape[1], self._lengths32, self._offsets32, flat,
                index.shape[-1], per_image, self.lookup, LOOKUP_BITS)


class TableOwner(nn.Module):
    """Base of the entropy models: holds their coding tables as buffers (so they travel in
    checkpoints and keep the decoder independent of float recomputation) and a cached
    `CodingTables` view of them."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_freqs", torch.zeros(0, 0, dtype=torch.int32))
        self.register_buffer("_lengths", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("_offsets", torch.zeros(0, dtype=torch.int32))
        self._tables: CodingTables | None = None

    def _set_tables(self, freqs: np.ndarray, lengths: torch.Tensor, offsets: torch.Tensor) -> None:
        self._freqs = torch.from_numpy(freqs).int()
        self._lengths, self._offsets = lengths.int(), offsets.int()
        self._tables = None

    @property
    def tables(self) -> CodingTables:
        if self._tables is None:
            self._tables = CodingTables(self._freqs, self._lengths, self._offsets)
        return self._tables

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Table sizes depend on training: adopt the stored shapes before loading.
        for name in ("_freqs", "_lengths", "_offsets"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        self._tables = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


Segment = tuple[np.ndarray, np.ndarray, CodingTables]


def encode_batch(segments: Sequence[Segment], batch: int) -> list[bytes]:
    """One payload per image: its segments in decoding order, each (values (B, n), table
    indexes (n,) shared by every image or (B, n), tables). Values beyond +-MAX_ABS_VALUE
    are clamped."""
    specs, values, symbols = [], [], 0
    for vals, index, tables in segments:
        vals = np.asarray(vals).reshape(batch, -1)
        if vals.dtype != np.int32:
            vals = np.clip(vals, -MAX_ABS_VALUE, MAX_ABS_VALUE)
        values.append(np.ascontiguousarray(vals, np.int32))
        specs.append(tables.segment(index, batch))
        symbols += vals.shape[1]
    if batch == 0:
        return []
    parts = map_ranges(lambda b, e, n: _rans.encode(specs, values, batch, b, e, n), batch,
                       symbols, own_team=bool(_rans.openmp))
    return [payload for part in parts for payload in part]


class BatchDecoder:
    """Reads the payloads of a batch of images, one segment at a time (`decode`, in the
    order they were written), then checks that each payload ends there (`finish`).
    BitstreamError on a payload that cannot be a stack of words or does not end cleanly;
    a corrupt payload otherwise decodes to wrong symbols, never to a crash or a hang."""

    def __init__(self, payloads: Sequence[bytes]) -> None:
        for i, p in enumerate(payloads):
            if len(p) % 4:              # empty is a stack: every symbol its table's first
                raise BitstreamError(f"entropy-coded payload of image {i} is not a whole "
                                     f"number of 32-bit words")
        self.batch = len(payloads)
        self._words = np.frombuffer(b"".join(payloads), dtype="<u4").astype(np.uint32, copy=False)
        self._starts = np.zeros(self.batch + 1, np.int64)
        np.cumsum([len(p) // 4 for p in payloads], out=self._starts[1:])
        self._states = np.zeros(self.batch, np.uint64)
        self._positions = np.zeros(self.batch, np.int64)
        bad = _rans.decoder_init(self._words, self._starts, self._states, self._positions,
                                 self.batch)
        if bad >= 0:
            raise BitstreamError(f"corrupt entropy-coded payload of image {bad}: it ends in "
                                 f"a zero word")

    def decode(self, index: np.ndarray, tables: CodingTables) -> np.ndarray:
        """Values (B, n) int32 of the next segment, coded with table `index` ((n,) shared
        by every image, or (B, n))."""
        spec = tables.segment(index, self.batch)
        out = np.empty((self.batch, spec[5]), np.int32)
        if self.batch:
            try:
                map_ranges(lambda b, e, n: _rans.decode(spec, self._words, self._starts,
                                                        self._states, self._positions, out,
                                                        self.batch, b, e, n),
                           self.batch, spec[5], own_team=bool(_rans.openmp))
            except ValueError as exc:   # what a payload's data made the kernel refuse names
                if not str(exc).startswith("image "):     # its image; anything else is a bug
                    raise
                raise BitstreamError(f"corrupt entropy-coded payload of {exc}") from None
        return out

    def finish(self) -> None:
        """Every word of every payload must have been consumed. A consistency check, not a
        checksum: it catches trailing data and most damage, but a payload cut short can
        drain to a consistent end (about a fifth of single flipped bits pass it too), so
        integrity is the container's CRC."""
        bad = np.flatnonzero((self._states != 0) | (self._positions != 0))
        if bad.size:
            raise BitstreamError(f"entropy-coded payload of image {int(bad[0])} does not decode "
                                 f"consistently (corrupt, truncated, or made by other weights)")


class SymbolEncoder:
    """One payload: `encode` its segments in decoding order, then `finish()` for the bytes."""

    def __init__(self) -> None:
        self._segments: list[Segment] = []

    def encode(self, values: np.ndarray, index: np.ndarray, tables: CodingTables) -> None:
        """Code integer `values` (flat), each with table `index` (flat, same length)."""
        values, index = np.asarray(values).ravel(), np.asarray(index).ravel()
        if values.shape != index.shape:
            raise ValueError(f"{values.size} values for {index.size} table indexes")
        self._segments.append((values[None], index, tables))

    def finish(self) -> bytes:
        return encode_batch(self._segments, 1)[0]


class SymbolDecoder:
    """Reads back what a `SymbolEncoder` wrote, given the same indexes and tables."""

    def __init__(self, data: bytes) -> None:
        self._reader = BatchDecoder([data])

    def decode(self, index: np.ndarray, tables: CodingTables) -> np.ndarray:
        """Values (flat int64) for the symbols coded with table `index` (flat)."""
        return self._reader.decode(np.asarray(index).ravel(), tables)[0].astype(np.int64)

    def finish(self) -> None:
        self._reader.finish()
