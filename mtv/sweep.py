"""Sweeps: a grid of experiments x overrides x seeds, each job an ordinary `mtv run` followed by
`mtv eval` in a child process, on this machine one after another or on Slurm through submitit
(the jobs and their states are planned in `mtv.sweep_plan`).

A job is complete when its run directory holds `sweep-job.json` naming the same experiment,
overrides and evaluation: started again (after a crash, a `kill -9`, or with more seeds), a
sweep skips complete jobs, resumes stopped runs from their last checkpoint (`--resume`) and runs
the rest; then it collects every run's results into one table (`results.parquet`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mtv.analysis.reproduction import write_sweep_analysis
from mtv.eval import RESULT_COLUMNS, current_results, read_results
from mtv.runs.archive import ArchiveError, archive_run, restore_run, same_record
from mtv.runs.checkpoint import checkpoint_step, latest_checkpoint
from mtv.runs.jobs import JobFailed, SweepStopped, job_processes
from mtv.specs import load_run_spec
from mtv.specs.sweep import LocalExecutorSpec, SlurmExecutorSpec, SweepSpec
from mtv.sweep_plan import (
    MARKER,
    SweepError,
    SweepJob,
    command_module,
    load_sweep,
    mtv_command,
    plan_sweep,
)
from mtv.train.rundir import write_text_atomically


def _label(command: list[str]) -> str:
    """ "mtv run EXPERIMENT" / "mtv eval RUN": how a job's command is named in messages."""
    words = command[command.index(command_module()) + 1 :] if command_module() in command else []
    return " ".join(["mtv", *words[:2]])


def _call(command: list[str], log: Path) -> None:
    """Run one job's command to its end (`job_processes`): a SIGINT or SIGTERM to the sweep
    (Ctrl-C, `scancel`, a preemption: often sent to the whole process group) is forwarded to
    the running jobs once, which stop after their current step with a checkpoint; the sweep
    waits for them, then stops (`SweepStopped`) instead of starting the next job. A job runs in
    a session of its own, so a signal to the sweep's group reaches it only through the sweep,
    once; it still dies with the sweep if the sweep is killed outright (`die_with_parent`)."""
    try:
        job_processes.run(command, log, _label(command))
    except JobFailed as err:
        raise SweepError(str(err)) from None


def trained(job: SweepJob) -> bool:
    """Whether the job's run has its final checkpoint."""
    checkpoint = latest_checkpoint(job.run_dir)
    if checkpoint is None:
        return False
    steps = load_run_spec(job.run_dir).schedule.steps
    return checkpoint_step(checkpoint) >= steps


