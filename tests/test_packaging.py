"""What a user installs: the core dependencies are what encode / decode / classify / info
import, every other import is behind an extra that names itself when missing, and the wheel
check catches what does not belong."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import load_module
from tica.errors import MissingExtraError, TicaError
from tica.extras import require

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "tica"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# import name -> the distribution that provides it (where the two differ)
DISTRIBUTION = {"PIL": "pillow", "starlette": "fastapi"}
# the web layer itself, which tica.serve and `tica serve` import on first use (app.py, and
# the modules only app.py imports)
LAZY_MODULES = {"serve/app.py", "serve/http.py", "serve/routes.py"}
EXTRA_MODULES = ("fastapi", "starlette", "uvicorn", "webdataset", "tqdm",
                 "imagecodecs", "bjontegaard", "matplotlib", "scipy", "onnx", "onnxruntime")


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower()


def _third_party_imports(module_level_only: bool) -> dict[str, set[str]]:
    """{import name: files} for every import of a non-stdlib, non-tica module in src/tica."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = tree.body if module_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("tica", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(SRC)))
    return found


def test_module_level_imports_are_all_core_dependencies():
    core = {_name(r) for r in PROJECT["dependencies"]}
    assert core == {"torch", "numpy", "safetensors", "pillow"}
    outside = {m: files - LAZY_MODULES
               for m, files in _third_party_imports(module_level_only=True).items()
               if DISTRIBUTION.get(m, m).lower() not in core and files - LAZY_MODULES}
    assert outside == {}, "import these on first use (tica.extras.require), not at module level"


def test_every_optional_import_is_in_an_extra():
    extras = {e: {_name(r) for r in reqs} for e, reqs in PROJECT["optional-dependencies"].items()}
    provided = set().union(*extras.values()) | {_name(r) for r in PROJECT["dependencies"]}
    missing = {m for m in _third_party_imports(module_level_only=False)
               if DISTRIBUTION.get(m, m).lower() not in provided}
    assert missing == set()
    # require("module", "extra", ...) names an extra that does bring the module
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                module, extra = (a.value for a in node.args[:2])
                top = module.split(".")[0]
                assert DISTRIBUTION.get(top, top).lower() in extras[extra], (path.name, module, extra)
    # the test extra brings every other one, and the repository pins torch outside the package
    assert PROJECT["optional-dependencies"]["test"][0] == "tica[serve,train,eval,edge]"
    assert not any(r.replace(" ", "").startswith("torch==") for r in PROJECT["dependencies"])
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text().splitlines()
    assert "pip install --quiet -c constraints.txt -e '.[test]'" in (REPO / "Makefile").read_text()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci.index("make test") < ci.index("make wheel")       # the README's test command, then


def test_require_names_the_extra():
    assert require("json", "train", "anything") is json
    with pytest.raises(MissingExtraError, match=r"^tica train needs the 'no_such_module' package: "
                                                r"pip install 'tica\[train\]'$") as exc:
        require("no_such_module", "train", "tica train")
    assert isinstance(exc.value, TicaError) and isinstance(exc.value, ImportError)


