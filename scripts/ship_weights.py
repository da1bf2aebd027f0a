"""Copy trained weights into the package (float16) and list them in weights/manifest.json.

    python scripts/ship_weights.py --codec runs/vr/model.safetensors [--codec ...]
                                   [--step1 runs/step1/model.safetensors]
                                   [--model runs/vit-pixel-cifar/model.safetensors]
                                   [--plan-status OUT/plan.json ... | --lease LEASE.json
                                    | --trained '{...}']

A codec's preset comes from the checkpoint's own config; a shipped codec is variable-rate
(the rate is chosen when coding) and replaces its preset's earlier codec, entry and file. --check DIR compares each codec in float16
with its float32 original on the images of DIR (e.g. ../shared/data/kodak) from real
streams, so "half precision if quality allows" is a measured statement.
`--rehash` recomputes every entry's SHA-256 and model id from the files.

--only-if-better DATA evaluates each codec, as it would ship (float16), and the preset's
shipped codec on DATA (tica.evaluate.eval_data: a data set's held-out split, an archive or
folder, --limit N a class-balanced subset; or a folder of images such as Kodak) at every
standard quality, from real streams. Per data set, tica_tools.rd.curve_verdict compares the
curves (BD-rate of PSNR, and top-1 at equal bpp where there are labels, counted only when
a paired bootstrap over the images says it is not chance: tica_tools.rd.curve_verdict,
docs/design.md "The accuracy gate"; and none of the candidate's rate points more than
0.3 dB below the shipped curve, so an average cannot hide one end given up). Repeat the option
for several data sets (e.g. Imagenette's validation split and Kodak): the codec ships only
if it is worse on none and better on one, and its manifest results are then those rows,
one key per data set (e.g. imagenette_val_1k, kodak_24). Several --codec of one preset are
a trial's arms: the shipped curve is measured once, and at most one arm ships (the best that
passes; `gate`). A --model (a clean-pixel classifier) faces the same option: its top-1 on
the labelled data sets against the shipped one's, a paired bootstrap over the images
(`classifier_gate`). Exit status 3 if a preset's codecs, or a classifier, were kept out.

--plan-status reads the plan.json of the plan that trained the files (each file's run is its
name: tica-cifar, tica-cifar-step1, vit-pixel-cifar, ...) and writes its provenance: the
plan, the commit, minutes, steps and images, with the runs it started from; a run that
continued the shipped weights (init "shipped") adds its lease to the file's history
(tica_tools.plan.provenance), so the manifest says what the weights hold in all. Repeat it
for a run that trained on from an earlier lease's export (init that file): the plans in the
order they ran, each checked to start from the export of the one before. --lease FILE adds
one lease that no plan ran (tica_tools.refit writes one) to the history the same way; a
trial's arms each bring theirs (--lease per --codec, matched by the run the lease names).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from torch import nn

from tica.checkpoint import save_checkpoint
from tica import api
from tica.errors import ConfigError
from tica.evaluate import LearnedPipeline, Uncompressed, eval_data, evaluate
from tica.image import read_image
from tica.io import sha256_file
from tica.registry import (MANIFEST, find_weights, load_checkpoint, manifest_json, parse_manifest,
                           write_manifest)
from tica_tools.plan.provenance import accumulate, chain
from tica_tools.rd import (curve_rows, curve_verdict, curves_table, paired_accuracy_interval,
                           top1_gap_text)

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "tica" / "weights"


def _trained(name: str, args: argparse.Namespace, entries: list[dict], source: str) -> dict:
    """The provenance of artifact `name` (shipped from the file `source`): --trained as
    given, else --lease or --plan-status (the run that exported `source`, else the run
    `name`), continuing the shipped entry's history where the lease continued its weights."""
    if args.trained or not (args.plan_status or args.lease):
        return args.trained
    entry = next((e for e in entries if e["name"] == name), {})
    earlier = entry.get("trained")
    try:
        if args.lease:
            return accumulate(earlier, _committed(_lease_of(args.lease, source)))
        return _committed(chain(earlier, args.plan_status, name, source, entry.get("sha256")))
    except ConfigError as exc:
        raise SystemExit(f"{name}: {exc}") from None


