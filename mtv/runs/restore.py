"""A finished (or stopped) run read back: its spec, its task graph with the weights of one
checkpoint, and its tokenizer. What evaluation and export start from."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtv.graph import TaskGraph
from mtv.models.tokenizer import TextTokenizer
from mtv.runs.checkpoint import (
    MARKER,
    STATE,
    CheckpointError,
    damage,
    is_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_latest_readable,
)
from mtv.specs import ExperimentSpec, load_run_spec


@dataclass
class TrainedRun:
    run_dir: Path
    checkpoint: Path
    step: int
    spec: ExperimentSpec
    graph: TaskGraph
    tokenizer: TextTokenizer | None  # None when the run has no text tower


def _locate(path: str | Path) -> tuple[Path, Path | None]:
    """(run directory, the checkpoint `path` names or None for a whole run)."""
    path = Path(path)
    path = path.parent if path.name == STATE and path.is_file() else path
    if (path / STATE).is_file() and not is_checkpoint(path):
        raise CheckpointError(
            f"{path / MARKER} is missing, empty or not a step: not a complete checkpoint"
        )
    run_dir, checkpoint = (path.parent.parent, path) if is_checkpoint(path) else (path, None)
    if not (run_dir / "spec.yaml").is_file():
        raise FileNotFoundError(
            f"{path} is neither a run directory nor a checkpoint of one (no spec.yaml)"
        )
    return run_dir, checkpoint


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) of a run directory (its latest complete checkpoint), one
    checkpoint directory (`RUN/checkpoints/step-N`) or its `state.pt`."""
    run_dir, checkpoint = _locate(path)
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint")
    return run_dir, checkpoint


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _read_checkpoint(
    path: str | Path, warn: Callable[[str], None]
) -> tuple[Path, Path, dict[str, Any]]:
    """(run directory, checkpoint, its state). A run's newest checkpoint that does not read
    back whole is passed over for the one before, with a warning, as `--resume` does; one
    checkpoint named by the caller that does not read is an error naming its file."""
    run_dir, named = _locate(path)
    if named is None:
        # The weights and the step: what evaluation and export read (not the optimiser's).
        checkpoint, state = load_latest_readable(run_dir, warn, required=("step", "graph"))
        return run_dir, checkpoint, state
    try:
        return run_dir, named, load_checkpoint(named)
    except Exception as err:  # torch.load reports damage as several error types
        raise CheckpointError(f"{named / STATE} cannot be read ({damage(err)})") from None


def run_tokenizer(run_dir: Path, spec: ExperimentSpec) -> Path:
    """The run's own copy of its tokenizer, else the file its spec names (absolute in the
    run's spec; a run written before specs stored paths absolute holds it relative to where the
    run was started, read from the current directory)."""
    if (run_dir / "tokenizer.json").is_file():
        return run_dir / "tokenizer.json"
    root = Path(getattr(spec.data.source, "root", spec.output.root))
    path = Path(spec.model.tokenizer.path or root / "tokenizer.json")
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no tokenizer.json and its spec's tokenizer {path} is not there "
            "(a relative path is read from the current directory)"
        )
    return path


def load_trained_run(
    path: str | Path,
    tokenizer: str | Path | None = None,
    warn: Callable[[str], None] = _to_stderr,
) -> TrainedRun:
    """Read a run (see `resolve_checkpoint` for what `path` may be) on the CPU; `tokenizer`
    overrides the run's tokenizer file. A damaged newest checkpoint of a run is passed over
    for the one before, saying so through `warn`."""
    run_dir, checkpoint, state = _read_checkpoint(path, warn)
    spec = load_run_spec(run_dir)
    graph = TaskGraph(spec, pretrained=False)  # the checkpoint holds every weight
    graph.load_state_dict(state["graph"])
    text = None
    if graph.student.text is not None:
        text = TextTokenizer.from_file(
            tokenizer or run_tokenizer(run_dir, spec), spec.model.text.context_length
        )
    return TrainedRun(run_dir, checkpoint, int(state["step"]), spec, graph, text)
