"""Worker side of tests/test_distributed.py: functions that spawned gloo processes import (spawn
pickles the target by name, so everything here is top level), plus the batch/graph builders the
single-process references share with them."""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import fields, replace
from datetime import timedelta
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # spawn children normally inherit it; be safe either way
    sys.path.insert(0, str(ROOT))

from mtv.data.batch import Batch  # noqa: E402
from mtv.graph import TaskGraph  # noqa: E402
from tests.helpers import random_batch, tiny_spec  # noqa: E402

WORLD_SIZE = 2
GLOBAL_BATCH = 8
SEED = 0
# Rows of the global centering batch each rank takes: deliberately uneven, so a mean of per-rank
# centres (instead of the weighted global mean) would give a different answer.
CENTERING_SPLIT = (3, 5)
CENTERING_STEPS = 2
# Cases in the order every rank runs them (each has collectives, so the order must agree).
CASES = ("vl", "vl_local_grad_gather", "centering", "ground", "compiled", "pcgrad")
# Two tasks: PCGrad's projection is then free of its random task order.
PCGRAD_TASKS = ["vl", "depth"]


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of the batch, as a loader would have collated them: per-image fields
    sliced, the region names of those rows shared again among themselves."""
    shared = ("region_names", "region_name_index")
    rows = replace(
        batch,
        **{
            f.name: value[start:stop]
            for f in fields(batch)
            if (value := getattr(batch, f.name)) is not None and f.name not in shared
        },
    )
    if batch.region_names is None or batch.region_name_index is None:
        return rows
    names = batch.region_names[batch.region_name_index[start:stop]]  # (rows, R, L)
    unshared = replace(rows, region_slot_names=names, region_names=None, region_name_index=None)
    return unshared.share_region_names()


def rank_rows(rank: int, split: tuple[int, ...]) -> tuple[int, int]:
    start = sum(split[:rank])
    return start, start + split[rank]


def make_graph(tasks: list[str], **fields: object) -> TaskGraph:
    """The same parameters in every process: a fixed seed before building."""
    torch.manual_seed(SEED)
    return TaskGraph(tiny_spec(tasks, **fields))


def pcgrad_half(rank: int) -> tuple[TaskGraph, Batch]:
    """The pcgrad graph and this rank's half of the global batch."""
    graph = make_graph(PCGRAD_TASKS, optim={"weighting": "pcgrad"})
    batch = random_batch(graph, batch_size=GLOBAL_BATCH, seed=SEED)
    share = GLOBAL_BATCH // WORLD_SIZE
    return graph, slice_batch(batch, rank * share, (rank + 1) * share)


def centering_batch(graph: TaskGraph, seed: int) -> Batch:
    """A batch of GLOBAL_BATCH rows whose masked-patch counts differ between rows (and between
    the ranks' shares), so the masked task's weighted centre is not a plain mean of means."""
    batch = random_batch(graph, batch_size=GLOBAL_BATCH, seed=seed)
    assert batch.patch_mask is not None
    mask = batch.patch_mask.clone()
    for row, keep in ((1, 5), (6, 2)):
        masked = mask[row].nonzero().flatten()
        mask[row, masked[keep:]] = False
    batch.patch_mask = mask
    return batch


def grads_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None
    }


def local_grad_gather(x: torch.Tensor) -> torch.Tensor:
    """The classic mistake the autograd gather avoids: gather without autograd and splice the
    local rows back in, so each rank only back-propagates its own loss into its own rows."""
    import torch.distributed as dist

    from mtv.runtime.distributed import all_gather_no_grad

    parts = list(all_gather_no_grad(x).chunk(dist.get_world_size()))
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def ddp(module: torch.nn.Module) -> torch.nn.Module:
    # find_unused_parameters stays False: the graph freezes what no task reads, so any idle
    # trainable parameter would make DDP fail here.
    return torch.nn.parallel.DistributedDataParallel(module)


