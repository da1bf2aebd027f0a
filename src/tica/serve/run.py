"""Start the server with uvicorn; several workers each build the app from the same config."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from fastapi import FastAPI

from ..errors import ConfigError
from .app import ServeConfig, create_app

_ENV = "TICA_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """The app factory uvicorn's workers call: the config travels as JSON in the environment."""
    return create_app(ServeConfig(**json.loads(os.environ.get(_ENV, "{}"))))


def serve(config: dict, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    import uvicorn

    ServeConfig(**config).budget               # fail here, not in every worker
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    os.environ[_ENV] = json.dumps(config)
    uvicorn.run("tica.serve.run:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info", timeout_graceful_shutdown=5)


class ServerProcess:
    """`tica serve ARGS` in a child process on a free loopback port, up once /healthz
    answers: for tests and benchmarks that need a real server. Its stderr goes to a
    temporary file (a pipe nobody drains would block a long-running server once full) and
    is shown if it fails to start."""

    def __init__(self, *args: str, timeout: float = 120.0) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "tica.cli", "serve", "--port", str(port),
                                      *args], stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self._log.seek(0)
                    log = self._log.read().decode(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"tica serve did not start: {log}") from None
                time.sleep(0.25)

    def rss_mb(self) -> float:
        """Resident memory of the server process (Linux)."""
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
