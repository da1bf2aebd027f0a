#!/usr/bin/env bash
# The main job: the edge side encodes real images into tica bitstreams; the server side
# classifies straight from the bitstreams and decodes them back to pixels.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TICA_DATA:-../shared/data}
OUT=runs/main_job
TICA=.venv/bin/tica
mkdir -p "$OUT"

echo "== Ten CIFAR-10 test images (32x32), one batch stream, tica-cifar at its default quality"
mkdir -p "$OUT/cifar"
tar -xzf "$DATA/cifar10-jpeg.tar.gz" -C "$OUT/cifar" \
    cifar10/test/airplane/0000.jpg cifar10/test/automobile/0000.jpg cifar10/test/bird/0000.jpg \
    cifar10/test/cat/0000.jpg cifar10/test/deer/0000.jpg cifar10/test/dog/0000.jpg \
    cifar10/test/frog/0000.jpg cifar10/test/horse/0000.jpg cifar10/test/ship/0000.jpg \
    cifar10/test/truck/0000.jpg
$TICA encode "$OUT"/cifar/cifar10/test/*/0000.jpg -o "$OUT/cifar10.tica" --model tica-cifar
$TICA classify "$OUT/cifar10.tica" --top-k 1
$TICA decode "$OUT/cifar10.tica" -o "$OUT/cifar/decoded.png"
echo "   the same images at the lowest quality, and at quality 2.5 (between two standard points)"
$TICA encode "$OUT"/cifar/cifar10/test/*/0000.jpg -o "$OUT/cifar10_q1.tica" --model tica-cifar --quality 1
$TICA encode "$OUT"/cifar/cifar10/test/*/0000.jpg -o "$OUT/cifar10_q2.5.tica" --model tica-cifar --quality 2.5

if [ -f "$DATA/imagenette-224.tar.gz" ]; then
    echo "== Four Imagenette photographs (224x224) classified from their streams with tica-photo"
    mkdir -p "$OUT/imagenette"
    tar -xzf "$DATA/imagenette-224.tar.gz" -C "$OUT/imagenette" \
        imagenette/val/golf_ball/n03445777_5901.JPEG imagenette/val/tench/n01440764_5091.JPEG \
        imagenette/val/parachute/n03888257_34452.JPEG imagenette/val/garbage_truck/n03417042_1790.JPEG
    $TICA encode "$OUT"/imagenette/imagenette/val/*/*.JPEG -o "$OUT/imagenette.tica" \
        --model tica-photo --quality 2
    $TICA classify "$OUT/imagenette.tica" --top-k 2
fi

echo "== A Kodak photograph (768x512) with tica-photo: quality 1, the default, and at most 0.5 bpp"
$TICA encode "$DATA/kodak/kodim23.png" -o "$OUT/kodim23_q1.tica" --model tica-photo --quality 1
$TICA encode "$DATA/kodak/kodim23.png" -o "$OUT/kodim23.tica" --model tica-photo
$TICA encode "$DATA/kodak/kodim23.png" -o "$OUT/kodim23_0.5bpp.tica" --model tica-photo --target-bpp 0.5
for s in kodim23_q1 kodim23 kodim23_0.5bpp; do
    $TICA decode "$OUT/$s.tica" -o "$OUT/$s.png"
done
$TICA info "$OUT/kodim23_0.5bpp.tica"
echo "   PNG original: $(stat -c %s "$DATA/kodak/kodim23.png") bytes"
echo "Outputs in $OUT/"
