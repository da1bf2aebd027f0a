#!/usr/bin/env bash
# tica-photo as the paper uses it: classify photographs from their streams (Imagenette, ten
# ImageNet classes at 224x224, 14x14 tokens) and code photographs (evaluated on Kodak).
#   1. step 1 on random 128x128 crops of ../shared/data/photos (MSE only: no labels), then one
#      fixed-rate step 2 (CompressAI's q3 lambda) - the photo codec the variable-rate model
#      starts from;
#   2. the variable-rate model on Imagenette: rate-distortion-accuracy (alpha 1 at every
#      point; beta spans CompressAI's MSE lambdas q1-q6), the position grid resized to 14x14,
#      the ViT and the gains starting fresh, everything else from 1.;
#   3. then the same on Imagenette with entropy_gain (h_s predicts the un-gained latent's mean
#      and scale, both multiplied by the gain: the rate follows the quality even where z says
#      little; docs/design.md), 90 minutes by the clock, the schedule ending at the deadline;
#   4. vit-pixel-photo, the same ViT on clean 16x16 pixel patches: 5 epochs, then on for
#      4.26 epochs more (AdamW 3e-4), so that it sees about the labelled images tica-photo's
#      ViT saw in 2. and 3. (2,164 x 16 + 2,842 x 16 = 80,096; 1,350 x 32 + 1,150 x 32 = 80,000).
#   scripts/train_photo.sh          # all, then ship
#   scripts/train_photo.sh nofam    # the codec ablation of 1.: g_s reads y_hat
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TICA_DATA:-../shared/data}
TICA=${TICA:-.venv/bin/tica}
RUNS=${RUNS:-${TICA_CACHE:-$HOME/.cache/tica}/runs}
if [ "${1:-fam}" = nofam ]; then TAG=photo-nofam; SET=(--set fam=false); else TAG=photo; SET=(); fi
COMMON=(--data "$DATA/photos" --alpha 0 --batch-size 8 --weight-decay 0 --no-progress --resume)

$TICA train --model tica-photo --set img_size=128 "${SET[@]}" "${COMMON[@]}" --step 1 \
    --run-dir "$RUNS/$TAG-step1" --beta 0.013 --epochs 2.0 --optimizer adamw --lr 1e-3 \
    --warmup-steps 100 --checkpoint-every 200
# beta is CompressAI's MSE lambda (loss = lambda * MSE on 0-255 + bpp)
$TICA train "${COMMON[@]}" --step 2 --init "$RUNS/$TAG-step1/model.safetensors" \
    --run-dir "$RUNS/$TAG-q2" --quality 2 --beta 0.0067 --epochs 0.5 --optimizer adam \
    --lr 3e-4 --hyper-lr 1e-3 --rate-warmup-steps 100 --warmup-steps 50
[ "$TAG" = photo ] || exit 0

$TICA train --step 2 --init "$RUNS/photo-q2/model.safetensors" --set rate_levels=8 \
    --set img_size=224 --latent-std 0 --data "$DATA/imagenette-224.tar.gz" \
    --run-dir "$RUNS/tica-photo-in" --alpha 1 --beta 0.0018 --beta-max 0.0483 --epochs 4 \
    --batch-size 16 --optimizer adam --lr 5e-4 --hyper-lr 1e-2 --rate-warmup-steps 200 \
    --weight-decay 0 --warmup-steps 200 --eval-images 500 --no-progress --checkpoint-every 100 \
    --resume
$TICA train --step 2 --init "$RUNS/tica-photo-in/model.safetensors" --set entropy_gain=true \
    --data "$DATA/imagenette-224.tar.gz" --run-dir "$RUNS/tica-photo-eg" --alpha 1 \
    --beta 0.0018 --beta-max 0.0483 --epochs 20 --deadline-s 5400 --schedule-by-deadline \
    --batch-size 16 --optimizer adam --lr 3e-4 --hyper-lr 1e-3 --weight-decay 0 \
    --warmup-steps 20 --latent-std 0 --eval-images 0 --no-progress --checkpoint-every 100 --resume
$TICA train --model vit-pixel-photo --step 1 --data "$DATA/imagenette-224.tar.gz" \
    --run-dir "$RUNS/vit-pixel-photo" --epochs 5 --batch-size 32 --optimizer adamw --lr 1e-3 \
    --weight-decay 0.05 --warmup-steps 200 --eval-images 500 --no-progress \
    --checkpoint-every 100 --resume
$TICA train --init "$RUNS/vit-pixel-photo/model.safetensors" --step 1 \
    --data "$DATA/imagenette-224.tar.gz" --run-dir "$RUNS/vit-pixel-photo-eq" --epochs 4.26 \
    --batch-size 32 --optimizer adamw --lr 3e-4 --weight-decay 0.05 --warmup-steps 20 \
    --eval-images 0 --no-progress --checkpoint-every 50 --resume
.venv/bin/python scripts/ship_weights.py --codec "$RUNS/tica-photo-eg/model.safetensors" \
    --model "$RUNS/vit-pixel-photo-eq/model.safetensors"