def run_job(job: SweepJob) -> str:
    """Train (resuming a stopped run; nothing when it is trained) and evaluate one job, then
    mark it complete. Returns the job's label. Both commands log to RUN/sweep.log."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    log = job.run_dir / "sweep.log"
    if (job.run_dir / MARKER).is_file() and latest_checkpoint(job.run_dir) is None:
        # A record restored from the archive: its weights were never kept. Training it again
        # would silently replace the archived result.
        raise SweepError(
            f"{job.label}: its run holds a finished record without checkpoints (restored from "
            f"the sweep's archive?), which cannot be evaluated again; move {job.run_dir} (and "
            "its record in the archive) away to train the job anew"
        )
    if not trained(job):
        changed = job.changed() if latest_checkpoint(job.run_dir) is not None else []
        if changed:
            raise SweepError(
                f"{job.label}: its experiment changed since the run started "
                f"({_fields_text(changed)}); resuming would mix two protocols in one run. "
                f"Restore the experiment, or move {job.run_dir} away to train the job anew"
            )
        _call(job.run_command(), log)
    _call(job.eval_command(job.outdated()), log)
    checkpoint = latest_checkpoint(job.run_dir)
    final = None if checkpoint is None else checkpoint_step(checkpoint)
    evaluated = read_results(job.run_dir, job.evaluation.suite, data=job.data())["step"].max()
    if evaluated is None or evaluated != final:
        # `mtv eval` falls back to an older checkpoint when the last cannot be read: that
        # evaluation is not the run's result.
        raise SweepError(
            f"{job.label}: evaluated step {evaluated}, not the run's last checkpoint ({final}); "
            f"see {log}"
        )
    write_text_atomically(
        job.run_dir / MARKER, json.dumps(job.identity() | {"protocol": job.protocol()})
    )
    if job.record is not None:
        archive_run(job.run_dir, job.record)
    return job.label


def _fields_text(fields: list[str]) -> str:
    return ", ".join(fields[:6]) + (", ..." if len(fields) > 6 else "")


def refuse_changed(jobs: list[SweepJob]) -> None:
    """Raise SweepError naming the finished jobs whose experiment changed since they trained
    (data, model, tasks, optimiser, schedule, seed, precision): counted as complete, they would
    put two protocols in one table without a word."""
    stale = [
        (job, fields)
        for job in jobs
        if (job.run_dir / MARKER).is_file() and (fields := job.changed())
    ]
    if stale:
        listed = "; ".join(f"{job.label} ({_fields_text(fields)})" for job, fields in stale[:8])
        more = f"; and {len(stale) - 8} more" if len(stale) > 8 else ""
        raise SweepError(
            f"{len(stale)} finished run(s) trained under another version of their experiment: "
            f"{listed}{more}. Restore the experiments, or move those runs (and their records "
            "in the sweep's archive) away to train them anew"
        )


def sync_archive(jobs: list[SweepJob], report: Progress) -> None:
    """Make the runs and the sweep's archive agree: a complete job whose record is missing or
    older is archived; a job not complete here whose archived record is complete is restored
    (never over a run that trained here: that one is resumed and archived when it finishes)."""
    for job in jobs:
        if job.record is None:
            continue
        if job.complete():
            if not same_record(job.run_dir, job.record):
                archive_run(job.run_dir, job.record)
                report(f"{job.label}: archived to {job.record}")
            continue
        if not job.archived():
            continue
        try:
            restore_run(job.record, job.run_dir, last=(MARKER,))
        except ArchiveError as err:
            report(f"{job.label}: not restored: {err}")
            continue
        report(f"{job.label}: restored from {job.record}")


Progress = Callable[[str], None]


def _run_one(job: SweepJob, where: str, report: Progress) -> str | None:
    """Run one job; the error of a failed one (None when it succeeded). A stop asked for
    (`SweepStopped`) is raised: it is no job's failure."""
    if job_processes.stopped is not None:  # a job queued behind a stop never starts
        raise SweepStopped(job_processes.stopped, f"the wait for {job.label}")
    try:
        # Inside the guard: reading a run's state can fail too (a spec file cut short).
        stale = job.outdated()
        state = (
            f"evaluating again (older protocol: {', '.join(stale)})"
            if stale
            else "evaluating"
            if trained(job)
            else "resuming"
            if latest_checkpoint(job.run_dir)
            else "training"
        )
        report(f"{where}: {state}")
        run_job(job)
    except SweepStopped:
        raise
    except SweepError as err:
        report(f"{where}: failed ({err}); see {job.run_dir / 'sweep.log'}")
        return str(err)
    except Exception as err:  # one broken job must not end the sweep: the rest still run
        report(f"{where}: failed ({type(err).__name__}: {err}); see {job.run_dir}")
        return f"{type(err).__name__}: {err}"
    report(f"{where}: done")
    return None


