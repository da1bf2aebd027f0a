#!/usr/bin/env bash
# The baselines the evaluation needs, on the same data and budget as tica-cifar:
# the pixel ViT on clean images (accuracy ceiling) and the hyperprior codec (codec, then classify).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TICA_DATA:-../shared/data}/cifar10-jpeg.tar.gz
TICA=${TICA:-.venv/bin/tica}
RUNS=${RUNS:-runs}

$TICA train --model vit-pixel-cifar --step 1 --data "$DATA" --run-dir "$RUNS/vit-pixel-cifar" \
    --epochs 5 --batch-size 128 --lr 1e-3 --weight-decay 0.05 --warmup-steps 300 --resume
for point in "1 0.001" "2 0.003" "3 0.006"; do
    set -- $point
    $TICA train --model hyperprior-cifar --step 2 --data "$DATA" --run-dir "$RUNS/hyperprior-cifar-q$1" \
        --quality "$1" --alpha 0 --beta "$2" --epochs 6.5 --batch-size 128 --optimizer adam \
        --lr 1e-3 --hyper-lr 1e-2 --weight-decay 0 --warmup-steps 300 --resume
done
