"""Training: the loss goes down, resume is exact, SIGKILL loses at most one checkpoint
interval, and two DDP processes end with identical weights."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tica
from conftest import load_module
from tica.config import TrainConfig
from tica.errors import ConfigError, TicaError
from tica.train import STATE_FILE, load_state, train

TINY = {"N": 16, "M": 16, "embed_dim": 32, "depth": 3, "num_heads": 2, "drop_path": 0.1}


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(model="tica-cifar", data="synthetic", run_dir=str(tmp_path / "run"), epochs=20,
                batch_size=16, train_limit=64, lr=3e-3, warmup_steps=2, eval_images=0,
                checkpoint_every=1000, log_every=1, progress=False, model_overrides=TINY)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(run_dir: str) -> list[dict]:
    return [json.loads(l) for l in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("step", [1, 2])
def test_loss_goes_down(tmp_path, step):
    cfg = _cfg(tmp_path, step=step, max_steps=40, alpha=1.0, beta=1e-3)
    result = train(cfg)
    records = [r for r in _metrics(cfg.run_dir) if "loss" in r]
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    # step 2 from scratch starts at hundreds of bits per pixel and falls more slowly
    assert last < (0.8 if step == 1 else 0.95) * first, (first, last)
    if step == 2:
        assert "bpp" in records[-1] and "aux" in records[-1]
        import tica
        model = tica.load(weights=result.weights)          # exported after update()
        assert model.is_updated
        assert json.loads(Path(cfg.run_dir, "config.json").read_text())["step"] == 2


@pytest.mark.parametrize("alpha,trained", [(0.0, False), (1.0, True)])
def test_an_export_says_whether_its_classifier_saw_labels(tmp_path, alpha, trained):
    cfg = _cfg(tmp_path, step=1, max_steps=1, alpha=alpha)
    model = tica.load(weights=train(cfg).weights)
    assert model.weights_info.classifier_trained is trained
    assert tica.api.can_classify(model) is trained


def test_a_run_without_a_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    from tica.errors import ConfigError
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tmp_path, max_steps=1)
    with pytest.raises(ConfigError, match="run_dir"):
        train(TrainConfig(**{**cfg.__dict__, "run_dir": None}))
    assert list(tmp_path.iterdir()) == []            # nothing written anywhere


def test_bf16_is_native_exactly_where_the_hardware_says_so():
    from tica.train.distributed import native_bf16
    assert native_bf16(torch.device("cpu")) is torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert native_bf16(torch.device("meta")) is False
    assert native_bf16(torch.device("cuda")) is (torch.cuda.is_available()
                                                 and torch.cuda.is_bf16_supported())


@pytest.mark.parametrize("asked,native", [(True, False), (True, True), (False, True)])
def test_a_run_autocasts_only_where_bf16_is_native(tmp_path, monkeypatch, asked, native):
    """bf16 emulated on a CPU without AVX-512 BF16 made training 8x slower: a run asks for
    bf16 and gets it only where it is native, and its metrics say which it got."""
    import tica.train.loop as loop
    monkeypatch.setattr(loop, "native_bf16", lambda device: native)
    entered = []
    autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: entered.append(k.get("dtype"))
                        or autocast(*a, **k))
    cfg = _cfg(tmp_path, step=1, max_steps=2, bf16=asked)
    train(cfg)
    assert _metrics(cfg.run_dir)[-1]["bf16"] is (asked and native)
    assert (torch.bfloat16 in entered) is (asked and native)


def test_resume_continues_exactly(tmp_path):
    straight = train(_cfg(tmp_path / "a", max_steps=6, step=2))
    first = _cfg(tmp_path / "b", max_steps=3, step=2, checkpoint_every=3)
    train(first)
    meta = load_state(Path(first.run_dir) / STATE_FILE)[0]
    assert int(meta["step"]) == 3
    resumed = train(_cfg(tmp_path / "b", max_steps=6, step=2, checkpoint_every=3), resume=True)
    assert resumed.steps == straight.steps == 6
    assert _digest(resumed.model) == _digest(straight.model)
    # the time behind the state adds up over sessions: the resumed run knows its first part's
    assert resumed.first_step == 3 and resumed.earlier_s == pytest.approx(float(meta["train_s"]))
    assert straight.earlier_s == 0 and 0 < resumed.earlier_s
    total = float(load_state(Path(first.run_dir) / STATE_FILE)[0]["train_s"])
    assert resumed.earlier_s < total <= resumed.earlier_s + resumed.wall_s + 0.001
    # and the training summary (docs/training.md) counts both starts
    summary = load_module(Path(__file__).parents[1] / "benchmarks" / "summarize_training.py")
    done = [r for r in _metrics(first.run_dir) if r.get("done")]
    assert len(done) == 2 and done[-1]["earlier_wall_s"] == pytest.approx(resumed.earlier_s)
    assert summary.wall_s(done) == pytest.approx(resumed.earlier_s + resumed.wall_s)
    assert summary.wall_s(done) > done[-1]["wall_s"] and summary.wall_s([]) is None


_KILL_SCRIPT = """
import sys, torch
from tica.config import TrainConfig
from tica.train import train
torch.set_num_threads(1)
cfg = TrainConfig(model="tica-cifar", data="synthetic", run_dir=sys.argv[1], epochs=250000,
                  batch_size=16, train_limit=64, warmup_steps=2, eval_images=0, checkpoint_every=3,
                  log_every=1, progress=False, model_overrides={tiny}, max_steps=int(sys.argv[2]))
