"""HTTP plumbing of the service: typed JSON errors (never a bare 500 page), request bodies
read within a limit, and the timing of every request for the metrics."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (BitstreamError, BudgetError, DeadlineError, ImageError, LimitError,
                      ModelMismatchError, TicaError)


class ErrorBody(BaseModel):
    """Every error answer: the error's type and what went wrong, naming the fix."""

    error: str = Field(description="the error's type, e.g. BitstreamError, BudgetError")
    detail: str = Field(description="what went wrong, and the fix")


_MEANING = {
    400: "malformed: a corrupt or truncated stream, or a body that is not a readable image",
    413: "too large: the body, an image's side or pixels, the stream's images or pixels, or the "
         "estimated work (BudgetError) is over this server's limits",
    422: "a bad parameter, a stream of a model this server does not serve, or a model that "
         "cannot do this (a codec-only model asked to classify)",
    504: "not finished within the deadline (--deadline-s): the server is busy or the request "
         "large; retry later, or send less",
}


def error_responses(*codes: int) -> dict:
    """The OpenAPI `responses` of a route's error answers, each an ErrorBody."""
    return {code: {"model": ErrorBody, "description": _MEANING[code]} for code in codes}


class HTTPError(Exception):
    """An error the service answers with `status` and {"error": error, "detail": detail}."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


_STATUS = [(ModelMismatchError, 422), (LimitError, 413), (BitstreamError, 400), (ImageError, 400),
           (DeadlineError, 504), (TicaError, 422)]


def _status_of(exc: TicaError) -> int:
    return next(code for cls, code in _STATUS if isinstance(exc, cls))


def error_response(status: int, name: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": name, "detail": detail}, status_code=status)


async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail)


async def _tica_error(request: Request, exc: TicaError) -> JSONResponse:
    if isinstance(exc, BudgetError):
        return error_response(413, "BudgetError", f"{exc.summary} this server allows a request: "
                              f"send fewer or smaller images")
    return error_response(_status_of(exc), type(exc).__name__, str(exc))


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "InvalidParameter", "; ".join(
        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


async def _starlette(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, "HTTPError", str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, "InternalError", f"{type(exc).__name__}: the request failed")


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON: HTTPError and TicaError with their status (a BudgetError 413),
    bad parameters 422, anything unexpected 500."""
    for cls, handler in ((HTTPError, _http_error), (TicaError, _tica_error),
                         (RequestValidationError, _validation),
                         (StarletteHTTPException, _starlette), (Exception, _unexpected)):
        app.add_exception_handler(cls, handler)


async def measure(request: Request, call_next):
    """Middleware: each request's path, status and seconds into the app's Metrics."""
    start = time.perf_counter()
    response = await call_next(request)
    request.app.state.metrics.observe(request.url.path, response.status_code,
                                      time.perf_counter() - start)
    return response


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (by its
    Content-Length if it gives one, else while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, "BadRequest", "Content-Length is not a number")
        if int(declared) > limit:
            raise HTTPError(413, "PayloadTooLarge", f"body of {declared} bytes exceeds {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, "PayloadTooLarge", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise HTTPError(400, "EmptyBody", "the request body is empty: send the bytes as the body")
    return body
