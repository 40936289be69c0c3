"""Checkpoints: atomic (written to a temporary folder, marked complete, then renamed), periodic,
the last K kept; tensors and plain values only, read back with `weights_only=True` (no pickle of
arbitrary objects)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MARKER = "COMPLETE"
STATE = "state.pt"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint directory is named for (`checkpoint_dir`'s inverse)."""
    return int(path.name.rsplit("-", 1)[1])


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write `state` for `step`; a crash at any point leaves either the previous checkpoints
    or this one complete, never a half-written one that `latest_checkpoint` would pick."""
    final = checkpoint_dir(run_dir, step)
    partial = final.with_name(final.name + ".partial")
    try:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        with open(partial / STATE, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        (partial / MARKER).write_text(str(step))
    except OSError as err:  # a full disk, a quota, a lost mount
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(
            f"cannot write the checkpoint {final}: {err.strerror or err}; the checkpoints "
            "before it are as they were"
        ) from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def _marked_step(path: Path) -> int | None:
    """The step a checkpoint's COMPLETE marker holds; None when it is missing, empty or not a
    number (a write cut short: the marker is the last thing written)."""
    try:
        return int((path / MARKER).read_text().strip())
    except (OSError, ValueError):
        return None


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is one complete checkpoint directory: its state and a marker that names
    its step, under its final name (a `.partial` folder holds both for a moment before it is
    renamed, and is never one)."""
    return (
        not path.name.endswith(".partial")
        and path.is_dir()
        and (path / STATE).is_file()
        and _marked_step(path) is not None
    )


def complete_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if is_checkpoint(p)]
    return sorted(found, key=lambda p: _marked_step(p) or 0)


def damaged_markers(run_dir: Path) -> list[Path]:
    """Checkpoint folders whose COMPLETE marker is there but empty or not a step (a write cut
    short): passed over as incomplete, and named."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir()
        and not p.name.endswith(".partial")
        and (p / MARKER).is_file()
        and _marked_step(p) is None
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE, map_location="cpu", weights_only=True)


def damage(err: BaseException) -> str:
    """What reading a damaged checkpoint raised, in one line (torch.load raises several types)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class CheckpointError(RuntimeError):
    """No complete checkpoint of a run can be read."""


REQUIRED = ("step", "graph", "optimizer", "loader", "rng", "critical")


def load_latest_readable(
    run_dir: Path, warn: Callable[[str], None], required: tuple[str, ...] = REQUIRED
) -> tuple[Path, dict[str, Any]]:
    """The newest complete checkpoint that reads back whole (with the `required` entries: all a
    resume needs by default), and its state. A checkpoint that does not (a disk error, a file
    truncated after it was marked complete) is passed over with a warning naming it, for the
    one before it."""
    for path in damaged_markers(run_dir):
        warn(f"warning: checkpoint {path} has a damaged {MARKER} marker; passed over")
    found = complete_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no complete checkpoint")
    problems = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path)
            missing = [key for key in required if key not in state]
            if missing:
                raise ValueError(f"it lacks {', '.join(missing)}")
        except Exception as err:  # torch.load reports damage as several error types
            reason = damage(err)
            problems.append(f"{path.name} ({reason})")
            warn(f"warning: checkpoint {path} cannot be read ({reason}); trying the one before")
            continue
        return path, state
    raise CheckpointError(f"no checkpoint of {run_dir} can be read: {'; '.join(problems)}")
