"""A finished (or stopped) run read back: its spec, its task graph with the weights of one
checkpoint, and its tokenizer. What evaluation and export start from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtv.checkpoint import STATE, is_checkpoint, latest_checkpoint, load_checkpoint
from mtv.graph import TaskGraph
from mtv.models.tokenizer import TextTokenizer
from mtv.specs import ExperimentSpec, load_spec


@dataclass
class TrainedRun:
    run_dir: Path
    checkpoint: Path
    step: int
    spec: ExperimentSpec
    graph: TaskGraph
    tokenizer: TextTokenizer | None  # None when the run has no text tower


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) of a run directory (its latest complete checkpoint), one
    checkpoint directory (`RUN/checkpoints/step-N`) or its `state.pt`."""
    path = Path(path)
    path = path.parent if path.name == STATE and path.is_file() else path
    run_dir, checkpoint = (path.parent.parent, path) if is_checkpoint(path) else (path, None)
    if not (run_dir / "spec.yaml").is_file():
        raise FileNotFoundError(
            f"{path} is neither a run directory nor a checkpoint of one (no spec.yaml)"
        )
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint")
    return run_dir, checkpoint


def run_tokenizer(run_dir: Path, spec: ExperimentSpec) -> Path:
    """The run's own copy of its tokenizer, else the file its spec names (relative paths in a
    spec are relative to where the run was started)."""
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


def load_trained_run(path: str | Path, tokenizer: str | Path | None = None) -> TrainedRun:
    """Read a run (see `resolve_checkpoint` for what `path` may be) on the CPU; `tokenizer`
    overrides the run's tokenizer file."""
    run_dir, checkpoint = resolve_checkpoint(path)
    spec = load_spec(run_dir / "spec.yaml")
    graph = TaskGraph(spec, pretrained=False)  # the checkpoint holds every weight
    state = load_checkpoint(checkpoint)
    graph.load_state_dict(state["graph"])
    text = None
    if graph.student.text is not None:
        text = TextTokenizer.from_file(
            tokenizer or run_tokenizer(run_dir, spec), spec.model.text.context_length
        )
    return TrainedRun(run_dir, checkpoint, int(state["step"]), spec, graph, text)
