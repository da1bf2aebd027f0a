"""Entropy models (factorized density, Gaussian conditional), the ANS coder wrapper and the
layout of one image's payload (z, then y)."""

from ._ops import quantize
from .coder import CodingTables, SymbolDecoder, SymbolEncoder
from .factorized import EntropyBottleneck
from .gaussian import GaussianConditional
from .payload import PayloadDecoder, clamp_z, decode_payload, encode_payload, encode_z

__all__ = ["CodingTables", "EntropyBottleneck", "GaussianConditional", "PayloadDecoder",
           "SymbolDecoder", "SymbolEncoder", "clamp_z", "decode_payload", "encode_payload",
           "encode_z", "quantize"]
