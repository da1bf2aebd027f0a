#!/usr/bin/env bash
# Train every shipped model in ONE command on a borrowed H100/H200 (the device tool), with
# scripts/plans/gpu.json: tica-cifar step 1 -> step 2 (variable rate, 8 points) and its
# no-FAM ablation, vit-pixel-cifar, hyperprior-cifar (variable rate), tica-photo step 1 on
# the photographs -> step 2 on Imagenette (variable rate, classifying) and vit-pixel-photo
# beside it, side by side, every run done by 470 s.
#
#   1. HERE, before the device call:   bash scripts/device_plan.sh prepare
#      Copies the data into .devdata/ (ignored through .git/info/exclude; ../shared does not
#      travel): the CIFAR-10 archive as is (18 MB), the 40 photographs halved, WebP quality
#      90 (3 MiB), Imagenette's training split at 160x160, WebP quality 75 (35 MiB). Wheels
#      put in .whl/ are installed there (none is needed now). Checks the plan (python -m tica_tools.plan run ... --dry-run: configs, dependencies,
#      export sizes against the 8-file / 16 MiB / 64 MiB return limits), takes the shipped
#      weights (57 MB, which the plan never reads: it trains from scratch) out of git's index
#      and into .git/info/exclude so that they stay here, and checks that the working tree
#      plus .devdata and .whl fit the tool's 64 MiB (~57 MiB); exits non-zero if not.
#      Until step 3's restore, `git status` shows the weights as deleted: commit nothing.
#
#   2. THE DEVICE TOOL, one call, exactly:
#        run(command="bash scripts/device_plan.sh run", carry=[".devdata", ".whl"], timeout_s=590)
#      The plan's clock starts ~10 s in (wheel install, python start); runs stop, export and
#      exit by 470 s of it, SIGTERM at 515 s, SIGKILL at 525 s; the command ends by ~540 s.
#      Every 90 s and at the end each published run's weights are copied into $OUT: float16,
#      coding-ready (update() done) safetensors, tica-photo split in two parts (16 MiB per
#      file), tica-cifar + hyperprior-cifar in pack1.tar and the two pixel ViTs in pack2.tar
#      (alone they would be 9 files), plus plan.json (each run's state, steps, images/s,
#      minutes, eval, sha256 of each file): 7 files, ~58 MiB. A command cut short still
#      returns the last published copies, each file whole (written atomically).
#      Call give_back when it returns: nothing else needs the machine.
#
#   3. HERE, after:  bash scripts/device_plan.sh restore   (the weights back in git's index)
#      then  .venv/bin/python scripts/join_parts.py FILES_AT ~/.cache/tica/runs/gpu-plan
#      (FILES_AT: the folder the tool names; the folder is $TICA_CACHE/runs/gpu-plan, where
#      the report reads the FAM ablation) rejoins the parts, checks each file against
#      plan.json's sha256 and loads every model with tica.load. Evaluate (tica eval
#      --weights), then ship what is better: scripts/ship_weights.py --trained '{...}'.
#
#   With device time to spare, first: run(command="bash scripts/device_plan.sh run
#   scripts/plans/gpu-check.json", ...) (every run 40 steps, ~1 min + the machine's start):
#   it caught the one CUDA-only bug so far before the full plan was spent.
#
#   bash scripts/device_plan.sh smoke [DIR]   the same plan's runs on this CPU, tiny (~1 min)
#   bash scripts/device_plan.sh check         what a device call would send, against 64 MiB
#   bash scripts/device_plan.sh light|restore  the shipped weights out of / back into the index
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${TICA_DATA:-../shared/data}

exclude() {        # keep a folder out of git, so it travels only when carried
    local file
    file=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$file")"
    grep -qxF "$1" "$file" 2>/dev/null || echo "$1" >>"$file"
}

WEIGHTS=src/tica/weights