train(cfg, resume=True)
""".replace("{tiny}", repr(TINY))


def test_sigkill_loses_at_most_one_checkpoint_interval(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    for delay in (4.0, 6.5):
        # a budget no machine finishes before the kill: the kill must land mid-run
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(run_dir), "1000000"], env=env)
        deadline = time.time() + 120
        while not (run_dir / STATE_FILE).exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(delay)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        meta, _ = load_state(run_dir / STATE_FILE)          # never a torn file
        logged = max(r["step"] for r in _metrics(str(run_dir)) if "loss" in r)
        assert 0 <= logged - int(meta["step"]) <= 3
    done = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(run_dir), str(int(meta["step"]) + 3)],
                          env=env, timeout=300)
    assert done.returncode == 0
    assert int(load_state(run_dir / STATE_FILE)[0]["step"]) == int(meta["step"]) + 3
    assert not list(run_dir.glob(".*.tmp"))          # a killed write's leftovers are cleaned


_DDP_SCRIPT = """
import hashlib, os, sys, torch
from tica.config import TrainConfig
from tica.train import train
torch.set_num_threads(1)
cfg = TrainConfig(model="tica-cifar", step=int(sys.argv[2]), data="synthetic", run_dir=sys.argv[1],
                  epochs=20, batch_size=16, train_limit=64, warmup_steps=2, eval_images=0,
                  log_every=1, progress=False, model_overrides={tiny}, max_steps=4)
result = train(cfg)
h = hashlib.sha256()
for k, v in sorted(result.model.state_dict().items()):
    h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.sha256"), "w").write(h.hexdigest())
