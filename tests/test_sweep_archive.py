"""A sweep's archive: finished runs' records (no checkpoints) kept in a folder one can commit, and
restored on a fresh clone instead of being trained again; and finished runs whose experiment
changed since, refused rather than counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.runs.archive import ArchiveError, archive_run, record_files, restore_run, same_record
from mtv.sweep import MARKER, SweepError, load_sweep, plan_sweep, run_job, run_sweep
from tests.test_sweep import write_sweep

runner = CliRunner()


def _fake_run(run_dir: Path) -> None:
    (run_dir / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-00000002" / "state.pt").write_bytes(b"weights")
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "mini.parquet").write_bytes(b"scores")
    (run_dir / "eval" / "mini.parquet.partial").write_bytes(b"half")
    (run_dir / "spec.yaml").write_text("name: x\n")
    (run_dir / ".mtv-lock").write_text("123")
    (run_dir / MARKER).write_text("{}")


def test_a_record_is_the_run_without_its_weights_lock_or_half_written_files(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    _fake_run(run_dir)
    assert record_files(run_dir) == [Path("eval/mini.parquet"), Path("spec.yaml"), Path(MARKER)]
    record = tmp_path / "archive" / "run"
    assert archive_run(run_dir, record) == record_files(run_dir)
    assert not (record / "checkpoints").exists() and same_record(run_dir, record)
    (run_dir / "eval" / "mini.parquet").write_bytes(b"scores of a new evaluation")
    assert not same_record(run_dir, record)
    archive_run(run_dir, record)  # replaces the old record, leaves nothing beside it
    assert same_record(run_dir, record)
    assert sorted(p.name for p in record.parent.iterdir()) == ["run"]


def test_a_record_is_never_restored_over_a_run_that_trained_there(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _fake_run(run_dir)
    record = tmp_path / "record"
    archive_run(run_dir, record)
    with pytest.raises(ArchiveError, match="holds a run already"):
        restore_run(record, run_dir)
    assert (run_dir / "checkpoints" / "step-00000002" / "state.pt").read_bytes() == b"weights"
    with pytest.raises(ArchiveError, match="no such record"):
        restore_run(tmp_path / "nowhere", tmp_path / "fresh")
    fresh = tmp_path / "fresh"
    restored = restore_run(record, fresh, last=(MARKER,))
    assert restored[-1] == Path(MARKER)  # the marker comes last: a cut copy is not complete
    assert same_record(fresh, record)


@pytest.mark.slow
def test_a_fresh_clone_restores_the_archived_jobs_instead_of_training_them(
    tmp_path: Path, corpus: str
) -> None:
    archive = tmp_path / "archive"
    path = write_sweep(tmp_path, Path(corpus), seeds=[0, 1], archive=str(archive))
    jobs = plan_sweep(load_sweep(path), path)
    assert jobs[0].record == archive / "smoke" / "seed-0"
    run_job(jobs[0])  # a finished job is archived as it is marked complete
    assert (jobs[0].record / MARKER).is_file() and not (jobs[0].record / "checkpoints").exists()
    assert jobs[0].archived() and not jobs[1].archived()
    scores = pl.read_parquet(jobs[0].run_dir / "eval" / "mini.parquet")

    shutil.rmtree(tmp_path / "out")  # a fresh clone: the runs are gone, the archive is not
    listed = runner.invoke(app, ["sweep", str(path), "--dry-run"], env={"COLUMNS": "300"})
    assert "archived (restored when the sweep runs)" in listed.output
    result = runner.invoke(app, ["sweep", str(path), "--partial"])
    assert result.exit_code == 0, result.output
    assert "smoke/seed 0: restored from" in result.output
    assert "1 of 2 job(s) complete" in result.output
    assert jobs[0].complete() and not (jobs[0].run_dir / "checkpoints").exists()
    assert pl.read_parquet(jobs[0].run_dir / "eval" / "mini.parquet").equals(scores)

    # Evaluating a restored record again would need weights it never kept: one clear failure,
    # nothing trained in its place.
    said: list[str] = []
    outcome = run_sweep(load_sweep(path), path, report=said.append, reevaluate=True)
    failed = dict((job.label, error) for job, error in outcome.failures)
    assert "without checkpoints" in failed["smoke/seed 0"]
    assert not (jobs[0].run_dir / "checkpoints").exists()
    assert jobs[1].archived()  # the other job trained and was archived


def test_a_record_of_another_job_is_not_restored(tmp_path: Path, corpus: str) -> None:
    archive = tmp_path / "archive"
    path = write_sweep(tmp_path, Path(corpus), seeds=[0], archive=str(archive))
    (job,) = plan_sweep(load_sweep(path), path)
    assert job.record is not None
    job.record.mkdir(parents=True)
    (job.record / MARKER).write_text('{"experiment": "other.yaml", "overrides": [], "eval": {}}')
    assert not job.archived()
    listed = runner.invoke(app, ["sweep", str(path), "--dry-run"], env={"COLUMNS": "300"})
    assert "to run" in listed.output and "archived" not in listed.output


def test_a_finished_run_whose_experiment_changed_is_refused_not_counted(
    tmp_path: Path, corpus: str
) -> None:
    """A complete job counted as complete after its experiment changed would put two protocols
    in one table without a word: the sweep and its partial report refuse, naming the fields."""
    from mtv.specs import load_spec, spec_to_yaml

    path = write_sweep(tmp_path, Path(corpus), seeds=[0])
    (job,) = plan_sweep(load_sweep(path), path)
    now = load_spec(job.path, job.overrides)
    job.run_dir.mkdir(parents=True)
    (job.run_dir / MARKER).write_text(json.dumps(job.identity()))

    # Trained where the data lay in another copy of the repository, gone from this machine:
    # the same folder and name is the same data; another is not.
    root = Path(now.data.source.root)  # type: ignore[union-attr]
    for elsewhere, same in (("/gone/copy", True), ("/gone/other-world", False)):
        moved = Path(elsewhere) / root.parent.name / (root.name if same else "other")
        source = now.data.source.model_copy(update={"root": str(moved)})
        started = now.model_copy(update={"data": now.data.model_copy(update={"source": source})})
        (job.run_dir / "spec.yaml").write_text(spec_to_yaml(started))
        assert job.changed() == ([] if same else ["data.source.root"])

    started = now.model_copy(update={"optim": now.optim.model_copy(update={"lr": 0.5})})
    (job.run_dir / "spec.yaml").write_text(spec_to_yaml(started))
    with pytest.raises(
        SweepError, match=r"trained under another version.*smoke/seed 0 \(optim.lr\)"
    ):
        run_sweep(load_sweep(path), path, report=lambda line: None)
    result = runner.invoke(app, ["sweep", str(path), "--partial"])
    assert result.exit_code != 0 and "smoke/seed 0 (optim.lr)" in result.output
    assert not (tmp_path / "out" / "partial").exists()
