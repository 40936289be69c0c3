"""The plan of a task graph, as data: from an experiment spec to the views, encoder passes,
texts and labels of one training step, and what each task reads from them.

The plan is derived from what each task declares (`Task.needs_for`), before any module is built,
so a spec whose data lacks a label or whose tasks conflict is refused up front. Nothing here runs
a model: `mtv.graph.task_graph` executes the plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from mtv.data.views import ViewRequest
from mtv.specs.experiment import ExperimentSpec
from mtv.tasks.base import (
    CAPTION_TEXT,
    GLOBAL,
    LOCAL,
    MASKED,
    TASK_REGISTRY,
    TaskEnv,
    TaskNeeds,
)

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
    # What draws one image's patch mask, from the first task that masks patches (the loader
    # calls it per image); None when no task masks.
    patch_mask: Callable[..., Tensor] | None = field(default=None, compare=False)

    def view_request(self) -> ViewRequest:
        """What the loader must build for this plan."""
        return ViewRequest(
            global_size=self.env.global_size,
            local_size=self.env.local_size,
            local_crops=self.n_local_crops,
            max_regions=max(n.regions for n in self.needs.values()),
            caption=CAPTION_TEXT in self.texts,
            depth="depth" in self.labels,
            patch_mask=self.patch_mask,
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

    samplers = (TASK_REGISTRY[t.kind].patch_mask_sampler(t, env) for t in spec.tasks)

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
        patch_mask=next((s for s in samplers if s is not None), None),
    )