def _committed(lease: dict) -> dict:
    """`lease` if it names the commit its code ran at; SystemExit before anything is
    written otherwise: a run from uncommitted changes ("-dirty") cannot be reproduced, and
    the manifest would carry a history no commit holds."""
    commit = str(lease.get("commit", ""))
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        raise SystemExit(f"the lease ran at commit {commit!r}, not a commit of this "
                         "repository (uncommitted changes?): rerun it from a commit, or set "
                         "its commit to the one whose code it ran")
    return lease


def _check_histories(args: argparse.Namespace, entries: list[dict]) -> None:
    """Each file's provenance worked out once before any evaluation, so that a lease that
    cannot join the file's history (uncommitted, continuing a file no longer shipped,
    already in it) stops the shipping before the gate's minutes, not after them."""
    named = [(src, "") for src in [*args.codec, *args.model]]
    named += [(args.step1, "-step1")] if args.step1 else []
    for src, suffix in named:
        _trained(load_checkpoint(src).config.name + suffix, args, entries, src)


def _lease_of(leases: list[dict], source: str) -> dict:
    """The --lease that trained the file `source`: the only one given, else the one whose
    runs name the file (tica_tools.refit names its run after its output), as a trial's arms
    each bring theirs."""
    if len(leases) == 1:
        return leases[0]
    named = [e for e in leases if Path(source).stem in e.get("runs", ())]
    if len(named) != 1:
        raise SystemExit(f"{len(named)} of the --lease files name the run {Path(source).stem!r}"
                         " in their runs: give one lease per --codec")
    return named[0]


class Staging:
    """The files a shipping writes, under temporary names beside their places until every
    one is written and checked: then they replace the old ones and the manifest is written,
    and only after that are superseded files deleted. A failure before (an evaluation, a
    full disk) leaves the package as it was."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}          # final name -> staged file
        self.superseded: list[str] = []

    def path(self, target: str) -> Path:
        self.files[target] = WEIGHTS / f".{target}.staged"
        return self.files[target]

    def where(self, target: str) -> Path:
        """Where `target` is now: staged, else in place."""
        return self.files.get(target, WEIGHTS / target)

    def commit(self, manifest: dict, path: Path) -> None:
        """The manifest checked, the files moved into place, then the manifest written
        (atomically): renames alone between the old state and the new."""
        parse_manifest(manifest, path)
        for target, staged in self.files.items():
            staged.replace(WEIGHTS / target)
        self.files.clear()
        write_manifest(manifest, path)
        kept = {e["file"] for e in manifest["weights"]}
        for name in self.superseded:
            if name not in kept:
                (WEIGHTS / name).unlink(missing_ok=True)
                print(f"removed {name} (superseded)")

    def discard(self) -> None:
        for staged in self.files.values():
            staged.unlink(missing_ok=True)


def _entry(model, target: str, role: str, trained: dict, results: dict, file: Path) -> dict:
    info = model.weights_info
    entry = {"name": Path(target).stem, "file": target, "preset": model.config.name, "role": role,
             "sha256": sha256_file(file), "trained": trained or info.trained,
             "results": results}
    if role == "codec":
        entry["model_id"] = f"{model.model_id:04x}"
        entry["rate_levels"] = model.config.rate_levels
    return entry


def _put(entries: list[dict], entry: dict, staging: Staging) -> None:
    """Add `entry`, replacing the one of its name or of its preset and role (the old file is
    deleted once the manifest no longer names it)."""
    for old in list(entries):
        if old["name"] == entry["name"] or (old["preset"], old["role"]) == (entry["preset"],
                                                                            entry["role"]):
            entries.remove(old)
            if old["file"] != entry["file"]:
                staging.superseded.append(old["file"])
    entries.append(entry)


def _accuracy(verdict: dict) -> str:
    """A verdict's top-1 difference at equal bpp, as the gate's verdict lines print it."""
    if verdict["bd_top1_points"] is None:
        return ""
    return f", top-1 at equal bpp {top1_gap_text(verdict)}"


def _label(i: int, count: int) -> str:
    return "candidate" if count == 1 else f"candidate {i + 1}"


def as_shipped(model: nn.Module) -> nn.Module:
    """`model` as users would load it once shipped: through a float16 checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp) / "m.safetensors", model.weights_info, half=True)
        return load_checkpoint(Path(tmp) / "m.safetensors")


