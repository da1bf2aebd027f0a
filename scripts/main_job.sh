#!/usr/bin/env bash
# The main job: edge side encodes real images into tica bitstreams; the server side
# classifies straight from the bitstreams and decodes them back to pixels.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TICA_DATA:-../shared/data}
OUT=runs/main_job
TICA=.venv/bin/tica
mkdir -p "$OUT"

echo "== Ten CIFAR-10 test images (32x32), one batch stream, default model (tica-cifar)"
mkdir -p "$OUT/cifar"
tar -xzf "$DATA/cifar10-jpeg.tar.gz" -C "$OUT/cifar" \
    cifar10/test/airplane/0000.jpg cifar10/test/automobile/0000.jpg cifar10/test/bird/0000.jpg \
    cifar10/test/cat/0000.jpg cifar10/test/deer/0000.jpg cifar10/test/dog/0000.jpg \
    cifar10/test/frog/0000.jpg cifar10/test/horse/0000.jpg cifar10/test/ship/0000.jpg \
    cifar10/test/truck/0000.jpg
$TICA encode "$OUT"/cifar/cifar10/test/*/0000.jpg -o "$OUT/cifar10.tica"
$TICA classify "$OUT/cifar10.tica" --top-k 1
$TICA decode "$OUT/cifar10.tica" -o "$OUT/cifar/decoded.png"

echo "== A Kodak photograph (768x512) with the natural-image codec tica-photo, two rate points"
for q in 1 4; do
    $TICA encode "$DATA/kodak/kodim23.png" -o "$OUT/kodim23_q$q.tica" --model tica-photo --quality $q
    $TICA decode "$OUT/kodim23_q$q.tica" -o "$OUT/kodim23_q$q.png"
done
$TICA info "$OUT/kodim23_q1.tica"
echo "   PNG original: $(stat -c %s "$DATA/kodak/kodim23.png") bytes"
echo "Outputs in $OUT/"
