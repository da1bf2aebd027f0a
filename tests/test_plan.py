"""Training plans (tica_tools.plan): the smoke plan runs gpu.json's runs end to end on the CPU,
dependencies in order, exports published within a remote runner's output limits; a deadline
stops a run that still exports; the GPU-side data paths run on the CPU."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import tica
from tica.config import TrainConfig
from tica.errors import CheckpointError, ConfigError
from tica_tools.plan import (EXPORT_FILE, STATUS_FILE, Limits, Publisher, check_limits, join_parts, layout,
                       load_plan, pack_bytes, read_pack, run_plan)

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "scripts" / "plans"
TINY = {"N": 16, "M": 16, "embed_dim": 32, "depth": 3, "num_heads": 2, "drop_path": 0.1}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke plan, run once through the command line: (out, runs dir, status)."""
    from tica_tools.plan import main
    root = tmp_path_factory.mktemp("smoke")
    out, runs = root / "out", root / "runs"
    rc = main(["run", str(PLANS / "smoke.json"), "--out", str(out),
               "--runs-dir", str(runs), "--fresh"])
    assert rc == 0
    return out, runs, json.loads((out / STATUS_FILE).read_text())


def test_smoke_plan_exports_every_run_coding_ready(smoke, tmp_path):
    out, runs, status = smoke
    plan = load_plan(PLANS / "smoke.json", runs_dir=runs)
    joined = {p.name: p for p in join_parts(out, tmp_path / "joined")}
    published = [r for r in plan.runs if r.publish]
    assert sorted(joined) == sorted(f"{r.name}.safetensors" for r in published)
    for run in published:
        path = joined[f"{run.name}.safetensors"]
        with safe_open(str(path), framework="pt") as f:              # float16, as shipped
            floats = [f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()]
        assert floats and set(floats) == {torch.float16}
        model = tica.load_checkpoint(path)                            # as written, no update()
        if run.config.step == 2 and hasattr(model, "is_updated"):
            assert model.is_updated, run.name
        assert tica.load(weights=path).config.name == model.config.name
        assert model.weights_info.train_steps == status["runs"][run.name]["steps"]
    tica_cifar = tica.load(weights=joined["tica-cifar.safetensors"])
    assert tica_cifar.quality_range == (1.0, 8.0)
    assert tica.load(weights=joined["tica-cifar-nofam.safetensors"]).fam is None


def test_smoke_plan_keeps_dependency_order_and_reports_every_run(smoke):
    out, runs, status = smoke
    plan = load_plan(PLANS / "smoke.json", runs_dir=runs)
    states = status["runs"]
    assert status["finished"] and set(states) == {r.name for r in plan.runs}
    for run in plan.runs:
        st = states[run.name]
        assert st["steps"] >= 1 and st["img_s_mean"] > 0 and st["minutes"] > 0, run.name
        assert st["state"] == ("stopped" if run.name == "vit-pixel-cifar" else "done"), st
        if run.after:                 # started from the dependency's export, once it ended
            dep = states[run.after]
            assert st["started_s"] >= dep["ended_s"]
            init = json.loads((runs / run.name / "config.json").read_text())["init"]
            assert Path(init) == runs / run.after / "model.safetensors"
    assert states["tica-cifar"]["after"] == "tica-cifar-step1"


def test_smoke_plan_deadline_stops_a_run_that_still_exports(smoke, tmp_path):
    out, runs, status = smoke
    vit = status["runs"]["vit-pixel-cifar"]
    assert "deadline" in vit["reason"] and vit["steps"] < vit["planned_steps"]
    assert vit["interim_exports"] >= 1                      # published while it trained
    assert vit["last"]["lr"] < 0.05 * 1e-3                  # its schedule ran to the deadline
    path = join_parts(out, tmp_path)[0].parent / "vit-pixel-cifar.safetensors"
    assert tica.load(weights=path).weights_info.train_steps == vit["steps"]


def test_smoke_plan_output_fits_the_return_limits(smoke):
    out, _, status = smoke
    files = [p for p in out.rglob("*") if p.is_file()]
    limits = Limits()
    assert len(files) <= limits.max_files
    assert all(p.stat().st_size <= limits.max_file_bytes for p in files)
    assert sum(p.stat().st_size for p in files) <= limits.max_total_bytes
    assert all(p.name.replace(".", "").replace("_", "").replace("-", "").isalnum() for p in files)
    assert all(info["packed"] for info in status["files"].values())   # 7 runs, 6 files: packed
    for name, info in status["files"].items():
        data = (read_pack(out / info["parts"][0])[name] if info["packed"]
                else b"".join((out / part).read_bytes() for part in info["parts"]))
        assert hashlib.sha256(data).hexdigest() == info["sha256"]


def _sources(folder: Path, blobs: dict[str, bytes]) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    for k, v in blobs.items():
        (folder / k).write_bytes(v)
    return {k: folder / k for k in blobs}


def test_publisher_splits_files_keeps_limits_and_order(tmp_path):
    out = tmp_path / "out"
    blobs = {"a": bytes(range(256)) * 10, "b": b"b" * 500, "c": b"c" * 300}     # a: 2560 bytes
    sources = _sources(tmp_path / "src", blobs)
    limits = Limits(max_files=6, max_file_bytes=1000, max_total_bytes=4000)
    pub = Publisher(out, limits, {k: len(v) for k, v in blobs.items()})
    assert [s.file for s in pub.slots] == [None, None, None]             # they fit alone
    assert pub.update(sources) == ["a", "b", "c"] and pub.update(sources) == []
    assert sorted(p.name for p in out.iterdir()) == [
        "a.safetensors.part0", "a.safetensors.part1", "a.safetensors.part2", "b.safetensors",
        "c.safetensors"]
    (out / STATUS_FILE).write_text(json.dumps({"files": pub.manifest()}))
    joined = {p.name: p.read_bytes() for p in join_parts(out, tmp_path / "j")}
    assert joined == {f"{k}.safetensors": v for k, v in blobs.items()}
    (sources["a"]).write_bytes(b"a" * 900)                      # a shrinks: its parts go
    assert pub.update(sources) == ["a"]
    assert sorted(p.name for p in out.iterdir()) == [
        "a.safetensors", "b.safetensors", "c.safetensors", STATUS_FILE]
    (out / "a.safetensors").write_bytes(b"x" * 900)             # status still lists a's sha
    (out / STATUS_FILE).write_text(json.dumps({"files": {"a.safetensors": {"sha256": "0" * 64}}}))
    with pytest.raises(CheckpointError, match="sha256"):
        join_parts(out, tmp_path / "k")
    tight = Publisher(tmp_path / "o2", Limits(max_files=3, max_file_bytes=1000, max_total_bytes=1200),
                      {k: len(v) for k, v in blobs.items()})
    assert list(tight.left_out) == ["a"]                        # in plan order while they fit
    assert tight.update(sources) == ["b", "c"] and "a" in tight.left_out


