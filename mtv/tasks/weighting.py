"""How the tasks' losses combine into the step's loss (`optim.weighting`).

- `uniform` (the paper's, Sec. 4.4): L = sum_k w_k L_k with each task's fixed `weight` (1, and
  0.1 for KoLeo).
- `uncertainty` (Kendall, Gal and Cipolla, CVPR 2018, in the form most implementations use):
  L = sum_k w_k exp(-s_k) L_k + s_k, with one learned s_k = log sigma_k^2 per task, initialised
  at 0 (so training starts from the uniform weighting) and trained with the network. A task's
  weight settles where exp(-s_k) = 1 / (w_k L_k): tasks with a large loss are weighted down.
  It applies to the losses bounded below by 0 (`Task.nonnegative_loss`); the others (KoLeo)
  keep their fixed weight.

The effective weight of each task (w_k exp(-s_k)) is reported as `weight/<kind>` every step.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Weighting = Literal["uniform", "uncertainty"]


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
        elif method != "uniform":
            raise ValueError(f"optim.weighting: unknown method {method!r}")

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        if self.method == "uniform":
            total = sum(self.weights[k] * losses[k] for k in self.kinds)
            return torch.as_tensor(total), {}
        log_variance = dict(zip(self.learned, self.log_variance.float().unbind(), strict=True))
        total = torch.zeros((), device=self.log_variance.device)
        report: dict[str, Tensor] = {}
        for kind in self.kinds:
            if kind in log_variance:
                scale = self.weights[kind] * torch.exp(-log_variance[kind])
                total = total + scale * losses[kind].float() + log_variance[kind]
                report[f"weight/{kind}"] = scale.detach()
            else:
                total = total + self.weights[kind] * losses[kind]
        return total, report
