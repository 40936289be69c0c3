"""`attributes`: supervised classification of the attributes an entity name spells out (for the
mini-world, an object's colour and shape) from the encoder's patch tokens under its box. Not one
of the paper's tasks: it is the *positive control* of the instruments that ask for shape and
colour, an encoder trained directly for what they measure, read through the same linear probes.

An entity name is read as words drawn in order from `name_parts` (for the mini-world: size,
colour, shape, as in "small red cube"); every such name is hashed once with `name_id`, so the
labels are looked up on the device from the batch's `region_name_ids`, and a name outside the
table (a wrong or foreign name) is left out of the loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mtv.data.batch import name_id
from mtv.specs.tasks import TaskSpecBase
from mtv.tasks.base import (
    GLOBAL,
    StepInputs,
    Task,
    TaskEnv,
    TaskNeeds,
    TaskOutput,
    fp32,
    register_task,
)

MAX_NAMES = 100_000  # entries of the name table (the product of the parts' sizes)


class AttributesTaskSpec(TaskSpecBase):
    """Linear classifiers of box-pooled patch tokens, one per classified part of the names."""

    kind: Literal["attributes"] = "attributes"
    name_parts: list[list[str]] = Field(
        min_length=1,
        description="the words of an entity name, in order, each from its list (mini-world: "
        "[[small, large], [red, green, ...], [sphere, cube, ...]])",
    )
    classify: dict[str, int] = Field(
        min_length=1,
        description="the parts predicted: a name for the logs -> its index into name_parts "
        "(mini-world: {color: 1, shape: 2})",
    )
    max_regions: int = Field(4, gt=0, description="boxes per image read")

    @model_validator(mode="after")
    def _parts(self) -> AttributesTaskSpec:
        if any(not part for part in self.name_parts):
            raise ValueError("name_parts: every part needs at least one word")
        indices = list(self.classify.values())
        bad = [i for i in indices if not 0 <= i < len(self.name_parts)]
        if bad or len(set(indices)) != len(indices):
            raise ValueError(
                f"classify: distinct indices into name_parts (0..{len(self.name_parts) - 1}), "
                f"got {self.classify}"
            )
        if any(len(set(part)) != len(part) for part in self.name_parts):
            raise ValueError("name_parts: a word repeats within a part")
        if (count := _product_size(self.name_parts)) > MAX_NAMES:
            raise ValueError(f"name_parts spell {count} names, more than {MAX_NAMES}")
        return self


def _product_size(parts: list[list[str]]) -> int:
    count = 1
    for part in parts:
        count *= len(part)
    return count


def name_table(name_parts: list[list[str]], classify: list[int]) -> tuple[Tensor, Tensor]:
    """Every name the parts spell: their `name_id`s sorted (K,) and, row for row, the class of
    each classified part (K, len(classify))."""
    rows = [
        (name_id(" ".join(words)), [name_parts[p].index(words[p]) for p in classify])
        for words in itertools.product(*name_parts)
    ]
    rows.sort(key=lambda row: row[0])
    ids = torch.tensor([row[0] for row in rows], dtype=torch.long)
    classes = torch.tensor([row[1] for row in rows], dtype=torch.long).reshape(len(rows), -1)
    return ids, classes


def box_patch_weights(boxes: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, R, 4) xyxy boxes in [0, 1] -> (B, R, rows * cols): the share of each patch cell the box
    covers (1 inside, fractions on its border), the cells in row-major order."""
    rows, cols = grid

    def overlap(lo: Tensor, hi: Tensor, cells: int) -> Tensor:
        edges = torch.arange(cells + 1, device=boxes.device, dtype=boxes.dtype) / cells
        inside = torch.minimum(hi[..., None], edges[1:]) - torch.maximum(lo[..., None], edges[:-1])
        return inside.clamp(min=0) * cells

    across = overlap(boxes[..., 0], boxes[..., 2], cols)  # (B, R, cols)
    down = overlap(boxes[..., 1], boxes[..., 3], rows)  # (B, R, rows)
    return (down[..., :, None] * across[..., None, :]).flatten(-2)


def attribute_loss(logits: list[Tensor], labels: Tensor, known: Tensor) -> Tensor:
    """L = Σ_a (1/n) Σ_{i known} -log softmax(z_a,i)[y_a,i]: cross-entropy per classified part a,
    averaged over the n regions whose name is in the table (0 when there are none)."""
    count = known.sum().clamp(min=1)
    total = logits[0].new_zeros(())
    for part, part_logits in enumerate(logits):
        per_region = F.cross_entropy(part_logits, labels[:, part], reduction="none")
        total = total + torch.where(known, per_region, 0.0).sum() / count
    return total


@register_task
class AttributesTask(Task):
    spec_class = AttributesTaskSpec
    spec: AttributesTaskSpec

    def __init__(self, spec: AttributesTaskSpec, env: TaskEnv):
        super().__init__(spec, env)
        width = env.encoder.width
        parts = list(spec.classify.values())
        self.heads = nn.ModuleList(nn.Linear(width, len(spec.name_parts[p])) for p in parts)
        ids, classes = name_table(spec.name_parts, parts)
        # Derived from the spec: rebuilt, not stored in checkpoints.
        self.register_buffer("name_ids", ids, persistent=False)
        self.register_buffer("name_classes", classes, persistent=False)

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        return TaskNeeds(
            student_views=frozenset({GLOBAL}),
            token_views=frozenset({GLOBAL}),
            labels=frozenset({"boxes"}),
            regions=spec.max_regions,
        )

    def warnings(self, logged: Mapping[str, float]) -> list[str]:
        if logged.get("regions", 1.0) == 0.0:
            return [
                "no box name of this batch is spelt from name_parts (a vocabulary that does not "
                "match the labels' names trains nothing)"
            ]
        return []

    def labels_of(self, region_name_ids: Tensor, box_valid: Tensor) -> tuple[Tensor, Tensor]:
        """(n,) name ids and validity -> each region's classes (n, parts) and whether its name is
        in the table; looked up on the device (a sorted search), no host read."""
        slot = torch.searchsorted(self.name_ids, region_name_ids).clamp(max=len(self.name_ids) - 1)
        known = box_valid & (self.name_ids[slot] == region_name_ids)
        return self.name_classes[slot], known

    def forward(self, inputs: StepInputs) -> TaskOutput:
        batch = inputs.batch
        if batch.boxes is None or batch.box_valid is None or batch.region_name_ids is None:
            raise ValueError("the attributes task needs batch.boxes, box_valid, region_name_ids")
        encoded = inputs.student[GLOBAL]
        # Padding boxes may hold anything (NaN included): they get an empty box instead.
        boxes = torch.where(batch.box_valid[..., None], batch.boxes, 0.0)
        weights = box_patch_weights(boxes.float(), encoded.grid)
        with fp32(weights.device):
            pooled = weights @ encoded.tokens.float() / weights.sum(-1, keepdim=True).clamp(1e-6)
            regions = pooled.flatten(0, 1)
            labels, known = self.labels_of(
                batch.region_name_ids.flatten(), batch.box_valid.flatten()
            )
            logits = [head(regions) for head in self.heads]
            loss = attribute_loss(logits, labels, known)
        count = known.sum().clamp(min=1)
        logged = {"regions": known.sum().detach().float()}
        for column, (name, part_logits) in enumerate(zip(self.spec.classify, logits, strict=True)):
            right = (part_logits.argmax(-1) == labels[:, column]) & known
            logged[f"{name}_accuracy"] = (right.sum() / count).detach()
        return TaskOutput(loss, logged)
