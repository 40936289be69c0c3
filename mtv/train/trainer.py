"""`mtv run`: the training loop, readable top to bottom.

One step: next micro-batch(es) -> (teacher targets, student losses) under autocast -> backward
(every loss, finite or not: a branch would be a host read) -> the non-finite guard, decided on
the device (`TrainStep`: the step is skipped by fused AdamW's `found_inf`, the EMA weight set to
0; named by task at the next log step) -> clip -> AdamW -> logit clamps and the EMA teacher ->
metrics. Checkpoints hold everything a resume needs (model,
teacher, optimiser, centers, RNG, loader position), so a resumed run repeats the same losses.
"""

from __future__ import annotations

import json
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mtv.data.batch import Batch
from mtv.data.loader import build_stream
from mtv.data.lock import ExclusiveLock, Locked
from mtv.eval import FrozenModel, check_settings, run_suite, store_results
from mtv.graph import TaskGraph, plan_graph
from mtv.runs.checkpoint import save_checkpoint
from mtv.runtime.distributed import (
    init_from_environment,
    is_distributed,
    local_rank,
    resolve_backend,
)
from mtv.runtime.signals import StopRequest
from mtv.specs.experiment import ExperimentSpec
from mtv.specs.loading import spec_to_yaml
from mtv.train.budget import memory_estimate, refusal
from mtv.train.loggers import LoggerError, Loggers, Outcome, check_available, open_loggers
from mtv.train.metrics import MetricsLog
from mtv.train.precision import resolve_precision
from mtv.train.prepare import RunData, prepare_data
from mtv.train.rundir import (
    RunRefused,
    accept_run,
    critical_settings,
    environment,
    learning_rate_jump,
    write_text_atomically,
)
from mtv.train.schedule import lr_factor
from mtv.train.step import StepValues, TrainStep, read_window


class TrainingError(RuntimeError):
    """The run cannot start or continue (the message names the cause)."""


class NonFiniteLoss(TrainingError):
    """Too many consecutive steps had a non-finite loss."""


