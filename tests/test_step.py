"""The training step keeps an accelerator busy: one compiled graph per pass with no breaks and no
recompilation. Checked on the CPU, where the same Python runs. (No host reads outside log steps:
tests/test_host_reads.py, at the dispatcher.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters

from mtv.train import Trainer
from tests.helpers import smoke


def test_the_compiled_step_neither_breaks_nor_recompiles(corpus: str, tmp_path: Path) -> None:
    """The student and teacher passes of the full task set compile to whole graphs at step 1;
    steps 2-10 reuse them (region-name counts vary per batch: that dimension is dynamic)."""
    spec = smoke(
        corpus,
        "schedule.steps=10",
        "runtime.compile=true",
        "runtime.compile_backend=eager",  # dynamo's capture alone: what breaks and recompiles
        "runtime.precision=fp32",
    )
    torch._dynamo.reset()
    counters.clear()
    trainer = Trainer(spec, tmp_path / "run", report=lambda m: None)
    names: list[int] = []
    forward_backward = trainer.runner.forward_backward

    def recorded(batch: Any, *args: Any, **kwargs: Any) -> None:
        names.append(batch.region_names.shape[0])
        forward_backward(batch, *args, **kwargs)

    trainer.runner.forward_backward = recorded  # type: ignore[method-assign]
    trainer.train_step()
    trainer.step += 1
    assert not counters["graph_break"], dict(counters["graph_break"])
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 2  # the student's pass and the teacher's
    for _ in range(9):
        trainer.train_step()
        trainer.step += 1
    assert len(set(names)) > 1, names  # the distinct-name count did vary
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == graphs, "steps 2-10 recompiled"
    assert not counters["recompiles"], dict(counters["recompiles"])
    rows = trainer.read_rows()
    assert len(rows) == 10 and all(r["loss"] > 0 for r in rows)
