"""The edge side of the service: encode locally, send only the bitstream, read the answer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from ..config import TOP_K
from ..errors import TicaError


def post(url: str, body: bytes, timeout: float = 60.0) -> bytes:
    """POST octet-stream bytes; a 4xx/5xx answer or no connection is a TicaError that
    carries the server's reason."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read())
            reason = f"{answer.get('error')}: {answer.get('detail')}"
        except (ValueError, AttributeError):
            reason = exc.reason
        raise TicaError(f"server answered {exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TicaError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def classify_remote(server: str, stream: bytes, top_k: int = TOP_K, timeout: float = 60.0) -> dict:
    """The server's JSON answer for a bitstream."""
    url = f"{server.rstrip('/')}/v1/classify?top_k={top_k}"
    return json.loads(post(url, stream, timeout))
