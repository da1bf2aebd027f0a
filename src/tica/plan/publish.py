"""Publishing within the limits: the output folder keeps the latest export of each published
run, split in parts where a file is too large, and `join_parts` reassembles them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..checkpoint import atomic_write
from ..errors import CheckpointError
from .spec import STATUS_FILE, Limits

_PUBLISHED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*\.safetensors)(?:\.part(\d+))?$")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _part_names(name: str, count: int) -> list[str]:
    return [f"{name}.safetensors"] if count == 1 else [f"{name}.safetensors.part{i}" for i in range(count)]


class Publisher:
    """Keeps the output folder holding the latest export of each published run, within the
    limits: files written atomically, a file over max_file_bytes split into parts, runs
    taken in plan order while they fit (a later one that does not fit is left out)."""

    def __init__(self, out: Path, limits: Limits, order: list[str]) -> None:
        self.out, self.limits, self.order = out, limits, order
        self.files: dict[str, dict] = {}          # run -> {names, sha256, bytes, mtime}
        self.left_out: dict[str, str] = {}
        out.mkdir(parents=True, exist_ok=True)

    def update(self, sources: dict[str, Path]) -> list[str]:
        """Publish every source whose file changed; returns the runs published now."""
        for stale in self.out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        changed = []
        used_files, used_bytes = 1, 0                 # the status file
        for name in self.order:
            src = sources.get(name)
            if src is None or not src.is_file():
                if name in self.files:                # keep what was published
                    used_files += len(self.files[name]["names"])
                    used_bytes += self.files[name]["bytes"]
                continue
            stat = src.stat()
            size = stat.st_size
            count = self.limits.parts(size)
            if used_files + count > self.limits.max_files or used_bytes + size > self.limits.max_total_bytes:
                self.left_out[name] = f"{size} bytes in {count} file(s) would pass the limits"
                self._remove(name)
                continue
            used_files, used_bytes = used_files + count, used_bytes + size
            if self.files.get(name, {}).get("mtime") != (stat.st_mtime_ns, size):
                self._write(name, src.read_bytes(), (stat.st_mtime_ns, size))
                changed.append(name)
        return changed

    def _write(self, name: str, data: bytes, mtime) -> None:
        count = self.limits.parts(len(data))
        names = _part_names(name, count)
        step = self.limits.max_file_bytes
        for i, fname in enumerate(names):
            chunk = data[i * step:(i + 1) * step]
            atomic_write(self.out / fname, lambda tmp, c=chunk: Path(tmp).write_bytes(c))
        old = self.files.get(name, {}).get("names", [])
        for fname in set(old) - set(names):
            (self.out / fname).unlink(missing_ok=True)
        self.files[name] = {"names": names, "sha256": _sha256(data), "bytes": len(data), "mtime": mtime}
        self.left_out.pop(name, None)

    def _remove(self, name: str) -> None:
        for fname in self.files.pop(name, {}).get("names", []):
            (self.out / fname).unlink(missing_ok=True)

    def manifest(self) -> dict[str, dict]:
        """Published files by weights name, as the status file lists them."""
        return {f"{name}.safetensors": {"run": name, "parts": info["names"], "sha256": info["sha256"],
                                        "bytes": info["bytes"]}
                for name, info in self.files.items()}


def join_parts(folder: str | Path, dest: str | Path) -> list[Path]:
    """Reassemble what a plan published in `folder` into `dest` (it may be read-only, as
    the device tool's files are): NAME.safetensors as is, NAME.safetensors.part0.. joined,
    each checked against the sha256 in plan.json where it lists the file. Returns the
    weights files in `dest`; CheckpointError on a missing part or a checksum mismatch."""
    folder, dest = Path(folder), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    status = folder / STATUS_FILE
    listed = json.loads(status.read_text()).get("files", {}) if status.is_file() else {}
    out = []
    found: dict[str, dict[int, Path]] = {}
    for p in folder.iterdir():
        m = _PUBLISHED.match(p.name)
        if m and p.is_file():
            found.setdefault(m[1], {})[int(m[2]) if m[2] else -1] = p
    for name, parts in sorted(found.items()):
        if -1 in parts:
            data = parts[-1].read_bytes()
        elif sorted(parts) != list(range(len(parts))):
            raise CheckpointError(f"{name}: parts {sorted(parts)} are not 0..{len(parts) - 1}")
        else:
            data = b"".join(parts[i].read_bytes() for i in range(len(parts)))
        want = listed.get(name, {}).get("sha256")
        if want and want != _sha256(data):
            raise CheckpointError(f"{name}: the file(s) do not match plan.json's sha256 (was the "
                                  "command cut short while it published them?)")
        atomic_write(dest / name, lambda tmp, d=data: Path(tmp).write_bytes(d))
        out.append(dest / name)
    return out
