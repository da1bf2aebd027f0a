"""Typed errors. Each message names the fix, so callers can show it to a user as is."""


class TicaError(Exception):
    """Base class of every error tica raises on purpose."""


class ConfigError(TicaError, ValueError):
    """A model or training configuration is invalid or unknown."""


class BitstreamError(TicaError, ValueError):
    """A bitstream is malformed, truncated, corrupt or exceeds the decoder's limits."""


class ModelMismatchError(BitstreamError):
    """A bitstream was written by a different model (other weights or another preset)."""


class CheckpointError(TicaError, ValueError):
    """A checkpoint file is missing, corrupt, or incompatible with this version of tica."""


class NotUpdatedError(TicaError, RuntimeError):
    """Entropy coding was asked of a model whose coding tables were never built."""


class ImageError(TicaError, ValueError):
    """An input image cannot be read or is outside the accepted limits."""
