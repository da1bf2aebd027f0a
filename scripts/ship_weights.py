"""Copy trained weights into the package (float16) and register them in weights/index.json.

    python scripts/ship_weights.py --codec runs/q1/model.safetensors[=Q] [--codec ...]
                                   [--step1 runs/step1/model.safetensors]
                                   [--model runs/vit-pixel-cifar/model.safetensors]

A codec's preset and quality come from the checkpoint's own config and metadata; `=Q` gives it
another rate-point label (the label is metadata: the model id, which streams carry, is unchanged).
--check DIR compares each codec in float16 with its float32 original on the images of DIR
(e.g. ../shared/data/kodak): bpp and PSNR from real streams, so "half precision if quality
allows" is a measured statement.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tica.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from tica.evaluate import LearnedPipeline, evaluate
from tica.image import load_image

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "tica" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", action="append", default=[],
                        help="step-2 export, optionally =Q to relabel its rate point (repeatable)")
    parser.add_argument("--step1", help="step-1 export")
    parser.add_argument("--check", metavar="DIR", help="compare float16 with float32 on these images")
    parser.add_argument("--model", action="append", default=[],
                        help="a model with no rate points, e.g. a classifier baseline (repeatable)")
    args = parser.parse_args()
    index_path = WEIGHTS / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    images = ([(load_image(f)[None], None) for f in sorted(Path(args.check).glob("*.png"))]
              if args.check else [])
    for spec in args.codec:
        path, _, label = spec.partition("=")
        if label and not label.isdigit():
            raise SystemExit(f"{spec}: the rate-point label after '=' must be an integer")
        model = load_checkpoint(path)
        meta = dict(model.checkpoint_metadata)
        if label:
            meta["quality"] = int(label)
        name, quality = model.config.name, meta.get("quality")
        if quality is None or not model.is_updated:
            raise SystemExit(f"{path}: needs a quality label and coding tables (a step-2 export)")
        target = f"{name}-q{quality}.safetensors"
        save_checkpoint(model, WEIGHTS / target, meta, half=True)
        index.setdefault("codecs", {}).setdefault(name, {})[str(quality)] = target
        shipped = load_checkpoint(WEIGHTS / target)       # the id of what users will load
        index.setdefault("ids", {})[f"{shipped.model_id:04x}"] = [name, quality]
        print(f"{target}: {(WEIGHTS / target).stat().st_size / 1e6:.1f} MB")
        if args.check:
            full, half = (evaluate(LearnedPipeline(m), images) for m in (model, shipped))
            print(f"  float32: {full.bpp:.4f} bpp, {full.psnr_per_image:.3f} dB; float16: "
                  f"{half.bpp:.4f} bpp ({100 * (half.bpp / full.bpp - 1):+.2f}%), "
                  f"{half.psnr_per_image:.3f} dB ({half.psnr_per_image - full.psnr_per_image:+.3f})")
    for path in args.model:
        model = load_checkpoint(path)
        target = f"{model.config.name}.safetensors"
        save_checkpoint(model, WEIGHTS / target, model.checkpoint_metadata, half=True)
        index.setdefault("models", {})[model.config.name] = target
        print(f"{target}: {(WEIGHTS / target).stat().st_size / 1e6:.1f} MB")
    if args.step1:
        model = load_checkpoint(args.step1)
        target = f"{model.config.name}-step1.safetensors"
        save_checkpoint(model, WEIGHTS / target, model.checkpoint_metadata, half=True)
        index.setdefault("step1", {})[model.config.name] = target
        print(f"{target}: {(WEIGHTS / target).stat().st_size / 1e6:.1f} MB")
    atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n"))


if __name__ == "__main__":
    main()
