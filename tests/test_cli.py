"""The `tica` command, end to end and in-process, on photograph-sized and CIFAR-sized images
the tests make (tests/conftest.py)."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from tica.cli import main
from tica.registry import standard_qualities


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_encode_classify_decode_a_photo(tmp_path, photo_path, capsys):
    stream, out = tmp_path / "k.tica", tmp_path / "k.png"
    assert main(["encode", str(photo_path), "-o", str(stream), "--model", "tica-photo", "--json"]) == 0
    enc = _json(capsys)
    assert enc["bytes"] == stream.stat().st_size and enc["images"] == 1
    assert enc["bpp"] == pytest.approx(8 * enc["bytes"] / (768 * 512))
    assert main(["info", str(stream), "--json"]) == 0
    info = _json(capsys)
    assert info["sizes"] == [{"width": 768, "height": 512}] and info["bytes"] == enc["bytes"]
    assert enc["sizes"] == info["sizes"]
    assert info["model"] == "tica-photo q6"           # the id names it; 6 of 8 is the default
    # tica-photo classifies photographs from the stream, in Imagenette's classes
    from tica.config import IMAGENETTE_LABELS
    assert main(["classify", str(stream), "--json"]) == 0
    report = _json(capsys)                            # one image: the same shape as many
    assert report["images"][0]["top"][0]["label"] in IMAGENETTE_LABELS
    assert report["images"][0]["size"] == {"width": 768, "height": 512}
    assert report["bpp"] == pytest.approx(enc["bpp"]) and report["bytes"] == enc["bytes"]
    assert main(["decode", str(stream), "-o", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (768, 512) and img.mode == "RGB"


def test_cifar_batch_through_the_cli(tmp_path, cifar_samples, capsys):
    paths = []
    for i, (data, _) in enumerate(cifar_samples[:5]):
        p = tmp_path / f"c{i}.jpg"
        p.write_bytes(data)
        paths.append(str(p))
    stream = tmp_path / "batch.tica"
    assert main(["encode", *paths, "-o", str(stream)]) == 0
    assert "5 image(s)" in capsys.readouterr().out
    assert main(["classify", str(stream), "--json"]) == 0
    res = _json(capsys)
    assert len(res["images"]) == 5 and all(len(e["top"]) == 5 for e in res["images"])
    assert all(set(e) == {"size", "bytes", "bpp", "quality", "top"} for e in res["images"])
    assert res["bytes"] == stream.stat().st_size
    assert main(["decode", str(stream), "-o", str(tmp_path / "out.png")]) == 0
    for i in range(5):
        with Image.open(tmp_path / f"out_{i:04d}.png") as img:
            assert img.size == (32, 32)
    single = tmp_path / "one.tica"
    assert main(["encode", paths[0], "-o", str(single)]) == 0
    capsys.readouterr()
    assert main(["info", str(single), "--json"]) == 0
    info = _json(capsys)
    # 11 bytes of header and sizes, and one byte for the image's quality code (variable rate)
    assert info["container_bytes"] == 12 and info["qualities"] == [6.0]    # the default point


def test_classify_takes_an_image_and_encodes_it_first(tmp_path, cifar_samples, capsys):
    """`tica classify IMAGE` is `tica encode IMAGE` then `tica classify` of that stream: the
    same bytes and classes, at the --quality asked; the JSON says what the file weighed."""
    img = tmp_path / "c.jpg"
    img.write_bytes(cifar_samples[3][0])
    stream = tmp_path / "c.tica"
    assert main(["encode", str(img), "-o", str(stream), "--quality", "2.5"]) == 0
    assert main(["classify", str(stream), "--json"]) == 0
    capsys.readouterr()
    assert main(["classify", str(stream), "--json"]) == 0
    from_stream = _json(capsys)
    assert main(["classify", str(img), "--quality", "2.5", "--json"]) == 0
    from_image = _json(capsys)
    assert from_image.pop("replaced_bytes") == img.stat().st_size
    assert from_image == from_stream and from_image["bytes"] == stream.stat().st_size
    assert main(["classify", str(img), "--quality", "2.5"]) == 0
    out = capsys.readouterr().out
    assert f"encoded here instead of the {img.stat().st_size}-byte file" in out
    assert from_stream["images"][0]["top"][0]["label"] in out.splitlines()[1]


def test_an_image_where_a_stream_belongs_is_named(tmp_path, photo_path, capsys):
    for name, fmt in (("p.png", "PNG"), ("p.jpg", "JPEG"), ("p.webp", "WEBP"), ("p.gif", "GIF")):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format=fmt)
        assert main(["info", str(tmp_path / name)]) == 1
        assert f"it is a {'WebP' if fmt == 'WEBP' else fmt} image" in _one_line_error(capsys)
    (tmp_path / "n.bin").write_bytes(b"hello world")
    assert main(["info", str(tmp_path / "n.bin")]) == 1
    assert _one_line_error(capsys).endswith("not a tica bitstream (bad magic number)")


def test_decode_names_its_files_by_format_and_refuses_a_folder(tmp_path, cifar_samples, capsys):
    """-o's suffix picks the format (BMP and TIFF too); a suffix of no format, or a folder
    for a batch's files, is refused before any decoding."""
    imgs = []
    for i in range(2):
        imgs.append(tmp_path / f"c{i}.jpg")
        imgs[-1].write_bytes(cifar_samples[i][0])
    one, two = tmp_path / "one.tica", tmp_path / "two.tica"
    assert main(["encode", str(imgs[0]), "-o", str(one)]) == 0
    assert main(["encode", *map(str, imgs), "-o", str(two)]) == 0
    capsys.readouterr()
    for suffix, fmt in ((".bmp", "BMP"), (".tif", "TIFF"), (".webp", "WEBP"), ("", "PNG")):
        out = tmp_path / f"d{suffix}"
        assert main(["decode", str(one), "-o", str(out)]) == 0
        with Image.open(out) as img:
            assert img.format == fmt and img.size == (32, 32)
    assert main(["decode", str(one), "-o", str(tmp_path / "d.gif")]) == 1
    assert "tica writes images as" in _one_line_error(capsys)
    assert not (tmp_path / "d.gif").exists()
    folder = tmp_path / "outs"
    folder.mkdir()
    for target in (str(folder), str(folder) + "/", str(tmp_path / "new") + "/"):
        assert main(["decode", str(two), "-o", target]) == 1
        assert "is a folder" in _one_line_error(capsys)
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob("*_0000.*"))


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_subcommand(capsys):
    out = _help([], capsys)
    assert out.startswith("usage: tica ")
    listed = re.findall(r"^    (\w+)\s{2,}\S", out, re.MULTILINE)
    assert listed == ["encode", "decode", "classify", "serve", "export", "info", "train", "eval",
                      "shards", "cache"]


