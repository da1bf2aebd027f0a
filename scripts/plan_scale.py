"""Scale gpu.json's epochs to the throughput a check run measured on the lent GPU.

    python scripts/plan_scale.py CHECK_PLAN_JSON [OUT_PLAN]   (default scripts/plans/gpu-scaled.json)

CHECK_PLAN_JSON is the plan.json that `scripts/plans/gpu-check.json` (40 steps a run, the
same runs side by side) wrote. For each run, the seconds its planned epochs would take at the
images/s it measured are set against the seconds gpu.json leaves it (its own deadline, else
the plan's, less the deadline of the run it waits for), and its epochs are multiplied by that
ratio, clamped to [1, 6]: a GPU faster than gpu.json assumed then trains longer instead of
idling, a slower one keeps gpu.json's epochs (schedule_by_deadline still anneals every run
by its deadline). Equal budgets stay equal: vit-pixel-cifar gets tica-cifar's step 1 + step
2 epochs, tica-cifar-nofam tica-cifar's, vit-pixel-photo tica-photo's. The written plan
extends gpu.json (`base`), so only the epochs differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PLANS = Path(__file__).resolve().parent / "plans"
IMAGES = {"cifar": 50_000, "imagenette": 8_669, "photos": 10_000}   # per epoch
START_S, GAP_S = 20.0, 15.0          # setup before a run's first step; a dependent's start lag


def per_epoch(run: dict, defaults: dict) -> int:
    data = run.get("data", defaults["data"])
    return IMAGES["imagenette" if "imagenette" in data else "photos" if "photos" in data
                  else "cifar"]


def scales(check: dict, gpu: dict) -> dict[str, float]:
    runs = {r["name"]: r for r in gpu["runs"]}
    own = {n: r.get("deadline_s", gpu["deadline_s"]) for n, r in runs.items()}
    out = {}
    for name, run in runs.items():
        st = check["runs"].get(name, {})
        rate = st.get("img_s") or st.get("img_s_mean")
        if not rate:
            out[name] = 1.0
            continue
        need = run["epochs"] * per_epoch(run, gpu["defaults"]) / rate
        after = run.get("init", "")[1:] if str(run.get("init", "")).startswith("@") else None
        have = own[name] - (own[after] + GAP_S if after in own else START_S)
        out[name] = min(6.0, max(1.0, have / need))
        print(f"{name:24s} {rate:8.0f} img/s  needs {need:6.0f} s  has {have:4.0f} s  "
              f"x{out[name]:.2f}", file=sys.stderr)
    return out


def main(argv: list[str]) -> int:
    check = json.loads(Path(argv[0]).read_text())
    gpu = json.loads((PLANS / "gpu.json").read_text())
    k = scales(check, gpu)
    epochs = {r["name"]: r["epochs"] for r in gpu["runs"]}
    new = {n: round(e * k[n], 1) for n, e in epochs.items()}
    new["tica-cifar-nofam"] = new["tica-cifar"]
    new["vit-pixel-cifar"] = round(new["tica-cifar-step1"] + new["tica-cifar"], 1)
    new["vit-pixel-photo"] = new["tica-photo"]
    plan = {"_comment": f"gpu.json's epochs scaled to a check run's throughput "
                        f"(scripts/plan_scale.py {argv[0]})",
            "base": "gpu.json", "name": "gpu",
            "patch": {n: {"epochs": e} for n, e in new.items()}}
    dest = Path(argv[1]) if len(argv) > 1 else PLANS / "gpu-scaled.json"
    dest.write_text(json.dumps(plan, indent=1) + "\n")
    for n, e in new.items():
        print(f"{n:24s} {epochs[n]:6.1f} -> {e:6.1f} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