""".replace("{tiny}", repr(TINY))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("step", [1, 2])
def test_two_processes_under_torchrun_end_identical(tmp_path, step):
    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "--no-python", sys.executable, "-c", _DDP_SCRIPT, str(run_dir), str(step)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = {p.read_text() for p in run_dir.glob("rank*.sha256")}
    assert len(list(run_dir.glob("rank*.sha256"))) == 2 and len(digests) == 1
    records = [r for r in _metrics(str(run_dir)) if "loss" in r]
    assert records[-1]["step"] == 4
    assert (run_dir / "model.safetensors").exists()
    assert [r for r in _metrics(str(run_dir)) if r.get("done")][0]["world"] == 2


@pytest.mark.parametrize("fam", [True, False])
def test_latent_calibration_is_an_exact_reparametrisation(fam):
    import tica
    from tica.train import calibrate_latent_scale
    model = tica.create_model("tica-cifar", fam=fam, **{k: v for k, v in TINY.items()}).eval()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x, entropy=False)
        s = calibrate_latent_scale(model, x, 2.0)
        after = model(x, entropy=False)
        assert float(model.g_a(x).std()) == pytest.approx(2.0, rel=1e-4)
    assert s > 0
    torch.testing.assert_close(after["logits"], before["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after["x_hat"], before["x_hat"], rtol=1e-4, atol=1e-4)


def test_ema_weights_are_exported(tmp_path):
    import tica
    result = train(_cfg(tmp_path, step=1, max_steps=4, ema=0.5))
    exported = tica.load_checkpoint(result.weights)
    raw = result.model.state_dict()
    changed = [k for k, v in exported.state_dict().items()
               if v.is_floating_point() and not torch.allclose(v, raw[k])]
    assert changed                             # the export is the average, not the last step
    init = tica.create_model("tica-cifar", **TINY).state_dict()
    assert not torch.allclose(exported.state_dict()[changed[0]], init[changed[0]])   # nor the start


def test_training_streams_webdataset_shards_and_resumes_exactly(archive, tmp_path):
    from tica.data import write_shards
    shards = tmp_path / "shards"
    write_shards(archive, "train", shards, per_shard=2)
    kw = dict(data=str(shards), batch_size=4, epochs=5, step=1)
    straight = train(_cfg(tmp_path / "a", max_steps=4, **kw))
    train(_cfg(tmp_path / "b", max_steps=2, checkpoint_every=2, **kw))
    resumed = train(_cfg(tmp_path / "b", max_steps=4, checkpoint_every=2, **kw), resume=True)
    assert resumed.steps == 4 and _digest(resumed.model) == _digest(straight.model)
    records = [r for r in _metrics(str(tmp_path / "a" / "run")) if "loss" in r]
    assert len(records) == 4 and all(r["img_s"] > 0 for r in records)


def test_new_rate_points_start_from_the_shipped_step1_network(tmp_path):
    from tica.registry import find_weights
    if find_weights("tica-cifar", "step1") is None:
        pytest.skip("no shipped step-1 weights")
    cfg = _cfg(tmp_path, step=2, init="step1", model_overrides={}, max_steps=1, batch_size=4)
    result = train(cfg)
    assert result.steps == 1
    from tica.registry import build_model
    step1 = tica.load_checkpoint(find_weights("tica-cifar", "step1").file)
    shipped = step1.state_dict()
    fresh = build_model(step1.config, seed=cfg.seed).state_dict()     # its design, untrained
    trained = result.model.state_dict()
    # one Adam step moves a weight by about lr: the run's weights are the shipped network's,
    # a step away, not a fresh initialisation's (the ViT and g_a's first layer, which the
    # latent calibration leaves alone)
    for key in ("g_a.0.weight", "vit.blocks.0.attn.qkv.weight"):
        assert key in shipped, key
        assert float((trained[key] - shipped[key]).abs().max()) <= 1.5 * cfg.lr, key
        assert float((fresh[key] - shipped[key]).abs().max()) > 10 * cfg.lr, key
    assert [r for r in _metrics(cfg.run_dir) if "latent_scale" in r]    # step 2 calibrated it


def test_a_shipped_model_trains_on_from_its_own_weights_as_it_codes(tmp_path):
    """init "shipped": the variable-rate step-2 model itself, its latent left at the scale its
    entropy model learned (no calibration), the rate points as shipped, a step away after one
    step; the WSD schedule holds the peak rate after its warm-up."""
    shipped = tica.load("tica-cifar")
    cfg = _cfg(tmp_path, step=2, init="shipped", model_overrides={"rate_levels": 8},
               alpha=0.3, alpha_max=30, beta=1e-4, beta_max=0.03, max_steps=1, batch_size=4,
               lr_schedule="wsd", warmup_steps=1)
    result = train(cfg)
    assert result.steps == 1 and result.model.config == shipped.config.replace(
        labels=result.model.config.labels)
    before, after = shipped.state_dict(), result.model.state_dict()
    for key in ("g_a.0.weight", "log_gain", "h_s.0.weight", "vit.blocks.0.attn.qkv.weight"):
        assert float((after[key] - before[key]).abs().max()) <= 1.5 * cfg.lr, key
    records = _metrics(cfg.run_dir)
    assert not [r for r in records if "latent_scale" in r]             # not rescaled
    # one training step's FLOPs per image, counted before the first step: 1.9 GFLOP for
    # tica-cifar at 32x32 as measured apart on a GPU (the plan's FLOP rate multiplies by it)
    (flops,) = [r for r in records if "train_gflop_per_image" in r]
    assert 1.7 < flops["train_gflop_per_image"] < 2.0 and flops["image_size"] == [32, 32]
    assert [r["lr"] for r in records if "lr" in r] == [pytest.approx(cfg.lr)]
    with pytest.raises(ConfigError, match="no trained weights are shipped for tica-s"):
        train(_cfg(tmp_path / "s", model="tica-s", init="shipped"))


def test_an_ablation_starts_from_trained_weights_that_fit(tmp_path):
    """--init with config overrides: every tensor that still fits is carried over, the rest
    (here g_s, which reads y_hat instead of the FAM's features) starts fresh."""
    from tica.checkpoint import save_checkpoint
    from tica.train import build_initial_model
    source = tica.create_model("tica-cifar", seed=3, **TINY)
    save_checkpoint(source, tmp_path / "step1.safetensors")
    cfg = _cfg(tmp_path, step=2, init=str(tmp_path / "step1.safetensors"),
               model_overrides={"fam": False})
    model = build_initial_model(cfg)
    assert model.config.fam is False and model.fam is None
    mine, theirs = model.state_dict(), source.state_dict()
    assert torch.equal(mine["g_a.0.weight"], theirs["g_a.0.weight"])
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k.startswith("vit."))
    assert mine["g_s.0.weight"].shape != theirs["g_s.0.weight"].shape
    with pytest.raises(TicaError, match="unknown config"):
        build_initial_model(_cfg(tmp_path, step=2, init=str(tmp_path / "step1.safetensors"),
                                 model_overrides={"famm": False}))