def test_publisher_packs_what_would_not_come_back_alone(tmp_path):
    out = tmp_path / "out"
    blobs = {"a": bytes(range(256)) * 250, "b": b"b" * 5000, "c": b"c" * 3000, "d": b"d" * 9000}
    sources = _sources(tmp_path / "src", blobs)
    sizes = {k: len(v) for k, v in blobs.items()}
    limits = Limits(max_files=5, max_file_bytes=40000, max_total_bytes=200000)
    assert list(layout(sizes, limits)[1]) == []
    assert layout(sizes, Limits(max_files=6, max_file_bytes=40000))[0][1].file is None  # fits alone
    pub = Publisher(out, limits, sizes)              # alone: 1 + 2 + 3 files = 6, packed: 4
    assert [(s.runs, s.file) for s in pub.slots] == [(("a",), None), (("b", "c", "d"), "pack1.tar")]
    assert pub.update(sources) == ["a", "b", "c", "d"]
    assert sorted(p.name for p in out.iterdir()) == [
        "a.safetensors.part0", "a.safetensors.part1", "pack1.tar"]
    pack = out / "pack1.tar"
    assert pack.stat().st_size <= pack_bytes({k: sizes[k] for k in "bcd"}) <= limits.max_file_bytes
    assert set(read_pack(pack)) == {"b.safetensors", "c.safetensors", "d.safetensors"}
    (out / STATUS_FILE).write_text(json.dumps({"files": pub.manifest()}))
    assert pub.manifest()["c.safetensors"]["parts"] == ["pack1.tar"]
    sources["c"].write_bytes(b"C" * 3000)                       # c exports again: the pack is
    a_mtime = (out / "a.safetensors.part0").stat().st_mtime_ns  # rewritten whole, a untouched
    assert pub.update(sources) == ["c"]
    assert (out / "a.safetensors.part0").stat().st_mtime_ns == a_mtime
    # cut before plan.json was written again: the pack is checked against its own index
    joined = {p.name: p.read_bytes() for p in join_parts(out, tmp_path / "j")}
    assert joined["c.safetensors"] == b"C" * 3000 and joined["a.safetensors"] == blobs["a"]
    sources["d"].write_bytes(b"d" * 45000)                      # d outgrew its pack: left out
    assert pub.update(sources) == [] and "d" in pub.left_out
    assert set(read_pack(pack)) == {"b.safetensors", "c.safetensors"}
    data = pack.read_bytes()
    pack.write_bytes(data[:7000])                               # truncated inside c
    with pytest.raises(CheckpointError, match="pack1.tar"):
        join_parts(out, tmp_path / "k")
    pack.write_bytes(data.replace(b"C" * 100, b"X" * 100, 1))   # a member altered
    with pytest.raises(CheckpointError, match="sha256"):
        join_parts(out, tmp_path / "k")
    again = Publisher(out, Limits(max_files=8, max_file_bytes=40000), sizes)   # all alone now:
    assert [s.file for s in again.slots] == [None] * 4
    assert not pack.exists() and len(list(out.glob("a.safetensors.part*"))) == 2   # stray pack goes


