#!/usr/bin/env bash
# Train the shipped models on a borrowed GPU machine: a remote command runner that is sent
# the working tree (tracked files, plus the ignored paths a call names: at most 64 MiB in
# all), runs one command in it with $OUT an empty folder, and returns what the command wrote
# there (at most 8 files of 16 MiB). Spot instances and batch schedulers have the same shape.
#
# COMPOUNDING, the default: every shipped model trains on from its shipped weights, so each
# lease adds to the last (scripts/plans/gpu-continue-{cifar,photo}.json). Their data and
# weights do not fit one 64 MiB send, so they are two commands in one lease:
#
#   bash scripts/device_plan.sh continue cifar   here: writes .devdata (the CIFAR-10 archive,
#       .devdata/COMMIT), checks the plan, leaves only the weights it starts from in git's
#       index, checks the send against 64 MiB, and prints the remote call:
#       command "bash scripts/device_plan.sh run scripts/plans/gpu-continue-cifar.json",
#       sending .devdata/cifar10-jpeg.tar.gz and .devdata/COMMIT, a limit of 330 s
#   bash scripts/device_plan.sh continue photo   the same for tica-photo and vit-pixel-photo
#       (Imagenette at 160x160 in .devdata/imagenette, ~35 MiB); "continue fidelity" prepares
#       the photo-fidelity trial (scripts/plans/gpu-photo-fidelity.json)
#   bash scripts/device_plan.sh restore          here, after: the weights back in git's index
#   then, for each command's returned folder RESULTS:
#       .venv/bin/python scripts/join_parts.py RESULTS runs/continue-PART
#       (rejoins parts, checks every file against plan.json's sha256, loads each model),
#       and ship only what beats the shipped model on held-out data, every rate point:
#       scripts/ship_weights.py --codec ... --model ... --plan-status RESULTS/plan.json
#       --only-if-better DATA (the manifest accumulates each lease: plan, commit, minutes,
#       images, the plan's FLOP rate).
#
# STARTING OVER: scripts/plans/gpu.json trains every model from scratch in one command
# (tica-cifar step 1 -> step 2 and its no-FAM ablation, vit-pixel-cifar, hyperprior-cifar,
# tica-photo step 1 on the photographs -> step 2 on Imagenette, vit-pixel-photo), every run
# done by 470 s:
#   bash scripts/device_plan.sh prepare   .devdata (the CIFAR-10 archive, 18 MB; the 40
#       photographs halved, WebP quality 90, 3 MiB; Imagenette's training split at 160x160,
#       WebP quality 75, 35 MiB), the plan checked against the 8-file / 16 MiB / 64 MiB
#       limits, every shipped weight file out of git's index (the plan reads none)
#   remote: "bash scripts/device_plan.sh run", sending the folders 'prepare' names (the
#       three data sets, .devdata/COMMIT and .whl), a limit of 590 s;
#       the plan's clock starts ~10 s in; runs stop, export and exit by 470 s, SIGTERM at
#       515 s, SIGKILL at 525 s. Every 90 s and at the end each published run's float16,
#       coding-ready weights are copied into $OUT (tica-photo in two parts, the CIFAR codecs
#       and the pixel ViTs packed in two tars) with plan.json: 7 files, ~58 MiB. A command
#       cut short still returns the last published copies, each file whole.
#   bash scripts/device_plan.sh restore, then join_parts.py into $TICA_CACHE/runs/gpu-plan
#       (where the report reads the FAM ablation), evaluate, ship what is better.
#   With time to spare, first "run scripts/plans/gpu-check.json" (every run 40 steps).
#
# While the weights are out of the index, `git status` shows them deleted: commit nothing
# before 'restore'. Wheels put in .whl/ are installed on the remote machine (none needed).
#   bash scripts/device_plan.sh smoke [DIR]    the scratch plan's runs on this CPU, tiny
#   bash scripts/device_plan.sh check          what the scratch call would send, against 64 MiB
#   bash scripts/device_plan.sh light|light-for PLAN|restore   weights out of / into the index
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

light_for() {      # only the weights PLAN starts from travel (init "shipped" / "step1")
    local needed
    needed=$("$PY" -m tica_tools.plan shipped-files "$1")
    light
    # shellcheck disable=SC2086
    [ -z "$needed" ] || git reset -q HEAD -- $needed
}

