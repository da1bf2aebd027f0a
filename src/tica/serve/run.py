"""Start the server with uvicorn; several workers each build the app from the same config.
The web framework comes with the `serve` extra and is imported only here, on first use."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from ..extras import require
from .config import Listen, ServeConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

_ENV = "TICA_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """The app factory uvicorn's workers call: the config travels as JSON in the environment."""
    from .app import create_app

    return create_app(ServeConfig(**json.loads(os.environ.get(_ENV, "{}"))))


def serve(config: dict, listen: Listen = Listen()) -> None:
    """Build the app here first, so that a bad model, weights file, device or limit is one
    typed error before anything listens (not a traceback in every worker); one worker
    serves that app, several each build their own."""
    require("fastapi", "serve", "tica serve")
    uvicorn = require("uvicorn", "serve", "tica serve")
    from .app import create_app

    app = create_app(ServeConfig(**config))
    common = dict(host=listen.host, port=listen.port, log_level="info",
                  timeout_graceful_shutdown=5)
    if listen.workers == 1:
        uvicorn.run(app, **common)
        return
    del app                                   # the workers load their own models
    os.environ[_ENV] = json.dumps(config)
    uvicorn.run("tica.serve.run:app_from_env", factory=True, workers=listen.workers, **common)