def test_a_pack_write_cut_short_is_written_again_at_the_next_publish(tmp_path, monkeypatch):
    """A signal during a pack's write: the next publish (the runner's last, on its way out)
    still takes the new export as unwritten and writes the pack with it."""
    import tica_tools.plan.publish as publish
    out = tmp_path / "out"
    blobs = {"a": bytes(range(256)) * 250, "b": b"b" * 5000, "c": b"c" * 3000, "d": b"d" * 9000}
    sources = _sources(tmp_path / "src", blobs)
    pub = Publisher(out, Limits(max_files=5, max_file_bytes=40000, max_total_bytes=200000),
                    {k: len(v) for k, v in blobs.items()})
    assert pub.update(sources) == ["a", "b", "c", "d"]
    sources["c"].write_bytes(b"C" * 3000)
    real = publish.write_pack

    def interrupted(*args):
        monkeypatch.setattr(publish, "write_pack", real)
        raise KeyboardInterrupt
    monkeypatch.setattr(publish, "write_pack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pub.update(sources)
    assert pub.update(sources) == ["c"]
    assert read_pack(out / "pack1.tar")["c.safetensors"] == b"C" * 3000


def test_plans_share_gpu_json_runs_and_fit_the_limits():
    gpu, cpu, smoke = (load_plan(PLANS / f"{n}.json", runs_dir="/tmp/r", data_root="DATA")
                       for n in ("gpu", "cpu", "smoke"))
    shape = lambda plan: [(r.name, r.after, r.config.model, r.config.step, r.publish,
                           r.config.model_overrides.get("rate_levels"), r.config.model_overrides.get("fam"))
                          for r in plan.runs]
    assert shape(gpu) == shape(cpu) == shape(smoke)
    sizes = check_limits(gpu)                                  # raises if they cannot come back
    assert set(sizes) == {r.name for r in gpu.runs if r.publish}
    for r in gpu.runs:
        c = r.config
        assert c.device == "cuda" and c.deadline_s <= gpu.deadline_s == 470 and c.schedule_by_deadline
        assert not r.publish or c.export_every_s <= 120
        assert c.data in ("DATA/cifar10-jpeg.tar.gz", "DATA/photos", "DATA/imagenette")
    photo = gpu.run("tica-photo").config           # the shipped recipe: labelled photographs
    assert photo.data == "DATA/imagenette" and photo.alpha == 1
    assert photo.model_overrides["entropy_gain"] is True
    assert gpu.run("tica-cifar").config.rate_points(8)[-1] == pytest.approx((30, 0.03))
    assert gpu.run("vit-pixel-cifar").config.epochs == (gpu.run("tica-cifar-step1").config.epochs
                                                        + gpu.run("tica-cifar").config.epochs)
    vit, photo = gpu.run("vit-pixel-photo").config, gpu.run("tica-photo").config
    assert (vit.data, vit.epochs, vit.batch_size) == (photo.data, photo.epochs, photo.batch_size)
    assert cpu.run("vit-pixel-photo").config.epochs == cpu.run("tica-photo").config.epochs
    slots, _ = layout(sizes, gpu.limits)
    assert 1 + sum(1 if s.file else gpu.limits.parts(sizes[s.runs[0]]) for s in slots) <= 8
    assert any(s.file for s in slots)                          # 9 files alone: packed
    assert all(r.config.device == "cpu" and r.config.resumable and r.config.deadline_s == 9000
               for r in cpu.runs)


def _write(tmp_path, spec) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("runs, match", [
    ([{"name": "a", "init": "@b"}], "does not have"),
    ([{"name": "a", "init": "@b"}, {"name": "b", "init": "@a"}], "cycle"),
    ([{"name": "a", "epochz": 1}], "unknown train config"),
    ([{"name": "a/b"}], "run name"),
    ([{"name": "a", "run_dir": "x"}], "set by the plan"),
    ([{"name": "a"}, {"name": "a"}], "repeat"),
])
def test_bad_plans_are_refused(tmp_path, runs, match):
    with pytest.raises(ConfigError, match=match):
        load_plan(_write(tmp_path, {"name": "t", "runs": runs}))


def test_exports_that_cannot_come_back_are_refused_before_training(tmp_path):
    spec = {"name": "t", "limits": {"max_files": 4, "max_file_bytes": 4 * 2 ** 20},   # 2 parts each
            "runs": [{"name": "a", "model": "vit-pixel-cifar"}, {"name": "b", "model": "vit-pixel-cifar"}]}
    with pytest.raises(ConfigError, match="publish"):
        run_plan(_write(tmp_path, spec), out=tmp_path / "out", runs_dir=tmp_path / "r")


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(model="tica-cifar", data="synthetic", run_dir=str(tmp_path / "run"), step=2,
                epochs=100000, batch_size=8, train_limit=32, eval_images=0, log_every=1,
                progress=False, model_overrides={**TINY, "rate_levels": 2}, alpha=0.5,
                alpha_max=5, beta=1e-3, beta_max=1e-2, warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


def test_train_stops_at_its_deadline_saved_and_exported(tmp_path):
    import time
    from tica.train import STATE_FILE, load_state, train
    cfg = _cfg(tmp_path, clock_start=time.time(), deadline_s=3.0, export_every_s=0.5,
               export_dir=str(tmp_path / "export"))
    result = train(cfg)
    assert result.stopped == "deadline" and 0 < result.steps < result.planned_steps
    assert int(load_state(Path(cfg.run_dir) / STATE_FILE)[0]["step"]) == result.steps
    records = [json.loads(l) for l in Path(cfg.run_dir, "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("export") == "interim" for r in records)
    assert [r for r in records if r.get("done")][0]["stopped"] == "deadline"
    half = tica.load_checkpoint(tmp_path / "export" / "model.safetensors")
    assert half.is_updated and half.weights_info.train_steps == result.steps
    assert tica.load_checkpoint(result.weights).is_updated


def test_request_stop_ends_a_run_like_a_deadline(tmp_path):
    from tica import train as train_module
    from tica.train import clock
    timer = threading.Timer(2.0, train_module.request_stop)
    timer.start()
    try:
        result = train_module.train(_cfg(tmp_path, step=1, resumable=False))
    finally:
        timer.cancel()
        clock._STOP.clear()
    assert result.stopped == "signal" and result.steps > 0
    assert not (Path(tmp_path) / "run" / "checkpoint.safetensors").exists()
    assert tica.load_checkpoint(result.weights).config.name == "tica-cifar"


def test_augment_is_unchanged_on_the_cpu():
    """The device-friendly flip (torch.where) draws and returns what the masked flip did."""
    import torch.nn.functional as F
    from tica.data import padded_crop

    def before(batch, pad, generator):
        B, _, H, W = batch.shape
        padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
        rows = (dy[:, None] + torch.arange(H))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(W))[:, None, None, :]
        out = padded[torch.arange(B)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
        flip = torch.rand(B, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
        return out

    x = torch.rand(16, 3, 32, 32)
    a = padded_crop(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, before(x, 4, torch.Generator().manual_seed(5)))


def test_device_crops_gather_whole_crops_of_the_photos():
    from tica.data import DeviceCrops
    photos = [torch.full((3, 40, 60), 10 * (i + 1), dtype=torch.uint8) for i in range(3)]
    photos.append(torch.full((3, 20, 30), 99, dtype=torch.uint8))           # resized up
    crops = DeviceCrops(photos, crop=24, device="cpu")
    a = crops.batch(32, torch.Generator().manual_seed(0))
    b = crops.batch(32, torch.Generator().manual_seed(0))
    assert a.shape == (32, 3, 24, 24) and a.dtype == torch.uint8 and torch.equal(a, b)
    for crop in a:                        # every crop lies inside one photo: no padding zeros
        assert crop.unique().numel() == 1 and int(crop[0, 0, 0]) in (10, 20, 30, 99)
    ramp = torch.arange(64, dtype=torch.uint8).repeat(3, 64, 1)             # columns 0..63
    flips = DeviceCrops([ramp], crop=16, device="cpu").batch(64, torch.Generator().manual_seed(1))
    rows = flips[:, 0, 0].int()
    steps = rows[:, 1:] - rows[:, :-1]
    assert {int(s) for s in steps.unique()} == {-1, 1}                      # both ways round


def test_training_runs_on_device_resident_data(tmp_path, monkeypatch):
    """The GPU path of the data (resident tensors, device-side draws) run through train()
    on the CPU: photographs as DeviceCrops, an in-memory split with its permutation moved."""
    from tica import train as train_module
    from tica.train import loop
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(48, 64, 3) * 255).byte().numpy()).save(photos / f"{i}.png")
    moved = []

    def on_device(data, device):
        moved.append(type(data).__name__)
        return data.to(device)

    monkeypatch.setattr(loop, "on_device", on_device)      # where _build_run looks it up
    result = train_module.train(_cfg(tmp_path, model="tica-photo", data=str(photos), step=1,
                                     alpha=0, alpha_max=None, beta_max=None, epochs=1,
                                     max_steps=2, batch_size=2,
                                     model_overrides={**TINY, "img_size": 32}))
    assert result.steps == 2
    result = train_module.train(_cfg(tmp_path / "b", step=2, max_steps=2))
    assert result.steps == 2 and moved == ["CropData", "SplitData"]


def test_a_rerun_plan_keeps_finished_runs_and_resumes_the_stopped_one(smoke, tmp_path):
    _, runs, first = smoke
    again = run_plan(PLANS / "smoke.json", out=tmp_path / "out", runs_dir=runs, log=lambda _: None)
    for name, st in again["runs"].items():
        if name == "vit-pixel-cifar":            # stopped at its deadline: resumed, not redone
            assert st["state"] == "stopped" and st["steps"] > first["runs"][name]["steps"]
            # its minutes count the first start's training loop too, as its steps do
            assert st["minutes_this_start"] < st["minutes"]
            assert st["minutes"] <= st["minutes_this_start"] + first["runs"][name]["minutes"] + 0.01
        else:
            assert st["state"] == "done" and st["reason"] == "finished earlier" and st["rc"] is None
    assert len(again["files"]) == len(first["files"])          # everything published again


def test_train_needs_a_run_dir_and_plans_are_a_repository_tool(capsys):
    from tica.cli import main
    assert main(["train", "--data", "synthetic"]) == 1
    assert "--run-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--run-dir", "x", "--plan", "y"])         # not a library option
    from tica_tools.plan import main as plan_main
    assert plan_main(["run", "no-such-plan.json", "--dry-run"]) == 1
    assert "no-such-plan.json" in capsys.readouterr().err


def test_the_device_call_travels_light_and_the_weights_come_back(tmp_path):
    """device_plan.sh light takes the shipped weights (which the plan never reads) out of
    what a device call sends, so the data fit the tool's 64 MiB; restore puts them back in
    git's index with nothing else changed."""
    import subprocess
    from tica_tools.plan import travel_bytes
    repo = Path(__file__).resolve().parents[1]
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(clone)], check=True)
    weights = sum(p.stat().st_size for p in (clone / "src/tica/weights").glob("*.safetensors"))
    before = sum(travel_bytes(clone, []).values())
    script = ["bash", str(clone / "scripts/device_plan.sh")]
    subprocess.run(script + ["light"], check=True, capture_output=True)
    after = travel_bytes(clone, [])
    assert sum(after.values()) == pytest.approx(before - weights, abs=1)
    assert sum(after.values()) < 8 << 20 and all((clone / "src/tica/weights").glob("*.safetensors"))
    subprocess.run(script + ["restore"], check=True, capture_output=True)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, check=True,
                            capture_output=True, text=True).stdout
    assert status == "" and sum(travel_bytes(clone, []).values()) == before


