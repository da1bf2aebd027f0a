"""Exact integer re-implementation of the hyper-synthesis h_s (Ballé et al., "Integer
networks for data compression", ICLR 2019).

Why: the decoder selects each latent symbol's CDF from the scales (and shifts it by the
means) that h_s computes from z_hat. In floating point those values depend on thread
count, batch size, BLAS kernel and CPU, and a scale that lands on the other side of a
table boundary on the decoder breaks the whole stream. Here every weight, bias and
activation is a fixed-point integer, so encoder and decoder compute identical numbers.

How it stays fast: all values are integers whose partial sums stay below 2^53, so a
float64 convolution computes them *exactly*, whatever order the kernel sums in, on the CPU
or a GPU alike. `build` checks that bound for each layer from the worst case, not from data.
On a CPU the same integers are usually multiplied faster as 7-bit digits ("limbs"):
products of each pair of digits, summed in int32 and recombined in float64, give the exact
products again, so the numbers are identical and only the speed changes. A digit product
runs as an int8 matrix product where the CPU has fast ones (AVX-512 VNNI, AMX), as an
int16 one of a 14-bit weight whole (`_intops.gemm_i16`, AVX2), or as a float32 one, exact
too: a sum of at most F32_TAPS products of digits stays within float32's 24 bits
(`digit_gemm` measures which, and how many digit products cost one float64 one; each
layer takes the digits when its own count of them is cheaper). int16's products take a
hidden layer's 7-bit activations as uint8 against an 8-bit weight (`_intops.gemm_u8`,
`_unsigned_input`): twice the multiply-adds per instruction again. Input channels that
are zero in the whole batch are left out of a product (most of z's), and a one-digit input
that is mostly zeros (a photograph's activations: 93-95%) is multiplied by its nonzero
values alone (`_intops.sparse_conv`), exact in float32 in any order. A hidden layer's end
(recombination, bias, ReLU, fixed point) then runs in one pass in C (`_intops`, int64) and
hands the next layer its activations (int32, or float32 after float32 products), and the
last layer's end picks each symbol's coding table and mean in its own pass
(`TablesAndMeans`: what decoding keeps of h_s).

Layout of the fixed point: z_hat enters as plain integers (exponent 0). Each output
channel o of a layer has a power-of-two weight exponent e_o chosen so |w_int| < 2^WEIGHT_BITS;
its accumulator carries exponent E_o = a_in + e_o. Hidden activations are ReLU'd and
shifted to ACT_FRAC_BITS fractional bits (floor division by a power of two: exact), then
clamped to [0, 2^ACT_BITS). The last layer's accumulators are divided by 2^E_o, which is
exact in float64, giving the scales and means.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HS_ACT_BITS, HS_ACT_FRAC_BITS, HS_WEIGHT_BITS, Z_INPUT_BITS
from ..entropy import parallel
from .bands import LayerShapes, run_in_bands

try:
    from . import _intops           # a hidden layer's end in one pass (C, tica/nn/_intops.c)
except ImportError:                 # a checkout whose kernel is not built: torch does it
    _intops = None

WEIGHT_BITS = HS_WEIGHT_BITS          # |w_int| < 2^14 (a model may narrow all three:
ACT_FRAC_BITS = HS_ACT_FRAC_BITS      # hidden activations in steps of 1/256
ACT_BITS = HS_ACT_BITS                # ... clamped to [0, 2^20) (i.e. < 4096.0)
MAX_EXACT = 2.0 ** 53   # float64 represents every integer below this exactly
MAX_WEIGHT_EXP = 40


@dataclass
class _IntLayer:
    weight: torch.Tensor        # float64 holding integers, conv layout
    bias: torch.Tensor          # float64 integers, (C_out,)
    exponent: torch.Tensor      # int64 (C_out,): fixed-point exponent of the accumulator
    transposed: bool
    stride: int
    padding: int
    output_padding: int
    # a hidden layer's activations: steps of 2^-act_frac_bits, clamped below 2^act_bits
    act_frac_bits: int = ACT_FRAC_BITS
    act_bits: int = ACT_BITS
    # the weight as digits (`_layer_digits`), by their dtype (int8, int16 or float32) and
    # the input channels they keep; built on first use
    limbs: dict = field(default_factory=dict)
    # how many digits the weight splits into (`digit_count`), derived from it
    weight_digits: int = field(init=False)
    # whether int16 products take the weight whole (`_int16_exact`), derived from it
    int16_exact: bool = field(init=False)
    # whether unsigned 8-bit products take it too, against an input below 2^7 (`_u8_exact`)
    u8_exact: bool = field(init=False)
    # a hidden layer's end for _limb_matmul (_HiddenEnd); built on first use
    epilogue: "_HiddenEnd | None" = None

    def __post_init__(self) -> None:
        self.weight_digits = digit_count(self.weight)
        self.int16_exact = _int16_exact(self.weight, self.transposed)
        self.u8_exact = _u8_exact(self.weight, self.transposed)


def _weight_exponents(per_out: torch.Tensor, weight_bits: int) -> torch.Tensor:
    """Each output channel's power-of-two weight exponent: the largest that keeps its
    weights (C_out, C_in, k, k) below 2^weight_bits once scaled and rounded."""
    peak = per_out.abs().flatten(1).amax(1).clamp_min(2.0 ** -MAX_WEIGHT_EXP)
    return torch.floor(torch.log2((2.0 ** weight_bits - 1) / peak)).clamp(max=MAX_WEIGHT_EXP)


def _quantize_layer(layer: nn.Conv2d | nn.ConvTranspose2d, in_exponent: int, in_bound: float,
                    weight_bits: int = WEIGHT_BITS) -> tuple[_IntLayer, float]:
    """Fixed-point copy of one float layer and the worst-case |accumulator| it can reach."""
    transposed = isinstance(layer, nn.ConvTranspose2d)
    w = layer.weight.detach().double().cpu()
    b = layer.bias.detach().double().cpu() if layer.bias is not None else torch.zeros(
        w.shape[1] if transposed else w.shape[0], dtype=torch.float64)
    per_out = w.transpose(0, 1) if transposed else w              # (C_out, C_in, k, k)
    exp_w = _weight_exponents(per_out.detach(), weight_bits)
    # Keep the bias inside the exact range too: |b| * 2^(exp_w + in_exponent) < 2^50.
    bias_room = 50 - in_exponent - torch.ceil(torch.log2(b.abs() + 1))
    exp_w = torch.minimum(exp_w, bias_room)
    scale = torch.pow(2.0, exp_w)
    shape = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)
    w_int = torch.round(w * scale.view(shape))
    exponent = exp_w.long() + in_exponent
    b_int = torch.round(b * torch.pow(2.0, exponent.double()))
    # Worst case of one output: every input at its bound with the weight's sign.
    kernel, stride = per_out.shape[2], layer.stride[0]
    # A stride-s transposed conv feeds each output from at most ceil(k/s)^2 taps a channel.
    side = -(-kernel // stride) if transposed else kernel
    taps = per_out.shape[1] * side * side
    bound = float(w_int.abs().max()) * in_bound * taps + float(b_int.abs().max())
    if bound >= MAX_EXACT:
        raise ValueError(f"integer h_s layer may overflow exact float64 range (bound {bound:.3g})")
    return _IntLayer(
        weight=w_int, bias=b_int, exponent=exponent, transposed=transposed,
        stride=layer.stride[0], padding=layer.padding[0],
        output_padding=layer.output_padding[0] if transposed else 0,
    ), bound


def requantize(acc: torch.Tensor, scale: torch.Tensor, last: bool,
               frac_bits: int = ACT_FRAC_BITS, act_bits: int = ACT_BITS) -> torch.Tensor:
    """A layer's exact accumulator -> its output, given scale = 2^E per output channel
    (1, C, 1, 1): the last layer's divided by it (h_s's scales and means), a hidden one
    ReLU'd, shifted to `frac_bits` fractional bits and clamped to [0, 2^act_bits). Every
    step is exact: power-of-two divisions and a floor of integers. The edge export
    (tica.export) runs this same function."""
    if last:
        return acc / scale
    shift = scale / 2.0 ** frac_bits
    return torch.floor(acc.clamp_min(0) / shift).clamp(max=2.0 ** act_bits - 1)


def _straight(rounded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`rounded` (a rounding of x) forward, identity gradient backward (straight-through)."""
    return rounded + (x - x.detach()) if x.requires_grad else rounded