class Interrupted(TrainingError):
    """A stop signal ended the run early, after a checkpoint (`signal`: SIGINT or SIGTERM)."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal = signal_name


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    last: dict[str, float]
    seconds: float


Event = Callable[[dict[str, Any]], None]


def training_device(value: str) -> torch.device:
    """The training device: on CUDA, the GPU of this process's `LOCAL_RANK` (torchrun's
    convention), made the current device so that collectives and allocations go to it."""
    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("runtime.device: cuda was asked for, but no CUDA device is visible")
        index = local_rank()
        if index >= torch.cuda.device_count():
            raise TrainingError(
                f"LOCAL_RANK {index} has no GPU: {torch.cuda.device_count()} visible; start at "
                "most one process per GPU (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _silent(message: str) -> None:
    del message


def _barrier() -> None:
    if is_distributed():
        dist.barrier()


class Trainer:
    def __init__(
        self,
        spec: ExperimentSpec,
        run_dir: Path,
        resume: bool = False,
        report: Callable[[str], None] = print,
        on_step: Event | None = None,
    ):
        """`on_step(row)`: called with each step's metrics row (rank 0), in batches at log steps,
        when the rows reach the host."""
        self.spec, self.run_dir, self.report, self.on_step = spec, run_dir, report, on_step
        self.device = training_device(spec.runtime.device)
        self.precision = resolve_precision(spec.runtime.precision, device=self.device)
        self.rank, self.world = init_from_environment(
            resolve_backend(spec.runtime.distributed.backend, self.device.type)
        )
        self.is_main = self.rank == 0  # the rank that writes files and speaks
        if not self.is_main:  # one voice per run: the other ranks neither print nor write
            self.report = _silent
            warnings.filterwarnings("ignore")  # rank 0 shows the same ones
        try:  # a tracker's missing package stops the run before anything is written
            check_available(spec.output.loggers if self.is_main else ())
        except LoggerError as err:
            raise TrainingError(str(err)) from None
        self.loggers = Loggers()  # opened by `run`, on rank 0
        self.lock = ExclusiveLock.for_run(run_dir)
        try:  # an evaluation the run could not do is refused before training, not after it
            check_settings(spec.eval)
        except ValueError as err:
            raise TrainingError(str(err)) from None
        precision = self.precision
        self.report(f"device {self.device}, precision {precision.name} ({precision.reason})")
        if precision.warning:
            self.report(f"warning: {precision.warning}")
        # Before anything is rendered, labelled or allocated: a step that cannot fit is refused.
        value_bytes = 2 if precision.name == "bf16" else 4
        memory = memory_estimate(spec, plan_graph(spec), self.device, value_bytes)
        if (refused := refusal(memory, self.device)) is not None:
            raise TrainingError(refused)
        if memory.available is not None:
            self.report(
                f"step memory: activations at least {memory.activations / 2**30:.2f} GiB of "
                f"{memory.available / 2**30:.1f} GiB available"
            )
        self._restored = self._prepare_run_dir(resume)
        self.data = self._data()
        if self.is_main:
            # The run keeps its own tokenizer: evaluation and export then need only the run.
            self.data.tokenizer.save(run_dir / "tokenizer.json")
        # The same initial weights on every rank, and the ones `FrozenModel.random_init` draws.
        torch.manual_seed(spec.runtime.seed)
        # A resumed run's checkpoint replaces the weights: model.init_from is not read again.
        self.graph = TaskGraph(spec, pretrained=not resume).to(self.device)
        # The step itself: forward/backward, the optimiser step and its values on the device.
        self.stepper = TrainStep(spec, self.graph, self.device, self.world, self.precision)
        self._wrap()
        self.stream = build_stream(
            spec.data,
            self.graph.plan.view_request(),
            self.data.source,
            self.data.store,
            self.data.tokenizer,
            self.rank,
            self.world,
            keys=self.data.keys,
            accumulate=spec.optim.accumulate,
            pin_memory=self.device.type == "cuda",
        )
        # Steps whose values are still on the device, with what the host knows of each.
        self._window: list[tuple[dict[str, Any], StepValues]] = []
        self._window_images = 0
        self._window_wait = 0.0
        self._window_started = time.perf_counter()
        self._streak = 0  # consecutive skipped steps, as of the last rows read
        self.metrics = MetricsLog(run_dir / "metrics.parquet")
        self.step = 0
        if resume:
            self._resume()

    # ------------------------------------------------------------------ setup
    def _prepare_run_dir(self, resume: bool) -> tuple[Path, dict[str, Any]] | None:
        """Lock the run directory, and accept or refuse the run before anything in it is
        written: a refused resume leaves the directory exactly as it was."""
        if self.is_main:
            if self.run_dir.exists() and not self.run_dir.is_dir():
                raise TrainingError(f"the run directory {self.run_dir} is a file, not a folder")
            try:
                self.lock.acquire(f"mtv run {self.spec.name}")
            except Locked as err:
                raise TrainingError(str(err)) from None
            except OSError as err:
                raise TrainingError(
                    f"cannot write the run directory {self.run_dir}: {err.strerror or err}"
                ) from None
        try:
            restored = accept_run(self.run_dir, self.spec, self.world, resume, self.report)
        except RunRefused as err:
            self.lock.release()
            raise TrainingError(str(err)) from None
        except BaseException:
            self.lock.release()
            raise
        if self.is_main:
            jump = (
                None
                if restored is None
                else learning_rate_jump(self.run_dir, self.spec, int(restored[1]["step"]))
            )
            if jump is not None:
                self.report(f"warning: {jump}")
            write_text_atomically(self.run_dir / "spec.yaml", spec_to_yaml(self.spec))
            env = environment(self.device, self.world) | {"precision": self.precision.as_dict()}
            write_text_atomically(self.run_dir / "environment.json", json.dumps(env, indent=1))
        return restored

    def _data(self) -> RunData:
        if self.is_main:
            data = prepare_data(self.spec, self.report, is_main=True)
        _barrier()
        if not self.is_main:
            data = prepare_data(self.spec, self.report, is_main=False)
        return data

    def _compiles(self) -> bool:
        value = self.spec.runtime.compile
        return self.device.type == "cuda" if value == "auto" else bool(value)

    def _wrap(self) -> None:
        backend = self.spec.runtime.compile_backend
        compile_it = self._compiles()

        def wrap_student(module: torch.nn.Module) -> torch.nn.Module:
            if self.world > 1:
                ids = [self.device.index] if self.device.type == "cuda" else None
                # The frozen EMA teacher is not part of this module, and no parameter is idle
                # (the graph freezes what no task reads), so no find_unused_parameters.
                module = DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
            return torch.compile(module, backend=backend) if compile_it else module

        self.graph.wrap_student(wrap_student)
        if compile_it:
            self.graph.wrap_teacher(lambda fn: torch.compile(fn, backend=backend))

    def _resume(self) -> None:
        assert self._restored is not None
        path, state = self._restored
        self._restored = None  # the state is large; keep no second copy of the weights
        self.graph.load_state_dict(state["graph"])
        self.stepper.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state_dict(state["loader"][self.rank])
        torch.set_rng_state(state["rng"]["cpu"])
        self.step = int(state["step"])
        self.metrics.resume(self.step)
        self.report(f"resumed {self.run_dir} at step {self.step} from {path.name}")

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        loader_states: list[Any] = [self.stream.state_dict()]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, loader_states[0])
            loader_states = gathered
        if self.is_main:
            state = {
                "step": self.step,
                "graph": self.graph.state_dict(),
                "optimizer": self.stepper.optimizer.state_dict(),
                "loader": loader_states,
                "rng": {"cpu": torch.get_rng_state()},
                "critical": critical_settings(self.spec, self.world),
            }
            # Metrics first: a complete checkpoint then always has its rows on disk (a kill
            # between the two would otherwise lose them; resume drops rows past the checkpoint).
            self.metrics.flush()
            save_checkpoint(self.run_dir, self.step, state, self.spec.output.keep_last)
        _barrier()

    # ------------------------------------------------------------------ the step
    def train_step(self) -> None:
        """One optimiser step: each micro-batch from the loader (host), then its forward and
        backward, then the optimiser step (device, no host reads). Its values join the window
        that `read_rows` brings to the host at the next log step."""
        spec = self.spec
        lr = spec.optim.lr * lr_factor(spec.schedule, self.step)
        every = spec.runtime.grad_probe_every
        probe = bool(every) and self.step % every == 0
        values = self.stepper(self._micro_batches(), self.step, lr, probe=probe)
        # `step` counts the optimiser steps done with this row's, 1..schedule.steps: the numbers
        # of the console, the checkpoints (step-N) and the evaluations (taken after step N).
        host: dict[str, Any] = {"step": self.step + 1, "lr": lr}
        if self.graph.teacher is not None:
            host["teacher_momentum"] = self.graph.teacher_momentum(self.step)
        host.update(self.stepper.probe)
        self._window.append((host, values))

    def _micro_batches(self) -> Iterator[Batch]:
        """The stream's batches on the device, timed (the window's data wait) and counted."""
        while True:
            start = time.perf_counter()
            batch, _ = next(self.stream)
            batch = batch.to(self.device, non_blocking=True)
            self._window_wait += time.perf_counter() - start
            self._window_images += batch.size * self.world
            if batch.region_names is not None and self._compiles():
                # The distinct-name count varies by batch: one graph for every count.
                torch._dynamo.maybe_mark_dynamic(batch.region_names, 0)
            yield batch

    def read_rows(self) -> list[dict[str, Any]]:
        """The window's rows, read from the device in one copy (a log step): each step's values,
        with the window's throughput and data-wait share (on a GPU a step's own time is not
        known without a sync per step)."""
        if not self._window:
            return []
        hosts, values = zip(*self._window, strict=True)
        elapsed = max(time.perf_counter() - self._window_started, 1e-9)
        rows = []
        for host, read in zip(hosts, read_window(list(values)), strict=True):
            finite = {k: read.pop(f"finite/{k}") for k in self.stepper.kinds}
            skipped = bool(read.pop("skipped"))
            row = {**host, **read}
            row.update(
                {
                    "skipped": skipped,
                    "nonfinite": ",".join(k for k, ok in finite.items() if not ok),
                    "images_per_s": self._window_images / elapsed,
                    "data_wait_fraction": self._window_wait / elapsed,
                }
            )
            rows.append(row)
        self._window = []
        self._window_images, self._window_wait = 0, 0.0
        self._window_started = time.perf_counter()
        return rows

    # ------------------------------------------------------------------ the loop
    def _warnings(self, row: dict[str, Any]) -> None:
        """Each task's own checks of its logged values (e.g. a collapsing teacher)."""
        for kind, task in self.graph.student.tasks.items():
            prefix = f"{kind}/"
            values = {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)}
            for message in task.warnings(values):  # type: ignore[operator]
                self.report(f"warning: step {row['step']}: {kind} {message}")

    def run(self) -> RunSummary:
        """Train to `schedule.steps`, with the trackers of `output.loggers` open meanwhile (rank 0).
        A SIGINT or SIGTERM stops it after the current step with a checkpoint and the metrics on
        disk, raising `Interrupted`."""
        stop = StopRequest(
            self.spec.runtime.stop_deadline,
            f"The last checkpoint and the metrics logged before it are in {self.run_dir}; "
            "--resume continues from there.",
        ).install()
        outcome: Outcome = "failed"
        try:
            if self.is_main:
                try:
                    self.loggers = open_loggers(self.spec, self.run_dir, self.step, self.report)
                except LoggerError as err:
                    raise TrainingError(str(err)) from None
            summary = self._loop(stop)
            outcome = "finished"
            return summary
        except Interrupted:
            outcome = "interrupted"
            raise
        finally:
            stop.restore()
            self.loggers.close(outcome)
            self.close()

    def close(self) -> None:
        """Stop the loader's workers and let go of the run directory (`run` does both when it
        ends, however it ends)."""
        try:
            self.stream.close()
        finally:
            self.lock.release()

    def _loop(self, stop: StopRequest) -> RunSummary:
        spec = self.spec
        started = time.perf_counter()
        self._last: dict[str, float] = {}
        self._window_started = time.perf_counter()
        while self.step < spec.schedule.steps:
            self.train_step()
            self.step += 1
            checkpoint = self.step % spec.output.checkpoint_every == 0
            checkpoint |= self.step == spec.schedule.steps
            every = spec.eval.every_steps
            evaluate = every is not None and self.step % every == 0
            log_step = checkpoint or evaluate or self.step % spec.output.log_every == 0
            signalled = self._agreed_stop(stop) if log_step or self.world == 1 else ""
            if log_step or signalled:
                self._take_rows()
            if checkpoint:
                self.save()
            if evaluate and self.is_main:
                self.evaluate()
            if signalled and self.step < spec.schedule.steps:
                if not checkpoint:
                    self.save()
                raise Interrupted(
                    f"stopped by {signalled} after step {self.step} of {spec.schedule.steps}; "
                    f"the checkpoint and metrics of every finished step are in {self.run_dir}",
                    signalled,
                )
        if self.is_main:
            self.metrics.flush()
        # This rank's last logged losses: on rank 0, the last step line and metrics row.
        return RunSummary(self.run_dir, self.step, self._last, time.perf_counter() - started)

    def _take_rows(self) -> None:
        """A log step: the window's rows to the metrics, the trackers and the console; the tasks'
        warnings; the non-finite guard's count (a run stops after `nonfinite_patience`
        consecutive skipped steps, noticed at the log step that reads them)."""
        patience = self.spec.runtime.nonfinite_patience
        rows = self.read_rows()
        stop_at = None
        for row in rows:
            if row["skipped"]:
                self._streak += 1
                self.report(
                    f"step {row['step']}: non-finite loss in {row['nonfinite']}; step skipped "
                    f"({self._streak}/{patience})"
                )
                if self._streak >= patience and stop_at is None:
                    stop_at = row
            else:
                self._streak = 0
                self._last = {k: v for k, v in row.items() if k.startswith("loss")}
            self.metrics.add(row)
            self.loggers.log_row(row)
            if self.on_step is not None and self.is_main:
                self.on_step(row)
        if rows:
            self._warnings(rows[-1])
        if stop_at is not None:
            if self.is_main:
                self.metrics.flush()
            raise NonFiniteLoss(
                f"{patience} consecutive steps with a non-finite loss (last in "
                f"{stop_at['nonfinite']}, step {stop_at['step']}); stopping"
            )

    def _agreed_stop(self, stop: StopRequest) -> str:
        """The signal's name when any rank was asked to stop; "" otherwise. With several ranks
        they agree at log steps only (all stop at the same step, or the others would wait in a
        collective forever), so the agreement's host read is a log step's."""
        if self.world == 1:
            return stop.name
        flag = torch.tensor([float(stop.signal or 0)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        number = int(flag.item())
        return signal.Signals(number).name if number else ""

    def evaluate(self) -> None:
        """Run the spec's `eval` suite on the student as it is now and add the results to the
        run's evaluation history (rank 0; the other ranks wait in the next step's collectives)."""
        model = FrozenModel(self.spec, self.graph, self.data.tokenizer, self.step)
        try:
            results = run_suite(model, self.spec.eval)
            self.loggers.log_eval(self.step, results, model)  # its figure runs the eval-mode model
        finally:
            self.graph.student.train()
        store_results(results, self.run_dir, self.spec.eval.suite)
        shown = ", ".join(
            f"{e}/{m} {v:.3f}" for e, m, v in results.select("evaluator", "metric", "value").rows()
        )
        self.report(f"step {self.step}: eval ({self.spec.eval.suite}) {shown}")


def default_run_dir(spec: ExperimentSpec) -> Path:
    return Path(spec.output.root) / spec.name
