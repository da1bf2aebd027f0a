"""Training plans: every run of a recipe in one command, side by side on one machine, under
one wall-clock deadline, with the weights published while they train.

A plan file (JSON) lists runs. Each run is a `TrainConfig` (its fields, `model_overrides`
included) with a `name`; `"init": "@other"` starts it from run `other`'s export
(`model.safetensors`, float32) and so makes it wait for `other`. Runs with nothing to wait
for start side by side, each in its own process (`python -m tica.plan child SPEC`), at most
`max_parallel` at once; a waiting run starts when its dependency has exited cleanly
(finished, or stopped at its own deadline with its weights exported)::

    {"name": "gpu",
     "deadline_s": 470,     every run stops by then (seconds from the plan's start), exports
     "grace_s": 60,         then SIGTERM to what still runs (it stops and exports); SIGKILL later
     "max_parallel": 8, "threads": 2,
     "limits": {"max_files": 8, "max_file_bytes": 16777216, "max_total_bytes": 67108864},
     "defaults": {TrainConfig fields of every run},
     "runs": [{"name": "tica-cifar-step1", "model": "tica-cifar", "step": 1, ...},
              {"name": "tica-cifar", "init": "@tica-cifar-step1", "step": 2, ...}]}

Run keys beyond TrainConfig: `publish` (false: not copied to the output folder), `limit_s`
(seconds from the run's own start), `threads`. A run's `deadline_s` counts from the plan's
start. "{data}" in a value is the data root (`data_root`, else $TICA_DATA). Keys starting
with "_" are comments. A plan may extend another: `"base": "gpu.json"`, with `set` (fields
forced on every run), `set_model` (model overrides merged into every run's), `patch` ({run
name: fields}) and any top-level key.

The output folder gets each published run's latest export, float16 and coding-ready, as
NAME.safetensors, or NAME.safetensors.part0, .part1, ... where larger than max_file_bytes
(`join_parts` reassembles them), and plan.json: every run's state, steps, images/s and
minutes, and the sha256 of every published file. Exports are published in plan order while
they fit the limits; one that would not fit is left out and logged, never a half set.
Run folders (state, metrics, logs) are under `$TICA_CACHE/runs/PLAN`; a plan run again
resumes its unfinished runs and skips finished ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .checkpoint import atomic_write
from .config import ModelConfig, TrainConfig
from .errors import CheckpointError, ConfigError, TicaError

STATUS_FILE = "plan.json"
STATUS_FORMAT = "tica-plan-status"
EXPORT_FILE = "model.safetensors"
RESULT_FILE = "result.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PUBLISHED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*\.safetensors)(?:\.part(\d+))?$")
_PLAN_KEYS = {"name", "base", "deadline_s", "grace_s", "kill_after_s", "min_start_s",
              "max_parallel", "threads", "limits", "defaults", "runs", "set", "set_model", "patch"}
_RUN_KEYS = {"name", "publish", "limit_s", "threads"}
_RESERVED = {"run_dir", "export_dir", "clock_start", "progress"}     # the plan sets these


@dataclass(frozen=True)
class Limits:
    """What may come back from the output folder (the device tool's $OUT: 8 files of at
    most 16 MiB, 64 MiB in all), the status file included."""

    max_files: int = 8
    max_file_bytes: int = 16 * 2 ** 20
    max_total_bytes: int = 64 * 2 ** 20

    def parts(self, size: int) -> int:
        return max(1, math.ceil(size / self.max_file_bytes))


@dataclass(frozen=True)
class PlanRun:
    name: str
    config: TrainConfig          # resolved: run_dir, export_dir and data filled in
    after: str | None = None     # the run whose export `init` names
    publish: bool = True
    limit_s: float | None = None
    threads: int = 1

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def export(self) -> Path:
        """The file published from this run: its float16 export."""
        return Path(self.config.export_dir or self.config.run_dir) / EXPORT_FILE


@dataclass(frozen=True)
class Plan:
    name: str
    runs: tuple[PlanRun, ...]
    runs_dir: Path
    deadline_s: float | None = None
    grace_s: float = 60.0
    kill_after_s: float = 15.0
    min_start_s: float = 0.0          # start no run with less time than this to the deadline
    max_parallel: int = 1
    limits: Limits = field(default_factory=Limits)

    def run(self, name: str) -> PlanRun:
        return next(r for r in self.runs if r.name == name)


# ---- reading a plan ------------------------------------------------------------------------

def _uncomment(value):
    """Drop keys starting with "_" at every level (JSON has no comments)."""
    if isinstance(value, dict):
        return {k: _uncomment(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_uncomment(v) for v in value]
    return value


def read_plan_file(path: str | Path, _seen: tuple = ()) -> dict:
    """The plan's JSON with comments dropped and any `base` plan folded in."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"plan {path} extends itself")
    try:
        spec = _uncomment(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read plan {path}: {exc}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"plan {path} must be a JSON object")
    unknown = set(spec) - _PLAN_KEYS
    if unknown:
        raise ConfigError(f"plan {path}: unknown key(s) {sorted(unknown)}; known: {sorted(_PLAN_KEYS)}")
    if "base" not in spec:
        return spec
    base = read_plan_file(path.parent / spec["base"], _seen + (path,))
    merged = {**base, **{k: v for k, v in spec.items() if k != "base"}}
    for key in ("defaults", "limits", "set", "set_model", "patch"):
        if key in base and key in spec:
            merged[key] = {**base[key], **spec[key]}
    return merged


