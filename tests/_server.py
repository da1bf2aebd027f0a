"""`tica serve` in a child process, for the tests (conftest's live_server) and the load
benchmark (benchmarks/load.py puts this folder on sys.path): a testing helper, kept out of
the library because nothing at run time needs it."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


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
