"""The memory estimate a run is checked against before it starts: a floor of what the backward
really keeps (measured by hooking every tensor autograd saves), not far below it, and a run that
cannot fit refused at once, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtv.graph import TaskGraph, plan_graph
from mtv.train import Trainer, TrainingError
from mtv.train.budget import activation_estimate
from tests.helpers import ALL_TASKS, random_batch, smoke, tiny_spec


def saved_bytes(graph: TaskGraph, batch) -> int:
    """Bytes of the distinct storages autograd saves for the backward of one step."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        graph.step(batch, 0)
    return sum(storages.values())


@pytest.mark.parametrize("tasks", [["vl"], ALL_TASKS])
def test_the_estimate_is_a_floor_of_what_the_backward_keeps(tasks: list[str]) -> None:
    torch.manual_seed(0)
    data = {"batch_size": 16, "views": {"local_size": 16}, "labels": {"kinds": ["boxes", "depth"]}}
    spec = tiny_spec(tasks, data=data)
    graph = TaskGraph(spec)
    measured = saved_bytes(graph, random_batch(graph, batch_size=16))
    estimate, detail = activation_estimate(spec, plan_graph(spec), value_bytes=4)
    assert "image tokens" in detail
    # A floor (heads, losses and the patch embedding are not counted), but not a wild one.
    assert estimate <= measured <= 2 * estimate, (estimate, measured)


def test_a_run_that_cannot_fit_is_refused_before_it_writes_anything(
    corpus: str, tmp_path: Path
) -> None:
    """`image_size 4096` trained (or hung) for an hour; now it is one error with the numbers."""
    spec = smoke(corpus, "data.views.global_size=4096", "model.encoder.image_size=4096")
    with pytest.raises(TrainingError, match=r"cannot fit: its activations alone need at least"):
        Trainer(spec, tmp_path / "run", report=lambda _: None)
    assert not (tmp_path / "run").exists()
