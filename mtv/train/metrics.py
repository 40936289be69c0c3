"""Per-step metrics, kept in memory and written to Parquet (atomically) with polars."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl


class MetricsLog:
    """Rows of {step, name: value}; a resumed run drops the rows after its checkpoint, so the
    file never holds two versions of a step."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def resume(self, last_step: int) -> None:
        """Keep the rows of steps 1..last_step (the checkpoint's), dropping any logged after it.
        A file written before rows were numbered from 1 (its first step is 0) is renumbered,
        so a run started with an older mtv resumes with one numbering throughout."""
        if self.path.is_file():
            frame = pl.read_parquet(self.path)
            if frame.height and frame["step"].min() == 0:
                frame = frame.with_columns(pl.col("step") + 1)
            self.rows = frame.filter(pl.col("step") <= last_step).to_dicts()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows, infer_schema_length=None) if self.rows else pl.DataFrame()

    def flush(self) -> None:
        if not self.rows:
            return
        partial = self.path.with_suffix(".partial")
        self.frame().write_parquet(partial)
        os.replace(partial, self.path)
