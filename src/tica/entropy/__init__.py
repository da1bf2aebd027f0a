"""Entropy models (factorized density, Gaussian conditional) and the ANS coder wrapper."""

from .coder import CodingTables, SymbolDecoder, SymbolEncoder
from .factorized import EntropyBottleneck
from .gaussian import GaussianConditional

__all__ = ["CodingTables", "EntropyBottleneck", "GaussianConditional", "SymbolDecoder",
           "SymbolEncoder"]