def test_pack_split_shrinks_a_labelled_split_and_keeps_its_classes(tmp_path):
    from tica.data import load_split, split_classes
    from tica_tools.plan import pack_split
    src = tmp_path / "set" / "train"
    for name, colour in (("bird", 30), ("cat", 200)):
        (src / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(torch.full((48, 64, 3), colour + i, dtype=torch.uint8).numpy()).save(
                src / name / f"{i}.png")
    n, size = pack_split(tmp_path / "set", tmp_path / "packed", side=32)
    assert n == 6 and 0 < size == sum(f.stat().st_size for f in (tmp_path / "packed").rglob("*.*"))
    assert split_classes(tmp_path / "packed") == ("bird", "cat")
    packed = load_split(tmp_path / "packed", "train")
    assert packed.images.shape == (6, 3, 32, 32) and packed.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert abs(packed.images[0].float().mean().item() - 30) < 3       # lossy, but the same image
    assert abs(packed.images[5].float().mean().item() - 202) < 3


def test_pack_split_lossless_keeps_the_resized_pixels_exactly(tmp_path):
    from tica_tools.plan import main, pack_split
    src = tmp_path / "set" / "train" / "dog"
    src.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    noisy = (torch.rand(48, 48, 3, generator=g) * 255).byte().numpy()
    Image.fromarray(noisy).save(src / "0.png")
    Image.fromarray(noisy[::-1].copy()).save(src / "0.1.png")         # a dot in the name
    n, lossless = pack_split(tmp_path / "set", tmp_path / "exact", side=32, quality=None)
    assert main(["pack-split", str(tmp_path / "set"), str(tmp_path / "lossy"), "32", "50"]) == 0
    lossy = sum(f.stat().st_size for f in (tmp_path / "lossy").rglob("*.*"))
    assert n == 2 and 0 < lossy < lossless
    packed = {p.stem: p for p in (tmp_path / "exact" / "train" / "dog").iterdir()}
    assert sorted(packed) == ["0", "0.1"]
    resized = Image.fromarray(noisy).resize((32, 32), Image.BICUBIC)
    assert np.array_equal(np.asarray(Image.open(packed["0"]).convert("RGB")), np.asarray(resized))


def test_pack_photos_halves_the_photographs_lossless_or_at_a_quality(tmp_path):
    from tica_tools.plan import pack_photos
    src = tmp_path / "photos"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(64, 96),
                                             mode="bilinear")
    for i, img in enumerate((smooth * 255).byte()):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(src / f"{i}.png")
    n, lossless = pack_photos(src, tmp_path / "exact")
    m, lossy = pack_photos(src, tmp_path / "small", quality=50)
    assert n == m == 2 and 0 < lossy < lossless
    for name in ("exact", "small"):
        out = sorted((tmp_path / name).iterdir())
        assert [Image.open(f).size for f in out] == [(48, 32)] * 2
    original = Image.open(src / "0.png").reduce(2)
    exact = Image.open(sorted((tmp_path / "exact").iterdir())[0]).convert("RGB")
    assert np.array_equal(np.asarray(exact), np.asarray(original))


def test_the_gpu_plans_continue_every_shipped_model_from_its_weights(tmp_path):
    """Compounding: the continuation plans train every shipped model on from the package
    (init "shipped", no dependency, no latent rescale, warm-up then the peak held to an
    annealed deadline), each within the send limit with its own data."""
    from tica.registry import read_manifest, shipped_init
    covered = set()
    for name in ("gpu-continue-cifar", "gpu-continue-photo"):
        plan = load_plan(PLANS / f"{name}.json", runs_dir=tmp_path, data_root="DATA")
        assert plan.name == name and plan.deadline_s <= 300
        for run in plan.runs:
            c = run.config
            assert run.after is None and c.init == "shipped" and c.latent_std == 0, run.name
            assert c.lr_schedule == "wsd" and c.schedule_by_deadline and c.warmup_steps <= 200
            assert shipped_init(c.model, c.init).file.is_file()
            covered.add(run.name)
    assert covered == {e.name for e in read_manifest() if e.role in ("codec", "classifier")}


