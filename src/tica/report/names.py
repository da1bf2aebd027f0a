"""The report's names, each written once: the pipelines' display names, the classifiers, and
the training run folders it reads unshipped weights from."""

from __future__ import annotations

from pathlib import Path

# Display names of the pipelines, in plotting order.
TICA, TICA_NOFAM = "tica", "tica, no FAM"
TICA_FIXED = "tica, fixed rate (same budget)"
# The variable-rate model after the fixed-rate model's budget (train_cifar.sh's first step 2),
# when the shipped one trained on past it: what the fixed-rate model is compared with.
TICA_VR_BUDGET = "tica, variable rate (same budget)"
TICA_VR_BUDGET_POINTS = (5, 6, 7)      # around the fixed-rate model's point 6
HYPER_FIXED = "hyperprior, fixed rate (same budget)"
CLEAN = "ViT on clean pixels"
HYPER = "hyperprior -> decode -> ViT"
# Imagenette's learned codec -> decode -> ViT: tica-photo's own streams decoded to pixels, then
# the pixel ViT (no photo hyperprior is trained; this codec had tica's budget by construction)
PHOTO_DECODED = "learned codec (tica-photo) -> decode -> ViT"
PHOTO, PHOTO_NOFAM = "tica-photo", "tica-photo, no FAM"
PUBLISHED_HYPERPRIOR = "CompressAI bmshj2018-hyperprior (published)"
CODEC_LABELS = {"jpeg": "JPEG", "webp": "WebP", "avif": "AVIF", "jxl": "JPEG XL"}

CLASSIFIER = "vit-pixel-cifar"
PHOTO_CLASSIFIER = "vit-pixel-photo"     # the clean-pixel ViT beside tica-photo (Imagenette)
IMAGENETTE_CODECS = ("jpeg", "webp")

# (pipeline, rate point) -> the folder under --runs that holds its weights when they are not
# shipped: the `--run-dir "$RUNS/<name>"` of scripts/train_cifar.sh, train_baselines.sh and
# train_photo.sh (tests/test_report.py checks that a script creates each one).
RUNS: dict[tuple[str, int], str] = {
    (TICA_FIXED, 6): "tica-cifar-fixed-q6",          # train_cifar.sh: standard point 6 alone
    **{(TICA_VR_BUDGET, q): "tica-cifar-vr" for q in TICA_VR_BUDGET_POINTS},  # train_cifar.sh
    (TICA_NOFAM, 1): "tica-cifar-nofam-q1",          # train_baselines.sh nofam: q1's recipe
    (HYPER, 2): "hyperprior-cifar-q2",               # train_baselines.sh hyperprior
    (HYPER_FIXED, 5): "hyperprior-cifar-fixed-q5",   # train_baselines.sh: standard point 5 alone
    (PHOTO, 2): "photo-q2",                          # train_photo.sh
    (PHOTO_NOFAM, 2): "photo-nofam-q2",              # train_photo.sh nofam
}


def run_weights(runs: Path, label: str, quality: int) -> Path | None:
    """The weights a training run left for this rate point, None when there are none."""
    folder = RUNS.get((label, quality))
    path = runs / folder / "model.safetensors" if folder else None
    return path if path is not None and path.is_file() else None
