"""Analysis of sets of runs: the ablation ladder (Table 3) and task synergy (Table 4, Eq. 4)."""

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
    "synergy",
    "synergy_table",
    "task_groups",
]
