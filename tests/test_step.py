"""The training step keeps an accelerator busy: one compiled graph per pass with no breaks and no
recompilation. Checked on the CPU, where the same Python runs. (No host reads outside log steps:
tests/test_host_reads.py, at the dispatcher.)"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from mtv.graph import TaskGraph
from mtv.train import Trainer
from mtv.train.step import TrainStep
from tests.helpers import random_batch, smoke, tiny_spec


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
    forward_backward = trainer.stepper._forward_backward

    def recorded(batch: Any, *args: Any, **kwargs: Any) -> None:
        names.append(batch.region_names.shape[0])
        forward_backward(batch, *args, **kwargs)

    trainer.stepper._forward_backward = recorded  # type: ignore[method-assign]
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


def test_reports_are_the_mean_over_micro_batches() -> None:
    """With accumulation, a step's reported values (e.g. the teacher's entropy) are the mean
    over its micro-batches, as its losses are, not the last micro-batch's."""
    torch.manual_seed(0)
    spec = tiny_spec(["vl", "distill"], optim={"accumulate": 2}, runtime={"precision": "fp32"})
    graph = TaskGraph(spec)
    runner = TrainStep(spec, graph, torch.device("cpu"), world=1)
    batches = [random_batch(graph, seed=s) for s in (1, 2)]
    twin = copy.deepcopy(graph)  # the same passes in the same order (teacher centres move)
    logged = [twin.step(b, 0).logged for b in batches]
    out = runner(batches, 0, 1e-9)
    values = dict(zip(out.names, out.vector.tolist(), strict=True))
    for name in logged[0]:
        expected = (float(logged[0][name]) + float(logged[1][name])) / 2
        assert values[name] == pytest.approx(expected, rel=1e-4, abs=1e-6), name


def test_fused_adamw_leaves_everything_as_it_was_when_found_inf_is_set() -> None:
    """The device-side skip relies on fused AdamW honouring `found_inf` (GradScaler's hook; no
    public API skips a step without a host read): if torch stops honouring it, this fails."""
    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    weight.grad = torch.ones(4)
    optimizer.step()
    state = {k: v.clone() for k, v in optimizer.state[weight].items()}
    before = weight.detach().clone()
    weight.grad = torch.full((4,), 5.0)
    optimizer.found_inf = torch.ones(())  # type: ignore[attr-defined]
    optimizer.step()
    assert torch.equal(weight.detach(), before)
    for key, value in optimizer.state[weight].items():
        assert torch.equal(value, state[key]), key
    optimizer.found_inf = torch.zeros(())  # type: ignore[attr-defined]
    optimizer.step()
    assert not torch.equal(weight.detach(), before)


def test_a_step_takes_exactly_its_micro_batches() -> None:
    """One call is one optimiser step: it takes `optim.accumulate` micro-batches from what it is
    given (no more: the rest stay for the next step) and refuses fewer."""
    torch.manual_seed(0)
    spec = tiny_spec(["vl"], optim={"accumulate": 2}, runtime={"precision": "fp32"})
    graph = TaskGraph(spec)
    runner = TrainStep(spec, graph, torch.device("cpu"), world=1)
    stream = iter([random_batch(graph, seed=s) for s in range(5)])
    out = runner(stream, 0, 1e-4)
    assert out.names[0] == "loss" and out.vector.shape == (len(out.names),)
    assert len(list(stream)) == 3  # two taken, three left
    with pytest.raises(ValueError, match=r"step 1: 1 micro-batch\(es\), optim.accumulate 2"):
        runner([random_batch(graph)], 1, 1e-4)
