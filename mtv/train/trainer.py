"""`mtv run`: the training loop, readable top to bottom.

One step: next micro-batch(es) -> (teacher targets, student losses) under autocast -> a guard
against non-finite losses (named by task, step skipped) -> backward -> clip -> AdamW -> logit
clamps and the EMA teacher -> metrics. Checkpoints hold everything a resume needs (model,
teacher, optimiser, centers, RNG, loader position), so a resumed run repeats the same losses.
"""

from __future__ import annotations

import json
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mtv.batch import Batch
from mtv.checkpoint import save_checkpoint
from mtv.data.loader import build_stream
from mtv.distributed import init_from_environment, is_distributed, local_rank, resolve_backend
from mtv.eval import FrozenModel, run_suite, store_results
from mtv.graph import TaskGraph
from mtv.signals import StopRequest
from mtv.specs.experiment import ExperimentSpec
from mtv.specs.loading import spec_to_yaml
from mtv.train.diagnostics import gradient_probe
from mtv.train.lock import RunLock, RunLocked
from mtv.train.loggers import LoggerError, Loggers, Outcome, check_available, open_loggers
from mtv.train.metrics import MetricsLog
from mtv.train.prepare import RunData, prepare_data
from mtv.train.rundir import RunRefused, accept_run, critical_settings, environment
from mtv.train.schedule import lr_factor


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


