"""No host reads outside log steps, checked at the dispatcher.

`host_reads_refused` runs a TorchDispatchMode that sees every aten op called from Python (or from
a composite op's decomposition) and refuses the ones that make the host wait for the device:
- a tensor read as a number (`aten._local_scalar_dense`: `item`, `float()`, `bool()`, `if t:`,
  and a 0-d tensor handed to an op's Scalar argument, which the argument parser converts);
- any op whose output is data-dependent (`equal`, `allclose`: tag `data_dependent_output`) or
  has a data-dependent shape (`nonzero`, boolean indexing: tag `dynamic_output_shape`), and any
  op that returns a Python number;
- a copy to the CPU from another device (`aten._to_copy` to the CPU, `aten.copy_` into a CPU
  tensor).

What it cannot see: ops that a backend kernel calls inside itself (below the dispatcher's Python
key), the DDP reducer's collectives, and driver-level synchronisations. On a CPU-only machine a
device-to-host copy does not exist (`.cpu()` of a CPU tensor dispatches nothing), and `tolist` /
`numpy` of a CPU tensor read its memory without any op: those two are refused by patching them in
Python as well. On CUDA the same test also runs under `torch.cuda.set_sync_debug_mode("error")`,
which the CUDA runtime's own synchronisations (blocking copies, stream syncs) cannot escape.
"""

from __future__ import annotations

import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from mtv.graph import TaskGraph
from mtv.graph.teacher import ema_update
from mtv.train import Trainer
from mtv.train.step import TrainStep
from tests.helpers import join_local_ranks, random_batch, smoke, tiny_spec

aten = torch.ops.aten
SCALAR_READS = {aten._local_scalar_dense.default, aten.item.default}
# Ops taking indices whose shape is data-dependent only for a boolean mask (an integer index
# gives the index's shape): the mask's nonzero() is a host read on an accelerator.
INDEXING = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
PYTHON_READS = ("tolist", "numpy")  # of a CPU tensor: no op is dispatched
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# The task sets of the ablation ladder: each adds what its teacher or labels need.
TASK_SETS = {
    "vl": "[vl]",
    "ssl": "[vl, distill, masked, koleo]",
    "ground": "[vl, distill, masked, koleo, ground]",
    "depth": "[vl, distill, masked, koleo, ground, depth]",
}


