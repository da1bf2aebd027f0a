#!/usr/bin/env bash
# tica-photo, the natural-image codec evaluated on Kodak: alpha = 0 (photos have no labels),
# trained on random 128x128 crops of ../shared/data/photos with the paper's two steps:
# step 1 trains g_a, the ViT blocks, FAM and g_s without quantization or entropy model (MSE
# only); step 2 rescales the latent (so rounding keeps its information), adds the hyperprior
# and trains each rate point from the step-1 network for the same number of steps.
#   scripts/train_photo.sh          # with FAM (the shipped weights)
#   scripts/train_photo.sh nofam    # the ablation: g_s reads y_hat, no feature aggregation
# Training from scratch on the full loss instead stalled at ~18 dB after 600 steps: the rate
# term keeps y small, and y + noise then carries almost nothing to the decoder.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TICA_DATA:-../shared/data}/photos
TICA=${TICA:-.venv/bin/tica}
RUNS=${RUNS:-runs}
if [ "${1:-fam}" = nofam ]; then TAG=photo-nofam; SET=(--set fam=false); else TAG=photo; SET=(); fi
COMMON=(--data "$DATA" --alpha 0 --batch-size 8 --weight-decay 0 --no-progress --resume)

$TICA train --model tica-photo "${SET[@]}" "${COMMON[@]}" --step 1 --run-dir "$RUNS/$TAG-step1" \
    --beta 0.013 --epochs 2.0 --optimizer adamw --lr 1e-3 --warmup-steps 100 --checkpoint-every 200
# beta is CompressAI's MSE lambda (loss = lambda * MSE on 0-255 + bpp): its qualities 2-5.
for point in "1 0.0035" "2 0.0067" "3 0.013" "4 0.025"; do
    set -- $point
    $TICA train "${COMMON[@]}" --step 2 --init "$RUNS/$TAG-step1/model.safetensors" \
        --run-dir "$RUNS/$TAG-q$1" --quality "$1" --beta "$2" --epochs 0.5 --optimizer adam \
        --lr 3e-4 --hyper-lr 1e-3 --rate-warmup-steps 100 --warmup-steps 50
done
