"""The task graph: from an experiment spec to the views, labels, heads and shared encoder passes of
one training step.

The plan is derived from what each task declares (`Task.needs_for`), before any module is built,
so a spec whose data lacks a label or whose tasks conflict is refused up front. The step runs the
student encoder once per distinct view, the teacher once per view it must see, and the text tower
once over every text any task needs, and hands the shared results to every task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import mtv.tasks  # noqa: F401  (registers the task kinds)
from mtv.batch import Batch
from mtv.data.views import ViewRequest
from mtv.models.hf_siglip import load_hf_siglip
from mtv.models.text import TextTransformer
from mtv.models.vit import EncoderOutput, VisionTransformer
from mtv.specs.experiment import ExperimentSpec
from mtv.tasks.base import (
    CAPTION_TEXT,
    GLOBAL,
    LOCAL,
    MASKED,
    REGION_TEXT,
    TASK_REGISTRY,
    StepInputs,
    Task,
    TaskEnv,
    TaskNeeds,
)
from mtv.tasks.weighting import LossWeighting
from mtv.teacher import EMATeacher, ema_update

VIEW_ORDER = (GLOBAL, MASKED, LOCAL)


@dataclass(frozen=True)
class GraphProblem:
    message: str
    task_index: int | None = None  # position in spec.tasks
    kind: str | None = None


class GraphError(Exception):
    """The experiment cannot run: each problem names its task and what is missing or conflicts."""

    def __init__(self, problems: list[GraphProblem]):
        self.problems = problems
        super().__init__(
            "\n".join(
                (f"tasks[{p.task_index}] ({p.kind}): " if p.task_index is not None else "")
                + p.message
                for p in problems
            )
        )


@dataclass(frozen=True)
class ViewPass:
    """One encoder pass: which view, which outputs, and the tasks that read it."""

    view: str
    pooled: bool
    layers: tuple[int, ...]
    consumers: tuple[str, ...]
    tokens: bool = True  # final-normed patch tokens
    prenorm: bool = False  # pre-norm patch tokens

    def outputs(self) -> list[str]:
        names = (["tokens"] if self.tokens else []) + (["prenorm"] if self.prenorm else [])
        names += ["pooled"] if self.pooled else []
        return names + ([f"layers {','.join(map(str, self.layers))}"] if self.layers else [])


@dataclass(frozen=True)
class GraphPlan:
    env: TaskEnv
    kinds: tuple[str, ...]
    weights: dict[str, float]
    needs: dict[str, TaskNeeds]
    student: tuple[ViewPass, ...]
    teacher: tuple[ViewPass, ...]
    texts: dict[str, tuple[str, ...]]  # text input -> tasks
    labels: dict[str, tuple[str, ...]]  # label -> tasks
    n_local_crops: int = 0
    masked_patches: int = 0
    teacher_momentum: str = ""  # in words: fixed, or the schedule

    def view_request(self, spec: ExperimentSpec) -> ViewRequest:
        """What the loader must build for this plan."""
        samplers = [TASK_REGISTRY[t.kind].patch_mask_sampler(t, self.env) for t in spec.tasks]
        return ViewRequest(
            global_size=self.env.global_size,
            local_size=self.env.local_size,
            local_crops=self.n_local_crops,
            max_regions=max(n.regions for n in self.needs.values()),
            caption=CAPTION_TEXT in self.texts,
            depth="depth" in self.labels,
            patch_mask=next((s for s in samplers if s is not None), None),
        )

    @property
    def uses_pool(self) -> bool:
        return any(p.pooled for p in self.student)

    @property
    def uses_final_norm(self) -> bool:
        """Whether any task reads something after the encoder's final norm (tokens, normed layer
        taps or the pooled embedding, which pools normed tokens)."""
        return any(p.pooled or p.tokens or p.layers for p in self.student)

    def view_shape(self, view: str) -> str:
        if view == LOCAL:
            size = self.env.local_size
            return f"{self.n_local_crops} x 3 x {size} x {size}"
        size = self.env.global_size
        return f"3 x {size} x {size}"

    def describe(self) -> str:
        """The plan in words: encoder passes, their readers, texts and labels."""
        grid = self.env.global_grid
        lines = [f"tasks: {', '.join(f'{k} (x{self.weights[k]:g})' for k in self.kinds)}"]
        lines.append(f"student encoder: {len(self.student)} pass(es) per step")
        for p in self.student:
            outputs = p.outputs()
            if p.view == MASKED:
                outputs.append(f"{self.masked_patches}/{grid * grid} patches masked")
            lines.append(
                f"  {p.view:<7} {self.view_shape(p.view):<18} {'; '.join(outputs):<32} "
                f"-> {', '.join(p.consumers)}"
            )
        if self.teacher:
            lines.append(
                f"EMA teacher (momentum {self.teacher_momentum}, no grad, outside DDP): "
                f"{len(self.teacher)} pass(es) per step"
            )
            for p in self.teacher:
                lines.append(
                    f"  {p.view:<7} {self.view_shape(p.view):<18} {'; '.join(p.outputs()):<32} "
                    f"-> {', '.join(p.consumers)}"
                )
        if self.texts:
            parts = [f"{name} ({', '.join(tasks)})" for name, tasks in self.texts.items()]
            lines.append(f"text tower: 1 pass per step over {' + '.join(parts)}")
        labels = [f"{name} ({', '.join(tasks)})" for name, tasks in self.labels.items()]
        lines.append(f"labels: {', '.join(labels)}")
        return "\n".join(lines)


def _momentum_words(spec: ExperimentSpec) -> str:
    teacher = spec.model.teacher
    if teacher.momentum_schedule == "fixed":
        return f"{teacher.momentum:g}"
    return f"{teacher.momentum:g} -> {teacher.final_momentum:g}, cosine"


def plan_graph(spec: ExperimentSpec) -> GraphPlan:
    """Derive the plan of `spec`; raise GraphError naming every task that cannot run."""
    env = TaskEnv.from_spec(spec)
    problems: list[GraphProblem] = []
    if env.global_size % env.encoder.patch_size:
        problems.append(
            GraphProblem(
                f"data.views.global_size {env.global_size} is not a multiple of the patch size "
                f"{env.encoder.patch_size}"
            )
        )
    available = spec.data.available_labels()
    needs: dict[str, TaskNeeds] = {}
    first_index: dict[str, int] = {}
    for index, task_spec in enumerate(spec.tasks):
        kind = task_spec.kind
        if kind in first_index:
            problems.append(
                GraphProblem(
                    f"task kind '{kind}' already appears as tasks[{first_index[kind]}]; "
                    "each kind runs once (set its weight instead)",
                    index,
                    kind,
                )
            )
            continue
        first_index[kind] = index
        cls = TASK_REGISTRY[kind]
        task_needs = cls.needs_for(task_spec, env)
        needs[kind] = task_needs
        for label in sorted(task_needs.labels - available):
            problems.append(
                GraphProblem(
                    f"needs label '{label}', which the data does not provide (provided: "
                    f"{', '.join(sorted(available))}; add it to data.labels.kinds with a label "
                    "store that has it)",
                    index,
                    kind,
                )
            )
        problems.extend(GraphProblem(m, index, kind) for m in cls.problems(task_spec, env))
    if problems:
        raise GraphError(problems)

    def passes(
        views_of: Callable[[TaskNeeds], frozenset[str]], teacher: bool
    ) -> tuple[ViewPass, ...]:
        out = []
        for view in VIEW_ORDER:
            readers = tuple(k for k, n in needs.items() if view in views_of(n))
            if not readers:
                continue
            if teacher:
                # The teacher's heads read patch tokens (iBOT) and/or the pooled embedding.
                pooled = any(needs[k].teacher_pooled for k in readers)
                tokens = any(needs[k].teacher_tokens for k in readers)
                out.append(ViewPass(view, pooled, (), readers, tokens=tokens))
                continue
            layers = (
                tuple(sorted({i for k in readers for i in needs[k].layers}))
                if view == GLOBAL
                else ()
            )
            out.append(
                ViewPass(
                    view,
                    pooled=any(view in needs[k].pooled_views for k in readers),
                    layers=layers,
                    consumers=readers,
                    tokens=any(view in needs[k].token_views for k in readers),
                    prenorm=any(view in needs[k].prenorm_views for k in readers),
                )
            )
        return tuple(out)

    def users(attribute: str) -> dict[str, tuple[str, ...]]:
        names = sorted({x for n in needs.values() for x in getattr(n, attribute)})
        return {x: tuple(k for k, n in needs.items() if x in getattr(n, attribute)) for x in names}

    return GraphPlan(
        env=env,
        kinds=tuple(needs),
        weights={t.kind: t.weight for t in spec.tasks},
        needs=needs,
        student=passes(lambda n: n.student_views, teacher=False),
        teacher=passes(lambda n: n.teacher_views, teacher=True),
        texts=users("texts"),
        labels=users("labels"),
        n_local_crops=max(n.local_crops for n in needs.values()),
        masked_patches=max(n.masked_patches for n in needs.values()),
        teacher_momentum=_momentum_words(spec),
    )


@dataclass
class StepOutput:
    total: Tensor  # weighted sum of the task losses
    losses: dict[str, Tensor]  # task kind -> unweighted loss
    report: dict[str, Tensor]  # "kind/name" -> detached value


class StudentModel(nn.Module):
    """Everything that trains by gradient: encoder, text tower, task heads. DDP wraps this."""

    def __init__(self, spec: ExperimentSpec, plan: GraphPlan):
        super().__init__()
        self.plan = plan
        views = {p.view for p in plan.student}
        self.encoder = VisionTransformer(spec.model.encoder, mask_token=MASKED in views)
        # Parts no task reads would get no gradient: freeze them, so DDP needs no
        # find_unused_parameters and the trainable count is what really trains.
        if not plan.uses_pool:
            self.encoder.pool.requires_grad_(False)
        if not plan.uses_final_norm:
            self.encoder.norm.requires_grad_(False)
        self.text = (
            TextTransformer(spec.model.text, spec.model.encoder.width) if plan.texts else None
        )
        self.tasks = nn.ModuleDict({t.kind: TASK_REGISTRY[t.kind](t, plan.env) for t in spec.tasks})
        # Inside the student, so that DDP all-reduces the learned weights' gradients too.
        self.weighting = LossWeighting(
            list(plan.kinds),
            plan.weights,
            spec.optim.weighting,
            {kind: type(task).nonnegative_loss for kind, task in self.tasks.items()},
        )

    def encode(self, view: ViewPass, batch: Batch, encoder: VisionTransformer) -> EncoderOutput:
        if view.view == GLOBAL:
            return encoder(batch.images, layers=view.layers, pool=view.pooled)
        if view.view == MASKED:
            if batch.patch_mask is None:
                raise ValueError("the masked view needs batch.patch_mask")
            return encoder(batch.images, mask=batch.patch_mask, pool=view.pooled)
        if batch.local_images is None:
            raise ValueError("the local view needs batch.local_images")
        return encoder(batch.local_images.flatten(0, 1), pool=view.pooled)

    def encode_views(
        self, passes: tuple[ViewPass, ...], batch: Batch, encoder: VisionTransformer
    ) -> dict[str, EncoderOutput]:
        """Every pass of `passes`. The clean and the masked global view, when both are asked for,
        go through the encoder as one batch of 2B (the same FLOPs in larger matmuls; a zero mask
        leaves the clean half exactly as an unmasked pass would)."""
        views = {p.view: p for p in passes}
        out: dict[str, EncoderOutput] = {}
        if GLOBAL in views and MASKED in views:
            clean, masked = views.pop(GLOBAL), views.pop(MASKED)
            if batch.patch_mask is None:
                raise ValueError("the masked view needs batch.patch_mask")
            both = encoder(
                torch.cat([batch.images, batch.images]),
                mask=torch.cat([torch.zeros_like(batch.patch_mask), batch.patch_mask]),
                layers=tuple(sorted({*clean.layers, *masked.layers})),
                pool=clean.pooled or masked.pooled,
            )
            out[GLOBAL], out[MASKED] = both.split(batch.size)
        for view in views.values():
            out[view.view] = self.encode(view, batch, encoder)
        return {p.view: out[p.view] for p in passes}

    def encode_texts(self, batch: Batch) -> dict[str, Tensor]:
        """One text-tower pass over captions and region names together."""
        if self.text is None:
            return {}
        pieces: list[Tensor] = []
        if CAPTION_TEXT in self.plan.texts:
            if batch.captions is None:
                raise ValueError("the tasks need batch.captions")
            pieces.append(batch.captions)
        if REGION_TEXT in self.plan.texts:
            if batch.region_names is None or batch.region_name_index is None:
                raise ValueError("the tasks need batch.region_names and region_name_index")
            pieces.append(batch.region_names)  # each distinct name once (Batch.share_region_names)
        embedded = self.text(torch.cat(pieces, dim=0)).split([p.shape[0] for p in pieces])
        out: dict[str, Tensor] = {}
        chunks = iter(embedded)
        if CAPTION_TEXT in self.plan.texts:
            out[CAPTION_TEXT] = next(chunks)
        if REGION_TEXT in self.plan.texts:
            assert batch.region_name_index is not None
            out[REGION_TEXT] = next(chunks)[batch.region_name_index]  # (B, R, E)
        return out

    def forward(
        self, batch: Batch, teacher: dict[str, object], step: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        features = self.encode_views(self.plan.student, batch, self.encoder)
        inputs = StepInputs(batch, features, self.encode_texts(batch), teacher, step)
        losses: dict[str, Tensor] = {}
        report: dict[str, Tensor] = {}
        for kind, task in self.tasks.items():
            out = task(inputs)
            losses[kind] = out.loss
            report.update({f"{kind}/{name}": value for name, value in out.report.items()})
        total, weights = self.weighting(losses, self.shared_outputs(features))
        return total, losses, report | weights

    def shared_outputs(self, features: dict[str, EncoderOutput]) -> list[Tensor]:
        """The encoder's outputs every task reads from: each view's last hidden state (tokens
        and pooled embeddings are computed from it) and the intermediate layers tapped for a
        task (the last layer's tap is the tokens themselves, already behind the hidden state),
        so no gradient path is counted twice."""
        depth = len(self.encoder.blocks)
        out = []
        for encoded in features.values():
            out.append(encoded.prenorm)
            out += [tap for layer, tap in encoded.layers.items() if layer != depth]
        return out


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
            load_hf_siglip(spec.model.init_from, self.student)
        self.teacher: EMATeacher | None = None
        if self.plan.teacher:
            tasks: dict[str, Task] = dict(self.student.tasks.items())  # type: ignore[arg-type]
            heads = {k: tasks[k].ema_modules() for p in self.plan.teacher for k in p.consumers}
            self.teacher = EMATeacher(self.student.encoder, heads)
        # (teacher, student) parameters in matching order; `to()` moves parameters in place,
        # so the pairs stay valid for the life of the graph.
        pairs = list(self._teacher_parameter_pairs())
        self._ema_teacher = [t for t, _ in pairs]
        self._ema_student = [s for _, s in pairs]
        # What runs each pass: the modules themselves, or their DDP / torch.compile wrappers. A
        # plain dict, so that a wrapper is not registered as a second copy of the submodules.
        self._calls: dict[str, Callable[..., Any]] = {
            "student": self.student,
            "teacher": self._teacher_targets,
        }

    def wrap_student(self, wrapper: Callable[[StudentModel], nn.Module]) -> None:
        """Run the student through `wrapper(student)` (DDP, torch.compile) from now on."""
        self._calls["student"] = wrapper(self.student)

    def wrap_teacher(self, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        """Run the teacher pass through `wrapper(fn)` (e.g. torch.compile) from now on."""
        self._calls["teacher"] = wrapper(self._teacher_targets)

    def no_sync(self) -> AbstractContextManager[Any]:
        """DDP's no_sync when the student is wrapped in DDP (for accumulation), else nothing."""
        no_sync = getattr(self._calls["student"], "no_sync", None)
        return no_sync() if no_sync is not None else nullcontext()

    def load_state_dict(
        self, state: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """As nn.Module's; also reads checkpoints written before the graph was a module
        (`{"student": ..., "teacher": ...}`)."""
        if isinstance(state.get("student"), Mapping):
            if self.teacher is not None and state.get("teacher") is None:
                raise ValueError("the checkpoint has no EMA teacher, but this graph needs one")
            state = {
                f"{part}.{name}": value
                for part in ("student", "teacher")
                for name, value in (state.get(part) or {}).items()
            }
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

    @torch.no_grad()
    def _teacher_targets(self, batch: Batch, step: Tensor) -> dict[str, Any]:
        """Task kind -> what its `teacher_targets` returns (e.g. `SoftTargets`)."""
        if self.teacher is None:
            return {}
        outputs = self.student.encode_views(self.plan.teacher, batch, self.teacher.encoder)
        readers = {k for p in self.plan.teacher for k in p.consumers}
        targets: dict[str, Any] = {}
        for kind, task in self.student.tasks.items():
            if kind in readers:
                targets[kind] = task.teacher_targets(  # type: ignore[operator]
                    outputs, self.teacher.heads[kind], batch, step
                )
        return targets

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
        targets = self._calls["teacher"](batch, step_t)
        total, losses, report = self._calls["student"](batch, targets, step_t)
        return StepOutput(total, losses, report)

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
