"""What trained a shipped file, from a plan's plan.json, accumulated over leases: a model
that trains on from its shipped weights (init "shipped") adds its lease to the file's
history; one trained from scratch starts a new history. A lease may also train on from an
earlier lease's export that was never shipped (init a file): `chain` then takes the plans
in order and checks, by SHA-256, that each starts from the export of the one before. The
manifest's `trained` then says how much compute the weights hold in all, and exactly which
plans and commits gave it."""

from __future__ import annotations

from pathlib import Path

from tica.errors import ConfigError
from tica.io import sha256_file
from tica.registry import SHIPPED_INITS


def lease(status: dict, run: str) -> dict:
    """One plan run's share of a file's training: the run and the runs it started from
    (its `after` chain), with the plan, the commit, when, where, minutes and images, and what
    the chain's first run started from (a later run's init is its predecessor's export)."""
    runs, chain, name = status.get("runs", {}), [], run
    while name is not None:
        if name not in runs:
            raise ConfigError(f"plan {status.get('plan')}: no run {name!r} in its plan.json")
        chain.append(name)
        name = _started_from(runs[name])
    own = runs[run]
    taught = _teachers(runs, chain)
    return {"plan": f"scripts/plans/{status['plan']}.json", "commit": status.get("commit"),
            "date": (status.get("started") or "")[:10], "runs": chain[::-1],
            "where": "gpu" if str(own.get("train_device") or "").startswith("cuda") else "cpu",
            **_init(runs[chain[-1]].get("init")),     # where the chain began
            **({"init_sha256": runs[chain[-1]]["init_sha256"]}
               if runs[chain[-1]].get("init_sha256") else {}),
            "minutes": round(sum(runs[n].get("minutes") or 0 for n in chain + list(taught)), 2),
            "steps": sum(runs[n].get("exported_step", runs[n].get("steps")) or 0 for n in chain),
            "images_seen": sum(runs[n].get("images_seen") or 0 for n in chain),
            **({"teachers": taught} if taught else {}),
            "aggregate_tflop_s": status.get("aggregate_tflop_s")}


def _teachers(runs: dict, chain: list[str]) -> dict:
    """The plan's runs that the runs of `chain` distilled from (their export the teacher),
    with their minutes, which the lease's minutes include: the machine time behind the
    file. Their images are the teacher's own and not counted as the file's."""
    taught = {}
    for name in chain:
        after = runs[name].get("after")
        if _export_of(runs[name].get("teacher"), after):
            taught[after] = {"model": runs[after].get("model"),
                             "minutes": runs[after].get("minutes"),
                             "images_seen": runs[after].get("images_seen")}
    return taught


def _started_from(run: dict) -> str | None:
    """The run whose export `run` started from: the one it waited for, if its init is that
    run's export (RUNS/NAME/model.safetensors); a run that only waited (`after`, or a teacher
    it distilled from) started from its own init."""
    after = run.get("after")
    return after if _export_of(run.get("init"), after) else None


def _export_of(path, run: str | None) -> bool:
    """Whether `path` (a run's init or teacher, as plan.json records it) is plan run `run`'s
    export: the plan resolves "@run" to RUNS/run/model.safetensors."""
    return bool(run) and isinstance(path, str) and Path(path).parent.name == run


def run_of(status: dict, name: str, sha256: str | None) -> str:
    """The run of `status` that exported the file of this `sha256` (a plan may train a model
    under another name, e.g. the arms of a trial), else the run called `name`."""
    made = [f.get("run") for f in status.get("files", {}).values()
            if sha256 and f.get("sha256") == sha256]
    return made[0] if made else name


def _init(init: str | None) -> dict:
    """What a run started from, as a lease records it: "shipped", a file (with its path),
    else "scratch" (nothing, or the package's step-1 weights, a new history)."""
    if init == "shipped":
        return {"init": "shipped"}
    if init and init not in SHIPPED_INITS:
        return {"init": "file", "init_file": init}
    return {"init": "scratch"}