def gate(models: list[nn.Module], sources: list[str], args: argparse.Namespace
         ) -> list[tuple[bool, dict]]:
    """Evaluate codecs of one preset as they would ship (float16) against the preset's
    shipped codec on each --only-if-better data set; print the curves and each verdict. A
    codec passes when it is no worse on any data set and better on one. Of several (a
    trial's arms) at most one ships: a passing arm that the gate finds worse than another
    passing arm on some data set drops out, and of those left (all the passing ones where
    each is worse than another somewhere) the one with the lowest mean BD-rate against the
    shipped file ships. Returns (ships, manifest results: one key per data set) per codec."""
    name = models[0].config.name
    candidates = [as_shipped(model) for model in models]
    shipped = api.load(name)
    n = len(models)
    results: list[dict] = [{} for _ in models]
    against: dict[tuple[int, int], list[dict]] = {}     # (i, j): arm i's verdicts against j's
    for source in args.only_if_better:
        data = eval_data(source, args.split, limit=args.limit)
        resolution = 100 / data.count          # the rule for rows without per-image records
        old = curve_rows(shipped, data)
        new = [curve_rows(c, data) for c in candidates]
        print(f"{name} on {data.count} images of {data.name}:")
        labels = ["shipped"] + [_label(i, n) for i in range(n)]
        print("\n".join(curves_table(dict(zip(labels, [old, *new])))))
        for i, rows in enumerate(new):
            verdict = curve_verdict(old, rows, top1_resolution=resolution)
            accuracy = _accuracy(verdict)
            who = "" if n == 1 else f"{_label(i, n)} ({sources[i]}): "
            print(f"{who}BD-rate (PSNR) {verdict['bd_rate_psnr']:+.2f}%{accuracy}")
            results[i][data.name] = {f"q{r['quality']:g}": {
                "bpp": round(r["bpp"], 4), "psnr": round(r["psnr"], 2),
                **({"top1": round(r["top1"], 4)} if r["top1"] is not None else {})}
                for r in rows}
            results[i][data.name]["vs_previous"] = verdict
        for i in range(n):                   # a trial's arms against each other
            for j in range(n):
                if i == j:
                    continue
                v = curve_verdict(new[j], new[i], top1_resolution=resolution)
                against.setdefault((i, j), []).append(v)
                if i > j:
                    print(f"{_label(i, n)} against {_label(j, n)}: BD-rate (PSNR) "
                          f"{v['bd_rate_psnr']:+.2f}%{_accuracy(v)}")
    verdicts = [[r["vs_previous"] for r in rows.values()] for rows in results]
    passing = [i for i in range(n) if not any(v["worse"] for v in verdicts[i])
               and any(v["better"] for v in verdicts[i])]
    beaten = {i for i in passing for j in passing
              if j != i and any(v["worse"] for v in against[i, j])}
    left = [i for i in passing if i not in beaten] or passing
    chosen = min(left, key=lambda i: sum(v["bd_rate_psnr"] for v in verdicts[i]), default=None)
    for i in range(n):
        who = name if n == 1 else f"{name} {_label(i, n)} ({sources[i]})"
        print(f"{who}: " + ("better, shipping" if i == chosen else
                            f"better, but {_label(chosen, n)} is the better arm: not shipped"
                            if i in passing else "not better, not shipped"))
    return [(i == chosen, results[i]) for i in range(n)]


