"""The FastAPI application: classify straight from edge bitstreams, reconstruct them, encode
uploads, with bounded inputs, typed 4xx errors, micro-batching and Prometheus metrics.

    POST /v1/classify?top_k=5     tica bitstream -> JSON top-k classes of every image
    POST /v1/reconstruct?index=0  tica bitstream -> PNG of one image
    POST /v1/encode?model=M&quality=Q&refine=N  image file -> tica bitstream (no model:
                                  picked for the image by tica.api.choose_model, when
                                  serving "auto"; refine: up to --max-refine steps)
    GET  /v1/models  /healthz  /metrics  /  (demo page)  /docs  /openapi.json
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass

import torch
from fastapi import FastAPI

from .. import api
from ..bitstream import Stream
from ..entropy.parallel import set_threads as set_coder_threads
from ..errors import ConfigError, ModelMismatchError
from ..models import CompressionModel
from . import routes
from .batcher import MicroBatcher
from .config import ServeConfig
from .http import HTTPError, install_error_handlers, measure
from .metrics import Metrics


@dataclass
class Served:
    model: torch.nn.Module
    label: str


class ModelSet:
    """The shipped codec of each served preset (or the one --weights file), by stream id. With
    model "auto", the presets `api.choose_model` picks between, and encoding picks per image."""

    def __init__(self, config: ServeConfig, device: torch.device = torch.device("cpu")) -> None:
        self.auto = not config.weights and config.model == api.AUTO
        if config.weights:
            models = [api.load(weights=config.weights, device=device)]
        else:
            presets = api.AUTO_MODELS if self.auto else (config.model,)
            models = [api.load(preset, device=device) for preset in presets]
        for m in models:
            if not isinstance(m, CompressionModel):
                raise ConfigError(f"{m.config.name} classifies pixels and writes no stream: "
                                  "tica serve decodes bitstreams, so it serves a codec")
        self.presets = list(dict.fromkeys(m.config.name for m in models))
        self.by_id: dict[int, Served] = {}
        for m in models:
            if m.model_id in self.by_id:
                raise ConfigError(f"two served models share the stream id {m.model_id:04x} "
                                  f"({self.by_id[m.model_id].label} and {api.describe(m)}): "
                                  f"streams could not say which decodes them")
            # a variable-rate model codes at any quality: its label is its name
            self.by_id[m.model_id] = Served(m, api.describe(m) if m.config.quality_range is None
                                            else m.config.name)

    def for_stream(self, stream: Stream) -> Served:
        served = self.by_id.get(stream.model_id)
        if served is None:
            known = ", ".join(f"{i:04x} ({s.label})" for i, s in self.by_id.items())
            raise ModelMismatchError(f"this stream was written by model id {stream.model_id:04x}, "
                                     f"which this server does not serve; it serves {known}")
        return served

    def for_quality(self, quality: float | None, preset: str | None = None
                    ) -> tuple[Served, float | None]:
        """The model of `preset` (None: the first served one that codes at `quality`) and
        the quality it will code at (`ModelConfig.coding_quality`: None asks for its
        default)."""
        if preset is not None and preset not in self.presets:
            raise HTTPError(422, "UnknownModel", f"model {preset!r} is not served here; served: "
                            f"{', '.join(self.presets)}")
        refusals = []
        for served in self.by_id.values():
            if preset in (None, served.model.config.name):
                try:
                    return served, served.model.check_quality(quality)
                except ConfigError as exc:
                    refusals.append(str(exc))
        raise HTTPError(422, "UnknownQuality", "; ".join(refusals))

    def describe(self) -> list[dict]:
        out = []
        for i, s in self.by_id.items():
            config, info = s.model.config, s.model.weights_info
            rng = config.quality_range
            out.append({"id": f"{i:04x}", "model": s.label, "name": config.name,
                        "quality": info.quality, "quality_range": list(rng) if rng else None,
                        "default_quality": config.default_quality,
                        "qualities": config.standard_qualities or [info.quality],
                        "classifies": api.can_classify(s.model),
                        "untrained": info.untrained})
        return out


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


@asynccontextmanager
async def _lifespan(app: FastAPI):
    await app.state.batcher.start()
    yield
    await app.state.batcher.stop()


def create_app(config: ServeConfig = ServeConfig()) -> FastAPI:
    """The service over the models `config` names; routes in tica.serve.routes, errors and
    timing in tica.serve.http."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.coder_threads is not None:
        set_coder_threads(config.coder_threads)
    device = api.resolve_device(config.device)
    config = config.on_device(device.type)
    budget = config.budget                  # a bad --max-gflop fails here, at startup
    models = ModelSet(config, device)
    # no /docs or /redoc: both load their pages from a CDN; /openapi.json is the schema
    app = FastAPI(title="tica", version="1", lifespan=_lifespan, docs_url=None, redoc_url=None,
                  description=(
        "Classify images straight from tica bitstreams (no pixels are reconstructed), "
        "reconstruct them on demand, or encode an upload."))
    app.state.config, app.state.budget = config, budget
    app.state.models = models
    app.state.batcher = MicroBatcher(
        _execute(models), config.batch_window_ms, config.max_batch_images, config.batching,
        image_cost=_image_cost(models), max_gflop=config.max_batch_gflop,
        deadline_s=config.deadline_s)
    install_error_handlers(app)
    app.middleware("http")(measure)
    app.include_router(routes.router)
    app.state.metrics = Metrics({route.path for route in routes.router.routes}
                                | {app.openapi_url})
    return app
