"""The student: everything that trains by gradient (encoder, text tower, task heads, learned
loss weights) and its forward pass over one batch. DDP wraps this module."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

from mtv.data.batch import Batch
from mtv.graph.passes import encode_passes
from mtv.graph.plan import GraphPlan
from mtv.models.text import TextTransformer
from mtv.models.vit import EncoderOutput, VisionTransformer
from mtv.specs.experiment import ExperimentSpec
from mtv.tasks.base import CAPTION_TEXT, MASKED, REGION_TEXT, TASK_REGISTRY, StepInputs
from mtv.tasks.weighting import LossWeighting

InterfaceT = TypeVar("InterfaceT")


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
        features = encode_passes(self.encoder, self.plan.student, batch)
        inputs = StepInputs(batch, features, self.encode_texts(batch), teacher, step)
        losses: dict[str, Tensor] = {}
        logged: dict[str, Tensor] = {}
        for kind, task in self.tasks.items():
            out = task(inputs)
            losses[kind] = out.loss
            logged.update({f"{kind}/{name}": value for name, value in out.logged.items()})
        total, weights = self.weighting(
            losses, self.shared_outputs(features), list(self.encoder.blocks[-1].parameters())
        )
        return total, losses, logged | weights

    def shared_outputs(self, features: dict[str, EncoderOutput]) -> list[Tensor]:
        """The encoder's outputs every gradient into it passes through: each encoder pass's last
        hidden state (tokens and pooled embeddings are computed from it) and the intermediate
        layers tapped for a task (the last layer's tap is the tokens themselves, already behind
        the hidden state), so no gradient path is counted twice. A view split from a batched
        pass (the clean and masked global views) counts through that pass: the slices a task
        reads of its tokens or pooled embeddings are not behind the slice of its hidden state."""
        depth = len(self.encoder.blocks)
        passes: dict[int, EncoderOutput] = {}
        for encoded in features.values():
            root = encoded.source or encoded
            passes.setdefault(id(root), root)
        out = []
        for encoded in passes.values():
            out.append(encoded.prenorm)
            out += [tap for layer, tap in encoded.layers.items() if layer != depth]
        return out

    def task_with(self, interface: type[InterfaceT]) -> InterfaceT | None:
        """The first task that implements `interface` (a runtime-checkable protocol of
        `mtv.tasks.base`, e.g. `ScoresImageText`, `PredictsDepth`), or None: how other code
        reaches a task's capability without knowing its kind or attribute names."""
        return next((t for t in self.tasks.values() if isinstance(t, interface)), None)
