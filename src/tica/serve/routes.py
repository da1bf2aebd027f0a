"""The service's routes. Each reads what the app was built with from `request.app.state`:
config (ServeConfig), budget, models (ModelSet), batcher (MicroBatcher), metrics (Metrics)."""

from __future__ import annotations

from pathlib import Path

import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from .. import api, bitstream
from ..config import TOP_K
from ..image import encode_png, read_image
from .http import HTTPError, error_responses, read_body

router = APIRouter()

_BINARY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
           "required": True}
_IMAGE = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                      "image/png": {"schema": {"type": "string", "format": "binary"}},
                      "image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
          "required": True}


async def _parsed(request: Request):
    """The bitstream of a request, checked against the limits and against the served model
    it names (`api.check_stream`: its quality codes are that model's) before it joins a
    batch: (body bytes, Stream, Served)."""
    state = request.app.state
    data = await read_body(request, state.config.max_body_bytes)
    stream = bitstream.unpack(data, state.config.limits)
    served = state.models.for_stream(stream)
    api.check_stream(served.model, stream)
    state.metrics.received(len(data), len(stream.payloads))
    return data, stream, served


_ERRORS = error_responses(400, 413, 422, 504)


@router.post("/v1/classify", openapi_extra={"requestBody": _BINARY}, responses=_ERRORS,
             summary="Top-k classes of every image of a tica bitstream, without decoding pixels")
async def classify(request: Request, top_k: int = Query(TOP_K, ge=1, le=1000)) -> dict:
    data, stream, served = await _parsed(request)
    if not api.can_classify(served.model):
        raise HTTPError(422, "NoClassifier", f"{served.label} has no trained classifier")
    request.app.state.budget.check(served.model, stream.sizes, ("classify",))
    logits = await request.app.state.batcher.run(("classify", served.model.model_id), stream)
    predictions = api.top_k(served.model, torch.stack(logits), top_k)
    return api.classify_report(served.model, data, stream, predictions)


@router.post("/v1/reconstruct", openapi_extra={"requestBody": _BINARY},
             response_class=Response, responses={200: {"content": {"image/png": {}}}, **_ERRORS},
             summary="Decode one image of a tica bitstream to PNG")
async def reconstruct(request: Request, index: int = Query(0, ge=0)) -> Response:
    data, stream, served = await _parsed(request)
    if index >= len(stream.payloads):
        raise HTTPError(422, "BadIndex", f"index {index}: the stream holds {len(stream.payloads)} image(s)")
    one = stream.subset([index])
    request.app.state.budget.check(served.model, one.sizes, ("reconstruct",))
    image = (await request.app.state.batcher.run(("reconstruct", served.model.model_id), one))[0]
    return Response(encode_png(image), media_type="image/png",
                    headers={"X-Tica-Model": api.describe(
                        served.model, api.stream_qualities(one)[0])})


@router.post("/v1/encode", openapi_extra={"requestBody": _IMAGE}, response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS},
             summary="Encode an image file (PNG, JPEG, WebP, ...) into a tica bitstream")
async def encode(request: Request, quality: float | None = Query(None, ge=0, le=1000),
                 model: str | None = Query(None, description=(
                     "a served preset; none: the one that suits the image "
                     "(tica.api.choose_model) when the server serves 'auto'")),
                 frame: int | None = Query(None, ge=0, description=(
                     "the frame to code of a multi-frame image (animated GIF or WebP, "
                     "multi-page TIFF), which is refused without it")),
                 refine: int = Query(0, ge=0, description=(
                     "encoder-side refinement steps (`tica encode --refine`): a smaller "
                     "stream for the same decoder, at about three reconstructions' work a "
                     "step; at most the server's max_refine"))) -> Response:
    config, models = request.app.state.config, request.app.state.models
    if refine > config.max_refine:
        raise HTTPError(422, "RefineLimit", f"refine={refine}: this server allows at most "
                        f"{config.max_refine} refinement steps (tica serve --max-refine)")
    served, q = models.for_quality(quality, model)        # a bad name or quality: before reading
    body = await read_body(request, config.max_upload_bytes)
    image = read_image(body, frame=frame, max_pixels=config.max_pixels, max_side=config.max_side)
    if model is None and models.auto:
        served, q = models.for_quality(quality, api.choose_model([tuple(image.shape[1:])]))
    size = tuple(image.shape[1:])
    api.check_encode(served.model, [image], request.app.state.budget, refine)
    stream, png = await request.app.state.batcher.call(
        served.model.cost(size, "encode", refine), lambda: (
            api.compress(served.model, image, q, budget=None, refine=refine),
            api.png_bytes(image)))
    headers = {"X-Tica-Model": api.describe(served.model, q), "X-Tica-Bytes": str(len(stream)),
               "X-Tica-Bpp": f"{8 * len(stream) / (size[0] * size[1]):.4f}",
               "X-Tica-Input-Bytes": str(len(body))}
    if png is not None:
        headers["X-Tica-Png-Bytes"] = str(png)
    if png is not None and len(stream) > png:
        headers["X-Tica-Warning"] = (f"the stream ({len(stream)} bytes) is larger than a "
                                     f"lossless PNG of the image ({png} bytes)")
    headers["Access-Control-Expose-Headers"] = ", ".join(headers)
    return Response(stream, media_type="application/octet-stream", headers=headers)


@router.get("/v1/models", summary="The models this server decodes")
async def list_models(request: Request) -> dict:
    config, models = request.app.state.config, request.app.state.models
    return {"models": models.describe(), "limits": {
        "max_body_bytes": config.max_body_bytes, "max_upload_bytes": config.max_upload_bytes,
        "max_side": config.max_side, "max_pixels": config.max_pixels,
        "max_images": config.max_images, "max_gflop": config.max_gflop,
        "max_refine": config.max_refine},
        "auto": {"on": models.auto, "small_side": api.SMALL_IMAGE_SIDE,
                 "small": api.SMALL_IMAGE_MODEL, "large": api.PHOTO_MODEL},
        "batching": {"on": config.batching, "window_ms": config.batch_window_ms,
                     "max_images": config.max_batch_images,
                     "max_gflop": config.max_batch_gflop},
        "deadline_s": config.deadline_s}


@router.get("/healthz", summary="Liveness")
async def healthz(request: Request) -> dict:
    return {"status": "ok", "models": len(request.app.state.models.by_id)}


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def prometheus(request: Request) -> PlainTextResponse:
    state = request.app.state
    return PlainTextResponse(state.metrics.render(state.batcher.stats),
                             media_type="text/plain; version=0.0.4")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def demo() -> HTMLResponse:
    return HTMLResponse((Path(__file__).parent / "demo.html").read_text())
