"""Rejoin what a training plan published (python -m tica_tools.plan run, e.g. a remote run's result folder):

    python scripts/join_parts.py FOLDER DEST

NAME.safetensors.part0, .part1, ... in FOLDER become DEST/NAME.safetensors; whole files are
copied; packN.tar are unpacked, each member checked against the pack's own index; every other
file is checked against the sha256 FOLDER/plan.json lists; then each is loaded with tica.load
(a step-2 codec must be coding-ready). plan.json is copied beside them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import tica
from tica.errors import TicaError
from tica_tools.plan import STATUS_FILE, join_parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("dest")
    args = parser.parse_args()
    try:
        files = join_parts(args.folder, args.dest)
        if (Path(args.folder) / STATUS_FILE).is_file():
            shutil.copyfile(Path(args.folder) / STATUS_FILE, Path(args.dest) / STATUS_FILE)
        for path in files:
            model = tica.load_checkpoint(path)            # as saved: no update() here
            info = model.weights_info
            coding = ", coding-ready" if getattr(model, "is_updated", False) else ""
            rng = getattr(model, "quality_range", None)
            print(f"{path}: {model.config.name} step {info.step}, "
                  f"{info.train_steps} steps{coding}" + (f", quality {rng[0]:g}-{rng[1]:g}" if rng else ""))
    except TicaError as exc:
        print(f"join_parts: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
