"""Running a plan: its runs launched as their dependencies end, each in its own process
(`python -m tica_tools.plan child SPEC`, see child.py), their metrics followed, their exports
published, the status file written, everything stopped by the deadline."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tica.io import atomic_write_text
from tica.errors import ConfigError, TicaError
from .publish import Publisher
from .spec import (EXPORT_FILE, RESULT_FILE, STATUS_FILE, STATUS_FORMAT, Plan, PlanRun,
                   check_limits, describe, load_plan)


def aggregate_tflop_s(runs, elapsed_s: float) -> float | None:
    """The plan's training FLOP rate: each run's images/s (its mean over the run once it has
    ended, else its latest) times its FLOPs per image, times its minutes in this start of the
    plan, over this start's wall time. None before any run has both."""
    flops = [(r.get("img_s_mean") or r.get("img_s") or 0) * 60
             * (r.get("minutes_this_start", r.get("minutes")) or 0)
             * r["gflop_per_image"] for r in runs if r.get("gflop_per_image")]
    return round(sum(flops) / 1e3 / max(elapsed_s, 1e-9), 3) if flops else None


COMMIT_ENV = "TICA_COMMIT"
SHIPPED_WEIGHTS = "src/tica/weights/*.safetensors"


def source_commit(repo: Path | None = None) -> str | None:
    """The commit the plan's code is at, for the weights' provenance: $TICA_COMMIT (set where a
    checkout travels without its history), else git's HEAD (+ "-dirty" with uncommitted
    changes to tracked files other than the shipped weights: the device plan takes those out
    of git's index for a call, and the manifest's SHA-256 names them), else None."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        repo = repo or Path(__file__).resolve().parents[3]
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True, cwd=repo).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", f":(exclude){SHIPPED_WEIGHTS}"],
                               capture_output=True, text=True, timeout=10, cwd=repo).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


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
    init_sha256: str | None = None   # the shipped file it started from, when it started


def _shipped_sha(cfg) -> str | None:
    """The manifest's SHA-256 of the shipped file a run starts from (init "shipped" or
    "step1"): the file its lease continues, which shipping checks is still the one shipped."""
    from tica.registry import shipped_init
    try:
        entry = shipped_init(cfg.model, cfg.init)
    except TicaError:
        return None
    return entry.sha256 if entry else None


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
        if "train_gflop_per_image" in rec:
            st.metrics["gflop"] = rec["train_gflop_per_image"]
        if rec.get("export"):
            st.metrics["export_step"] = rec["step"]
            st.exports += rec["export"] == "interim"
        if rec.get("done"):
            st.metrics["step"] = rec["step"]


class PlanRunner:
    """Runs a plan: launches runs as their dependencies finish, follows their metrics,
    publishes their exports and writes the status file, stops everything by the deadline."""

    def __init__(self, plan: Plan, out: str | Path, resume: bool = True,
                 log: Callable[[str], None] = print, poll_s: float = 0.5,
                 sizes: dict[str, int] | None = None) -> None:
        self.plan, self.out, self.resume, self.poll_s = plan, Path(out), resume, poll_s
        self.print = log
        self.states = {r.name: _RunState() for r in plan.runs}
        self.publisher = Publisher(self.out, plan.limits, check_limits(plan) if sizes is None else sizes)
        self.events: list[str] = []
        self.t0 = time.time()
        self.warm: set[str] = set()
        self._status_at = 0.0
        self._termed: float | None = None
        self.commit = source_commit()

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
            for r in self.plan.runs:        # runs from nothing: an earlier session's weights
                for stale in (r.run_dir / RESULT_FILE, r.run_dir / EXPORT_FILE, r.export):
                    stale.unlink(missing_ok=True)     # must not be published as this one's
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
        from tica.data import data_kind
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
        from tica.data import held_out_split, load_split
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
        atomic_write_text(spec_path, json.dumps(spec, indent=2))
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "OMP_NUM_THREADS": str(run.threads), "MKL_NUM_THREADS": str(run.threads),
               "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        with open(run.run_dir / "log.txt", "ab") as out:
            st.proc = subprocess.Popen([sys.executable, "-m", "tica_tools.plan", "child", str(spec_path)],
                                       stdout=out, stderr=subprocess.STDOUT, env=env)
        st.state, st.started = "running", time.time()
        st.init_sha256 = _shipped_sha(run.config)     # the manifest now, not at a later status
        _follow_metrics(run, st)                  # skip what an earlier session logged
        st.metrics, st.exports = {}, 0
        deadline = f", deadline {cfg.deadline_s:.0f} s" if cfg.deadline_s is not None else ""
        self.log(f"start {run.name} (pid {st.proc.pid}{deadline}"
                 + (f", after {run.after})" if run.after else ")"))
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
                tail = " | ".join(_tail(r.run_dir / "log.txt"))
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
            where = f"in {info['names'][0]}" if info.get("packed") else f"{len(info['names'])} file(s)"
            self.log(f"published {name}: {where}, {info['bytes'] / 2**20:.1f} MiB")
        for name, why in self.publisher.left_out.items():
            if before.get(name) != why:
                self.log(f"left out {name}: {why}")

    def _run_status(self, run: PlanRun) -> dict:
        st, c, res = self.states[run.name], run.config, self.states[run.name].result
        end = st.ended or (time.time() if st.started else None)
        steps = st.metrics.get("step")
        # what its weights hold: a run killed between exports trained steps that are lost
        held = st.metrics.get("export_step", steps)
        # a resumed run: its earlier starts' training loops count too (their steps do)
        this_start = round((end - st.started) / 60, 2) if st.started else None
        earlier = (res.get("earlier_wall_s") or 0) / 60
        return {"state": st.state, "reason": st.reason, "model": c.model, "train_step": c.step,
                "after": run.after, "init": c.init, "init_sha256": st.init_sha256,
                "teacher": c.teacher, "train_device": c.device,
                "batch_size": c.batch_size, "steps": steps,
                "exported_step": held,
                "images_seen": held * c.batch_size if held else 0,
                "gflop_per_image": st.metrics.get("gflop"),
                "planned_steps": res.get("planned_steps"), "epoch": st.metrics.get("epoch"),
                "img_s": st.metrics.get("img_s"), "img_s_mean": res.get("img_s"),
                "minutes": round(this_start + earlier, 2) if this_start is not None else None,
                "minutes_this_start": this_start,
                "started_s": round(st.started - self.t0, 1) if st.started else None,
                "ended_s": round(st.ended - self.t0, 1) if st.ended and st.started else None,
                "rc": st.rc, "interim_exports": st.exports, "device": res.get("device"),
                "published": self.publisher.files.get(run.name, {}).get("names"),
                "last": {k: st.metrics[k] for k in ("loss", "acc", "bpp", "psnr", "lr") if k in st.metrics},
                "eval": st.metrics.get("eval")}

    def _write_status(self, final: bool = False) -> dict:
        """plan.json in the output folder, at most every 5 s (and at the end)."""
        runs = {r.name: self._run_status(r) for r in self.plan.runs}
        for r in self.plan.runs:     # a run that failed brings its log's end back with it
            if runs[r.name]["state"] == "failed" and r.run_dir.joinpath("log.txt").is_file():
                runs[r.name]["log_tail"] = _tail(r.run_dir / "log.txt", LOG_TAIL_LINES)
        status = {"format": STATUS_FORMAT, "plan": self.plan.name, "commit": self.commit,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.t0)),
                  "elapsed_s": round(self.elapsed(), 1), "deadline_s": self.plan.deadline_s,
                  "aggregate_tflop_s": aggregate_tflop_s(runs.values(), self.elapsed()),
                  "finished": final, "runs": runs,
                  "files": self.publisher.manifest(), "left_out": self.publisher.left_out,
                  "events": self.events[-100:]}
        if final or time.time() - self._status_at >= 5.0:
            text = json.dumps(status, indent=1)
            atomic_write_text(self.out / STATUS_FILE, text)
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


LOG_TAIL_LINES = 40          # of a failed run's log, in plan.json (the only file sure to return)


def _tail(path: Path, lines: int = 3) -> list[str]:
    """The last `lines` lines of a log, each cut at 300 characters."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))     # its end, not all of it
            text = f.read().decode(errors="replace")
        tail = [line[:300] for line in text.strip().splitlines()[-lines:]]
    except OSError:
        tail = ["(no log)"]
    return tail


def run_plan(path: str | Path, out: str | Path | None = None, runs_dir: str | Path | None = None,
             data_root: str | None = None, max_parallel: int | None = None,
             device: str | None = None, resume: bool = True, dry_run: bool = False,
             log: Callable[[str], None] = print) -> dict:
    """Load, check and run a plan (`python -m tica_tools.plan run`); returns its final status. With
    `dry_run`, only check it (configs, dependencies, what the exports will weigh)."""
    plan = load_plan(path, runs_dir, data_root, max_parallel, device)
    sizes = check_limits(plan)
    if dry_run:
        log(describe(plan, sizes))
        return {"plan": plan.name, "estimated_bytes": sizes}
    out = out or os.environ.get("OUT")
    if not out:
        raise ConfigError("where should the plan's exports go? pass --out DIR (or set $OUT)")
    return PlanRunner(plan, out, resume=resume, log=log, sizes=sizes).run()

