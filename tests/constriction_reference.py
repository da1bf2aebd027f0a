"""The payload format written with constriction's own AnsCoder, as tica wrote it before it
had a kernel of its own: the reference that tica's rANS kernel must match byte for byte
(streams written either way read with the other)."""

from __future__ import annotations

import numpy as np
import constriction

from tica.entropy.coder import MAX_ABS_VALUE, MAX_ESCAPE_BITS, PRECISION, CodingTables

_model = constriction.stream.model


def _table(tables: CodingTables, t: int):
    probs = tables.freqs[t, : tables.lengths[t] + 1] / float(1 << PRECISION)
    return _model.Categorical(probs, perfect=False)


def _zigzag(overflow: np.ndarray) -> np.ndarray:
    return np.where(overflow > 0, 2 * (overflow - 1), -2 * overflow - 1)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    return np.where(u % 2 == 0, u // 2 + 1, -(u + 1) // 2)


def encode(segments: list[tuple[np.ndarray, np.ndarray, CodingTables]]) -> bytes:
    """One payload: segments (values, table indexes, tables) in decoding order."""
    chunks = []                                   # (symbols, model, params) in decoding order
    for values, index, tables in segments:
        values = np.clip(np.asarray(values, np.int64).ravel(), -MAX_ABS_VALUE, MAX_ABS_VALUE)
        index = np.asarray(index, np.int64).ravel()
        lengths = tables.lengths[index]
        symbols = values - tables.offsets[index]
        escaped = (symbols < 0) | (symbols >= lengths)
        symbols = np.where(escaped, lengths, symbols)
        for t in np.unique(index):
            chunks.append((symbols[index == t], _table(tables, int(t)), None))
        if escaped.any():
            raw = values[escaped] - tables.offsets[index[escaped]]
            u = _zigzag(np.where(raw < 0, raw, raw - lengths[escaped] + 1))
            nbits = np.frexp(u.astype(np.float64))[1].astype(np.int64)
            chunks.append((nbits, _model.Uniform(MAX_ESCAPE_BITS + 1), None))
            wide = nbits >= 2
            chunks.append((u[wide] - (1 << (nbits[wide] - 1)), _model.Uniform(),
                           (1 << (nbits[wide] - 1)).astype(np.int32)))
    coder = constriction.stream.stack.AnsCoder()
    for symbols, model, params in reversed(chunks):
        if symbols.size:
            args = (model,) if params is None else (model, params)
            coder.encode_reverse(symbols.astype(np.int32), *args)
    return coder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, segments: list[tuple[np.ndarray, CodingTables]]) -> list[np.ndarray]:
    """Values of each segment (table indexes, tables) of one payload."""
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, "<u4").astype(np.uint32))
    out = []
    for index, tables in segments:
        index = np.asarray(index, np.int64).ravel()
        symbols = np.empty(index.size, np.int64)
        for t in np.unique(index):
            at = np.flatnonzero(index == t)
            symbols[at] = coder.decode(_table(tables, int(t)), at.size)
        lengths = tables.lengths[index]
        values = symbols + tables.offsets[index]
        escaped = symbols == lengths
        if escaped.any():
            nbits = np.asarray(coder.decode(_model.Uniform(MAX_ESCAPE_BITS + 1),
                                            int(escaped.sum())), np.int64)
            u = np.where(nbits >= 1, 1 << np.maximum(nbits - 1, 0), 0).astype(np.int64)
            wide = nbits >= 2
            if wide.any():
                u[wide] += coder.decode(_model.Uniform(), (1 << (nbits[wide] - 1)).astype(np.int32))
            overflow = _unzigzag(u)
            base = tables.offsets[index[escaped]]
            values[escaped] = np.where(overflow < 0, base + overflow,
                                       base + lengths[escaped] - 1 + overflow)
        out.append(values)
    assert coder.is_empty()
    return out
