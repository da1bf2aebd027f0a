"""The one writer of what the CLI produces (streams, decoded images): nothing a user already
has is lost.

- atomic: a temporary file in the target's folder, renamed over the target when complete;
  any failure leaves the target as it was and no temporary file behind;
- never over an input of the same command (the same file by any path or link);
- a symbolic link is followed: its target is replaced, the link stays a link;
- only a regular file (or nothing) is replaced: a folder, a device or a pipe is refused;
- "-" writes to standard output.
Every refusal and failure is an OutputError with one line that names the path.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Iterable

from .errors import OutputError
from .io import atomic_write_bytes

STDOUT = "-"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(target: str | Path, inputs: Iterable[str | Path] = ()) -> Path | None:
    """Where writing `target` would go (its link's target), or None for standard output;
    OutputError if that would replace an input or anything but a regular file. Callers check
    before any work, so a refusal costs nothing."""
    if str(target) == STDOUT:
        return None
    path = Path(target)
    real = Path(os.path.realpath(path))
    for source in inputs:
        if str(source) != STDOUT and _same_file(real, Path(source)):
            raise OutputError(f"{target} is an input of this command ({source}): refusing to "
                              f"overwrite it; name another output")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise OutputError(f"{target} is {_kind(mode)}: refusing to replace it; name a file")
    return real


def write_output(target: str | Path, data: bytes, inputs: Iterable[str | Path] = ()) -> str:
    """Write `data` to `target` as the module says; returns where it went, for messages."""
    real = check_output(target, inputs)
    if real is None:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except OSError as exc:
            raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None
        return "standard output"
    try:
        atomic_write_bytes(real, data)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return str(target)
