"""Edge export: the encoder side of a tica codec as ONNX, and an encoder that runs it.

    tica export --onnx DIR [--model NAME --quality Q | --weights FILE]

DIR receives
    analysis.onnx   x (1, 3, H, W) in [0, 1], H and W multiples of the stride
                    -> y (1, M, h, w) float32, z (1, N, h/2, w/2) float32 integers
    hyper.onnx      z (1, N, h/2, w/2) float64 integers -> index (1, M, h, w) int64 (the
                    coding table of each latent), mean (1, M, h, w) float32
    tables.npz      the integer coding tables of z and y
    edge.json       the model id, stride, shapes and the files' SHA-256

Why the stream stays decodable bit-exactly: the decoder rebuilds the table indexes and means
from z alone, with the exact integer h_s. hyper.onnx is that same integer network, written
with operations whose float64 results are exact on integers below 2^53 (matrix products of
integers, power-of-two scaling, floor), so ONNX Runtime computes the very same indexes and
means as PyTorch on any machine. analysis.onnx is ordinary float32 and may differ from PyTorch
in the last bits; that can move a value across a rounding boundary and change a symbol, which
changes the stream but never its decodability: the decoder reads back exactly the symbols the
edge wrote. (ONNX Runtime has no float64 convolution, hence convolutions as matrix products.)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import bitstream
from .config import quality_code
from .entropy.coder import CodingTables
from .entropy.payload import clamp_z, encode_payload
from .errors import CheckpointError, TicaError
from .extras import require
from .io import atomic_write, atomic_write_text, sha256_file
from .models import CompressionModel
from .nn.integer import IntegerHyperSynthesis, requantize

OPSET = 17


def _gain(model: CompressionModel, quality: float | None) -> torch.Tensor | None:
    """A variable-rate model's gain at `quality`, (1, M, 1, 1); None at a fixed rate."""
    gain, _ = model.gain_pair(quality, 1)
    return None if gain is None else gain.detach().float()


