#!/usr/bin/env bash
# The CIFAR-10 baselines of SPEC 5, on the same data as tica-cifar:
#   vit-pixel-cifar   the same ViT on 4x4 pixel patches, clean images (the accuracy ceiling and
#                     the classifier behind every "codec, decode, classify" pipeline); tica-cifar's
#                     budget: 5 epochs of its step-1 recipe, then 1.5 of its step-2 optimiser.
#   hyperprior-cifar  the same codec with g_s on the latent (alpha = 0): a base run at a middle
#                     rate (2 epochs), one rate point fine-tuned from it (0.6), then one
#                     variable-rate model (6 epochs) and its fixed-rate comparison.
#   tica-cifar, fam=false  the ablation: step 2 from the shipped step-1 network with g_s reading
#                     y_hat (g_s starts fresh), q1's exact step-2 recipe.
# Run a part with: scripts/train_baselines.sh vit|hyperprior|nofam (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TICA_DATA:-../shared/data}/cifar10-jpeg.tar.gz
TICA=${TICA:-.venv/bin/tica}
RUNS=${RUNS:-${TICA_CACHE:-$HOME/.cache/tica}/runs}
PART=${1:-all}

if [ "$PART" = all ] || [ "$PART" = vit ]; then
    $TICA train --model vit-pixel-cifar --step 1 --data "$DATA" --run-dir "$RUNS/vit-pixel-cifar" \
        --epochs 5 --batch-size 128 --lr 1e-3 --weight-decay 0.05 --warmup-steps 300 --no-progress --resume
    # tica's ViT also trains on in step 2 (1.5 epochs, Adam 3e-4): the classifier gets the same
    # 1.5 epochs at the same rate, so both have 6.5 epochs of CIFAR-10 in all.
    $TICA train --init "$RUNS/vit-pixel-cifar/model.safetensors" --step 1 --data "$DATA" \
        --run-dir "$RUNS/vit-pixel-cifar-6.5" --epochs 1.5 --batch-size 128 --optimizer adam \
        --lr 3e-4 --weight-decay 0 --warmup-steps 50 --no-progress --resume
fi
if [ "$PART" = all ] || [ "$PART" = hyperprior ]; then
    COMMON=(--step 2 --data "$DATA" --alpha 0 --batch-size 128 --optimizer adam --weight-decay 0
            --no-progress --resume --eval-images 1000)
    $TICA train --model hyperprior-cifar "${COMMON[@]}" --set latent_proxy=noise \
        --run-dir "$RUNS/hyperprior-cifar-base" \
        --beta 0.01 --epochs 2.0 --lr 1e-3 --warmup-steps 100
    $TICA train "${COMMON[@]}" --init "$RUNS/hyperprior-cifar-base/model.safetensors" \
        --latent-std 0 --set latent_proxy=ste --run-dir "$RUNS/hyperprior-cifar-q2" --quality 2 \
        --beta 0.01 --epochs 0.6 --lr 3e-4 --warmup-steps 20
    # one variable-rate model (8 points, beta 0.002-0.2) from it, and what variable rate
    # costs: a fixed-rate model at standard point 5's beta, same recipe and steps
    VR=(--init "$RUNS/hyperprior-cifar-q2/model.safetensors" --latent-std 0 --set latent_proxy=ste
        --epochs 6 --lr 3e-4 --hyper-lr 1e-2 --warmup-steps 50 --checkpoint-every 100)
    $TICA train "${COMMON[@]}" "${VR[@]}" --set rate_levels=8 --run-dir "$RUNS/hyperprior-cifar-vr" \
        --beta 0.002 --beta-max 0.2
    $TICA train "${COMMON[@]}" "${VR[@]}" --run-dir "$RUNS/hyperprior-cifar-fixed-q5" --quality 5 \
        --beta 0.02778990988746275
    .venv/bin/python scripts/ship_weights.py --codec "$RUNS/hyperprior-cifar-vr/model.safetensors"
fi
if [ "$PART" = all ] || [ "$PART" = nofam ]; then
    for point in "1 5 0.003"; do                 # q3 (30, 0.03) the same way, given time
        set -- $point
        $TICA train --step 2 --init step1 --set fam=false --data "$DATA" \
            --run-dir "$RUNS/tica-cifar-nofam-q$1" --quality "$1" --alpha "$2" --beta "$3" \
            --epochs 1.5 --batch-size 128 --optimizer adam --lr 3e-4 --hyper-lr 1e-2 \
            --rate-warmup-steps 150 --weight-decay 0 --warmup-steps 50 --no-progress --resume
    done
fi
