"""Analysis of sets of runs: the ablation ladder (Table 3), task synergy (Table 4, Eq. 4), the
scaling view, what a sweep's seeds can resolve, training curves, and pictures of what an
encoder learned (depth, feature PCA)."""

from mtv.analysis.curves import load_curves, plot_curves
from mtv.analysis.resolution import resolution
from mtv.analysis.scaling import plot_scaling, scaling_results, scaling_table
from mtv.analysis.synergy import (
    GROUPS,
    LADDER,
    MissingRuns,
    gain,
    label,
    ladder_table,
    synergy,
    synergy_table,
    task_groups,
)

__all__ = [
    "GROUPS",
    "LADDER",
    "MissingRuns",
    "gain",
    "label",
    "ladder_table",
    "load_curves",
    "plot_curves",
    "plot_scaling",
    "resolution",
    "scaling_results",
    "scaling_table",
    "synergy",
    "synergy_table",
    "task_groups",
]