def _fill_data(value, data_root: str | None):
    if not isinstance(value, str) or "{data}" not in value:
        return value
    if data_root is None:
        raise ConfigError(f"{value!r} names the data root: pass data_root (tica train "
                          "--data-root) or set the TICA_DATA environment variable")
    return value.replace("{data}", data_root)


def _run_fields(raw: dict, spec: dict) -> dict:
    """A run's fields: defaults < the run < `set` < its `patch`; model overrides merged."""
    name = raw.get("name")
    patch = spec.get("patch", {}).get(name, {})
    layers = [spec.get("defaults", {}), raw, spec.get("set", {}), patch]
    fields = {k: v for layer in layers for k, v in layer.items() if k != "model_overrides"}
    overrides: dict = {}
    for layer in layers[:2] + [{"model_overrides": spec.get("set_model", {})}, patch]:
        overrides.update(layer.get("model_overrides") or {})
    fields["model_overrides"] = overrides
    return fields


def _resolve_run(fields: dict, spec: dict, runs_dir: Path, data_root: str | None) -> PlanRun:
    name = fields.pop("name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"run name {name!r}: use letters, digits, '.', '_' and '-' "
                          "(the names of the files that come back)")
    extra = {k: fields.pop(k) for k in list(fields) if k in _RUN_KEYS}
    if _RESERVED & set(fields):
        raise ConfigError(f"run {name}: {sorted(_RESERVED & set(fields))} are set by the plan")
    fields = {k: _fill_data(v, data_root) for k, v in fields.items()}
    after = None
    if isinstance(fields.get("init"), str) and fields["init"].startswith("@"):
        after = fields["init"][1:]
        fields["init"] = str(runs_dir / after / EXPORT_FILE)
    publish = bool(extra.get("publish", True))
    run_dir = runs_dir / name
    fields.update(run_dir=str(run_dir), progress=False,
                  export_dir=str(run_dir / "export") if publish else None)
    if not publish:
        fields["export_every_s"] = None
    plan_deadline = spec.get("deadline_s")
    if plan_deadline is not None:
        own = fields.get("deadline_s")
        fields["deadline_s"] = plan_deadline if own is None else min(own, plan_deadline)
    try:
        config = TrainConfig.from_dict(fields)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"run {name}: {exc}") from None
    return PlanRun(name, config, after, publish, extra.get("limit_s"),
                   int(extra.get("threads", spec.get("threads", 1))))