def run_local(
    jobs: list[SweepJob], report: Progress, executor: LocalExecutorSpec | None = None
) -> list[tuple[SweepJob, str]]:
    """Run the jobs on this machine, in order: one after another, or `executor.parallel` at a
    time on worker threads (each job a child process with `executor.job_threads` CPU threads).
    Returns (job, error) of those that failed. A stop (SIGINT, SIGTERM) stops every running job
    with a checkpoint, starts no other and raises `SweepStopped` once all have stopped."""
    executor = executor or LocalExecutorSpec()
    threads = executor.job_threads(os.cpu_count() or 1)
    env = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    numbered = [(i, job, f"[{i}/{len(jobs)}] {job.label}") for i, job in enumerate(jobs, 1)]
    failures: list[tuple[int, SweepJob, str]] = []
    with job_processes.forwarding(env):
        if executor.parallel == 1:
            for i, job, where in numbered:
                error = _run_one(job, where, report)
                if error is not None:
                    failures.append((i, job, error))
            return [(job, error) for _, job, error in failures]
        report(f"{executor.parallel} jobs at a time, {threads} CPU thread(s) each")
        stops: list[tuple[int, SweepStopped]] = []
        with ThreadPoolExecutor(executor.parallel, thread_name_prefix="mtv-sweep-job") as pool:
            futures = {
                pool.submit(_run_one, job, where, report): (i, job) for i, job, where in numbered
            }
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    error = future.result()
                except SweepStopped as stop:
                    stops.append((futures[future][0], stop))
                    for queued in futures:
                        queued.cancel()  # those not started yet; the running ones are stopping
                    continue
                if error is not None:
                    failures.append((*futures[future], error))
        if stops:  # the first job's: one that ran (jobs start in order, queued ones after)
            raise min(stops, key=lambda stop: stop[0])[1]
        return [(job, error) for _, job, error in sorted(failures, key=lambda f: f[0])]


def run_submitit(
    jobs: list[SweepJob], executor: SlurmExecutorSpec, out: Path, report: Progress
) -> list[tuple[SweepJob, str]]:
    """Submit the jobs as one array through submitit (Slurm, or its local executor) and wait."""
    try:
        import submitit
    except ImportError as err:
        raise SweepError(
            "the slurm executor submits through submitit, which is not installed here: "
            "pip install 'mtv[slurm]' (or choose `executor: {kind: local}`)"
        ) from err

    folder = out / executor.folder
    backend = submitit.AutoExecutor(
        folder=folder, cluster=None if executor.cluster == "slurm" else "local"
    )
    parameters: dict[str, Any] = {
        "timeout_min": executor.timeout_min,
        "gpus_per_node": executor.gpus_per_job,
        "cpus_per_task": executor.cpus_per_job,
        "mem_gb": executor.mem_gb,
        "tasks_per_node": 1,  # torchrun starts the ranks of a multi-GPU job
        "slurm_array_parallelism": executor.max_parallel,
        **{f"slurm_{k}": v for k, v in executor.extra.items()},
    }
    if executor.partition:
        parameters["slurm_partition"] = executor.partition
    if executor.account:
        parameters["slurm_account"] = executor.account
    backend.update_parameters(**parameters)
    submitted = backend.map_array(run_job, jobs)
    report(f"submitted {len(submitted)} job(s) to {executor.cluster} (logs: {folder})")
    failures = []
    for job, handle in zip(jobs, submitted, strict=True):
        try:
            handle.result()
            report(f"{job.label}: done")
        except Exception as err:  # submitit re-raises the job's error, whatever its type
            text = str(err).strip()
            failures.append((job, text.splitlines()[-1] if text else repr(err)))
            report(f"{job.label}: failed; see {job.run_dir / 'sweep.log'}")
    return failures


@dataclass
class SweepOutcome:
    jobs: list[SweepJob]
    skipped: list[SweepJob]  # complete before this invocation
    failures: list[tuple[SweepJob, str]]
    results: Path | None  # the aggregate table (None when some job failed)
    written: list[Path]  # the analysis and report files made from it


def run_sweep(
    spec: SweepSpec, sweep_file: str | Path, report: Progress = print, reevaluate: bool = False
) -> SweepOutcome:
    """Run every incomplete job of the sweep, then aggregate the results of all of them.
    `reevaluate`: evaluate complete jobs again too (their training is not repeated), e.g.
    after the evaluation code changed."""
    jobs = plan_sweep(spec, sweep_file)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    sync_archive(jobs, report)
    refuse_changed(jobs)
    skipped = [] if reevaluate else [job for job in jobs if job.complete()]
    pending = [job for job in jobs if job not in skipped]
    report(f"{spec.name}: {len(jobs)} job(s), {len(skipped)} complete, {len(pending)} to run")
    executor = spec.executor
    if not pending:
        failures: list[tuple[SweepJob, str]] = []
    elif isinstance(executor, LocalExecutorSpec):
        failures = run_local(pending, report, executor)
    else:
        failures = run_submitit(pending, executor, out, report)
    results, written = None, []
    if not failures:
        results = out / "results.parquet"
        frame = collect_sweep(jobs)
        partial = results.with_suffix(".parquet.partial")
        frame.write_parquet(partial)
        partial.replace(results)
        written = write_sweep_analysis(frame, spec, out)
    return SweepOutcome(jobs, skipped, failures, results, written)


