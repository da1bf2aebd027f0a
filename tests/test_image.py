"""The one image reader: every kind of file and object a user has, read as a viewer shows it
or refused with an ImageError that names the fix. Every file is made here."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

import tica
from tica.cli import main
from tica.errors import ImageError
from tica.image import read_image


def _file(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _gradient(w: int = 48, h: int = 32) -> np.ndarray:
    """(h, w, 3) uint8 that differs along both axes, so any rotation or flip shows."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


def test_sixteen_bit_greyscale_keeps_its_levels():
    levels = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    data = _file(Image.fromarray(levels), "PNG")
    img = read_image(data)
    assert img.shape == (3, 16, 64)
    assert torch.allclose(img[0], torch.from_numpy(levels / 65535.0).float(), atol=1e-6)
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert 0.45 < float(img.mean()) < 0.55                # 4.5 dB white would be ~1.0


@pytest.mark.parametrize("orientation, expected", [
    (1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
    (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied_as_viewers_do(orientation, expected):
    arr = _gradient()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _file(Image.fromarray(arr), "PNG", exif=exif)
    img = read_image(data)
    want = torch.from_numpy(np.ascontiguousarray(expected(arr))).permute(2, 0, 1).float() / 255
    assert img.shape == want.shape and torch.equal(img, want)


def test_a_rotated_jpeg_is_read_upright():
    arr = _gradient(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6                                           # "rotate 90 CW to view"
    img = read_image(_file(Image.fromarray(arr), "JPEG", quality=95, exif=exif))
    assert img.shape == (3, 64, 32)                            # shown 32 wide, 64 tall


def test_transparency_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255                                       # top opaque red, bottom clear
    img = read_image(_file(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert torch.allclose(img[:, 0, 0], torch.tensor([200 / 255, 0, 0]))
    assert torch.equal(img[:, 7, 7], torch.ones(3))
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0                           # index 0 is see-through
    img = read_image(_file(palette, "PNG"))
    assert torch.equal(img[:, 0, 0], torch.ones(3)) and torch.equal(img[:, 0, 1], torch.tensor([0., 1, 0]))
    half = np.dstack([np.zeros((4, 4), np.float32), np.full((4, 4), 0.5, np.float32)])
    assert torch.allclose(read_image(half)[:, 0, 0], torch.full((3,), 0.5))   # grey+alpha array


def test_an_animation_is_refused_unless_a_frame_is_named():
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 128, 255)]
    data = _file(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="3 frames.*--frame K"):
        read_image(data)
    assert float(read_image(data, frame=1).mean()) == pytest.approx(128 / 255, abs=0.01)
    with pytest.raises(ImageError, match="frame 5 does not exist"):
        read_image(data, frame=5)


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "LA", "I;16", "RGB"])
def test_every_common_mode_reads_to_rgb_in_range(mode):
    base = Image.fromarray(_gradient())
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(base.convert("L")).astype(np.uint16) * 257))
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode in ("I;16",) else "PNG"
    out = read_image(_file(img, fmt))
    assert out.shape == (3, 32, 48) and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_the_api_takes_what_users_have_and_refuses_what_it_cannot_trust(tmp_path):
    arr = _gradient()
    want = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    path = tmp_path / "g.png"
    path.write_bytes(_file(Image.fromarray(arr), "PNG"))
    for source in (str(path), path, path.read_bytes(), Image.fromarray(arr), arr, want,
                   want.mul(255).round().byte()):
        assert torch.equal(read_image(source), want), type(source)
    bad = [(torch.full((3, 8, 8), float("nan")), "NaN"), (want * 255, "divide by 255"),
           (torch.zeros(2, 8, 8), "must be"), (np.zeros((8, 8, 3), np.int64), "uint8"),
           (torch.zeros(3, 0, 4), "must be"), (42, "cannot read an image from a int"),
           (b"%PDF-1.4 not an image", "not an image file"), (b"", "empty"),
           (tmp_path / "missing.png", "cannot read")]
    for source, message in bad:
        with pytest.raises(ImageError, match=message):
            read_image(source)
    model = tica.load("tica-cifar")
    with pytest.raises(ImageError, match="NaN"):
        tica.compress(model, torch.full((3, 32, 32), float("nan")))
    assert tica.compress(model, [str(path), arr]) == tica.compress(model, [want, want])


def test_the_cli_reads_the_same_way_and_says_so_in_one_line(tmp_path, capsys):
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (30, 220)]
    gif = tmp_path / "a.gif"
    gif.write_bytes(_file(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    out = tmp_path / "a.tica"
    assert main(["encode", str(gif), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tica: error: {gif}: the image has 2 frames") and "\n" not in err
    assert not out.exists()
    assert main(["encode", str(gif), "--frame", "1", "-o", str(out)]) == 0
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    assert main(["encode", str(text), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not an image file" in err and "BytesIO" not in err


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 40), h=st.integers(1, 40), mode=st.sampled_from(
    ["RGB", "L", "P", "RGBA", "LA", "1", "I;16"]), fmt=st.sampled_from(["PNG", "TIFF", "WEBP",
                                                                        "JPEG", "GIF", "BMP"]),
       orientation=st.integers(1, 8), seed=st.integers(0, 1000))
def test_generated_files_read_upright_or_are_refused_with_an_image_error(w, h, mode, fmt,
                                                                         orientation, seed):
    """A fuzz over modes, bit depths, formats, EXIF orientations and sizes: never a
    traceback, and a read image has the size a viewer shows."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257) \
        if mode == "I;16" else img.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    try:
        data = _file(img, fmt, exif=exif) if fmt in ("PNG", "JPEG", "WEBP", "TIFF") else _file(img, fmt)
    except (OSError, ValueError, KeyError):
        return                                              # a mode the format cannot store
    try:
        out = read_image(data)
    except ImageError:
        return
    stored = Image.open(io.BytesIO(data))
    rotated = stored.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    assert out.shape == (3, w, h) if rotated else out.shape == (3, h, w)
    assert torch.isfinite(out).all() and 0 <= float(out.min()) and float(out.max()) <= 1


def test_a_twelve_megapixel_phone_photo_is_read_upright():
    """The largest size the fuzz above stops short of: a 4000x3000 JPEG a phone wrote
    sideways (EXIF orientation 6), read as the viewer shows it, 3000 wide and 4000 tall."""
    y, x = np.mgrid[0:3000, 0:4000]
    arr = np.stack([x * 255 // 3999, y * 255 // 2999, np.zeros_like(x)], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    img = read_image(_file(Image.fromarray(arr), "JPEG", quality=85, exif=exif))
    assert img.shape == (3, 4000, 3000)
    # rotated 90 degrees clockwise: the stored image's left column is now the top row
    assert float(img[0, 0, :].mean()) < 0.05 and float(img[1, 0, -1]) < 0.05
    assert float(img[1, 0, 0]) > 0.95


def test_a_side_over_max_side_is_refused_before_the_file_is_decoded(monkeypatch):
    from PIL import ImageFile

    from tica.errors import ImageLimitError
    buf = io.BytesIO()
    Image.new("RGB", (600, 2)).save(buf, "PNG")
    assert read_image(buf.getvalue(), max_side=600).shape == (3, 2, 600)

    def no_decoding(self, *args):
        raise AssertionError("decoded before the limit was checked")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageLimitError, match="side 600 exceeds the limit of 599"):
        read_image(buf.getvalue(), max_side=599)
