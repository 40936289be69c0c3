"""The few collectives the losses need; each is the identity when no process group is running."""

from __future__ import annotations

import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from every rank along dim 0, keeping autograd: the backward pass sends
    each rank the gradient of all ranks' losses with respect to its own rows. (A plain
    `dist.all_gather` returns leaves and silently drops those gradients.) Functional collectives
    trace under torch.compile without graph breaks."""
    if not is_distributed():
        return x
    return funcol.all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from every rank along dim 0 (labels, masks, ids: no gradient)."""
    if not is_distributed():
        return x
    return funcol.all_gather_tensor(x.detach().contiguous(), 0, dist.group.WORLD)


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of `x` over ranks (a new tensor; no autograd)."""
    if not is_distributed():
        return x
    return funcol.all_reduce(x.detach(), "sum", dist.group.WORLD)


def broadcast_from_first(x: Tensor) -> Tensor:
    """Rank 0's `x` on every rank (a new tensor; no autograd); `x` itself on one process."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.broadcast(out, src=0)
    return out


def resolve_backend(choice: str, device_type: str) -> str:
    """The process-group backend for `runtime.distributed.backend`: `auto` is nccl when the run
    trains on CUDA and gloo on the CPU; an explicit choice is kept."""
    if choice == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    return choice


def local_rank() -> int:
    """This process's index on its node (torchrun's `LOCAL_RANK`; 0 when run plainly)."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_environment(backend: str = "gloo") -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, starting the process group when there is
    more than one process; (0, 1) when run plainly."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not is_distributed():
        dist.init_process_group(backend=backend)
    return (rank(), world_size()) if world > 1 else (0, 1)