MODEL_FLAGS = ["--model", "--weights", "--quality", "--untrained", "--max-gflop"]


@pytest.mark.parametrize("command, flags", [
    ("encode", ["IMG", "-o OUT.tica", "--output", "--json", "--target-bpp X", *MODEL_FLAGS]),
    ("decode", ["IN.tica", "-o OUT.png", "--output", "--device", "--coder-threads",
                *(f for f in MODEL_FLAGS if f != "--quality")]),
    ("classify", ["IN.tica", "--top-k K", "--server URL", "--json", "--frame", *MODEL_FLAGS]),
    ("info", ["IN.tica", "--json"]),
    ("serve", ["--host", "--port", "--model", "--weights", "--workers", "--threads",
               "--no-batching", "--max-gflop", "--max-body-bytes", "--max-images"]),
])
def test_every_subcommand_has_help(command, flags, capsys):
    out = _help([command], capsys)
    assert out.startswith("usage: tica " + command)
    assert [f for f in flags if f not in out] == []


def test_version(capsys):
    import tica
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"tica {tica.__version__}"


def test_every_option_of_every_subcommand_says_what_it_does():
    from tica.cli import build_parser
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, sub in subparsers.items() for a in sub._actions
               if a.dest != "help" and not (a.help or "").strip()]
    assert missing == []


