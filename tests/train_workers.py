"""Worker side of the 2-process trainer test (spawned processes import this by name)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mtv.specs import load_spec  # noqa: E402
from mtv.train import Trainer  # noqa: E402
from tests.helpers import join_local_ranks  # noqa: E402

# Tasks whose losses are the same on 1 rank and averaged over 2 (koleo and ground normalise per
# rank by design, so their 2-rank value is not the 1-rank value).
DDP_TASKS = "[vl, distill, masked, depth]"


def overrides(corpus: str) -> list[str]:
    return [
        f"tasks={DDP_TASKS}",
        f"data.source.root={corpus}",
        "data.batch_size=8",
        "data.loader.workers=0",
        "optim.grad_clip=null",
        "runtime.precision=fp32",
        "schedule.steps=1",
    ]


def first_step(corpus: str, run_dir: str) -> dict:
    spec = load_spec(ROOT / "experiments" / "smoke.yaml", overrides(corpus))
    trainer = Trainer(spec, Path(run_dir), report=lambda message: None)
    trainer.train_step()
    (row,) = trainer.read_rows()
    grads = {
        name: p.grad.detach().clone()
        for name, p in trainer.graph.student.named_parameters()
        if p.grad is not None
    }
    return {"row": row, "grads": grads}


def worker(rank: int, world: int, corpus: str, run_dir: str, port: int, out: str) -> None:
    join_local_ranks(rank, world, port)
    result = first_step(corpus, run_dir)
    torch.save(result, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()
