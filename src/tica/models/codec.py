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
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..entropy import EntropyBottleneck, GaussianConditional, SymbolDecoder, SymbolEncoder
from ..entropy._ops import quantize
from ..errors import NotUpdatedError
from ..nn.conv import analysis, hyper_analysis, hyper_synthesis, nhwc
from ..nn.integer import INPUT_BITS, IntegerHyperSynthesis

Likelihoods = dict[str, torch.Tensor]


def pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom and right of (B, C, H, W) to a multiple of `multiple`."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


class CompressionModel(nn.Module):
    """g_a + mean-scale hyperprior + entropy models. Subclasses add what consumes y_hat."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.g_a = analysis(c.stages, 3, c.N, c.M, c.act)
        self.h_a = hyper_analysis(c.M, c.N)
        self.h_s = hyper_synthesis(c.N, c.M)
        self.entropy_bottleneck = EntropyBottleneck(c.N, tail_mass=c.tail_mass)
        self.gaussian_conditional = GaussianConditional(c.scale_min, c.scale_max,
                                                        c.scale_levels, c.tail_mass)
        self._int_h_s: IntegerHyperSynthesis | None = None
        self._fingerprint: bytes | None = None

    # ---- shapes -------------------------------------------------------------------------
    def latent_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of y for an image of (H, W): padded to the hyper stride, / 2^stages."""
        s, f = self.config.stride, 2 ** self.config.stages
        return (-(-image_size[0] // s) * s // f, -(-image_size[1] // s) * s // f)

    # ---- training path --------------------------------------------------------------------
    def encode_latent(self, x: torch.Tensor, entropy: bool = True
                      ) -> tuple[torch.Tensor, Likelihoods | None]:
        """x (B, 3, H, W) in [0, 1] -> (y as the ViT and decoder should see it, likelihoods).

        entropy=False is the paper's step 1: no hyperprior, no quantization.
        Training: the rate uses y + uniform noise; the networks see either that same noisy
        y or the straight-through rounded y (`latent_proxy`). Eval: round(y - mu) + mu, the
        value the decoder rebuilds.
        """
        # fp32 from here on even under bf16 autocast: rounding and rates need the precision
        y = self.g_a(nhwc(pad_to(x, self.config.stride))).float()
        if not entropy:
            return y, None
        z_hat, z_lik = self.entropy_bottleneck(self.h_a(y), "noise" if self.training else "round")
        scales, means = self.h_s(z_hat).float().chunk(2, dim=1)
        if self.training:
            y_rate = quantize(y, "noise")
            y_net = y_rate if self.config.latent_proxy == "noise" else quantize(y, "ste", means)
        else:
            y_rate = y_net = quantize(y, "round", means)
        y_lik = self.gaussian_conditional.likelihood(y_rate, scales, means)
        return y_net, {"y": y_lik, "z": z_lik}

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.aux_loss()

    # ---- coding ---------------------------------------------------------------------------
    @torch.no_grad()
    def update(self) -> None:
        """Build everything coding needs from the current weights: the integer coding tables,
        the integer copy of h_s and the model fingerprint. Call after training."""
        self.entropy_bottleneck.update()
        self.gaussian_conditional.update()
        self._refresh_coding_state()

    def _refresh_coding_state(self) -> None:
        self._int_h_s, self._fingerprint = None, None
        self.entropy_bottleneck.tables        # raise NotUpdatedError now if tables are empty
        self.gaussian_conditional.tables
        self._int_h_s = IntegerHyperSynthesis.build(self.h_s)

    @property
    def is_updated(self) -> bool:
        return self._int_h_s is not None

    def _require_update(self) -> IntegerHyperSynthesis:
        if self._int_h_s is None:
            raise NotUpdatedError("coding tables are not built: call model.update() after "
                                  "training, or load the model with tica.load()")
        return self._int_h_s

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the config and every tensor: the identity a bitstream is tied to."""
        self._require_update()
        if self._fingerprint is None:
            h = hashlib.sha256(self.config.to_json().encode())
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

    def _hyper_decode(self, z_int: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Integer z_hat -> (table indexes (B, M, h, w) int64, means float32), exactly."""
        params = self._require_update()(z_int)
        scales, means = params.chunk(2, dim=1)
        return self.gaussian_conditional.indexes(scales).numpy(), means.float()

    @torch.no_grad()
    def analyze(self, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
        """x -> (z_int, y indexes, means, y symbols): everything `compress` codes.
        y_hat = symbols + means is exactly what `decompress` returns."""
        self._require_update()
        y = self.g_a(nhwc(pad_to(x, self.config.stride)))
        limit = 2 ** INPUT_BITS - 1
        z_int = torch.round(self.h_a(y)).clamp(-limit, limit).cpu()
        indexes, means = self._hyper_decode(z_int)
        symbols = torch.round(y.float().cpu() - means)
        return z_int, indexes, means, symbols

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized latent y_hat the decoder will rebuild from compress(x)."""
        _, _, means, symbols = self.analyze(x)
        return symbols + means

    def _z_index(self, shape: tuple[int, ...]) -> np.ndarray:
        """Table index of each z element: its channel."""
        return np.broadcast_to(np.arange(shape[0])[:, None, None], shape)

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> list[bytes]:
        """x (B, 3, H, W) in [0, 1] -> one entropy-coded payload per image (z then y)."""
        z_int, indexes, _, symbols = self.analyze(x)
        z_np, y_np = z_int.long().numpy(), symbols.long().numpy()
        payloads = []
        for b in range(x.shape[0]):
            enc = SymbolEncoder()
            enc.encode(z_np[b], self._z_index(z_np[b].shape), self.entropy_bottleneck.tables)
            enc.encode(y_np[b], indexes[b], self.gaussian_conditional.tables)
            payloads.append(enc.finish())
        return payloads

    @torch.no_grad()
    def decompress(self, payloads: list[bytes], image_size: tuple[int, int]) -> torch.Tensor:
        """Payloads of images of one size -> y_hat (B, M, h, w) on the CPU, bit-exactly
        the encoder's. Raises BitstreamError on corrupt payloads."""
        self._require_update()
        h, w = self.latent_grid(image_size)
        z_shape = (self.config.N, h // 2, w // 2)
        z_index = self._z_index(z_shape)
        decoders = [SymbolDecoder(p) for p in payloads]
        z = [d.decode(z_index, self.entropy_bottleneck.tables).reshape(z_shape) for d in decoders]
        z_int = torch.from_numpy(np.stack(z)).double()
        indexes, means = self._hyper_decode(z_int)
        symbols = []
        for d, idx in zip(decoders, indexes):
            symbols.append(d.decode(idx, self.gaussian_conditional.tables).reshape(idx.shape))
            d.finish()
        return torch.from_numpy(np.stack(symbols)).float() + means

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._int_h_s, self._fingerprint = None, None
