"""How the tasks' losses combine into the step's loss (`optim.weighting`).

- `uniform` (the paper's, Sec. 4.4): L = sum_k w_k L_k with each task's fixed `weight` (1, and
  0.1 for KoLeo).
- `uncertainty` (Kendall, Gal and Cipolla, CVPR 2018, in the form most implementations use):
  L = sum_k w_k exp(-s_k) L_k + s_k, with one learned s_k = log sigma_k^2 per task, initialised
  at 0 (so training starts from the uniform weighting) and trained with the network. A task's
  weight settles where exp(-s_k) = 1 / (w_k L_k): tasks with a large loss are weighted down.
  It applies to the losses bounded below by 0 (`Task.nonnegative_loss`); the others (KoLeo)
  keep their fixed weight.

- `pcgrad`: PCGrad (Yu et al., NeurIPS 2020), each task's gradient projected off the others'
  where they conflict, with the projection weights computed by torchjd's `PCGradWeighting`
  from the Gramian G_ij = g_i . g_j of the tasks' gradients with respect to the image
  encoder's outputs (each view's last hidden state and the intermediate layers a task reads),
  not its parameters, as MGDA-UB does (Sener and Koltun, NeurIPS 2018): one backward per task
  through the heads only, then the ordinary backward of L = sum_k c_k w_k L_k with the
  weights c_k held constant. The Gramian is summed over ranks and rank 0's weights are used
  everywhere, so every rank steps the same way. The projection loop runs on the host (torchjd):
  one device-to-host read per step on a GPU.

The effective weight of each task (w_k exp(-s_k), or c_k w_k) is reported as `weight/<kind>`
every step.
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
        self, losses: dict[str, Tensor], features: Sequence[Tensor] = ()
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The step's loss and the tasks' effective weights; `features` are the shared outputs
        whose gradients `pcgrad` compares (ignored by the other methods)."""
        if self.method == "uniform":
            total = sum(self.weights[k] * losses[k] for k in self.kinds)
            return torch.as_tensor(total), {}
        if self.method == "pcgrad":
            return self._pcgrad(losses, features)
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
        self, losses: dict[str, Tensor], features: Sequence[Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        weighted = [self.weights[k] * losses[k].float() for k in self.kinds]
        needed = [f for f in features if f.requires_grad]
        if not torch.is_grad_enabled() or not needed:
            return torch.stack(weighted).sum(), {}
        rows = []
        for loss in weighted:
            grads = torch.autograd.grad(loss, needed, retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(f)).flatten().float()
                        for g, f in zip(grads, needed, strict=True)
                    ]
                )
            )
        jacobian = torch.stack(rows)
        gramian = all_reduce_sum(jacobian @ jacobian.T)
        coefficients = PCGradWeighting()(gramian.double()).to(jacobian.dtype)
        coefficients = broadcast_from_first(coefficients)
        total = (coefficients.detach() * torch.stack(weighted)).sum()
        logged = {
            f"weight/{k}": (c * self.weights[k]).detach()
            for k, c in zip(self.kinds, coefficients.unbind(), strict=True)
        }
        return total, logged