def test_the_cpu_plans_continue_one_shipped_codec_each_resumably(tmp_path):
    """The CPU leases: each codec trains on from its shipped weights, alone on the CPU in
    bf16, resumable, checkpointed often enough that an interruption loses minutes."""
    from tica.registry import shipped_init
    for name, model in (("cpu-continue-cifar", "tica-cifar"), ("cpu-continue-photo", "tica-photo"),
                        ("cpu-qat-cifar", "tica-cifar"), ("cpu-qat-cifar-3", "tica-cifar"),
                        ("cpu-qat-cifar-4", "tica-cifar")):
        plan = load_plan(PLANS / f"{name}.json", runs_dir=tmp_path, data_root="DATA")
        (run,) = plan.runs
        c = run.config
        assert (plan.name, run.name, c.model, c.device, c.init) == (name, model, model, "cpu",
                                                                    "shipped")
        assert c.resumable and c.bf16 and c.checkpoint_every <= 200 and c.latent_std == 0
        assert c.lr_schedule == "wsd" and c.schedule_by_deadline and plan.deadline_s <= 5400
        assert shipped_init(c.model, c.init).file.is_file()
    qat = load_plan(PLANS / "cpu-qat-cifar.json", runs_dir=tmp_path, data_root="DATA").runs[0]
    assert {k: qat.config.model_overrides[k] for k in ("hs_weight_bits", "hs_act_frac_bits",
                                                       "hs_act_bits")} == {
        "hs_weight_bits": 7, "hs_act_frac_bits": 5, "hs_act_bits": 7}
    assert qat.config.lr == 1.5e-4 and qat.threads == 1       # cpu-continue-cifar's rates


def test_the_augmentation_trial_differs_in_its_augmentation_alone(tmp_path):
    """cpu-augment-trial.json: two arms from the shipped tica-photo, side by side on a
    thread each, the same config but for the augmentation."""
    import dataclasses
    plan = load_plan(PLANS / "cpu-augment-trial.json", runs_dir=tmp_path, data_root="DATA")
    crop, resized = plan.runs
    assert (crop.config.augment, resized.config.augment) == ("crop", "resized")
    assert plan.max_parallel == 2 and crop.threads == resized.threads == 1
    same = {f.name for f in dataclasses.fields(TrainConfig)} - {"augment", "run_dir", "export_dir"}
    assert {k: getattr(crop.config, k) for k in same} == {k: getattr(resized.config, k) for k in same}
    assert crop.config.init == "shipped" and crop.config.model == "tica-photo"


def test_the_top_quality_trial_differs_in_its_highest_rate_point_alone(tmp_path):
    """cpu-photo-hq.json: two arms from the shipped tica-photo, a thread each, the same
    config but for beta_max: the shipped eight points, and the same lowest point with the
    highest 2.7x higher (the points between geometric)."""
    import dataclasses
    plan = load_plan(PLANS / "cpu-photo-hq.json", runs_dir=tmp_path, data_root="DATA")
    crop, hq = plan.runs
    assert (crop.config.beta_max, hq.config.beta_max) == (0.0483, 0.13)
    assert plan.max_parallel == 2 and crop.threads == hq.threads == 1
    same = {f.name for f in dataclasses.fields(TrainConfig)} - {"beta_max", "run_dir", "export_dir"}
    assert {k: getattr(crop.config, k) for k in same} == {k: getattr(hq.config, k) for k in same}
    assert crop.config.init == "shipped" and crop.config.augment == "crop"
    low, high = crop.config.rate_points(8), hq.config.rate_points(8)
    assert low[0] == high[0] == (1, 0.0018) and high[-1][1] == pytest.approx(0.13)
    assert all(b > a for (_, a), (_, b) in zip(low[1:], high[1:]))


def test_a_plan_keeps_only_the_runs_it_names(tmp_path):
    (tmp_path / "part.json").write_text(json.dumps(
        {"base": str(PLANS / "gpu.json"), "name": "part", "only": ["vit-pixel-cifar"]}))
    plan = load_plan(tmp_path / "part.json", runs_dir=tmp_path, data_root="DATA")
    assert [r.name for r in plan.runs] == ["vit-pixel-cifar"]
    # a kept run whose dependency is left out is refused
    (tmp_path / "bad.json").write_text(json.dumps(
        {"base": str(PLANS / "gpu.json"), "name": "bad", "only": ["tica-cifar"]}))
    with pytest.raises(ConfigError, match="tica-cifar-step1"):
        load_plan(tmp_path / "bad.json", runs_dir=tmp_path, data_root="DATA")
    (tmp_path / "none.json").write_text(json.dumps(
        {"base": str(PLANS / "gpu.json"), "name": "none", "only": ["no-such-run"]}))
    with pytest.raises(ConfigError, match="no-such-run"):
        load_plan(tmp_path / "none.json", runs_dir=tmp_path, data_root="DATA")


def test_the_plan_reports_its_aggregate_flop_rate():
    from tica_tools.plan.runner import aggregate_tflop_s
    runs = [{"img_s_mean": 1000.0, "minutes": 2.0, "gflop_per_image": 2.0},     # 240 TFLOP
            {"img_s": 500.0, "minutes": 1.0, "gflop_per_image": 4.0},           # 120 TFLOP
            {"img_s": 9e9, "minutes": 1.0, "gflop_per_image": None}]            # not counted
    assert aggregate_tflop_s(runs, 180.0) == pytest.approx(2.0)
    assert aggregate_tflop_s(runs[2:], 180.0) is None


def test_the_manifest_accumulates_what_each_lease_trained(smoke):
    """A file's provenance from plan.json: its run and the runs it started from; a run that
    continued the shipped weights adds a lease to the file's history, one from scratch
    starts a new one; totals are the sums."""
    from tica.registry import read_manifest
    from tica_tools.plan.provenance import accumulate, lease
    _, _, status = smoke
    scratch = lease(status, "tica-cifar")
    runs = status["runs"]
    assert scratch["runs"] == ["tica-cifar-step1", "tica-cifar"] and scratch["init"] == "scratch"
    assert scratch["plan"] == "scripts/plans/smoke.json" and scratch["where"] == "cpu"
    assert scratch["images_seen"] == sum(runs[n]["steps"] * runs[n]["batch_size"]
                                         for n in scratch["runs"]) > 0
    shipped = next(e for e in read_manifest() if e.name == "tica-cifar").trained
    assert accumulate(shipped, scratch)["leases"] == [scratch]          # starts over
    again = dict(scratch, init="shipped", minutes=1.5, images_seen=1000, steps=10)
    total = accumulate(shipped, again)
    earlier = shipped.get("leases") or [shipped]          # the shipped file's own history
    assert [e["init"] for e in total["leases"]] == \
        ["scratch"] + ["shipped"] * (len(earlier) - 1) + ["shipped"]
    assert total["leases"][0]["plan"] == earlier[0]["plan"] and total["plan"] == again["plan"]
    assert total["minutes"] == pytest.approx(shipped["minutes"] + 1.5)
    assert total["where"] == "+".join(dict.fromkeys(e["where"] for e in total["leases"]))
    assert sum(total["minutes_on"].values()) == pytest.approx(total["minutes"])
    photo = {"where": "gpu", "plan": "p", "commit": "abc1234", "minutes": 5.0, "steps": 10,
             "images_seen": 300, "labelled_images_seen": 100}
    photo_total = accumulate(photo, dict(again, images_seen=50))
    assert photo_total["leases"][0]["labelled_images_seen"] == 100
    assert (photo_total["images_seen"], photo_total["labelled_images_seen"]) == (350, 150)
    assert "labelled_images_seen" not in total        # no lease counted them apart
    mixed = accumulate(total, dict(again, where="gpu", minutes=2.0))
    assert mixed["where"].split("+")[-1] in ("cpu", "gpu") and "gpu" in mixed["where"]
    assert mixed["minutes_on"]["gpu"] >= 2.0 and mixed["minutes_on"]["cpu"] >= 1.5
    assert total["images_seen"] == shipped["images_seen"] + 1000
    third = accumulate(total, dict(again, commit="abc1234"))
    assert len(third["leases"]) == len(earlier) + 2 and third["commit"] == "abc1234"
    assert third["images_seen"] == shipped["images_seen"] + 2000


