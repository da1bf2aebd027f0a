"""The learned codec shared by tica and the hyperprior baseline: g_a, the mean-scale
hyperprior and the entropy models, with the CompressAI-style contract

    forward pieces (training: likelihoods) -> update() -> compress(x) -> decompress(...).

Data flow (Bai et al., 2022, Fig. 2; Minnen et al., 2018)::

    x -> pad -> g_a -> y -> h_a -> z -> round -> z_hat --(factorized density)--> bits
                       |                           |
                       |                 integer h_s (exact) -> (scales, means)
                       |                           |
                       +-- round(y - means) -------+--(Gaussian conditional)--> bits
                             y_hat = symbols + means   (what the ViT and g_s consume)

Variable rate (`rate_levels` = L > 0; gain units, Cui et al., "Asymmetric Gained Deep Image
Compression With Continuous Rate Adaptation", CVPR 2021): y is multiplied by a learned
per-channel gain before everything above and y_hat by an inverse gain after, one pair per
standard rate point (quality 1..L, 1 = lowest rate); a quality between two points takes the
exponential interpolation of their vectors. The gain only changes which symbols are written
and how y_hat is rescaled: the table indexes and means still come from z alone through the
exact integer h_s, so decoding stays bit-exact at any quality.

With `entropy_gain`, h_a reads the un-gained y and h_s predicts the un-gained latent's scale
and mean, which are then multiplied by the gain (as a quantisation step 1/gain would scale
them), so the tables follow the quality even where z carries little. Coding multiplies by the
gain rounded to 1/256 (`entropy_gain()`): an exact product of dyadic numbers, the same table
choice on every machine.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import nn

from .. import cost
from ..config import HS_ACT_BITS, HS_ACT_FRAC_BITS, HS_WEIGHT_BITS, ModelConfig
from ..entropy import EntropyBottleneck, GaussianConditional, quantize
from ..entropy.coder import MAX_ABS_VALUE
from ..entropy.payload import PayloadDecoder, clamp_z, encode_payloads, z_payloads
from ..errors import ConfigError, NotUpdatedError
from ..io import WeightsInfo
from ..nn.bands import pad_to, run_in_bands
from ..nn.conv import analysis, hyper_analysis, hyper_synthesis, nhwc
from ..nn.integer import IntegerHyperSynthesis, TablesAndMeans, quantized_h_s
from .points import between_points
from .refine import refine as refine_latents

Likelihoods = dict[str, torch.Tensor]
ENTROPY_GAIN_STEPS = 256    # entropy_gain models code with the gain rounded to 1/256


class CompressionModel(nn.Module):
    """g_a + mean-scale hyperprior + entropy models. Subclasses add what consumes y_hat."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.g_a = analysis(c.stages, 3, c.N, c.M, c.act, c.res_blocks)
        self.h_a = hyper_analysis(c.M, c.N)
        self.h_s = hyper_synthesis(c.N, c.M, c.hs_width, c.hs_kernel, c.hs_first_kernel,
                                   c.hs_mid_kernel)
        self.entropy_bottleneck = EntropyBottleneck(c.N, tail_mass=c.tail_mass)
        self.gaussian_conditional = GaussianConditional(c.scale_min, c.scale_max,
                                                        c.scale_levels, c.tail_mass)
        if c.rate_levels:
            # log gain and log inverse gain per standard rate point, (L, M). Initialised to a
            # spread of x8 from the lowest to the highest point, so each point starts at a
            # different rate rather than all at one.
            # (computed on the CPU and copied in place: math on meta tensors, where a
            # checkpoint's model is first built, imports torch's compiler)
            spread = torch.linspace(-1.5, 1.5, c.rate_levels, device="cpu").mul(math.log(2))
            self.log_gain = nn.Parameter(torch.empty(c.rate_levels, c.M))
            self.log_inv_gain = nn.Parameter(torch.empty(c.rate_levels, c.M))
            with torch.no_grad():
                for param, sign in ((self.log_gain, 1), (self.log_inv_gain, -1)):
                    param.copy_((sign * spread).to(param.device)[:, None].expand_as(param))
        self._int_h_s: IntegerHyperSynthesis | None = None
        self._fingerprint: bytes | None = None
        self.weights_info = WeightsInfo()       # what its checkpoint says (tica.checkpoint)

    # ---- shapes -------------------------------------------------------------------------
    def latent_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of y for an image of (H, W): padded to the hyper stride, / 2^stages."""
        s, f = self.config.stride, 2 ** self.config.stages
        return (-(-image_size[0] // s) * s // f, -(-image_size[1] // s) * s // f)

    # ---- cost (tica.cost): estimated from the config and the latent grid, before any work ----
    operations: tuple[str, ...] = ("encode", "decompress", "reconstruct")

    def cost(self, image_size: tuple[int, int], op: str, refine: int = 0) -> float:
        """Estimated GFLOP of `op` (one of `operations`) on one image of (H, W); "encode"
        with `refine` steps of refinement (tica.models.refine): each a forward and a backward
        (three forwards) of the float h_s and everything `decode_latent` runs."""
        if op not in self.operations:
            raise ConfigError(f"{self.config.name} cannot {op}; it can "
                              f"{', '.join(self.operations)}")
        grid = self.latent_grid(image_size)
        h_a, h_s = cost.hyper_flops(self.config, grid)
        flops = h_s + cost.coding_flops(self.config, grid)
        if op == "encode":
            flops += cost.analysis_flops(self.config, grid) + h_a
            if refine:
                decode = sum(self._latent_flops(o, grid) for o in self.operations
                             if o in ("classify", "reconstruct"))
                flops += refine * 3 * (h_s / cost.FLOAT64_WEIGHT + decode)    # float h_s
        elif op != "decompress":
            flops += self._latent_flops(op, grid)
        return flops / 1e9

    def _latent_flops(self, op: str, grid: tuple[int, int]) -> float:
        """FLOPs of what `op` runs on y_hat (h, w); subclasses that consume y_hat say."""
        raise NotImplementedError

    # ---- variable rate ----------------------------------------------------------------------
    @property
    def quality_range(self) -> tuple[float, float] | None:
        return self.config.quality_range

    def check_quality(self, quality: float | None) -> float | None:
        """The quality coding will use (`ModelConfig.coding_quality`: the one rule)."""
        return self.config.coding_quality(quality)

    def gains(self, quality: torch.Tensor, dtype: torch.dtype = torch.float32
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """quality (B,) in [1, L] -> (gain, inverse gain), each (B, M, 1, 1): log-linear
        interpolation between the two standard points around each quality."""
        low, t = between_points(quality.to(self.log_gain.device, dtype), self.config.rate_levels)
        t = t[:, None]

        def interpolate(table: torch.Tensor) -> torch.Tensor:
            table = table.to(dtype)
            return torch.exp((1 - t) * table[low] + t * table[low + 1])[:, :, None, None]

        return interpolate(self.log_gain), interpolate(self.log_inv_gain)

    @staticmethod
    def _gained(y: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        return y if gain is None else y.float() * gain

    def hyper_input(self, y: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        """What h_a reads from the un-gained y: y itself with `entropy_gain`, else y * gain."""
        return y if self.config.entropy_gain else self._gained(y, gain)

    def entropy_gain(self, quality: float | torch.Tensor | None, batch: int
                     ) -> torch.Tensor | None:
        """What coding multiplies h_s's scales and means by (`entropy_gain` models), (B, M,
        1, 1) float64: the gain, computed in float64 (a last-bit difference between machines'
        exp is then ~1e-16, far below the rounding step) and rounded to 1/256, so that
        scale * gain is an exact product of dyadic numbers and the table choice is the same
        on every machine. None otherwise."""
        if not (self.config.rate_levels and self.config.entropy_gain):
            return None
        if not torch.is_tensor(quality):
            quality = torch.full((batch,), self.check_quality(quality), dtype=torch.float64)
        with torch.no_grad():
            gain, _ = self.gains(quality.double(), torch.float64)
        return torch.round(gain.cpu() * ENTROPY_GAIN_STEPS) / ENTROPY_GAIN_STEPS

    def gain_pair(self, quality: float | torch.Tensor | None, batch: int
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(gain, inverse gain) for a batch at `quality` (a number, (B,) per image, or None for
        the model's default), each (B, M, 1, 1); (None, None) for a fixed-rate model."""
        if not self.config.rate_levels:
            return None, None
        if torch.is_tensor(quality):
            return self.gains(quality)
        # one quality: one image's gains, seen by every image (the same numbers, once)
        gain, inv_gain = self.gains(torch.full((1,), self.check_quality(quality)))
        return gain.expand(batch, -1, -1, -1), inv_gain.expand(batch, -1, -1, -1)

    # ---- training path --------------------------------------------------------------------
    def encode_latent(self, x: torch.Tensor, entropy: bool = True,
                      quality: float | torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, Likelihoods | None]:
        """x (B, 3, H, W) in [0, 1] -> (y as the ViT and decoder should see it, likelihoods).

        entropy=False is the paper's step 1: no hyperprior, no quantization.
        Training: the rates use y + uniform noise and z + uniform noise; the networks see
        either that same noisy y or the straight-through rounded y (`latent_proxy`), and h_s
        the noisy or the straight-through rounded z (`hyper_proxy`). Eval: round(y - mu) + mu, the
        value the decoder rebuilds. `quality` (a number or (B,) per image) picks the gain of a
        variable-rate model (default: the model's `quality`); step 1 uses no gain.
        """
        # fp32 from here on even under bf16 autocast: rounding and rates need the precision
        y = self.g_a(nhwc(pad_to(x, self.config.stride))).float()
        if not entropy:
            return y, None
        gain, inv_gain = self.gain_pair(quality, x.shape[0])
        y, scales, means, z_lik = self.hyperprior(y, gain)
        if self.training:
            y_rate = quantize(y, "noise")
            y_net = y_rate if self.config.latent_proxy == "noise" else quantize(y, "ste", means)
        else:
            y_rate = y_net = quantize(y, "round", means)
        y_lik = self.gaussian_conditional.likelihood(y_rate, scales, means)
        if inv_gain is not None:
            y_net = y_net * inv_gain
        return y_net, {"y": y_lik, "z": z_lik}

    def hyperprior(self, y: torch.Tensor, gain: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The un-gained latent y (float32) and its gain -> (the gained y that is coded, the
        Gaussian's scales and means for it, z's likelihoods): h_a, z's density and h_s, with
        the training proxies in training mode (`encode_latent`)."""
        z = self.h_a(self.hyper_input(y, gain))
        y = self._gained(y, gain)
        z_hat, z_lik = self.entropy_bottleneck(z, "noise" if self.training else "round")
        if self.training and self.config.hyper_proxy == "ste":
            z_hat = quantize(z.float(), "ste")
        scales, means = self.hyper_synthesis(z_hat).float().chunk(2, dim=1)
        if self.config.entropy_gain and gain is not None:
            scales, means = scales * gain, means * gain
        return y, scales, means, z_lik

    def hyper_synthesis(self, z_hat: torch.Tensor) -> torch.Tensor:
        """The float h_s as training and the float forward see it: as it is, or, for a model
        whose integer h_s is narrower than the default (ModelConfig.hs_format), quantized
        as that integer h_s is (tica.nn.integer.quantized_h_s)."""
        if self.config.hs_format == (HS_WEIGHT_BITS, HS_ACT_FRAC_BITS, HS_ACT_BITS):
            return self.h_s(z_hat)
        return quantized_h_s(self.h_s, z_hat, *self.config.hs_format)

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.aux_loss()

    # ---- coding ---------------------------------------------------------------------------
    @torch.no_grad()
    def update(self) -> None:
        """Build everything coding needs from the current weights: the integer coding tables,
        the integer copy of h_s and the model fingerprint. Call after training."""
        self.entropy_bottleneck.update()
        self.gaussian_conditional.update()
        self.refresh_coding_state()

    def refresh_coding_state(self) -> None:
        """The integer h_s and the fingerprint, from the coding tables the weights hold
        (update() builds the tables; loading a checkpoint brings them): NotUpdatedError if
        there are none yet."""
        self._int_h_s, self._fingerprint = None, None
        self.entropy_bottleneck.tables        # raise NotUpdatedError now if tables are empty
        self.gaussian_conditional.tables
        self._int_h_s = IntegerHyperSynthesis.build(self.h_s, *self.config.hs_format)

    @property
    def is_updated(self) -> bool:
        return self._int_h_s is not None

    def _require_update(self) -> IntegerHyperSynthesis:
        if self._int_h_s is None:
            raise NotUpdatedError("coding tables are not built: call model.update() after "
                                  "training, or load the model with tica.load()")
        return self._int_h_s

    @property
    def integer_h_s(self) -> IntegerHyperSynthesis:
        """The exact integer copy of h_s that coding runs (built by `update()`); integer z_hat
        (B, N, zh, zw) -> (scales, means) (B, 2M, h, w). NotUpdatedError before update()."""
        return self._require_update()

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the config and every tensor: the identity a bitstream is tied to."""
        self._require_update()
        if self._fingerprint is None:
            h = hashlib.sha256(self.config.identity_json().encode())
            for name, tensor in sorted(self.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.digest()
        return self._fingerprint

    @property
    def model_id(self) -> int:
        """16-bit id written into bitstreams (the first two bytes of the fingerprint)."""
        return int.from_bytes(self.fingerprint[:2], "big")

    def _hyper_decode(self, z_int: torch.Tensor, quality: float | None
                      ) -> tuple[np.ndarray, torch.Tensor]:
        """Integer z_hat -> (table indexes (B, M, h, w) int32 on the CPU, means float32),
        exactly; the integer h_s runs on the model's device (a GPU, or the CPU)."""
        device = self.coding_device
        # one quality for the batch: one row of gains; exact comparisons of exact scales
        keep = TablesAndMeans(self.gaussian_conditional.scale_bounds,
                              self.entropy_gain(quality, 1))
        picked = self._require_update()(z_int.to(device), then=keep)
        indexes, means = TablesAndMeans.split(picked)
        return indexes.cpu().numpy(), means

    @property
    def coding_device(self) -> torch.device:
        """Where the integer h_s runs: the model's CUDA device, else the CPU."""
        device = next(self.parameters()).device
        return device if device.type == "cuda" else torch.device("cpu")

    @torch.no_grad()
    def analyze(self, x: torch.Tensor, quality: float | None = None, refine: int = 0
                ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
        """x -> (z_int, y indexes, means, y symbols): everything `compress` codes.
        `dequantize(symbols + means)` is exactly what `decompress` returns. `refine` > 0:
        the latents refined by that many steps for each image (tica.models.refine)."""
        self._require_update()
        x = x.to(next(self.parameters()).device)
        quality = self.check_quality(quality)
        gain, _ = self.gain_pair(quality, x.shape[0])
        if refine:
            y, z = refine_latents(self, x, quality, refine)
        else:
            # bounded memory: padded and channels-last band by band, never the whole image
            y = run_in_bands(lambda band: self.g_a(nhwc(band)), x, geometry_of=self.g_a,
                             label="g_a", pad=self.config.stride)
            z = self.h_a(self.hyper_input(y, gain))
            y = self._gained(y, gain)
        z_int = clamp_z(z)
        indexes, means = self._hyper_decode(z_int, quality)
        symbols = torch.round(y.float().to(means.device) - means)
        return z_int.cpu(), indexes, means.cpu(), symbols.cpu()

    @torch.no_grad()
    def dequantize(self, y_gained: torch.Tensor, quality: float | None = None,
                   inplace: bool = False) -> torch.Tensor:
        """symbols + means -> y_hat as the ViT and g_s see it (the inverse gain applied;
        `inplace`: into y_gained itself, the same numbers without a second tensor)."""
        _, inv_gain = self.gain_pair(self.check_quality(quality), y_gained.shape[0])
        if inv_gain is None:
            return y_gained
        inv_gain = inv_gain.to(y_gained.device)
        return y_gained.mul_(inv_gain) if inplace else y_gained * inv_gain

    @torch.no_grad()
    def latent(self, x: torch.Tensor, quality: float | None = None) -> torch.Tensor:
        """The quantized latent y_hat the decoder will rebuild from compress(x, quality)."""
        _, _, means, symbols = self.analyze(x, quality)
        return self.dequantize(symbols + means, quality)

    @torch.no_grad()
    def compress(self, x: torch.Tensor, quality: float | None = None, refine: int = 0
                 ) -> list[bytes]:
        """x (B, 3, H, W) in [0, 1] -> one entropy-coded payload per image (tica.entropy.payload);
        `refine` steps of encoder-side refinement (tica.models.refine) first."""
        z_int, indexes, _, symbols = self.analyze(x, quality, refine)
        # int32 as the coder takes them (no int64 copies of a photo's latent): clamped first,
        # as the coder would clamp them
        symbols = symbols.clamp_(-MAX_ABS_VALUE, MAX_ABS_VALUE).int().numpy()
        return encode_payloads(z_int.int().numpy(), symbols, indexes,
                               self.entropy_bottleneck.tables, self.gaussian_conditional.tables)

    def z_bytes(self, payloads: list[bytes], image_size: tuple[int, int]) -> list[int]:
        """Bytes the hyper-latent z alone takes in each payload of images of one size (what
        the side information costs): z decoded from the payloads and coded alone."""
        self._require_update()
        h, w = self.latent_grid(image_size)
        tables = self.entropy_bottleneck.tables
        z = PayloadDecoder(payloads).decode_z((self.config.N, h // 2, w // 2), tables)
        return [len(p) for p in z_payloads(z, tables)]

    @torch.no_grad()
    def decompress(self, payloads: list[bytes], image_size: tuple[int, int],
                   quality: float | None = None) -> torch.Tensor:
        """Payloads of images of one size, coded at `quality` -> y_hat (B, M, h, w) on the
        coding device (`coding_device`), bit-exactly the encoder's. Raises BitstreamError on
        corrupt payloads."""
        self._require_update()
        h, w = self.latent_grid(image_size)
        reader = PayloadDecoder(payloads)
        z = reader.decode_z((self.config.N, h // 2, w // 2), self.entropy_bottleneck.tables)
        indexes, means = self._hyper_decode(torch.from_numpy(z), self.check_quality(quality))
        symbols = reader.decode_y(indexes, self.gaussian_conditional.tables)
        y = torch.from_numpy(symbols).to(means.device).float().add_(means)  # one new tensor
        return self.dequantize(y, quality, inplace=True)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._int_h_s, self._fingerprint = None, None