def classifier_gate(model: nn.Module, args: argparse.Namespace) -> tuple[bool, dict]:
    """A classifier (--model) as it would ship (float16) against its preset's shipped one on
    each labelled --only-if-better data set: top-1 on the clean images, the difference
    counted when its 95% paired-bootstrap interval leaves out zero. It ships when no worse on
    any and better on one (or where none is shipped yet). Returns (ships, manifest results:
    one key per data set)."""
    name = model.config.name
    candidate = as_shipped(model)
    # nothing to beat only where none is shipped: a shipped file that fails its checks is
    # an error here, not a free pass
    shipped = api.load(name) if find_weights(name, "classifier") else None
    results, verdicts = {}, []
    for source in args.only_if_better:
        data = eval_data(source, args.split, limit=args.limit)
        if data.split is None:
            continue                          # a folder without labels says nothing of top-1
        new = evaluate(Uncompressed(candidate, name), data.batches())
        row = {"top1": round(new.top1, 4)}
        if shipped is not None:
            old = evaluate(Uncompressed(shipped, name), data.batches())
            low, high = paired_accuracy_interval(old.per_image.correct, new.per_image.correct)
            verdict = {"top1_previous": round(old.top1, 4),
                       "top1_points": round(100 * (new.top1 - old.top1), 4),
                       "top1_interval": [round(low, 4), round(high, 4)],
                       "better": low > 0, "worse": high < 0}
            verdicts.append(verdict)
            row["vs_previous"] = verdict
            print(f"{name} on {data.count} images of {data.name}: top-1 {old.top1:.4f} -> "
                  f"{new.top1:.4f} ({verdict['top1_points']:+.2f} points, 95% paired "
                  f"interval [{low:+.2f}, {high:+.2f}])")
        results[data.name] = row
    if not results:
        raise SystemExit(f"--model {name}: --only-if-better needs a labelled data set to "
                         "compare classifiers on")
    ships = shipped is None or (not any(v["worse"] for v in verdicts)
                                and any(v["better"] for v in verdicts))
    print(f"{name}: " + ("better, shipping" if ships else "not better, not shipped"))
    return ships, results


def _load_codec(src: str) -> nn.Module:
    model = load_checkpoint(src)
    if not model.is_updated or not model.config.rate_levels:
        raise SystemExit(f"{src}: a shipped codec needs coding tables (a step-2 export) and "
                         f"variable rate (rate_levels >= 2)")
    return model


def _verdicts(args: argparse.Namespace) -> dict[str, tuple[nn.Module, bool, dict]]:
    """Each --codec's model, whether it ships, and its manifest results: --only-if-better's
    evaluation (the slow part, done before the manifest is read), one gate per preset, else
    --results (and then one codec a preset)."""
    models = {src: _load_codec(src) for src in args.codec}
    presets: dict[str, list[str]] = {}
    for src, model in models.items():
        presets.setdefault(model.config.name, []).append(src)
    out = {}
    for preset, sources in presets.items():
        if len(sources) > 1 and not args.only_if_better:
            raise SystemExit(f"{', '.join(sources)} are all {preset}: one ships, so name the "
                             "held-out data that chooses it (--only-if-better DATA)")
        outcomes = (gate([models[s] for s in sources], sources, args) if args.only_if_better
                    else [(True, args.results)])
        out.update({s: (models[s], ships, results)
                    for s, (ships, results) in zip(sources, outcomes)})
    return out