def test_leases_that_train_on_from_one_another_chain_by_their_files(tmp_path):
    """A lease that starts from an earlier lease's export (never shipped) adds both leases
    to the shipped file's history, given the plans in order, and only if the file it
    started from is, by SHA-256, what the earlier plan exported for that run."""
    from tica.io import sha256_file
    from tica_tools.plan.provenance import chain
    export = tmp_path / "tica-photo.safetensors"
    export.write_bytes(b"the first lease's export")

    def status(plan, init, minutes, images):
        return {"plan": plan, "commit": "c0ffee1", "started": "2026-12-05T06:00:00Z",
                "runs": {"tica-photo": {"init": init, "train_device": "cpu", "minutes": minutes,
                                        "steps": images // 32, "images_seen": images}},
                "files": {"tica-photo.safetensors": {"run": "tica-photo",
                                                      "sha256": sha256_file(export)}}}
    first, second = status("one", "shipped", 85.0, 3200), status("two", str(export), 80.0, 6400)
    shipped = {"where": "gpu", "plan": "p", "commit": "abc1234", "minutes": 5.0, "steps": 10,
               "images_seen": 300}
    total = chain(shipped, [first, second], "tica-photo")
    assert [e["init"] for e in total["leases"]] == ["scratch", "shipped", "file"]
    assert total["leases"][2]["init_file"] == str(export)
    assert [e["plan"] for e in total["leases"][1:]] == ["scripts/plans/one.json",
                                                         "scripts/plans/two.json"]
    assert (total["minutes"], total["images_seen"]) == (170.0, 9900)
    assert total["minutes_on"] == {"gpu": 5.0, "cpu": 165.0}
    assert chain(shipped, [first], "tica-photo")["images_seen"] == 3500
    with pytest.raises(ConfigError, match="trained it first"):
        chain(shipped, [second], "tica-photo")          # the lease it continued is missing
    with pytest.raises(ConfigError, match="not from plan one's export"):
        chain(shipped, [first, first], "tica-photo")    # both continued the shipped file
    export.write_bytes(b"some other weights")
    with pytest.raises(ConfigError, match="SHA-256 differs"):
        chain(shipped, [first, second], "tica-photo")
    export.unlink()
    with pytest.raises(ConfigError, match="not here"):
        chain(shipped, [first, second], "tica-photo")


def test_a_continuation_call_sends_only_the_weights_its_plan_starts_from(tmp_path):
    """device_plan.sh light-for PLAN: every shipped weight file leaves git's index except the
    ones the plan's runs start from, which travel; restore puts everything back."""
    import os
    import subprocess
    import sys
    from tica_tools.plan import shipped_files, travel_bytes
    repo = Path(__file__).resolve().parents[1]
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(clone)], check=True)
    plan = "scripts/plans/gpu-continue-cifar.json"
    needed = shipped_files(str(repo / plan))
    assert needed == [f"src/tica/weights/{n}.safetensors"
                      for n in ("hyperprior-cifar", "tica-cifar", "vit-pixel-cifar")]
    weights = sorted((clone / "src/tica/weights").glob("*.safetensors"))
    before = sum(travel_bytes(clone, []).values())
    env = {**os.environ, "PYTHON": sys.executable}
    script = ["bash", str(clone / "scripts/device_plan.sh")]
    subprocess.run(script + ["light-for", plan], check=True, capture_output=True, env=env)
    left_out = sum(w.stat().st_size for w in weights if str(w.relative_to(clone)) not in needed)
    assert sum(travel_bytes(clone, []).values()) == pytest.approx(before - left_out, abs=1)
    tracked = subprocess.run(["git", "ls-files", "src/tica/weights"], cwd=clone, check=True,
                             capture_output=True, text=True).stdout.split()
    assert sorted(t for t in tracked if t.endswith(".safetensors")) == needed
    subprocess.run(script + ["restore"], check=True, capture_output=True, env=env)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, check=True,
                            capture_output=True, text=True).stdout
    assert status == "" and sum(travel_bytes(clone, []).values()) == before


def test_the_distillation_trial_is_at_equal_cost_and_waits_for_its_teacher(tmp_path):
    plan = load_plan(PLANS / "gpu-distill-trial.json", runs_dir=tmp_path, data_root="DATA")
    runs = {r.name: r for r in plan.runs}
    teacher = runs.pop("teacher-cifar")
    assert teacher.config.init is None and teacher.config.model == "teacher-cifar"
    for model in ("tica-cifar", "vit-pixel-cifar"):
        taught, plain = runs[f"{model}-distill"], runs[f"{model}-plain"]
        assert taught.after == "teacher-cifar" and plain.after is None
        assert taught.config.teacher == str(tmp_path / "teacher-cifar" / EXPORT_FILE)
        assert plain.config.teacher is None and taught.config.init == plain.config.init == "shipped"
        same = ("epochs", "batch_size", "lr", "optimizer", "schedule_by_deadline", "alpha", "beta")
        assert all(getattr(taught.config, k) == getattr(plain.config, k) for k in same)
    token, taught = runs["tica-cifar-distill-token"], runs["tica-cifar-distill"]
    assert token.after == "teacher-cifar" and token.config.model_overrides["distill_token"]
    assert not taught.config.model_overrides.get("distill_token")
    assert all(getattr(token.config, k) == getattr(taught.config, k) for k in same + ("distill",))
    (tmp_path / "two.json").write_text(json.dumps({"name": "two", "runs": [
        {"name": "a", "model": "teacher-cifar"},
        {"name": "b", "model": "vit-pixel-cifar", "init": "@a", "teacher": "@a"}]}))
    with pytest.raises(ConfigError, match="waits for one"):
        load_plan(tmp_path / "two.json", runs_dir=tmp_path, data_root="DATA")


