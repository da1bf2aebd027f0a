"""The shipped weights: one manifest ties every file to its hash, its stream id and its
provenance; one resolver finds them; nothing untrained is built unless asked for."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

import tica
from conftest import DATA, load_module
from tica.registry import load_checkpoint
from tica.errors import ConfigError
from tica.registry import (MANIFEST, find_weights, list_models, read_manifest, standard_qualities,
                           weights_for_id, weights_root)

REPO = Path(__file__).resolve().parents[1]


def test_every_file_matches_its_manifest_entry_and_every_id_is_unique():
    entries = read_manifest()
    assert entries, "the package ships weights"
    files = {p.name for p in weights_root().glob("*.safetensors")}
    assert files == {e.file.name for e in entries}           # nothing unlisted, nothing missing
    ids = [e.model_id for e in entries if e.role == "codec"]
    assert len(ids) == len(set(ids)), "two shipped codecs share a stream id"
    assert len({e.name for e in entries}) == len(entries)
    for e in entries:
        assert hashlib.sha256(e.file.read_bytes()).hexdigest() == e.sha256, e.name
        assert e.preset in list_models() and set(e.trained["where"].split("+")) <= {"cpu", "gpu"}, e.name
        # what trained it, exactly: a plan of this repository and the commit it ran at
        assert (REPO / e.trained["plan"]).is_file(), e.name
        assert re.fullmatch(r"[0-9a-f]{7,40}", e.trained["commit"]), e.name
        model = load_checkpoint(e.file)
        assert model.config.name == e.preset
        if e.role == "codec":
            assert model.is_updated and model.model_id == e.model_id, e.name
            assert weights_for_id(e.model_id) == e
            assert model.config.rate_levels == e.rate_levels >= 2      # all variable-rate


def test_the_resolver_finds_each_presets_weights_and_refuses_what_is_not_there():
    for preset in {e.preset for e in read_manifest() if e.role == "codec"}:
        qualities = standard_qualities(preset)
        assert qualities == sorted(qualities) and qualities[0] >= 1
        model = tica.load(preset)
        assert model.config.standard_qualities == qualities
        assert find_weights(preset, "codec").file.name == f"{preset}.safetensors"
        # one rule for the rate: the default point (6 of 8), any number in range on the
        # stream's 1/16 grid, nothing outside
        assert model.check_quality(None) == model.config.default_quality == 6
        assert model.check_quality(2.51) == 2.5
        with pytest.raises(ConfigError, match="outside"):
            model.check_quality(99)
    with pytest.raises(TypeError):
        tica.load("tica-cifar", quality=2)                   # the rate is not the model's
    with pytest.raises(ConfigError, match="--untrained"):
        tica.load("tica-s")                                  # never a silent random model
    untrained = tica.load("tica-s", untrained=True)
    assert "UNTRAINED" in tica.describe(untrained)
    # a stream's qualities, one an image: their range where they differ, the marker kept
    assert tica.describe(untrained, [2.5, 7, 2.5]).startswith("tica-s q2.5..7 (UNTRAINED")
    assert tica.describe(untrained, [3.0, 3.0]).startswith("tica-s q3 (UNTRAINED")
    cifar = tica.load("tica-cifar")
    assert tica.describe(cifar, [None]) == tica.describe(cifar) == "tica-cifar q6"


def test_a_malformed_manifest_is_a_config_error(tmp_path):
    bad = tmp_path / MANIFEST
    bad.write_text(json.dumps({"format": "something-else", "weights": []}))
    with pytest.raises(ConfigError, match="malformed"):
        read_manifest(bad)
    bad.write_text(json.dumps({"format": "tica-weights-manifest", "weights": [
        {"name": "x", "file": "x.safetensors", "preset": "tica-cifar", "role": "wizard",
         "sha256": "0"}]}))
    with pytest.raises(ConfigError, match="role"):
        read_manifest(bad)
    # every shipped codec is variable-rate, one file per preset and role
    codec = {"name": "x", "file": "x.safetensors", "preset": "tica-cifar", "role": "codec",
             "sha256": "0", "model_id": "0001"}
    for entries, problem in (([codec], "variable-rate"),
                             ([{**codec, "rate_levels": 8}, {**codec, "name": "y",
                                                             "rate_levels": 8}], "two codec")):
        bad.write_text(json.dumps({"format": "tica-weights-manifest", "weights": entries}))
        with pytest.raises(ConfigError, match=problem):
            read_manifest(bad)


def test_the_server_refuses_two_models_with_one_stream_id(tmp_path, monkeypatch):
    from tica.serve import app as app_module
    codec = next(e for e in read_manifest() if e.role == "codec")
    monkeypatch.setattr(app_module.api, "AUTO_MODELS", (codec.preset, codec.preset))
    with pytest.raises(ConfigError, match="share the stream id"):
        app_module.ModelSet(app_module.ServeConfig(model="auto"))


def test_the_manifest_is_read_and_written_by_one_pair_of_functions(tmp_path):
    """The shipping script writes what the registry reads: the shipped manifest round-trips
    byte for byte, and a file that is not a manifest is refused either way."""
    import pytest

    from tica.registry import MANIFEST, manifest_json, read_manifest, weights_root, write_manifest
    shipped = weights_root() / MANIFEST
    out = tmp_path / MANIFEST
    write_manifest(manifest_json(shipped), out)
    assert out.read_text() == shipped.read_text()
    assert [e.name for e in read_manifest(out)] == [e.name for e in read_manifest(shipped)]
    with pytest.raises(ValueError, match="format"):
        write_manifest({"format": "other", "weights": []}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    assert manifest_json(tmp_path / "none.json")["weights"] == []


def _ship_module(tmp_path):
    """scripts/ship_weights.py, writing into a copy of the package's weights folder."""
    import shutil
    ship = load_module(REPO / "scripts" / "ship_weights.py")
    ship.WEIGHTS = tmp_path / "weights"
    shutil.copytree(Path(tica.__file__).parent / "weights", ship.WEIGHTS)
    return ship


