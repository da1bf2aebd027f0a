"""Typed errors. Each message names the fix, so callers can show it to a user as is."""


class TicaError(Exception):
    """Base class of every error tica raises on purpose."""


class ConfigError(TicaError, ValueError):
    """A model or training configuration is invalid or unknown."""


class BitstreamError(TicaError, ValueError):
    """A bitstream is malformed, truncated, corrupt or exceeds the decoder's limits."""


class LimitError(TicaError, ValueError):
    """An input is larger than a configured limit allows (a server answers 413): raise the
    limit, or send less."""


class BitstreamLimitError(BitstreamError, LimitError):
    """A well-formed stream holds more (pixels, images) than the decoder's limits."""


class ModelMismatchError(BitstreamError):
    """A bitstream was written by a different model (other weights or another preset)."""


class CheckpointError(TicaError, ValueError):
    """A checkpoint file is missing, corrupt, or incompatible with this version of tica."""


class NotUpdatedError(TicaError, RuntimeError):
    """Entropy coding was asked of a model whose coding tables were never built."""


class ImageError(TicaError, ValueError):
    """An input image cannot be read or is outside the accepted limits."""


class ImageLimitError(ImageError, LimitError):
    """An image is larger (pixels, side) than the reader's limits."""


class BudgetError(TicaError, ValueError):
    """A stream or image would cost more work than the budget allows (see tica.cost); raised
    before any of that work starts. `summary` says what and how much, for callers that name
    their own fix (the CLI its flag, the server its limit)."""

    def __init__(self, what: str, cost: float, limit: float) -> None:
        self.what, self.cost, self.limit = what, cost, limit
        super().__init__(f"{self.summary}: send fewer or smaller images, or raise the budget "
                         f"(tica.Budget(max_gflop=...))")

    @property
    def summary(self) -> str:
        return (f"{self.what} would cost about {_gflop(self.cost)} GFLOP, over the budget of "
                f"{_gflop(self.limit)} GFLOP")

    def __reduce__(self):
        return type(self), (self.what, self.cost, self.limit)


def _gflop(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


class DeadlineError(TicaError, TimeoutError):
    """Work was not finished by its deadline: it was dropped before it started, or its answer
    was abandoned. Raised by the server's scheduler (tica.serve.batcher)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the work was not finished within the deadline of {seconds:g} s: the "
                         f"server is busy or the request is large; retry later, or send fewer "
                         f"or smaller images")

    def __reduce__(self):
        return type(self), (self.seconds,)


class MissingExtraError(TicaError, ImportError):
    """An optional dependency is not installed: the message names the extra that brings it."""


class OutputError(TicaError, OSError):
    """An output cannot be written where it was asked for, or would destroy something: an
    input, a folder, a device. Nothing is left behind."""