def _is_cpu(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "cpu"


def _data_dependent(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the op's output, or its shape, depends on the values of its inputs."""
    if func in INDEXING:
        masks = (torch.bool, torch.uint8)
        return any(isinstance(i, torch.Tensor) and i.dtype in masks for i in args[1] or ())
    if func is aten.one_hot.default:  # data-dependent only without num_classes
        return (args[1] if len(args) > 1 else kwargs.get("num_classes", -1)) < 0
    if func is aten.repeat_interleave.Tensor:  # without output_size
        return kwargs.get("output_size") is None
    tags = func.tags
    return torch.Tag.data_dependent_output in tags or torch.Tag.dynamic_output_shape in tags


def _to_host(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the op copies a non-CPU tensor into CPU memory."""
    if func is aten._to_copy.default:
        device = kwargs.get("device")
        return device is not None and torch.device(device).type == "cpu" and not _is_cpu(args[0])
    if func is aten.copy_.default:
        return _is_cpu(args[0]) and isinstance(args[1], torch.Tensor) and not _is_cpu(args[1])
    return False


class HostReads(TorchDispatchMode):
    """Records (in `seen`) and refuses every host read that reaches the dispatcher."""

    def __init__(self, seen: list[str]):
        super().__init__()
        self.seen = seen

    def _refuse(self, what: str) -> None:
        self.seen.append(what)
        raise AssertionError(f"a host read ({what}) outside a log step")

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in SCALAR_READS or _data_dependent(func, args, kwargs):
            self._refuse(str(func))
        if _to_host(func, args, kwargs):
            self._refuse(f"{func}: device to host")
        out = func(*args, **kwargs)
        if isinstance(out, bool | int | float | complex):
            self._refuse(f"{func} returned a Python {type(out).__name__}")
        return out


@contextmanager
def host_reads_refused(seen: list[str]) -> Iterator[None]:
    """Host reads raise AssertionError (and are recorded in `seen`) while active: at the
    dispatcher, through `tolist` / `numpy`, and on CUDA at the runtime (sync debug mode)."""
    originals = {name: getattr(torch.Tensor, name) for name in PYTHON_READS}

    def refusing(name: str) -> Callable[..., Any]:
        def refuse(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            seen.append(f"Tensor.{name}")
            raise AssertionError(f"a host read (Tensor.{name}) outside a log step")

        return refuse

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    mode = torch.cuda.get_sync_debug_mode() if cuda else 0
    try:
        for name in PYTHON_READS:
            setattr(torch.Tensor, name, refusing(name))
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        with HostReads(seen):
            yield
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(mode)
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def old_ema_update(teacher: list[torch.Tensor], student: list[torch.Tensor], weight: Any) -> None:
    """The EMA update as it was: a 0-d tensor weight into the Scalar overload."""
    torch._foreach_lerp_(teacher, [s.detach() for s in student], weight)


# ---------------------------------------------------------------------- the guard itself
READS: dict[str, tuple[Callable[[torch.Tensor], Any], str]] = {
    "item": (lambda x: x.sum().item(), "_local_scalar_dense"),
    "float": (lambda x: float(x[0]), "_local_scalar_dense"),
    "bool": (lambda x: bool((x > 0).all()), "_local_scalar_dense"),
    "equal": (lambda x: torch.equal(x, x), "equal"),
    "nonzero": (lambda x: x.nonzero(), "nonzero"),
    "mask index": (lambda x: x[x > 0], "index.Tensor"),
    "mask put": (lambda x: x.index_put_((x > 0,), torch.zeros(())), "index_put_"),
    "tolist": (lambda x: x.tolist(), "Tensor.tolist"),
    "numpy": (lambda x: x.numpy(), "Tensor.numpy"),
    "old ema_update": (lambda x: old_ema_update([x.clone()], [x], x[0]), "_local_scalar_dense"),
    # The device-to-host rules, on the meta device (refused before the op would run).
    "to cpu": (lambda x: torch.empty(3, device="meta").cpu(), "device to host"),
    "copy_ to cpu": (lambda x: x.copy_(torch.empty(3, device="meta")), "device to host"),
}


@pytest.mark.parametrize("name", list(READS))
def test_the_guard_refuses_host_reads(name: str) -> None:
    read, what = READS[name]
    seen: list[str] = []
    with pytest.raises(AssertionError, match="a host read"), host_reads_refused(seen):
        read(torch.ones(3))
    assert len(seen) == 1 and what in seen[0], seen
    assert torch.ones(3).tolist() == [1.0, 1.0, 1.0]  # restored


def test_the_guard_lets_device_work_through() -> None:
    """What the step does instead: the EMA with a tensor weight, the step as a fill, a copy to
    the device (host to device: not a read), metadata."""
    seen: list[str] = []
    teacher, student = [torch.zeros(3), torch.zeros(2, 2)], [torch.ones(3), torch.ones(2, 2)]
    weight, skipped = torch.tensor(0.25), torch.tensor(0.0)
    with host_reads_refused(seen):
        ema_update(teacher, student, (1.0 - skipped) * weight)
        torch.full((), 7, dtype=torch.float32).add_(1)
        torch.ones(3).to("meta")
        assert torch.ones(2, 3).shape[1] == 3
    assert seen == []
    assert torch.equal(teacher[0], torch.full((3,), 0.25))


# ---------------------------------------------------------------------- the fixes
@pytest.mark.parametrize("momentum", [0.994, 0.9, 0.3])
def test_ema_update_with_a_device_weight_is_the_plain_formula(momentum: float) -> None:
    """teacher <- m teacher + (1 - m) student, with the weight (1 - skipped)(1 - m) a 0-d
    tensor as the step hands it: the same values as the plain formula (to float rounding) and
    bit for bit those of the old number-weighted update; a skipped step leaves the teacher."""
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(["distill", "masked"]))
    with torch.no_grad():  # a student that has moved away from its teacher
        for p in graph.student.parameters():
            p.add_(torch.randn_like(p))
    before = [t.clone() for t in graph._ema_teacher]
    student = [s.detach().clone() for s in graph._ema_student]
    assert len(before) > 10

    graph.after_optimizer_step(0, teacher_momentum=momentum, skipped=torch.tensor(1.0))
    for got, want in zip(graph._ema_teacher, before, strict=True):
        assert torch.equal(got, want)  # skipped: the weight is 0, the teacher stays exactly

    graph.after_optimizer_step(0, teacher_momentum=momentum, skipped=torch.tensor(0.0))
    old = [t.clone() for t in before]
    old_ema_update(old, student, 1.0 - momentum)
    for got, t, s, o in zip(graph._ema_teacher, before, student, old, strict=True):
        torch.testing.assert_close(got, momentum * t + (1.0 - momentum) * s)
        assert torch.equal(got, o)


def test_the_step_counter_lives_on_the_device() -> None:
    """`TrainStep` hands the graph one device tensor holding the optimiser step: advanced on the
    device after each step, set from the host number where the caller jumps, and in a fresh
    runner (a resumed run) from the step it resumes at. The teacher temperature's warm-up (30
    of 100 steps here) follows it as it follows a plain number."""
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(["distill"]))
    batch = random_batch(graph)
    with torch.no_grad():
        want = {s: graph.step(batch, s).logged["distill/teacher_temp"] for s in (0, 1, 2, 7, 8)}
    assert len({float(t) for t in want.values()}) == 5  # the schedule does move
    seen: list[torch.Tensor] = []
    step = graph.step

    numbers: list[float] = []

    def recorded(batch: Any, step_t: Any = 0) -> Any:
        seen.append(step_t)
        numbers.append(float(step_t))  # the number the forward saw (this test may read it)
        return step(batch, step_t)

    graph.step = recorded  # type: ignore[method-assign]
    runner = TrainStep(graph.spec, graph, torch.device("cpu"), world=1)

    def temperature(out: Any) -> float:
        return out.vector[out.names.index("distill/teacher_temp")].item()

    for number in (0, 1, 2, 7, 8):  # 2 -> 7: a jump
        out = runner([batch], number, 1e-4)
        assert isinstance(seen[-1], torch.Tensor) and numbers[-1] == number
        assert temperature(out) == want[number].item()
    assert all(t is seen[0] for t in seen)  # one tensor, advanced in place
    assert float(seen[0]) == 9

    resumed = TrainStep(graph.spec, graph, torch.device("cpu"), world=1)
    out = resumed([batch], 7, 1e-4)
    assert numbers[-1] == 7
    assert temperature(out) == want[7].item()


# ---------------------------------------------------------------------- the training step
class Prefetched:
    """Batches drawn before the guarded steps, offered as the trainer reads its stream."""

    def __init__(self, batches: list[Any]):
        self._batches = iter(batches)

    def __iter__(self) -> Prefetched:
        return self

    def __next__(self) -> Any:
        return next(self._batches)

    def close(self) -> None:
        """Nothing to stop: the batches were drawn before."""


def guarded_run(trainer: Trainer, steps: int, log_every: int) -> tuple[list[str], list[int]]:
    """Run `trainer` with host reads refused in every step but the log steps; (what was
    refused, the steps after which rows were read)."""
    # The loader's host work (decode, crops, collate) is done before: it is not the step's.
    batches = [next(trainer.stream) for _ in range(steps * trainer.spec.optim.accumulate)]
    trainer.stream.close()  # its workers are done: the steps read the batches drawn here
    trainer.stream = Prefetched(batches)  # type: ignore[assignment]
    trainer.save = lambda: None  # type: ignore[method-assign]  # no loader position to save
    seen: list[str] = []
    read_at: list[int] = []
    step, read_rows = trainer.train_step, trainer.read_rows

    def guarded_step() -> None:
        log_step = (trainer.step + 1) % log_every == 0
        with host_reads_refused(seen) if not log_step else nullcontext():
            step()

    def recorded_read() -> list[dict[str, Any]]:
        read_at.append(trainer.step)
        return read_rows()

    trainer.train_step = guarded_step  # type: ignore[method-assign]
    trainer.read_rows = recorded_read  # type: ignore[method-assign]
    trainer.run()
    return seen, read_at


def guarded_spec(corpus: str, tasks: str, accumulate: int, device: str = "cpu") -> Any:
    return smoke(
        corpus,
        f"tasks={tasks}",
        f"optim.accumulate={accumulate}",
        f"runtime.device={device}",
        "schedule.steps=6",
        "output.log_every=3",
        "output.checkpoint_every=6",
        "runtime.nonfinite_patience=6",
    )


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)], ids=["cpu", "cuda"])
@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("tasks", list(TASK_SETS))
def test_steps_outside_log_steps_read_nothing_from_the_device(
    corpus: str, tmp_path: Path, tasks: str, accumulate: int, device: str
) -> None:
    """Steps 1, 2, 4 and 5 run with host reads refused: the losses, the non-finite guard, the
    optimiser, the EMA teacher, the step counter and the metrics stay on the device. The rows
    still come out whole at the log steps (3 and 6), one per step."""
    spec = guarded_spec(corpus, TASK_SETS[tasks], accumulate, device)
    trainer = Trainer(spec, tmp_path / "run", report=lambda m: None)
    seen, read_at = guarded_run(trainer, steps=6, log_every=3)
    assert seen == []
    assert read_at == [3, 6]
    rows = trainer.metrics.rows
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["skipped"] is False and r["loss"] > 0 and r["grad_norm"] > 0 for r in rows)
    assert len({r["loss"] for r in rows}) == 6  # each row its own step's values


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_worker(rank: int, world: int, corpus: str, run_dir: str, port: int, out: str) -> None:
    """One of `world` gloo ranks of a guarded run (spawned: a top-level function)."""
    join_local_ranks(rank, world, port)
    result: dict[str, Any] = {}
    try:
        spec = guarded_spec(corpus, TASK_SETS["depth"], accumulate=2)
        trainer = Trainer(spec, Path(run_dir), report=lambda m: None)
        result["seen"], result["read_at"] = guarded_run(trainer, steps=6, log_every=3)
        result["rows"] = [row["step"] for row in trainer.metrics.rows]
        result["world"] = trainer.world
    except BaseException:
        result["error"] = f"rank {rank}:\n{traceback.format_exc()}"
    torch.save(result, Path(out) / f"rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(1 if "error" in result else 0)


def test_steps_on_two_ranks_read_nothing_from_the_device(corpus: str, tmp_path: Path) -> None:
    """The same on 2 gloo ranks (DDP, the all-gathers, the skip flags' all-reduce), every task,
    2 micro-batches per step."""
    Trainer(smoke(corpus, "schedule.steps=1"), tmp_path / "prep", report=lambda m: None)  # labels
    context = mp.get_context("spawn")
    args = (corpus, str(tmp_path / "two"), _free_port(), str(tmp_path))
    procs = [context.Process(target=rank_worker, args=(r, 2, *args)) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 300
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    results = [
        torch.load(path, weights_only=False) if (path := tmp_path / f"rank{r}.pt").exists() else {}
        for r in range(2)
    ]
    errors = [str(r.get("error", "")) for r in results if "error" in r or not r]
    assert not errors and all(p.exitcode == 0 for p in procs), "\n".join(errors) or results
    for result in results:
        assert result["seen"] == []
        assert result["read_at"] == [3, 6]
        assert result["rows"] == list(range(1, 7))
        assert result["world"] == 2