def _loss_and_grads(tasks: list[str], rank: int) -> dict[str, object]:
    graph = make_graph(tasks)
    graph.wrap_student(ddp)
    batch = random_batch(graph, batch_size=GLOBAL_BATCH, seed=SEED)
    share = GLOBAL_BATCH // WORLD_SIZE
    out = graph.step(slice_batch(batch, rank * share, (rank + 1) * share))
    out.total.backward()
    return {"loss": out.total.detach().clone(), "grads": grads_of(graph.student)}


def case_vl(rank: int) -> dict[str, object]:
    return _loss_and_grads(["vl"], rank)


def case_vl_local_grad_gather(rank: int) -> dict[str, object]:
    import mtv.tasks.vl as vl

    original = vl.all_gather_with_grad
    vl.all_gather_with_grad = local_grad_gather
    try:
        return _loss_and_grads(["vl"], rank)
    finally:
        vl.all_gather_with_grad = original


def case_centering(rank: int) -> dict[str, object]:
    # Not wrapped in DDP: its buffer broadcast would copy rank 0's centre to rank 1 and hide
    # whether the update itself is all-reduced.
    graph = make_graph(["distill", "masked"])
    start, stop = rank_rows(rank, CENTERING_SPLIT)
    centers: list[dict[str, torch.Tensor]] = []
    for step in range(CENTERING_STEPS):
        batch = centering_batch(graph, seed=SEED + step)
        with torch.no_grad():
            graph.step(slice_batch(batch, start, stop), step)
        centers.append(
            {
                kind: graph.student.tasks[kind].centering.center.detach().clone()
                for kind in ("distill", "masked")
            }
        )
    return {"centers": centers}


def case_ground(rank: int) -> dict[str, object]:
    # A ground-only student reads neither the pooled embedding nor the final norm: the graph
    # freezes both, so plain DDP works.
    return _loss_and_grads(["ground"], rank)


def case_compiled(rank: int) -> dict[str, object]:
    """All six tasks with the student and the teacher each compiled with fullgraph=True (any
    graph break fails): the all-gathers and the centering all-reduce must trace. The losses are
    compared with an eager copy on the same rank."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    tasks = ["vl", "distill", "masked", "koleo", "ground", "depth"]
    eager, compiled = make_graph(tasks), make_graph(tasks)
    compiled.wrap_student(lambda m: torch.compile(m, backend="eager", fullgraph=True))
    compiled.wrap_teacher(lambda f: torch.compile(f, backend="eager", fullgraph=True))
    batch = random_batch(eager, batch_size=GLOBAL_BATCH, seed=SEED)
    share = GLOBAL_BATCH // WORLD_SIZE
    mine = slice_batch(batch, rank * share, (rank + 1) * share)
    losses = []
    for step in (0, 1):
        want, got = eager.step(mine, step), compiled.step(mine, step)
        losses.append({k: (got.losses[k].detach(), want.losses[k].detach()) for k in tasks})
    return {"losses": losses, "unique_graphs": counters["stats"]["unique_graphs"]}


def case_pcgrad(rank: int) -> dict[str, object]:
    """The weights PCGrad gives each task, from the Gramian summed over the ranks."""
    graph, half = pcgrad_half(rank)
    out = graph.step(half)
    return {"weights": {k: float(out.logged[f"weight/{k}"]) for k in PCGRAD_TASKS}}


def run_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """Run every case in CASES on this rank; save {case: result} (and the first failure's
    traceback under "error") to out_dir/rank{rank}.pt after each case."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    results: dict[str, object] = {}
    path = Path(out_dir) / f"rank{rank}.pt"
    failed = False
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        for case in CASES:
            try:
                results[case] = globals()[f"case_{case}"](rank)
            except Exception:
                results["error"] = f"rank {rank}, case {case}:\n{traceback.format_exc()}"
                failed = True
                break  # the ranks' collectives would be out of step from here on
            finally:
                torch.save(results, path)
    finally:
        dist.destroy_process_group()
    if failed:
        sys.exit(1)
