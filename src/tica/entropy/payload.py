"""The layout of one image's entropy-coded payload: written here once, for the model's
`compress` / `decompress` and for the edge encoder (tica.export) alike.

    z  (N, zh, zw)  the hyper-latent, rounded and clamped to +-Z_LIMIT (the integer h_s's
                    input range), each element coded with the factorized table of its channel
    y  (M, h, w)    the symbols round(y - mean), each coded with the Gaussian table that the
                    integer h_s picks for it from z

z comes first: the decoder reads z, runs the exact integer h_s on it to learn y's tables and
means, then reads y (`PayloadDecoder` keeps those two steps apart so the h_s runs once for a
whole batch).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import Z_INPUT_BITS
from .coder import BatchDecoder, CodingTables, encode_batch

Z_LIMIT = 2 ** Z_INPUT_BITS - 1     # |z| the integer h_s accepts


def clamp_z(z: torch.Tensor) -> torch.Tensor:
    """h_a's output -> the integer z a payload codes (a float tensor of integers)."""
    return torch.round(z).clamp(-Z_LIMIT, Z_LIMIT)


def z_index(shape: tuple[int, ...]) -> np.ndarray:
    """Table index of each element of one image's z (N, zh, zw): its channel."""
    return np.broadcast_to(np.arange(shape[0])[:, None, None], shape)


def _z_segment(z: np.ndarray, z_tables: CodingTables):
    """z (B, N, zh, zw) as the payload's first segment."""
    return z.reshape(len(z), -1), z_index(z.shape[1:]).ravel(), z_tables


def encode_payloads(z: np.ndarray, symbols: np.ndarray, y_index: np.ndarray,
                    z_tables: CodingTables, y_tables: CodingTables) -> list[bytes]:
    """One payload per image of a batch: z (B, N, zh, zw) integers, then y's symbols
    (B, M, h, w) with their table indexes (B, M, h, w)."""
    z, symbols = np.asarray(z), np.asarray(symbols)
    batch = len(z)
    return encode_batch([_z_segment(z, z_tables),
                         (symbols.reshape(batch, -1), np.asarray(y_index).reshape(batch, -1),
                          y_tables)], batch)


def encode_payload(z: np.ndarray, symbols: np.ndarray, y_index: np.ndarray,
                   z_tables: CodingTables, y_tables: CodingTables) -> bytes:
    """One image's payload: z (N, zh, zw) integers, then y's symbols (M, h, w) with their
    table indexes (M, h, w)."""
    return encode_payloads(np.asarray(z)[None], np.asarray(symbols)[None],
                           np.asarray(y_index)[None], z_tables, y_tables)[0]


def z_payloads(z: np.ndarray, z_tables: CodingTables) -> list[bytes]:
    """z (B, N, zh, zw) coded alone, as it opens each payload: what the side information
    costs, per image."""
    z = np.asarray(z)
    return encode_batch([_z_segment(z, z_tables)], len(z))


def encode_z(z: np.ndarray, z_tables: CodingTables) -> bytes:
    """One image's z (N, zh, zw) coded alone."""
    return z_payloads(np.asarray(z)[None], z_tables)[0]


class PayloadDecoder:
    """Reads the payloads of a batch of images of one size in the two steps the layout needs:
    `decode_z`, then (once the integer h_s has turned z into y's table indexes) `decode_y`.
    Raises BitstreamError on a corrupt payload."""

    def __init__(self, payloads: Sequence[bytes]) -> None:
        self._reader = BatchDecoder(payloads)

    def decode_z(self, shape: tuple[int, int, int], z_tables: CodingTables) -> np.ndarray:
        """z of every image, (B, N, zh, zw) int32, for z of `shape` (N, zh, zw)."""
        out = self._reader.decode(z_index(shape).ravel(), z_tables)
        return out.reshape(-1, *shape)

    def decode_y(self, y_index: np.ndarray, y_tables: CodingTables) -> np.ndarray:
        """y's symbols of every image, (B, M, h, w) int32, given their table indexes of the
        same shape; checks that each payload ends there."""
        y_index = np.asarray(y_index)
        out = self._reader.decode(y_index.reshape(len(y_index), -1), y_tables)
        self._reader.finish()
        return out.reshape(y_index.shape)


def decode_payload(payload: bytes, z_shape: tuple[int, int, int], z_tables: CodingTables,
                   y_tables: CodingTables, y_index_of) -> tuple[np.ndarray, np.ndarray]:
    """One payload -> (z (N, zh, zw), symbols (M, h, w)); `y_index_of` maps z (1, N, zh, zw)
    to y's table indexes (1, M, h, w), as the integer h_s does."""
    reader = PayloadDecoder([payload])
    z = reader.decode_z(z_shape, z_tables)
    return z[0], reader.decode_y(y_index_of(z), y_tables)[0]
