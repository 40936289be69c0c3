"""The training step keeps an accelerator busy: no host reads outside log steps, one compiled graph
per pass with no breaks and no recompilation. Checked on the CPU, where the same Python runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from mtv.train import Trainer
from tests.helpers import smoke

# What makes the host wait for the device (or copies to it): Python reads of tensor values.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


@contextmanager
def host_reads_refused(seen: list[str]) -> Iterator[None]:
    """Every HOST_READS method of torch.Tensor raises (and is recorded) while active."""
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def refusing(name: str) -> Callable[..., Any]:
        def refuse(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            seen.append(name)
            raise AssertionError(f"a host read (Tensor.{name}) outside a log step")

        return refuse

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, refusing(name))
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def test_the_guard_catches_a_host_read() -> None:
    seen: list[str] = []
    with pytest.raises(AssertionError, match=r"Tensor\.item"), host_reads_refused(seen):
        torch.ones(()).item()
    with pytest.raises(AssertionError, match="__bool__"), host_reads_refused(seen):
        bool(torch.ones(()) > 0)
    assert seen == ["item", "__bool__"]
    assert torch.ones(()).item() == 1.0  # restored


def test_steps_outside_log_steps_read_nothing_from_the_device(corpus: str, tmp_path: Path) -> None:
    """Every step but the log steps (4 and 8) runs with host reads refused: the non-finite guard,
    the optimiser, the EMA teacher and the metrics all stay on the device. The rows still come
    out whole at the log steps, one per step."""
    spec = smoke(
        corpus,
        "schedule.steps=8",
        "output.log_every=4",
        "output.checkpoint_every=8",
        "runtime.nonfinite_patience=8",
    )
    trainer = Trainer(spec, tmp_path / "run", report=lambda m: None)
    # The loader's host work (decode, crops, collate) is done before: it is not the step's.
    batches = [next(trainer.stream) for _ in range(8)]
    trainer.stream = iter(batches)
    trainer.save = lambda: None  # type: ignore[method-assign]  # no loader position to save
    seen: list[str] = []
    read_at: list[int] = []
    step, read_rows = trainer.train_step, trainer.read_rows

    def guarded_step() -> None:
        log_step = (trainer.step + 1) % 4 == 0
        with host_reads_refused(seen) if not log_step else _nothing():
            step()

    def recorded_read() -> list[dict[str, Any]]:
        read_at.append(trainer.step)
        return read_rows()

    trainer.train_step = guarded_step  # type: ignore[method-assign]
    trainer.read_rows = recorded_read  # type: ignore[method-assign]
    trainer.run()
    assert seen == []
    assert read_at == [4, 8]
    rows = trainer.metrics.rows
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(r["skipped"] is False and r["loss"] > 0 and r["grad_norm"] > 0 for r in rows)
    assert len({r["loss"] for r in rows}) == 8  # each row its own step's values


@contextmanager
def _nothing() -> Iterator[None]:
    yield


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
