"""The FastAPI application: classify straight from edge bitstreams, reconstruct them, encode
uploads, with bounded inputs, typed 4xx errors, micro-batching and Prometheus metrics.

    POST /v1/classify?top_k=5     tica bitstream -> JSON top-k classes of every image
    POST /v1/reconstruct?index=0  tica bitstream -> PNG of one image
    POST /v1/encode?model=M&quality=Q  image file -> tica bitstream (no model: picked for
                                  the image by tica.api.choose_model, when serving "auto")
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
from ..registry import read_manifest
from . import routes
from .batcher import MicroBatcher
from .config import ServeConfig
from .http import HTTPError, install_error_handlers, measure
from .metrics import Metrics


@dataclass
class Served:
    model: torch.nn.Module
    label: str
    quality: int | None                   # a fixed-rate model's rate point


def _shipped(preset: str, device: torch.device) -> list[torch.nn.Module]:
    """Every shipped codec of a preset (its rate points), else its one default model."""
    entries = [e for e in read_manifest() if e.preset == preset and e.role == "codec"]
    return ([api.load(weights=e.file, device=device) for e in entries] if entries
            else [api.load(preset, device=device)])


class ModelSet:
    """Every shipped codec of the served preset(s) (or the one --weights file), by stream id:
    a variable-rate model codes every quality in its range, fixed-rate ones one each. With
    model "auto", the presets `api.choose_model` picks between, and encoding picks per image."""

    def __init__(self, config: ServeConfig, device: torch.device = torch.device("cpu")) -> None:
        self.auto = not config.weights and config.model == api.AUTO
        if config.weights:
            models = [api.load(weights=config.weights, device=device)]
        else:
            presets = api.AUTO_MODELS if self.auto else (config.model,)
            models = [m for preset in presets for m in _shipped(preset, device)]
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
            rng = s.model.quality_range
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
        rng = served.model.quality_range
        if rng is not None and (quality is None or rng[0] <= quality <= rng[1]):
            return served, served.model.check_quality(quality)
    fixed = [s for s in candidates if s.model.quality_range is None]
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
    app.state.models, app.state.metrics = models, Metrics()
    app.state.batcher = MicroBatcher(
        _execute(models), config.batch_window_ms, config.max_batch_images, config.batching,
        image_cost=_image_cost(models), max_gflop=config.max_batch_gflop,
        deadline_s=config.deadline_s)
    install_error_handlers(app)
    app.middleware("http")(measure)
    app.include_router(routes.router)
    return app
