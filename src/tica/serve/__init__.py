"""HTTP service over the library: classify from edge bitstreams, reconstruct, encode.
Nothing here knows how a model works; it parses requests, batches them and calls tica.api."""

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
