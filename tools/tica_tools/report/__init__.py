"""The results report (docs/RESULTS.md): tica against its baselines, measured or reused from
a cache, the comparisons the claims rest on, the claims, the plots and the page.

    from tica_tools.report import ReportOptions, run_report
    run_report(ReportOptions(data=Path("../shared/data"), runs=Path("runs"), out=Path("docs/results")))

    names.py     pipeline labels, classifiers, RUNS: the training run folders read
    cache.py     Spec (one rate point) and Cache (reuse, measure, read back)
    specs.py     the rate points of each section
    analysis.py  curves, accuracy margins, variable-rate cost, BD-rates
    claims.py    the claims stated from the numbers
    page.py      RESULTS.md and the plots
    run.py       one run of the report, section by section

Its optional dependencies (matplotlib, bjontegaard, imagecodecs: tools/pyproject.toml) are
imported only where they are used; `import tica` does not import this package."""

from .analysis import accuracy_margins, bd_rates, curves, variable_rate_cost
from .cache import Cache, Spec, codec_version, digest
from .claims import fmt, state_claims
from .names import (CLASSIFIER, CLEAN, CODEC_LABELS, HYPER, PHOTO, PHOTO_CLASSIFIER,
                    PHOTO_NOFAM, RUNS, TICA, TICA_FIXED, TICA_NOFAM, TICA_VR_BUDGET,
                    run_weights)
from .page import plot, render
from .run import SECTIONS, ReportOptions, run_report

__all__ = [
    "CLASSIFIER", "CLEAN", "CODEC_LABELS", "Cache", "HYPER", "PHOTO",
    "PHOTO_CLASSIFIER", "PHOTO_NOFAM", "RUNS", "ReportOptions", "SECTIONS", "Spec", "TICA",
    "TICA_FIXED", "TICA_NOFAM", "TICA_VR_BUDGET", "accuracy_margins", "bd_rates",
    "codec_version", "curves", "digest", "fmt", "plot", "render", "run_report", "run_weights",
    "state_claims", "variable_rate_cost",
]
