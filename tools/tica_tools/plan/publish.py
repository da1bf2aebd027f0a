"""Publishing within the limits: the output folder keeps the latest export of each published
run, where `layout` puts it (alone, split in parts where a file is too large, or packed with
others in one archive), and `join_parts` reassembles them."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

from tica.errors import CheckpointError
from tica.io import atomic_write, atomic_write_bytes, sha256_bytes
from .spec import PACK_INDEX, STATUS_FILE, Limits, layout, pack_bytes

_PUBLISHED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*\.safetensors)(?:\.part(\d+))?$")
_PACK = re.compile(r"^pack\d+\.tar$")
_WEIGHTS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$")
PACK_FORMAT = "tica-pack"


def _part_names(name: str, count: int) -> list[str]:
    return [f"{name}.safetensors"] if count == 1 else [f"{name}.safetensors.part{i}" for i in range(count)]


def write_pack(path: Path, members: dict[str, bytes]) -> None:
    """An uncompressed ustar archive of NAME.safetensors members behind an index member
    (pack.json: each member's sha256 and bytes), written atomically: a reader finds the old
    pack or the whole new one, and can check every member against the index."""
    index = {"format": PACK_FORMAT, "version": 1,
             "files": {name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in members.items()}}

    def write(tmp):
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in [(PACK_INDEX, json.dumps(index, separators=(",", ":")).encode()),
                               *members.items()]:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))

    atomic_write(path, write)


def read_pack(path: Path) -> dict[str, bytes]:
    """The members of a pack, each checked against its index; CheckpointError if the file
    is not a pack, or a member is missing, extra, or does not match."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if PACK_INDEX not in members:
                raise CheckpointError(f"{path.name}: no {PACK_INDEX}: not a pack of a plan")
            index = json.loads(tar.extractfile(members.pop(PACK_INDEX)).read())
            if not isinstance(index, dict) or index.get("format") != PACK_FORMAT:
                raise CheckpointError(f"{path.name}: {PACK_INDEX} is not a {PACK_FORMAT} index")
            listed = index.get("files", {})
            if set(listed) != set(members):
                raise CheckpointError(f"{path.name}: holds {sorted(members)}, its index lists {sorted(listed)}")
            out = {}
            for name, member in members.items():
                want = listed[name]
                if not _WEIGHTS.match(name) or not member.isfile() or member.size != want.get("bytes"):
                    raise CheckpointError(f"{path.name}: member {name!r} is not a listed weights file")
                data = tar.extractfile(member).read()
                if sha256_bytes(data) != want.get("sha256"):
                    raise CheckpointError(f"{path.name}: {name} does not match the pack's sha256")
                out[name] = data
            return out
    except (tarfile.TarError, OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path.name}: not a readable pack ({exc})") from None


class Publisher:
    """Keeps the output folder holding the latest export of each published run, within the
    limits: where `layout` put it from the estimated sizes (fixed for the plan, so a file
    never moves between publishes), files written atomically, a run over max_file_bytes split
    into parts, a pack rewritten whole when one of its runs exported again. A run that does
    not fit as it turns out is left out (logged), never a half set."""

    def __init__(self, out: Path, limits: Limits, sizes: dict[str, int]) -> None:
        self.out, self.limits = out, limits
        self.slots, self.left_out = layout(sizes, limits)
        self.left_out = dict(self.left_out)
        self.files: dict[str, dict] = {}          # run -> {names, sha256, bytes, mtime, packed}
        self._packed: dict[str, dict[str, tuple]] = {}     # pack -> run -> (stamp, bytes)
        out.mkdir(parents=True, exist_ok=True)
        self._remove_strays()

    def _remove_strays(self) -> None:
        """Published files of an earlier layout (a plan run again into this folder)."""
        alone = {slot.runs[0] for slot in self.slots if slot.file is None}
        packs = {slot.file for slot in self.slots if slot.file}
        for p in self.out.iterdir():
            m = _PUBLISHED.match(p.name)
            if (m and m[1][:-len(".safetensors")] not in alone) or \
                    (_PACK.match(p.name) and p.name not in packs):
                p.unlink(missing_ok=True)

    def update(self, sources: dict[str, Path]) -> list[str]:
        """Publish every source whose file changed; returns the runs published now."""
        for stale in self.out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        changed: list[str] = []
        used = [1, 0]                                 # files, bytes (the status file)
        for slot in self.slots:
            if slot.file is None:
                self._update_alone(slot.runs[0], sources.get(slot.runs[0]), used, changed)
            else:
                self._update_pack(slot.file, slot.runs, sources, used, changed)
        return changed

    def _fits(self, used: list[int], files: int, size: int) -> bool:
        return used[0] + files <= self.limits.max_files and used[1] + size <= self.limits.max_total_bytes

    def _update_alone(self, name: str, src: Path | None, used: list[int], changed: list[str]) -> None:
        if src is None or not src.is_file():
            if name in self.files:                    # keep what was published
                used[0] += len(self.files[name]["names"])
                used[1] += self.files[name]["bytes"]
            return
        stat = src.stat()
        size = stat.st_size
        count = self.limits.parts(size)
        if not self._fits(used, count, size):
            self.left_out[name] = f"{size} bytes in {count} file(s) would pass the limits"
            self._remove(name)
            return
        used[0], used[1] = used[0] + count, used[1] + size
        if self.files.get(name, {}).get("mtime") != (stat.st_mtime_ns, size):
            self._write(name, src.read_bytes(), (stat.st_mtime_ns, size))
            changed.append(name)

    def _update_pack(self, file: str, runs: tuple[str, ...], sources: dict[str, Path],
                     used: list[int], changed: list[str]) -> None:
        # what is in the pack on disk; new exports join it only once it is written (a write
        # cut short by a signal leaves them fresh for the next call, not taken as written)
        written = self._packed.setdefault(file, {})
        held, fresh = dict(written), []
        for run in runs:
            src = sources.get(run)
            if src is not None and src.is_file():
                stat = src.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if held.get(run, (None,))[0] != stamp:
                    held[run] = (stamp, src.read_bytes())
                    fresh.append(run)
        members = [run for run in runs if run in held]
        while members:                                # the last runs out until it fits
            size = pack_bytes({run: len(held[run][1]) for run in members})
            if size <= self.limits.max_file_bytes and self._fits(used, 1, size):
                break
            run = members.pop()
            self.left_out[run] = f"{len(held[run][1])} bytes would pass the limits in {file}"
        if not members:
            if (self.out / file).exists():
                (self.out / file).unlink()
            for run in runs:
                self.files.pop(run, None)
            written.update(held)
            return
        used[0], used[1] = used[0] + 1, used[1] + size
        if fresh or set(members) != {r for r in runs if r in self.files}:
            data = {f"{run}.safetensors": held[run][1] for run in members}
            write_pack(self.out / file, data)
            written.update(held)
            for run in runs:
                self.files.pop(run, None)
            for run in members:
                blob = held[run][1]
                self.files[run] = {"names": [file], "sha256": sha256_bytes(blob), "bytes": len(blob),
                                   "mtime": held[run][0], "packed": True}
                self.left_out.pop(run, None)
            changed.extend(run for run in members if run in fresh)

    def _write(self, name: str, data: bytes, mtime) -> None:
        count = self.limits.parts(len(data))
        names = _part_names(name, count)
        step = self.limits.max_file_bytes
        for i, fname in enumerate(names):
            chunk = data[i * step:(i + 1) * step]
            atomic_write_bytes(self.out / fname, chunk)
        old = self.files.get(name, {}).get("names", [])
        for fname in set(old) - set(names):
            (self.out / fname).unlink(missing_ok=True)
        self.files[name] = {"names": names, "sha256": sha256_bytes(data), "bytes": len(data), "mtime": mtime}
        self.left_out.pop(name, None)

    def _remove(self, name: str) -> None:
        for fname in self.files.pop(name, {}).get("names", []):
            (self.out / fname).unlink(missing_ok=True)

    def manifest(self) -> dict[str, dict]:
        """Published files by weights name, as the status file lists them: the files that
        hold each (its parts, or the pack it is in) and its sha256."""
        return {f"{name}.safetensors": {"run": name, "parts": info["names"], "sha256": info["sha256"],
                                        "bytes": info["bytes"], "packed": info.get("packed", False)}
                for name, info in self.files.items()}


def join_parts(folder: str | Path, dest: str | Path) -> list[Path]:
    """Reassemble what a plan published in `folder` into `dest` (it may be read-only, as a
    result folder handed back often is): NAME.safetensors as is, NAME.safetensors.part0.. joined,
    each checked against the sha256 in plan.json where it lists the file; packN.tar unpacked,
    each member checked against the pack's own index (a pack is written whole, so it may be
    newer than plan.json when a command was cut between the two). Returns the weights files
    in `dest`; CheckpointError on a missing part, a checksum mismatch, a run found twice."""
    folder, dest = Path(folder), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    status = folder / STATUS_FILE
    listed = json.loads(status.read_text()).get("files", {}) if status.is_file() else {}
    weights: dict[str, bytes] = {}
    found: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        m = _PUBLISHED.match(p.name)
        if m and p.is_file():
            found.setdefault(m[1], {})[int(m[2]) if m[2] else -1] = p
        elif _PACK.match(p.name) and p.is_file():
            for name, data in read_pack(p).items():
                if name in weights:
                    raise CheckpointError(f"{name} is in two packs")
                weights[name] = data
    for name, parts in sorted(found.items()):
        if name in weights:
            raise CheckpointError(f"{name} is both in a pack and on its own in {folder}")
        if -1 in parts:
            data = parts[-1].read_bytes()
        elif sorted(parts) != list(range(len(parts))):
            raise CheckpointError(f"{name}: parts {sorted(parts)} are not 0..{len(parts) - 1}")
        else:
            data = b"".join(parts[i].read_bytes() for i in range(len(parts)))
        want = listed.get(name, {}).get("sha256")
        if want and want != sha256_bytes(data):
            raise CheckpointError(f"{name}: the file(s) do not match plan.json's sha256 (was the "
                                  "command cut short while it published them?)")
        weights[name] = data
    out = []
    for name, data in sorted(weights.items()):
        atomic_write_bytes(dest / name, data)
        out.append(dest / name)
    return out
