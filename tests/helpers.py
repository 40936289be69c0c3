"""Test helpers: tiny experiment specs and batches shaped as the task graph asks."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mtv.data.batch import Batch
from mtv.graph import GraphPlan, TaskGraph
from mtv.specs import ExperimentSpec
from mtv.tasks import CAPTION_TEXT, MASKED, REGION_TEXT
from mtv.tasks.masked import draw_patch_mask

ALL_TASKS = ["vl", "distill", "masked", "koleo", "ground", "depth"]
SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


def smoke(corpus: str, *extra: str) -> ExperimentSpec:
    """The smoke experiment on the mini-world at `corpus`, loading in the main process."""
    from mtv.specs import load_spec

    return load_spec(SMOKE, [f"data.source.root={corpus}", "data.loader.workers=0", *extra])


def tiny_spec(
    tasks: list[str | dict[str, object]] | None = None, **fields: object
) -> ExperimentSpec:
    """A tiny model (CPU seconds) with every label available."""
    raw: dict[str, object] = {
        "name": "tiny",
        "model": {"size": "tiny"},
        "data": {
            "labels": {"kinds": ["boxes", "depth"]},
            "views": {"local_size": 16},
            "batch_size": 4,
        },
        "task_defaults": {
            "distill": {"n_prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16},
            "masked": {"n_prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16},
        },
        "tasks": tasks or ALL_TASKS,
        "schedule": {"steps": 100, "warmup_steps": 10},
        **fields,
    }
    return ExperimentSpec.model_validate(raw)


def random_batch(graph: TaskGraph, batch_size: int = 4, regions: int = 3, seed: int = 0) -> Batch:
    """A batch with every input the plan needs, from a seeded generator."""
    plan: GraphPlan = graph.plan
    g = torch.Generator().manual_seed(seed)
    size, local = plan.env.global_size, plan.env.local_size
    text = graph.spec.model.text
    images = torch.randn(batch_size, 3, size, size, generator=g)
    batch = Batch(images=images)
    if CAPTION_TEXT in plan.texts:
        batch.captions = torch.randint(
            3, text.vocab_size, (batch_size, text.context_length), generator=g
        )
    if plan.n_local_crops:
        batch.local_images = torch.randn(
            batch_size, plan.n_local_crops, 3, local, local, generator=g
        )
    if any(p.view == MASKED for p in plan.student):
        masked_spec = next(t for t in graph.spec.tasks if t.kind == "masked")
        masks = [draw_patch_mask(masked_spec, plan.env, g) for _ in range(batch_size)]
        batch.patch_mask = torch.stack(masks)
    if REGION_TEXT in plan.texts:
        xy = torch.rand(batch_size, regions, 2, generator=g) * 0.5
        wh = torch.rand(batch_size, regions, 2, generator=g) * 0.5 + 0.05
        batch.boxes = torch.cat([xy, (xy + wh).clamp(max=1.0)], dim=-1)
        batch.box_valid = torch.rand(batch_size, regions, generator=g) > 0.2
        batch.box_valid[:, 0] = True
        batch.region_name_ids = torch.randint(0, 5, (batch_size, regions), generator=g)
        # Names are a function of the id, so equal ids really are equal texts.
        names = torch.randint(3, text.vocab_size, (5, text.context_length), generator=g)
        batch.region_slot_names = names[batch.region_name_ids]
        batch = batch.share_region_names()
    if "depth" in plan.labels:
        yy, xx = torch.meshgrid(
            torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij"
        )
        depth = (0.5 + yy + 0.3 * xx)[None, None].repeat(batch_size, 1, 1, 1)
        batch.depth = depth + 0.05 * torch.rand(depth.shape, generator=g)
        batch.depth_valid = torch.rand(depth.shape, generator=g) > 0.05
    return batch


def join_local_ranks(rank: int, world: int, port: int) -> None:
    """Set up this process as rank `rank` of `world` gloo ranks on this machine (the variables
    torchrun sets), one CPU thread each so the ranks do not compete for the cores."""
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
        }
    )
    torch.set_num_threads(1)
