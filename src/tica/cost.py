"""What an image costs a model, known before any work, and the budget a request is held to.

Every model says what one image of (H, W) costs each of its operations (`model.cost(size,
op)`), in GFLOP estimated from its config and latent grid alone: no forward pass, no
allocation, microseconds. The library, the CLI and the server add that up over a stream's
images (the sizes are in its header) and refuse a stream whose total is over the `Budget`
before decoding anything.

Operations::

    encode       g_a, h_a, the integer h_s, entropy coding of z and y
    decompress   entropy decoding and the integer h_s: y_hat
    classify     decompress, then the latent tokens through every ViT block and the head
    reconstruct  decompress, then the ViT blocks the FAM reads, the FAM and g_s

How it counts: a convolution is 2 * pixels * C_in * C_out * k^2 FLOPs (output pixels; a
transposed convolution's input pixels, or its polyphase equivalent where it runs as one); a Transformer block on n tokens of width D is
2n(4 + 2r)D^2 for its linear layers plus 4n^2 D for attention (QK^T and AV), the term that
grows with the square of the image's area and would make a large grid of tokens the costly
case, were it not for windowed attention past a few times the trained grid (linear again);
the exact integer h_s (float64) counts `FLOAT64_WEIGHT` times its FLOPs and one entropy-coded
symbol `SYMBOL_FLOPS`, the float32 work that takes as long. GDN and residual blocks are counted;
normalisations, activations and the softmax are not (a few percent). Against
`torch.utils.flop_counter` the estimate is exact for the convolutions and linear layers
(tests/test_budget.py), and its ratio to measured time stays within 2x across models, image
sizes and operations (the numbers by DEFAULT_MAX_GFLOP).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from .config import ModelConfig
from .errors import BudgetError, ConfigError
from .nn.conv import ConvTranspose2d

_VERBS = {"encode": "encoding", "decompress": "entropy-decoding", "classify": "classifying",
          "reconstruct": "reconstructing"}

# Work that is not float32 convolution, in float32-convolution FLOPs that take as long on a
# CPU. Measured with one thread: 5x5 convolutions run at 100-230 GFLOP/s, the integer h_s
# (exact float64 convolutions) at 25-50. A symbol is counted as 50 ns of coding, the slow end
# (the rANS kernel codes one in 7-11 ns, benchmarks/throughput.py): a bound, not a forecast.
FLOAT64_WEIGHT = 3.0
SYMBOL_FLOPS = 5000.0

# The default budget, in GFLOP per stream (or per encode call: encoding and every operation
# on the stream it writes), and why. Estimates, and seconds measured with one thread of a
# 2-core machine that other work shared (80-150 GFLOP/s for every model, size and operation):
#   tica-cifar, a 32x32 image: encode 0.44, classify 0.31, reconstruct 0.51; 64 of them (the
#     server's image limit): classify 20; 64 at 64x64: 86.
#   tica-photo, a 768x512 Kodak photo: encode 46, classify 28, reconstruct 55 (0.38 s);
#     2048x1536: reconstruct 745 (6.9 s) with global attention; a 4-Mpixel photo (2048x2048)
#     in attention windows: classify 248, reconstruct 548 (1,049 and 1,148 with global
#     attention); a phone's 12-Mpixel photo (4000x3000): classify 683, reconstruct 1,550.
#   tica-cifar, 1024x1024 (65,536 tokens): with global attention classify 9,105, in windows
#     319; a 4-Mpixel image in windows: classify 1,276, reconstruct 2,077.
# 2,000 holds a phone's 12-Mpixel photograph with tica-photo and every CIFAR batch, admits a
# 1024x1024 CIFAR-model stream, and refuses several 4-Mpixel images through tica-cifar.
# What it admits takes up to about 30 s on the 2-core machine, the server's
# default deadline: a 2000x2000 tica-cifar stream (1,224 GFLOP to classify) answered in
# 17.9 s beside 200 small requests (docs/benchmarks/load_mixed.md), about 70 GFLOP/s.
DEFAULT_MAX_GFLOP = 2000.0


def conv_flops(pixels: int, cin: int, cout: int, kernel: int) -> float:
    """A k x k convolution evaluated at `pixels` positions."""
    return 2.0 * pixels * cin * cout * kernel * kernel


def _stage_extras(config: ModelConfig, pixels: int, channels: int) -> float:
    """What follows an inner resampling layer of g_a / g_s: GDN (a 1x1 convolution of the
    squares) and the residual blocks (two 3x3 convolutions each)."""
    gdn = conv_flops(pixels, channels, channels, 1) if config.act == "gdn" else 0.0
    return gdn + config.res_blocks * 2 * conv_flops(pixels, channels, channels, 3)


def analysis_flops(config: ModelConfig, grid: tuple[int, int]) -> float:
    """g_a: `stages` stride-2 5x5 convolutions, 3 -> N ... N -> M, ending on the latent grid."""
    c, (h, w) = config, grid
    widths = [3] + [c.N] * (c.stages - 1) + [c.M]
    total = 0.0
    for i in range(c.stages):
        scale = 2 ** (c.stages - 1 - i)                   # output of layer i, in latent cells
        pixels = h * w * scale * scale
        total += conv_flops(pixels, widths[i], widths[i + 1], 5)
        if i < c.stages - 1:
            total += _stage_extras(c, pixels, widths[i + 1])
    return total


def synthesis_flops(config: ModelConfig, cin: int, grid: tuple[int, int]) -> float:
    """g_s: `stages` stride-2 5x5 transposed convolutions from the latent grid, cin -> N ... -> 3;
    a layer to few channels runs as its polyphase 3x3 equivalent (tica.nn.conv.ConvTranspose2d)."""
    c, (h, w) = config, grid
    widths = [cin] + [c.N] * (c.stages - 1) + [3]
    total = 0.0
    for i in range(c.stages):
        pixels = h * w * 4 ** i                           # input of layer i
        if widths[i + 1] <= ConvTranspose2d.POLYPHASE_MAX_OUT:
            total += conv_flops(pixels, widths[i], 4 * widths[i + 1], 3)
        else:
            total += conv_flops(pixels, widths[i], widths[i + 1], 5)
        if i < c.stages - 1:
            total += _stage_extras(c, 4 * pixels, widths[i + 1])
    return total


def hyper_flops(config: ModelConfig, grid: tuple[int, int]) -> tuple[float, float]:
    """(h_a, h_s) on a latent grid (h, w) and the hyper-latent grid (h/2, w/2); h_s as the
    decoder runs it, in float64 (FLOAT64_WEIGHT)."""
    c, (h, w) = config, grid
    latent, hyper, mid = h * w, (h // 2) * (w // 2), c.hs_width
    h_a = (conv_flops(latent, c.M, c.N, 3) + conv_flops(hyper, c.N, c.N, 5)
           + conv_flops(hyper, c.N, c.N, 5))
    h_s = (conv_flops(hyper, c.N, c.M, c.hs_first_kernel)
           + conv_flops(hyper, c.M, mid, c.hs_mid_kernel)
           + conv_flops(latent, mid, 2 * c.M, c.hs_kernel))
    return h_a, FLOAT64_WEIGHT * h_s


def coding_flops(config: ModelConfig, grid: tuple[int, int]) -> float:
    """Entropy coding (either way) of y (M x h x w symbols) and z (N x h/2 x w/2)."""
    c, (h, w) = config, grid
    return SYMBOL_FLOPS * (c.M * h * w + c.N * (h // 2) * (w // 2))


def vit_flops(tokens: int, config: ModelConfig, blocks: int) -> float:
    """`blocks` Transformer blocks on `tokens` tokens (class token included) of width D."""
    D, r = config.embed_dim, config.mlp_ratio
    linear = 2.0 * tokens * (4 + 2 * r) * D * D
    attention = 4.0 * tokens * tokens * D
    return blocks * (linear + attention)


def windowed_vit_flops(vit, grid: tuple[int, int], config: ModelConfig, blocks: int,
                       classify: bool = False) -> float:
    """`blocks` blocks of `vit` (a tica.models.vit.VisionTransformer) on one image's token
    grid, as it runs them: one sequence, one per attention window on a large grid, or (to
    classify) one on the grid pooled to the trained one."""
    count, length = vit.sequences(grid, classify)
    return count * vit_flops(length, config, blocks)


def stream_cost(model, sizes: Iterable[tuple[int, int]], op: str, refine: int = 0) -> float:
    """GFLOP of `op` over every image of a stream (its sizes) for any model with `cost(size,
    op)`; each distinct size is costed once. `refine`: encoding with that many steps of
    refinement (a codec's `cost(size, "encode", refine)`)."""
    extra = {"refine": refine} if refine else {}
    return sum(n * model.cost(size, op, **extra) for size, n in Counter(map(tuple, sizes)).items())


@dataclass(frozen=True)
class Budget:
    """The most estimated work one stream (or one encode call) may ask for, in GFLOP summed
    over its images. `DEFAULT_MAX_GFLOP` says what the default holds and what it refuses."""

    max_gflop: float = DEFAULT_MAX_GFLOP

    def __post_init__(self) -> None:
        if not self.max_gflop > 0:
            raise ConfigError(f"the budget must be a positive number of GFLOP (inf: unbounded), "
                              f"got {self.max_gflop}")

    def check(self, model, sizes: Iterable[tuple[int, int]], ops: Iterable[str],
              refine: int = 0) -> float:
        """The largest total cost among `ops` (encoding with `refine` steps of refinement);
        BudgetError if it is over the budget."""
        sizes = [tuple(s) for s in sizes]
        worst, worst_op = 0.0, None
        for op in ops:
            total = stream_cost(model, sizes, op, refine if op == "encode" else 0)
            if worst_op is None or total > worst:
                worst, worst_op = total, op
        if worst_op is not None and worst > self.max_gflop:
            largest = max(sizes, key=lambda s: s[0] * s[1])
            what = (f"{_VERBS[worst_op]} {len(sizes)} image(s) of up to {largest[1]}x{largest[0]} "
                    f"with {model.config.name}")
            if refine and worst_op == "encode":
                what += f" and {refine} refinement steps"
            raise BudgetError(what, worst, self.max_gflop)
        return worst
