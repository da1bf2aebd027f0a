#!/usr/bin/env bash
# Reproduce the shipped tica-cifar weights: step 1 once, then ONE variable-rate model (gain
# units, 8 standard rate points) trained on every rate at once, then ship it. Times on the
# 2-core development CPU are in the README; `tica train --plan scripts/plans/gpu.json` is the
# one-GPU version. Runs are resumable: rerun the script after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TICA_DATA:-../shared/data}/cifar10-jpeg.tar.gz
TICA=${TICA:-.venv/bin/tica}
RUNS=${RUNS:-${TICA_CACHE:-$HOME/.cache/tica}/runs}

$TICA train --model tica-cifar --step 1 --data "$DATA" --run-dir "$RUNS/tica-cifar-step1" \
    --epochs 5 --batch-size 128 --lr 1e-3 --weight-decay 0.05 --warmup-steps 300 --resume

# Step 2: every image of a batch draws one of 8 standard rate points; point i has
# alpha = 0.3 * 100^(i/7) and beta = 1e-4 * 300^(i/7) (CE per image, MSE on 0-255 per pixel,
# rate in bits per pixel). 4 epochs: the design of docs/design.md learns fast enough that the
# shipped model (4) beats the previous design after 10. VR: what every variable-rate run shares.
VR=(--data "$DATA" --alpha 0.3 --alpha-max 30 --beta 0.0001 --beta-max 0.03 --batch-size 128
    --optimizer adam --weight-decay 0 --checkpoint-every 100 --resume)
$TICA train --step 2 --init "$RUNS/tica-cifar-step1/model.safetensors" --set rate_levels=8 \
    --run-dir "$RUNS/tica-cifar-vr" "${VR[@]}" --epochs 4 --lr 3e-4 --hyper-lr 1e-2 \
    --rate-warmup-steps 150 --warmup-steps 50

# What variable rate costs: a fixed-rate model at standard point 6's weights, same recipe and
# steps, except that h_s sees round(z) in training (hyper_proxy=ste): with the noise proxy this
# fixed-rate model's z collapses and its real streams cost 2.4x its estimate (docs/design.md).
$TICA train --step 2 --init "$RUNS/tica-cifar-step1/model.safetensors" --data "$DATA" \
    --run-dir "$RUNS/tica-cifar-fixed-q6" --quality 6 --alpha 8.048087385839176 \
    --beta 0.0058799322871069945 --epochs 4 --batch-size 128 --optimizer adam --lr 3e-4 \
    --hyper-lr 1e-2 --rate-warmup-steps 150 --weight-decay 0 --warmup-steps 50 \
    --checkpoint-every 100 --resume --set hyper_proxy=ste

# Then the shipped model trains on from there, the same recipe annealed to a 105-minute
# deadline on two threads (the 4-epoch model above stays the fixed-rate model's same-budget
# twin in the report; the shipped run started from its float16 copy, as shipped then). With
# the noise proxy for z this longer run's h_s drifted: real streams at q1 cost 4x the
# estimate (docs/design.md, hyper_proxy), so 18 minutes with hyper_proxy=ste realign it. A
# new run would use hyper_proxy=ste throughout, as the device plan does.
$TICA train --step 2 --init "$RUNS/tica-cifar-vr/model.safetensors" \
    --run-dir "$RUNS/tica-cifar-vr2" "${VR[@]}" --epochs 30 --deadline-s 6300 \
    --schedule-by-deadline --lr 3e-4 --hyper-lr 1e-2 --warmup-steps 50 --eval-images 0 \
    --no-progress
$TICA train --step 2 --init "$RUNS/tica-cifar-vr2/model.safetensors" --set hyper_proxy=ste \
    --run-dir "$RUNS/tica-cifar-vr2-ste" "${VR[@]}" --epochs 10 --deadline-s 1080 \
    --schedule-by-deadline --lr 1e-4 --hyper-lr 1e-3 --warmup-steps 20 --eval-images 0 \
    --no-progress

# Then on again with hyper_proxy=ste throughout, annealed to a 115-minute deadline on two
# threads, scored on 1,000 held-out test images (estimated bpp, eval mode) at every epoch end.
$TICA train --step 2 --init "$RUNS/tica-cifar-vr2-ste/model.safetensors" --set hyper_proxy=ste \
    --run-dir "$RUNS/tica-cifar-vr3" "${VR[@]}" --epochs 40 --deadline-s 6900 \
    --schedule-by-deadline --lr 2e-4 --hyper-lr 1e-3 --warmup-steps 50 --eval-images 1000 \
    --no-progress

.venv/bin/python scripts/ship_weights.py --step1 "$RUNS/tica-cifar-step1/model.safetensors" \
    --codec "$RUNS/tica-cifar-vr3/model.safetensors"
