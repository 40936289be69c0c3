"""Fault injection for runs: a second run on a locked directory, Ctrl-C / SIGTERM mid-run, a
refused resume, a corrupt newest checkpoint, and what each rank of a 2-process run prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.data.lock import LOCK_NAME, ExclusiveLock
from mtv.runs.checkpoint import MARKER, STATE, CheckpointError, complete_checkpoints
from mtv.runs.restore import load_trained_run
from mtv.runtime.distributed import resolve_backend
from mtv.train import Trainer, TrainingError, latest_checkpoint
from tests.helpers import smoke

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
CLI = [sys.executable, "-c", "from mtv_cli.main import entry; entry()"]


def _command(corpus: str, out: Path, *extra: str) -> list[str]:
    sets = [
        f"data.source.root={corpus}",
        "schedule.steps=16",
        "output.checkpoint_every=4",
        "data.loader.workers=1",  # a Ctrl-C reaches the loader's worker too
        "runtime.precision=fp32",
        *extra,
    ]
    return [*CLI, "run", str(SMOKE), "--out", str(out), *(a for s in sets for a in ("--set", s))]


def _wait_for_checkpoint(run: Path, process: subprocess.Popen, step: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        found = latest_checkpoint(run)
        if found is not None and int(found.name.split("-")[1]) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step {step} appeared (exit code {process.poll()})")


@pytest.fixture(scope="module")
def uninterrupted(corpus: str, tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    out = tmp_path_factory.mktemp("whole") / "run"
    whole = subprocess.run(_command(corpus, out), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    return pl.read_parquet(out / "metrics.parquet")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_saves_every_finished_step_and_resume_repeats_the_losses(
    corpus: str, uninterrupted: pl.DataFrame, tmp_path: Path, stop: signal.Signals
) -> None:
    run = tmp_path / "stopped"
    # Its own process group, signalled as a terminal's Ctrl-C or Slurm's preemption would.
    first = subprocess.Popen(
        _command(corpus, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    _wait_for_checkpoint(run, first, 4)
    spec_before = (run / "spec.yaml").read_bytes()

    # A second run into the same directory is refused by the lock, naming the holder.
    second = subprocess.run(_command(corpus, run), capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "in use" in lines[0], lines
    assert (run / "spec.yaml").read_bytes() == spec_before

    os.killpg(first.pid, stop)
    out, err = first.communicate(timeout=300)
    assert first.returncode == (130 if stop == signal.SIGINT else 143), out + err
    assert "Traceback" not in err
    assert f"stopped by {stop.name} after step" in out and "resume with: mtv run" in out
    steps = int(latest_checkpoint(run).name.split("-")[1])  # type: ignore[union-attr]
    assert 4 <= steps < 16
    metrics = pl.read_parquet(run / "metrics.parquet")
    assert metrics["step"].to_list() == list(range(1, steps + 1))  # every finished step

    resumed = subprocess.run(
        [*_command(corpus, run), "--resume"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    a, b = uninterrupted, pl.read_parquet(run / "metrics.parquet")
    assert a["step"].to_list() == b["step"].to_list() == list(range(1, 17))
    for column in [c for c in a.columns if c.startswith("loss")]:
        assert (a[column] - b[column]).abs().max() <= 1e-6, column


def test_a_refused_resume_writes_nothing(corpus: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(smoke(corpus, "schedule.steps=2"), run, report=lambda m: None).run()
    files = [p for p in run.iterdir() if p.is_file() and p.name != LOCK_NAME]  # the holder's
    before = {p.name: p.read_bytes() for p in files}
    changed = smoke(corpus, "schedule.steps=4", "data.batch_size=4")
    with pytest.raises(TrainingError, match=r"--resume: the spec differs .*data\.batch_size"):
        Trainer(changed, run, resume=True, report=lambda m: None)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p in files}
    assert after == before  # spec.yaml, environment.json and metrics byte for byte
    # and the lock was let go: the unchanged spec resumes
    assert Trainer(smoke(corpus, "schedule.steps=3"), run, resume=True).run().steps == 3


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(
    corpus: str, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    spec = smoke(corpus, "schedule.steps=3", "output.checkpoint_every=1", "output.keep_last=3")
    Trainer(spec, run, report=lambda m: None).run()
    newest = complete_checkpoints(run)[-1]
    state = newest / STATE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated on disk
    messages: list[str] = []
    resumed = Trainer(
        smoke(corpus, "schedule.steps=4", "output.checkpoint_every=1"),
        run,
        resume=True,
        report=messages.append,
    )
    assert resumed.step == 2
    resumed.close()  # lets go of the run directory without training
    assert any("step-00000003" in m and "cannot be read" in m for m in messages), messages
    for path in complete_checkpoints(run):
        path.joinpath(STATE).write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match=r"no checkpoint of .* can be read"):
        Trainer(spec, run, resume=True, report=lambda m: None)


def test_evaluation_reads_past_damaged_checkpoints_and_names_them(
    corpus: str, tmp_path: Path
) -> None:
    """What `mtv eval` and export read: a run's newest checkpoint truncated on disk, or with an
    empty COMPLETE marker, is passed over for the one before with a warning naming it (as
    `--resume` does); a damaged checkpoint named on its own is one error naming its file."""
    run = tmp_path / "run"
    spec = smoke(corpus, "schedule.steps=3", "output.checkpoint_every=1", "output.keep_last=3")
    Trainer(spec, run, report=lambda m: None).run()
    third, second, first = reversed(complete_checkpoints(run))
    state = third / STATE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    (second / MARKER).write_text("")  # a marker cut short
    said: list[str] = []
    restored = load_trained_run(run, warn=said.append)
    assert restored.checkpoint == first and restored.step == 1
    assert any(str(second) in m and "damaged COMPLETE" in m for m in said), said
    assert any(str(third) in m and "cannot be read" in m for m in said), said
    with pytest.raises(CheckpointError, match=rf"{third / STATE} cannot be read"):
        load_trained_run(third)
    with pytest.raises(CheckpointError, match=rf"{second / MARKER} is missing, empty"):
        load_trained_run(second)
    result = CliRunner().invoke(app, ["eval", str(third), "--only", "retrieval"])
    assert result.exit_code != 0 and str(third / STATE) in result.output


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    holder = ExclusiveLock.for_run(run)
    # What a killed run leaves: the file naming it, and no flock (the kernel dropped it).
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "elsewhere"}))
    dead.kill()
    dead.wait()
    holder.acquire()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    holder.release()


def test_backend_auto_is_nccl_on_cuda_and_gloo_on_cpu() -> None:
    assert resolve_backend("auto", "cuda") == "nccl"
    assert resolve_backend("auto", "cpu") == "gloo"
    assert resolve_backend("gloo", "cuda") == "gloo"  # an explicit choice is kept
    assert resolve_backend("nccl", "cuda") == "nccl"


def test_the_trainer_starts_the_resolved_backend(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtv.train.trainer as trainer_module

    asked: list[str] = []

    def record(backend: str) -> tuple[int, int]:
        asked.append(backend)
        return 0, 1

    monkeypatch.setattr(trainer_module, "init_from_environment", record)
    Trainer(smoke(corpus, "schedule.steps=1", "runtime.device=cpu"), tmp_path / "run")
    assert asked == ["gloo"]


@pytest.mark.slow
def test_two_ranks_under_torchrun_speak_with_one_voice(corpus: str, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    mtv = str(Path(sys.executable).parent / "mtv")  # the installed command, as the README runs it
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "--no-python", mtv, "run", str(SMOKE), "--out", str(out),
        "--set", f"data.source.root={corpus}", "--set", "schedule.steps=2",
        "--set", "data.loader.workers=0", "--set", "data.batch_size=8",
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("run directory:") == 2  # rank 0: at the start and the end
    assert result.stdout.count("finished 2 steps") == 1
    assert json.loads((out / "environment.json").read_text())["world_size"] == 2
    # The final line is rank 0's last step, as the step lines and metrics.parquet are (it was
    # a mean over the ranks, which no other line showed).
    last = pl.read_parquet(out / "metrics.parquet").row(-1, named=True)
    (final,) = [line for line in result.stdout.splitlines() if "final losses:" in line]
    assert f"total {last['loss']:.4f}" in final and f"vl {last['loss/vl']:.4f}" in final


def test_files_of_pre_release_runs_are_one_error_each(tmp_path: Path) -> None:
    """The compatibility code for files only pre-release runs wrote is gone; such a file is one
    error saying what it is: metrics numbered from 0, a graph state with the student and the
    teacher apart."""
    from mtv.graph import TaskGraph
    from mtv.train.metrics import MetricsHistoryError, MetricsLog
    from tests.helpers import tiny_spec

    path = tmp_path / "metrics.parquet"
    pl.DataFrame({"step": [0, 1, 2, 3], "loss": [4.0, 3.0, 2.0, 1.0]}).write_parquet(path)
    with pytest.raises(MetricsHistoryError, match=r"metrics.parquet numbers its steps from 0"):
        MetricsLog(path).resume(2)
    pl.DataFrame({"step": [1, 2, 3], "loss": [4.0, 3.0, 2.0]}).write_parquet(path)
    log = MetricsLog(path)
    log.resume(2)  # numbered from 1: rows after the checkpoint dropped
    assert [(r["step"], r["loss"]) for r in log.rows] == [(1, 4.0), (2, 3.0)]
    graph = TaskGraph(tiny_spec(["vl", "distill"]))
    old = {"student": graph.student.state_dict(), "teacher": graph.teacher.state_dict()}
    with pytest.raises(ValueError, match="layout of a pre-release mtv"):
        graph.load_state_dict(old)


def test_a_second_stop_signal_acts_as_it_would_without_mtv() -> None:
    """The first Ctrl-C asks for a graceful stop (recorded, nothing raised); the second acts as
    Python's own handler does, so a stuck run still stops at once; `restore` puts it all back."""
    from mtv.runtime.signals import StopRequest

    # What "without mtv" is depends on how the process was started: Python raises
    # KeyboardInterrupt, unless SIGINT was ignored when it started (a job put in the background
    # by a non-interactive shell, as CI may be), where Ctrl-C does nothing. Both, explicitly.
    original = signal.getsignal(signal.SIGINT)
    try:
        for without_mtv in (signal.default_int_handler, signal.SIG_IGN):
            signal.signal(signal.SIGINT, without_mtv)
            stop = StopRequest(deadline=None).install()
            try:
                # raise_signal delivers to this thread and runs the handler before it returns;
                # a process-wide kill could land on another thread and be handled later.
                signal.raise_signal(signal.SIGINT)
                assert stop.signal == signal.SIGINT and stop.name == "SIGINT"
                if without_mtv is signal.SIG_IGN:
                    signal.raise_signal(signal.SIGINT)  # ignored, as it was before
                else:
                    with pytest.raises(KeyboardInterrupt):
                        signal.raise_signal(signal.SIGINT)
            finally:
                stop.restore()
            assert signal.getsignal(signal.SIGINT) is without_mtv
    finally:
        signal.signal(signal.SIGINT, original)


