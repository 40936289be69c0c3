"""What every task is: a module owning its head and loss, which declares the views, encoder
outputs, texts and labels it needs, so the task graph can plan shared passes before training."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mtv.data.batch import Batch
from mtv.models.vit import EncoderOutput
from mtv.specs.experiment import ExperimentSpec
from mtv.specs.model import EncoderSpec
from mtv.specs.tasks import TaskSpecBase, register_task_spec, task_kind_of

if TYPE_CHECKING:
    from mtv.tasks.sigmoid import LogitScaleBias

# View names. The masked view is the global crop with `batch.patch_mask` applied.
GLOBAL, LOCAL, MASKED = "global", "local", "masked"
# Text inputs the text tower encodes in one shared pass.
CAPTION_TEXT, REGION_TEXT = "caption", "region_names"


@dataclass(frozen=True)
class TaskEnv:
    """The facts about an experiment that tasks size themselves by."""

    encoder: EncoderSpec
    global_size: int
    local_size: int
    steps: int
    batch_size: int

    @classmethod
    def from_spec(cls, spec: ExperimentSpec) -> TaskEnv:
        encoder = spec.model.encoder
        global_size = spec.data.views.global_size or encoder.image_size
        local_size = spec.data.views.local_size or max(
            encoder.patch_size, round(global_size * 3 / 7 / encoder.patch_size) * encoder.patch_size
        )
        return cls(encoder, global_size, local_size, spec.schedule.steps, spec.data.batch_size)

    @property
    def global_grid(self) -> int:
        return self.global_size // self.encoder.patch_size


@dataclass(frozen=True)
class TaskNeeds:
    """Inputs a task reads. The graph unions them over tasks and runs each pass once."""

    student_views: frozenset[str] = frozenset()
    pooled_views: frozenset[str] = frozenset()  # student views whose pooled embedding is read
    token_views: frozenset[str] = frozenset()  # ... whose final-normed patch tokens are read
    prenorm_views: frozenset[str] = frozenset()  # ... whose pre-norm patch tokens are read
    layers: tuple[int, ...] = ()  # 1-based intermediate layers of the student's global view
    teacher_views: frozenset[str] = frozenset()
    teacher_pooled: bool = False
    teacher_tokens: bool = False
    texts: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    local_crops: int = 0  # local crops per image the loader must cut
    regions: int = 0  # region (box + name) slots per image the loader must fill
    masked_patches: int = 0  # patches of the global view the loader's masks must cover


@dataclass
class StepInputs:
    """Everything computed once per step and shared by the tasks."""

    batch: Batch
    student: dict[str, EncoderOutput]
    text: dict[str, Tensor]  # CAPTION_TEXT -> (B, E); REGION_TEXT -> (B, R, E)
    teacher: dict[str, Any]  # task kind -> what its `teacher_targets` returned
    step: Tensor  # 0-d float tensor: a tensor, so schedules never trigger recompiles


@dataclass
class TaskOutput:
    loss: Tensor  # 0-d fp32, unweighted
    logged: dict[str, Tensor] = field(default_factory=dict)  # detached 0-d values to log


@runtime_checkable
class ScoresImageText(Protocol):
    """A task that scores image-caption pairs as SigLIP does, with a learned logit scale and
    bias: what SigLIP export and loading read (`StudentModel.task_with(ScoresImageText)`)."""

    def image_text_logits(self) -> LogitScaleBias:
        """The module holding the logit scale t (used as exp(t)) and bias b."""
        ...


@runtime_checkable
class PredictsDepth(Protocol):
    """A task with a dense relative-depth head on tapped encoder layers: what evaluation reads
    (`StudentModel.task_with(PredictsDepth)`)."""

    def depth_layers(self) -> tuple[int, ...]:
        """The 1-based encoder layers the head reads."""
        ...

    def predict_depth(
        self, layers: Mapping[int, Tensor], grid: tuple[int, int], size: tuple[int, int]
    ) -> Tensor:
        """(B, 1, *size) relative disparity from the normed tokens of `depth_layers()`."""
        ...


TASK_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a task class with its spec class (`cls.spec_class`), so that
    experiment specs accept its `kind` and the graph builds it. A new task is one module that
    defines both classes and decorates the task with this; importing the module registers it."""
    kind = task_kind_of(cls.spec_class)
    if TASK_REGISTRY.get(kind, cls) is not cls:
        raise ValueError(f"task kind '{kind}' is registered twice")
    register_task_spec(cls.spec_class)
    cls.kind = kind
    TASK_REGISTRY[kind] = cls
    return cls


def fp32(device: torch.device) -> torch.autocast:
    """A region where autocast is off, so losses and the depth head compute in fp32."""
    return torch.autocast(device_type=device.type, enabled=False)


class Task(nn.Module, ABC):
    """A task: `needs` (static, from the spec), an optional teacher side, and a loss."""

    spec_class: ClassVar[type[TaskSpecBase]]  # its spec: a TaskSpecBase with a `kind` literal
    kind: ClassVar[str]  # set by register_task from spec_class
    # Whether the loss is bounded below by 0: learned loss weights (`optim.weighting:
    # uncertainty`) apply only to such losses; one that can fall below 0 would drive its weight
    # up without bound (exp(-s) L + s with L < 0 falls as s -> -inf), so it keeps its own.
    nonnegative_loss: ClassVar[bool] = True

    def __init__(self, spec: TaskSpecBase, env: TaskEnv):
        super().__init__()
        self.spec = spec
        self.env = env

    @classmethod
    @abstractmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        """The views, outputs, texts and labels this task reads, from its spec alone."""

    @classmethod
    def problems(cls, spec: Any, env: TaskEnv) -> list[str]:
        """Reasons this task cannot run in this experiment (checked before any module is built)."""
        return []

    @classmethod
    def patch_mask_sampler(cls, spec: Any, env: TaskEnv) -> Callable[..., Tensor] | None:
        """What draws the global view's patch mask (`batch.patch_mask`) when this task masks
        patches; the loader calls it per image. Default: none."""
        return None

    def ema_modules(self) -> dict[str, nn.Module]:
        """Student heads the EMA teacher keeps a moving-average copy of."""
        return {}

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers of some of this task's parameters, by name within the task
        (the trainer gives them their own optimiser groups). Default: none, all at 1."""
        return {}

    def warnings(self, logged: Mapping[str, float]) -> list[str]:
        """Signs of trouble in this task's logged values (`TaskOutput.logged`'s names, read at
        log steps), e.g. a collapsing teacher; each a sentence. Default: none."""
        return []

    def before_optimizer_step(self, step: int) -> None:
        """Called after backward, before optimiser step `step` (0-based), e.g. to drop the
        gradients of a part that must not move yet. Default: none."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after optimiser step `step` (e.g. to keep a parameter in range). Default:
        none."""

    def teacher_targets(
        self,
        teacher: Mapping[str, EncoderOutput],
        heads: Mapping[str, nn.Module],
        batch: Batch,
        step: Tensor,
    ) -> Any:
        """Targets from the teacher's passes (called under no_grad, before the student pass)."""
        return None

    @abstractmethod
    def forward(self, inputs: StepInputs) -> TaskOutput:
        """This task's unweighted loss and the values it logs."""