def _check_order(runs: list[PlanRun]) -> None:
    """Names unique, dependencies known, no cycle."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"run names repeat: {names}")
    deps = {r.name: r.after for r in runs}
    for r in runs:
        seen, cur = {r.name}, r.after
        while cur is not None:
            if cur not in deps:
                raise ConfigError(f"run {r.name} starts from @{cur}, which the plan does not have")
            if cur in seen:
                raise ConfigError(f"runs depend on each other in a cycle through {cur}")
            seen.add(cur)
            cur = deps[cur]


def load_plan(path: str | Path, runs_dir: str | Path | None = None, data_root: str | None = None,
              max_parallel: int | None = None, device: str | None = None) -> Plan:
    """Read and check a plan: every run a valid TrainConfig, dependencies a tree. Arguments
    override the file (`device` every run's)."""
    spec = read_plan_file(path)
    name = spec.get("name") or Path(path).stem
    if not _NAME.match(name):
        raise ConfigError(f"plan name {name!r}: letters, digits, '.', '_', '-'")
    from .data import cache_dir
    runs_dir = Path(runs_dir) if runs_dir else cache_dir() / "runs" / name
    data_root = data_root or os.environ.get("TICA_DATA")
    if device:
        spec["set"] = {**spec.get("set", {}), "device": device}
    if not spec.get("runs"):
        raise ConfigError(f"plan {path} has no runs")
    runs = [_resolve_run(_run_fields(raw, spec), spec, runs_dir, data_root) for raw in spec["runs"]]
    _check_order(runs)
    try:
        limits = Limits(**spec.get("limits", {}))
    except TypeError as exc:
        raise ConfigError(f"plan limits: {exc}") from None
    return Plan(name, tuple(runs), runs_dir, spec.get("deadline_s"), spec.get("grace_s", 60.0),
                spec.get("kill_after_s", 15.0), spec.get("min_start_s", 0.0),
                max_parallel or spec.get("max_parallel", 1), limits)


# ---- what the exports will weigh -----------------------------------------------------------

def model_config_of(plan: Plan, run: PlanRun) -> ModelConfig:
    """The config of the model `run` trains: its dependency's (or init file's) with its
    overrides, else its preset's."""
    from .checkpoint import read_checkpoint
    from .registry import find_weights, get_config

    cfg = run.config
    if run.after:
        base = model_config_of(plan, plan.run(run.after))
    elif cfg.init:
        entry = find_weights(cfg.model, "step1") if cfg.init == "step1" else None
        try:
            base = read_checkpoint(entry.file if entry else cfg.init)[0]
        except (CheckpointError, AttributeError) as exc:
            raise ConfigError(f"run {run.name}: cannot read its init {cfg.init}: {exc}") from None
    else:
        return get_config(cfg.model, **cfg.model_overrides)
    return base.replace(**cfg.model_overrides) if cfg.model_overrides else base


def estimate_export_bytes(plan: Plan, run: PlanRun) -> int:
    """The size of the run's float16, coding-ready export, from a fresh model of its config
    (the coding tables of a trained one differ a little: 1% and 16 KiB are added)."""
    from .models import CompressionModel
    from .registry import build_model

    model = build_model(model_config_of(plan, run)).eval()
    if isinstance(model, CompressionModel) and run.config.step == 2:
        model.update()
    tensors = model.state_dict()
    size = sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in tensors.values())
    header = 160 * len(tensors) + len(model.config.to_json()) + 1024
    return int((size + header) * 1.01) + 16 * 1024


def check_limits(plan: Plan) -> dict[str, int]:
    """Estimated export size of every published run; ConfigError if they cannot all come
    back (the status file counts as one file)."""
    sizes = {r.name: estimate_export_bytes(plan, r) for r in plan.runs if r.publish}
    files = 1 + sum(plan.limits.parts(s) for s in sizes.values())
    total = sum(sizes.values())
    if files > plan.limits.max_files or total > plan.limits.max_total_bytes:
        listing = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
        raise ConfigError(f"plan {plan.name}: its exports would take {files} files and "
                          f"{total / 2**20:.1f} MiB ({listing}); the limits are "
                          f"{plan.limits.max_files} files and {plan.limits.max_total_bytes / 2**20:.1f} "
                          "MiB: set \"publish\": false on runs that need not come back")
    return sizes


def describe(plan: Plan, sizes: dict[str, int] | None = None) -> str:
    """A table of the plan's runs (for --dry-run)."""
    lines = [f"plan {plan.name}: {len(plan.runs)} runs, deadline "
             f"{plan.deadline_s or '-'} s, {plan.max_parallel} at once, runs in {plan.runs_dir}"]
    for r in plan.runs:
        c = r.config
        size = f"{sizes[r.name] / 2**20:5.1f} MiB" if sizes and r.name in sizes else "   (kept)"
        lines.append(f"  {r.name:22s} {c.model:16s} step {c.step}  {c.epochs:>6g} ep  batch "
                     f"{c.batch_size:<4d} {c.device:5s} deadline {c.deadline_s or '-'}  {size}"
                     + (f"  after {r.after}" if r.after else ""))
    return "\n".join(lines)


