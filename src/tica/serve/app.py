"""The FastAPI application: classify straight from edge bitstreams, reconstruct them, encode
uploads, with bounded inputs, typed 4xx errors, micro-batching and Prometheus metrics.

    POST /v1/classify?top_k=5     tica bitstream -> JSON top-k classes of every image
    POST /v1/reconstruct?index=0  tica bitstream -> PNG of one image
    POST /v1/encode?model=M&quality=Q  image file -> tica bitstream (no model: picked for
                                  the image by tica.api.choose_model, when serving "auto")
    GET  /v1/models  /healthz  /metrics  /  (demo page)  /docs  /openapi.json
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import api, bitstream
from ..bitstream import Stream
from ..errors import (BitstreamError, BudgetError, ConfigError, DeadlineError, ImageError,
                      ModelMismatchError, TicaError)
from ..image import decode_image, encode_png
from ..registry import read_manifest
from .batcher import MicroBatcher, within
from .config import ServeConfig
from .metrics import Metrics

_BINARY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
           "required": True}
_IMAGE = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                      "image/png": {"schema": {"type": "string", "format": "binary"}},
                      "image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
          "required": True}


class HTTPError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass
class Served:
    model: torch.nn.Module
    label: str
    quality: int | None                   # a fixed-rate model's rate point


def _shipped(preset: str) -> list[torch.nn.Module]:
    """Every shipped codec of a preset (its rate points), else its one default model."""
    entries = [e for e in read_manifest() if e.preset == preset and e.role == "codec"]
    return [api.load(weights=e.file) for e in entries] if entries else [api.load(preset)]


class ModelSet:
    """Every shipped codec of the served preset(s) (or the one --weights file), by stream id:
    a variable-rate model codes every quality in its range, fixed-rate ones one each. With
    model "auto", the presets `api.choose_model` picks between, and encoding picks per image."""

    def __init__(self, config: ServeConfig) -> None:
        self.auto = not config.weights and config.model == api.AUTO
        if config.weights:
            models = [api.load(weights=config.weights)]
        else:
            presets = api.AUTO_MODELS if self.auto else (config.model,)
            models = [m for preset in presets for m in _shipped(preset)]
        self.presets = list(dict.fromkeys(m.config.name for m in models))
        self.by_id: dict[int, Served] = {}
        for m in models:
            if m.model_id in self.by_id:
                raise ConfigError(f"two served models share the stream id {m.model_id:04x} "
                                  f"({self.by_id[m.model_id].label} and {api.describe(m)}): "
                                  f"streams could not say which decodes them")
            q = m.weights_info.quality
            self.by_id[m.model_id] = Served(m, api.describe(m) if q is not None
                                            else m.config.name, q)

    def for_stream(self, stream: Stream) -> Served:
        served = self.by_id.get(stream.model_id)
        if served is None:
            known = ", ".join(f"{i:04x} ({s.label})" for i, s in self.by_id.items())
            raise ModelMismatchError(f"this stream was written by model id {stream.model_id:04x}, "
                                     f"which this server does not serve; it serves {known}")
        return served

    def for_quality(self, quality: float | None, preset: str | None = None
                    ) -> tuple[Served, float | None]:
        """The model of `preset` (None: any served one) that codes at `quality`, and the
        quality it will use; with no quality, the preset's default (its highest rate point)."""
        if preset is not None and preset not in self.presets:
            raise HTTPError(422, "UnknownModel", f"model {preset!r} is not served here; served: "
                            f"{', '.join(self.presets)}")
        for name in [preset] if preset is not None else self.presets:
            candidates = [s for s in self.by_id.values() if s.model.config.name == name]
            found = _at_quality(candidates, quality)
            if found is not None:
                return found
        points = ", ".join(f"{name} {_qualities_text(self, name)}"
                           for name in ([preset] if preset is not None else self.presets))
        raise HTTPError(422, "UnknownQuality", f"no model here codes at quality {quality:g}; "
                        f"served: {points} (1 = lowest rate)")

    def describe(self) -> list[dict]:
        out = []
        for i, s in self.by_id.items():
            rng = getattr(s.model, "quality_range", None)
            out.append({"id": f"{i:04x}", "model": s.label, "name": s.model.config.name,
                        "quality": s.quality, "quality_range": list(rng) if rng else None,
                        "qualities": (list(range(1, s.model.config.rate_levels + 1)) if rng
                                      else [s.quality]),
                        "classifies": api.can_classify(s.model),
                        "untrained": s.model.weights_info.untrained})
        return out