def test_a_trial_arm_ships_under_its_model_name_with_its_own_lease(tmp_path):
    """The arms of a trial are runs named apart (tica-cifar-plain, tica-cifar-distill) that
    waited for a teacher without starting from it: the file shipped finds its run by
    SHA-256, and its lease is that run's alone, from the shipped weights; a run that did
    start from the one it waited for still chains to it."""
    from tica.io import sha256_file
    from tica_tools.plan.provenance import chain, lease
    plain, taught = tmp_path / "plain.safetensors", tmp_path / "taught.safetensors"
    plain.write_bytes(b"plain arm")
    taught.write_bytes(b"distilled arm")
    runs = tmp_path / "runs"
    status = {"plan": "trial", "commit": "c0ffee1", "started": "2026-12-05T12:00:00Z", "runs": {
        "teacher-cifar": {"init": None, "train_device": "cpu", "minutes": 25.0, "steps": 1700,
                          "images_seen": 435200},
        "tica-cifar-distill": {"init": "shipped", "after": "teacher-cifar", "train_device": "cpu",
                               "teacher": str(runs / "teacher-cifar" / "model.safetensors"),
                               "minutes": 50.0, "steps": 3000, "images_seen": 384000},
        "tica-cifar-plain": {"init": "shipped", "after": "teacher-cifar", "train_device": "cpu",
                             "minutes": 50.0, "steps": 3300, "images_seen": 422400},
        "step2": {"init": str(runs / "step1" / "model.safetensors"), "after": "step1",
                  "train_device": "cpu", "minutes": 2.0, "steps": 20, "images_seen": 640},
        "step1": {"init": None, "train_device": "cpu", "minutes": 1.0, "steps": 10,
                  "images_seen": 320}},
        "files": {"tica-cifar-plain.safetensors": {"run": "tica-cifar-plain",
                                                   "sha256": sha256_file(plain)},
                  "tica-cifar-distill.safetensors": {"run": "tica-cifar-distill",
                                                     "sha256": sha256_file(taught)}}}
    assert lease(status, "tica-cifar-plain")["runs"] == ["tica-cifar-plain"]
    assert lease(status, "step2")["runs"] == ["step1", "step2"]
    shipped = {"where": "gpu", "plan": "p", "commit": "abc1234", "minutes": 5.0, "steps": 10,
               "images_seen": 300}
    for source, run, images, minutes in ((plain, "tica-cifar-plain", 422400, 55.0),
                                         (taught, "tica-cifar-distill", 384000, 80.0)):
        total = chain(shipped, [status], "tica-cifar", source)
        assert total["leases"][-1]["runs"] == [run] and total["leases"][-1]["init"] == "shipped"
        assert (total["minutes"], total["images_seen"]) == (minutes, 300 + images)
    teachers = lease(status, "tica-cifar-distill")["teachers"]     # its minutes are the file's
    assert teachers == {"teacher-cifar": {"model": None, "minutes": 25.0, "images_seen": 435200}}
    assert "teachers" not in lease(status, "tica-cifar-plain")
    elsewhere = tmp_path / "elsewhere.json"          # no run of the plan exported it
    elsewhere.write_text("{}")
    with pytest.raises(ConfigError, match="no run 'tica-cifar'"):
        chain(shipped, [status], "tica-cifar", elsewhere)


def test_the_cpu_distillation_trial_runs_both_arms_after_the_teacher_at_equal_cost(tmp_path):
    """cpu-distill-trial.json: the teacher alone on both threads, then the two arms side by
    side on one thread each, from the shipped file, the same recipe but the teacher; the
    plain arm waits (`after`) without taking the teacher's export."""
    plan = load_plan(PLANS / "cpu-distill-trial.json", runs_dir=tmp_path, data_root="DATA")
    runs = {r.name: r for r in plan.runs}
    teacher, taught, plain = (runs[n] for n in ("teacher-cifar", "tica-cifar-distill",
                                                  "tica-cifar-plain"))
    assert teacher.after is None and teacher.threads == 2 and teacher.config.init is None
    assert taught.after == plain.after == "teacher-cifar" and plan.max_parallel == 2
    assert taught.config.teacher == str(tmp_path / "teacher-cifar" / EXPORT_FILE)
    assert plain.config.teacher is None and taught.threads == plain.threads == 1
    a, b = taught.config.to_dict(), plain.config.to_dict()
    differ = {k for k in a if a[k] != b[k]} - {"run_dir", "export_dir"}
    assert differ == {"teacher"} and a["init"] == "shipped" and a["deadline_s"] == 4500
    for bad, match in (({"after": ["a"]}, "names one run"), ({"after": "a", "init": "@a"}, "waits")):
        (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "runs": [
            {"name": "a", "model": "teacher-cifar"},
            {"name": "b", "model": "vit-pixel-cifar", **bad}]}))
        with pytest.raises(ConfigError, match=match):
            load_plan(tmp_path / "bad.json", runs_dir=tmp_path, data_root="DATA")
    (tmp_path / "order.json").write_text(json.dumps({"name": "order", "runs": [
        {"name": "a", "model": "teacher-cifar"},
        {"name": "b", "model": "vit-pixel-cifar", "after": "c"}]}))
    with pytest.raises(ConfigError, match="does not have"):
        load_plan(tmp_path / "order.json", runs_dir=tmp_path, data_root="DATA")


def test_the_batch_sweep_runs_see_equal_images_from_the_shipped_weights(tmp_path):
    plan = load_plan(PLANS / "gpu-sweep-cifar.json", runs_dir=tmp_path, data_root="DATA")
    configs = [r.config for r in plan.runs]
    assert sorted({c.batch_size for c in configs}) == [1024, 2048, 4096]
    assert len({(c.batch_size, c.lr) for c in configs}) == len(configs) == 5
    for c in configs:
        assert c.init == "shipped" and c.epochs == 60 and not c.schedule_by_deadline