def _lock_file(manifest: Path) -> Path:
    key = hashlib.sha256(str(manifest.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tica-manifest-{key}.lock"


@contextlib.contextmanager
def _manifest_lock(path: Path):
    """One shipping at a time edits the manifest (read, change, write): two run side by side
    (e.g. one codec's evaluation finishing while another's writes) would otherwise drop
    each other's entries. An exclusive lock on a file of the temporary directory."""
    with open(_lock_file(path), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ship_codec(model: nn.Module, args: argparse.Namespace, entries: list[dict], images: list,
                results: dict, source: str, staging: Staging) -> None:
    """Ship one --codec's model: float16 into the package (staged), its entry into
    `entries`."""
    info = model.weights_info
    target = f"{model.config.name}.safetensors"
    trained = _trained(model.config.name, args, entries, source)
    if trained:
        info = replace(info, trained=trained)
    file = staging.path(target)
    save_checkpoint(model, file, info, half=True)
    shipped = load_checkpoint(file)                    # the id of what users will load
    _put(entries, _entry(shipped, target, "codec", trained, results, file), staging)
    print(f"{target}: {file.stat().st_size / 1e6:.1f} MB, id {shipped.model_id:04x}")
    if args.check:
        full, half = (evaluate(LearnedPipeline(m), images) for m in (model, shipped))
        print(f"  float32: {full.bpp:.4f} bpp, {full.psnr_per_image:.3f} dB; float16: "
              f"{half.bpp:.4f} bpp ({100 * (half.bpp / full.bpp - 1):+.2f}%), "
              f"{half.psnr_per_image:.3f} dB ({half.psnr_per_image - full.psnr_per_image:+.3f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", action="append", default=[],
                        help="a variable-rate step-2 export (repeatable)")
    parser.add_argument("--step1", help="step-1 export")
    parser.add_argument("--model", action="append", default=[],
                        help="a model with no codec, e.g. a classifier baseline (repeatable)")
    parser.add_argument("--trained", type=json.loads, default={},
                        help="JSON provenance for these artifacts: where, minutes, steps, images")
    parser.add_argument("--plan-status", type=lambda p: json.loads(Path(p).read_text()),
                        action="append", default=[], metavar="PLAN_JSON",
                        help="the plan.json of the plan that trained them: their provenance, "
                        "accumulated over leases (repeatable: plans that trained on from one "
                        "another's export, in order)")
    parser.add_argument("--lease", type=lambda p: json.loads(Path(p).read_text()),
                        action="append", default=[], metavar="LEASE_JSON",
                        help="a lease's provenance that is not a plan's (e.g. "
                        "tica_tools.refit's JSON), added to the shipped file's history "
                        "(repeatable: one per --codec, matched by the run the lease names)")
    parser.add_argument("--results", type=json.loads, default={},
                        help="JSON headline numbers for these artifacts (e.g. from make report)")
    parser.add_argument("--check", metavar="DIR", help="compare float16 with float32 on these images")
    parser.add_argument("--rehash", action="store_true", help="refresh every entry's sha256 and id")
    parser.add_argument("--only-if-better", metavar="DATA", action="append", default=[],
                        help="ship a codec only if its curve beats the shipped one's on DATA's "
                        "held-out split or folder of images (repeatable: no worse on any, "
                        "better on one)")
    parser.add_argument("--split", help="with --only-if-better: the split (default: held out)")
    parser.add_argument("--limit", type=int, help="with --only-if-better: a class-balanced "
                        "subset (a folder of images: its first N)")
    args = parser.parse_args(argv)
    for lease in args.lease:          # refused before the gate runs, not after it
        _committed(lease)
    path = WEIGHTS / MANIFEST
    _check_histories(args, manifest_json(path)["weights"])
    images = ([(read_image(f)[None], None) for f in sorted(Path(args.check).glob("*.png"))]
              if args.check else [])
    verdicts = _verdicts(args)
    classifiers = ({src: classifier_gate(load_checkpoint(src), args) for src in args.model}
                   if args.only_if_better else {})
    shipping = {m.config.name for m, ships, _ in verdicts.values() if ships}
    kept_out = (bool({m.config.name for m, _, _ in verdicts.values()} - shipping)
                or any(not ships for ships, _ in classifiers.values()))
    with _manifest_lock(path):
        _edit(path, args, verdicts, images, classifiers)
    return 3 if kept_out else 0


def _edit(path: Path, args: argparse.Namespace, verdicts: dict, images: list,
          classifiers: dict) -> None:
    """Read the manifest, ship what passed into it and the package, write it back."""
    manifest = manifest_json(path)
    entries = manifest["weights"]
    staging = Staging()
    try:
        _stage(args, entries, verdicts, images, classifiers, staging)
        entries.sort(key=lambda e: (e["preset"], e["role"]))
        staging.commit(manifest, path)
    finally:
        staging.discard()


def _stage(args: argparse.Namespace, entries: list[dict], verdicts: dict, images: list,
           classifiers: dict, staging: Staging) -> None:
    """Write what ships under staged names and its entries into `entries`."""
    for source, (model, ships, results) in verdicts.items():
        if ships:
            _ship_codec(model, args, entries, images, results, source, staging)
    for role, sources in (("classifier", args.model), ("step1", [args.step1] if args.step1 else [])):
        for src in sources:
            model, results = load_checkpoint(src), args.results
            target = f"{model.config.name}{'-step1' if role == 'step1' else ''}.safetensors"
            if role == "classifier" and src in classifiers:
                ships, results = classifiers[src]
                if not ships:
                    continue
            trained = _trained(Path(target).stem, args, entries, src)
            info = replace(model.weights_info, **({"trained": trained} if trained else {}))
            file = staging.path(target)
            save_checkpoint(model, file, info, half=True)
            _put(entries, _entry(load_checkpoint(file), target, role, trained, results, file),
                 staging)
            print(f"{target}: {file.stat().st_size / 1e6:.1f} MB")
    if args.rehash:
        for e in entries:
            e["sha256"] = sha256_file(staging.where(e["file"]))
            if e["role"] == "codec":
                e["model_id"] = f"{load_checkpoint(staging.where(e['file'])).model_id:04x}"


if __name__ == "__main__":
    sys.exit(main())