def _missing_text(missing: list[SweepJob]) -> str:
    """The jobs not yet complete, grouped by experiment and variant: "vl_ground (seeds 0, 1)"."""
    seeds: dict[str, list[int]] = {}
    for job in missing:
        name = f"{job.experiment} ({job.variant})" if job.variant else job.experiment
        seeds.setdefault(name, []).append(job.seed)
    return "; ".join(
        f"{name} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))})"
        for name, s in seeds.items()
    )


def report_so_far(
    spec: SweepSpec, sweep_file: str | Path, report: Progress = print
) -> SweepOutcome:
    """The analysis of the jobs complete so far, for a sweep that takes days: the aggregate,
    tables and report written under OUT/partial/, never to the sweep's own report path (a
    partial report must not pass for the final one), its first lines saying how many jobs it
    holds and which are missing. Trains nothing; archives the complete jobs (`sync_archive`)."""
    jobs = plan_sweep(spec, sweep_file)
    sync_archive(jobs, report)
    refuse_changed(jobs)
    done = [job for job in jobs if job.complete()]
    if not done:
        raise SweepError(f"{spec.name}: none of its {len(jobs)} job(s) is complete yet")
    missing = [job for job in jobs if job not in done]
    out = Path(spec.out) / "partial"
    out.mkdir(parents=True, exist_ok=True)
    frame = collect_sweep(done)
    results = out / "results.parquet"
    frame.write_parquet(results)
    note = (
        f"**Partial report: {len(done)} of {len(jobs)} job(s) complete**"
        + (f"; missing: {_missing_text(missing)}" if missing else "")
        + f". Written by `mtv sweep {Path(sweep_file).name} --partial`; the sweep writes its "
        "report only once every job is complete."
    )
    partial = spec.model_copy(
        update={
            "description": f"{note}\n\n{spec.description or ''}".strip() + "\n",
            "report": str(out / Path(spec.report).name) if spec.report else None,
            "out": str(out),  # where its aggregate lies, as the report's last line says
        }
    )
    written = write_sweep_analysis(frame, partial, out)
    return SweepOutcome(jobs, done, [], results, [results, *written])


def collect_sweep(jobs: list[SweepJob]) -> pl.DataFrame:
    """One row per (job, evaluated step, metric): every run's evaluation history (its final
    step, and the steps evaluated during training), with the job's experiment, variant, seed,
    task kinds and run directory."""
    frames = []
    for job in jobs:
        kinds = [t.kind for t in load_run_spec(job.run_dir).tasks]
        # The sweep's own evaluations by today's protocols: not another one run by hand on
        # the same run, nor an evaluator's scores from before it changed or was removed.
        history = current_results(
            read_results(job.run_dir, job.evaluation.suite, latest=False, data=job.data()),
            job.evaluation.suite,
        )
        rows = history.select(
            pl.lit(job.experiment).alias("experiment"),
            pl.lit(job.variant).alias("variant"),
            pl.lit(job.seed).alias("seed"),
            pl.lit(kinds).alias("tasks"),
            pl.lit(str(job.run_dir)).alias("run"),
            (pl.col("evaluator") + "/" + pl.col("metric")).alias("metric"),
            *(c for c in RESULT_COLUMNS if c not in ("suite", "evaluator", "metric")),
        )
        frames.append(rows)
    return pl.concat(frames, how="vertical_relaxed")


__all__ = [
    "MARKER",
    "SweepError",
    "SweepJob",
    "SweepOutcome",
    "collect_sweep",
    "load_sweep",
    "mtv_command",
    "plan_sweep",
    "report_so_far",
    "run_job",
    "run_sweep",
    "sync_archive",
]