def chain(earlier: dict | None, statuses: list[dict], run: str, source: str | Path | None = None,
          shipped_sha: str | None = None) -> dict:
    """A file's `trained` after the leases of `statuses` (plan.json contents, in the order
    they ran): the first continues `earlier` (the shipped entry's) or starts over, as
    `accumulate` says; each later one must have started from the file the one before it
    exported (init a file of that SHA-256), else its lease would claim compute the weights
    do not hold. Each plan's run is the one that exported the file (`source`, then each
    lease's init file, by SHA-256), else the run called `run`."""
    count = len(statuses)
    names, leases, init_shas = [run] * count, [{}] * count, [None] * count
    sha = sha256_file(source) if source else None
    for k in reversed(range(count)):            # each run found by the file it exported
        names[k] = run_of(statuses[k], run, sha)
        leases[k] = lease(statuses[k], names[k])
        init = leases[k].get("init_file")
        sha = init_shas[k] = sha256_file(init) if init and Path(init).is_file() else None
    first = leases[0] if leases else {}
    if (first.get("init") == "shipped" and first.get("init_sha256") and shipped_sha
            and first["init_sha256"] != shipped_sha):
        raise ConfigError(f"plan {statuses[0].get('plan')}: run {names[0]!r} continued a "
                          f"shipped file ({first['init_sha256'][:12]}) that is no longer the "
                          f"one shipped ({shipped_sha[:12]}): its lease would join a history "
                          "its weights do not hold")
    trained = earlier
    for k, status in enumerate(statuses):
        new = leases[k]
        if k and new["init"] != "file":
            raise ConfigError(f"plan {status.get('plan')}: run {names[k]!r} started from "
                              f"{new['init']}, not from plan {statuses[k - 1].get('plan')}'s "
                              "export: give only the plans that trained one another, in order")
        if new["init"] == "file":
            _check_started_from(new["init_file"], init_shas[k], statuses[k - 1] if k else None,
                                status, names[k], names[k - 1] if k else None)
        trained = accumulate(trained, new)
    return trained


def _check_started_from(path: str, sha: str | None, before: dict | None, status: dict, run: str,
                        before_run: str | None) -> None:
    """`path` (of SHA-256 `sha`, None where it is not here) is what plan `before` exported
    for `before_run`."""
    plan = status.get("plan")
    if before is None:
        raise ConfigError(f"plan {plan}: run {run!r} started from the file {path}; give the "
                          "plan.json of the plan that trained it first (--plan-status, in order)")
    made = [f.get("sha256") for f in before.get("files", {}).values()
            if f.get("run") == before_run]
    if sha is None:
        raise ConfigError(f"plan {plan}: run {run!r} started from {path}, which is not here to "
                          f"check against plan {before.get('plan')}'s export")
    if sha not in made:
        raise ConfigError(f"plan {plan}: run {run!r} started from {path}, which is not what "
                          f"plan {before.get('plan')} exported for it (SHA-256 differs)")


def accumulate(earlier: dict | None, new: dict) -> dict:
    """A file's `trained` after lease `new`: its leases so far (a lease from shipped weights
    or from an earlier lease's file continues `earlier`'s; one from scratch starts over)
    and their totals; `where` names
    every kind of machine the leases ran on, in order ("gpu+cpu"), with the minutes on
    each; `plan` and `commit` are the latest lease's."""
    leases = []
    if new["init"] in ("shipped", "file") and earlier:
        leases = list(earlier.get("leases") or [_as_lease(earlier)])
    if new in leases:
        raise ConfigError(f"the lease of plan {new.get('plan')} ({new.get('date')}, runs "
                          f"{new.get('runs')}) is already in the file's history")
    leases.append(new)
    minutes_on: dict[str, float] = {}
    for e in leases:
        where = e.get("where") or "unknown"
        minutes_on[where] = round(minutes_on.get(where, 0) + (e.get("minutes") or 0), 2)
    return {"where": "+".join(minutes_on), "minutes_on": minutes_on,
            "plan": new["plan"], "commit": new["commit"],
            "minutes": round(sum(e.get("minutes") or 0 for e in leases), 2),
            "steps": sum(e.get("steps") or 0 for e in leases),
            "images_seen": sum(e.get("images_seen") or 0 for e in leases),
            **_labelled(leases), "leases": leases}


def _labelled(leases: list[dict]) -> dict:
    """{"labelled_images_seen": total} where a lease counted its labelled images apart
    (a codec also trained on unlabelled crops, as tica-photo's first step did), else {}."""
    if not any("labelled_images_seen" in e for e in leases):
        return {}
    return {"labelled_images_seen": sum(e.get("labelled_images_seen", e.get("images_seen") or 0)
                                        for e in leases)}


def _as_lease(trained: dict) -> dict:
    """An entry written before leases were kept, as its one lease."""
    keep = ("plan", "commit", "where", "minutes", "steps", "images_seen", "labelled_images_seen",
            "steps_note")
    return {"init": "scratch", **{k: trained[k] for k in keep if k in trained}}
