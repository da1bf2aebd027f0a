"""Configuration dataclasses. A `ModelConfig` is saved inside every checkpoint, so a model
is rebuilt from the file alone (nanoGPT-style)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
# Imagenette's ten ImageNet classes, in label order (sorted folder names)
IMAGENETTE_LABELS = (
    "cassette_player", "chain_saw", "church", "english_springer", "french_horn",
    "garbage_truck", "gas_pump", "golf_ball", "parachute", "tench",
)

# the architectures' names, here so that ModelConfig checks them without importing the
# models: tica.registry maps each to its class
ARCHS = ("tica", "vit-pixel", "hyperprior", "cnn")
DEFAULT_MODEL = "tica-cifar"        # the preset `tica` and TrainConfig use when none is named
STEPS = (1, 2)                      # the paper's two training steps
OPTIMIZERS = ("adamw", "adam")
LR_SCHEDULES = ("cosine", "wsd")    # tica.losses.schedule_lr
AUGMENTS = ("crop", "resized")      # tica.data.augmenter
DEFAULT_EPOCH_SIZE = 10000          # photo folders: random crops per training epoch
SHARD_IMAGES = 10000                # images per WebDataset shard (tica shards)
TOP_K = 5                           # classes a classification answer lists unless asked
# z_hat is clamped to (-2^12, 2^12): what a payload codes (tica.entropy) and what the integer
# h_s accepts (tica.nn.integer), written once below both
Z_INPUT_BITS = 12
# the integer h_s's fixed point (tica.nn.integer): weights below 2^14 per output channel,
# hidden activations in steps of 2^-8 below 2^20 / 2^8 (what every model before these
# fields were configurable computes); a model may narrow them (ModelConfig.hs_*)
HS_WEIGHT_BITS, HS_ACT_FRAC_BITS, HS_ACT_BITS = 14, 8, 20
ACTIVATIONS = ("leaky_relu", "gdn", "gelu")
LATENT_PROXIES = ("noise", "ste")
MAX_RATE_LEVELS = 16
MAX_SCALE_LEVELS = 1024             # the Gaussian conditional's scales, one coding table each
QUALITY_STEPS = 16                  # a stream records quality to 1/16: code = round((q - 1) * 16)


def quality_code(quality: float) -> int:
    """The integer a stream stores for `quality` (>= 1)."""
    return int(round((float(quality) - 1.0) * QUALITY_STEPS))


def quality_from_code(code: int) -> float:
    return 1.0 + code / QUALITY_STEPS


# ModelConfig fields newer than the first weights, at their neutral value
_LATER_FIELDS = {"rate_levels": 0, "res_blocks": 0, "hyper_proxy": "noise", "entropy_gain": False,
                 "distill_token": False, "hs_weight_bits": HS_WEIGHT_BITS,
                 "hs_act_frac_bits": HS_ACT_FRAC_BITS, "hs_act_bits": HS_ACT_BITS,
                 "hs_mid": 0, "hs_kernel": 3, "hs_first_kernel": 5,
                 "hs_mid_kernel": 5}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model of the tica family.

    `arch` picks the network: "tica" (codec + compressed-domain ViT + FAM + decoder),
    "vit-pixel" (the same ViT on pixel patches), "hyperprior" (the same codec, decoder
    on the latent, no ViT) or "cnn" (a fast convolutional classifier on pixels: the teacher
    the ViTs distil from; `stages` stride-2 convolutions first, widths N and M).
    """

    name: str
    arch: str = "tica"
    img_size: int = 32              # training resolution; sets the position-embedding grid
    num_classes: int = 10
    labels: tuple[str, ...] = CIFAR10_LABELS
    # codec (SPEC 1): g_a/g_s depth and widths
    stages: int = 2                 # stride-2 convolutions in g_a (latent is 2^stages smaller)
    N: int = 128
    M: int = 192
    act: str = "leaky_relu"
    res_blocks: int = 0             # residual 3x3 blocks after each inner resampling layer
    # Vision Transformer
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    patch_size: int = 4             # vit-pixel only: side of a pixel patch
    # DeiT's distillation token: a second class token with a head of its own that learns the
    # teacher's labels (TrainConfig.teacher); a prediction is the mean of the two heads'
    distill_token: bool = False
    # feature aggregation module: sources are the projected tokens and these blocks (1-based)
    fam: bool = True
    fam_blocks: tuple[int, ...] = (1, 2, 3)
    # training proxy for rounding, as seen by the ViT and the decoder
    latent_proxy: str = "ste"
    # training proxy for rounding z as h_s sees it ("noise": z + U(-1/2, 1/2), the rate's own
    # proxy; "ste": rounded, identity gradient, so h_s trains on the z_hat it decodes from);
    # the rate of z always uses the noise proxy
    hyper_proxy: str = "noise"
    # variable rate (gain units, Cui et al. 2021): 0 = one fixed rate; L >= 2 = L standard
    # rate points (quality 1 = lowest rate .. L), any quality in [1, L] by interpolation
    rate_levels: int = 0
    # variable rate: whether the Gaussian's scale and mean follow the gain (h_a reads the
    # un-gained y, h_s predicts its mean and scale, and both are multiplied by the gain, as a
    # quantisation step would). Without it h_s must learn each quality's scales from z alone.
    entropy_gain: bool = False
    # the integer h_s the decoder runs (tica.nn.integer): |weights| below 2^hs_weight_bits,
    # hidden activations in steps of 2^-hs_act_frac_bits below 2^hs_act_bits of them. At 7,
    # 5, 7 every value is one int8 digit and a layer one int8 product (about 3x faster than
    # the default); a model trained with narrower ones sees them in training (the float h_s
    # quantized as the integer one is, straight-through gradients)
    hs_weight_bits: int = HS_WEIGHT_BITS
    hs_act_frac_bits: int = HS_ACT_FRAC_BITS
    hs_act_bits: int = HS_ACT_BITS
    # h_s's shape: the width of its hidden layer after the transposed convolution (0: 3M/2),
    # the kernel of its last layer (3), of its first (5, on z) and of the transposed one (5,
    # stride 2). The decoder's integer h_s is most of its time on a CPU: the shipped
    # tica-cifar's, 96 wide with a 3x3 first, a 3x3 transposed and a 1x1 last layer, costs
    # 4.3 M multiply-adds an image where the default shape costs 26.4 M
    hs_mid: int = 0
    hs_kernel: int = 3
    hs_first_kernel: int = 5
    hs_mid_kernel: int = 5
    # entropy models
    scale_min: float = 0.11
    scale_max: float = 256.0
    scale_levels: int = 64
    tail_mass: float = 1e-9

    def __post_init__(self) -> None:
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.act not in ACTIVATIONS:
            problems.append(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        for key in ("latent_proxy", "hyper_proxy"):
            if getattr(self, key) not in LATENT_PROXIES:
                problems.append(f"{key} must be one of {LATENT_PROXIES}")
        if not (0 if self.arch == "cnn" else 1) <= self.stages <= 6:
            problems.append("stages must be between 1 and 6 (a cnn's: 0 and 6)")
        for key in ("img_size", "num_classes", "N", "M", "embed_dim", "depth", "num_heads",
                    "patch_size", "scale_levels"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be positive")
        if not 0 <= self.res_blocks <= 8:
            problems.append("res_blocks must lie in 0..8")
        if self.embed_dim % max(self.num_heads, 1):
            problems.append("embed_dim must be divisible by num_heads")
        if self.labels and len(self.labels) != self.num_classes:
            problems.append(f"labels has {len(self.labels)} names for {self.num_classes} classes")
        if self.fam and any(not 1 <= b <= self.depth for b in self.fam_blocks):
            problems.append(f"fam_blocks must lie in 1..depth={self.depth}")
        if self.img_size % (2 ** (self.stages + 1)) and self.arch != "vit-pixel":
            problems.append(f"img_size must be a multiple of 2^(stages+1)={2 ** (self.stages + 1)}")
        if self.rate_levels == 1 or not 0 <= self.rate_levels <= MAX_RATE_LEVELS:
            problems.append(f"rate_levels must be 0 (fixed rate) or 2..{MAX_RATE_LEVELS}")
        if self.scale_levels > MAX_SCALE_LEVELS:
            problems.append(f"scale_levels must lie in 1..{MAX_SCALE_LEVELS}")
        if not 0 < self.scale_min < self.scale_max:
            problems.append("need 0 < scale_min < scale_max")
        if not 2 <= self.hs_weight_bits <= HS_WEIGHT_BITS:
            problems.append(f"hs_weight_bits must lie in 2..{HS_WEIGHT_BITS}")
        if not 1 <= self.hs_act_bits <= HS_ACT_BITS or not 0 <= self.hs_act_frac_bits <= self.hs_act_bits:
            problems.append(f"need 1 <= hs_act_bits <= {HS_ACT_BITS} and 0 <= hs_act_frac_bits <= "
                            f"hs_act_bits")
        if self.hs_mid < 0 or {self.hs_kernel, self.hs_first_kernel} - {1, 3, 5}:
            problems.append("hs_mid must be 0 (3M/2) or positive, hs_kernel and "
                            "hs_first_kernel 1, 3 or 5")
        if self.hs_mid_kernel not in (3, 5):        # odd, to double the grid exactly
            problems.append("hs_mid_kernel (the transposed layer's) must be 3 or 5")
        if self.distill_token and self.arch not in ("tica", "vit-pixel"):
            problems.append("distill_token needs a Vision Transformer (arch tica or vit-pixel)")
        if problems:
            raise ConfigError(f"invalid config {self.name!r}: " + "; ".join(problems))

    # ---- rate points: the one rule every caller (API, CLI, server, evaluation) goes through --
    @property
    def quality_range(self) -> tuple[float, float] | None:
        """[lowest, highest] quality of a variable-rate codec; None for a fixed-rate one."""
        return (1.0, float(self.rate_levels)) if self.rate_levels else None

    @property
    def default_quality(self) -> float | None:
        """The quality a variable-rate codec codes at when none is asked: the standard point
        three quarters of the way up its range (6 of 8), where a learned codec's
        rate-accuracy and rate-distortion curves have flattened, at a fraction of the highest
        point's rate. None at a fixed rate."""
        L = self.rate_levels
        return float(1 + round(0.75 * (L - 1))) if L else None

    @property
    def standard_qualities(self) -> list[int]:
        """The named rate points, lowest rate first (none at a fixed rate)."""
        return list(range(1, self.rate_levels + 1))

    def coding_quality(self, quality: float | None) -> float | None:
        """The quality a codec of this config codes at when asked for `quality` (None: its
        default), snapped to the stream's 1/16 grid. ConfigError if out of range, or given to
        a fixed-rate codec (it codes at the one rate it was trained for)."""
        if quality is None:
            return self.default_quality
        rng = self.quality_range
        if rng is None:
            raise ConfigError(f"{self.name} is a fixed-rate model: it takes no quality")
        q = float(quality)
        if not rng[0] <= q <= rng[1]:
            raise ConfigError(f"quality {q:g} is outside {self.name}'s range "
                              f"{rng[0]:g}..{rng[1]:g} (1 = lowest rate)")
        return quality_from_code(quality_code(q))

    @property
    def hs_format(self) -> tuple[int, int, int]:
        """The integer h_s's (weight bits, activation fraction bits, activation bits)."""
        return self.hs_weight_bits, self.hs_act_frac_bits, self.hs_act_bits

    @property
    def hs_width(self) -> int:
        """The width of h_s's hidden layer after its transposed convolution."""
        return self.hs_mid or self.M * 3 // 2

    @property
    def stride(self) -> int:
        """Total downsampling of the hyper-latent: inputs are padded to a multiple of it."""
        return 2 ** (self.stages + 1) if self.arch != "vit-pixel" else self.patch_size

    @property
    def latent_grid(self) -> tuple[int, int]:
        side = self.img_size // (2 ** self.stages if self.arch != "vit-pixel" else self.patch_size)
        return side, side

    def replace(self, **overrides: Any) -> "ModelConfig":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s) {sorted(unknown)}; see tica.config.ModelConfig")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def identity_json(self) -> str:
        """The config as a model's fingerprint hashes it: fields added after version 1 are
        left out at their neutral value, so existing weights keep their stream ids."""
        data = self.to_dict()
        for key, neutral in _LATER_FIELDS.items():
            if data[key] == neutral:
                del data[key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError("a model config must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown config field(s) {sorted(unknown)}: written by a newer tica?")
        values = dict(data)
        for key in ("labels", "fam_blocks"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"bad model config: {exc}") from None


def option(default: Any = None, help: str = "", **cli: Any):
    """A config field that the CLI offers as --NAME-WITH-DASHES (`tica train` for
    TrainConfig, `tica serve` for ServeConfig; tica.cli reads type, default and help from
    it); `cli` holds extra argparse settings (choices, metavar)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class TrainConfig:
    """One training run; written, resolved, to `run_dir/config.json`.

    step 1: the network without entropy model or quantization, loss alpha*CE + beta*MSE.
    step 2: from `init` (step-1 weights), everything jointly on alpha*CE + beta*MSE + R,
    plus the factorized density's auxiliary loss (SPEC 2). MSE is on the 0-255 scale, R in
    bits per pixel. The fields with help are `tica train`'s options.
    """

    model: str = option(DEFAULT_MODEL, "preset to build (ignored with --init)")
    step: int = option(1, "the paper's training step", choices=STEPS)
    data: str | None = option(None, "ImageFolder dir, .tar.gz archive, photo folder, or "
                               "'synthetic'")     # no default: the CLI resolves $TICA_DATA
    run_dir: str | None = None         # where the run writes; training needs one (no default)
    init: str | None = option(None, "start from these weights (step 2: the step-1 export); "
                               "'step1' takes the step-1 network shipped for --model, "
                               "'shipped' the model it ships, to train on from there")
    model_overrides: dict = field(default_factory=dict)
    quality: int | None = option(None, "rate-point label stored with the weights")
    epochs: float = option(6.0, "passes over the training data")
    max_steps: int | None = option(None, "stop early (tests, smoke runs)")
    batch_size: int = option(128, "global batch size, split across processes")
    lr: float = option(1e-3, "peak learning rate")
    lr_schedule: str = option("cosine", "after the warm-up: cosine decay, or wsd (hold the "
                              "peak, anneal over the last fifth: for runs that continue "
                              "trained weights)", choices=LR_SCHEDULES)
    min_lr_ratio: float = 0.01
    warmup_steps: int = option(300, "linear warm-up of the learning rate")
    weight_decay: float = option(0.05, "AdamW weight decay of the weights")
    aux_lr: float = 1e-3
    hyper_lr: float | None = option(None, "lr of h_a, h_s, densities (unset: --lr); step 2 "
                                     "starts them from scratch, so they may want more")
    grad_clip: float = 1.0
    alpha: float = option(1.0, "CE weight (variable rate: of the lowest point)")
    beta: float = option(1e-3, "MSE weight (variable rate: of the lowest point)")
    # variable-rate models (rate_levels L > 0), step 2: alpha and beta are the weights of the
    # lowest rate point, these of the highest; the L points between are geometric, and each
    # training image draws its point at random
    alpha_max: float | None = option(None, "variable rate (--set rate_levels=L): CE weight of "
                                      "the highest point")
    beta_max: float | None = option(None, "variable rate: MSE weight of the highest point")
    label_smoothing: float = 0.1
    augment: str = option("crop", "labelled training images: crop (a random crop of the image "
                          "padded by 4, and a flip) or resized (a random crop of min_area..1 of "
                          "the area, aspect 3/4..4/3, scaled back to size, and a flip: DeiT's, "
                          "for a ViT that overfits a small split)", choices=AUGMENTS)
    min_area: float = option(0.35, "augment=resized: the smallest share of the image a crop keeps")
    # distillation (DeiT, hard labels): the classification loss is (1 - distill) * CE(labels)
    # + distill * CE(the teacher's top class), the teacher frozen, on the same images
    teacher: str | None = option(None, "distil from this classifier (weights file; a fast "
                                 "CNN such as the teacher-cifar preset)")
    distill: float = option(0.5, "with --teacher: the share of the classification loss "
                            "taken from the teacher's labels")
    ema: float = option(0.0, "EMA decay per step (0: off)")
    latent_std: float | None = option(2.0, "step 2: rescale the step-1 latent to this std first")
    rate_warmup_steps: int = option(0, "step 2: ramp the rate term's weight from 0 to 1 over "
                                     "these steps")
    z_rate_warmup_steps: int = option(0, "step 2: ramp the weight of the hyper-latent z's rate "
                                       "from 0 to 1 over these steps, so that z learns to carry "
                                       "the scales before it pays for them")
    optimizer: str = option("adamw", "adamw (step 1, DeiT) or adam (step 2, paper)",
                             choices=OPTIMIZERS)
    seed: int = option(0, "seeds the initial weights, the data order and every draw")
    device: str = option("cpu", "cpu or cuda")
    compile: bool = option(False, "torch.compile the training step (a GPU at large batch: "
                                  "several times the images/s; the first steps compile)")
    bf16: bool = option(True, "autocast to bfloat16 where the device computes it natively "
                              "(tica.train.distributed.native_bf16 asks the device)")
    checkpoint_every: int = option(200, "save the training state every this many steps (and "
                                    "at every epoch end)")
    log_every: int = 20
    eval_images: int = option(2000, "test images scored at each epoch end (0: none)")
    train_limit: int | None = option(None, "use a class-balanced subset of the training split")
    epoch_size: int = option(DEFAULT_EPOCH_SIZE, "photo folders: random crops per epoch")
    progress: bool = option(True, "show a progress bar")
    # wall clock, for runs with a time limit (a batch job, a spot instance; the plans set these)
    deadline_s: float | None = option(None, "stop after S seconds of wall time, then save and "
                                       "export", metavar="S")   # counted from clock_start, else
                                                                # from the run's start
    clock_start: float | None = None          # Unix time the deadline counts from (a plan's start)
    schedule_by_deadline: bool = option(False, "end the learning-rate schedule at the deadline "
                                         "if that comes before the last step (one process)")
    export_every_s: float | None = option(None, "also export the weights every S seconds "
                                           "(coding-ready after step 2)", metavar="S")
    export_dir: str | None = option(None, "write a float16 copy of every export to "
                                     "DIR/model.safetensors", metavar="DIR")
    resumable: bool = True                    # write the training state; False: a one-shot run

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ConfigError("step must be 1 or 2")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer must be adamw or adam")
        if not 0 <= self.distill <= 1:
            raise ConfigError("distill must lie in [0, 1]")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {AUGMENTS}")
        if not 0 < self.min_area <= 1:
            raise ConfigError("min_area must lie in (0, 1]")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}")
        if self.batch_size < 1 or self.epochs <= 0:
            raise ConfigError("batch_size and epochs must be positive")
        for lo, hi in ((self.alpha, self.alpha_max), (self.beta, self.beta_max)):
            if hi is not None and (lo <= 0) != (hi <= 0):
                raise ConfigError("alpha/beta and alpha_max/beta_max must both be positive or both 0")

    def rate_points(self, levels: int) -> list[tuple[float, float]]:
        """(alpha, beta) of each of `levels` standard rate points, lowest rate first:
        geometric from (alpha, beta) to (alpha_max, beta_max)."""
        def ramp(lo: float, hi: float | None) -> list[float]:
            if hi is None or levels < 2 or lo <= 0:
                return [lo if hi is None or lo > 0 else 0.0] * levels
            return [lo * (hi / lo) ** (i / (levels - 1)) for i in range(levels)]

        return list(zip(ramp(self.alpha, self.alpha_max), ramp(self.beta, self.beta_max)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown train config field(s) {sorted(unknown)}")
        return cls(**data)
