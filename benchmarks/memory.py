"""Peak memory of one training step, measured the same way on CUDA and CPU: the tensors the
trainer holds when the step starts (weights, gradients, optimiser state, EMA teacher, batch) plus
the allocator's high-water mark above that level during the step.

CUDA's caching allocator keeps the high-water mark itself (`max_memory_allocated`). The CPU
allocator keeps none, so there it comes from torch.profiler's allocation events (each op's own
allocations less frees, in the order they happened). The resident set size is not used: on CPU
it mostly measures the libraries' code pages and blocks the C allocator retains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import torch
from torch.profiler import ProfilerActivity, profile

from mtv.data.batch import Batch
from mtv.graph import TaskGraph
from mtv.train.step import TrainStep

NOTE = (
    "tensors held at step start + allocator high-water during the step (CUDA: "
    "max_memory_allocated; CPU: torch.profiler allocation events)"
)


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()  # views and ties count once
    return sum(storages.values())


class HeldByAStep(Protocol):
    """What a benchmark's step holds: its graph, its optimiser (in `runner`), its batch."""

    graph: TaskGraph
    runner: TrainStep
    batch: Batch
    device: torch.device


def held_bytes(step: HeldByAStep) -> int:
    """Bytes of every tensor a training step holds between steps."""
    graph = step.graph
    modules: list[torch.nn.Module] = [graph.student]
    if graph.teacher is not None:
        modules.append(graph.teacher)
    tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    tensors += [p.grad for p in graph.student.parameters() if p.grad is not None]
    for state in step.stepper.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [v for v in vars(step.batch).values() if isinstance(v, torch.Tensor)]
    return _storage_bytes(t for t in tensors if t.device.type != "meta")


def cpu_high_water(fn: Callable[[], object]) -> int:
    """Most bytes allocated by `fn` and alive at once, above the level at its start."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    level = high = 0
    for _, change in changes:
        level += change
        high = max(high, level)
    return high


def step_peak_bytes(held_by: HeldByAStep, step: Callable[[], object]) -> int:
    """Peak tensor memory of one call of `step` (a training step holding `held_by`'s tensors)."""
    device = held_by.device
    held = held_bytes(held_by)
    if device.type != "cuda":
        return held + cpu_high_water(step)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return held + torch.cuda.max_memory_allocated(device) - start