def quantized_h_s(h_s: nn.Sequential, z_hat: torch.Tensor, weight_bits: int, frac_bits: int,
                  act_bits: int) -> torch.Tensor:
    """The float h_s (conv/ReLU/.../conv) computing what the integer one built with these
    widths computes, up to float rounding: each layer's weights rounded per output channel
    as `build` rounds them, each hidden activation floored to 2^-frac_bits and clamped below
    2^(act_bits - frac_bits), with straight-through gradients (the clamp's outside the
    range are zero). Training a model with narrow widths through this (quantization-aware
    training) lets its integer h_s cost no rate for its speed."""
    convs = [m for m in h_s if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    x, in_exponent = z_hat, 0
    step, top = 2.0 ** -frac_bits, (2.0 ** act_bits - 1) * 2.0 ** -frac_bits
    for i, layer in enumerate(convs):
        transposed = isinstance(layer, nn.ConvTranspose2d)
        w, b = layer.weight, layer.bias
        shape = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)
        exponent = _weight_exponents((w.transpose(0, 1) if transposed else w).detach().float(),
                                     weight_bits)
        scale = torch.pow(2.0, exponent).to(w.dtype)
        w = _straight(torch.round(w * scale.view(shape)), w * scale.view(shape)) / scale.view(shape)
        if b is not None:         # the bias in the accumulator's fixed point, as `build` has it
            bias_scale = torch.pow(2.0, exponent + in_exponent).to(b.dtype)
            b = _straight(torch.round(b * bias_scale), b * bias_scale) / bias_scale
        if transposed:
            x = F.conv_transpose2d(x, w.to(x.dtype), b, layer.stride, layer.padding,
                                   layer.output_padding)
        else:
            x = F.conv2d(x, w.to(x.dtype), b, layer.stride, layer.padding)
        in_exponent = frac_bits
        if i < len(convs) - 1:
            x = x.clamp(0, top)
            x = _straight(torch.floor(x / step), x / step) * step
    return x


LIMB_BITS = 7                    # int8 digits: 7 bits each, the top one signed
GEMM_ENV = "TICA_INTEGER_GEMM"   # int8 | int16 | float32 | float64: force a CPU path
                                 # (default: the fastest, measured)
DIGIT_GEMMS = ("int8", "int16", "float32")   # how a digit product can run (`_digit_product`)
DIGIT_DTYPES = {"int8": torch.int8, "int16": torch.int16, "float32": torch.float32}
MAX_INT8_TAPS = 2 ** 16          # int32 sums of two digit planes stay exact below this
F32_TAPS = 1024                  # float32 sums this many digit products exactly (2^10 2^14)
PRODUCT_ROWS = 4096              # rows of one int8 product (a quarter of it in float32):
                                 # a few images' patches at a time, read from cache


def _limbs(x: torch.Tensor, count: int) -> list[torch.Tensor]:
    """Integer-valued x (|x| < 2^31) -> `count` int8 digits d_i with x = sum d_i 2^(7 i):
    every digit but the top in [0, 127], the top signed (`digit_count` sizes it)."""
    v = x.to(torch.int32)
    out = []
    for _ in range(count - 1):
        out.append((v & (2 ** LIMB_BITS - 1)).to(torch.int8))
        v = v >> LIMB_BITS                          # arithmetic shift: floor, exact
    return out + [v.to(torch.int8)]


def digit_count(x: torch.Tensor) -> int:
    """The fewest 7-bit digits, the top one signed, that hold every value of integer x:
    d digits hold [-2^(7 d), 2^(7 d)). The product is exact whatever the count; fewer
    digits only make it cheaper (real activations need two, real z one)."""
    if x.numel() == 0:
        return 1
    lo, hi = (float(v) for v in x.aminmax())
    count = 1
    while not -(2.0 ** (LIMB_BITS * count)) <= lo <= hi < 2.0 ** (LIMB_BITS * count):
        count += 1
    return count


def _int16_exact(weight: torch.Tensor, transposed: bool) -> bool:
    """Whether an int16 product (`_intops.gemm_i16`) takes this conv weight whole (|w| <
    2^15) with an input digit (in [-128, 128)) exactly: every partial sum of an output
    channel within 128 times the sum of its |weights| over all its taps, below 2^31, which
    int32 holds whatever order the kernel sums in. Real weights do by far; a layer whose
    weights do not runs its products in float32."""
    per_out = weight.abs().transpose(0, 1) if transposed else weight.abs()
    return bool(weight.abs().max() < 2 ** 15) and float(per_out.flatten(1).sum(1).max()) \
        * 128 < 2.0 ** 31


U8_INPUT_BITS = 7        # an input of uint8 products: in [0, 2^7) (a hidden layer's activations)
UNSIGNED_PRODUCTS = True  # int16's products take such an input as uint8 where they can


def _u8_exact(weight: torch.Tensor, transposed: bool) -> bool:
    """Whether unsigned 8-bit products (`_intops.gemm_u8`) take this conv weight whole
    against an input in [0, 2^U8_INPUT_BITS), exactly: the weight in int8's [-128, 127]
    keeps each pair of products that vpmaddubsw adds in int16 within 2 x 127 x 128 =
    32,512, and its columns' int32 sums exact as the int16 product's are (`_int16_exact`).
    The shipped h_s's weights are 7 bits: they do."""
    return bool(weight.min() >= -128) and bool(weight.max() <= 127) \
        and _int16_exact(weight, transposed)


def _unsigned_input(layer: _IntLayer, digits: int, in_bits: int | None) -> bool:
    """Whether a layer's int16 product takes its input as uint8 (`gemm_u8`): one digit
    known to lie in [0, 2^U8_INPUT_BITS) (a hidden layer's activations, ReLU'd and clamped
    below 2^in_bits) and a weight `_u8_exact` takes."""
    return (UNSIGNED_PRODUCTS and _intops is not None and digits == 1 and in_bits is not None
            and in_bits <= U8_INPUT_BITS and layer.u8_exact)


