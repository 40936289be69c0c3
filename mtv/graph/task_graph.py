"""The task graph executed: the student (`StudentModel`) and the EMA teacher (`EMATeacher`) built
from a plan (`GraphPlan`), one step's losses with shared encoder passes, and what follows an
optimiser step (the tasks' hooks, the teacher's moving average)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtv.data.batch import Batch
from mtv.graph.plan import plan_graph
from mtv.graph.student import StudentModel
from mtv.graph.teacher import EMATeacher, ema_update
from mtv.models.hf_siglip import load_hf_siglip
from mtv.specs.experiment import ExperimentSpec
from mtv.tasks.base import ScoresImageText, Task


@dataclass
class StepOutput:
    total: Tensor  # weighted sum of the task losses
    losses: dict[str, Tensor]  # task kind -> unweighted loss
    logged: dict[str, Tensor]  # "kind/name" -> detached value to log


# (batch, teacher targets, step) -> (total loss, task losses, logged values)
StudentRunner = Callable[
    [Batch, dict[str, Any], Tensor], tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]
]
TeacherRunner = Callable[[Batch, Tensor], dict[str, Any]]  # (batch, step) -> targets by task


@dataclass
class Runners:
    """What runs each part of a step: the student module and the teacher pass themselves, or
    their DDP / torch.compile wrappers (`TaskGraph.wrap_student`, `wrap_teacher`). Not a module,
    so a wrapper is not registered as a second copy of the submodules it wraps."""

    student: StudentRunner
    teacher: TeacherRunner


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class TaskGraph(nn.Module):
    """Student + EMA teacher + the plan, as one module (`to`, `state_dict` as for any module).
    `step(batch, step)` computes every task's loss with shared passes; `after_optimizer_step()`
    clamps parameters and moves the EMA teacher over teacher/student pairs built once."""

    def __init__(self, spec: ExperimentSpec, *, pretrained: bool = True):
        """`pretrained`: apply `model.init_from` (off where a checkpoint replaces the weights)."""
        super().__init__()
        self.spec = spec
        self.plan = plan_graph(spec)
        self.student = StudentModel(spec, self.plan)
        on_meta = next(self.student.parameters()).is_meta  # count_parameters: nothing to load
        if pretrained and spec.model.init_from is not None and not on_meta:
            # Before the teacher copies the student, so both start from the checkpoint.
            scorer = self.student.task_with(ScoresImageText)
            load_hf_siglip(
                spec.model.init_from,
                self.student.encoder,
                self.student.text,
                scorer.image_text_logits() if scorer is not None else None,
            )
        self.teacher: EMATeacher | None = None
        if self.plan.teacher:
            tasks: dict[str, Task] = dict(self.student.tasks.items())  # type: ignore[arg-type]
            heads = {k: tasks[k].ema_modules() for p in self.plan.teacher for k in p.consumers}
            self.teacher = EMATeacher(self.student.encoder, heads, self.plan.teacher)
        # (teacher, student) parameters in matching order; `to()` moves parameters in place,
        # so the pairs stay valid for the life of the graph.
        pairs = list(self._teacher_parameter_pairs())
        self._ema_teacher = [t for t, _ in pairs]
        self._ema_student = [s for _, s in pairs]
        self.runners = Runners(self.student, self._teacher_targets)

    def wrap_student(self, wrapper: Callable[[StudentModel], nn.Module]) -> None:
        """Run the student through `wrapper(student)` (DDP, torch.compile) from now on."""
        self.runners.student = wrapper(self.student)

    def wrap_teacher(self, wrapper: Callable[[TeacherRunner], TeacherRunner]) -> None:
        """Run the teacher pass through `wrapper(fn)` (e.g. torch.compile) from now on."""
        self.runners.teacher = wrapper(self._teacher_targets)

    def no_sync(self) -> AbstractContextManager[Any]:
        """DDP's no_sync when the student is wrapped in DDP (for accumulation), else nothing."""
        no_sync = getattr(self.runners.student, "no_sync", None)
        return no_sync() if no_sync is not None else nullcontext()

    def load_state_dict(
        self, state: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """As nn.Module's; a checkpoint written before the graph was a module (its state holds
        `{"student": ..., "teacher": ...}`, from a pre-release mtv) is one error saying so."""
        if isinstance(state.get("student"), Mapping):
            raise ValueError(
                "the checkpoint holds the graph in the layout of a pre-release mtv (student and "
                "teacher apart); it cannot be read: train the run again"
            )
        return super().load_state_dict(state, strict=strict, assign=assign)

    def _teacher_parameter_pairs(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(teacher tensor, student tensor), matched by parameter name."""
        if self.teacher is None:
            return
        mirrors: list[tuple[str, nn.Module, nn.Module]] = [
            ("encoder.", self.teacher.encoder, self.student.encoder)
        ]
        for kind, modules in self.teacher.heads.items():
            task: Task = self.student.tasks[kind]  # type: ignore[assignment]
            student_modules = task.ema_modules()
            mirrors += [(f"heads.{kind}.{n}.", m, student_modules[n]) for n, m in modules.items()]
        for prefix, teacher_module, student_module in mirrors:
            student_params = dict(student_module.named_parameters())
            for name, teacher_param in teacher_module.named_parameters():
                student_param = student_params.get(name)
                if student_param is None or student_param.shape != teacher_param.shape:
                    raise ValueError(
                        f"the student has no parameter matching teacher {prefix}{name}"
                    )
                yield teacher_param, student_param

    def _teacher_targets(self, batch: Batch, step: Tensor) -> dict[str, Any]:
        """Task kind -> what its `teacher_targets` returns (e.g. `SoftTargets`); none without a
        teacher."""
        if self.teacher is None:
            return {}
        return self.teacher(batch, step, self.student.tasks)

    def step(self, batch: Batch, step: int | Tensor = 0) -> StepOutput:
        """Every task's loss for one batch (the trainer does backward and the optimiser).
        `step` is the optimiser step (schedules such as the teacher temperature follow it): a
        0-d float tensor on the batch's device (`TrainStep` keeps one there), or a number."""
        if isinstance(step, Tensor):
            step_t = step
        else:
            # A fill kernel with the number as its argument: no host-to-device copy (which
            # `torch.as_tensor(step, device=...)` is, blocking, on CUDA).
            step_t = torch.full((), step, dtype=torch.float32, device=batch.images.device)
        targets = self.runners.teacher(batch, step_t)
        total, losses, logged = self.runners.student(batch, targets, step_t)
        return StepOutput(total, losses, logged)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The student's trainable parameters as optimiser groups: one at the base learning rate,
        one per learning-rate multiplier that a task asks for (`Task.lr_scales`). Each group
        carries its `lr_scale`."""
        scales: dict[str, float] = {}
        for kind, task in self.student.tasks.items():
            scales |= {f"tasks.{kind}.{n}": s for n, s in task.lr_scales().items()}  # type: ignore[operator]
        groups: dict[float, list[nn.Parameter]] = {}
        for name, parameter in self.student.named_parameters():
            if parameter.requires_grad:
                groups.setdefault(scales.pop(name, 1.0), []).append(parameter)
        if scales:
            raise ValueError(
                f"lr_scales name parameters the student does not have: {sorted(scales)}"
            )
        return [{"params": params, "lr_scale": scale} for scale, params in sorted(groups.items())]

    def teacher_momentum(self, step: int) -> float:
        """The EMA momentum after optimiser step `step` (the spec's fixed value or schedule)."""
        return self.spec.model.teacher.momentum_at(step, self.spec.schedule.steps)

    def before_optimizer_step(self, step: int) -> None:
        """The tasks' hooks between backward and optimiser step `step` (e.g. prototype freezing)."""
        for task in self.student.tasks.values():
            task.before_optimizer_step(step)  # type: ignore[operator]

    @torch.no_grad()
    def after_optimizer_step(
        self, step: int = 0, teacher_momentum: float | None = None, skipped: Tensor | None = None
    ) -> None:
        """What follows optimiser step `step`: the tasks' own hooks (clamping the logit scales),
        then the EMA teacher update (momentum: the spec's at `step` unless given). `skipped`: a
        0-d device flag; where it is 1 (a step the non-finite guard skipped) the teacher stays,
        decided on the device with no host read."""
        for task in self.student.tasks.values():
            task.after_optimizer_step(step)  # type: ignore[operator]
        if self.teacher is None:
            return
        momentum = self.teacher_momentum(step) if teacher_momentum is None else teacher_momentum
        weight: float | Tensor = 1.0 - momentum
        if skipped is not None:
            weight = (1.0 - skipped.float()) * weight
        ema_update(self._ema_teacher, self._ema_student, weight)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part (the teacher is not trained, so not counted)."""
        counts = {"encoder": trainable_parameters(self.student.encoder)}
        if self.student.text is not None:
            counts["text"] = trainable_parameters(self.student.text)
        for kind, task in self.student.tasks.items():
            counts[kind] = trainable_parameters(task)
        return counts

    def describe(self) -> str:
        counts = self.parameter_counts()
        total = sum(counts.values())
        parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
        return f"{self.plan.describe()}\ntrainable parameters: {total / 1e6:.2f}M ({parts})"


def count_parameters(spec: ExperimentSpec) -> dict[str, int]:
    """Trainable parameters per part, counted on the meta device (no memory, any size)."""
    with torch.device("meta"):
        return TaskGraph(spec).parameter_counts()
