"""Optional dependencies. Encoding, decoding and classifying need none of them; `tica serve`,
training, evaluation and the edge export import theirs on first use, through `require`, so
that a missing one says which extra to install instead of failing with a bare ImportError."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module` for `feature`; if it (or one of its own imports) is missing, raise
    MissingExtraError naming `pip install 'tica[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module.split(".")[0]
        raise MissingExtraError(f"{feature} needs the {missing!r} package: "
                                f"pip install 'tica[{extra}]'") from exc