# ---- publishing within the limits ----------------------------------------------------------

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


# ---- running a plan ------------------------------------------------------------------------

@dataclass
class _RunState:
    state: str = "pending"       # pending running done stopped failed skipped
    proc: subprocess.Popen | None = None
    started: float | None = None
    ended: float | None = None
    rc: int | None = None
    reason: str | None = None
    metrics: dict = field(default_factory=dict)
    offset: int = 0              # how far metrics.jsonl has been read
    exports: int = 0
    result: dict = field(default_factory=dict)


def _read_result(run: PlanRun) -> dict:
    try:
        return json.loads((run.run_dir / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _follow_metrics(run: PlanRun, st: _RunState) -> None:
    """Fold the run's new metrics lines into its state (latest step, images/s, eval)."""
    path = run.run_dir / "metrics.jsonl"
    try:
        with open(path) as f:
            f.seek(st.offset)
            text = f.read()
    except OSError:
        return
    complete = text[: text.rfind("\n") + 1]
    st.offset += len(complete.encode())
    for line in complete.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            st.metrics.update({k: rec[k] for k in ("step", "epoch", "img_s", "loss", "acc", "bpp",
                                                   "psnr", "lr") if k in rec})
        if "eval" in rec:
            st.metrics["eval"] = rec["eval"]
        if rec.get("export") == "interim":
            st.exports += 1
        if rec.get("done"):
            st.metrics["step"] = rec["step"]


class PlanRunner:
    """Runs a plan: launches runs as their dependencies finish, follows their metrics,
    publishes their exports and writes the status file, stops everything by the deadline."""

    def __init__(self, plan: Plan, out: str | Path, resume: bool = True,
                 log: Callable[[str], None] = print, poll_s: float = 0.5) -> None:
        self.plan, self.out, self.resume, self.poll_s = plan, Path(out), resume, poll_s
        self.print = log
        self.states = {r.name: _RunState() for r in plan.runs}
        self.publisher = Publisher(self.out, plan.limits, [r.name for r in plan.runs if r.publish])
        self.events: list[str] = []
        self.t0 = time.time()
        self.warm: set[str] = set()
        self._status_at = 0.0
        self._termed: float | None = None

    def elapsed(self) -> float:
        return time.time() - self.t0

    def log(self, message: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {message}"
        self.events.append(line)
        self.print(line)

    def run(self) -> dict:
        """Run the plan to its end; returns the final status (as written to plan.json)."""
        self._check_devices()
        self.log(f"plan {self.plan.name}: {len(self.plan.runs)} runs, deadline "
                 f"{self.plan.deadline_s or '-'} s, out {self.out}")
        self._adopt_finished()
        previous = _terminate_as_interrupt()
        try:
            while self._active():
                self._start_ready()
                self._poll()
                self._enforce_deadline()
                self._publish()
                self._write_status()
                if self._active():
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self.log("interrupted")
            raise
        finally:
            self._stop_all("plan ended")
            self._publish()
            status = self._write_status(final=True)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return status

    def _active(self) -> bool:
        return any(s.state in ("pending", "running") for s in self.states.values())

    def _check_devices(self) -> None:
        if any(r.config.device.startswith("cuda") for r in self.plan.runs):
            import torch
            if not torch.cuda.is_available():
                raise TicaError("the plan trains on cuda, and no CUDA device is visible here "
                                "(run it on the GPU machine, or pass --device cpu)")

    def _adopt_finished(self) -> None:
        """A rerun plan: runs that finished earlier keep their results and exports."""
        if not self.resume:
            for r in self.plan.runs:
                (r.run_dir / RESULT_FILE).unlink(missing_ok=True)
            return
        for r in self.plan.runs:
            result = _read_result(r)
            if result.get("complete") and (r.run_dir / EXPORT_FILE).is_file():
                st = self.states[r.name]
                st.state, st.result, st.reason = "done", result, "finished earlier"
                st.metrics["step"] = result.get("steps")
                self.log(f"{r.name}: finished earlier ({result.get('steps')} steps), kept")

    # -- starting runs -------------------------------------------------------------------
    def _time_left(self) -> float | None:
        return None if self.plan.deadline_s is None else self.plan.deadline_s - self.elapsed()

    def _needs_warm(self, run: PlanRun) -> bool:
        from .data import data_kind
        data = run.config.data
        return data is not None and data_kind(data) == "split" and data not in self.warm

    def _start_ready(self) -> None:
        """Start the runs whose dependency has finished, those with data to decode last (so
        the others start at once), at most max_parallel running; skip what cannot start."""
        running = sum(s.state == "running" for s in self.states.values())
        order = {r.name: i for i, r in enumerate(self.plan.runs)}
        for r in sorted(self.plan.runs, key=lambda r: (self._needs_warm(r), order[r.name])):
            st = self.states[r.name]
            if st.state != "pending":
                continue
            dep = self.states[r.after] if r.after else None
            if dep is not None and dep.state in ("pending", "running"):
                continue
            if dep is not None and dep.state in ("failed", "skipped"):
                self._finish(r, "skipped", f"{r.after} {dep.state}")
                continue
            deadline = self._run_deadline(r)
            if deadline is not None and deadline - self.elapsed() <= max(self.plan.min_start_s, 0.0):
                self._finish(r, "skipped", "no time left before its deadline")
                continue
            if running < self.plan.max_parallel:
                running += self._launch(r)

    def _warm(self, run: PlanRun) -> None:
        """Decode an in-memory split once, here, before its runs start: they then read the
        cached array instead of each decoding 50,000 JPEGs at the same time."""
        from .data import held_out_split, load_split
        t = time.time()
        cfg = run.config
        load_split(cfg.data, "train", limit=cfg.train_limit)
        if cfg.eval_images > 0:
            load_split(cfg.data, held_out_split(cfg.data), limit=cfg.eval_images)
        self.warm.add(cfg.data)
        self.log(f"decoded {cfg.data} once ({time.time() - t:.1f} s)")

    def _run_deadline(self, run: PlanRun) -> float | None:
        """The run's deadline in seconds from the plan's start: its own (or the plan's), and
        `limit_s` after now."""
        limits = [d for d in (run.config.deadline_s,
                              self.elapsed() + run.limit_s if run.limit_s else None) if d is not None]
        return min(limits) if limits else None

    def _launch(self, run: PlanRun) -> int:
        """Start one run in its own process; 1 if it started, 0 if its data failed."""
        st = self.states[run.name]
        try:
            if self._needs_warm(run):
                self._warm(run)
        except TicaError as exc:
            self._finish(run, "failed", f"data: {exc}")
            return 0
        cfg = dataclasses.replace(run.config, clock_start=self.t0, deadline_s=self._run_deadline(run))
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / RESULT_FILE).unlink(missing_ok=True)
        spec_path = run.run_dir / "plan-run.json"
        spec = {"config": cfg.to_dict(), "resume": self.resume, "threads": run.threads}
        atomic_write(spec_path, lambda tmp: Path(tmp).write_text(json.dumps(spec, indent=2)))
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "OMP_NUM_THREADS": str(run.threads), "MKL_NUM_THREADS": str(run.threads),
               "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        with open(run.run_dir / "log.txt", "ab") as out:
            st.proc = subprocess.Popen([sys.executable, "-m", "tica.plan", "child", str(spec_path)],
                                       stdout=out, stderr=subprocess.STDOUT, env=env)
        st.state, st.started = "running", time.time()
        _follow_metrics(run, st)                  # skip what an earlier session logged
        st.metrics, st.exports = {}, 0
        deadline = f", deadline {cfg.deadline_s:.0f} s" if cfg.deadline_s is not None else ""
        self.log(f"start {run.name} (pid {st.proc.pid}{deadline}"
                 + (f", from {run.after})" if run.after else ")"))
        return 1

    # -- following runs ------------------------------------------------------------------
    def _finish(self, run: PlanRun, state: str, reason: str | None) -> None:
        st = self.states[run.name]
        st.state, st.reason = state, reason
        if st.started is not None:
            st.ended = time.time()
        self.log(f"{run.name}: {state}" + (f" ({reason})" if reason else ""))

    def _poll(self) -> None:
        for r in self.plan.runs:
            st = self.states[r.name]
            if st.state != "running":
                continue
            _follow_metrics(r, st)
            rc = st.proc.poll()
            if rc is None:
                continue
            st.rc, st.proc = rc, None
            _follow_metrics(r, st)
            st.result = _read_result(r)
            if rc == 0 and st.result:
                stopped = st.result.get("stopped")
                how = f"stopped at {stopped}" if stopped else "finished"
                self._finish(r, "stopped" if stopped else "done",
                             f"{how}, {st.result.get('steps')} steps, "
                             f"{st.result.get('img_s', 0):.0f} images/s")
            else:
                tail = _tail(r.run_dir / "log.txt")
                self._finish(r, "failed", f"exit code {rc}; {r.run_dir / 'log.txt'}: {tail}")

    def _signal_running(self, sig: int) -> None:
        for st in self.states.values():
            if st.proc is not None and st.proc.poll() is None:
                st.proc.send_signal(sig)

    def _enforce_deadline(self) -> None:
        """Past deadline + grace, SIGTERM (a run stops and exports); kill_after_s later, SIGKILL."""
        left = self._time_left()
        if left is None or -left < self.plan.grace_s:
            return
        if self._termed is None:
            self._termed = time.time()
            self.log("past the deadline and its grace: SIGTERM to what still runs")
            self._signal_running(signal.SIGTERM)
        elif time.time() - self._termed >= self.plan.kill_after_s:
            self._signal_running(signal.SIGKILL)

    def _stop_all(self, why: str) -> None:
        """Leave no run behind (the plan ended, or was interrupted)."""
        if not any(s.proc is not None and s.proc.poll() is None for s in self.states.values()):
            return
        self.log(f"{why}: stopping the runs still going")
        self._signal_running(signal.SIGTERM)
        end = time.time() + self.plan.kill_after_s
        while time.time() < end and any(s.proc is not None and s.proc.poll() is None
                                        for s in self.states.values()):
            time.sleep(0.2)
        self._signal_running(signal.SIGKILL)
        self._poll()

    # -- output --------------------------------------------------------------------------
    def _publish(self) -> None:
        sources = {r.name: r.export for r in self.plan.runs if r.publish}
        before = dict(self.publisher.left_out)
        for name in self.publisher.update(sources):
            self._status_at = 0.0                 # plan.json lists the new sha256 at once
            info = self.publisher.files[name]
            self.log(f"published {name}: {len(info['names'])} file(s), {info['bytes'] / 2**20:.1f} MiB")
        for name, why in self.publisher.left_out.items():
            if before.get(name) != why:
                self.log(f"left out {name}: {why}")

    def _run_status(self, run: PlanRun) -> dict:
        st, c, res = self.states[run.name], run.config, self.states[run.name].result
        end = st.ended or (time.time() if st.started else None)
        return {"state": st.state, "reason": st.reason, "model": c.model, "train_step": c.step,
                "after": run.after, "steps": st.metrics.get("step"),
                "planned_steps": res.get("planned_steps"), "epoch": st.metrics.get("epoch"),
                "img_s": st.metrics.get("img_s"), "img_s_mean": res.get("img_s"),
                "minutes": round((end - st.started) / 60, 2) if st.started else None,
                "started_s": round(st.started - self.t0, 1) if st.started else None,
                "ended_s": round(st.ended - self.t0, 1) if st.ended and st.started else None,
                "rc": st.rc, "interim_exports": st.exports, "device": res.get("device"),
                "published": self.publisher.files.get(run.name, {}).get("names"),
                "last": {k: st.metrics[k] for k in ("loss", "acc", "bpp", "psnr", "lr") if k in st.metrics},
                "eval": st.metrics.get("eval")}

    def _write_status(self, final: bool = False) -> dict:
        """plan.json in the output folder, at most every 5 s (and at the end)."""
        status = {"format": STATUS_FORMAT, "plan": self.plan.name,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.t0)),
                  "elapsed_s": round(self.elapsed(), 1), "deadline_s": self.plan.deadline_s,
                  "finished": final, "runs": {r.name: self._run_status(r) for r in self.plan.runs},
                  "files": self.publisher.manifest(), "left_out": self.publisher.left_out,
                  "events": self.events[-100:]}
        if final or time.time() - self._status_at >= 5.0:
            text = json.dumps(status, indent=1)
            atomic_write(self.out / STATUS_FILE, lambda tmp: Path(tmp).write_text(text))
            self._status_at = time.time()
        return status


