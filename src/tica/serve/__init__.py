"""HTTP service over the library: classify from edge bitstreams, reconstruct, encode.
Nothing here knows how a model works; it parses requests, batches them and calls tica.api."""

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    # create_app needs the web framework: imported on first use, so that the CLI can read
    # ServeConfig without it
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