def _at_quality(candidates: list[Served], quality: float | None
                ) -> tuple[Served, float | None] | None:
    """The served model among `candidates` (one preset) that codes at `quality`, if any."""
    for served in candidates:
        rng = getattr(served.model, "quality_range", None)
        if rng is not None and (quality is None or rng[0] <= quality <= rng[1]):
            return served, served.model.check_quality(quality)
    fixed = [s for s in candidates if getattr(s.model, "quality_range", None) is None]
    if quality is None and fixed:
        return max(fixed, key=lambda s: s.quality or 0), None
    return next(((s, None) for s in fixed if s.quality == quality), None)


def _qualities_text(models: ModelSet, preset: str) -> str:
    """A preset's served qualities, as a client would pass them."""
    ranges = [s.model.quality_range for s in models.by_id.values()
              if s.model.config.name == preset and s.model.quality_range is not None]
    if ranges:
        return f"{ranges[0][0]:g}..{ranges[0][1]:g}"
    return str(sorted(s.quality for s in models.by_id.values()
                      if s.model.config.name == preset and s.quality is not None))


_STATUS = [(ModelMismatchError, 422), (BitstreamError, 400), (ImageError, 400), (DeadlineError, 504),
           (TicaError, 422)]


def _status_of(exc: TicaError) -> int:
    return next(code for cls, code in _STATUS if isinstance(exc, cls))


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


def _image_cost(models: ModelSet):
    # the batcher's estimate of one image's work, for its lanes and its batches' cost cap
    def image_cost(key: tuple, size: tuple[int, int]) -> float:
        op, model_id = key
        return models.by_id[model_id].model.cost(size, op)
    return image_cost


def _execute(models: ModelSet):
    # each request was held to the budget on arrival; a merged batch is the batcher's to size
    def execute(key: tuple, stream: Stream) -> list:
        op, model_id = key
        served = models.by_id[model_id]
        if op == "classify":
            return list(api.classify_logits(served.model, stream, budget=None))
        return api.reconstruct(served.model, stream, budget=None)
    return execute


