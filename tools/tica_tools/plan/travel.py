"""Helpers for a remote run: what it is sent, and the photographs and the
labelled split packed small enough to travel."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tica.errors import TicaError


def _save(img, stem: Path, quality: int | None) -> int:
    """`img` saved as STEM.webp, lossless unless a `quality` is given (PNG, or JPEG at that
    quality, where Pillow lacks WebP); a dot in the stem stays (a.b -> a.b.webp). Returns
    the file's bytes."""
    from PIL import features
    if features.check("webp"):
        target = stem.with_name(stem.name + ".webp")
        if quality is None:
            img.save(target, "WEBP", lossless=True, quality=100, method=4)
        else:
            img.save(target, "WEBP", quality=quality, method=4)
    elif quality is None:
        target = stem.with_name(stem.name + ".png")
        img.save(target, "PNG", compress_level=9)
    else:
        target = stem.with_name(stem.name + ".jpg")
        img.save(target, "JPEG", quality=quality)
    return target.stat().st_size


def pack_photos(src: str | Path, dest: str | Path, scale: int = 2, quality: int | None = None
                ) -> tuple[int, int]:
    """The photographs of `src`, each shrunk `scale` times (box filter), as WebP in `dest`,
    lossless unless a `quality` is given: how natural-image training data travels to a
    machine with a size limit. Returns (files, bytes)."""
    from PIL import Image

    from tica.data import IMAGE_SUFFIXES
    src, dest = Path(src), Path(dest)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TicaError(f"no photographs in {src}")
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in files:
        img = Image.open(f).convert("RGB")
        total += _save(img.reduce(scale) if scale > 1 else img, dest / f.stem, quality)
    return len(files), total


def pack_split(data: str | Path, dest: str | Path, side: int = 160, quality: int | None = 75,
               split: str = "train") -> tuple[int, int]:
    """An ImageFolder split of `data` (a folder or an archive) resized to side x side
    (bicubic) and stored as WebP at `quality` (lossless where None) in dest/SPLIT/CLASS/:
    Imagenette's 8,669 training images at 160x160 and quality 75 take ~35 MiB instead of
    104; lossless, the codec's reconstruction target carries no artifacts of its own.
    Returns (files, bytes)."""
    from PIL import Image

    from tica.data import split_files
    files, labels, classes = split_files(data, split)
    total = 0
    for f, label in zip(files, labels):
        folder = Path(dest) / split / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.open(f).convert("RGB").resize((side, side), Image.BICUBIC)
        total += _save(img, folder / f.stem, quality)
    return len(files), total


def travel_bytes(repo: str | Path, carry: list[str]) -> dict[str, int]:
    """What a remote run is sent, by folder: the working tree's tracked and
    untracked-not-ignored files (by the folder holding them), then each carried path."""
    repo = Path(repo)
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError) as exc:
        raise TicaError(f"cannot list the working tree of {repo} with git: {exc}") from None
    sizes: dict[str, int] = {}
    for p in listed:
        if p and (repo / p).is_file():
            group = str(Path(p).parent) if Path(p).parent != Path(".") else "(top level)"
            sizes[group] = sizes.get(group, 0) + (repo / p).stat().st_size
    for path in carry:
        root = repo / path
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        sizes[f"carry {path}"] = sum(p.stat().st_size for p in files)
    return sizes
