"""A finished run's record without its weights: the spec, environment, tokenizer, metrics,
evaluations and logs of a run directory, everything but its checkpoints (kilobytes, not
megabytes). Small enough to commit beside a report, so that the runs behind it outlive the
machine that trained them: a sweep started on a fresh clone restores its finished runs from the
record instead of training them again (`mtv sweep`'s `archive:`)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

# Not part of a record: the weights (megabytes a checkpoint, and `mtv eval` alone needs them),
# the loggers' own stores (their content is in metrics.parquet) and the run's lock.
NOT_RECORDED = ("checkpoints", "tensorboard", "mlruns", "wandb", ".mtv-lock")


class ArchiveError(RuntimeError):
    """A record cannot be written or restored (the message names the folder)."""


def record_files(run_dir: Path) -> list[Path]:
    """The files of `run_dir`'s record, relative to it, sorted: every file but those under
    `NOT_RECORDED` and half-written ones (`*.partial`)."""
    files = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if relative.parts[0] in NOT_RECORDED or not path.is_file():
            continue
        if any(part.endswith(".partial") for part in relative.parts):
            continue
        files.append(relative)
    return files


def _copy_folder(source: Path, files: list[Path], target: Path) -> None:
    """`target` holds exactly `files` of `source` afterwards, or (killed midway) its old content:
    the copy is made beside it, then swapped in."""
    staging = target.with_name(target.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    for relative in files:
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, staging / relative)
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


def same_record(run_dir: Path, record: Path) -> bool:
    """Whether `record` holds `run_dir`'s record as it is now: the same files, sizes and
    modification times (`archive_run` and `restore_run` keep them)."""

    def listing(folder: Path) -> set[tuple[Path, int, int]]:
        return {
            (relative, (folder / relative).stat().st_size, (folder / relative).stat().st_mtime_ns)
            for relative in record_files(folder)
        }

    return record.is_dir() and listing(run_dir) == listing(record)


def archive_run(run_dir: Path, record: Path) -> list[Path]:
    """Write `run_dir`'s record to the folder `record`, replacing what it held. Returns the files
    written (relative to `record`)."""
    if not run_dir.is_dir():
        raise ArchiveError(f"{run_dir}: no such run directory to archive")
    files = record_files(run_dir)
    record.parent.mkdir(parents=True, exist_ok=True)
    _copy_folder(run_dir, files, record)
    return files


def restore_run(record: Path, run_dir: Path, last: Sequence[str] = ()) -> list[Path]:
    """Copy the record in `record` into `run_dir`, which must hold no run yet (no checkpoint and
    no spec): a record never overwrites a run that trained here. The files named in `last` are
    copied after all others (a marker saying the run is complete: killed midway, the copy is
    not taken for one). Returns the files restored."""
    if not record.is_dir():
        raise ArchiveError(f"{record}: no such record")
    if (run_dir / "checkpoints").exists() or (run_dir / "spec.yaml").exists():
        raise ArchiveError(
            f"{run_dir} holds a run already; its record in {record} is not copied over it "
            f"(move {run_dir} away to restore the record)"
        )
    files = sorted(record_files(record), key=lambda relative: str(relative) in last)
    run_dir.mkdir(parents=True, exist_ok=True)
    for relative in files:
        (run_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(record / relative, run_dir / relative)
    return files


__all__ = [
    "NOT_RECORDED",
    "ArchiveError",
    "archive_run",
    "record_files",
    "restore_run",
    "same_record",
]