continue_for() {   # here, before each of the two continuation calls: PART is cifar or photo
    local plan=scripts/plans/gpu-continue-$1.json carry
    case "$1" in
        cifar) carry=.devdata/cifar10-jpeg.tar.gz ;;
        photo) carry=.devdata/imagenette ;;
        fidelity) carry=.devdata/photos-lossless; plan=scripts/plans/gpu-photo-fidelity.json ;;
        *) echo "device_plan: continue cifar|photo|fidelity" >&2; return 2 ;;
    esac
    prepare_data "$carry"
    OMP_NUM_THREADS=1 "$PY" -m tica_tools.plan run "$plan" --dry-run --data-root .devdata \
        --runs-dir /tmp/tica-runs
    light_for "$plan"              # what is sent is measured without the weights left out
    "$PY" -m tica_tools.plan travel-size "$carry" .devdata/COMMIT || { restore; return 3; }
    echo "device_plan: now the remote command \"bash scripts/device_plan.sh run $plan\"," \
         "sending $carry and .devdata/COMMIT, a limit of 330 s; then 'restore' here"
}

prepare_data() {   # .devdata: the commit the plans train at, and the data named (each built once)
    local need
    exclude /.devdata/
    exclude /.whl/
    mkdir -p .devdata .whl
    # the commit the plans train at, for the weights' provenance (the history does not travel)
    TICA_COMMIT= "$PY" -c "from tica_tools.plan.runner import source_commit as c; print(c() or '')" \
        > .devdata/COMMIT
    if grep -q -- '-dirty$' .devdata/COMMIT; then   # ship_weights would refuse what it trains
        echo "device_plan: the working tree has uncommitted changes (git status): commit" \
             "them first, so that the weights name the code that trained them" >&2
        return 4
    fi
    for need in "$@"; do
        case "$need" in
        .devdata/cifar10-jpeg.tar.gz)
            cmp -s "$DATA/cifar10-jpeg.tar.gz" "$need" ||
                cp -f "$DATA/cifar10-jpeg.tar.gz" "$need" || return 1 ;;
        .devdata/photos)                  # halved, WebP quality 90
            if [ ! -d "$need" ]; then
                "$PY" -m tica_tools.plan pack-photos "$DATA/photos" "$need.tmp" 2 90 || return 1
                mv "$need.tmp" "$need"
            fi ;;
        .devdata/photos-lossless)         # the photo-fidelity trial's crops
            if [ ! -d "$need" ]; then
                "$PY" -m tica_tools.plan pack-photos "$DATA/photos" "$need.tmp" 2 || return 1
                mv "$need.tmp" "$need"
            fi ;;
        .devdata/imagenette)              # the training split at 160x160, WebP quality 75
            if [ ! -d "$need" ]; then
                rm -rf "$need.tmp"
                "$PY" -m tica_tools.plan pack-split "$DATA/imagenette-224.tar.gz" "$need.tmp" \
                    160 || return 1
                mv "$need.tmp" "$need"
            fi ;;
        *) echo "device_plan: no recipe for $need" >&2; return 2 ;;
        esac
    done
}

SCRATCH_CARRY_DATA=".devdata/cifar10-jpeg.tar.gz .devdata/photos .devdata/imagenette"
SCRATCH_CARRY="$SCRATCH_CARRY_DATA .devdata/COMMIT .whl"

prepare() {
    # shellcheck disable=SC2086
    prepare_data $SCRATCH_CARRY_DATA
    OMP_NUM_THREADS=1 "$PY" -m tica_tools.plan run scripts/plans/gpu.json --dry-run \
        --data-root .devdata --runs-dir /tmp/tica-runs
    light
    check || { restore; return 3; }
    echo "device_plan: now the remote command \"bash scripts/device_plan.sh run\", sending" \
         "$SCRATCH_CARRY, a limit of 590 s; then 'restore' here"
}

check() {          # what the scratch plan's call sends (the tree and its carried paths)
    # shellcheck disable=SC2086
    "$PY" -m tica_tools.plan travel-size $SCRATCH_CARRY || {
        echo "device_plan: what travels is over the 64 MiB a call may send: it would be" \
             "refused. Make the working tree smaller (the biggest folders are listed above)." >&2
        return 3
    }
}

run() {            # on the device machine
    : "${OUT:?run this on the remote machine: \$OUT is where the weights go}"
    if [ ! -d .devdata ]; then
        echo "device_plan: no .devdata here: run 'bash scripts/device_plan.sh prepare' (or" \
             "'continue cifar|photo') first, and carry what it names" >&2
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
    light-for) shift; light_for "$@" ;;
    continue) shift; continue_for "$@" ;;
    restore) restore ;;
    run) shift; run "$@" ;;
    smoke) shift; smoke "$@" ;;
    *) sed -n '2,50p' "$0"; exit 2 ;;
esac
