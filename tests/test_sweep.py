"""`mtv sweep`: the grid it plans, a sweep killed with kill -9 and started again (complete jobs
skipped, the rest finished), the submitit executor through its local executor, and the
aggregate it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import yaml
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.eval import evaluate_run, evaluators_of, read_results
from mtv.specs import SpecError
from mtv.sweep import (
    MARKER,
    SweepError,
    SweepJob,
    SweepStopped,
    collect_sweep,
    load_sweep,
    plan_sweep,
    run_job,
    run_sweep,
)
from mtv.world.corpus import render_corpus

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep") / "mini"
    render_corpus(root, 64, size=32, seed=0)
    return root


def write_sweep(folder: Path, corpus: Path, **fields: object) -> Path:
    spec = {
        "name": "test",
        "out": str(folder / "out"),
        "experiments": [str(ROOT / "experiments" / "smoke.yaml")],
        "seeds": [0, 1, 2],
        "set": [
            f"data.source.root={corpus}",
            "data.loader.workers=0",
            "schedule.steps=2",
            "schedule.warmup_steps=1",
            "tasks=[vl, depth]",
        ],
        "eval": {"scenes": 4, "only": ["retrieval", "depth_probe"]},
        **fields,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_the_grid_is_experiments_by_grid_points_by_seeds(tmp_path: Path, corpus: Path) -> None:
    path = write_sweep(
        tmp_path,
        corpus,
        experiments=[str(ROOT / "experiments" / n) for n in ("smoke.yaml", "base.yaml")],
        grid={"optim.lr": [1e-3, 2e-3], "data.views.global_scale": [[0.5, 1.0]]},
        seeds=[3, 4],
    )
    jobs = plan_sweep(load_sweep(path), path)
    assert len(jobs) == 2 * 2 * 2
    first = jobs[0]
    assert first.experiment == "smoke" and first.seed == 3
    assert first.variant == "optim.lr=0.001+data.views.global_scale=[0.5, 1.0]"
    assert "runtime.seed=3" in first.overrides and "data.loader.seed=3" in first.overrides
    assert first.run_dir == tmp_path / "out" / "smoke" / first.run_dir.parent.name / "seed-3"
    assert len({j.run_dir for j in jobs}) == len(jobs)
    assert "--resume" not in first.run_command()


def test_a_bad_override_or_experiment_is_refused_before_any_run(
    tmp_path: Path, corpus: Path
) -> None:
    path = write_sweep(tmp_path, corpus, grid={"optim.lrr": [1.0]})
    with pytest.raises(SpecError, match="lrr"):
        plan_sweep(load_sweep(path), path)
    result = runner.invoke(
        app, ["sweep", str(write_sweep(tmp_path, corpus, experiments=["nope.yaml"]))]
    )
    assert result.exit_code == 2 and "nope.yaml" in result.output


def _sweep_process(path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mtv_cli.main", "sweep", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_a_killed_sweep_skips_complete_jobs_and_finishes_the_rest(
    tmp_path: Path, corpus: Path
) -> None:
    path = write_sweep(tmp_path, corpus)
    jobs = plan_sweep(load_sweep(path), path)
    process = _sweep_process(path)
    deadline = time.monotonic() + 300
    while not (jobs[0].run_dir / MARKER).is_file():
        assert process.poll() is None, process.stdout.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the first job did not finish in time"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not all(job.complete() for job in jobs)  # killed before the end
    first_marker = (jobs[0].run_dir / MARKER).stat().st_mtime_ns
    first_checkpoint = sorted((jobs[0].run_dir / "checkpoints").iterdir())[-1].stat().st_mtime_ns
    time.sleep(1.0)  # a child left behind would still be writing: none may be
    assert not any(
        (job.run_dir / "sweep.log").is_file()
        and (job.run_dir / "sweep.log").stat().st_mtime > time.time() - 0.5
        for job in jobs
    )

    again = _sweep_process(path)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    assert "3 job(s), 1 complete, 2 to run" in output or "3 job(s), 2 complete, 1 to run" in output
    assert all(job.complete() for job in jobs)
    assert (jobs[0].run_dir / MARKER).stat().st_mtime_ns == first_marker  # not run again
    assert (
        sorted((jobs[0].run_dir / "checkpoints").iterdir())[-1].stat().st_mtime_ns
        == first_checkpoint
    )
    results = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert sorted(results["seed"].unique().to_list()) == [0, 1, 2]
    assert set(results["metric"]) >= {"retrieval/i2t_r1", "depth_probe/rmse"}
    assert results["step"].unique().to_list() == [2]
    marker = json.loads((jobs[1].run_dir / MARKER).read_text())
    assert "runtime.seed=1" in marker["overrides"]

    third = _sweep_process(path)
    output, _ = third.communicate(timeout=300)
    assert third.returncode == 0 and "3 complete, 0 to run" in output


@pytest.mark.slow
def test_the_submitit_executor_runs_the_jobs(tmp_path: Path, corpus: Path) -> None:
    path = write_sweep(
        tmp_path,
        corpus,
        seeds=[0, 1],
        executor={"kind": "slurm", "cluster": "local", "gpus_per_job": 0, "timeout_min": 10},
    )
    messages: list[str] = []
    outcome = run_sweep(load_sweep(path), path, report=messages.append)
    assert not outcome.failures, outcome.failures
    assert all(job.complete() for job in outcome.jobs)
    assert any("submitted 2 job(s) to local" in m for m in messages)
    assert (tmp_path / "out" / "submitit").is_dir()
    frame = pl.read_parquet(outcome.results)  # type: ignore[arg-type]
    assert sorted(frame["seed"].unique().to_list()) == [0, 1]


def test_sweep_help_names_the_executors() -> None:
    result = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "skips complete jobs" in text and "Slurm" in text and "--reevaluate" in text


def test_points_are_variants_that_do_not_form_a_grid(tmp_path: Path, corpus: Path) -> None:
    path = write_sweep(
        tmp_path,
        corpus,
        points=[{"schedule.steps": 4}, {"optim.lr": 0.002, "data.batch_size": 4}],
        grid={"optim.weight_decay": [0.0, 0.1]},
        seeds=[0],
    )
    variants = [job.variant for job in plan_sweep(load_sweep(path), path)]
    assert variants == [
        "schedule.steps=4+optim.weight_decay=0.0",
        "schedule.steps=4+optim.weight_decay=0.1",
        "optim.lr=0.002+data.batch_size=4+optim.weight_decay=0.0",
        "optim.lr=0.002+data.batch_size=4+optim.weight_decay=0.1",
    ]


def test_the_slurm_executor_without_submitit_is_one_clear_error(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # makes `import submitit` fail
    path = write_sweep(tmp_path, corpus, seeds=[0], executor={"kind": "slurm", "cluster": "local"})
    with pytest.raises(SweepError, match=r"mtv\[slurm\]"):
        run_sweep(load_sweep(path), path, report=lambda _: None)
    assert not (tmp_path / "out" / "smoke").exists()  # refused before any job ran


def test_a_sweep_resumed_from_another_copy_of_the_repository_finds_its_finished_runs(
    tmp_path: Path, corpus: Path
) -> None:
    """Finished jobs were marked with the experiment's absolute path: the same sweep resumed
    from a second checkout (or a snapshot) re-evaluated every finished run. The marker now holds
    the experiment as the sweep file lists it; old markers match on folder and file name."""
    import json
    import shutil

    from mtv.sweep import MARKER

    copies = []
    for name in ("checkout-a", "checkout-b"):
        folder = tmp_path / name
        (folder / "experiments" / "sweeps").mkdir(parents=True)
        shutil.copy(ROOT / "experiments" / "smoke.yaml", folder / "experiments")
        shutil.copy(ROOT / "experiments" / "base.yaml", folder / "experiments")
        sweep = write_sweep(folder / "experiments" / "sweeps", corpus, out=str(tmp_path / "out"))
        spec = yaml.safe_load(sweep.read_text())
        spec["experiments"] = ["../smoke.yaml"]
        sweep.write_text(yaml.safe_dump(spec, sort_keys=False))
        copies.append(plan_sweep(load_sweep(sweep), sweep)[0])
    first, second = copies
    assert first.run_dir == second.run_dir and first.path != second.path
    first.run_dir.mkdir(parents=True)
    (first.run_dir / MARKER).write_text(json.dumps(first.identity()))
    assert first.identity()["experiment"] == "../smoke.yaml"
    assert second._marked()
    # A marker of the old form (the absolute path) of the same experiment file still matches;
    # one of another experiment does not.
    legacy = {**first.identity(), "experiment": str(first.path)}
    (first.run_dir / MARKER).write_text(json.dumps(legacy))
    assert second._marked()
    other = {**legacy, "experiment": str(first.path.with_name("base.yaml"))}
    (first.run_dir / MARKER).write_text(json.dumps(other))
    assert not second._marked()
    # A marker alone, its run's spec and scores gone, is not a finished job: it is evaluated
    (first.run_dir / MARKER).write_text(json.dumps(first.identity()))
    assert not second.complete() and second.outdated() == ["depth_probe", "retrieval"]


def test_a_sweep_job_never_imports_from_its_working_folder(tmp_path: Path) -> None:
    """Jobs run `mtv` as `python -P -m ...`: a module in the job's working folder is not found
    by a bare `imports:` name (plain `python -m` puts that folder first on sys.path, and the
    stray module ran)."""
    from mtv.sweep import mtv_command

    experiments = tmp_path / "experiments"
    experiments.mkdir()
    smoke = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
    spec = experiments / "exp.yaml"
    spec.write_text(f"extends: {smoke}\nimports: [stray_task]\n")
    marker = tmp_path / "stray-ran"
    (tmp_path / "stray_task.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    done = subprocess.run(
        [*mtv_command(), "spec", "validate", str(spec)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "stray_task" in done.stdout + done.stderr
    assert not marker.exists()


def test_a_partial_report_holds_the_complete_jobs_and_names_the_missing_ones(
    tmp_path: Path, corpus: Path
) -> None:
    report = tmp_path / "final" / "report.md"
    path = write_sweep(tmp_path, corpus, seeds=[0, 1], report=str(report))
    result = runner.invoke(app, ["sweep", str(path), "--partial"])
    assert result.exit_code != 0 and "none of its 2 job(s) is complete" in result.output
    jobs = plan_sweep(load_sweep(path), path)
    run_job(jobs[0])
    result = runner.invoke(app, ["sweep", str(path), "--partial"])
    assert result.exit_code == 0, result.output
    assert "1 of 2 job(s) complete" in result.output
    partial = tmp_path / "out" / "partial"
    text = (partial / "report.md").read_text()
    assert "**Partial report: 1 of 2 job(s) complete**; missing: smoke (seed 1)" in text
    assert "out/partial/results.parquet" in text
    assert not report.exists()  # the sweep's own report waits for every job
    assert not (tmp_path / "out" / "results.parquet").exists()
    results = pl.read_parquet(partial / "results.parquet")
    assert results["seed"].unique().to_list() == [0]
    assert not jobs[1].complete()  # nothing ran


def test_a_job_evaluated_by_an_older_protocol_is_evaluated_again_not_retrained(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_sweep(tmp_path, corpus, seeds=[0])
    (job,) = plan_sweep(load_sweep(path), path)
    run_job(job)
    assert job.complete() and job.outdated() == []
    checkpoint = sorted((job.run_dir / "checkpoints").iterdir())[-1].stat().st_mtime_ns
    monkeypatch.setattr(evaluators_of("mini")["depth_probe"], "version", 9)
    assert job.outdated() == ["depth_probe"] and not job.complete()
    listed = runner.invoke(app, ["sweep", str(path), "--dry-run"], env={"COLUMNS": "300"})
    assert "to evaluate again (depth_probe: older protocol)" in listed.output
    before = read_results(job.run_dir)
    evaluated = before["evaluated_at"].max()
    said: list[str] = []
    outcome = run_sweep(load_sweep(path), path, report=said.append)
    assert not outcome.failures and outcome.skipped == []
    assert any("evaluating again (older protocol: depth_probe)" in line for line in said)
    after = read_results(job.run_dir)
    # Only the out-of-date evaluator ran again; the other's scores stand as they were.
    fresh = after.filter(pl.col("evaluated_at") > evaluated)["evaluator"].unique().to_list()
    assert fresh == ["depth_probe"]
    kept = after.filter(pl.col("evaluator") == "retrieval")
    assert (
        kept["evaluated_at"].to_list()
        == before.filter(pl.col("evaluator") == "retrieval")["evaluated_at"].to_list()
    )
    assert sorted((job.run_dir / "checkpoints").iterdir())[-1].stat().st_mtime_ns == checkpoint
    # The marker records the versions the job was evaluated under, as this process sees them
    # (the patched one; its child evaluated with the installed protocol): a protocol that
    # changes again, either way, is evaluated again.
    marker = json.loads((job.run_dir / MARKER).read_text())
    assert marker["protocol"] == {"depth_probe": 9, "retrieval": 1}
    monkeypatch.undo()
    assert job.outdated() == ["depth_probe"]


def test_the_sweep_reads_its_own_evaluation_of_today_and_survives_a_broken_job(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_sweep(tmp_path, corpus, seeds=[0, 1])
    first, second = plan_sweep(load_sweep(path), path)
    real_run_job = run_job

    def broken(job: SweepJob) -> str:
        if job.seed == 0:
            raise RuntimeError("a spec file cut short")
        return real_run_job(job)

    def stopped(job: SweepJob) -> str:
        raise SweepStopped(signal.SIGTERM, "mtv run")

    # A stop asked for ends the sweep at once: it is no job's failure to step over.
    monkeypatch.setattr("mtv.sweep.run_job", stopped)
    with pytest.raises(SweepStopped):
        run_sweep(load_sweep(path), path, report=lambda line: None)
    monkeypatch.setattr("mtv.sweep.run_job", broken)
    said: list[str] = []
    outcome = run_sweep(load_sweep(path), path, report=said.append)
    assert [job.seed for job, _ in outcome.failures] == [0]
    assert any("failed (RuntimeError: a spec file cut short)" in line for line in said)
    assert second.complete() and not first.complete()  # the next job ran all the same
    monkeypatch.undo()
    sweep_rows = collect_sweep([second])
    # An evaluation by hand on other data (more scenes) neither replaces the sweep's scores
    # nor makes the job look undone.
    evaluate_run(second.run_dir, scenes=6, only=["retrieval"])
    assert second.complete()
    assert collect_sweep([second]).equals(sweep_rows)
    # Scores of an evaluator that no longer exists neither keep the job out of date forever
    # nor reach the aggregate.
    stored = second.run_dir / "eval" / "mini.parquet"
    rows = pl.read_parquet(stored)
    gone = rows.filter(pl.col("evaluator") == "retrieval").with_columns(
        pl.lit("retired_evaluator").alias("evaluator")
    )
    pl.concat([rows, gone]).write_parquet(stored)
    assert second.complete()
    assert "retired_evaluator" not in "".join(collect_sweep([second])["metric"].to_list())
    # An evaluation of another step than the run's last checkpoint is not the job's result.
    monkeypatch.setattr(
        "mtv.sweep.latest_checkpoint", lambda run: run / "checkpoints" / "step-00000099"
    )
    monkeypatch.setattr("mtv.sweep._call", lambda command, log: None)
    with pytest.raises(SweepError, match="evaluated step 2, not the run's last checkpoint"):
        run_job(second)


def test_a_run_whose_experiment_changed_since_it_started_is_not_resumed(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtv.specs import load_spec, spec_to_yaml
    from mtv.train.rundir import changed_training_fields

    path = write_sweep(tmp_path, corpus, seeds=[0])
    (job,) = plan_sweep(load_sweep(path), path)
    now = load_spec(job.path, job.overrides)
    started = now.model_copy(update={"optim": now.optim.model_copy(update={"lr": 0.5})})
    assert changed_training_fields(started, now) == ["optim.lr"]
    # what does not change what is trained is not a change
    quicker = now.model_copy(update={"output": now.output.model_copy(update={"log_every": 3})})
    assert changed_training_fields(quicker, now) == []
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "spec.yaml").write_text(spec_to_yaml(started))
    # a stopped run: a checkpoint short of the last step
    monkeypatch.setattr("mtv.sweep.latest_checkpoint", lambda run: run / "step-00000001")
    calls: list[list[str]] = []
    monkeypatch.setattr("mtv.sweep._call", lambda command, log: calls.append(command))
    with pytest.raises(SweepError, match=r"experiment changed since the run started \(optim.lr\)"):
        run_job(job)
    assert calls == []  # nothing ran


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_job_whose_sweep_is_gone_before_it_starts_never_runs() -> None:
    import functools

    from mtv.runs.jobs import die_with_parent

    command = [sys.executable, "-c", "print('trained')"]
    here = subprocess.run(
        command, preexec_fn=functools.partial(die_with_parent, os.getpid()), capture_output=True
    )
    assert here.returncode == 0 and here.stdout.strip() == b"trained"
    # the sweep that started it has died (the child's parent is not it): it exits before exec
    orphan = subprocess.run(
        command, preexec_fn=functools.partial(die_with_parent, 2**22 + 1), capture_output=True
    )
    assert orphan.returncode == 1 and orphan.stdout == b""


# A stand-in for `mtv run`: says it started (with the threads it was given), then trains until a
# SIGTERM, on which it writes its checkpoint (here: a file) and exits as `mtv run` does.
STOPPABLE_JOB = """
import os, pathlib, signal, sys, time
folder = pathlib.Path(sys.argv[1])
def stop(number, frame):
    (folder / "stopped").write_text("checkpoint")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(folder / "started").write_text(os.environ.get("OMP_NUM_THREADS", "default"))