def test_a_run_names_its_classes_after_the_training_split(archive, tmp_path):
    """Trained on a labelled ImageFolder split, the model says its class names (sorted folder
    names, the label order); a split whose class count the model cannot classify is refused."""
    from tica.train import build_initial_model
    cfg = _cfg(tmp_path, data=str(archive), model_overrides={**TINY, "num_classes": 2, "labels": ("p", "q")},
               max_steps=1, batch_size=2, train_limit=None)
    assert build_initial_model(cfg).config.labels == ("a", "b")
    exported = tica.load(weights=train(cfg).weights)
    assert exported.config.labels == ("a", "b")
    with pytest.raises(TicaError, match="2 classes"):
        build_initial_model(_cfg(tmp_path, data=str(archive)))


def test_compiling_the_step_keeps_the_weights_names_and_works_around_the_inductor_bug(
        monkeypatch):
    """--compile compiles the objective in place (checkpoints and exports keep their tensor
    names), with inductor's loop reindexing off (the tica-photo compile failure's workaround)
    and a failing graph falling back to eager rather than ending a run."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor
    from tica.train.distributed import compile_objective
    from tica.train.objective import Objective
    monkeypatch.setattr(inductor, "loop_reindexing_after_fusion", True)   # restored after
    monkeypatch.setattr(dynamo, "suppress_errors", False)
    model = tica.create_model("tica-cifar", **TINY)
    objective = Objective(model, _cfg(Path("unused"), step=2))
    names = list(objective.state_dict())
    compile_objective(objective)
    assert list(objective.state_dict()) == names and list(model.state_dict())[0] == "g_a.0.weight"
    assert objective._compiled_call_impl is not None
    assert inductor.loop_reindexing_after_fusion is False and dynamo.suppress_errors is True


@pytest.mark.slow
def test_a_compiled_run_trains_and_exports(tmp_path):
    """The compiled step end to end on the CPU (about a minute of compiling)."""
    result = train(_cfg(tmp_path, step=2, max_steps=3, batch_size=4, compile=True, bf16=False))
    assert result.steps == 3 and tica.load_checkpoint(result.weights).is_updated


def test_a_fast_cnn_teacher_trains_and_the_vit_distils_from_it(tmp_path):
    """teacher-cifar (arch cnn) trains like any classifier; a student with --teacher is taught
    its top class beside the true label (the logged `agree`), and a teacher of other classes
    is refused."""
    teacher = train(_cfg(tmp_path / "t", model="teacher-cifar", model_overrides={"N": 16, "M": 32},
                         max_steps=2, batch_size=8))
    loaded = tica.load_checkpoint(teacher.weights)
    assert loaded.config.arch == "cnn" and loaded.classify_pixels(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    student = train(_cfg(tmp_path / "s", model="vit-pixel-cifar", model_overrides={
        "embed_dim": 32, "depth": 2, "num_heads": 2}, teacher=str(teacher.weights),
        distill=0.5, max_steps=2, batch_size=8))
    logged = [r for r in _metrics(str(tmp_path / "s" / "run")) if "loss" in r]
    assert student.steps == 2 and all(0 <= r["agree"] <= 1 for r in logged)
    from tica.checkpoint import save_checkpoint
    other = tica.create_model("teacher-photo", N=16, M=32)      # Imagenette's classes
    save_checkpoint(other, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="classifies"):
        train(_cfg(tmp_path / "x", model="vit-pixel-cifar", model_overrides={},
                   teacher=str(tmp_path / "other.safetensors"), max_steps=1))


def test_hard_distillation_mixes_the_true_and_the_teachers_labels():
    import torch.nn.functional as F
    from tica.losses import rda_loss
    g = torch.Generator().manual_seed(0)
    logits, x = torch.randn(6, 10, generator=g), torch.rand(6, 3, 8, 8, generator=g)
    labels, taught = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([0, 1, 2, 9, 9, 9])
    plain = rda_loss({"logits": logits}, x, labels, 1.0, 0.0, label_smoothing=0.1)
    mixed = rda_loss({"logits": logits}, x, labels, 1.0, 0.0, 0.1, teacher_labels=taught,
                     distill=0.25)
    expected = 0.75 * plain["loss"] + 0.25 * F.cross_entropy(logits, taught)
    assert mixed["loss"] == pytest.approx(float(expected), rel=1e-6)
    assert mixed["ce"] == pytest.approx(float(plain["ce"]))      # still against the labels
    assert mixed["agree"] == pytest.approx(float((logits.argmax(1) == taught).float().mean()))