def _terminate_as_interrupt():
    """SIGTERM to the plan's process (a tool ending the command) becomes KeyboardInterrupt:
    the runner then stops its runs, which export, and publishes before it exits. Returns
    the handler it replaced (None off the main thread, where none is set)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_plan(path: str | Path, out: str | Path | None = None, runs_dir: str | Path | None = None,
             data_root: str | None = None, max_parallel: int | None = None,
             device: str | None = None, resume: bool = True, dry_run: bool = False,
             log: Callable[[str], None] = print) -> dict:
    """Load, check and run a plan (`tica train --plan`); returns its final status. With
    `dry_run`, only check it (configs, dependencies, what the exports will weigh)."""
    plan = load_plan(path, runs_dir, data_root, max_parallel, device)
    sizes = check_limits(plan)
    if dry_run:
        log(describe(plan, sizes))
        return {"plan": plan.name, "estimated_bytes": sizes}
    out = out or os.environ.get("OUT")
    if not out:
        raise ConfigError("where should the plan's exports go? pass --out DIR (or set $OUT)")
    return PlanRunner(plan, out, resume=resume, log=log).run()


# ---- the child process and helpers for the device machine ---------------------------------

def _child(spec_path: str) -> int:
    """One run of a plan, in its own process: SIGTERM stops it (saved and exported)."""
    import torch
    from .train import request_stop, train

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec.get("threads", 1)))
    signal.signal(signal.SIGTERM, lambda *_: request_stop())
    cfg = TrainConfig.from_dict(spec["config"])
    device = torch.cuda.get_device_name() if cfg.device.startswith("cuda") else cfg.device
    print(f"tica plan: {cfg.run_dir} on {device}, torch {torch.__version__}", flush=True)
    result = train(cfg, resume=bool(spec.get("resume", True)))
    images = (result.steps - result.first_step) * cfg.batch_size
    summary = {"complete": result.stopped is None, "stopped": result.stopped, "steps": result.steps,
               "planned_steps": result.planned_steps, "wall_s": round(result.wall_s, 2),
               "img_s": images / max(result.wall_s, 1e-9), "device": device,
               "weights": str(result.weights)}
    atomic_write(Path(cfg.run_dir) / RESULT_FILE,
                 lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    print(f"tica plan: {json.dumps(summary)}", flush=True)
    return 0


def pack_photos(src: str | Path, dest: str | Path, scale: int = 2) -> tuple[int, int]:
    """The photographs of `src`, each shrunk `scale` times (box filter), as lossless WebP
    (PNG where Pillow lacks WebP) in `dest`: how natural-image training data travels to a
    machine with a size limit. Returns (files, bytes)."""
    from PIL import Image, features

    from .data import IMAGE_SUFFIXES
    src, dest = Path(src), Path(dest)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TicaError(f"no photographs in {src}")
    dest.mkdir(parents=True, exist_ok=True)
    webp = features.check("webp")
    total = 0
    for f in files:
        img = Image.open(f).convert("RGB")
        img = img.reduce(scale) if scale > 1 else img
        target = dest / (f.stem + (".webp" if webp else ".png"))
        if webp:
            img.save(target, "WEBP", lossless=True, quality=100, method=4)
        else:
            img.save(target, "PNG", compress_level=9)
        total += target.stat().st_size
    return len(files), total


def travel_bytes(repo: str | Path, carry: list[str]) -> dict[str, int]:
    """What a device call sends, by folder: the working tree's tracked and
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


def main(argv: list[str] | None = None) -> int:
    """python -m tica.plan child SPEC | pack-photos SRC DEST [SCALE] | travel-size [CARRY..]"""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["child"] and len(args) == 2:
            return _child(args[1])
        if args[:1] == ["pack-photos"] and len(args) in (3, 4):
            n, size = pack_photos(args[1], args[2], int(args[3]) if len(args) == 4 else 2)
            print(f"{n} photos, {size / 2**20:.1f} MiB in {args[2]}")
            return 0
        if args[:1] == ["travel-size"]:
            sizes = travel_bytes(".", args[1:])
            total = sum(sizes.values())
            for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {k:32s} {v / 2**20:7.1f} MiB")
            print(f"  {'total':32s} {total / 2**20:7.1f} MiB (the device tool takes 64 MiB)")
            return 0 if total <= 64 * 2 ** 20 else 3
    except TicaError as exc:
        print(f"tica plan: error: {exc}", file=sys.stderr)
        return 1
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
