#!/usr/bin/env bash
# tica-photo, the natural-image codec evaluated on Kodak: alpha = 0 (photos have no labels),
# trained on random 128x128 crops of ../shared/data/photos. One base run at the middle rate
# point, then each of the four rate points fine-tuned from it for the same number of steps.
#   scripts/train_photo.sh          # with FAM (the shipped weights)
#   scripts/train_photo.sh nofam    # the ablation: g_s reads y_hat, no feature aggregation
# On the 2-core development CPU, one thread each: base 2,250 steps ~25 min, each point ~5 min.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TICA_DATA:-../shared/data}/photos
TICA=${TICA:-.venv/bin/tica}
RUNS=${RUNS:-runs}
if [ "${1:-fam}" = nofam ]; then TAG=photo-nofam; SET=(--set fam=false); else TAG=photo; SET=(); fi
COMMON=(--step 2 --data "$DATA" --alpha 0 --batch-size 8 --optimizer adam --weight-decay 0 --no-progress --resume)

# From scratch, the networks see y + noise (the paper's proxy): a rounded y would be all zeros
# at the start and teach g_a slowly. The rate points then fine-tune with the straight-through
# rounded y, the value the decoder really gets.
$TICA train --model tica-photo "${SET[@]}" "${COMMON[@]}" --set latent_proxy=noise \
    --run-dir "$RUNS/$TAG-base" --beta 0.013 --epochs 1.8 --lr 5e-4 --warmup-steps 100 \
    --checkpoint-every 200
# beta is CompressAI's MSE lambda (loss = lambda * MSE on 0-255 + bpp): its qualities 2-5.
for point in "1 0.0035" "2 0.0067" "3 0.013" "4 0.025"; do
    set -- $point
    $TICA train "${COMMON[@]}" --init "$RUNS/$TAG-base/model.safetensors" --latent-std 0 \
        --set latent_proxy=ste \
        --run-dir "$RUNS/$TAG-q$1" --quality "$1" --beta "$2" --epochs 0.35 --lr 1e-4 --warmup-steps 20
done
