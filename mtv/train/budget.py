"""Will a spec's step fit in memory? An estimate, from the plan alone, of the activations one
micro-batch's forward keeps for its backward, against the memory the device has, checked before
anything is rendered, labelled or allocated: a spec far too large for the machine is one error
with the numbers, not an hour of swapping or a step that never ends.

Per transformer block and token the backward keeps a few tens of values of the width
(Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", Sec.
4.1, count 34 with dropout, and no term in the square of the sequence length when attention is
a fused kernel). Measured on mtv's own step with a hook on every tensor autograd saves
(tests/test_budget.py): about 20 per token and unit of width for VL, 28 with the SSL, grounding
and depth heads. The plan counts 18 for each student view's tokens and the text tower's, and
leaves out heads, the teacher's forward (no grad) and the optimiser state, so the estimate is a
floor: a refusal is certain, a pass is not a promise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from mtv.graph import GraphPlan
from mtv.specs.experiment import ExperimentSpec
from mtv.tasks.base import LOCAL

VALUES_PER_TOKEN_WIDTH = 18  # kept per block, token and unit of width: a floor (see above)


@dataclass(frozen=True)
class MemoryEstimate:
    activations: int  # bytes the backward keeps, at least
    available: int | None  # bytes the device can give (None: unknown)
    detail: str  # what the estimate counted, in words

    @property
    def fits(self) -> bool:
        return self.available is None or self.activations <= self.available


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def activation_estimate(spec: ExperimentSpec, plan: GraphPlan, value_bytes: int) -> tuple[int, str]:
    """(bytes, words) of the activations one micro-batch keeps for its backward."""
    encoder, text = spec.model.encoder, spec.model.text
    micro = max(1, spec.data.batch_size // spec.optim.accumulate)
    grid = (plan.env.global_size // encoder.patch_size) ** 2
    local_grid = (plan.env.local_size // encoder.patch_size) ** 2
    image_tokens = 0
    for view in plan.student:
        if view.view == LOCAL:
            image_tokens += micro * plan.n_local_crops * local_grid
        else:  # the global view, or its masked copy (a pass of its own)
            image_tokens += micro * grid
    per_block = VALUES_PER_TOKEN_WIDTH * value_bytes
    image = image_tokens * encoder.width * encoder.depth * per_block
    text_tokens = micro * text.context_length if plan.texts else 0
    words = text_tokens * text.width * text.depth * per_block
    views = ", ".join(
        view.view + (f" x{plan.n_local_crops}" if view.view == LOCAL else "")
        for view in plan.student
    )
    detail = (
        f"{image_tokens:,} image tokens ({views}; {micro} images a micro-batch) x width "
        f"{encoder.width} x {encoder.depth} blocks"
        + (f" and {text_tokens:,} text tokens" if text_tokens else "")
        + f", {VALUES_PER_TOKEN_WIDTH} values of {value_bytes} bytes each"
    )
    return image + words, detail


def available_memory(device: torch.device) -> int | None:
    """Bytes the device can give a run: a GPU's total memory; on the CPU, the memory the
    system reports available now (Linux); None where it cannot tell."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_estimate(
    spec: ExperimentSpec, plan: GraphPlan, device: torch.device, value_bytes: int
) -> MemoryEstimate:
    activations, detail = activation_estimate(spec, plan, value_bytes)
    return MemoryEstimate(activations, available_memory(device), detail)


def refusal(estimate: MemoryEstimate, device: torch.device) -> str | None:
    """The error a run that cannot fit gets, or None."""
    if estimate.fits:
        return None
    assert estimate.available is not None
    return (
        f"the step cannot fit: its activations alone need at least "
        f"{_gib(estimate.activations)} ({estimate.detail}), and the {device.type} has "
        f"{_gib(estimate.available)} available. Lower data.batch_size, the image sizes "
        "(data.views, model.encoder.image_size) or raise optim.accumulate"
    )
