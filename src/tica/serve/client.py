"""The edge side of the service: encode locally, send only the bitstream, read the answer."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

from ..config import TOP_K
from ..errors import TicaError


def post(url: str, body: bytes, timeout: float = 60.0) -> bytes:
    """POST octet-stream bytes; a 4xx/5xx answer, no connection or a URL that is not an
    http(s) one is a TicaError that carries the reason."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise TicaError(f"{url}: a server is an http:// or https:// URL "
                        "(e.g. http://127.0.0.1:8000)")
    try:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read())
            reason = f"{answer.get('error')}: {answer.get('detail')}"
        except (ValueError, AttributeError):
            reason = exc.reason
        raise TicaError(f"server answered {exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise TicaError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def classify_remote(server: str, stream: bytes, top_k: int = TOP_K, timeout: float = 60.0) -> dict:
    """The server's JSON answer for a bitstream; TicaError if the answer is not a tica
    server's (JSON with a model and its images' classes)."""
    url = f"{server.rstrip('/')}/v1/classify?top_k={top_k}"
    body = post(url, stream, timeout)
    try:
        answer = json.loads(body)
        ok = isinstance(answer["model"], str) and all(
            isinstance(e["size"]["width"], int) and isinstance(e["size"]["height"], int)
            and all(isinstance(t["label"], str) and isinstance(t["prob"], (int, float))
                    for t in e["top"]) for e in answer["images"])
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise TicaError(f"{server} did not answer as a tica server does: {body[:80]!r}")
    return answer
