"""Per-step metrics, kept in memory and written to Parquet (atomically) with polars."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl


class MetricsHistoryError(RuntimeError):
    """A run's metrics history does not hold every step its checkpoint has trained (the message
    names the file and the steps)."""


def _spans(steps: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10'."""
    spans: list[list[int]] = []
    for step in steps:
        if spans and step == spans[-1][1] + 1:
            spans[-1][1] = step
        else:
            spans.append([step, step])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _one_based(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """The rows, numbered from 1 (the step whose update they follow); a file numbered from 0
    (a pre-release mtv) is one error naming it."""
    if frame.height and frame["step"].min() < 1:
        raise MetricsHistoryError(
            f"{path} numbers its steps from {frame['step'].min()} (a pre-release mtv numbered "
            "them from 0): it cannot be continued; train the run again"
        )
    return frame


def check_history(path: Path, last_step: int) -> None:
    """Refuse a history that cannot be the one of a run checkpointed at `last_step`: missing,
    unreadable, or without a row for one of the steps 1..last_step. Resuming would otherwise
    write a metrics file that silently starts at the resumed step, or has holes."""
    if last_step <= 0:
        return
    if not path.is_file():
        raise MetricsHistoryError(
            f"{path} is missing, though the checkpoint has trained {last_step} steps: resuming "
            "would start the run's history at step "
            f"{last_step + 1}; restore the file (or train anew with --out elsewhere)"
        )
    try:
        frame = pl.read_parquet(path, columns=["step"])
    except Exception as err:  # polars raises several types for a damaged file
        raise MetricsHistoryError(f"{path} cannot be read ({err}); restore the file") from None
    steps = set(_one_based(frame, path)["step"].to_list())
    missing = [step for step in range(1, last_step + 1) if step not in steps]
    if missing:
        raise MetricsHistoryError(
            f"{path} has no rows for steps {_spans(missing)} of the {last_step} the checkpoint "
            "has trained: the file is damaged or from another run; restore it"
        )


class MetricsLog:
    """Rows of {step, name: value}; a resumed run drops the rows after its checkpoint, so the
    file never holds two versions of a step."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def resume(self, last_step: int) -> None:
        """Keep the rows of steps 1..last_step (the checkpoint's), dropping any logged after it
        (a file numbered from 0 is refused, `_one_based`)."""
        if self.path.is_file():
            frame = _one_based(pl.read_parquet(self.path), self.path)
            self.rows = frame.filter(pl.col("step") <= last_step).to_dicts()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows, infer_schema_length=None) if self.rows else pl.DataFrame()

    def flush(self) -> None:
        if not self.rows:
            return
        partial = self.path.with_suffix(".partial")
        try:
            self.frame().write_parquet(partial)
        except OSError as err:  # a full disk, a quota, a lost mount
            partial.unlink(missing_ok=True)
            raise MetricsHistoryError(
                f"cannot write {self.path}: {err.strerror or err}; the file keeps the rows "
                "written before"
            ) from None
        os.replace(partial, self.path)