@pytest.mark.real_data("cifar10-jpeg.tar.gz")
def test_ship_only_if_better_keeps_out_a_codec_no_better_than_the_shipped_one(tmp_path, capsys):
    """scripts/ship_weights.py --only-if-better, on a copy of the package's weights folder:
    the shipped tica-cifar offered again is no better than itself, so nothing changes."""
    import shutil

    ship = _ship_module(tmp_path)
    weights = ship.WEIGHTS
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    candidate = tmp_path / "candidate.safetensors"
    shutil.copy(weights / "tica-cifar.safetensors", candidate)
    status = ship.main(["--codec", str(candidate), "--only-if-better",
                        str(DATA / "cifar10-jpeg.tar.gz"), "--limit", "20"])
    out = capsys.readouterr().out
    assert status == 3 and "not better, not shipped" in out
    gaps = re.search(r"BD-rate \(PSNR\) ([-+]\d+\.\d+)%, top-1 at equal bpp ([-+]\d+\.\d+) "
                     r"points", out)
    assert gaps and abs(float(gaps[1])) < 0.01 and abs(float(gaps[2])) < 0.01
    assert "points [+0.00, +0.00] (chance)" in out                  # the paired test ran
    assert "tica-cifar on 20 images of cifar10_test_20:" in out
    # the curves side by side, a row a quality: the same file, the same numbers twice
    rows = re.findall(r"^\| (\d) \| ([\d.]+ / [\d.]+ / [\d.]+%) \| ([\d.]+ / [\d.]+ / [\d.]+%) \|$",
                      out, re.M)
    assert [int(r[0]) for r in rows] == list(range(1, 9)) and all(r[1] == r[2] for r in rows)
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before


def test_of_a_trials_arms_the_best_that_passes_ships_and_the_others_stay_out(tmp_path, capsys,
                                                                             monkeypatch):
    """Several codecs of one preset: the shipped curve is measured once per data set, each
    arm gets the gate's verdict, and of the arms that pass only the one no other beats
    ships; an arm that fails stays out. Curves stand in for the evaluation here."""
    import shutil
    from types import SimpleNamespace
    ship = _ship_module(tmp_path)

    def curve(psnr_gain, top1_gain):
        return [{"quality": q, "bpp": 0.25 * q, "psnr": 20 + q + psnr_gain,
                 "top1": 0.6 + 0.02 * q + top1_gain} for q in range(1, 9)]
    # per data set: shipped, then arms 1, 2, 3 (the order gate evaluates them in)
    calls = iter([curve(0, 0), curve(0.2, 0.01), curve(0.5, 0.01), curve(0.8, -0.05)] * 2)
    monkeypatch.setattr(ship, "curve_rows", lambda model, data: next(calls))
    monkeypatch.setattr(ship, "eval_data", lambda source, split, limit: SimpleNamespace(
        count=1000, name=f"set_{Path(source).name}"))
    arms = []
    for i in range(3):
        arms.append(tmp_path / f"arm{i + 1}.safetensors")
        shutil.copy(ship.WEIGHTS / "tica-cifar.safetensors", arms[-1])
    status = ship.main([a for arm in arms for a in ("--codec", str(arm))]
                       + ["--only-if-better", "a", "--only-if-better", "b"])
    out = capsys.readouterr().out
    assert status == 0
    assert f"tica-cifar candidate 2 ({arms[1]}): better, shipping" in out
    assert (f"tica-cifar candidate 1 ({arms[0]}): better, but candidate 2 is the better arm: "
            "not shipped") in out
    assert f"tica-cifar candidate 3 ({arms[2]}): not better, not shipped" in out
    assert out.count("tica-cifar on 1000 images of set_") == 2
    assert out.count("candidate 2 against candidate 1: BD-rate (PSNR) -") == 2
    assert next(calls, None) is None                              # shipped measured twice only
    entry = next(e for e in json.loads((ship.WEIGHTS / "manifest.json").read_text())["weights"]
                 if e["file"] == "tica-cifar.safetensors")
    assert entry["results"]["set_a"]["q1"]["psnr"] == 21.5        # arm 2's curve
    assert entry["results"]["set_b"]["vs_previous"]["bd_top1_points"] > 0.9
    with pytest.raises(SystemExit, match="one ships"):           # no data to choose one
        ship.main(["--codec", str(arms[0]), "--codec", str(arms[1])])


