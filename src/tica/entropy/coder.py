"""Exact entropy coding of integer symbols with constriction's ANS coder.

Every symbol is coded with one of a set of discrete tables (`CodingTables`), chosen by an
integer index that encoder and decoder compute identically. A table covers the values
offset .. offset+length-1 plus an escape symbol; a value outside that range is coded as
the escape, followed by its overflow with a uniform bypass code (Elias-gamma style: the bit
count, then the bits).

Symbols are grouped by table so each constriction call codes a whole array with one
model (microseconds per call, whatever the table width). ANS is a stack, so the encoder
keeps the chunks in decoding order and pushes them in reverse when it finishes.
"""

from __future__ import annotations

import numpy as np
import constriction
import torch
from torch import nn

from ..errors import BitstreamError, NotUpdatedError

PRECISION = 24              # bits of the integer frequencies (constriction's ANS precision)
MAX_ESCAPE_BITS = 23        # an escaped overflow has at most this many bits
MAX_ABS_VALUE = 2 ** 20     # callers clamp values to +-this before coding

_ans = constriction.stream.stack.AnsCoder
_model = constriction.stream.model


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
        self._models: dict[int, object] = {}

    def __len__(self) -> int:
        return self.lengths.size

    def model(self, t: int):
        model = self._models.get(t)
        if model is None:
            probs = self.freqs[t, : self.lengths[t] + 1] / float(1 << PRECISION)
            model = self._models[t] = _model.Categorical(probs, perfect=False)
        return model


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


def _by_key(keys: np.ndarray, num_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable permutation grouping equal keys, and the group boundaries (num_keys + 1,)."""
    order = np.argsort(keys, kind="stable")
    bounds = np.zeros(num_keys + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=num_keys), out=bounds[1:])
    return order, bounds


def _zigzag(overflow: np.ndarray) -> np.ndarray:
    """Overflow o != 0 -> u >= 0: 1->0, -1->1, 2->2, -2->3, ..."""
    return np.where(overflow > 0, 2 * (overflow - 1), -2 * overflow - 1)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    return np.where(u % 2 == 0, u // 2 + 1, -(u + 1) // 2)


def _bit_length(u: np.ndarray) -> np.ndarray:
    return np.frexp(u.astype(np.float64))[1].astype(np.int64)   # exact; 0 for u == 0


class SymbolEncoder:
    """Collects symbol arrays in decoding order; `finish()` returns the coded bytes."""

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, object, np.ndarray | None]] = []

    def _push(self, symbols: np.ndarray, model, params: np.ndarray | None = None) -> None:
        if symbols.size:
            self._chunks.append((symbols.astype(np.int32), model, params))

    def encode(self, values: np.ndarray, index: np.ndarray, tables: CodingTables) -> None:
        """Code integer `values` (flat), each with table `index` (flat, same length)."""
        values = np.clip(np.asarray(values, np.int64).ravel(), -MAX_ABS_VALUE, MAX_ABS_VALUE)
        index = np.asarray(index, np.int64).ravel()
        lengths = tables.lengths[index]
        symbols = values - tables.offsets[index]
        escaped = (symbols < 0) | (symbols >= lengths)
        symbols = np.where(escaped, lengths, symbols)
        order, bounds = _by_key(index, len(tables))
        grouped = symbols[order]
        for t in np.flatnonzero(np.diff(bounds)):
            self._push(grouped[bounds[t]:bounds[t + 1]], tables.model(int(t)))
        if escaped.any():
            raw = values[escaped] - tables.offsets[index[escaped]]
            overflow = np.where(raw < 0, raw, raw - lengths[escaped] + 1)
            u = _zigzag(overflow)
            nbits = _bit_length(u)
            self._push(nbits, _model.Uniform(MAX_ESCAPE_BITS + 1))
            wide = nbits >= 2
            self._push(u[wide] - (1 << (nbits[wide] - 1)), _model.Uniform(),
                       (1 << (nbits[wide] - 1)).astype(np.int32))

    def finish(self) -> bytes:
        coder = _ans()
        for symbols, model, params in reversed(self._chunks):
            if params is None:
                coder.encode_reverse(symbols, model)
            else:
                coder.encode_reverse(symbols, model, params)
        return coder.get_compressed().astype("<u4").tobytes()


class SymbolDecoder:
    """Reads back what a `SymbolEncoder` wrote, given the same indexes and tables."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4 or not data:
            raise BitstreamError("entropy-coded payload is not a whole number of 32-bit words")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        try:
            self._coder = _ans(words)
        except Exception as exc:  # constriction rejects e.g. a trailing zero word
            raise BitstreamError(f"corrupt entropy-coded payload: {exc}") from None

    def _pull(self, model, count: int, params: np.ndarray | None = None) -> np.ndarray:
        if count == 0:
            return np.zeros(0, np.int64)
        try:
            out = self._coder.decode(model, count) if params is None else \
                self._coder.decode(model, params)
        except Exception as exc:
            raise BitstreamError(f"corrupt entropy-coded payload: {exc}") from None
        return np.asarray(out, np.int64)

    def decode(self, index: np.ndarray, tables: CodingTables) -> np.ndarray:
        """Values (flat int64) for the symbols coded with table `index` (flat)."""
        index = np.asarray(index, np.int64).ravel()
        order, bounds = _by_key(index, len(tables))
        grouped = np.empty(index.size, np.int64)
        for t in np.flatnonzero(np.diff(bounds)):
            grouped[bounds[t]:bounds[t + 1]] = self._pull(tables.model(int(t)),
                                                          int(bounds[t + 1] - bounds[t]))
        symbols = np.empty_like(grouped)
        symbols[order] = grouped
        lengths = tables.lengths[index]
        values = symbols + tables.offsets[index]
        escaped = symbols == lengths
        if escaped.any():
            nbits = self._pull(_model.Uniform(MAX_ESCAPE_BITS + 1), int(escaped.sum()))
            u = np.where(nbits >= 1, (1 << np.maximum(nbits - 1, 0)), 0).astype(np.int64)
            wide = nbits >= 2
            u[wide] += self._pull(_model.Uniform(), int(wide.sum()),
                                  (1 << (nbits[wide] - 1)).astype(np.int32))
            overflow = _unzigzag(u)
            base = tables.offsets[index[escaped]]
            values[escaped] = np.where(overflow < 0, base + overflow,
                                       base + lengths[escaped] - 1 + overflow)
        return values

    def finish(self) -> None:
        """Every word must have been consumed. A consistency check (it catches truncation and
        trailing data), not a checksum: integrity is the container's CRC."""
        if not self._coder.is_empty():
            raise BitstreamError("entropy-coded payload does not decode consistently "
                                 "(corrupt, truncated, or made by other weights)")