light() {          # the shipped weights stay here: untracked and ignored, they do not travel
    exclude "/$WEIGHTS/*.safetensors"
    git rm -q --cached --ignore-unmatch -- "$WEIGHTS"/*.safetensors
    echo "device_plan: the shipped weights are out of git's index until" \
         "'bash scripts/device_plan.sh restore': commit nothing before it" >&2
}

restore() {        # after the device call: the weights back in the index, nothing else touched
    local file
    file=$(git rev-parse --git-path info/exclude)
    git reset -q HEAD -- "$WEIGHTS"
    if [ -f "$file" ]; then
        grep -vxF "/$WEIGHTS/*.safetensors" "$file" >"$file.tmp" || true
        mv "$file.tmp" "$file"
    fi
    git status --short -- "$WEIGHTS"
}

prepare() {
    exclude /.devdata/
    exclude /.whl/
    mkdir -p .devdata .whl
    cmp -s "$DATA/cifar10-jpeg.tar.gz" .devdata/cifar10-jpeg.tar.gz ||
        cp -f "$DATA/cifar10-jpeg.tar.gz" .devdata/cifar10-jpeg.tar.gz
    if [ ! -d .devdata/photos ]; then
        "$PY" -m tica_tools.plan pack-photos "$DATA/photos" .devdata/photos.tmp 2 90
        mv .devdata/photos.tmp .devdata/photos
    fi
    if [ ! -d .devdata/imagenette ]; then
        rm -rf .devdata/imagenette.tmp
        "$PY" -m tica_tools.plan pack-split "$DATA/imagenette-224.tar.gz" .devdata/imagenette.tmp 160
        mv .devdata/imagenette.tmp .devdata/imagenette
    fi
    # the commit the plan trains at, for the weights' provenance (the history does not travel)
    TICA_COMMIT= "$PY" -c "from tica_tools.plan.runner import source_commit as c; print(c() or '')" \
        > .devdata/COMMIT
    OMP_NUM_THREADS=1 "$PY" -m tica_tools.plan run scripts/plans/gpu.json --dry-run \
        --data-root .devdata --runs-dir /tmp/tica-runs
    light
    check
}

check() {
    "$PY" -m tica_tools.plan travel-size .devdata .whl || {
        echo "device_plan: what travels is over the device tool's 64 MiB: the call would be" \
             "refused. Make the working tree smaller (the biggest folders are listed above)." >&2
        return 3
    }
}

run() {            # on the device machine
    : "${OUT:?run this through the device tool: \$OUT is where the weights go}"
    if [ ! -f .devdata/cifar10-jpeg.tar.gz ] || [ ! -d .devdata/photos ] ||
       [ ! -d .devdata/imagenette ]; then
        echo "device_plan: no .devdata here: run 'bash scripts/device_plan.sh prepare' first," \
             "and carry .devdata" >&2
        exit 1
    fi
    export PYTHONUNBUFFERED=1 TICA_CACHE=${TICA_CACHE:-/tmp/tica-cache}
    TICA_COMMIT=$(cat .devdata/COMMIT 2>/dev/null || true)
    export TICA_COMMIT
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH=$PWD/src:$PWD/tools${PYTHONPATH:+:$PYTHONPATH}
    python3 scripts/build_kernel.py || exit 1       # the entropy coder, for this Python
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import torch, safetensors, PIL; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'cpus', __import__('os').cpu_count())"
    exec python3 -m tica_tools.plan run "${1:-scripts/plans/gpu.json}" --out "$OUT" \
        --data-root .devdata --runs-dir /tmp/tica-runs
}

smoke() {
    local dir=${1:-runs/plan-smoke}
    OMP_NUM_THREADS=1 "$PY" -m tica_tools.plan run scripts/plans/smoke.json --out "$dir/out" \
        --runs-dir "$dir/runs" --fresh
}

case "${1:-}" in
    prepare) prepare ;;
    check) check ;;
    light) light ;;
    restore) restore ;;
    run) shift; run "$@" ;;
    smoke) shift; smoke "$@" ;;
    *) sed -n '2,44p' "$0"; exit 2 ;;
esac