def test_a_lease_no_plan_ran_joins_the_shipped_files_history(tmp_path):
    """--lease (e.g. tica_tools.refit's JSON) adds one lease to the shipped entry's history,
    as a plan's lease would be: the earlier leases kept, the totals summed."""
    import shutil
    ship = _ship_module(tmp_path)
    before = next(e for e in json.loads((ship.WEIGHTS / "manifest.json").read_text())["weights"]
                  if e["name"] == "tica-cifar")["trained"]
    codec = tmp_path / "refit.safetensors"
    shutil.copy(ship.WEIGHTS / "tica-cifar.safetensors", codec)
    lease = {"plan": "tica_tools.refit", "commit": "abc1234", "date": "2026-12-06",
             "where": "cpu", "init": "shipped", "minutes": 30.0, "steps": 2000,
             "images_seen": 0, "latents_seen": 256000, "steps_note": "hyperprior refit"}
    (tmp_path / "lease.json").write_text(json.dumps(lease))
    assert ship.main(["--codec", str(codec), "--lease", str(tmp_path / "lease.json")]) == 0
    after = next(e for e in json.loads((ship.WEIGHTS / "manifest.json").read_text())["weights"]
                 if e["name"] == "tica-cifar")["trained"]
    assert after["leases"] == before["leases"] + [lease]
    assert after["minutes"] == pytest.approx(before["minutes"] + 30.0)
    assert (after["steps"], after["images_seen"]) == (before["steps"] + 2000,
                                                      before["images_seen"])
    assert after["plan"] == "tica_tools.refit" and after["commit"] == "abc1234"
    (tmp_path / "dirty.json").write_text(json.dumps(dict(lease, commit="abc1234-dirty")))
    manifest = (ship.WEIGHTS / "manifest.json").read_text()
    with pytest.raises(SystemExit, match="'abc1234-dirty', not a commit"):
        ship.main(["--codec", str(codec), "--lease", str(tmp_path / "dirty.json")])
    assert (ship.WEIGHTS / "manifest.json").read_text() == manifest
    # a failure after the files are written (here the float16 check) changes nothing: they
    # were staged, and replace the old ones only with the manifest
    before = {p.name: p.read_bytes() for p in ship.WEIGHTS.iterdir()}
    (tmp_path / "check").mkdir()

    def broken(*args):
        raise RuntimeError("the evaluation failed")
    ship.evaluate = broken
    (tmp_path / "another.json").write_text(json.dumps(dict(lease, date="2026-12-07")))
    with pytest.raises(RuntimeError, match="evaluation failed"):
        ship.main(["--codec", str(codec), "--lease", str(tmp_path / "another.json"),
                   "--check", str(tmp_path / "check")])
    assert {p.name: p.read_bytes() for p in ship.WEIGHTS.iterdir()} == before
    # the same lease twice would count its minutes and images twice
    with pytest.raises(SystemExit, match="already in the file's history"):
        ship.main(["--codec", str(codec), "--lease", str(tmp_path / "lease.json")])


def test_one_shipping_at_a_time_edits_the_manifest(tmp_path):
    """scripts/ship_weights.py evaluates first and then reads, changes and writes the
    manifest under an exclusive lock: a second shipping waits rather than writing back a
    manifest read before the first one's entry."""
    import subprocess
    import sys

    ship = load_module(REPO / "scripts" / "ship_weights.py")
    manifest = tmp_path / "manifest.json"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'w')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n"
             "    sys.exit(7)\n")
    with ship._manifest_lock(manifest):
        lock = ship._lock_file(manifest)
        held = subprocess.run([sys.executable, "-c", probe, str(lock)])
    free = subprocess.run([sys.executable, "-c", probe, str(lock)])
    assert (held.returncode, free.returncode) == (7, 0)


