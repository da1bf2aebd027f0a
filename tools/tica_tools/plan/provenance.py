"""What trained a shipped file, from a plan's plan.json, accumulated over leases: a model
that trains on from its shipped weights (init "shipped") adds its lease to the file's
history; one trained from scratch starts a new history. The manifest's `trained` then says
how much compute the weights hold in all, and exactly which plans and commits gave it."""

from __future__ import annotations

from tica.errors import ConfigError


def lease(status: dict, run: str) -> dict:
    """One plan run's share of a file's training: the run and the runs it started from
    (its `after` chain), with the plan, the commit, when, where, minutes and images."""
    runs, chain, name = status.get("runs", {}), [], run
    while name is not None:
        if name not in runs:
            raise ConfigError(f"plan {status.get('plan')}: no run {name!r} in its plan.json")
        chain.append(name)
        name = runs[name].get("after")
    own = runs[run]
    return {"plan": f"scripts/plans/{status['plan']}.json", "commit": status.get("commit"),
            "date": (status.get("started") or "")[:10], "runs": chain[::-1],
            "where": "gpu" if str(own.get("train_device") or "").startswith("cuda") else "cpu",
            "init": "shipped" if own.get("init") == "shipped" else "scratch",
            "minutes": round(sum(runs[n].get("minutes") or 0 for n in chain), 2),
            "steps": sum(runs[n].get("steps") or 0 for n in chain),
            "images_seen": sum(runs[n].get("images_seen") or 0 for n in chain),
            "aggregate_tflop_s": status.get("aggregate_tflop_s")}


def accumulate(earlier: dict | None, new: dict) -> dict:
    """A file's `trained` after lease `new`: its leases so far (a lease from shipped weights
    continues `earlier`'s; one from scratch starts over) and their totals; `where` names
    every kind of machine the leases ran on, in order ("gpu+cpu"), with the minutes on
    each; `plan` and `commit` are the latest lease's."""
    leases = []
    if new["init"] == "shipped" and earlier:
        leases = list(earlier.get("leases") or [_as_lease(earlier)])
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
