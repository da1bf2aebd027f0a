"""Large photographs as users have them: banded runs give the whole-image numbers with
bounded memory, and a terminal shows their progress."""

from __future__ import annotations

import io

import pytest
import torch

import tica
from tica.cli import ProgressBar, main
from tica.nn import bands
from tica.nn.conv import nhwc


@pytest.fixture(scope="module")
def photo_model():
    return tica.load("tica-photo")


def test_bands_give_the_whole_image_results(photo_model, monkeypatch):
    """The integer h_s bit for bit (exact arithmetic), g_a and g_s within float rounding,
    at any band size, on unaligned sizes (the padding done band by band) and batches."""
    m = photo_model
    torch.manual_seed(0)
    x = torch.rand(2, 3, 301, 203)
    z = torch.randint(-6, 7, (2, m.config.N, 29, 13)).double()
    y = torch.randn(3, m.g_s[0].in_channels, 13, 9)

    def run():
        return (bands.run_in_bands(lambda t: m.g_a(nhwc(t)), x, geometry_of=m.g_a, pad=32),
                m.integer_h_s(z), bands.run_in_bands(m.g_s, nhwc(y)))

    with torch.no_grad():
        whole = (m.g_a(nhwc(bands.pad_to(x, 32))), run()[1], m.g_s(nhwc(y)))
        for budget in (1, 1 << 20, 40 << 20):
            monkeypatch.setattr(bands, "BAND_BYTES", budget)
            banded = run()
            assert banded[0].shape == whole[0].shape and banded[2].shape == whole[2].shape
            assert torch.allclose(banded[0], whole[0], atol=1e-4, rtol=0)
            assert torch.equal(banded[1], whole[1])
            assert torch.allclose(banded[2], whole[2], atol=1e-4, rtol=0)


def test_a_large_photo_codes_in_bands_as_it_does_whole(photo_model, monkeypatch, tmp_path):
    """Coded whole or in the bands a 64 KB budget forces, a photo's streams are the same
    size within 1% and decode to the same picture within rounding: a float32 sum in another
    order can move a latent across a rounding boundary, no more."""
    from conftest import made_up_photo
    image = tica.image.read_image(made_up_photo(200, 152, 3))
    whole = tica.compress(photo_model, image)
    decoded = tica.reconstruct(photo_model, whole)[0]
    seen = []
    monkeypatch.setattr(bands, "BAND_BYTES", 64 << 10)
    with bands.reporting(lambda *report: seen.append(report)):
        banded = tica.compress(photo_model, image)
        banded_decoded = tica.reconstruct(photo_model, banded)[0]
    assert abs(len(banded) - len(whole)) <= 0.01 * len(whole)
    assert (banded_decoded - decoded).abs().mean() < 2e-3
    mse = [float(((d - image) ** 2).mean()) for d in (decoded, banded_decoded)]
    assert abs(10 * torch.log10(torch.tensor(mse[0] / mse[1]))) < 0.05      # dB
    assert {label for label, _, _ in seen} == {"g_a", "h_s", "g_s"}
    assert all(done <= total for _, done, total in seen)


def test_the_progress_bar_draws_one_line_and_clears_it(monkeypatch, tmp_path, capsys):
    out = io.StringIO()
    bar = ProgressBar(out)
    bar("g_a", 1, 4)
    assert out.getvalue() == "\rtica: g_a [#######.......................] 1/4"
    bar("g_a", 4, 4)
    assert out.getvalue().endswith("\r" + " " * 54 + "\r")
    # the CLI shows it on a terminal only
    from conftest import made_up_photo
    path = tmp_path / "p.png"
    made_up_photo(96, 64, 1).save(path)
    monkeypatch.setattr(bands, "BAND_BYTES", 64 << 10)
    assert main(["encode", str(path), "-o", str(tmp_path / "a.tica")]) == 0
    assert "[#" not in capsys.readouterr().err
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert main(["encode", str(path), "-o", str(tmp_path / "b.tica")]) == 0
    assert "tica: g_a [" in capsys.readouterr().err
    assert (tmp_path / "a.tica").read_bytes() == (tmp_path / "b.tica").read_bytes()


def test_the_default_server_admits_a_phone_photo_and_the_cli_says_when_it_would_not(
        photo_model, capsys, tmp_path):
    """What `tica encode` writes for a 12-Mpixel photograph is within a default server's
    limits and budget; past them the CLI says so (and the server answers 413)."""
    from tica import bitstream
    from tica.cli import _default_server_refusal
    from tica.serve.config import ServeConfig
    config = ServeConfig()
    sizes = [(3024, 4032)]
    assert config.limits.max_pixels >= 3024 * 4032 and config.limits.max_side >= 4032
    config.budget.check(photo_model, sizes, ("classify", "reconstruct"))   # no BudgetError
    fake = bitstream.pack(photo_model.model_id, sizes, [b"\x01\x00\x00\x00"], [80])
    assert _default_server_refusal(photo_model, fake) is None
    huge = bitstream.pack(photo_model.model_id, [(6048, 8064)], [b"\x01\x00\x00\x00"], [80])
    assert "--max-pixels" in _default_server_refusal(photo_model, huge)
    assert "--max-body-bytes" in _default_server_refusal(photo_model, fake + b"x" * (8 << 20))