def test_results_without_reference_columns_are_one_error(tmp_path: Path) -> None:
    """An evaluation file without `trivial` and `random_init` (a pre-release mtv) is refused,
    naming it, not read with empty references."""
    from mtv.eval import read_results

    (tmp_path / "eval").mkdir()
    rows = {"suite": ["mini"], "evaluator": ["retrieval"], "metric": ["i2t_r1"], "value": [0.3]}
    pl.DataFrame(rows | {"step": [5]}).write_parquet(tmp_path / "eval" / "mini.parquet")
    with pytest.raises(ValueError, match=r"mini.parquet lack the reference columns trivial"):
        read_results(tmp_path)


def test_a_checkpoint_being_written_is_never_the_latest(tmp_path: Path) -> None:
    """The folder a checkpoint is written in holds its state and marker a moment before it is
    renamed into place: readers (resume, eval, a sweep watching) never take it for a checkpoint
    (they did, in that moment)."""
    from mtv.runs.checkpoint import latest_checkpoint, save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run, 3, {"step": 3}, keep_last=2)
    partial = run / "checkpoints" / "step-00000004.partial"
    partial.mkdir()
    (partial / STATE).write_bytes((run / "checkpoints" / "step-00000003" / STATE).read_bytes())
    (partial / MARKER).write_text("4")
    assert latest_checkpoint(run) == run / "checkpoints" / "step-00000003"
    assert complete_checkpoints(run) == [run / "checkpoints" / "step-00000003"]
