"""Check the wheel a user installs: small enough, with every shipped weights file the manifest
lists (checksums included), the compiled entropy coder, the demo page and the `tica` command, and nothing of the
repository's own (tests, benchmarks, a virtual environment).

    python scripts/check_wheel.py build/wheel/tica-*.whl [--max-mb 80]

Prints what it checked; exits 1 with one line per problem otherwise."""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

# the shipped weights are ~57 MB and compress little: the limit leaves room for one more
# small model, not for an accidental checkpoint or data file
DEFAULT_MAX_MB = 80.0
FORBIDDEN = ("tests/", "benchmarks/", ".venv/", "runs/", "docs/", "scripts/", "tools/",
             "tica_tools/")
CORE_ONLY = ("torch", "numpy", "safetensors", "pillow")


def problems(wheel: Path, max_mb: float) -> tuple[list[str], list[str]]:
    """(problems, notes) for one wheel file."""
    bad, notes = [], []
    size_mb = wheel.stat().st_size / 1e6
    notes.append(f"{wheel.name}: {size_mb:.1f} MB (limit {max_mb:g} MB)")
    if size_mb > max_mb:
        bad.append(f"the wheel is {size_mb:.1f} MB, over the {max_mb:g} MB limit")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in sorted(names):
            if name.startswith(FORBIDDEN) or any(f"/{f}" in name for f in FORBIDDEN[:3]):
                bad.append(f"{name} does not belong in the wheel")
        if "tica/weights/manifest.json" not in names:
            bad.append("tica/weights/manifest.json is missing")
            listed = []
        else:
            listed = json.loads(zf.read("tica/weights/manifest.json"))["weights"]
        for entry in listed:
            path = f"tica/weights/{entry['file']}"
            if path not in names:
                bad.append(f"{path} (listed in the manifest) is missing")
            elif hashlib.sha256(zf.read(path)).hexdigest() != entry["sha256"]:
                bad.append(f"{path} does not match the manifest's sha256")
        notes.append(f"manifest: {len(listed)} weights files, all present and matching"
                     if listed and not any("manifest" in b for b in bad) else "manifest: checked")
        for kernel, what in (("tica/entropy/_rans", "the entropy coder's compiled kernel"),
                             ("tica/nn/_intops", "the integer h_s's compiled epilogue")):
            if not any(re.fullmatch(re.escape(kernel) + r"\.[^/]+\.(so|pyd)", n) for n in names):
                bad.append(f"{what} ({kernel}) is missing")
        if "tica/serve/demo.html" not in names:
            bad.append("tica/serve/demo.html is missing")
        dist_info = next((n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA")), None)
        if dist_info is None:
            bad.append("no .dist-info/METADATA")
            return bad, notes
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode() \
            if f"{dist_info}/entry_points.txt" in names else ""
        if "tica = tica.cli:main" not in entry_points:
            bad.append("the `tica` console script is missing from entry_points.txt")
        meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        core = [r for r in meta.get_all("Requires-Dist", []) if "extra ==" not in r]
        extras = meta.get_all("Provides-Extra", [])
    core_names = sorted(re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in core)
    notes.append(f"core requirements: {', '.join(core)}")
    notes.append(f"extras: {', '.join(extras)}")
    if core_names != sorted(CORE_ONLY):
        bad.append(f"core requirements are {core_names}, expected exactly {sorted(CORE_ONLY)}")
    if any(r.replace(" ", "").lower().startswith("torch==") for r in core):
        bad.append("torch is pinned in the core requirements (pin it in constraints.txt)")
    for extra in ("serve", "train", "eval", "edge", "test"):
        if extra not in extras:
            bad.append(f"the [{extra}] extra is missing")
    return bad, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB)
    args = parser.parse_args(argv)
    bad, notes = problems(args.wheel, args.max_mb)
    for note in notes:
        print(note)
    for problem in bad:
        print(f"check_wheel: error: {problem}", file=sys.stderr)
    print("wheel OK" if not bad else f"{len(bad)} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
