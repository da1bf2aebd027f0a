"""Training plans: every run of a recipe in one command, side by side on one machine, under
one wall-clock deadline, with the weights published while they train.

A plan file (JSON) lists runs. Each run is a `TrainConfig` (its fields, `model_overrides`
included) with a `name`; `"init": "@other"` starts it from run `other`'s export
(`model.safetensors`, float32) and so makes it wait for `other`. Runs with nothing to wait
for start side by side, each in its own process (`python -m tica_tools.plan child SPEC`), at most
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
(seconds from the run's own start), `threads`, `after` (a run to wait for without starting
from its export: runs that would slow each other down, one after the other). A run's
`deadline_s` counts from the plan's start. "{data}" in a value is the data root
(`data_root`, else $TICA_DATA). Keys starting with "_" are comments. A plan may extend
another: `"base": "gpu.json"`, with `set` (fields forced on every run), `set_model` (model
overrides merged into every run's), `patch` ({run name: fields}) and any top-level key.

The output folder gets each published run's latest export, float16 and coding-ready, as
NAME.safetensors, or NAME.safetensors.part0, .part1, ... where larger than max_file_bytes,
and plan.json: every run's state, steps, images/s and minutes, and the sha256 of every
published file. Where the runs alone would take more files than the limits allow, runs that
fit in one file are packed, first fit in plan order, in packN.tar (an uncompressed tar: the
NAME.safetensors members behind a pack.json index of their sha256, rewritten whole and
atomically, so it is consistent even when a command is cut between it and plan.json).
`layout` fixes where each run goes from the estimated export sizes before training starts;
`join_parts` reassembles and checks them all. Exports are published in plan order while they
fit; one that would not fit is left out and logged, never a half set.
Run folders (state, metrics, logs) are under `$TICA_CACHE/runs/PLAN`; a plan run again
resumes its unfinished runs and skips finished ones.

The package, one concern a module:

    spec.py     Limits, PlanRun, Plan; reading a plan file (load_plan); export sizes
    publish.py  Publisher (the output folder within the limits), join_parts
    runner.py   PlanRunner (start, follow, publish, stop by the deadline), run_plan
    child.py    one run in its own process (`python -m tica_tools.plan child SPEC`)
    travel.py   pack_photos, pack_split, travel_bytes: what a remote run is sent
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tica.cli import data_root
from tica.errors import TicaError
from .child import run_child
from .publish import Publisher, join_parts, read_pack, write_pack
from .runner import PlanRunner, run_plan
from .spec import (EXPORT_FILE, RESULT_FILE, STATUS_FILE, STATUS_FORMAT, Limits, Plan, PlanRun,
                   Slot, check_limits, describe, estimate_export_bytes, layout, load_plan,
                   model_config_of, pack_bytes, read_plan_file)
from .travel import pack_photos, pack_split, travel_bytes

__all__ = [
    "EXPORT_FILE", "Limits", "Plan", "PlanRun", "PlanRunner", "Publisher", "RESULT_FILE",
    "STATUS_FILE", "STATUS_FORMAT", "Slot", "check_limits", "describe", "estimate_export_bytes",
    "join_parts", "layout", "load_plan", "main", "model_config_of", "pack_bytes", "pack_photos",
    "pack_split", "read_pack", "read_plan_file", "run_command", "run_plan", "shipped_files",
    "travel_bytes", "write_pack",
]


def run_command(argv: list[str]) -> int:
    """python -m tica_tools.plan run PLAN [options]: every run of a plan file, then a line
    per run; exit 1 if any failed or was skipped."""
    p = argparse.ArgumentParser(prog="python -m tica_tools.plan run", description=run_command.__doc__)
    p.add_argument("plan", metavar="PLAN", help="a plan file (JSON), e.g. scripts/plans/gpu.json")
    p.add_argument("--out", metavar="DIR", help="where the exports and plan.json go (default $OUT)")
    p.add_argument("--runs-dir", metavar="DIR",
                   help="the runs' folders (default $TICA_CACHE/runs/PLAN; a rerun resumes)")
    p.add_argument("--data-root", metavar="DIR",
                   help="what {data} means in the plan (default $TICA_DATA or ../shared/data)")
    p.add_argument("--parallel", type=int, metavar="N", help="at most N runs at once")
    p.add_argument("--device", help="every run's device (default: each run's own)")
    p.add_argument("--fresh", action="store_true", help="start every run over (default: resume)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the plan and print its runs and export sizes; train nothing")
    args = p.parse_args(argv)
    status = run_plan(args.plan, out=args.out, runs_dir=args.runs_dir,
                      data_root=args.data_root or data_root(), max_parallel=args.parallel,
                      device=args.device, resume=not args.fresh, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    runs = status["runs"]
    for name, run in runs.items():
        print(f"{name:24s} {run['state']:8s} {run['steps'] or 0:>7} steps  "
              f"{run['minutes'] or 0:6.2f} min  {', '.join(run['published'] or []) or '-'}")
    failed = [name for name, run in runs.items() if run["state"] in ("failed", "skipped")]
    if failed:
        raise TicaError(f"plan {status['plan']}: {', '.join(failed)} failed or were skipped "
                        f"(see {Path(args.out or '$OUT') / 'plan.json'})")
    return 0


def shipped_files(plan_path: str) -> list[str]:
    """The package's weight files a plan's runs start from (init "shipped" or "step1"), as
    paths relative to the repository: what must travel with it."""
    from tica.registry import shipped_init

    plan = load_plan(plan_path, data_root="DATA")
    root = Path(__file__).resolve().parents[3]
    entries = [shipped_init(r.config.model, r.config.init) for r in plan.runs]
    return sorted({str(e.file.resolve().relative_to(root)) for e in entries if e is not None})


def main(argv: list[str] | None = None) -> int:
    """python -m tica_tools.plan run PLAN [options] | child SPEC | shipped-files PLAN
    | pack-photos SRC DEST [SCALE [QUALITY]] | pack-split SRC DEST [SIDE [QUALITY|lossless]] | travel-size [CARRY..]"""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["run"]:
            return run_command(args[1:])
        if args[:1] == ["shipped-files"] and len(args) == 2:
            print("\n".join(shipped_files(args[1])))
            return 0
        if args[:1] == ["child"] and len(args) == 2:
            return run_child(args[1])
        if args[:1] == ["pack-photos"] and len(args) in (3, 4, 5):
            n, size = pack_photos(args[1], args[2], int(args[3]) if len(args) >= 4 else 2,
                                  int(args[4]) if len(args) == 5 else None)
            print(f"{n} photos, {size / 2**20:.1f} MiB in {args[2]}")
            return 0
        if args[:1] == ["pack-split"] and len(args) in (3, 4, 5):
            quality = 75 if len(args) < 5 else None if args[4] == "lossless" else int(args[4])
            n, size = pack_split(args[1], args[2], int(args[3]) if len(args) >= 4 else 160, quality)
            print(f"{n} images, {size / 2**20:.1f} MiB in {args[2]}")
            return 0
        if args[:1] == ["travel-size"]:
            sizes = travel_bytes(".", args[1:])
            total = sum(sizes.values())
            for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {k:32s} {v / 2**20:7.1f} MiB")
            limit = Limits().max_total_bytes
            print(f"  {'total':32s} {total / 2**20:7.1f} MiB (a limit of {limit / 2**20:.0f} MiB)")
            return 0 if total <= limit else 3
    except TicaError as exc:
        print(f"tica plan: error: {exc}", file=sys.stderr)
        return 1
    print(main.__doc__, file=sys.stderr)
    return 2
