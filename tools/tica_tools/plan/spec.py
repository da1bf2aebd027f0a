"""A plan file read and checked: every run a resolved TrainConfig with its place in the
plan (dependency, publish, limits), and what the runs' exports will weigh against the limits
of what may come back."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tica.config import ModelConfig, TrainConfig
from tica.errors import CheckpointError, ConfigError

STATUS_FILE = "plan.json"
STATUS_FORMAT = "tica-plan-status"
EXPORT_FILE = "model.safetensors"
RESULT_FILE = "result.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")   # fits a tar header
_PLAN_KEYS = {"name", "base", "deadline_s", "grace_s", "kill_after_s", "min_start_s",
              "max_parallel", "threads", "limits", "defaults", "runs", "set", "set_model", "patch",
              "only"}
_RUN_KEYS = {"name", "publish", "limit_s", "threads", "after"}
_RESERVED = {"run_dir", "export_dir", "clock_start", "progress"}     # the plan sets these


@dataclass(frozen=True)
class Limits:
    """What may come back from the output folder, the status file included: at most
    `max_files` files of at most `max_file_bytes`, `max_total_bytes` in all. A plan sets
    them ("limits"): a batch scheduler's or a spot instance's result folder has such limits;
    the defaults are 8 files of 16 MiB, 64 MiB in all."""

    max_files: int = 8
    max_file_bytes: int = 16 * 2 ** 20
    max_total_bytes: int = 64 * 2 ** 20

    def parts(self, size: int) -> int:
        return max(1, math.ceil(size / self.max_file_bytes))


# ---- how the published runs share the output folder ----------------------------------------

PACK_INDEX = "pack.json"         # the member of a pack that lists the others and their sha256
_TAR_BLOCK, _TAR_RECORD = 512, 10240


def pack_bytes(members: dict[str, int]) -> int:
    """An upper bound on the size of a pack (an uncompressed ustar archive, as `tarfile`
    writes it) of files named and sized as `members`, its index included."""
    index = 64 + sum(len(name) + 140 for name in members)
    blocks = sum(1 + -(-size // _TAR_BLOCK) for size in [*members.values(), index]) + 2
    return -(-blocks * _TAR_BLOCK // _TAR_RECORD) * _TAR_RECORD


@dataclass(frozen=True)
class Slot:
    """One place in the output folder: a run alone (NAME.safetensors, or .part0, .part1, ...
    when larger than a file may be), or several runs packed in one archive (`file`)."""

    runs: tuple[str, ...]
    file: str | None = None      # packN.tar for a pack; None for a run alone


def layout(sizes: dict[str, int], limits: Limits) -> tuple[list[Slot], dict[str, str]]:
    """Where each run of `sizes` (bytes, in publishing order) goes, and the runs left out
    (name -> why). Each run alone if they all fit the limits (the status file counts as one
    file); else runs that fit in one file are packed, first fit in plan order, so that
    what comes back is 8 files; whichever leaves fewer runs out, alone on a tie."""
    alone = _fill(sizes, limits, pack=False)
    if not alone[1]:
        return alone
    packed = _fill(sizes, limits, pack=True)
    return packed if len(packed[1]) < len(alone[1]) else alone


def _fill(sizes: dict[str, int], limits: Limits, pack: bool) -> tuple[list[Slot], dict[str, str]]:
    groups: list[list[str]] = []                 # packable groups hold runs of one file each
    packable: list[bool] = []
    left_out: dict[str, str] = {}
    cost = lambda group: (pack_bytes({g: sizes[g] for g in group}) if len(group) > 1
                          else sizes[group[0]])
    files, total = 1, 0
    for name, size in sizes.items():
        count = limits.parts(size)
        if pack and count == 1:
            for i, group in enumerate(groups):
                grown = pack_bytes({g: sizes[g] for g in [*group, name]})
                if packable[i] and grown <= limits.max_file_bytes and \
                        total - cost(group) + grown <= limits.max_total_bytes:
                    total += grown - cost(group)
                    group.append(name)
                    break
            else:
                if files + 1 > limits.max_files or total + size > limits.max_total_bytes:
                    left_out[name] = f"{size} bytes in 1 file would pass the limits"
                    continue
                files, total = files + 1, total + size
                groups.append([name])
                packable.append(True)
            continue
        if files + count > limits.max_files or total + size > limits.max_total_bytes:
            left_out[name] = f"{size} bytes in {count} file(s) would pass the limits"
            continue
        files, total = files + count, total + size
        groups.append([name])
        packable.append(False)
    slots, packs = [], 0
    for group in groups:
        if len(group) > 1:
            packs += 1
        slots.append(Slot(tuple(group), f"pack{packs}.tar" if len(group) > 1 else None))
    return slots, left_out


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
        raise ConfigError(f"run name {name!r}: use up to 64 letters, digits, '.', '_' and '-' "
                          "(the names of the files that come back)")
    extra = {k: fields.pop(k) for k in list(fields) if k in _RUN_KEYS}
    if _RESERVED & set(fields):
        raise ConfigError(f"run {name}: {sorted(_RESERVED & set(fields))} are set by the plan")
    fields = {k: _fill_data(v, data_root) for k, v in fields.items()}
    after = extra.get("after")              # wait for that run, take nothing from it
    if after is not None and not isinstance(after, str):
        raise ConfigError(f"run {name}: after names one run, not {after!r}")
    for key in ("init", "teacher"):         # "@run": that run's export, so wait for it
        if isinstance(fields.get(key), str) and fields[key].startswith("@"):
            if after is not None:
                raise ConfigError(f"run {name}: more than one of init, teacher and after names "
                                  "a run; a run waits for one (start from a file or a shipped "
                                  "model instead)")
            after = fields[key][1:]
            fields[key] = str(runs_dir / after / EXPORT_FILE)
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
    from tica.data import cache_dir
    runs_dir = Path(runs_dir) if runs_dir else cache_dir() / "runs" / name
    data_root = data_root or os.environ.get("TICA_DATA")
    if device:
        spec["set"] = {**spec.get("set", {}), "device": device}
    raws = spec.get("runs") or []
    if spec.get("only") is not None:    # a plan that keeps some of its base's runs
        missing = set(spec["only"]) - {raw.get("name") for raw in raws}
        if missing:
            raise ConfigError(f"plan {path}: 'only' names no run {sorted(missing)}")
        raws = [raw for raw in raws if raw.get("name") in spec["only"]]
    if not raws:
        raise ConfigError(f"plan {path} has no runs")
    runs = [_resolve_run(_run_fields(raw, spec), spec, runs_dir, data_root) for raw in raws]
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
    from tica.checkpoint import read_checkpoint
    from tica.registry import get_config, shipped_init

    cfg = run.config
    if run.after and cfg.init == str(plan.runs_dir / run.after / EXPORT_FILE):
        base = model_config_of(plan, plan.run(run.after))
    elif cfg.init:
        try:
            entry = shipped_init(cfg.model, cfg.init)
            base = read_checkpoint(entry.file if entry else cfg.init)[0]
        except (CheckpointError, ConfigError) as exc:
            raise ConfigError(f"run {run.name}: cannot read its init {cfg.init}: {exc}") from None
    else:
        return get_config(cfg.model, **cfg.model_overrides)
    return base.replace(**cfg.model_overrides) if cfg.model_overrides else base


def estimate_export_bytes(plan: Plan, run: PlanRun) -> int:
    """The size of the run's float16, coding-ready export, from a fresh model of its config
    (the coding tables of a trained one differ a little: 1% and 16 KiB are added)."""
    from tica.models import CompressionModel
    from tica.registry import build_model

    model = build_model(model_config_of(plan, run)).eval()
    if isinstance(model, CompressionModel) and run.config.step == 2:
        model.update()
    tensors = model.state_dict()
    size = sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in tensors.values())
    header = 160 * len(tensors) + len(model.config.to_json()) + 1024
    return int((size + header) * 1.01) + 16 * 1024


def check_limits(plan: Plan) -> dict[str, int]:
    """Estimated export size of every published run (in plan order); ConfigError if they
    cannot all come back, alone or packed (`layout`)."""
    sizes = {r.name: estimate_export_bytes(plan, r) for r in plan.runs if r.publish}
    _, left_out = layout(sizes, plan.limits)
    if left_out:
        listing = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
        raise ConfigError(f"plan {plan.name}: its exports ({listing}) cannot all come back, "
                          f"even packed: {', '.join(left_out)} would be left out; the limits are "
                          f"{plan.limits.max_files} files of {plan.limits.max_file_bytes / 2**20:.0f} "
                          f"MiB and {plan.limits.max_total_bytes / 2**20:.1f} MiB in all: set "
                          "\"publish\": false on runs that need not come back")
    return sizes


def describe(plan: Plan, sizes: dict[str, int] | None = None) -> str:
    """A table of the plan's runs (for --dry-run)."""
    lines = [f"plan {plan.name}: {len(plan.runs)} runs, deadline "
             f"{plan.deadline_s or '-'} s, {plan.max_parallel} at once, runs in {plan.runs_dir}"]
    packed = {run: slot.file for slot in layout(sizes, plan.limits)[0] if slot.file
              for run in slot.runs} if sizes else {}
    for r in plan.runs:
        c = r.config
        size = f"{sizes[r.name] / 2**20:5.1f} MiB" if sizes and r.name in sizes else "   (kept)"
        lines.append(f"  {r.name:22s} {c.model:16s} step {c.step}  {c.epochs:>6g} ep  batch "
                     f"{c.batch_size:<4d} {c.device:5s} deadline {c.deadline_s or '-'}  {size}"
                     + (f" in {packed[r.name]}" if r.name in packed else "")
                     + (f"  after {r.after}" if r.after else ""))
    return "\n".join(lines)
