"""The report's names, each written once: the pipelines' display names, the classifiers, and
the training run folders it reads unshipped weights from."""

from __future__ import annotations

from pathlib import Path

# Display names of the pipelines, in plotting order.
TICA, TICA_NOFAM = "tica", "tica, no FAM"
TICA_FIXED = "tica, fixed rate (same budget)"
# The variable-rate model after the fixed-rate model's budget (cpu-ablations.json's
# tica-cifar-vr): what the fixed-rate model is compared with.
TICA_VR_BUDGET = "tica, variable rate (same budget)"
TICA_VR_BUDGET_POINTS = (5, 6, 7)      # around the fixed-rate model's point 6
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

# (pipeline, rate point) -> the run of scripts/plans/cpu-ablations.json that holds its
# weights (not shipped), under <runs>/cpu-ablations/<run>/ (tests/test_report.py checks that
# the plan has each run).
ABLATIONS_DIR = "cpu-ablations"
RUNS: dict[tuple[str, int], str] = {
    (TICA_FIXED, 6): "tica-cifar-fixed-q6",          # standard point 6 alone
    **{(TICA_VR_BUDGET, q): "tica-cifar-vr" for q in TICA_VR_BUDGET_POINTS},
    (HYPER, 2): "hyperprior-cifar-q2",
    (PHOTO, 2): "photo-q2",
    (PHOTO_NOFAM, 2): "photo-nofam-q2",
}

# (pipeline, rate point) -> the device plan's run (scripts/plans/gpu.json) that holds its
# weights, as scripts/join_parts.py leaves them: <runs>/gpu-plan/<run>.safetensors. The FAM
# ablation is tica-cifar's step 2 without FAM from the same step 1, same recipe and images.
PLAN_DIR = "gpu-plan"
TICA_NOFAM_POINTS = (2, 4, 6, 8)
PLAN_RUNS: dict[tuple[str, int], str] = {(TICA_NOFAM, q): "tica-cifar-nofam"
                                         for q in TICA_NOFAM_POINTS}


def run_weights(runs: Path, label: str, quality: int) -> Path | None:
    """The weights a training run (or the device plan) left for this rate point, None when
    there are none."""
    folder, plan_run = RUNS.get((label, quality)), PLAN_RUNS.get((label, quality))
    path = (runs / ABLATIONS_DIR / folder / "model.safetensors" if folder else
            runs / PLAN_DIR / f"{plan_run}.safetensors" if plan_run else None)
    return path if path is not None and path.is_file() else None