_WITHOUT_EXTRAS = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None                  # `import name` now raises ImportError
from PIL import Image
from tica.cli import main
import tica, tica.api
Image.new("RGB", (32, 32), (200, 30, 40)).save(sys.argv[1] + "/a.png")
d = sys.argv[1]
assert main(["encode", d + "/a.png", "-o", d + "/a.tica"]) == 0
assert main(["info", d + "/a.tica", "--json"]) == 0
assert main(["classify", d + "/a.tica", "--json"]) == 0
assert main(["decode", d + "/a.tica", "-o", d + "/b.png"]) == 0
assert main(["serve", "--port", "9"]) == 1
"""


def test_encode_decode_classify_info_need_no_extra(tmp_path):
    """In a process where none of the extras' modules can be imported, the four commands work
    and `tica serve` fails with one line naming the extra."""
    code = _WITHOUT_EXTRAS.format(blocked=EXTRA_MODULES)
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == (
        "tica: error: tica serve needs the 'fastapi' package: pip install 'tica[serve]'")
    assert (tmp_path / "b.png").stat().st_size > 0


def _check_wheel(wheel: Path, *flags: str) -> tuple[int, str, list[str]]:
    """Run scripts/check_wheel.py as CI does: (exit code, stdout, the problems it names)."""
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "check_wheel.py"), str(wheel),
                          *flags], capture_output=True, text=True, timeout=120)
    problems = [line.removeprefix("check_wheel: error: ") for line in run.stderr.splitlines()]
    return run.returncode, run.stdout, problems


def _fake_wheel(path: Path, extra_files: dict[str, bytes] | None = None, drop: str = "") -> Path:
    """A wheel-shaped zip with this checkout's manifest and small stand-ins for the weights
    (their checksums rewritten to match)."""
    import hashlib
    manifest = json.loads((SRC / "weights" / "manifest.json").read_text())
    files = {}
    for i, entry in enumerate(manifest["weights"]):
        data = f"weights {i}".encode()
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        files[f"tica/weights/{entry['file']}"] = data
    files["tica/weights/manifest.json"] = json.dumps(manifest).encode()
    files["tica/serve/demo.html"] = b"<html></html>"
    files["tica/entropy/_rans.cpython-311-x86_64-linux-gnu.so"] = b"\x7fELF"
    files["tica/nn/_intops.cpython-311-x86_64-linux-gnu.so"] = b"\x7fELF"
    files["tica/__init__.py"] = b""
    meta = ["Metadata-Version: 2.4", "Name: tica", "Version: 0.1.0"]
    meta += [f"Requires-Dist: {r}" for r in PROJECT["dependencies"]]
    for extra, reqs in PROJECT["optional-dependencies"].items():
        meta += [f"Provides-Extra: {extra}"] + [f'Requires-Dist: {r}; extra == "{extra}"' for r in reqs]
    files["tica-0.1.0.dist-info/METADATA"] = ("\n".join(meta) + "\n").encode()
    files["tica-0.1.0.dist-info/entry_points.txt"] = b"[console_scripts]\ntica = tica.cli:main\n"
    files.update(extra_files or {})
    files.pop(drop, None)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_wheel_check_passes_a_good_wheel_and_names_each_problem(tmp_path):
    good = _fake_wheel(tmp_path / "good.whl")
    code, out, bad = _check_wheel(good)
    assert (code, bad) == (0, []) and "all present and matching" in out and "wheel OK" in out
    code, _, bad = _check_wheel(good, "--max-mb", "1e-6")
    assert code == 1 and bad == [
        f"the wheel is {good.stat().st_size / 1e6:.1f} MB, over the 1e-06 MB limit"]
    broken = _fake_wheel(tmp_path / "bad.whl", {"tests/test_x.py": b"",
                                                "tica/weights/tica-photo.safetensors": b"x"},
                         drop="tica/serve/demo.html")
    code, out, bad = _check_wheel(broken)
    assert code == 1 and "3 problem(s)" in out
    assert bad == ["tests/test_x.py does not belong in the wheel",
                   "tica/weights/tica-photo.safetensors does not match the manifest's sha256",
                   "tica/serve/demo.html is missing"]
    pure = _fake_wheel(tmp_path / "pure.whl", drop="tica/entropy/_rans.cpython-311-x86_64-linux-gnu.so")
    assert _check_wheel(pure)[2] == [
        "the entropy coder's compiled kernel (tica/entropy/_rans) is missing"]
    pure = _fake_wheel(tmp_path / "pure.whl", drop="tica/nn/_intops.cpython-311-x86_64-linux-gnu.so")
    assert _check_wheel(pure)[2] == [
        "the integer h_s's compiled epilogue (tica/nn/_intops) is missing"]


def test_the_lazy_web_modules_are_imported_only_by_each_other():
    """LAZY_MODULES may import fastapi at module level only because nothing outside them
    imports them at module level (tica.serve reaches app.py on first use)."""
    lazy = {p.removesuffix(".py").replace("/", ".") for p in LAZY_MODULES}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel in LAZY_MODULES:
            continue
        package = path.relative_to(SRC).parent.parts
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + tuple(filter(None, [node.module])))
                assert target not in lazy, f"{rel} imports {target} at module level"


def test_a_compiler_without_openmp_builds_kernels_that_code_the_same_bytes(tmp_path, monkeypatch):
    """pip's build on a compiler that refuses -fopenmp (Apple's clang, out of the box) falls
    back to the kernels without it, says so, and they write and read the same streams."""
    import sysconfig

    import tica
    from tica.entropy import coder, parallel
    from tica.nn import integer
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    cc = tmp_path / "cc"
    cc.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && '
                  '{ echo "cc: OpenMP is not supported" >&2; exit 1; }; done\n'
                  f'exec {compiler} "$@"\n')
    cc.chmod(0o755)
    built = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib",
                            str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
                           cwd=REPO, env={**os.environ, "CC": str(cc)},
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    assert built.stderr.count("refused OpenMP") + built.stdout.count("refused OpenMP") == 2
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    rans = load_module(tmp_path / "lib/tica/entropy" / f"_rans{suffix}", "_rans")
    intops = load_module(tmp_path / "lib/tica/nn" / f"_intops{suffix}", "_intops")
    assert rans.openmp == 0

    model = tica.load("tica-cifar")
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(6, 3, 8, 8, generator=g), size=32,
                                             mode="bilinear")
    stream = tica.compress(model, images, quality=4)
    logits = tica.classify_logits(model, stream)
    pixels = tica.reconstruct(model, stream)
    monkeypatch.setattr(coder, "_rans", rans)
    calls = []

    class Counted:                  # the built layer ends, each call counted
        def __getattr__(self, name):
            return lambda *a, **k: (calls.append(name), getattr(intops, name)(*a, **k))[1]
    monkeypatch.setattr(integer, "_intops", Counted())
    # the built ends, on any CPU: the digit path float32 products take everywhere
    monkeypatch.setattr(integer, "digit_gemm", lambda: ("float32", float("inf")))
    parallel.set_threads(2)
    try:
        assert tica.compress(model, images, quality=4) == stream
        assert torch.equal(tica.classify_logits(model, stream), logits)
        assert all(torch.equal(a, b) for a, b in zip(tica.reconstruct(model, stream), pixels,
                                                       strict=True))
        assert "last_layer" in calls
    finally:
        parallel.set_threads(None)