def _pick(value: str) -> torch.device:
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


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks (each saw its own shard of the data)."""
    if not is_distributed() or not values:
        return values
    names = sorted(values)
    # On the training device: nccl reduces CUDA tensors only.
    tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(names, (tensor / dist.get_world_size()).tolist(), strict=True))


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
        batches: Iterator[tuple[Batch, Any]] | None = None,
    ):
        """`batches`: (batch, info) pairs to train on instead of the spec's data, which is then
        neither prepared nor loaded (benchmarks time the real step this way without the loader;
        such a trainer cannot checkpoint, having no loader position to save)."""
        self.spec, self.run_dir, self.report, self.on_step = spec, run_dir, report, on_step
        self.device = _pick(spec.runtime.device)
        self.rank, self.world = init_from_environment(
            resolve_backend(spec.runtime.distributed.backend, self.device.type)
        )
        self.main = self.rank == 0
        if not self.main:  # one voice per run: the other ranks neither print nor write
            self.report = _silent
            warnings.filterwarnings("ignore")  # rank 0 shows the same ones
        try:  # a tracker's missing package stops the run before anything is written
            check_available(spec.output.loggers if self.main else ())
        except LoggerError as err:
            raise TrainingError(str(err)) from None
        self.loggers = Loggers()  # opened by `run`, on rank 0
        self.lock = RunLock(run_dir)
        self._restored = self._prepare_run_dir(resume)
        self.data = self._data() if batches is None else None
        if self.data is not None and self.main:
            # The run keeps its own tokenizer: evaluation and export then need only the run.
            self.data.tokenizer.save(run_dir / "tokenizer.json")
        # The same initial weights on every rank, and the ones `FrozenModel.random_init` draws.
        torch.manual_seed(spec.runtime.seed)
        # A resumed run's checkpoint replaces the weights: model.init_from is not read again.
        self.graph = TaskGraph(spec, pretrained=not resume).to(self.device)
        groups = self.graph.parameter_groups()
        self.params = [p for group in groups for p in group["params"]]
        optim = spec.optim
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            # One kernel per step over all parameters instead of a dozen _foreach_ passes over
            # them (3x faster optimiser step on CPU; the same update up to float rounding).
            fused=self.device.type in ("cuda", "cpu"),
        )
        self._wrap()
        self.stream: Any = batches
        if self.data is not None:
            self.stream = build_stream(
                spec.data,
                self.graph.plan.view_request(spec),
                self.data.source,
                self.data.store,
                self.data.tokenizer,
                self.rank,
                self.world,
                keys=self.data.keys,
                accumulate=optim.accumulate,
                pin_memory=self.device.type == "cuda",
            )
        self.metrics = MetricsLog(run_dir / "metrics.parquet")
        self.step = 0
        if resume:
            self._resume()

    # ------------------------------------------------------------------ setup
    def _prepare_run_dir(self, resume: bool) -> tuple[Path, dict[str, Any]] | None:
        """Lock the run directory, and accept or refuse the run before anything in it is
        written: a refused resume leaves the directory exactly as it was."""
        if self.main:
            if self.run_dir.exists() and not self.run_dir.is_dir():
                raise TrainingError(f"the run directory {self.run_dir} is a file, not a folder")
            try:
                self.lock.acquire(f"mtv run {self.spec.name}")
            except RunLocked as err:
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
        if self.main:
            (self.run_dir / "spec.yaml").write_text(spec_to_yaml(self.spec))
            env = environment(self.device, self.world)
            (self.run_dir / "environment.json").write_text(json.dumps(env, indent=1))
        return restored

    def _data(self) -> RunData:
        if self.main:
            data = prepare_data(self.spec, self.report, is_main=True)
        _barrier()
        if not self.main:
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
        self.optimizer.load_state_dict(state["optimizer"])
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
        if self.main:
            state = {
                "step": self.step,
                "graph": self.graph.state_dict(),
                "optimizer": self.optimizer.state_dict(),
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
    def _autocast(self) -> Any:
        if self.spec.runtime.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self) -> dict[str, Any]:
        spec = self.spec
        lr = spec.optim.lr * lr_factor(spec.schedule, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        accumulate = spec.optim.accumulate
        waited = time.perf_counter()
        wait_seconds, images = 0.0, 0
        losses: dict[str, torch.Tensor] = {}
        report: dict[str, torch.Tensor] = {}
        bad: list[str] = []
        probe: dict[str, float] = {}
        for micro in range(accumulate):
            start = time.perf_counter()
            batch, _ = next(self.stream)
            batch = batch.to(self.device, non_blocking=True)
            wait_seconds += time.perf_counter() - start
            images += batch.size * self.world
            with self._autocast():
                out = self.graph.step(batch, self.step)
            values = torch.stack([v.detach().float() for v in out.losses.values()])
            finite = torch.isfinite(values)
            if self.world > 1:  # every rank must agree to skip, or DDP would hang
                flags = finite.float()
                dist.all_reduce(flags, op=dist.ReduceOp.MIN)
                finite = flags > 0
            if not bool(finite.all()):
                bad = [k for k, ok in zip(out.losses, finite.tolist(), strict=True) if not ok]
                break
            if (
                micro == 0
                and spec.runtime.grad_probe_every
                and self.step % spec.runtime.grad_probe_every == 0
            ):
                probe = gradient_probe(
                    self.graph.student.encoder, out.losses, self.graph.plan.weights
                )
            # Gradients are all-reduced once, after the last micro-batch.
            with self.graph.no_sync() if micro < accumulate - 1 else nullcontext():
                (out.total / accumulate).backward()
            for name, value in out.losses.items():
                losses[name] = losses.get(name, 0) + value.detach() / accumulate
            report = out.report
        # `step` counts the optimiser steps done with this row's, 1..schedule.steps: the numbers
        # of the console, the checkpoints (step-N) and the evaluations (taken after step N).
        row: dict[str, Any] = {"step": self.step + 1, "lr": lr}
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            row.update({"skipped": True, "nonfinite": ",".join(bad)})
            return row
        self.graph.before_optimizer_step(self.step)
        clip = spec.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, clip if clip is not None else math.inf
        )
        self.optimizer.step()
        self.graph.after_optimizer_step(self.step)
        if self.graph.teacher is not None:
            row["teacher_momentum"] = self.graph.teacher_momentum(self.step)
        total = sum(self.graph.plan.weights[k] * v for k, v in losses.items())
        # Every logged tensor in one device-to-host copy, not one sync per value.
        logged = {"loss": total, **{f"loss/{k}": v for k, v in losses.items()}, **report}
        logged["grad_norm"] = grad_norm
        values = torch.stack([torch.as_tensor(v).float().reshape(()) for v in logged.values()])
        row.update(dict(zip(logged, values.tolist(), strict=True)))
        # Timed after that copy: it waits for the step's queued device work, which the step's
        # wall time (and so images/s and the data-wait fraction) must include on CUDA.
        elapsed = time.perf_counter() - waited
        row.update(
            {
                "skipped": False,
                "nonfinite": "",
                "images_per_s": images / max(elapsed, 1e-9),
                "data_wait_fraction": wait_seconds / max(elapsed, 1e-9),
                **probe,
            }
        )
        return row

    # ------------------------------------------------------------------ the loop
    def _check_collapse(self, row: dict[str, Any]) -> None:
        for kind in ("distill", "masked"):
            entropy = row.get(f"{kind}/teacher_entropy")
            if entropy is None or self.step % 50:
                continue
            task = next(t for t in self.spec.tasks if t.kind == kind)
            uniform = math.log(task.n_prototypes)  # type: ignore[attr-defined]
            if entropy > 0.98 * uniform:
                self.report(
                    f"warning: step {self.step}: {kind} teacher entropy {entropy:.3f} is near "
                    f"ln K = {uniform:.3f} (uniform collapse)"
                )
            elif entropy < 0.05:
                self.report(
                    f"warning: step {self.step}: {kind} teacher entropy {entropy:.4f} is near 0 "
                    "(one-hot collapse)"
                )

    def run(self) -> RunSummary:
        """Train to `schedule.steps`, with the trackers of `output.loggers` open meanwhile (rank 0).
        A SIGINT or SIGTERM stops it after the current step with a checkpoint and the metrics on
        disk, raising `Interrupted`."""
        stop = StopRequest().install()
        outcome: Outcome = "failed"
        try:
            if self.main:
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
        """Let go of the run directory (`run` does so when it ends)."""
        self.lock.release()

    def _loop(self, stop: StopRequest) -> RunSummary:
        spec = self.spec
        started = time.perf_counter()
        streak, last = 0, {}
        while self.step < spec.schedule.steps:
            row = self.train_step()
            if row["skipped"]:
                streak += 1
                self.report(
                    f"step {self.step}: non-finite loss in {row['nonfinite']}; step skipped "
                    f"({streak}/{spec.runtime.nonfinite_patience})"
                )
                if streak >= spec.runtime.nonfinite_patience:
                    self.metrics.add(row)
                    self.loggers.log_row(row)
                    if self.main:
                        self.metrics.flush()
                    raise NonFiniteLoss(
                        f"{streak} consecutive steps with a non-finite loss (last in "
                        f"{row['nonfinite']}, step {self.step}); stopping"
                    )
            else:
                streak = 0
                last = {k: v for k, v in row.items() if k.startswith("loss")}
                self._check_collapse(row)
            self.metrics.add(row)
            self.loggers.log_row(row)
            self.step += 1
            if self.on_step is not None and self.main:
                self.on_step(row)
            saved = False
            if self.step % spec.output.checkpoint_every == 0 or self.step == spec.schedule.steps:
                self.save()
                saved = True
            every = spec.eval.every_steps
            if every is not None and self.step % every == 0 and self.main:
                self.evaluate()
            signalled = self._agreed_stop(stop)
            if signalled and self.step < spec.schedule.steps:
                if not saved:
                    self.save()
                raise Interrupted(
                    f"stopped by {signalled} after step {self.step} of {spec.schedule.steps}; "
                    f"the checkpoint and metrics of every finished step are in {self.run_dir}",
                    signalled,
                )
        if self.main:
            self.metrics.flush()
        last = _mean_over_ranks(last, self.device)
        return RunSummary(self.run_dir, self.step, last, time.perf_counter() - started)

    def _agreed_stop(self, stop: StopRequest) -> str:
        """The signal's name when any rank was asked to stop (all ranks stop at the same step,
        or the others would wait in a collective forever); "" otherwise."""
        if self.world == 1:
            return stop.name
        flag = torch.tensor([float(stop.signal or 0)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        number = int(flag.item())
        return signal.Signals(number).name if number else ""

    def evaluate(self) -> None:
        """Run the spec's `eval` suite on the student as it is now and add the results to the
        run's evaluation history (rank 0; the other ranks wait in the next step's collectives)."""
        if self.data is None:
            raise TrainingError("eval.every_steps needs the spec's data (for its tokenizer)")
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