def create_app(config: ServeConfig = ServeConfig()) -> FastAPI:
    if config.threads:
        torch.set_num_threads(config.threads)
    budget = config.budget                  # a bad --max-gflop fails here, at startup
    models = ModelSet(config)
    batcher = MicroBatcher(_execute(models), config.batch_window_ms, config.max_batch_images,
                           config.batching, image_cost=_image_cost(models),
                           max_gflop=config.max_batch_gflop, deadline_s=config.deadline_s)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="tica", version="1", lifespan=lifespan, description=(
        "Classify images straight from tica bitstreams (no pixels are reconstructed), "
        "reconstruct them on demand, or encode an upload."))
    app.state.models, app.state.batcher, app.state.metrics = models, batcher, metrics

    def error(status: int, name: str, detail: str) -> JSONResponse:
        return JSONResponse({"error": name, "detail": detail}, status_code=status)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        return error(exc.status, exc.error, exc.detail)

    @app.exception_handler(TicaError)
    async def _tica_error(request: Request, exc: TicaError):
        if isinstance(exc, BudgetError):
            return error(413, "BudgetError", f"{exc.summary} this server allows a request: "
                         f"send fewer or smaller images")
        return error(_status_of(exc), type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error(422, "InvalidParameter", "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, "HTTPError", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):        # never a bare 500 page
        return error(500, "InternalError", f"{type(exc).__name__}: the request failed")

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        metrics.observe(request.url.path, response.status_code, time.perf_counter() - start)
        return response

    async def parsed(request: Request) -> tuple[bytes, Stream, Served]:
        data = await read_body(request, config.max_body_bytes)
        stream = bitstream.unpack(data, config.limits)
        served = models.for_stream(stream)
        metrics.received(len(data), len(stream.payloads))
        return data, stream, served

    @app.post("/v1/classify", openapi_extra={"requestBody": _BINARY},
              summary="Top-k classes of every image of a tica bitstream, without decoding pixels")
    async def classify(request: Request, top_k: int = Query(5, ge=1, le=1000)) -> dict:
        data, stream, served = await parsed(request)
        if not api.can_classify(served.model):
            raise HTTPError(422, "NoClassifier", f"{served.label} has no trained classifier")
        budget.check(served.model, stream.sizes, ("classify",))
        logits = await batcher.run(("classify", served.model.model_id), stream)
        predictions = api.top_k(served.model, torch.stack(logits), top_k)
        qualities = api.stream_qualities(stream)
        return {"model": api.describe(served.model, qualities[0]),
                "model_id": f"{stream.model_id:04x}", "bytes": len(data),
                "images": [{"size": list(size), "bytes": len(payload),
                            "bpp": 8 * len(payload) / (size[0] * size[1]),
                            "top": [{"label": p.label, "index": p.index, "prob": round(p.prob, 6)}
                                    for p in preds]}
                           for size, payload, preds in zip(stream.sizes, stream.payloads, predictions)]}

    @app.post("/v1/reconstruct", openapi_extra={"requestBody": _BINARY},
              response_class=Response, responses={200: {"content": {"image/png": {}}}},
              summary="Decode one image of a tica bitstream to PNG")
    async def reconstruct(request: Request, index: int = Query(0, ge=0)) -> Response:
        data, stream, served = await parsed(request)
        if index >= len(stream.payloads):
            raise HTTPError(422, "BadIndex", f"index {index}: the stream holds {len(stream.payloads)} image(s)")
        one = stream.subset([index])
        budget.check(served.model, one.sizes, ("reconstruct",))
        image = (await batcher.run(("reconstruct", served.model.model_id), one))[0]
        return Response(encode_png(image), media_type="image/png",
                        headers={"X-Tica-Model": api.describe(
                            served.model, api.stream_qualities(one)[0])})

    @app.post("/v1/encode", openapi_extra={"requestBody": _IMAGE}, response_class=Response,
              responses={200: {"content": {"application/octet-stream": {}}}},
              summary="Encode an image file (PNG, JPEG, WebP, ...) into a tica bitstream")
    async def encode(request: Request, quality: float | None = Query(None, ge=0, le=1000),
                     model: str | None = Query(None, description=(
                         "a served preset; none: the one that suits the image "
                         "(tica.api.choose_model) when the server serves 'auto'"))) -> Response:
        served, q = models.for_quality(quality, model)        # a bad name or quality: before reading
        body = await read_body(request, config.max_upload_bytes)
        image = decode_image(body, max_pixels=config.max_pixels)
        if max(image.shape[1:]) > config.max_side:
            raise ImageError(f"image side {max(image.shape[1:])} exceeds {config.max_side}")
        if model is None and models.auto:
            served, q = models.for_quality(quality, api.choose_model([tuple(image.shape[1:])]))
        stream = await within(config.deadline_s, asyncio.to_thread(
            api.compress, served.model, image, q, budget=budget))
        pixels = image.shape[1] * image.shape[2]
        return Response(stream, media_type="application/octet-stream", headers={
            "X-Tica-Model": api.describe(served.model, q), "X-Tica-Bytes": str(len(stream)),
            "X-Tica-Bpp": f"{8 * len(stream) / pixels:.4f}", "X-Tica-Input-Bytes": str(len(body)),
            "Access-Control-Expose-Headers": "X-Tica-Model, X-Tica-Bytes, X-Tica-Bpp, X-Tica-Input-Bytes"})

    @app.get("/v1/models", summary="The models this server decodes")
    async def list_models() -> dict:
        return {"models": models.describe(), "limits": {
            "max_body_bytes": config.max_body_bytes, "max_upload_bytes": config.max_upload_bytes,
            "max_side": config.max_side, "max_pixels": config.max_pixels,
            "max_images": config.max_images, "max_gflop": config.max_gflop},
            "auto": {"on": models.auto, "small_side": api.SMALL_IMAGE_SIDE,
                     "small": api.SMALL_IMAGE_MODEL, "large": api.PHOTO_MODEL},
            "batching": {"on": config.batching, "window_ms": config.batch_window_ms,
                         "max_images": config.max_batch_images,
                         "max_gflop": config.max_batch_gflop},
            "deadline_s": config.deadline_s}

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict:
        return {"status": "ok", "models": len(models.by_id)}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(batcher.stats),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo() -> HTMLResponse:
        return HTMLResponse((Path(__file__).parent / "demo.html").read_text())

    return app
