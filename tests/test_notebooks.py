"""Every notebook runs top to bottom (on the session's smoke runs) and draws its figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import polars as pl
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    names = {path.name for path in NOTEBOOKS}
    assert {"loss_curves.ipynb", "depth_and_features.ipynb", "synergy.ipynb"} <= names


def execute(path: Path) -> list:  # type: ignore[type-arg]
    """Run a notebook top to bottom in a fresh kernel; its code cells' outputs."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    ).execute()
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(
    path: Path, ladder_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel inherits this environment: the notebooks read their runs from MTV_RUNS.
    monkeypatch.setenv("MTV_RUNS", str(next(iter(ladder_runs.values())).parent))
    monkeypatch.setenv("MTV_EVAL_SCENES", "6")
    outputs = execute(path)
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was drawn"


def test_synergy_notebook_on_a_partial_set_of_runs_says_what_is_missing(
    ladder_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    for name in ("vl", "vl_ssl"):  # a sweep that has only just begun
        shutil.copytree(ladder_runs[name], tmp_path / name)
    monkeypatch.setenv("MTV_RUNS", str(tmp_path))
    monkeypatch.setenv("MTV_EVAL_SCENES", "6")
    outputs = execute(next(p for p in NOTEBOOKS if p.name == "synergy.ipynb"))
    assert not [o for o in outputs if o.output_type == "error"]
    printed = " ".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "missing" in printed.lower()


def test_own_data_notebook_with_a_depth_expert_labels_trains_and_evaluates_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notebook's documented `MTV_DEPTH_EXPERT` (a local Depth Anything V2 directory; here a
    tiny random one) labels depth, trains the depth task and evaluates it (it stopped at the
    run: the experiment asked the depth-only store for boxes)."""
    from tests.tiny_hf import build_tiny_depth_anything

    monkeypatch.setenv("MTV_DEPTH_EXPERT", str(build_tiny_depth_anything(tmp_path / "da2")))
    monkeypatch.setenv("MTV_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("MTV_STEPS", "2")
    outputs = execute(next(p for p in NOTEBOOKS if p.name == "own_data.ipynb"))
    assert not [o for o in outputs if o.output_type == "error"]
    printed = " ".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "labels: " in printed and "no MTV_DEPTH_EXPERT" not in printed
    results = pl.read_parquet(next((tmp_path / "work").rglob("eval/source.parquet")))
    assert "relative_depth" in set(results["evaluator"])