def test_a_continuation_plan_runs_from_the_shipped_weights_and_its_leases_add_up(tmp_path):
    """smoke-continue.json (gpu-continue-cifar.json's runs, a few CPU steps): every run starts
    from the package's file, exports coding-ready weights a step away from it, and its
    plan.json lease continues the shipped file's history."""
    from tica.registry import read_manifest
    from tica_tools.plan import main
    from tica_tools.plan.provenance import accumulate, chain, lease
    out = tmp_path / "out"
    assert main(["run", str(PLANS / "smoke-continue.json"), "--out", str(out), "--runs-dir",
                 str(tmp_path / "runs"), "--fresh"]) == 0
    status = json.loads((out / STATUS_FILE).read_text())
    joined = {p.name: p for p in join_parts(out, tmp_path / "joined")}
    for entry in (e for e in read_manifest() if e.name in status["runs"]):
        run = status["runs"][entry.name]
        assert run["init"] == "shipped" and run["steps"] == 2 and run["gflop_per_image"] > 0
        trained = tica.load_checkpoint(joined[f"{entry.name}.safetensors"])
        shipped = tica.load_checkpoint(entry.file)
        key = next(iter(shipped.state_dict()))
        assert torch.allclose(trained.state_dict()[key].float(), shipped.state_dict()[key].float(),
                              atol=0.05)
        total = accumulate(entry.trained, lease(status, entry.name))
        earlier = entry.trained.get("leases") or [entry.trained]
        assert [e["init"] for e in total["leases"]] == \
            ["scratch"] + ["shipped"] * (len(earlier) - 1) + ["shipped"]
        assert total["images_seen"] == entry.trained["images_seen"] + 2 * 8
        # the lease names the file it continued: it joins that file's history only
        assert run["init_sha256"] == total["leases"][-1]["init_sha256"] == entry.sha256
        source = joined[f"{entry.name}.safetensors"]
        assert chain(entry.trained, [status], entry.name, source, entry.sha256) == total
        with pytest.raises(ConfigError, match="no longer the one shipped"):
            chain(entry.trained, [status], entry.name, source, "0" * 64)
        with pytest.raises(ConfigError, match="already in the file's history"):
            accumulate(total, lease(status, entry.name))
    assert len(joined) == 3 and status["aggregate_tflop_s"] > 0


def test_the_photo_continuation_plan_runs_from_the_shipped_weights(tmp_path):
    """smoke-continue-photo.json (gpu-continue-photo.json's runs, two CPU steps each): the
    lease's second command as it will run, tica-photo's export split in parts that rejoin
    into weights a step away from the shipped ones, each run's lease naming the file it
    continued."""
    from tica.registry import read_manifest
    from tica_tools.plan import main
    from tica_tools.plan.provenance import lease
    out = tmp_path / "out"
    assert main(["run", str(PLANS / "smoke-continue-photo.json"), "--out", str(out),
                 "--runs-dir", str(tmp_path / "runs"), "--fresh"]) == 0
    status = json.loads((out / STATUS_FILE).read_text())
    assert sorted(p.name for p in out.glob("tica-photo.safetensors.part*")) == [
        "tica-photo.safetensors.part0", "tica-photo.safetensors.part1"]
    joined = {p.name: p for p in join_parts(out, tmp_path / "joined")}
    assert sorted(joined) == ["tica-photo.safetensors", "vit-pixel-photo.safetensors"]
    for entry in (e for e in read_manifest() if e.name in status["runs"]):
        run = status["runs"][entry.name]
        assert (run["init"], run["steps"], run["init_sha256"]) == ("shipped", 2, entry.sha256)
        trained = tica.load_checkpoint(joined[f"{entry.name}.safetensors"])
        assert trained.config == tica.load_checkpoint(entry.file).config
        assert lease(status, entry.name)["images_seen"] == 2 * 2


def test_the_photo_fidelity_trial_continues_tica_photo_on_lossless_crops(tmp_path):
    plan = load_plan(PLANS / "gpu-photo-fidelity.json", runs_dir=tmp_path, data_root="DATA")
    configs = {r.name: r.config for r in plan.runs}
    assert set(configs) == {"tica-photo-lossless", "tica-photo-lossless-hq"}
    for c in configs.values():
        assert (c.model, c.init, c.data) == ("tica-photo", "shipped", "DATA/photos-lossless")
        assert c.model_overrides == {"rate_levels": 8, "entropy_gain": True}   # as shipped
    assert configs["tica-photo-lossless-hq"].beta_max > configs["tica-photo-lossless"].beta_max


def test_source_commit_ignores_the_weights_a_device_call_leaves_out(tmp_path, monkeypatch):
    """The device plan takes the shipped weights out of git's index for a call: the commit
    it records stays clean (ship_weights refuses a "-dirty" one); any other change is dirty."""
    import shutil
    import subprocess
    from tica_tools.plan.runner import source_commit
    if shutil.which("git") is None:
        pytest.skip("no git")
    monkeypatch.delenv("TICA_COMMIT", raising=False)

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "src" / "tica" / "weights").mkdir(parents=True)
    (tmp_path / "src" / "tica" / "weights" / "m.safetensors").write_bytes(b"w")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    clean = source_commit(tmp_path)
    assert clean and not clean.endswith("-dirty")
    git("rm", "-q", "--cached", "src/tica/weights/m.safetensors")
    assert source_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == clean + "-dirty"


def test_a_run_killed_between_exports_is_credited_what_its_weights_hold(tmp_path):
    """The status counts a run's images from the step of its last export (the weights that
    come back), not from its last logged step; a plan started afresh drops an earlier
    session's exports, so they are never published as this session's."""
    from tica_tools.plan.runner import PlanRunner, _follow_metrics
    plan = load_plan(PLANS / "smoke.json", runs_dir=tmp_path / "runs")
    run = plan.runs[0]
    run.run_dir.mkdir(parents=True)
    for stale in (run.export, run.run_dir / EXPORT_FILE):
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"an earlier session's weights")
    runner = PlanRunner(plan, tmp_path / "out", resume=False, log=lambda _: None)
    runner._adopt_finished()
    assert not run.export.exists() and not (run.run_dir / EXPORT_FILE).exists()
    records = [{"step": s, "loss": 1.0} for s in range(1, 51)]
    records.insert(30, {"step": 30, "export": "interim", "export_s": 0.1})
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    st = runner.states[run.name]
    st.state, st.started, st.ended = "failed", runner.t0, runner.t0 + 60
    _follow_metrics(run, st)
    status = runner._run_status(run)
    assert (status["steps"], status["exported_step"]) == (50, 30)
    assert status["images_seen"] == 30 * run.config.batch_size
    # a failed run's log comes back in plan.json, its last 40 lines
    (run.run_dir / "log.txt").write_text("".join(f"line {i}\n" for i in range(100)) +
                                          "RuntimeError: CUDA out of memory\n")
    runner.out.mkdir(parents=True, exist_ok=True)
    tail = runner._write_status(final=True)["runs"][run.name]["log_tail"]
    assert len(tail) == 40 and tail[-1] == "RuntimeError: CUDA out of memory"
    assert json.loads((runner.out / STATUS_FILE).read_text())["runs"][run.name]["log_tail"] == tail
