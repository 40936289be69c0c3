"""The device side of one optimiser step, with no host reads: forward + backward per micro-batch,
then the optimiser step. What the host needs (losses, the skip decision, the gradient norm) stays
on the device as one vector per step until the trainer reads a window of them at a log step.

The non-finite guard decides on the device: a step whose losses are not all finite (on any rank)
sets the fused AdamW's `found_inf` flag, so the kernel leaves parameters, moments and step count
as they were (the mechanism GradScaler uses), and the EMA teacher's weight is multiplied by 0.
The step number that the tasks' schedules read is a counter on the device too (no host-to-device
copy per step). tests/test_host_reads.py checks all of this at the dispatcher.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mtv.data.batch import Batch
from mtv.graph import TaskGraph
from mtv.specs.experiment import ExperimentSpec
from mtv.train.diagnostics import gradient_probe
from mtv.train.precision import ResolvedPrecision, resolve_precision


@dataclass(frozen=True)
class StepValues:
    """One optimiser step's values, still on the device (fp32), each named: the total loss, the
    tasks' losses, their logged values, the gradient norm, whether the step was skipped, then
    1/0 per task for its loss being finite."""

    names: tuple[str, ...]
    vector: Tensor


class TrainStep:
    """The optimiser and one optimiser step on `graph` (already on `device`): a call takes the
    step's `optim.accumulate` micro-batches and returns its named values, still on the device.
    Usable on its own (benchmarks time it on a fixed batch); the trainer adds data, logging and
    checkpoints."""

    def __init__(
        self,
        spec: ExperimentSpec,
        graph: TaskGraph,
        device: torch.device,
        world: int,
        precision: ResolvedPrecision | None = None,
    ):
        """`precision`: `runtime.precision` as the caller resolved it for `device` (resolved
        here when not given)."""
        self.spec, self.graph, self.device, self.world = spec, graph, device, world
        self.precision = precision or resolve_precision(spec.runtime.precision, device)
        groups = graph.parameter_groups()
        self.params = [p for group in groups for p in group["params"]]
        optim = spec.optim
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            # One kernel per step over all parameters instead of a dozen _foreach_ passes over
            # them (3x faster optimiser step on CPU; the same update up to float rounding). It
            # is also what honours `found_inf` (the device-side skip).
            fused=True,
        )
        self.kinds = list(graph.plan.kinds)
        # The optimiser step as the tasks' schedules read it (a 0-d float on the device), advanced
        # there after each step: a host number made a tensor each step would be a blocking
        # host-to-device copy on CUDA. `_step_at` is the step it holds, as the host knows it.
        self._step = torch.zeros((), dtype=torch.float32, device=device)
        self._step_at = 0
        self._logged_names: list[str] | None = None  # fixed by the first step
        self._losses: list[Tensor] = []
        self._totals: list[Tensor] = []  # the objective as the graph weighted it, per micro-batch
        self._finite: Tensor | None = None
        self._logged: dict[str, Tensor] = {}
        self.probe: dict[str, float] = {}  # the gradient probe's values of this step, if probed

    def __call__(
        self, batches: Iterable[Batch], step: int, lr: float, probe: bool = False
    ) -> StepValues:
        """Optimiser step `step` (0-based) at learning rate `lr`: the first `optim.accumulate`
        micro-batches of `batches` (on the device) forward and backward, gradients all-reduced
        after the last, then clip, step (skipped on the device when a loss was not finite),
        the tasks' hooks and the EMA teacher. `probe`: also measure how the tasks' gradients on
        the encoder interact, on the first micro-batch (`runtime.grad_probe_every`; it reads
        its values on the host, on its own steps only: `self.probe`)."""
        accumulate = self.spec.optim.accumulate
        self._start(lr)
        count = 0
        # range first: zip stops there without taking a micro-batch too many from `batches`.
        for micro, batch in zip(range(accumulate), batches, strict=False):
            self._forward_backward(batch, step, micro, probe=probe and micro == 0)
            count += 1
        if count != accumulate:
            raise ValueError(f"step {step}: {count} micro-batch(es), optim.accumulate {accumulate}")
        return StepValues(self._names(), self._optimizer_step(step))

    # ------------------------------------------------------------------ names of the vector
    def _names(self) -> tuple[str, ...]:
        assert self._logged_names is not None
        return (
            "loss",
            *(f"loss/{k}" for k in self.kinds),
            *self._logged_names,
            "grad_norm",
            "skipped",
            *(f"finite/{k}" for k in self.kinds),
        )

    def _autocast(self) -> Any:
        return self.precision.autocast(self.device)

    # ------------------------------------------------------------------ the parts of a step
    def _start(self, lr: float) -> None:
        """Begin a step at learning rate `lr` (each group at its `lr_scale`)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        self._losses, self._totals, self._finite, self._logged = [], [], None, {}
        self.probe = {}

    def device_step(self, step: int) -> Tensor:
        """Optimiser step `step` as a 0-d float tensor on the device, the one the counter holds.
        Where the caller's step is not the counter's (a resumed run's first step, a benchmark
        repeating a step) it is set on the device: a fill with the number as the kernel's
        argument, no copy."""
        if step != self._step_at:
            self._step.fill_(step)
            self._step_at = step
        return self._step

    def _forward_backward(self, batch: Batch, step: int, micro: int, probe: bool) -> None:
        """Losses of one micro-batch at optimiser step `step`, and their backward pass (no
        gradient all-reduce but after the last micro-batch)."""
        accumulate = self.spec.optim.accumulate
        with self._autocast():
            out = self.graph.step(batch, self.device_step(step))
        values = torch.stack([out.losses[k].detach().float() for k in self.kinds])
        finite = torch.isfinite(values)
        self._finite = finite if self._finite is None else self._finite & finite
        if probe:
            self.probe = gradient_probe(
                self.graph.student.encoder, out.losses, self.graph.plan.weights
            )
        # A non-finite loss still goes backward: its gradients are discarded by the skip, and a
        # branch here would be a host read.
        with self.graph.no_sync() if micro < accumulate - 1 else nullcontext():
            (out.total / accumulate).backward()
        self._losses.append(values / accumulate)
        self._totals.append(out.total.detach().float().reshape(1) / accumulate)
        # The step's logged values are the mean over its micro-batches, as its losses are.
        for name, value in out.logged.items():
            share = value.detach().float().reshape(()) / accumulate
            self._logged[name] = self._logged[name] + share if name in self._logged else share
        if self._logged_names is None:
            self._logged_names = list(out.logged)

    def _optimizer_step(self, step: int) -> Tensor:
        """Clip, step, hooks and EMA; the step's values in the order of `_names()`."""
        assert self._finite is not None
        finite = self._finite
        if self.world > 1:  # every rank skips together, or the replicas would drift apart
            flags = finite.float()
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
            finite = flags > 0
        skipped = (~finite.all()).float()
        self.optimizer.found_inf = skipped  # type: ignore[attr-defined]  # read by fused AdamW
        self.graph.before_optimizer_step(step)
        clip = self.spec.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, clip if clip is not None else math.inf
        )
        self.optimizer.step()
        self.graph.after_optimizer_step(step, skipped=skipped)
        losses = torch.stack(self._losses).sum(0)
        logged = [self._logged[n] for n in self._logged_names or ()]
        values = torch.cat(
            [
                torch.stack(self._totals).sum(0),  # the weights applied once, by the graph
                losses,
                torch.stack(logged) if logged else losses.new_zeros(0),
                grad_norm.detach().float().reshape(1),
                skipped.reshape(1),
                finite.float(),
            ]
        )
        # The next step's number, on the device; after the values, which copy what they report.
        self.device_step(step).add_(1)
        self._step_at = step + 1
        return values


def read_window(values: list[StepValues]) -> Iterator[dict[str, float]]:
    """The rows of a window of steps, in order, read from the device in one copy (one per set of
    names, should a step's logged names differ from the others')."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, value in enumerate(values):
        groups.setdefault(value.names, []).append(index)
    rows: list[dict[str, float]] = [{} for _ in values]
    for names, indices in groups.items():
        table = torch.stack([values[i].vector for i in indices]).cpu().tolist()
        for index, row in zip(indices, table, strict=True):
            rows[index] = dict(zip(names, row, strict=True))
    yield from rows
