"""Build the entropy coder's C kernel in place (src/tica/entropy/_rans*.so) for the Python
that runs this, with the C compiler alone: for a machine that runs tica from a checkout
(PYTHONPATH=src) without pip installing it. `pip install` builds the same file itself.

    python3 scripts/build_kernel.py        prints the file it wrote
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "tica" / "entropy" / "_rans.c"


def main() -> int:
    target = SOURCE.with_name("_rans" + sysconfig.get_config_var("EXT_SUFFIX"))
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    command = [*compiler.split()[:1], "-O3", "-shared", "-fPIC",
               f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(target)]
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"build_kernel: error: {' '.join(command)} failed: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
