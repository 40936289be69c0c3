"""A run directory: whether a run may start or resume in it, and what it records about the
machine. Decided before anything in the directory is written."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, TypeAdapter, ValidationError

import mtv
from mtv.runs.checkpoint import CheckpointError, latest_checkpoint, load_latest_readable
from mtv.specs.experiment import ExperimentSpec, SourceSpec
from mtv.specs.loading import SpecError, load_run_spec
from mtv.specs.model import ModelSpec
from mtv.specs.paths import absolute_paths
from mtv.train.metrics import MetricsHistoryError, check_history
from mtv.train.schedule import lr_factor


class RunRefused(RuntimeError):
    """The run may not start or resume in this directory (the message says why)."""


# What a resume must not change: it would train another model or see other batches.
RESUME_CRITICAL = ("tasks", "model", "data.batch_size", "data.source", "optim.accumulate")


# What a run's training depends on. `mtv sweep` refuses to resume a run whose experiment changed in
# any of these since it started: the run would mix two protocols in one history, and its spec
# (rewritten on resume) would name only the second. The loader's worker count is how fast, not
# what.
TRAINING_FIELDS = (
    "data",
    "model",
    "task_defaults",
    "tasks",
    "optim",
    "schedule",
    "runtime.seed",
    "runtime.precision",
)
TRAINING_FIELDS_IGNORED = ("data.loader.workers",)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()
        }
    return {prefix.rstrip("."): value}


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str) and os.path.isabs(a) and os.path.isabs(b):
        if os.path.exists(a) and os.path.exists(b):
            # The same thing through another copy of the repository (a symlink).
            return os.path.realpath(a) == os.path.realpath(b)
        # One is not on this machine (a run trained in another copy of the repository, or
        # restored from a sweep's archive): the same folder and name.
        return Path(a).parts[-2:] == Path(b).parts[-2:]
    return a == b


def changed_training_fields(started: ExperimentSpec, now: ExperimentSpec) -> list[str]:
    """The fields under TRAINING_FIELDS in which `now` differs from the spec a run `started`
    with."""
    before, after = _flat(started.model_dump(mode="json")), _flat(now.model_dump(mode="json"))

    def under(key: str, fields: tuple[str, ...]) -> bool:
        return any(key == f or key.startswith(f + ".") for f in fields)

    keys = sorted(
        k
        for k in set(before) | set(after)
        if under(k, TRAINING_FIELDS) and not under(k, TRAINING_FIELDS_IGNORED)
    )
    return [k for k in keys if not _same_value(before.get(k), after.get(k))]


def write_text_atomically(path: Path, text: str) -> None:
    """`path` holds either its old text or `text`, never a part of it, whenever the process is
    killed: a resumed run reads its spec from the run folder."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def environment(device: torch.device, world: int) -> dict[str, Any]:
    """What `environment.json` records: versions, platform, host, device, world size and the
    CPU threads torch computes on (a sweep running jobs side by side gives each fewer)."""
    packages = {}
    for name in ("torch", "numpy", "pydantic", "zarr", "polars", "torchdata", "transformers"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    )
    return {
        "mtv": mtv.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "device": str(device),
        "device_name": device_name or platform.machine(),
        "world_size": world,
        "cpu_threads": torch.get_num_threads(),
        "packages": packages,
    }


def critical_settings(spec: ExperimentSpec, world: int) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    out: dict[str, Any] = {"world_size": world}
    for path in RESUME_CRITICAL:
        node: Any = data
        for part in path.split("."):
            node = node[part]
        out[path] = node
    return out


def learning_rate_jump(run_dir: Path, spec: ExperimentSpec, step: int) -> str | None:
    """What a resume at optimiser step `step` does to the learning rate when `spec` changes the
    run's schedule or base lr (e.g. `--set schedule.steps=40` on a finished cosine run): the
    schedule is recomputed for the new settings, so the lr of the next step jumps. A sentence
    saying so, with both values; None when they agree (or the run's spec cannot be read)."""
    try:
        before = load_run_spec(run_dir)
    except (SpecError, OSError):
        return None
    was = before.optim.lr * lr_factor(before.schedule, step)
    now = spec.optim.lr * lr_factor(spec.schedule, step)
    if math.isclose(was, now, rel_tol=1e-3, abs_tol=1e-12):
        return None
    old = {"optim.lr": before.optim.lr} | {
        f"schedule.{k}": v for k, v in before.schedule.model_dump().items()
    }
    new = {"optim.lr": spec.optim.lr} | {
        f"schedule.{k}": v for k, v in spec.schedule.model_dump().items()
    }
    changed = ", ".join(f"{k} {old[k]} -> {v}" for k, v in new.items() if old.get(k) != v)
    return (
        f"resuming at step {step} with {changed}: the schedule is recomputed, so the learning "
        f"rate jumps from {was:.3g} (the run's schedule) to {now:.3g}"
    )


def _paths_absolute(saved: dict[str, Any]) -> dict[str, Any]:
    """Critical settings with their relative paths made absolute against the working folder,
    which is what they mean: a spec loaded from a file has none left, but a checkpoint written
    before specs stored their paths absolute has, and a spec built in code may. So such a run
    resumes. A setting that no longer validates stays as it was (and is then named as a
    difference)."""
    out = dict(saved)
    adapters: dict[str, TypeAdapter[Any]] = {
        "data.source": TypeAdapter(SourceSpec),
        "model": TypeAdapter(ModelSpec),
    }
    for key, adapter in adapters.items():
        if not isinstance(saved.get(key), dict):
            continue
        try:
            value: BaseModel = adapter.validate_python(saved[key])
        except ValidationError:
            continue
        absolute_paths(value, lambda loc: Path.cwd())
        out[key] = adapter.dump_python(value, mode="json")
    return out


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [
        f"{key} (checkpoint: {json.dumps(saved.get(key))[:120]}, now: {json.dumps(value)[:120]})"
        for key, value in current.items()
        if saved.get(key) != value
    ]


def accept_run(
    run_dir: Path, spec: ExperimentSpec, world: int, resume: bool, warn: Callable[[str], None]
) -> tuple[Path, dict[str, Any]] | None:
    """Whether `spec` may train into `run_dir`, decided before anything there is written: a new
    run needs a directory without checkpoints; a resume needs a readable checkpoint (the newest
    that reads back whole) whose critical settings equal the spec's. Returns that checkpoint and
    its state for a resume, None for a new run; raises `RunRefused` naming why not."""
    existing = latest_checkpoint(run_dir)
    if existing is not None and not resume:
        raise RunRefused(
            f"{run_dir} already holds a run (checkpoint {existing.name}); pass --resume "
            "to continue it, or --out to start a new one elsewhere"
        )
    if not resume:
        return None
    if existing is None:
        raise RunRefused(f"--resume: {run_dir} has no complete checkpoint to resume")
    try:
        path, state = load_latest_readable(run_dir, warn)
    except CheckpointError as err:
        raise RunRefused(f"--resume: {err}") from None
    differences = _differences(
        _paths_absolute(state["critical"]), _paths_absolute(critical_settings(spec, world))
    )
    if differences:
        raise RunRefused(
            f"--resume: the spec differs from {path.name}'s in what matters: "
            + "; ".join(differences)
        )
    try:
        check_history(run_dir / "metrics.parquet", int(state["step"]))
    except MetricsHistoryError as err:
        raise RunRefused(f"--resume: {err}") from None
    return path, state
