"""Images in and out: one reader (`read_image`) for the CLI, the API and the server, and the
writers of decoded images. Everything in between is (3, H, W) float in [0, 1].

What the reader does with what users have, as an image viewer shows it:
- EXIF orientation is applied (a phone's portrait photo is coded upright);
- 16-bit greyscale keeps its precision (scaled by 1/65535), greyscale and palettes become RGB;
- transparency is composited on white, as most viewers and browsers show it on a page;
- an image of several frames (an animated GIF or WebP, a multi-page TIFF) is refused unless
  a frame is named;
- arrays and tensors must hold finite values in range: uint8 0..255, floats in [0, 1]
  (0..255 floats are refused, naming the fix), else an ImageError.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageLimitError, OutputError

MAX_IMAGE_PIXELS = 1 << 26

ImageLike = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray, torch.Tensor]
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def read_image(source: ImageLike, *, frame: int | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS, max_side: int | None = None) -> torch.Tensor:
    """An image as a user has it -> (3, H, W) float32 in [0, 1]: a file path, the bytes of
    an image file (PNG, JPEG, WebP, GIF, TIFF, ...), a PIL image, a numpy array (H, W) or
    (H, W, C) (grey, grey + alpha, RGB, RGBA) of uint8 or floats in [0, 1], or a tensor (3, H, W) (or (1, H, W)) of floats
    in [0, 1] or uint8. `frame` picks one frame of a multi-frame image. ImageError, naming
    the fix, for anything else; ImageLimitError, before a file is decoded, for more than
    `max_pixels` pixels or a side over `max_side`."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            return read_image(data, frame=frame, max_pixels=max_pixels, max_side=max_side)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc}") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), frame, max_pixels, max_side)
    if isinstance(source, Image.Image):
        return _from_pil(source, frame, max_pixels, max_side)
    if isinstance(source, np.ndarray):
        return _from_array(torch.from_numpy(np.ascontiguousarray(source)), "numpy array",
                           channels_last=True)
    if isinstance(source, torch.Tensor):
        return _from_array(source.detach().cpu(), "tensor", channels_last=False)
    raise ImageError(f"cannot read an image from a {type(source).__name__}: pass a file path, "
                     f"image file bytes, a PIL image, a numpy array or a (3, H, W) tensor")


def _from_bytes(data: bytes, frame: int | None, max_pixels: int, max_side: int | None
                ) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _from_pil(img, frame, max_pixels, max_side)
    except ImageError:
        raise
    except UnidentifiedImageError:
        head = data[:16].hex(" ") if data else "empty"
        raise ImageError(f"not an image file tica can read (PNG, JPEG, WebP, GIF, TIFF, BMP, "
                         f"...): {len(data)} bytes starting {head}") from None
    except Image.DecompressionBombError as exc:
        raise ImageLimitError(f"the image is too large to read safely: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot read the image: {exc}") from None


def _from_pil(img: Image.Image, frame: int | None, max_pixels: int, max_side: int | None
              ) -> torch.Tensor:
    frames = getattr(img, "n_frames", 1)
    if frame is None and frames > 1:
        raise ImageError(f"the image has {frames} frames (an animation or a multi-page file): "
                         f"name one (--frame K, frame=K; 0 to {frames - 1})")
    if frame is not None:
        if not 0 <= frame < frames:
            raise ImageError(f"frame {frame} does not exist: the image has {frames} (0 to "
                             f"{frames - 1})")
        img.seek(frame)
    if img.width * img.height > max_pixels:
        raise ImageLimitError(f"image of {img.width}x{img.height} exceeds the limit of "
                              f"{max_pixels} pixels")
    if max_side is not None and max(img.width, img.height) > max_side:
        raise ImageLimitError(f"image side {max(img.width, img.height)} exceeds the limit of "
                              f"{max_side}")
    img.load()
    img = ImageOps.exif_transpose(img)                   # as a viewer shows it
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.float32)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(f"a {img.mode} image with values outside 0..65535 is not a 16-bit "
                             f"image tica can read")
        grey = torch.from_numpy(arr / 65535.0)
        return grey.expand(3, *grey.shape).contiguous()
    if img.mode == "F":
        raise ImageError("32-bit float image files are not supported: convert to 8 or 16 bits")
    if img.mode in _ALPHA or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    try:
        rgb = img.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"cannot convert a {img.mode} image to RGB: {exc}") from None
    return torch.from_numpy(np.asarray(rgb, np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def _from_array(t: torch.Tensor, what: str, channels_last: bool) -> torch.Tensor:
    layout = "(H, W) or (H, W, C), C 1-4" if channels_last else "(3, H, W) or (1, H, W)"
    if t.ndim == 2:
        t = t[None] if not channels_last else t[..., None]
    if t.ndim != 3:
        raise ImageError(f"a {what} image must be {layout}, got shape {tuple(t.shape)}")
    if channels_last:
        t = t.permute(2, 0, 1)
    if t.shape[0] not in ((1, 2, 3, 4) if channels_last else (1, 3)) or min(t.shape[1:]) < 1:
        raise ImageError(f"a {what} image must be {layout}, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
        if not torch.isfinite(t).all():
            raise ImageError(f"the {what} holds NaN or infinite values")
        low, high = float(t.min()), float(t.max())
        if low < 0 or high > 1:
            hint = ": 0-255 values? divide by 255" if high <= 255 and low >= 0 else ""
            raise ImageError(f"a float {what} image must lie in [0, 1], got "
                             f"{low:g}..{high:g}{hint}")
    else:
        raise ImageError(f"a {what} image must hold uint8 or floats in [0, 1], got {t.dtype}")
    if t.shape[0] in (2, 4):                              # alpha on white, as for files
        t = t[:-1] * t[-1:] + (1 - t[-1:])
    return t.expand(3, *t.shape[1:]).contiguous() if t.shape[0] == 1 else t.contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    # one float temporary, whatever the size (a 12-Mpixel image: 144 MB each)
    scaled = image.detach().cpu().clamp(0, 1).mul_(255).round_()
    return Image.fromarray(scaled.to(torch.uint8).permute(1, 2, 0).numpy(), "RGB")


IMAGE_FORMATS = {"": "PNG", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                 ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def image_format(name: str | Path) -> str:
    """The format an image file named `name` is written in, from its suffix (none: PNG);
    OutputError for a suffix of no format tica writes."""
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise OutputError(f"{name}: tica writes images as "
                         f"{', '.join(s for s in IMAGE_FORMATS if s)} (or no suffix: PNG), "
                         f"not {suffix}")
    return IMAGE_FORMATS[suffix]


def image_bytes(image: torch.Tensor, name: str | Path = ".png") -> bytes:
    """(3, H, W) in [0, 1] as the bytes of an image file named `name`: its suffix picks the
    format (`image_format`). tica.output writes them."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format=image_format(name))
    return buf.getvalue()


def encode_png(image: torch.Tensor) -> bytes:
    return image_bytes(image)
