"""The one output writer: atomic, never over an input, links followed, only regular files
replaced, "-" for standard output; every refusal one line, exit 1, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from tica.bitstream import MAGIC
from tica.cli import main
from tica.errors import OutputError
from tica.output import check_output, write_output


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (10, 120, 200)).save(path)
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tica: error: ") and "\n" not in err, err
    return err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_an_input_is_never_overwritten_by_any_path_to_it(tmp_path, image, capsys):
    before = image.read_bytes()
    for target in (image, tmp_path / "." / "photo.png"):
        assert main(["encode", str(image), "-o", str(target)]) == 1
        assert "is an input of this command" in _one_line(capsys)
    link = tmp_path / "alias.png"
    link.symlink_to(image)
    assert main(["encode", str(image), "-o", str(link)]) == 1
    _one_line(capsys)
    stream = tmp_path / "s.tica"
    assert main(["encode", str(image), "-o", str(stream)]) == 0
    capsys.readouterr()
    written = stream.read_bytes()
    assert main(["decode", str(stream), "-o", str(stream)]) == 1
    assert "is an input" in _one_line(capsys)
    assert image.read_bytes() == before and stream.read_bytes() == written
    assert _leftovers(tmp_path) == []


def test_a_symbolic_link_stays_a_link_and_its_target_is_written(tmp_path, image, capsys):
    target = tmp_path / "real.tica"
    target.write_bytes(b"old")
    link = tmp_path / "link.tica"
    link.symlink_to(target)
    assert main(["encode", str(image), "-o", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() != b"old" and len(target.read_bytes()) > 11


def test_only_a_regular_file_is_replaced(tmp_path, image, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target, kind in ((folder, "a folder"), (fifo, "a pipe"), (Path("/dev/null"), "device")):
        assert main(["encode", str(image), "-o", str(target)]) == 1
        assert kind in _one_line(capsys)
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert Path("/dev/null").is_char_device()
    for target in ("/proc/x.tica", str(image) + "/inside.tica"):   # unwritable; under a file
        assert main(["encode", str(image), "-o", target]) == 1
        assert f"cannot write {target}" in _one_line(capsys)
    assert _leftovers(tmp_path) == []


def test_dash_is_standard_output_for_streams_and_single_images(tmp_path, image, capsysbinary):
    assert main(["encode", str(image), "-o", "-"]) == 0
    captured = capsysbinary.readouterr()
    stream = captured.out
    assert stream.startswith(MAGIC) and b"bytes" in captured.err
    assert not (Path.cwd() / "-").exists()
    path = tmp_path / "s.tica"
    path.write_bytes(stream)
    assert main(["info", str(path)]) == 0
    assert b"1 image(s)" in capsysbinary.readouterr().out
    assert main(["decode", str(path), "-o", "-"]) == 0
    png = capsysbinary.readouterr().out
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    batch = tmp_path / "b.tica"
    assert main(["encode", str(image), str(image), "-o", str(batch)]) == 0
    capsysbinary.readouterr()
    assert main(["decode", str(batch), "-o", "-"]) == 1
    assert b"holds 2" in capsysbinary.readouterr().err


def test_the_writer_checks_before_and_cleans_up_after(tmp_path):
    out = tmp_path / "a.bin"
    assert check_output(out) == out.resolve()
    assert write_output(out, b"data") == str(out) and out.read_bytes() == b"data"
    with pytest.raises(OutputError, match="refusing to overwrite"):
        write_output(out, b"new", inputs=[out])
    assert out.read_bytes() == b"data" and _leftovers(tmp_path) == []
