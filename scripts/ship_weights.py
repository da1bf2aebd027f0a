"""Copy trained weights into the package (float16) and list them in weights/manifest.json.

    python scripts/ship_weights.py --codec runs/vr/model.safetensors [--codec ...]
                                   [--step1 runs/step1/model.safetensors]
                                   [--model runs/vit-pixel-cifar/model.safetensors]
                                   [--plan-status OUT/plan.json | --trained '{...}']

A codec's preset comes from the checkpoint's own config; a shipped codec is variable-rate
(the rate is chosen when coding) and replaces its preset's earlier codec, entry and file. --check DIR compares each codec in float16
with its float32 original on the images of DIR (e.g. ../shared/data/kodak) from real
streams, so "half precision if quality allows" is a measured statement.
`--rehash` recomputes every entry's SHA-256 and model id from the files.

--plan-status reads the plan.json of the plan that trained the files (each file's run is its
name: tica-cifar, tica-cifar-step1, vit-pixel-cifar, ...) and writes its provenance: the
plan, the commit, minutes, steps and images, with the runs it started from; a run that
continued the shipped weights (init "shipped") adds its lease to the file's history
(tica_tools.plan.provenance), so the manifest says what the weights hold in all.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from tica.checkpoint import save_checkpoint
from tica.evaluate import LearnedPipeline, evaluate
from tica.image import read_image
from tica.io import sha256_file
from tica.registry import MANIFEST, load_checkpoint, manifest_json, write_manifest
from tica_tools.plan.provenance import accumulate, lease

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "tica" / "weights"


def _trained(name: str, args: argparse.Namespace, entries: list[dict]) -> dict:
    """The provenance of artifact `name`: --trained as given, else from --plan-status,
    continuing the shipped entry's history where the run continued its weights."""
    if args.trained or not args.plan_status:
        return args.trained
    earlier = next((e["trained"] for e in entries if e["name"] == name), None)
    return accumulate(earlier, lease(args.plan_status, name))


def _entry(model, target: str, role: str, trained: dict, results: dict) -> dict:
    info = model.weights_info
    entry = {"name": Path(target).stem, "file": target, "preset": model.config.name, "role": role,
             "sha256": sha256_file(WEIGHTS / target), "trained": trained or info.trained,
             "results": results}
    if role == "codec":
        entry["model_id"] = f"{model.model_id:04x}"
        entry["rate_levels"] = model.config.rate_levels
    return entry


def _put(entries: list[dict], entry: dict) -> None:
    """Add `entry`, replacing the one of its name or of its preset and role (the old file is
    deleted)."""
    for old in list(entries):
        if old["name"] == entry["name"] or (old["preset"], old["role"]) == (entry["preset"],
                                                                            entry["role"]):
            entries.remove(old)
            if old["file"] != entry["file"]:
                (WEIGHTS / old["file"]).unlink(missing_ok=True)
                print(f"removed {old['file']} (superseded by {entry['file']})")
    entries.append(entry)


def _ship_codec(src: str, args: argparse.Namespace, entries: list[dict], images: list) -> None:
    """Ship one --codec PATH: float16 into the package, its entry into `entries`."""
    model = load_checkpoint(src)
    info = model.weights_info
    if not model.is_updated or not model.config.rate_levels:
        raise SystemExit(f"{src}: a shipped codec needs coding tables (a step-2 export) and "
                         f"variable rate (rate_levels >= 2)")
    target = f"{model.config.name}.safetensors"
    trained = _trained(model.config.name, args, entries)
    if trained:
        info = replace(info, trained=trained)
    save_checkpoint(model, WEIGHTS / target, info, half=True)
    shipped = load_checkpoint(WEIGHTS / target)       # the id of what users will load
    _put(entries, _entry(shipped, target, "codec", trained, args.results))
    print(f"{target}: {(WEIGHTS / target).stat().st_size / 1e6:.1f} MB, id {shipped.model_id:04x}")
    if args.check:
        full, half = (evaluate(LearnedPipeline(m), images) for m in (model, shipped))
        print(f"  float32: {full.bpp:.4f} bpp, {full.psnr_per_image:.3f} dB; float16: "
              f"{half.bpp:.4f} bpp ({100 * (half.bpp / full.bpp - 1):+.2f}%), "
              f"{half.psnr_per_image:.3f} dB ({half.psnr_per_image - full.psnr_per_image:+.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", action="append", default=[],
                        help="a variable-rate step-2 export (repeatable)")
    parser.add_argument("--step1", help="step-1 export")
    parser.add_argument("--model", action="append", default=[],
                        help="a model with no codec, e.g. a classifier baseline (repeatable)")
    parser.add_argument("--trained", type=json.loads, default={},
                        help="JSON provenance for these artifacts: where, minutes, steps, images")
    parser.add_argument("--plan-status", type=lambda p: json.loads(Path(p).read_text()),
                        metavar="PLAN_JSON", help="the plan.json of the plan that trained them: "
                        "their provenance, accumulated over leases")
    parser.add_argument("--results", type=json.loads, default={},
                        help="JSON headline numbers for these artifacts (e.g. from make report)")
    parser.add_argument("--check", metavar="DIR", help="compare float16 with float32 on these images")
    parser.add_argument("--rehash", action="store_true", help="refresh every entry's sha256 and id")
    args = parser.parse_args()
    path = WEIGHTS / MANIFEST
    manifest = manifest_json(path)
    entries = manifest["weights"]
    images = ([(read_image(f)[None], None) for f in sorted(Path(args.check).glob("*.png"))]
              if args.check else [])
    for spec in args.codec:
        _ship_codec(spec, args, entries, images)
    for role, sources in (("classifier", args.model), ("step1", [args.step1] if args.step1 else [])):
        for src in sources:
            model = load_checkpoint(src)
            target = f"{model.config.name}{'-step1' if role == 'step1' else ''}.safetensors"
            trained = _trained(Path(target).stem, args, entries)
            info = replace(model.weights_info, **({"trained": trained} if trained else {}))
            save_checkpoint(model, WEIGHTS / target, info, half=True)
            _put(entries, _entry(load_checkpoint(WEIGHTS / target), target, role, trained,
                               args.results))
            print(f"{target}: {(WEIGHTS / target).stat().st_size / 1e6:.1f} MB")
    if args.rehash:
        for e in entries:
            e["sha256"] = sha256_file(WEIGHTS / e["file"])
            if e["role"] == "codec":
                e["model_id"] = f"{load_checkpoint(WEIGHTS / e['file']).model_id:04x}"
    entries.sort(key=lambda e: (e["preset"], e["role"]))
    write_manifest(manifest, path)


if __name__ == "__main__":
    main()
