"""What `tica serve` loads, what it accepts and how it schedules work: one dataclass, whose
fields are also the command's options (tica.cli reads their defaults and help from here).
Nothing here imports the web framework, so the CLI can build its parser without it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import api
from ..bitstream import Limits
from ..config import option
from ..cost import DEFAULT_MAX_GFLOP, Budget
from ..errors import ConfigError


# (images, GFLOP) of one micro-batch by device: on a CPU a batch of 50 GFLOP is ~0.5 s and
# keeps small requests' waits short; a GPU needs large batches to be busy (a CIFAR classify
# is ~0.3 GFLOP an image, a 224x224 photo ~1.3)
BATCH_LIMITS = {"cpu": (64, 50.0), "cuda": (1024, 5000.0)}


@dataclass(frozen=True)
class ServeConfig:
    """What the server loads and what it accepts. The limits bound memory and time per
    request: a stream is refused before anything is decoded or allocated from it, and one
    whose work (tica.cost) is over `max_gflop` before any of that work starts. `deadline_s`
    and `max_batch_gflop` keep the service fair under mixed load (tica.serve.batcher)."""

    model: str = option(api.AUTO, f"preset whose shipped weights to serve, or {api.AUTO!r}: "
                         f"{' and '.join(api.AUTO_MODELS)}, /v1/encode picking by image size "
                         f"as `tica encode` does")
    weights: str | None = option(None, "serve this checkpoint instead", metavar="FILE")
    device: str = option("auto", "where the networks run: auto is a CUDA GPU when one is "
                          "visible, else the CPU; entropy coding runs on the coder threads",
                          choices=api.DEVICES)
    coder_threads: int | None = option(None, "threads for entropy coding, shared by every "
                                        "request (default: $TICA_CODER_THREADS, else the cores "
                                        "available)")
    batching: bool = option(True, "merge concurrent requests into micro-batches")
    batch_window_ms: float = option(2.0, "wait this long for more requests to batch (0: batch "
                                     "only what queued up while the last batch ran)")
    max_batch_images: int | None = option(
        None, f"images in one micro-batch (default {BATCH_LIMITS['cpu'][0]} on the CPU, "
              f"{BATCH_LIMITS['cuda'][0]} on a GPU)")
    max_batch_gflop: float | None = option(
        None, "estimated GFLOP of one micro-batch; a request over it runs apart from the small "
              "ones, in pieces of at most this (one image if an image costs more); default "
              f"{BATCH_LIMITS['cpu'][1]:g} on the CPU, {BATCH_LIMITS['cuda'][1]:g} on a GPU")
    deadline_s: float = option(30.0, "seconds a request's work may take, queueing included; "
                                "later it gets a 504 and work not yet started is dropped")
    max_body_bytes: int = option(8 << 20, "bytes of a bitstream (8 MiB: a 12-Mpixel photo's "
                                  "stream at the top quality, or ~16,000 CIFAR streams)")
    max_upload_bytes: int = option(8 << 20, "bytes of an image file to encode")
    max_side: int = option(4096, "pixels of an image's longer side")
    max_pixels: int = option(1 << 24, "pixels of one image (16 Mpixel: a phone's 12-Mpixel "
                              "photograph; its work is bounded by --max-gflop too)")
    max_images: int = option(64, "images in one stream")
    max_gflop: float = option(DEFAULT_MAX_GFLOP, "estimated GFLOP one request may ask for "
                               "(tica.cost), refused with a 413 before any work; the default "
                               "holds a max_pixels photograph with tica-photo")
    max_refine: int = option(0, "encoder-side refinement steps a /v1/encode may ask for "
                              "(`refine=N`, as `tica encode --refine`); their work counts "
                              "against --max-gflop too. 0: refinement refused")
    threads: int | None = option(None, "torch threads per worker (default: torch's choice)")

    def __post_init__(self) -> None:
        if self.max_refine < 0:
            raise ConfigError(f"max_refine (tica serve --max-refine) must be >= 0, got "
                              f"{self.max_refine}")
        for name in ("deadline_s", "max_batch_gflop"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"{name} (tica serve --{name.replace('_', '-')}) must be a "
                                  f"positive number (inf: unbounded), got {getattr(self, name)}")

    def on_device(self, kind: str) -> "ServeConfig":
        """This config with the micro-batch limits it left unset filled in for a device kind
        ("cpu" or "cuda")."""
        images, gflop = BATCH_LIMITS[kind]
        return replace(self, max_batch_images=self.max_batch_images or images,
                       max_batch_gflop=self.max_batch_gflop or gflop)

    @property
    def limits(self) -> Limits:
        return Limits(max_side=self.max_side, max_pixels=self.max_pixels,
                      max_images=self.max_images, max_total_pixels=self.max_pixels * self.max_images)

    @property
    def budget(self) -> Budget:
        return Budget(self.max_gflop)


@dataclass(frozen=True)
class Listen:
    """Where `tica serve` listens and how many worker processes it starts."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "TCP port")
    workers: int = option(1, "worker processes (each loads the models)")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
