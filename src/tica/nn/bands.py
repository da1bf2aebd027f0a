"""Running a convolution stack over a large image in bands of rows, so that memory stays
bounded whatever the image's size (a 12-Mpixel photograph: g_a's first layer alone would
hold 1.5 GB).

Every layer of g_a, g_s and h_s is local: an output row reads input rows within the
stack's receptive radius. A band is run on its rows plus a halo of at least that radius on
each side (cut at the image's edges, where the whole-image run pads with zeros too), and
only its own rows are kept, so each kept row sees exactly the inputs it sees in one
whole-image run. Band starts are aligned to the stack's total stride, so every strided
layer samples the same grid. In exact integer arithmetic (the integer h_s) the result is
bit for bit the whole-image one; in float32 the rows can differ in the last bits only
where the convolution library sums in another order.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from fractions import Fraction
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# the largest activation (with a convolution's unfolded input) one band may hold
BAND_BYTES = 64 << 20
Progress = Callable[[str, int, int], None]     # (what runs, bands done, bands in all)
_progress: list[Progress] = []


@contextmanager
def reporting(progress: Progress):
    """Within the block, every banded run reports each band it finishes to `progress`
    (the CLI's progress bar on a terminal)."""
    _progress.append(progress)
    try:
        yield
    finally:
        _progress.remove(progress)


LayerShape = tuple[int, int, int, int, bool]    # kernel, stride, C_in, C_out, transposed


class LayerShapes:
    """The geometry of layers that are not modules (`run_in_bands(geometry_of=...)`)."""

    def __init__(self, shapes: list[LayerShape]) -> None:
        self.shapes = shapes

    def layer_shapes(self) -> list[LayerShape]:
        return self.shapes


def _convs(stack) -> list[LayerShape]:
    """The convolutions a stack runs, in order: an nn.Module's, or `stack.layer_shapes()`."""
    if hasattr(stack, "layer_shapes"):
        return stack.layer_shapes()
    return [(m.kernel_size[0], m.stride[0], m.in_channels, m.out_channels,
             isinstance(m, nn.ConvTranspose2d))
            for m in stack.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def _geometry(stack, elem: int, unfolded: bool
              ) -> tuple[Fraction, float, tuple[tuple[Fraction, int], ...]]:
    """(output rows per input row, receptive radius in input rows, per layer (its output's
    rows per input row, bytes per output pixel: the output, and with `unfolded` the
    convolution's unfolded input, of `elem` bytes a value))."""
    return _shapes_geometry(tuple(_convs(stack)), elem, unfolded)


@functools.lru_cache(maxsize=256)
def _shapes_geometry(convs: tuple[LayerShape, ...], elem: int, unfolded: bool
                     ) -> tuple[Fraction, float, tuple[tuple[Fraction, int], ...]]:
    """`_geometry` of the layers' shapes, kept: the integer h_s asks it per layer and batch."""
    scale, radius, layers = Fraction(1), 0.0, []
    for k, s, c_in, c_out, transposed in convs:
        if transposed:
            radius += math.ceil((k // 2) / s) / scale
            scale *= s
        else:
            radius += (k // 2) / scale
            scale /= s
        layers.append((scale, (c_out + (c_in * k * k if unfolded else 0)) * elem))
    return scale, radius, tuple(layers)


def band_plan(stack, rows: int, cols: int, budget: int = BAND_BYTES, elem: int = 4,
              unfolded: bool = False) -> tuple[int, int, int, float]:
    """(band, halo, align, bytes per row) for running `stack` on one image of rows x cols:
    bands of `band` input rows (a multiple of `align`, the total stride), each read with
    `halo` rows more on both sides; band >= rows means one run. `elem` and `unfolded` as in
    `_geometry`: how much memory a layer's output takes."""
    scale, radius, layers = _geometry(stack, elem, unfolded)
    align = max(1, int(1 / scale)) if scale < 1 else 1
    halo = align * math.ceil(radius / align)
    per_row = max(float(s) * max(1.0, float(s) * cols) * bytes_ for s, bytes_ in layers)
    band = max(align, int(budget // max(per_row, 1.0)) // align * align)
    return band, halo, align, per_row


def pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom and right of (B, C, H, W) to a multiple of `multiple`."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def run_in_bands(stack: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 geometry_of: nn.Module | None = None, label: str = "",
                 budget: int | None = None, unfolded: bool = False,
                 pad: int = 1) -> torch.Tensor:
    """stack(pad_to(x, pad)) for x (B, C, H, W) without gradients, holding at most about
    `budget` bytes at once (default BAND_BYTES): a batch in groups of images, an image too
    large alone in bands of rows, each band padded on its own (no padded copy of the whole
    image), the output written into place (no second copy). `geometry_of` is the module
    whose layers `stack` runs (if `stack` is not itself that module), `unfolded` whether its
    convolutions unfold their input (float64 ones do), `label` what it is to a progress
    report (`reporting`). With gradients (training), one run."""
    if torch.is_grad_enabled():
        return stack(pad_to(x, pad))
    budget = BAND_BYTES if budget is None else budget
    module = geometry_of if geometry_of is not None else stack      # its layers' shapes
    rows = x.shape[-2] + (-x.shape[-2]) % pad
    band, halo, align, per_row = band_plan(module, rows, x.shape[-1], budget,
                                           x.element_size(), unfolded)
    if rows % align:
        raise ValueError(f"{rows} rows are not a multiple of the stack's stride {align}")
    if band >= rows:                             # an image fits: as many as fit at a time
        group = max(1, int(budget // max(per_row * rows, 1.0)))
        if group >= len(x):
            return stack(pad_to(x, pad))
        jobs = [((slice(i, i + group),), lambda i=i: stack(pad_to(x[i:i + group], pad)))
                for i in range(0, len(x), group)]
        return _assemble(jobs, lambda part: (len(x), *part.shape[1:]), label)
    scale = _geometry(module, 1, False)[0]

    def run(i: int, a: int, b: int) -> torch.Tensor:
        lo, hi = max(0, a - halo), min(rows, b + halo)   # padded rows: keep [a, b), read [lo, hi)
        part = x[i:i + 1, :, lo:min(hi, x.shape[-2])]
        below, right = hi - lo - part.shape[-2], (-x.shape[-1]) % pad
        if below or right:                                   # as pad_to pads the whole
            part = F.pad(part, (0, right, 0, below), mode="replicate")
        return stack(part)[..., int((a - lo) * scale):int((b - lo) * scale), :]

    spans = [(i, a, min(rows, a + band)) for i in range(len(x)) for a in range(0, rows, band)]
    jobs = [((slice(i, i + 1), slice(None), slice(int(a * scale), int(b * scale))),
             lambda i=i, a=a, b=b: run(i, a, b)) for i, a, b in spans]
    return _assemble(jobs, lambda part: (len(x), part.shape[1], int(rows * scale),
                                         part.shape[3]), label)


def _assemble(jobs: list, shape_of, label: str) -> torch.Tensor:
    """One tensor of `shape_of(first part)` holding each job's run() at its place, filled
    job by job (no list of parts, no concatenated copy); progress reported per job."""
    out = None
    for n, (where, run) in enumerate(jobs):
        part = run()
        if out is None:
            out = part.new_empty(shape_of(part))
        out[where] = part
        for report in _progress:
            report(label, n + 1, len(jobs))
    return out