class _Analysis(nn.Module):
    """g_a (times a variable-rate model's gain at the exported quality) and h_a: the float
    networks of the encoder."""

    def __init__(self, model: CompressionModel, quality: float | None) -> None:
        super().__init__()
        self.model = model
        gain = _gain(model, quality)
        self.register_buffer("gain", gain if gain is not None else torch.ones(1, model.config.M, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.model.g_a(x)
        z = clamp_z(self.model.h_a(self.model.hyper_input(y, self.gain)))
        return y * self.gain, z


def _zero_upsample(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H - 1, 2W - 1) with zeros between the samples."""
    B, C, H, W = x.shape
    x = torch.stack([x, torch.zeros_like(x)], dim=-1).reshape(B, C, H, 2 * W)[..., : 2 * W - 1]
    x = torch.stack([x, torch.zeros_like(x)], dim=-2).reshape(B, C, 2 * H, 2 * W - 1)
    return x[:, :, : 2 * H - 1]


def _conv_matmul(x: torch.Tensor, weight: torch.Tensor, pad: tuple[int, int, int, int]
                 ) -> torch.Tensor:
    """Stride-1 convolution as one matrix product over k*k shifted copies (im2col)."""
    k = weight.shape[-1]
    x = F.pad(x, pad)
    H, W = x.shape[2] - k + 1, x.shape[3] - k + 1
    patches = torch.stack([x[:, :, i:i + H, j:j + W] for i in range(k) for j in range(k)], dim=2)
    B, C = x.shape[:2]
    out = torch.matmul(weight.reshape(weight.shape[0], -1), patches.reshape(B, C * k * k, H * W))
    return out.reshape(B, weight.shape[0], H, W)


class _HyperIndexes(nn.Module):
    """The integer h_s (IntegerHyperSynthesis, same numbers) and the table choice."""

    def __init__(self, model: CompressionModel, quality: float | None) -> None:
        super().__init__()
        int_h_s: IntegerHyperSynthesis = model.integer_h_s
        self.specs = []
        for i, layer in enumerate(int_h_s.layers):
            if layer.transposed:      # conv_transpose == conv of the zero-upsampled input
                if layer.stride != 2:
                    raise TicaError("edge export supports stride-2 transposed layers only")
                w = layer.weight.transpose(0, 1).flip(2, 3)
                k = w.shape[-1]
                lo = k - 1 - layer.padding
                pad = (lo, lo + layer.output_padding, lo, lo + layer.output_padding)
            else:
                if layer.stride != 1:
                    raise TicaError("edge export supports stride-1 convolutions in h_s only")
                w, pad = layer.weight, (layer.padding,) * 4
            self.register_buffer(f"w{i}", w.contiguous())
            self.register_buffer(f"b{i}", layer.bias.view(1, -1, 1, 1).clone())
            self.register_buffer(f"e{i}", torch.pow(2.0, layer.exponent.double()).view(1, -1, 1, 1))
            self.specs.append((layer.transposed, pad, layer.act_frac_bits, layer.act_bits))
        self.register_buffer("bounds", model.gaussian_conditional.scale_bounds.double().clone())
        gain = model.entropy_gain(quality, 1)     # exact dyadic numbers, or none
        self.register_buffer("gain", gain if gain is not None
                             else torch.ones(1, model.config.M, 1, 1, dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = z
        for i, (transposed, pad, frac_bits, act_bits) in enumerate(self.specs):
            if transposed:
                x = _zero_upsample(x)
            acc = _conv_matmul(x, getattr(self, f"w{i}"), pad) + getattr(self, f"b{i}")
            x = requantize(acc, getattr(self, f"e{i}"), i == len(self.specs) - 1, frac_bits,
                           act_bits)
        scales, means = x.chunk(2, dim=1)
        scales, means = scales * self.gain, means * self.gain
        index = (scales.unsqueeze(-1) > self.bounds).to(torch.int64).sum(-1)   # = bucketize
        return index, means.float()


def export_onnx(model: CompressionModel, out_dir: str | Path, quality: float | None = None,
                check: bool = True) -> dict:
    """Write the encoder side of `model` at `quality` (a variable-rate model's default for
    None; the export codes at that one rate) to `out_dir` (see the module docstring) and,
    with `check`, compare it with PyTorch under ONNX Runtime on a sample image. Returns
    edge.json."""
    if not isinstance(model, CompressionModel):
        raise TicaError(f"{model.config.name} has no encoder to export")
    require("onnx", "edge", "the edge export")               # before any file is written
    if check:
        require("onnxruntime", "edge", "checking the edge export")
    quality = model.check_quality(quality)                  # None: a fixed-rate model
    model = model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = model.config.stride
    x = torch.rand(1, 3, 2 * s, 3 * s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")        # the exporter's notes on its own deprecation
        analysis = _Analysis(model, quality).float()
        hyper = _HyperIndexes(model, quality)
        _, z = analysis(x)
        for net, args, names, outputs, axes in (
                (analysis, (x,), ["x"], ["y", "z"], {"x": {2: "H", 3: "W"}, "y": {2: "h", 3: "w"},
                                                     "z": {2: "zh", 3: "zw"}}),
                (hyper, (z.double(),), ["z"], ["index", "mean"],
                 {"z": {2: "zh", 3: "zw"}, "index": {2: "h", 3: "w"}, "mean": {2: "h", 3: "w"}})):
            name = "analysis.onnx" if net is analysis else "hyper.onnx"
            atomic_write(out / name, lambda tmp: torch.onnx.export(
                net, args, tmp, input_names=names, output_names=outputs, dynamic_axes=axes,
                opset_version=OPSET, dynamo=False))
    gz, gy = model.entropy_bottleneck.tables, model.gaussian_conditional.tables
    atomic_write(out / "tables.npz", lambda tmp: np.savez(
        open(tmp, "wb"), z_freqs=gz.freqs, z_lengths=gz.lengths, z_offsets=gz.offsets,
        y_freqs=gy.freqs, y_lengths=gy.lengths, y_offsets=gy.offsets))
    meta = {"format": "tica-edge", "version": 1, "model": model.config.name,
            "quality": model.weights_info.quality if quality is None else quality,
            "quality_code": None if quality is None else quality_code(quality),
            "model_id": f"{model.model_id:04x}", "stride": s, "N": model.config.N,
            "M": model.config.M, "files": {f: sha256_file(out / f) for f in EDGE_FILES}}
    atomic_write_text(out / "edge.json", json.dumps(meta, indent=1))
    if check:
        try:
            meta["check"] = check_export(model, out, quality)
        except TicaError:
            (out / "edge.json").unlink()     # a folder that failed its check loads as none
            raise
    return meta


def check_export(model: CompressionModel, out_dir: str | Path, quality: float | None = None
                 ) -> dict:
    """ONNX Runtime against PyTorch on a seeded image: y's largest difference, the integer
    outputs' equality."""
    encoder = EdgeEncoder(out_dir)
    s = model.config.stride
    x = torch.rand(1, 3, 4 * s, 5 * s, generator=torch.Generator().manual_seed(1))
    y_onnx, z_onnx = encoder.analyse(x.numpy())
    with torch.no_grad():
        gain = _gain(model, quality)
        y_torch = model.g_a(x) * (gain if gain is not None else 1)
        z_int, indexes, means, _ = model.analyze(x, quality)
    index_onnx, mean_onnx = encoder.hyper(z_int.numpy())
    result = {"y_max_abs_diff": float(np.abs(y_onnx - y_torch.numpy()).max()),
              "z_equal": bool(np.array_equal(z_onnx, z_int.numpy())),
              "index_equal": bool(np.array_equal(index_onnx, indexes)),
              "mean_equal": bool(np.array_equal(mean_onnx, means.numpy()))}
    if not (result["index_equal"] and result["mean_equal"]):
        raise TicaError(f"the exported hyper network is not exact: {result}")
    return result


class EdgeEncoder:
    """Encode images with the exported ONNX networks (ONNX Runtime) and the coding tables:
    what a light device runs. Streams decode on the PyTorch side like any other."""

    def __init__(self, export_dir: str | Path, threads: int = 1) -> None:
        ort = require("onnxruntime", "edge", "the edge encoder")
        root = Path(export_dir)
        self.meta = _read_meta(root)
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self._analysis = ort.InferenceSession(str(root / "analysis.onnx"), options)
            self._hyper = ort.InferenceSession(str(root / "hyper.onnx"), options)
            with np.load(root / "tables.npz") as t:
                self.z_tables = _tables(t["z_freqs"], t["z_lengths"], t["z_offsets"])
                self.y_tables = _tables(t["y_freqs"], t["y_lengths"], t["y_offsets"])
        except Exception as exc:        # onnxruntime raises its own types on a bad model
            raise CheckpointError(f"{root} is not a usable tica edge export: {exc}") from None
        self.model_id = int(self.meta["model_id"], 16)
        self.stride = int(self.meta["stride"])
        self.quality_code = self.meta.get("quality_code")

    def analyse(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, z = self._analysis.run(None, {"x": x.astype(np.float32)})
        return y, z

    def hyper(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index, mean = self._hyper.run(None, {"z": z.astype(np.float64)})
        return index, mean

    def latent(self, image: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(3, H, W) in [0, 1] -> (z, y symbols, symbols + mean, table index): what the
        stream holds, and what the decoder rebuilds before a variable-rate model's inverse
        gain (`CompressionModel.dequantize`)."""
        H, W = image.shape[1:]
        ph, pw = (-H) % self.stride, (-W) % self.stride
        x = np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="edge")[None]
        y, z = self.analyse(x)
        index, mean = self.hyper(z)
        symbols = np.round(y - mean)                 # float32, round half to even as torch
        return z[0], symbols[0], (symbols + mean)[0], index[0]

    def compress(self, image: np.ndarray) -> bytes:
        """One image (3, H, W) float in [0, 1] -> a single-image tica bitstream."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise TicaError(f"expected a (3, H, W) image, got {image.shape}")
        z, symbols, _, index = self.latent(image)
        payload = encode_payload(z.astype(np.int64), symbols.astype(np.int64), index,
                                 self.z_tables, self.y_tables)
        codes = None if self.quality_code is None else [self.quality_code]
        return bitstream.pack(self.model_id, [tuple(image.shape[1:])], [payload], codes)


EDGE_FILES = ("analysis.onnx", "hyper.onnx", "tables.npz")


def _read_meta(root: Path) -> dict:
    """edge.json of an export folder, checked: its format, its fields' types, and every
    file it lists there with its SHA-256. CheckpointError otherwise."""
    try:
        meta = json.loads((root / "edge.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root} is not a tica edge export: {exc}") from None
    if (not isinstance(meta, dict) or meta.get("format") != "tica-edge"
            or meta.get("version") != 1):
        raise CheckpointError(f"{root}/edge.json is not a version-1 tica edge export")
    files, code = meta.get("files"), meta.get("quality_code")
    try:
        ok = (isinstance(files, dict) and sorted(files) == sorted(EDGE_FILES)
              and 0 <= int(meta["model_id"], 16) < 1 << 16 and int(meta["stride"]) > 0
              and (code is None or isinstance(code, int)))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(f"{root}/edge.json is malformed: it needs files "
                              f"({', '.join(EDGE_FILES)} with their SHA-256), model_id "
                              "(4 hex digits), stride")
    for name, digest in files.items():
        if not (root / name).is_file() or sha256_file(root / name) != digest:
            raise CheckpointError(f"{root / name} is missing or does not match edge.json")
    return meta


def _tables(freqs, lengths, offsets) -> CodingTables:
    return CodingTables(torch.from_numpy(freqs), torch.from_numpy(lengths), torch.from_numpy(offsets))