def test_quality_means_something_wherever_it_is_accepted(tmp_path, cifar_samples, capsys):
    """decode takes no --quality; classify only with an image; encode refuses --quality with
    --target-bpp."""
    img = tmp_path / "c.jpg"
    img.write_bytes(cifar_samples[0][0])
    stream = tmp_path / "c.tica"
    assert main(["encode", str(img), "-o", str(stream), "--quality", "3"]) == 0
    capsys.readouterr()
    assert main(["classify", str(stream), "--quality", "6"]) == 1
    assert "applies only when an image is encoded" in _one_line_error(capsys)
    assert main(["encode", str(img), "-o", str(stream), "--quality", "3",
                 "--target-bpp", "1"]) == 1
    assert "give one of them" in _one_line_error(capsys)
    with pytest.raises(SystemExit):
        main(["decode", str(stream), "-o", str(tmp_path / "d.png"), "--quality", "2"])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tica: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_exit_non_zero_with_one_line(tmp_path, photo_path, capsys):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    assert main(["encode", str(not_image), "-o", str(tmp_path / "x.tica")]) == 1
    assert "not an image file" in _one_line_error(capsys)
    assert not (tmp_path / "x.tica").exists()
    assert main(["encode", str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.tica")]) == 1
    assert "cannot read" in _one_line_error(capsys)
    assert main(["info", str(photo_path)]) == 1
    assert "bad magic" in _one_line_error(capsys)
    assert main(["classify", str(tmp_path / "missing.tica")]) == 1
    _one_line_error(capsys)
    stream = tmp_path / "c.tica"
    img = tmp_path / "tiny.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(img)
    assert main(["encode", str(img), "-o", str(stream)]) == 0
    capsys.readouterr()
    data = bytearray(stream.read_bytes())
    data[12] ^= 0x40
    stream.write_bytes(bytes(data))
    assert main(["decode", str(stream), "-o", str(tmp_path / "d.png")]) == 1
    assert "checksum" in _one_line_error(capsys)
    assert not (tmp_path / "d.png").exists()
    assert main(["classify", str(stream), "--model", "tica-s"]) == 1
    _one_line_error(capsys)
    assert main(["encode", str(img), "-o", str(stream), "--quality", "99"]) == 1
    assert re.search("quality|rate point 99", _one_line_error(capsys))
    assert main(["encode", str(img), "-o", str(stream), "--model", "nope"]) == 1
    assert "unknown model" in _one_line_error(capsys)
    with pytest.raises(SystemExit) as exc:
        main(["classify", str(stream), "--top-k", "0"])
    assert exc.value.code == 2
    # a codec-only model's stream decodes, and classify says plainly why it will not
    assert main(["encode", str(img), "-o", str(stream), "--model", "hyperprior-cifar"]) == 0
    capsys.readouterr()
    assert main(["classify", str(stream)]) == 1
    assert "has no classifier" in _one_line_error(capsys)
    assert main(["decode", str(stream), "-o", str(tmp_path / "d.png")]) == 0


def test_shipped_rate_points_are_found_from_the_stream(tmp_path, cifar_samples, capsys):
    qualities = standard_qualities("tica-cifar")
    if len(qualities) < 2:
        pytest.skip("needs at least two shipped tica-cifar rate points")
    img = tmp_path / "c.jpg"
    img.write_bytes(cifar_samples[0][0])
    sizes = {}
    for q in qualities:
        stream = tmp_path / f"q{q}.tica"
        assert main(["encode", str(img), "-o", str(stream), "--quality", str(q), "--json"]) == 0
        sizes[q] = _json(capsys)["bytes"]
        assert main(["info", str(stream), "--json"]) == 0
        assert _json(capsys)["model"] == f"tica-cifar q{q}"
        assert main(["classify", str(stream), "--json"]) == 0          # no flags: the stream says
        assert _json(capsys)["model"] == f"tica-cifar q{q}"
        assert main(["decode", str(stream), "-o", str(tmp_path / f"q{q}.png")]) == 0
        capsys.readouterr()
    assert sizes[qualities[0]] <= sizes[qualities[-1]]                  # higher quality, more bytes


def test_variable_rate_weights_any_quality_and_a_target_bpp(tmp_path, capsys):
    """A variable-rate checkpoint: --quality takes any number in range, --target-bpp finds
    the quality per image, and decode / classify / info need no flags but the weights."""
    import numpy as np
    import torch
    import tica
    from tica.checkpoint import save_checkpoint
    model = tica.create_model("tica-cifar", seed=5, rate_levels=4, N=16, M=16, embed_dim=32,
                              depth=2, num_heads=2, fam_blocks=(1,)).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(40)
    model.update()
    weights = tmp_path / "vr.safetensors"
    save_checkpoint(model, weights)
    rng = np.random.default_rng(0)
    img = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    w = ["--weights", str(weights)]
    sizes = {}
    for q in ("1", "2.5", "4"):
        out = tmp_path / f"q{q}.tica"
        assert main(["encode", str(img), "-o", str(out), "--quality", q, "--json", *w]) == 0
        enc = _json(capsys)
        sizes[q] = enc["bpp"]
        assert enc["model"] == f"tica-cifar q{float(q):g}"
        assert main(["info", str(out), "--json"]) == 0
        assert _json(capsys)["qualities"] == [float(q)]
        assert main(["classify", str(out), "--json", *w]) == 0
        assert _json(capsys)["images"][0]["quality"] == float(q)
        assert main(["decode", str(out), "-o", str(tmp_path / f"q{q}.png"), *w]) == 0
        capsys.readouterr()
    assert sizes["1"] < sizes["2.5"] < sizes["4"]
    target = (sizes["1"] + sizes["4"]) / 2
    out = tmp_path / "t.tica"
    assert main(["encode", str(img), "-o", str(out), "--target-bpp", str(target), "--json", *w]) == 0
    enc = _json(capsys)
    assert enc["bpp"] <= target and 1 <= enc["qualities"][0] < 4
    assert main(["encode", str(img), "-o", str(out), "--quality", "4.5", *w]) == 1
    assert "outside" in _one_line_error(capsys)
    fixed = tica.create_model("tica-cifar", seed=5, N=16, M=16, embed_dim=32, depth=2,
                              num_heads=2, fam_blocks=(1,)).eval()
    fixed.update()
    save_checkpoint(fixed, tmp_path / "fixed.safetensors", {"quality": 1})
    assert main(["encode", str(img), "-o", str(out), "--target-bpp", "1",
                 "--weights", str(tmp_path / "fixed.safetensors")]) == 1
    assert "fixed-rate" in _one_line_error(capsys)


# ---- tica train: options derived from TrainConfig ------------------------------------------

def _train_config_of(monkeypatch, argv: list[str]):
    """The TrainConfig `tica train ARGV` would train with (train() itself replaced)."""
    import tica.train
    seen = []

    class Done:
        weights, steps = "w.safetensors", 0

    monkeypatch.setattr(tica.train, "train", lambda cfg, resume=False: seen.append(cfg) or Done())
    assert main(["train", *argv]) == 0
    return seen[0]


def test_train_options_are_the_train_config_fields():
    """Each option with help is a TrainConfig field: its default is the field's, its choices
    the config's."""
    import dataclasses
    from tica.cli import build_parser
    from tica.config import OPTIMIZERS, TrainConfig
    args = build_parser().parse_args(["train"])
    offered = [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
    assert len(offered) >= 28
    for f in offered:
        assert getattr(args, f.name) == f.default, f.name
    assert (args.lr, args.batch_size, args.optimizer, args.bf16) == (1e-3, 128, "adamw", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--optimizer", "sgd"])
    assert build_parser().parse_args(["train", "--optimizer", OPTIMIZERS[1]]).optimizer == "adam"


def test_a_default_changed_in_train_config_shows_in_the_cli(monkeypatch, capsys):
    from tica.cli import build_parser
    from tica.config import TrainConfig
    monkeypatch.setattr(TrainConfig.__dataclass_fields__["batch_size"], "default", 77)
    monkeypatch.setattr(TrainConfig.__dataclass_fields__["epoch_size"], "default", 1234)
    args = build_parser().parse_args(["train"])
    assert (args.batch_size, args.epoch_size) == (77, 1234)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "global batch size, split across processes; default 77" in help_text
    assert "random crops per epoch; default 1234" in help_text


def test_every_train_flag_keeps_its_name_and_meaning(monkeypatch, tmp_path):
    cfg = _train_config_of(monkeypatch, [
        "--data", "synthetic", "--run-dir", str(tmp_path), "--model", "vit-pixel-cifar",
        "--step", "2", "--init", "w.safetensors", "--alpha", "0.5", "--beta", "0.01",
        "--alpha-max", "5", "--beta-max", "0.1", "--quality", "3", "--epochs", "2.5",
        "--max-steps", "7", "--batch-size", "16", "--lr", "0.002", "--hyper-lr", "0.004",
        "--latent-std", "1.5", "--rate-warmup-steps", "9", "--weight-decay", "0.01",
        "--warmup-steps", "11", "--optimizer", "adam", "--ema", "0.9", "--seed", "5",
        "--device", "cpu", "--checkpoint-every", "13", "--deadline-s", "60",
        "--export-every-s", "30", "--export-dir", str(tmp_path / "x"), "--eval-images", "17",
        "--train-limit", "19", "--set", "depth=2", "--set", "fam=false", "--no-bf16",
        "--no-progress", "--epoch-size", "23"])
    assert (cfg.model, cfg.step, cfg.init, cfg.quality) == ("vit-pixel-cifar", 2, "w.safetensors", 3)
    assert (cfg.alpha, cfg.beta, cfg.alpha_max, cfg.beta_max) == (0.5, 0.01, 5.0, 0.1)
    assert (cfg.epochs, cfg.max_steps, cfg.batch_size, cfg.lr, cfg.hyper_lr) == (2.5, 7, 16, 0.002, 0.004)
    assert (cfg.latent_std, cfg.rate_warmup_steps, cfg.weight_decay, cfg.warmup_steps) == (1.5, 9, 0.01, 11)
    assert (cfg.optimizer, cfg.ema, cfg.seed, cfg.device, cfg.checkpoint_every) == ("adam", 0.9, 5, "cpu", 13)
    assert (cfg.deadline_s, cfg.export_every_s, cfg.export_dir) == (60.0, 30.0, str(tmp_path / "x"))
    assert (cfg.eval_images, cfg.train_limit, cfg.epoch_size) == (17, 19, 23)
    assert cfg.model_overrides == {"depth": 2, "fam": False}
    assert (cfg.bf16, cfg.progress, cfg.data, cfg.run_dir) == (False, False, "synthetic", str(tmp_path))
    plain = _train_config_of(monkeypatch, ["--data", "synthetic", "--run-dir", str(tmp_path)])
    from tica.config import TrainConfig
    assert plain == TrainConfig(data="synthetic", run_dir=str(tmp_path))


def test_train_data_defaults_to_the_folder_tica_data_names(monkeypatch, tmp_path, capsys):
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"")
    monkeypatch.setenv("TICA_DATA", str(tmp_path))
    cfg = _train_config_of(monkeypatch, ["--run-dir", str(tmp_path / "run")])
    assert cfg.data == str(tmp_path / "cifar10-jpeg.tar.gz")
    monkeypatch.setenv("TICA_DATA", str(tmp_path / "empty"))
    assert main(["train", "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "TICA_DATA" in err and "--data" in err


def test_one_list_of_architectures_and_one_default_model():
    from tica.config import ARCHS, TrainConfig
    from tica.registry import ARCHITECTURES, DEFAULT_MODEL, get_config
    assert tuple(ARCHITECTURES) == ARCHS
    assert TrainConfig().model == DEFAULT_MODEL and get_config(DEFAULT_MODEL).name == DEFAULT_MODEL
    assert TrainConfig().data is None          # no repository layout in the library


def test_device_and_coder_threads_choose_where_work_runs_and_never_change_the_bytes(
        tmp_path, cifar_samples, capsys, monkeypatch):
    """--device auto is the CPU where no GPU is visible; --device cuda there is one line and
    exit 1; the coder's thread count changes the speed, never a byte of the stream."""
    import torch
    from tica import api
    from tica.entropy import parallel
    from tica.errors import ConfigError

    paths = []
    for i, (data, _) in enumerate(cifar_samples[:6]):
        paths.append(tmp_path / f"c{i}.jpg")
        paths[-1].write_bytes(data)
    monkeypatch.setattr(parallel, "MIN_SYMBOLS_PER_RANGE", 1)     # split even 6 images
    streams = []
    try:
        for threads in ("1", "3"):
            out = tmp_path / f"t{threads}.tica"
            assert main(["encode", *map(str, paths), "-o", str(out), "--device", "auto",
                         "--coder-threads", threads]) == 0
            streams.append(out.read_bytes())
            capsys.readouterr()
            assert main(["classify", str(out), "--json", "--device", "cpu",
                         "--coder-threads", threads]) == 0
            streams.append(json.dumps(_json(capsys)["images"]))
    finally:
        parallel.set_threads(None)
    assert streams[0] == streams[2] and streams[1] == streams[3]
    capsys.readouterr()
    if not torch.cuda.is_available():
        assert api.resolve_device("auto") == torch.device("cpu")
        assert main(["classify", str(tmp_path / "t1.tica"), "--device", "cuda"]) == 1
        assert capsys.readouterr().err.strip() == (
            "tica: error: no CUDA GPU is visible to this process: use --device cpu (or auto)")
    assert main(["decode", str(tmp_path / "t1.tica"), "-o", str(tmp_path / "d.png"),
                 "--coder-threads", "0"]) == 1
    assert "at least one thread" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown device"):
        api.resolve_device("tpu")
