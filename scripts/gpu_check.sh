#!/usr/bin/env bash
# The server on a GPU, checked in one short command (about 3 minutes): the throughput
# benchmark on the GPU (benchmarks/throughput.py --device cuda), and streams written on this
# CPU decoded there, and the GPU's own streams brought back to decode here
# (benchmarks/cross_device.py).
#
#   1. HERE:   bash scripts/gpu_check.sh prepare
#      Writes .check/ (ignored through .git/info/exclude): 1,000 CIFAR-10 test images,
#      256 Imagenette validation images as their JPEG files, and this CPU's streams of them
#      (tica-cifar q4, tica-photo q2); takes the shipped weights out of git's index (as
#      scripts/device_plan.sh light does) so that only the two the check needs travel, as
#      carried paths. Until step 3, `git status` shows the weights as deleted: commit nothing.
#   2. ON THE GPU MACHINE, one command (under 4 minutes), in a copy of this checkout with
#      .check/ and the two weights files src/tica/weights/tica-{cifar,photo}.safetensors:
#        OUT=RESULTS bash scripts/gpu_check.sh run
#      Builds the coder's kernel for that machine's Python, then writes into $OUT:
#      from_cpu.npz, from_gpu.npz, gpu_cifar.tica, gpu_photos.tica, throughput_cuda.{md,json}.
#   3. HERE:   bash scripts/gpu_check.sh restore
#              .venv/bin/python benchmarks/cross_device.py compare --gpu RESULTS
#      (RESULTS: the folder $OUT was, brought back here), and copy RESULTS/throughput_cuda.* into
#      docs/benchmarks/.
#
#   bash scripts/gpu_check.sh smoke    steps 1-3 here on the CPU, small, into /tmp/gpu-check
#                                      (or $GPU_CHECK_DIR)
#                                      (leaves the weights and docs/ alone)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

run_check() {      # CHECK: the prepared folder, OUT: where results go
    export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tools${PYTHONPATH:+:$PYTHONPATH}
    [ -f "$CHECK/images.npz" ] || { echo "gpu_check: no $CHECK: run 'prepare' first" >&2; exit 1; }
    "$PY3" scripts/build_kernel.py
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY3" benchmarks/cross_device.py run --dir "$CHECK" --out "$OUT" --device "$DEVICE"
    # shellcheck disable=SC2086
    "$PY3" benchmarks/throughput.py --device "$DEVICE" --images-from "$CHECK/images.npz" \
        --out "$OUT" $ARGS
}

case "${1:-}" in
    prepare)
        bash scripts/device_plan.sh light
        grep -qxF /.check/ "$(git rev-parse --git-path info/exclude)" ||
            echo /.check/ >>"$(git rev-parse --git-path info/exclude)"
        "$PY" benchmarks/cross_device.py prepare --dir .check
        du -sh .check
        ;;
    restore)
        bash scripts/device_plan.sh restore
        ;;
    run)
        : "${OUT:?set OUT to the folder the results should go to}"
        CHECK=.check PY3=python3 DEVICE=cuda ARGS="" run_check
        ;;
    smoke)
        dir=${GPU_CHECK_DIR:-/tmp/gpu-check}
        rm -rf "$dir"
        mkdir -p "$dir/out"
        "$PY" benchmarks/cross_device.py prepare --dir "$dir/check" --cifar 64 --photos 4
        CHECK=$dir/check OUT=$dir/out PY3=$PY DEVICE=cpu ARGS="--repeats 1 --images 64 --photos 4" \
            run_check
        "$PY" benchmarks/cross_device.py compare --dir "$dir/check" --gpu "$dir/out" --docs "$dir"
        ;;
    *)
        sed -n '2,25p' "$0"
        exit 2
        ;;
esac