time.sleep(60)
"""


@dataclass
class _FakeJob:
    label: str
    run_dir: Path

    def outdated(self) -> list[str]:
        return []


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_stop_reaches_every_running_job_and_starts_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: int
) -> None:
    from mtv.specs.sweep import LocalExecutorSpec
    from mtv.sweep import _call, run_local

    jobs = [_FakeJob(f"job{i}", tmp_path / f"job{i}") for i in range(3)]

    def stoppable(job: _FakeJob) -> str:
        job.run_dir.mkdir()
        _call([sys.executable, "-c", STOPPABLE_JOB, str(job.run_dir)], job.run_dir / "log")
        return job.label

    monkeypatch.setattr("mtv.sweep.run_job", stoppable)
    running = jobs[:parallel]

    def stop_when_running() -> None:
        deadline = time.monotonic() + 60
        while not all((job.run_dir / "started").is_file() for job in running):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # to the sweep (this process), as `kill` sends it

    threading.Thread(target=stop_when_running, daemon=True).start()
    executor = LocalExecutorSpec(parallel=parallel, threads_per_job=1 if parallel > 1 else None)
    said: list[str] = []
    start = time.monotonic()
    with pytest.raises(SweepStopped, match="stopped by SIGTERM during"):
        run_local(jobs, said.append, executor)  # type: ignore[arg-type]
    assert time.monotonic() - start < 30  # the jobs stopped; nobody slept its 60 s out
    for job in running:  # each was stopped by the one signal, and checkpointed
        assert (job.run_dir / "stopped").read_text() == "checkpoint"
        threads = (job.run_dir / "started").read_text()
        assert threads == ("1" if parallel > 1 else os.environ.get("OMP_NUM_THREADS", "default"))
    assert not (jobs[-1].run_dir).exists()  # the job queued behind the stop never started
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the sweep's handler is gone
    assert not any("failed" in line for line in said)


def test_parallel_local_jobs_are_cpu_jobs() -> None:
    from pydantic import ValidationError

    from mtv.specs.sweep import LocalExecutorSpec

    with pytest.raises(ValidationError, match="parallel jobs share this machine's CPU cores"):
        LocalExecutorSpec(parallel=2, gpus_per_job=1)
    assert LocalExecutorSpec(parallel=3).job_threads(16) == 5
    assert LocalExecutorSpec(parallel=4).job_threads(2) == 1
    assert LocalExecutorSpec().job_threads(16) is None  # torch's own choice
    assert LocalExecutorSpec(threads_per_job=3).job_threads(16) == 3


@pytest.mark.slow
def test_parallel_local_jobs_train_side_by_side_with_their_share_of_threads(
    tmp_path: Path, corpus: Path
) -> None:
    path = write_sweep(tmp_path, corpus, seeds=[0, 1], executor={"kind": "local", "parallel": 2})
    said: list[str] = []
    outcome = run_sweep(load_sweep(path), path, report=said.append)
    assert not outcome.failures and all(job.complete() for job in outcome.jobs)
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert said[1] == f"2 jobs at a time, {threads} CPU thread(s) each"
    # both started before either finished
    assert [line.split(": ")[1] for line in said[2:4]] == ["training", "training"]
    for job in outcome.jobs:
        environment = json.loads((job.run_dir / "environment.json").read_text())
        assert environment["cpu_threads"] == threads
    results = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert sorted(results["seed"].unique().to_list()) == [0, 1]


def test_a_jobs_messages_name_its_command() -> None:
    from mtv.sweep import _label, command_module

    command = [sys.executable, "-P", "-m", command_module(), "run", "exp.yaml", "--out", "x"]
    assert _label(command) == "mtv run exp.yaml"  # was "-m mtv_cli.main"
    assert _label([sys.executable, "-c", "pass"]) == "mtv"