def test_compare_codecs_prints_the_gates_table_and_verdicts(tmp_path, capsys):
    """benchmarks/compare_codecs.py: the curves side by side (the gate's table) and each
    codec's verdict against the first, with the paired interval; --out writes the same."""
    compare = load_module(REPO / "benchmarks" / "compare_codecs.py")
    shipped = Path(tica.__file__).parent / "weights" / "tica-cifar.safetensors"
    out = tmp_path / "table.md"
    assert compare.main([str(DATA / "cifar10-jpeg.tar.gz"), "shipped:tica-cifar", str(shipped),
                         "--limit", "10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text and text.startswith("10 images of cifar10_test_10")
    rows = re.findall(r"^\| (\d) \| ([\d.]+ / [\d.]+ / [\d.]+%) \| ([\d.]+ / [\d.]+ / [\d.]+%) \|$",
                      text, re.M)
    assert [int(r[0]) for r in rows] == list(range(1, 9)) and all(r[1] == r[2] for r in rows)
    assert f"| {shipped} | +0.00% | +0.000 points [+0.00, +0.00] (chance) | same |" in text


def test_each_arm_of_a_trial_ships_with_its_own_lease(tmp_path):
    """--lease per --codec: the one given whatever the file, else the lease whose runs name
    the file; none or two naming it is an error, not a wrong history."""
    ship = _ship_module(tmp_path)
    wide, narrow = ({"runs": [name], "init": "file"} for name in ("m192k1", "m96k1"))
    assert ship._lease_of([wide], "runs/x/anything.safetensors") is wide
    assert ship._lease_of([wide, narrow], "runs/refit/m96k1.safetensors") is narrow
    assert ship._lease_of([wide, narrow], "m192k1.safetensors") is wide
    with pytest.raises(SystemExit, match="0 of the --lease files"):
        ship._lease_of([wide, narrow], "runs/refit/other.safetensors")
    with pytest.raises(SystemExit, match="2 of the --lease files"):
        ship._lease_of([wide, dict(wide)], "m192k1.safetensors")


def test_a_shipped_file_that_is_not_the_manifests_is_refused(tmp_path, monkeypatch):
    """A damaged or replaced weights file in the package: CheckpointError naming it, before
    anything is loaded from it."""
    import dataclasses
    import shutil

    import tica.api as api
    from tica.errors import CheckpointError
    entry = find_weights("tica-cifar", "codec")
    copy = tmp_path / entry.file.name
    shutil.copy(entry.file, copy)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1                                           # one bit of one weight
    copy.write_bytes(bytes(data))
    damaged = dataclasses.replace(entry, file=copy)
    monkeypatch.setattr(api, "find_weights", lambda name, role: damaged if role == "codec"
                        else None)
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        tica.load("tica-cifar")
    copy.write_bytes(entry.file.read_bytes())               # the manifest's bytes again
    assert tica.load("tica-cifar").model_id == entry.model_id


@pytest.mark.real_data("cifar10-jpeg.tar.gz")
def test_a_classifier_ships_only_if_better_and_keeps_its_results(tmp_path, capsys, monkeypatch):
    """--model with --only-if-better: the shipped vit-pixel-cifar offered again is no better
    than itself (nothing changes, its manifest results kept); offered against a worse shipped
    one (its head zeroed) it ships, with the paired comparison as its results."""
    import shutil

    import torch

    ship = _ship_module(tmp_path)
    weights = ship.WEIGHTS
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    candidate = tmp_path / "candidate.safetensors"
    shutil.copy(weights / "vit-pixel-cifar.safetensors", candidate)
    args = ["--model", str(candidate), "--only-if-better", str(DATA / "cifar10-jpeg.tar.gz"),
            "--limit", "100"]
    assert ship.main(args) == 3
    out = capsys.readouterr().out
    assert "(+0.00 points, 95% paired interval [+0.00, +0.00])" in out
    assert "vit-pixel-cifar: not better, not shipped" in out
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before

    def worse(name):
        model = tica.load(name)
        with torch.no_grad():
            for p in model.vit.head.parameters():
                p.zero_()
        return model
    monkeypatch.setattr(ship.api, "load", worse)
    assert ship.main(args) == 0
    assert "vit-pixel-cifar: better, shipping" in capsys.readouterr().out
    entry = next(e for e in read_manifest(weights / MANIFEST) if e.name == "vit-pixel-cifar")
    row = entry.results["cifar10_test_100"]
    assert row["vs_previous"]["better"] and row["vs_previous"]["top1_interval"][0] > 0
    assert row["top1"] > row["vs_previous"]["top1_previous"] + 0.3
