"""How the tasks' losses combine into the step's loss (`optim.weighting`).

- `uniform` (the paper's, Sec. 4.4): L = sum_k w_k L_k with each task's fixed `weight` (1, and
  0.1 for KoLeo).
- `uncertainty` (Kendall, Gal and Cipolla, CVPR 2018, in the form most implementations use):
  L = sum_k w_k exp(-s_k) L_k + s_k, with one learned s_k = log sigma_k^2 per task, initialised
  at 0 (so training starts from the uniform weighting) and trained with the network. A task's
  weight settles where exp(-s_k) = 1 / (w_k L_k): tasks with a large loss are weighted down.
  It applies to the losses bounded below by 0 (`Task.nonnegative_loss`); the others (KoLeo)
  keep their fixed weight.

- `pcgrad`: PCGrad (Yu et al., NeurIPS 2020), each task's gradient on the shared encoder
  projected off the others' where they conflict (negative dot product). The projection is a
  linear combination sum_k c_k g_k of the tasks' gradients, whose weights c_k torchjd's
  `PCGradWeighting` computes from the Gramian G_ij = g_i . g_j. Here g_k is task k's gradient
  on the parameters of the encoder's last block: every view of every task passes through it
  (global, masked and local crops alike), so conflicts between tasks that read different views
  show there, at the cost of one backward per task through its head and that one block, not
  the whole encoder. The weights c_k then act on the whole encoder: at the encoder's outputs
  (`StudentModel.shared_outputs`) the step's backward carries sum_k c_k w_k dL_k/dF, through a
  term whose value is 0 and whose gradient adds sum_k (c_k - 1) w_k dL_k/dF. Task heads, and
  the text tower outside the image encoder, train on their plain w_k L_k, as PCGrad leaves
  task-specific parameters alone. The tasks' gradients are summed over ranks before the
  Gramian and rank 0's weights are used everywhere, so every rank steps the same way; the
  projection loop runs on the host (torchjd): one device-to-host read per step on a GPU.

`weight/<kind>` reports each task's effective weight every step: w_k exp(-s_k) for the tasks
whose s_k is learned (`uncertainty`), c_k w_k at the encoder (`pcgrad`, beside
`weighting/conflicts`, the number of task pairs whose gradients conflict); `uniform` reports
none, its weights being the spec's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchjd.aggregation import PCGradWeighting

from mtv.runtime.distributed import all_reduce_sum, broadcast_from_first

Weighting = Literal["uniform", "uncertainty", "pcgrad"]


class LossWeighting(nn.Module):
    """The step's loss from the tasks' losses, and each task's effective weight."""

    def __init__(
        self,
        kinds: list[str],
        weights: dict[str, float],
        method: Weighting = "uniform",
        learnable: dict[str, bool] | None = None,
    ):
        super().__init__()
        self.kinds, self.weights, self.method = list(kinds), dict(weights), method
        if method == "uncertainty":
            learnable = learnable or {}
            self.learned = [k for k in self.kinds if learnable.get(k, True)]
            # A parameter only under this method: uniform runs keep the state dict they had.
            self.log_variance = nn.Parameter(torch.zeros(len(self.learned)))
        elif method not in ("uniform", "pcgrad"):
            raise ValueError(f"optim.weighting: unknown method {method!r}")

    def forward(
        self,
        losses: dict[str, Tensor],
        features: Sequence[Tensor] = (),
        probe: Sequence[Tensor] = (),
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The step's loss and the tasks' effective weights. `pcgrad` (ignored by the other
        methods) compares the tasks' gradients on the parameters `probe` and applies its
        weights at the encoder outputs `features`, behind which the whole encoder lies."""
        if self.method == "uniform":
            total = sum(self.weights[k] * losses[k] for k in self.kinds)
            return torch.as_tensor(total), {}
        if self.method == "pcgrad":
            return self._pcgrad(losses, features, probe)
        log_variance = dict(zip(self.learned, self.log_variance.float().unbind(), strict=True))
        total = torch.zeros((), device=self.log_variance.device)
        logged: dict[str, Tensor] = {}
        for kind in self.kinds:
            if kind in log_variance:
                scale = self.weights[kind] * torch.exp(-log_variance[kind])
                total = total + scale * losses[kind].float() + log_variance[kind]
                logged[f"weight/{kind}"] = scale.detach()
            else:
                total = total + self.weights[kind] * losses[kind]
        return total, logged

    def _pcgrad(
        self, losses: dict[str, Tensor], features: Sequence[Tensor], probe: Sequence[Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        weighted = [self.weights[k] * losses[k].float() for k in self.kinds]
        total = torch.stack(weighted).sum()
        outputs = [f for f in features if f.requires_grad]
        parameters = [p for p in probe if p.requires_grad]
        if not torch.is_grad_enabled() or not outputs or not parameters:
            return total, {}
        at_outputs, rows = task_gradients(weighted, outputs, parameters)
        jacobian = all_reduce_sum(rows).double()  # each task's gradient over the global batch
        # In fp64: the dot products run over the block's parameters, and where two gradients
        # nearly cancel, fp32 rounding would move the projection's weights.
        gramian = jacobian @ jacobian.T
        coefficients = PCGradWeighting()(gramian).to(rows.dtype)
        coefficients = broadcast_from_first(coefficients).detach()
        # What the encoder must receive beyond the plain sum: sum_k (c_k - 1) w_k dL_k/dF at
        # each output F, through (extra . (F - F.detach())), which is 0 in value.
        for output, *per_task in zip(outputs, *at_outputs, strict=True):
            extra = sum((c - 1) * g for c, g in zip(coefficients.unbind(), per_task, strict=True))
            total = total + (extra.detach() * (output - output.detach())).sum()
        logged = {
            f"weight/{k}": c * self.weights[k]
            for k, c in zip(self.kinds, coefficients.unbind(), strict=True)
        }
        conflicts = torch.triu(gramian < 0, diagonal=1).sum()
        return total, logged | {"weighting/conflicts": conflicts.to(rows.dtype)}


def task_gradients(
    weighted: Sequence[Tensor], outputs: Sequence[Tensor], parameters: Sequence[Tensor]
) -> tuple[list[list[Tensor]], Tensor]:
    """Each weighted loss's gradients at the encoder's `outputs` (one list per task, zeros
    where a task does not read an output) and on `parameters`, flattened into one row per
    task: the (tasks x parameters) Jacobian PCGrad compares the tasks on."""
    at_outputs, rows = [], []
    for loss in weighted:
        grads = torch.autograd.grad(
            loss, [*outputs, *parameters], retain_graph=True, allow_unused=True
        )
        filled = [
            g if g is not None else torch.zeros_like(x)
            for g, x in zip(grads, [*outputs, *parameters], strict=True)
        ]
        at_outputs.append(filled[: len(outputs)])
        rows.append(torch.cat([g.flatten().float() for g in filled[len(outputs) :]]))
    return at_outputs, torch.stack(rows)