def _quads(taps: int) -> int:
    """`taps` rounded up to whole quads: a uint8 product's rows and weight carry their
    channels so (`gemm_u8` takes whole quads of taps), the rest zeros."""
    return -(-taps // 4) * 4


def _pack_u8(w: torch.Tensor) -> torch.Tensor:
    """A weight plane (K, N) of values in [-128, 127], K whole quads (`_quads`), as
    `_intops.gemm_u8` reads it: per block of 16 columns, per quad of taps, each column's
    four taps side by side (N padded with zeros), int8."""
    k, n = w.shape
    k4, n2 = _quads(k), -(-n // 16) * 16
    if k4 != k:
        raise ValueError(f"a uint8 product's weight has whole quads of taps, not {k}")
    padded = torch.zeros(k4, n2, dtype=torch.int8)
    padded[:k, :n] = w
    return padded.view(k4 // 4, 4, n2 // 16, 16).permute(2, 0, 3, 1).contiguous()


def _quad_channels(w: torch.Tensor, dim: int) -> torch.Tensor:
    """A weight with its input channels (dimension `dim`) zero-padded to whole quads, as a
    uint8 product's rows carry them (`_quads`)."""
    pad = [0, 0] * (w.ndim - 1 - dim) + [0, _quads(w.shape[dim]) - w.shape[dim]]
    return F.pad(w, pad)


def _packed(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A weight plane (K, N) packed for the product of inputs of `dtype` (int16 or uint8)."""
    return _pack_u8(w) if dtype == torch.uint8 else _pack_int16(w)


def _gemm(dtype: torch.dtype):
    """The kernel that multiplies rows of `dtype` (int16 or uint8) by a `_packed` weight."""
    return _intops.gemm_u8 if dtype == torch.uint8 else _intops.gemm_i16


def _workers() -> int:
    """How many threads a kernel call may use: torch's count, or this thread's share where
    it runs one of several batches at once (`parallel.one_share`)."""
    return parallel.share() or torch.get_num_threads()


def _pack_int16(w: torch.Tensor) -> torch.Tensor:
    """A weight plane (K, N) as `_intops.gemm_i16` reads it: per block of 16 columns, per
    pair of taps, each column's two taps side by side (K and N padded with zeros)."""
    k, n = w.shape
    k2, n2 = -(-k // 2) * 2, -(-n // 16) * 16
    padded = torch.zeros(k2, n2, dtype=torch.int16)
    padded[:k, :n] = w
    return padded.view(k2 // 2, 2, n2 // 16, 16).permute(2, 0, 3, 1).contiguous()


def _float32_slices(w: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """Slices [k0, k1) of the taps (rows) of a weight's digit plane w (K, C_out) over which
    one float32 product sums exactly: each partial sum of a column is an integer of at most
    128 times the sum of its |digits| over the slice (an input digit lies in [-128, 128)),
    kept within 2^24, which float32 holds exactly whatever order the library sums in. Real
    weights take one slice; digits all at -128 take slices of 1,024 taps (F32_TAPS)."""
    limit = 2.0 ** 24 / 128
    cum = torch.cat([torch.zeros(1, w.shape[1], dtype=torch.float64),
                     w.abs().double().cumsum(0)])          # (K + 1, C_out), nondecreasing
    slices, k0 = [], 0
    while k0 < w.shape[0]:          # the longest slice from k0 (one tap is 2^14 at most)
        k1 = k0 + int(((cum[k0 + 1:] - cum[k0]).amax(1) <= limit).sum())
        slices.append((k0, k1))
        k0 = k1
    return tuple(slices)


@dataclass(frozen=True)
class _WeightDigits:
    """A weight as the digit planes a digit product reads ((K, C_out) each, int8, int16 or
    float32), for float32 ones each plane's slices of taps (`_float32_slices`), for int16
    ones (one plane: the weight whole) that plane packed (`_pack_int16`); for a uint8
    input's product, the int16 plane and its int8 packing (`_pack_u8`)."""
    planes: tuple[torch.Tensor, ...]
    slices: tuple[tuple[tuple[int, int], ...], ...]
    packed: tuple[torch.Tensor, ...] = ()
    # an int16 weight as float32 for the product by nonzero values, where one float32 slice
    # sums it exactly (`_float32_slices`), else None
    sparse: torch.Tensor | None = None

    def sparse_weight(self) -> torch.Tensor | None:
        """The float32 weight `_intops.sparse_conv` multiplies by, if it can."""
        if self.planes[0].dtype == torch.int16:                 # int16 or uint8 input
            return self.sparse
        ok = len(self.planes) == 1 and self.planes[0].dtype == torch.float32 \
            and len(self.slices[0]) == 1
        return self.planes[0] if ok else None


def _digit_product(a: torch.Tensor, b: torch.Tensor,
                   slices: tuple[tuple[int, int], ...] | None = None,
                   packed: torch.Tensor | None = None, columns: bool = False) -> torch.Tensor:
    """The exact product of two digit planes (rows by columns), int8, int16 or float32
    alike: an int8 matrix product (int32); an int16 one (`_intops.gemm_i16`, int32; b
    `packed` by `_pack_int16`, a weight `_int16_exact` takes whole), or for a uint8 `a` in
    [0, 2^U8_INPUT_BITS) a uint8 one (`_intops.gemm_u8`; b packed by `_pack_u8`, a weight
    `_u8_exact` takes whole); or float32 ones, one
    per slice of the taps (`slices`, of b's: `_float32_slices`; by default of F32_TAPS
    taps, right for any digits: 2^10 * 2^14 = 2^24), each of whose partial sums float32
    holds exactly. One slice: its float32 result, integers within 2^24; more: their sums
    added in int32. `columns` (int16 and uint8 only): the product transposed, (columns,
    rows)."""
    if a.dtype == torch.int8:
        return torch._int_mm(a, b)
    if a.dtype in (torch.int16, torch.uint8):
        rows, n = a.shape[0], b.shape[1]
        out = torch.empty((n, rows) if columns else (rows, n), dtype=torch.int32)
        _gemm(a.dtype)(a.contiguous().numpy(),
                       (_packed(b, a.dtype) if packed is None else packed).numpy(),
                       b.shape[0], n, out.numpy(), _workers(), columns)
        return out
    if slices is None:
        slices = tuple((k, min(k + F32_TAPS, a.shape[1])) for k in range(0, a.shape[1], F32_TAPS))
    if len(slices) == 1:
        return torch.mm(a, b)
    out = None
    for k0, k1 in slices:
        part = torch.mm(a[:, k0:k1], b[k0:k1]).to(torch.int32)
        out = part if out is None else out.add_(part)
    return out


def _limb_matmul(a: list[torch.Tensor], b: _WeightDigits, out: torch.Tensor,
                 end: "_HiddenEnd | _TablesEnd | None" = None) -> None:
    """The exact product of two matrices given as digit planes (`a`'s rows by `b`'s columns; int8
    or float32, `_digit_product`), written into `out` (float64). Each digit product is an
    exact integer sum of K terms of at most 2^14 (int32, or float32 within 2^24); the planes
    of one weight 2^(7 s) (at most two: a weight below 2^14 has two digits) are summed in
    int32, exact for K < MAX_INT8_TAPS, then
    added in float64 times 2^(7 s), exactly: every term and partial sum is an integer within
    the layer's worst-case bound, which `build` holds below 2^53. With `end` (a hidden
    layer's, or the last layer's table choice) `out` is int32 and receives what that end
    makes of the product (`_intops` in one pass; a hidden end in torch where it is not
    built).
    An end that writes planar (the tables') takes float32 and int16 products computed
    transposed, (columns, rows): each column's run of an image's pixels then lies
    contiguous in the product as in `out`, and the end runs along it in vector lanes."""
    columns = (end is not None and end.planar and _intops is not None
               and all(da.dtype in (torch.float32, torch.int16, torch.uint8) for da in a))
    by_shift: dict[int, torch.Tensor] = {}
    for i, da in enumerate(a):
        for j, (db, slices) in enumerate(zip(b.planes, b.slices)):
            if da.dtype in (torch.int16, torch.uint8):
                plane = _digit_product(da, db, slices, b.packed[j], columns)
            elif columns:
                plane = _digit_product(db.t(), da.t(), slices)
            else:
                plane = _digit_product(da, db, slices)
            if i + j in by_shift:           # float32 sums could pass 2^24: in int32
                by_shift[i + j] = by_shift[i + j].to(torch.int32).add_(plane.to(torch.int32))
            else:
                by_shift[i + j] = plane
    parts = sorted(by_shift.items())
    if end is not None and _intops is not None:
        arrays, shifts = [p.numpy() for _, p in parts], [s for s, _ in parts]
        if columns:
            end.compiled(arrays, shifts, out.numpy(), columns=True)
        else:
            end.compiled(arrays, shifts, out.numpy())
        return
    acc = out if end is None else torch.empty(out.shape, dtype=torch.float64)
    for k, (shift, part) in enumerate(parts):
        if k == 0:
            acc.copy_(part)
            if shift:
                acc.mul_(2.0 ** (LIMB_BITS * shift))
        else:
            acc.add_(part, alpha=2.0 ** (LIMB_BITS * shift))    # read as float64
    if end is not None:
        end.in_torch(acc, out)


@dataclass(frozen=True)
class _HiddenEnd:
    """A hidden layer's end: bias, ReLU, floor to the activations' fixed point, clamp."""
    bias: torch.Tensor          # float64 integers (C_out,)
    scale: torch.Tensor         # 2^E per output channel, float64
    rshift: torch.Tensor        # E - frac_bits, int64
    frac_bits: int
    act_bits: int
    planar = False              # writes rows of pixels (channels-last)

    def compiled(self, parts: list, shifts: list[int], out) -> None:
        _intops.hidden_layer(parts, shifts, self.bias.numpy(), self.rshift.numpy(),
                             2 ** self.act_bits - 1, out.shape[1], out, _workers())

    def in_torch(self, acc: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(requantize(acc.add_(self.bias), self.scale, False, self.frac_bits,
                             self.act_bits))


@dataclass(frozen=True)
class _TablesEnd:
    """The last layer's end as decoding uses it (`TablesAndMeans`), compiled only."""
    bias: torch.Tensor          # float64 integers (2M,)
    scale: torch.Tensor         # 2^E per output channel, float64 (2M,)
    gain: torch.Tensor          # float64 (2M,): the entropy gain of each channel, or ones
    bounds: torch.Tensor        # float64 ascending
    planar = True               # writes (B, 2M, h, w) itself, as decoding reads it

    def compiled(self, parts: list, shifts: list[int], out, columns: bool = False) -> None:
        """out: (rows, 2M), or planar (images, 2M, h, w) for rows of their pixels; parts
        (rows, 2M), or with `columns` (2M, rows) (planar out only)."""
        _intops.last_layer(parts, shifts, self.bias.numpy(), self.scale.numpy(),
                           self.gain.numpy(), self.bounds.numpy(), len(self.bias) // 2,
                           out.shape[1], out, _workers(),
                           out.shape[2] * out.shape[3] if out.ndim == 4 else 0, columns)


@dataclass(frozen=True)
class TablesAndMeans:
    """What decoding keeps of h_s's output (B, 2M, h, w), scales then means, each times the
    entropy `gain` (float64 (1 or B, M, 1, 1), or None): each scale's table index, the
    number of `bounds` (float64, ascending) below it (torch.bucketize), and each mean as a
    float32. One int32 tensor (B, 2M, h, w) holds both, the M indexes and then the M means'
    float32 bits (`split` parts them), so that a layer's end can write it in one pass: the
    integer h_s's CPU path does (`_intops.last_layer`), any other path calls this."""
    bounds: torch.Tensor
    gain: torch.Tensor | None = None

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        scales, means = params.chunk(2, dim=1)                  # exact float64
        if self.gain is not None:
            gain = self.gain.to(params.device)
            scales, means = scales * gain, means * gain
        indexes = torch.bucketize(scales.contiguous(), self.bounds.to(params.device))
        return torch.cat([indexes.int(), means.float().view(torch.int32)], dim=1)

    @staticmethod
    def split(picked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This end's int32 output -> (table indexes int32, contiguous for the coder; means
        float32, a view of it: their one reader adds them to the symbols)."""
        indexes, means = picked.chunk(2, dim=1)
        return indexes.contiguous(), means.view(torch.float32)

    def compiled_end(self, layer: _IntLayer) -> _TablesEnd | None:
        """The compiled form for this layer, if `_intops` is built and one gain serves the
        whole batch."""
        if _intops is None or (self.gain is not None and self.gain.shape[0] != 1):
            return None
        half = layer.bias.numel() // 2
        gain = (torch.ones(half, dtype=torch.float64) if self.gain is None
                else self.gain.detach().double().cpu().flatten())
        if gain.numel() != half:
            return None
        return _TablesEnd(layer.bias, torch.pow(2.0, layer.exponent.double()),
                          torch.cat([gain, gain]), self.bounds.detach().double().cpu().contiguous())


def input_digits(x: torch.Tensor, in_bits: int | None = None) -> int:
    """How many digits `_digit_planes` splits x into. `in_bits`: x is known to lie in
    [0, 2^in_bits) (a hidden layer's activations), so that one digit holds it when
    in_bits <= 7 without looking."""
    return 1 if in_bits is not None and in_bits <= LIMB_BITS else digit_count(x)


def _digit_planes(x: torch.Tensor, pad: tuple[int, int, int, int], count: int,
                  dtype: torch.dtype = torch.int8,
                  live: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Integer x (B, C, H, W), its channels `live` (bool (C,), None: all), zero-padded by
    `pad` (left, right, top, bottom) -> their `count` digit planes (`input_digits`) as
    `dtype` (int8, int16, uint8, or float32 for float32 products), channels-last and
    contiguous (the digits of zero are zeros: each plane is padded, not x); uint8 planes
    with their channels in whole quads (`_quads`), the rest zeros."""
    if live is not None:
        x = x.index_select(1, live.nonzero().flatten())
    x = x.permute(0, 2, 3, 1)
    if count == 1 and not any(pad) and x.dtype == dtype and x.is_contiguous():
        return [x]                          # a float32 layer's channels-last activations
    B, H, W, C = x.shape
    left, right, top, bottom = pad
    channels = _quads(C) if dtype == torch.uint8 else C
    planes = []
    for digit in [x] if count == 1 else _limbs(x, count):    # one digit: x, in [-128, 128)
        plane = torch.zeros(B, top + H + bottom, left + W + right, channels, dtype=dtype)
        plane[:, top:top + H, left:left + W, :C] = digit
        planes.append(plane)
    return planes


def _out_dtype(end: "_HiddenEnd | _TablesEnd | None", dtype: torch.dtype) -> torch.dtype:
    """What a digit product of `dtype` digits writes: float64 sums without an end; a
    hidden end's activations as float32 where the products are float32 (the next layer's
    digits as they are: activations below 2^24, exact), else int32; the tables' int32."""
    if end is None:
        return torch.float64
    hidden_float = isinstance(end, _HiddenEnd) and dtype == torch.float32 and end.act_bits <= 24
    return torch.float32 if hidden_float else torch.int32


def _digit_conv(planes: list[torch.Tensor], w_digits: _WeightDigits,
                kernel: tuple[int, int], stride: int,
                end: "_HiddenEnd | _TablesEnd | None", nonzero: int) -> torch.Tensor:
    """A valid convolution (correlation) of an integer input given as digit planes (B, H,
    W, C each: `_digit_planes`, or a window of them) with a weight given as digits of the
    same dtype, ordered (kernel row, kernel column, C_in) x C_out; exact, in float64,
    channels-last (B, Ho, Wo, C_out), or with `end` (_limb_matmul) what it makes, int32,
    channels-last or, for an end that is `planar`, (B, C_out, Ho, Wo).
    The patches are gathered a few images at a time (about PRODUCT_ROWS rows, a quarter
    of that in float32: the same bytes), so that each product reads them from cache.
    `nonzero`: the input's count of nonzero values (`_sparse_enough`)."""
    B, H, W, C = planes[0].shape
    kh, kw = kernel
    Ho, Wo = (H - kh) // stride + 1, (W - kw) // stride + 1
    C_out, planar = w_digits.planes[0].shape[1], end is not None and end.planar
    out = torch.empty((B, C_out, Ho, Wo) if planar else (B, Ho, Wo, C_out),
                      dtype=_out_dtype(end, planes[0].dtype))
    step = max(1, PRODUCT_ROWS // (planes[0].element_size() * max(1, Ho * Wo)))
    if _sparse_enough(planes, w_digits, kernel, stride, B * Ho * Wo, nonzero):
        step = max(step, SPARSE_ROWS // max(1, Ho * Wo))
        weight = w_digits.sparse_weight()
        for b in range(0, B, step):
            part, target = planes[0][b:b + step].float(), out[b:b + step]
            product = torch.empty(len(part) * Ho * Wo, C_out, dtype=torch.float32)
            _intops.sparse_conv(part.numpy(), weight.numpy(), kh, kw, stride,
                                product.numpy(), _workers())
            if end is None:
                target.view(-1, C_out).copy_(product)
            else:
                end.compiled([product.numpy()], [0], (target if planar
                                                      else target.view(-1, C_out)).numpy())
        return out
    for b in range(0, B, step):
        patches = []
        for plane in planes:           # (n, Ho, Wo, kh, kw, C) as a view, then one copy
            part = plane[b:b + step]
            n, sb, sh, sw = len(part), part.stride(0), part.stride(1), part.stride(2)
            patches.append(part.as_strided((n, Ho, Wo, kh, kw, C),
                                           (sb, stride * sh, stride * sw, sh, sw, 1))
                           .reshape(-1, kh * kw * C))
        part = out[b:b + step]
        _limb_matmul(patches, w_digits, part if planar else part.view(-1, C_out), end)
    return out


SPARSE_SHARE = {torch.float32: 0.3,    # a one-digit product with fewer nonzero input terms
                torch.int16: 0.2,      # than this share of its products runs by them alone
                torch.uint8: 0.13}     # (`_intops.sparse_conv`), by the dense product's
                                       # dtype: measured, docs/design.md
SPARSE_ROWS = 16384       # output rows of one sparse product
FOLD_BYTES = 1 << 20      # a folded transposed layer's taps' sums, a few images at a time


def _sparse_enough(planes: list[torch.Tensor], w_digits: _WeightDigits,
                   kernel: tuple[int, int], stride: int, rows: int, nonzero: int) -> bool:
    """Whether a float32 or int16 digit product runs by the input's nonzero values alone:
    one digit plane of input, a float32 weight summed exactly in one slice (so in any
    order: `_WeightDigits.sparse_weight`), the kernel built, and few enough of the
    products' terms nonzero (each nonzero input value feeds about kh kw / stride^2 of the
    `rows` outputs; SPARSE_SHARE of the rows times their taps at most, by the dtype of
    the dense product it replaces) that skipping the zeros saves more than a dense
    product's speed. `nonzero`: the input's count of nonzero values (the layer's
    `_census`)."""
    plane = planes[0]
    share = SPARSE_SHARE.get(plane.dtype)
    if (_intops is None or len(planes) != 1 or share is None or rows == 0
            or w_digits.sparse_weight() is None):
        return False
    terms = nonzero * kernel[0] * kernel[1] / stride ** 2
    return terms < share * rows * w_digits.planes[0].shape[0]


def _mostly_zeros(x: torch.Tensor, live: torch.Tensor | None, nonzero: int,
                  dtype: torch.dtype = torch.int16) -> bool:
    """Whether fewer of x's values in its `live` channels are nonzero than the SPARSE_SHARE
    of the dense product it would take (`dtype`: int16, or uint8): a layer then takes
    float32 digits, whose product by nonzero values beats the dense one there (each nonzero
    value feeds about as many terms as a value does, so this share is about the share of
    the products' terms that `_sparse_enough` counts); `nonzero`: x's count of nonzero
    values (`_census`)."""
    if _intops is None or x.numel() == 0:
        return False
    values = x.numel() if live is None else x.numel() // x.shape[1] * int(live.sum())
    return nonzero < SPARSE_SHARE[dtype] * values


def _weight_digits(w: torch.Tensor, dtype: torch.dtype) -> _WeightDigits:
    """A conv weight (C_out, C_in, kh, kw) as the (kh kw C_in, C_out) digits _digit_conv
    reads, as `dtype` (|w| < 2^WEIGHT_BITS: at most two digits; int16: the weight whole,
    packed; uint8, for a uint8 input: the same, its input channels in whole quads
    (`_quads`), packed for `gemm_u8`), with their float32 slices."""
    if dtype == torch.uint8:
        w = _quad_channels(w, 1)
    if dtype in (torch.int16, torch.uint8):
        whole = w.permute(0, 2, 3, 1).flatten(1).t().to(torch.int16).contiguous()
        as_float = whole.float()
        return _WeightDigits((whole,), (((0, len(whole)),),), (_packed(whole, dtype),),
                             as_float if len(_float32_slices(as_float)) == 1 else None)
    planes = tuple(d.to(dtype).contiguous()
                   for d in _limbs(w.permute(0, 2, 3, 1).flatten(1).t(), digit_count(w)))
    slices = tuple(_float32_slices(d) if dtype == torch.float32 else ((0, len(d)),)
                   for d in planes)
    return _WeightDigits(planes, slices)


def _hidden_end(layer: _IntLayer) -> _HiddenEnd:
    """The layer's end as a hidden layer (`requantize`'s integers), built on first use."""
    if layer.epilogue is None:            # one assignment: safe if threads race here
        layer.epilogue = _HiddenEnd(layer.bias, torch.pow(2.0, layer.exponent.double()),
                                    layer.exponent - layer.act_frac_bits,
                                    layer.act_frac_bits, layer.act_bits)
    return layer.epilogue


def _live_channels(x: torch.Tensor) -> torch.Tensor | None:
    """The channels of x (B, C, H, W) that hold a nonzero value anywhere in it (bool (C,),
    at least one), or None where all do. A channel of zeros adds nothing to a layer's
    products, so the layer may leave it out, exactly: most of a trained hyper-latent z's
    channels are zero in every image (110 of tica-cifar's 128), and some of the hidden
    activations' (27 of 96 after its first layer)."""
    return _census(x)[0]


def _census(x: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """x's live channels (`_live_channels`) and its count of nonzero values, which choose
    a layer's products (`_mostly_zeros`, `_sparse_enough`): in one pass in C
    (`_intops.census`) where x holds 32-bit values channels-last (a hidden layer's
    activations) or 64-bit ones channels-first (z as the h_s takes it), by their bits (a
    -0.0 counts there: a channel of -0.0 then joins the products, adding zeros), else in
    torch."""
    rows, flags = x.permute(0, 2, 3, 1), torch.empty(x.shape[1], dtype=torch.uint8)
    if _intops is not None and x.element_size() == 4 and rows.is_contiguous() and x.numel():
        nonzero = _intops.census(rows.numpy(), x.shape[1], flags.numpy(),
                                 _workers())
        live = flags.bool()
    elif _intops is not None and x.element_size() == 8 and x.is_contiguous() and x.numel():
        nonzero = _intops.census(x.numpy(), x.shape[1], flags.numpy(), _workers(),
                                 x.shape[2] * x.shape[3])
        live = flags.bool()
    else:
        live = x.abs().amax(dim=(0, 2, 3)) > 0
        nonzero = int(torch.count_nonzero(x))
    if bool(live.all()):
        return None, nonzero
    live[0] = True                        # all zeros: one channel of them
    return live, nonzero


MAX_KEPT_DIGITS = 16     # weights as digits kept per layer (by dtype and live channels)


def _kept(layer: _IntLayer, key: tuple, build):
    """layer.limbs[key], built by build() on first use and kept (MAX_KEPT_DIGITS a layer,
    then cleared and built again): an assignment or a clear, safe where threads race."""
    value = layer.limbs.get(key)
    if value is None:
        value = build()
        if len(layer.limbs) >= MAX_KEPT_DIGITS:
            layer.limbs.clear()
        layer.limbs[key] = value
    return value


def _layer_digits(layer: _IntLayer, dtype: torch.dtype, live: torch.Tensor | None):
    """The layer's weight as digits of `dtype` for the input channels `live` (None: all):
    a convolution's `_WeightDigits`, or a transposed layer's per output phase (row phase,
    column phase, kernel, digits). Built on first use and kept (MAX_KEPT_DIGITS, then
    built again: `_kept`)."""
    def build():
        w = layer.weight if live is None else layer.weight[live] if layer.transposed \
            else layer.weight[:, live]
        if not layer.transposed:
            return _weight_digits(w, dtype)
        s = layer.stride
        phases = [(rh, rw, w[:, :, rh::s, rw::s].flip(2, 3).transpose(0, 1))
                  for rh in range(s) for rw in range(s)]
        return [(rh, rw, tuple(t.shape[-2:]), _weight_digits(t, dtype)) for rh, rw, t in phases]
    return _kept(layer, (dtype, None if live is None else live.numpy().tobytes()), build)


def _transposed_size(layer: _IntLayer, H: int, W: int) -> tuple[int, int]:
    """A transposed layer's output height and width for an input of H x W."""
    k, s, p = layer.weight.shape[-1], layer.stride, layer.padding
    return ((H - 1) * s - 2 * p + k + layer.output_padding,
            (W - 1) * s - 2 * p + k + layer.output_padding)


def _folded_transposed(layer: _IntLayer, x: torch.Tensor, live: torch.Tensor | None,
                       end: "_HiddenEnd | _TablesEnd | None",
                       dtype: torch.dtype = torch.int16) -> torch.Tensor:
    """A transposed layer of one-digit input (`_digit_linear`'s result) as one int16 product
    (a uint8 one for `dtype` uint8: `_unsigned_input`) and a fold: every input pixel times
    every tap of the weight ((C_in, k k C_out), one product, its rows the activations as
    they are), then each tap's sums added onto the output pixel it reaches
    (`_intops.fold`). The same integers as the polyphase products: each output's sum is the
    same terms, in int32, exact below 2^31 (`_int16_exact` bounds a column's |products|
    over all taps), without the phases' gathered patches and scattered outputs. A few
    images at a time (FOLD_BYTES of sums: tica-photo's layer has 7,200 taps' sums a pixel,
    1.4 MB an image, which for a whole batch missed the cache by far)."""
    k, s, p = layer.weight.shape[-1], layer.stride, layer.padding
    B, _, H, W = x.shape
    Ho, Wo = _transposed_size(layer, H, W)
    C_out = layer.weight.shape[1]

    def packed() -> torch.Tensor:         # (C_in, C_out, k, k) -> (C_in, k k C_out), packed
        w = (layer.weight if live is None else layer.weight[live]).permute(0, 2, 3, 1)
        if dtype == torch.uint8:          # input channels in whole quads, as the rows' are
            w = _quad_channels(w, 0)
        return _packed(w.flatten(1).to(torch.int16), dtype)
    weight = _kept(layer, ("fold", dtype, None if live is None else live.numpy().tobytes()),
                   packed)
    rows = _digit_planes(x, (0, 0, 0, 0), 1, dtype, live)[0]
    c_in, n = rows.shape[-1], k * k * C_out
    workers, gemm = _workers(), _gemm(dtype)
    acc = torch.zeros(B, Ho, Wo, C_out, dtype=torch.int32)
    step = max(1, FOLD_BYTES // (4 * H * W * n))   # images whose taps' sums stay in cache
    cols = torch.empty(min(B, step) * H * W, n, dtype=torch.int32)
    for b in range(0, B, step):
        part = rows[b:b + step].reshape(-1, rows.shape[-1])
        these = cols[:len(part)]
        gemm(part.numpy(), weight.numpy(), c_in, n, these.numpy(), workers)
        _intops.fold(these.numpy(), len(part) // (H * W), H, W, k, s, p, Ho, Wo, C_out,
                     acc[b:b + step].numpy(), workers)
    if end is None:
        return acc.permute(0, 3, 1, 2).double()
    planar = end.planar
    out = torch.empty((B, C_out, Ho, Wo) if planar else (B, Ho, Wo, C_out),
                      dtype=_out_dtype(end, torch.int16))
    end.compiled([acc.view(-1, C_out).numpy()], [0],
                 (out if planar else out.view(-1, C_out)).numpy())
    return out if planar else out.permute(0, 3, 1, 2)


def _digit_linear(layer: _IntLayer, x: torch.Tensor, digits: int, gemm: str,
                  end: _HiddenEnd | _TablesEnd | None = None,
                  in_bits: int | None = None) -> torch.Tensor:
    """The layer's exact accumulator (no bias) by digit products on the CPU (x split into
    `digits` digits, `input_digits`; the products int8, int16 or float32 as `gemm` says): the
    same integers as the float64 convolution; with `end`, what that end makes of it: a
    hidden layer's activations (`_hidden_end`: bias, ReLU and fixed point applied,
    `requantize`'s integers; int32, float32 after float32 products: `_out_dtype`) or the
    last layer's table indexes and means (`_TablesEnd`, int32, planar).
    Input channels that are zero throughout x are left out (`_live_channels`).
    A stride-s transposed layer runs as s^2 ordinary convolutions, one per output phase
    (polyphase): output o of phase r = (o + p) mod s sums x[u - m] w[r + s m], a full
    correlation of x with that phase's taps, reversed, computed only on the window of it
    that the layer keeps; with int16 products, as one product and its taps folded
    (`_folded_transposed`). `in_bits`: x is known to lie in [0, 2^in_bits) (a hidden
    layer's activations); int16's products then take it as uint8 where they can
    (`_unsigned_input`)."""
    live, nonzero = _census(x)
    dense = torch.uint8 if _unsigned_input(layer, digits, in_bits) else torch.int16
    if gemm == "int16" and (not layer.int16_exact
                            or (digits == 1 and _mostly_zeros(x, live, nonzero, dense))):
        gemm = "float32"     # a weight past int16's bound (never a real one), or an input
                             # for float32's product by nonzero values (`_sparse_enough`)
    if gemm == "int16" and layer.transposed and digits == 1:
        return _folded_transposed(layer, x, live, end, dense)
    dtype = dense if gemm == "int16" else DIGIT_DTYPES[gemm]
    k, s, p = layer.weight.shape[-1], layer.stride, layer.padding
    w_digits = _layer_digits(layer, dtype, live)
    planar = end is not None and end.planar           # (B, C, H, W), else channels-last
    if not layer.transposed:
        out = _digit_conv(_digit_planes(x, (p,) * 4, digits, dtype, live), w_digits, (k, k), s,
                          end, nonzero)
        return out if planar else out.permute(0, 3, 1, 2)
    B, _, H, W = x.shape
    Ho, Wo = _transposed_size(layer, H, W)
    C_out = layer.weight.shape[1]
    out = torch.empty((B, C_out, Ho, Wo) if planar else (B, Ho, Wo, C_out),
                      dtype=_out_dtype(end, dtype))
    phases = out if planar else out.permute(0, 3, 1, 2)
    reach = -(-k // s) - 1                    # the most taps of a phase, less one
    planes = _digit_planes(x, (reach,) * 4, digits, dtype, live)   # once for all phases
    for rh, rw, (mh, mw), phase_digits in w_digits:
        oh, ow = (rh - p) % s, (rw - p) % s               # the first output of this phase
        uh, uw = (oh + p - rh) // s, (ow + p - rw) // s   # ... and its u
        nh, nw = len(range(oh, Ho, s)), len(range(ow, Wo, s))
        # only the window whose valid correlation gives outputs uh.., uw.. of the full one
        top, left = reach - (mh - 1) + uh, reach - (mw - 1) + uw
        window = [d[:, top:top + nh + mh - 1, left:left + nw + mw - 1] for d in planes]
        phase = _digit_conv(window, phase_digits, (mh, mw), 1, end, nonzero)  # x's count:
        # each phase's window holds about all of x
        phases[:, :, oh::s, ow::s] = phase if planar else phase.permute(0, 3, 1, 2)
    return phases


def _float32_exact() -> bool:
    """Whether torch's float32 matrix products on the CPU are IEEE float32 (the default),
    not reduced to bfloat16 or TF32 by a user's setting, which would round their sums: the
    CPU backend's own setting, else the global one, else the legacy one (torch refuses to
    read that one when the two APIs were mixed: then not taken as exact)."""
    for precision in (getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision",
                              "none"), getattr(torch.backends, "fp32_precision", "none")):
        if precision != "none":
            return precision == "ieee"
    try:
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:
        return False


_MEASURING = threading.Lock()


@functools.cache
def _measured_gemms() -> tuple[tuple[str, float], ...]:
    """Each exact digit product this CPU runs (DIGIT_GEMMS) with how many of them take the
    time of one float64 product of a layer's shape, the cheapest first. Measured once per
    process, on one thread and interleaved: what the hardware does, not how busy the
    machine is (on a loaded machine, two threads' int8 product waited for a descheduled
    thread and measured 2x where one thread's was 16x); a product that takes twice
    float64's time is timed no further (a third of a second in all where int8 products are
    a scalar loop). Measured: AVX-512 VNNI runs about 15 int8 products in a float64 one's
    time; AVX2 without VNNI 2.1-2.5 float32 ones, and an int8 one there takes 11-14 times
    a float64 one's."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-64, 64, (1024, 1152), generator=g, dtype=torch.int8)
    b = torch.randint(-64, 64, (1152, 128), generator=g, dtype=torch.int8)
    operands = {"int8": (a, b), "float32": (a.float(), b.float()),
                "float64": (a.double(), b.double())}
    if _intops is not None:                             # the kernel that runs them is built
        operands["int16"] = (a.to(torch.int16), b.to(torch.int16))
    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {name: [] for name in operands}
    try:
        torch.set_num_threads(1)
        for round_ in range(5):
            for name, (x, y) in operands.items():
                if round_ > 1 and times[name][-1] > 2 * times["float64"][-1]:
                    continue                  # twice float64's time: out, not worth timing
                start = time.perf_counter()
                try:
                    _digit_product(x, y) if name != "float64" else x @ y   # int16: packs too
                except (RuntimeError, AttributeError):   # a build without int8 products
                    times[name].append(float("inf"))
                    continue
                times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    float64 = min(times.pop("float64")[1:])                 # the first round warms up
    gains = [(name, float64 / min(t[1:])) for name, t in times.items()]
    return tuple(sorted(gains, key=lambda g: -g[1]))


def digit_gemm() -> tuple[str | None, float]:
    """How this CPU multiplies the h_s's integers: (the digit product it runs fastest,
    "int8", "int16" or "float32", and how many of them cost one float64 product), or
    (None, 0) for float64 convolutions alone (no digit product is cheaper than a float64
    one). $TICA_INTEGER_GEMM (int8 | int16 | float32 | float64) forces one; otherwise
    measured once (`_measured_gemms`). float32 is never taken while torch's float32
    products are set to round (`_float32_exact`), nor int16 where its kernel is not built."""
    forced = os.environ.get(GEMM_ENV, "").strip().lower()
    if forced == "float64":
        return None, 0.0
    if forced in DIGIT_GEMMS:
        return (forced, float("inf")) if _gemm_usable(forced) else (None, 0.0)
    with _MEASURING:        # threads decoding at once measure once, not side by side
        gains = _measured_gemms()
    for name, gain in gains:
        if gain > 1 and _gemm_usable(name):
            return name, gain
    return None, 0.0


def _gemm_usable(name: str) -> bool:
    return (name == "int8" or (name == "int16" and _intops is not None)
            or (name == "float32" and _float32_exact()))


def _gemm_linear(layer: _IntLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer as matrix products (unfold/fold around a GEMM): sums of exact integer
    products whatever the order, so exact on any device. A convolution library may pick
    an algorithm (FFT, Winograd) whose intermediate values are not integers."""
    B, _, H, W = x.shape
    k, s, p = layer.weight.shape[-1], layer.stride, layer.padding
    if layer.transposed:
        Ho, Wo = _transposed_size(layer, H, W)
        cols = layer.weight.flatten(1).t() @ x.flatten(2)         # (B, C_out k k, H W)
        full = F.fold(cols, (Ho + 2 * p, Wo + 2 * p), k, stride=s)
        return full[:, :, p:p + Ho, p:p + Wo]
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    cols = F.unfold(x, k, padding=p, stride=s)                      # (B, C_in k k, Ho Wo)
    return (layer.weight.flatten(1) @ cols).view(B, -1, Ho, Wo)


class IntegerHyperSynthesis:
    """h_s in exact integer arithmetic; built from a trained float h_s by `build`."""

    def __init__(self, layers: list[_IntLayer]) -> None:
        self.layers = layers
        self._copies: dict[torch.device, list[_IntLayer]] = {torch.device("cpu"): layers}

    @classmethod
    def build(cls, h_s: nn.Sequential, weight_bits: int = WEIGHT_BITS,
              frac_bits: int = ACT_FRAC_BITS, act_bits: int = ACT_BITS
              ) -> "IntegerHyperSynthesis":
        """The integer copy of a float h_s with these widths (ModelConfig.hs_format):
        weights below 2^weight_bits per output channel, hidden activations in steps of
        2^-frac_bits clamped below 2^act_bits of them."""
        convs = [m for m in h_s if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        acts = [m for m in h_s if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        if not all(isinstance(a, nn.ReLU) for a in acts) or len(acts) != len(convs) - 1:
            raise ValueError("IntegerHyperSynthesis needs conv/ReLU/.../conv")
        if not (2 <= weight_bits <= WEIGHT_BITS and 1 <= act_bits <= ACT_BITS
                and 0 <= frac_bits <= act_bits):
            raise ValueError(f"integer h_s widths out of range: weights {weight_bits} bits, "
                             f"activations {act_bits} bits with {frac_bits} fractional")
        layers, in_exp, in_bound = [], 0, float(2 ** Z_INPUT_BITS)
        for layer in convs:
            int_layer, _ = _quantize_layer(layer, in_exp, in_bound, weight_bits)
            layers.append(dataclasses.replace(int_layer, act_frac_bits=frac_bits,
                                              act_bits=act_bits))
            in_exp, in_bound = frac_bits, float(2 ** act_bits)
        return cls(layers)

    def _layers_on(self, device: torch.device) -> list[_IntLayer]:
        if device not in self._copies:
            self._copies[device] = [dataclasses.replace(
                layer, weight=layer.weight.to(device), bias=layer.bias.to(device),
                exponent=layer.exponent.to(device), limbs={}, epilogue=None)
                for layer in self.layers]
        return self._copies[device]

    @staticmethod
    def _digits(layer: _IntLayer, x: torch.Tensor,
                in_bits: int | None = None) -> tuple[str, int] | None:
        """(the digit product, x's digit count) if this layer runs as digit products: on a
        CPU where its products (the weight's digits times x's, `input_digits`) cost less
        than one float64 product (`digit_gemm`), with few enough taps for their int32
        sums; else None (float64)."""
        taps = layer.weight.shape[int(not layer.transposed)] * layer.weight[0, 0].numel()
        if x.device.type != "cpu" or taps >= MAX_INT8_TAPS:
            return None
        gemm, gain = digit_gemm()
        if gemm is None:
            return None
        count = input_digits(x, in_bits)
        weight_digits = 1 if gemm == "int16" and layer.int16_exact else layer.weight_digits
        return (gemm, count) if weight_digits * count < gain else None

    @classmethod
    def _linear(cls, layer: _IntLayer, x: torch.Tensor) -> torch.Tensor:
        """The layer's exact accumulator where it takes no digits: float64 GEMMs on a GPU,
        float64 convolutions on the CPU."""
        if x.device.type != "cpu":
            acc = _gemm_linear(layer, x)
        elif x.dtype != torch.float64:   # activations from a digit layer before
            return cls._linear(layer, x.double())
        elif layer.transposed:       # the CPU's float64 convolutions are GEMMs
            acc = F.conv_transpose2d(x, layer.weight, None, layer.stride, layer.padding,
                                     layer.output_padding)
        else:
            acc = F.conv2d(x, layer.weight, None, layer.stride, layer.padding)
        return acc.add_(layer.bias.view(1, -1, 1, 1))            # acc is a new tensor

    def layer_shapes(self) -> list[tuple[int, int, int, int, bool]]:
        """(kernel, stride, C_in, C_out, transposed) of each layer (tica.nn.bands)."""
        return [(l.weight.shape[-1], l.stride, *(l.weight.shape[:2] if l.transposed
                                                  else l.weight.shape[1::-1]), l.transposed)
                for l in self.layers]

    def __call__(self, z_hat: torch.Tensor, then=None) -> torch.Tensor:
        """z_hat: integer-valued (B, N, h, w) -> exact float64 (B, 2M, 2h, 2w) = h_s(z_hat),
        on z_hat's device (a CUDA GPU, else the CPU); a large grid runs in bands of rows
        (tica.nn.bands: exactly the same numbers, bounded memory). `then`, if given, maps
        each band's output to what is kept of it (per position, e.g. table indexes), so the
        whole float64 output never exists at once.

        Exactness relies on every partial sum being an integer below 2^53, which float64
        holds exactly on every device: the CPU and a GPU give the same numbers.
        """
        device = z_hat.device if z_hat.device.type == "cuda" else torch.device("cpu")
        limit = 2 ** Z_INPUT_BITS - 1      # z_hat clamped to (-2^12, 2^12)
        # -0.0 (an encoder's rounding of small negatives) as 0.0: the census counts by bits
        x = z_hat.detach().to(device, torch.float64).round().clamp(-limit, limit).add_(0.0)
        # layer by layer, each in bands of rows if large: every layer runs once per row (a
        # halo of its own kernel's reach), and only one layer's input and output are whole
        layers = self._layers_on(device)
        for i, (layer, shape) in enumerate(zip(layers, self.layer_shapes())):
            last = i == len(layers) - 1
            keep = then if last else None
            in_bits = layers[i - 1].act_bits if i else None      # activations' bound
            x = run_in_bands(functools.partial(self._layer, layer, last, keep, in_bits), x,
                             geometry_of=LayerShapes([shape]), label="h_s", unfolded=True)
        return x

    def _layer(self, layer: _IntLayer, last: bool, keep, in_bits: int | None,
               x: torch.Tensor) -> torch.Tensor:
        digits = self._digits(layer, x, in_bits)
        if digits is None:
            acc = self._linear(layer, x)
        else:
            gemm, count = digits
            if not last:                     # activations, the same integers
                return _digit_linear(layer, x, count, gemm, _hidden_end(layer), in_bits)
            end = keep.compiled_end(layer) if isinstance(keep, TablesAndMeans) else None
            if end is not None:              # indexes and means in the product's own pass
                return _digit_linear(layer, x, count, gemm, end, in_bits)
            acc = _digit_linear(layer, x, count, gemm, in_bits=in_bits).add_(
                layer.bias.view(1, -1, 1, 1))
        scale = torch.pow(2.0, layer.exponent.double()).view(1, -1, 1, 1)
        out = requantize(acc, scale, last, layer.act_frac_bits, layer.act_bits)
        return out if keep is None else keep(out)
