"""Training-step benchmarks: step time per task set relative to VL-only (the paper's Table 1
analogue) with peak memory, encoder utilisation against the machine's dense matmul rate, and
compiled against eager steps.

    python benchmarks/step.py [--model mini] [--batch 32] [--repeats 5]

Every step is the trainer's own step, built from mtv's public pieces: the `TaskGraph` and its
`TrainStep` (forward, backward, the device-side non-finite guard, clipping, AdamW, logit clamps,
EMA teacher, the step's metrics vector), on a fixed synthetic batch already on the device, so the
loader is excluded. `benchmarks/run.py` runs these with the other parts and writes the results
table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mtv.data.batch import Batch
from mtv.graph import TaskGraph, plan_graph
from mtv.specs import ExperimentSpec, load_spec
from mtv.specs.model import model_presets
from mtv.train.step import TrainStep
from tests.helpers import random_batch

from common import (
    ROOT,
    Row,
    autocast,
    compute_dtype,
    interleaved,
    median,
    pick_device,
    precision,
    synchronize,
    timed,
)
from memory import NOTE as MEMORY_NOTE
from memory import step_peak_bytes

SSL = ["distill", "masked", "koleo"]
TASK_SETS: dict[str, list[str]] = {
    "vl": ["vl"],
    "vl+ssl": ["vl", *SSL],
    "vl+ssl+ground": ["vl", *SSL, "ground"],
    "vl+ssl+ground+depth": ["vl", *SSL, "ground", "depth"],
}
FULL = "vl+ssl+ground+depth"
PAPER_RATIO = {"vl": 1.0, "vl+ssl": 1.2, "vl+ssl+ground": 1.5, FULL: 1.7}
MODELS = {"tiny": "tiny", "mini": "mini", "S16": "S/16", "B16": "B/16", "L16": "L/16"}
aten = torch.ops.aten


@dataclass(frozen=True)
class Setting:
    """What every step benchmark runs at: encoder preset, global view size, batch, device."""

    model: str  # a key of MODELS
    image_size: int | None  # None: the preset's
    batch: int
    device: torch.device

    @property
    def paper_setting(self) -> bool:
        """Whether this is the setting the GPU targets are stated for (B/16 at 224, CUDA)."""
        return self.model == "B16" and self.image() == 224 and self.device.type == "cuda"

    def image(self) -> int:
        preset = model_presets()[MODELS[self.model]]["encoder"]
        return self.image_size or preset["image_size"]

    def describe(self) -> str:
        return (
            f"{MODELS[self.model]} at {self.image()} px, batch {self.batch}, "
            f"{self.device.type} {precision(self.device)}"
        )


def bench_spec(
    setting: Setting, tasks: list[str], compile: bool = False, extra: list[str] | None = None
) -> ExperimentSpec:
    """The experiment a benchmark trains: the mini-world base for the small presets (its heads
    are scaled to them), the paper's B/16 experiment (paper heads: 32k prototypes) otherwise."""
    size = MODELS[setting.model]
    small = setting.model in ("tiny", "mini")
    patch = model_presets()[size]["encoder"]["patch_size"]
    image = setting.image()
    # Local crops keep the experiments' proportion: 32/64 on the mini-world, 96/224 as the paper.
    local = max(patch, round(image * (0.5 if small else 96 / 224) / patch) * patch)
    overrides = [
        f"model.size={size}",
        f"model.encoder.image_size={image}",
        f"data.views.global_size={image}",
        f"data.views.local_size={local}",
        f"data.batch_size={setting.batch}",
        f"tasks=[{', '.join(tasks)}]",
        f"runtime.device={setting.device.type}",
        f"runtime.precision={precision(setting.device)}",
        f"runtime.compile={'true' if compile else 'false'}",
        "runtime.compile_backend=inductor",
        *(extra or []),
    ]
    base = "base.yaml" if small else "paper_b16.yaml"
    return load_spec(ROOT / "experiments" / base, overrides)


def synthetic_batch(spec: ExperimentSpec, device: torch.device, seed: int = 0) -> Batch:
    """A batch with every view and label the plan asks for, already on the device. Region names
    repeat as on the mini-world (where about half of a batch's name slots are distinct): drawn
    from B*R/2 random names, with every padding slot holding the one empty name."""
    plan = plan_graph(spec)
    regions = plan.view_request().max_regions
    shape = SimpleNamespace(plan=plan, spec=spec)  # all random_batch reads of a graph
    batch = random_batch(shape, spec.data.batch_size, regions, seed)  # type: ignore[arg-type]
    if batch.region_names is not None and batch.box_valid is not None:
        g = torch.Generator().manual_seed(seed)
        slots, length = batch.box_valid.numel(), batch.region_names.shape[-1]
        vocabulary = torch.randint(3, spec.model.text.vocab_size, (slots // 2, length), generator=g)
        vocabulary = torch.cat([vocabulary, torch.zeros(1, length, dtype=torch.long)])  # padding
        ids = torch.randint(0, slots // 2, batch.box_valid.shape, generator=g)
        ids = torch.where(batch.box_valid, ids, slots // 2)
        batch.region_name_ids, batch.region_slot_names = ids, vocabulary[ids]
        batch = batch.share_region_names()  # as the loader's collate does
    return batch.to(device)


class BenchStep:
    """One task set's training step as the trainer runs it, on one synthetic batch: a call is
    one optimiser step (a `TrainStep` call)."""

    def __init__(self, spec: ExperimentSpec, device: torch.device):
        torch.manual_seed(spec.runtime.seed)  # same seed: same weights per spec
        self.spec, self.device = spec, device
        self.graph = TaskGraph(spec).to(device)
        if spec.runtime.compile is True:  # as the trainer compiles: each pass on its own
            backend = spec.runtime.compile_backend
            self.graph.wrap_student(lambda m: torch.compile(m, backend=backend))
            self.graph.wrap_teacher(lambda fn: torch.compile(fn, backend=backend))
        self.stepper = TrainStep(spec, self.graph, device, world=1)
        self.batch = synthetic_batch(spec, device)
        self.step = 0

    def __call__(self) -> torch.Tensor:
        values = self.stepper([self.batch], self.step, self.spec.optim.lr)
        self.step += 1
        return values.vector


Shape = torch.Size


def _cpu_sdpa(q: Shape, k: Shape, v: Shape, *args: object, **kwargs: object) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward(
    grad: Shape, q: Shape, k: Shape, v: Shape, *args: object, **kwargs: object
) -> int:
    return sdpa_backward_flop_count(grad, q, k, v)


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU flash-attention kernels, which torch's registry
    lacks (without them a CPU count would miss every attention product)."""
    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
        },
    )


def count_flops(fn: Callable[[], object]) -> int:
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------- part 1: task sets
def task_set_rows(setting: Setting, repeats: int) -> tuple[list[Row], float]:
    """Step time, step FLOPs and peak memory per task set, relative to VL-only. Returns the rows
    and the full set's median eager step time."""
    part = "1 task sets"
    steps = {n: BenchStep(bench_spec(setting, t), setting.device) for n, t in TASK_SETS.items()}
    for step in steps.values():  # warm-up: allocator, optimiser state, kernels
        for _ in range(2):
            step()
    flops = {n: count_flops(step) for n, step in steps.items()}
    peaks = {n: step_peak_bytes(step, step) / 2**20 for n, step in steps.items()}
    times = {n: median(v) for n, v in interleaved(dict(steps), repeats, setting.device).items()}
    rate = matmul_peak(setting, repeats)
    rows: list[Row] = []
    target = "<= 1.35 (CUDA, B/16)"
    for name in TASK_SETS:
        ratio = times[name] / times["vl"]
        note = f"paper {PAPER_RATIO[name]}x; median of {repeats}"
        rows.append(Row(part, f"step time, {name}", times[name], "s", note=f"median of {repeats}"))
        met = (ratio <= 1.35) if (name == FULL and setting.paper_setting) else None
        rows.append(
            Row(
                part,
                f"step time / vl, {name}",
                ratio,
                "x",
                target if name == FULL else "",
                met,
                note,
            )
        )
        rows.append(
            Row(
                part,
                f"step FLOPs / vl, {name}",
                flops[name] / flops["vl"],
                "x",
                note=f"{flops[name] / 1e9:.1f} GFLOP per step (matmul, conv, attention)",
            )
        )
        rows.append(
            Row(
                part,
                f"whole-step utilisation, {name}",
                100 * flops[name] / times[name] / rate,
                "% of matmul",
                ">= 50 (CUDA, B/16, batch 128)",
                (100 * flops[name] / times[name] / rate >= 50) if setting.paper_setting else None,
                "every pass: student, teacher, text tower, heads; forward + backward",
            )
        )
        rows.append(Row(part, f"peak memory, {name}", peaks[name], "MiB", note=MEMORY_NOTE))
        rows.append(Row(part, f"peak memory / vl, {name}", peaks[name] / peaks["vl"], "x"))
    return rows, times[FULL]


# ---------------------------------------------------------------------------- part 2: utilisation
def matmul_rate(device: torch.device, size: int) -> tuple[Callable[[], object], float]:
    """(timed function, FLOPs per call) of a square matmul in the compute dtype."""
    dtype = compute_dtype(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1  # a single CUDA matmul is too short to time alone
    return (lambda: [a @ b for _ in range(inner)]), 2.0 * size**3 * inner


def matmul_peak(setting: Setting, repeats: int) -> float:
    """The measured dense matmul rate (FLOP/s) the utilisation rows divide by."""
    size = 8192 if setting.device.type == "cuda" else 2048
    matmul, flops = matmul_rate(setting.device, size)
    matmul()
    return flops / median([timed(matmul, setting.device) for _ in range(repeats)])


def utilisation_rows(setting: Setting, repeats: int, compile: bool) -> list[Row]:
    """Encoder forward+backward FLOP/s on the global view over the dense matmul rate, measured
    side by side (eager, and compiled when asked)."""
    part = "2 utilisation"
    spec = bench_spec(setting, ["vl"])
    encoder = TaskGraph(spec).to(setting.device).student.encoder
    images = synthetic_batch(spec, setting.device).images

    def fwd_bwd(model: torch.nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        with autocast(setting.device):
            out = model(images, pool=True)
        assert out.pooled is not None
        (out.pooled.float().sum() + out.tokens.float().mean()).backward()

    size = 8192 if setting.device.type == "cuda" else 2048
    matmul, matmul_flops = matmul_rate(setting.device, size)
    fns = {"eager": lambda: fwd_bwd(encoder), "matmul": matmul}
    rows: list[Row] = []
    if compile:
        compiled = torch.compile(encoder)
        try:
            seconds = timed(lambda: fwd_bwd(compiled), setting.device)
            rows.append(Row(part, "encoder compile time", seconds, "s", note="first call"))
            fns["compiled"] = lambda: fwd_bwd(compiled)
        except Exception as err:  # compilation may be unavailable on a CPU build
            rows.append(Row(part, "encoder compile", None, "", note=f"failed: {err}"[:300]))
    for fn in fns.values():
        fn()  # warm-up
    flops = count_flops(lambda: fwd_bwd(encoder))
    times = {n: median(v) for n, v in interleaved(fns, repeats, setting.device).items()}
    peak = matmul_flops / times["matmul"]
    dtype = str(compute_dtype(setting.device)).removeprefix("torch.")
    rows.append(Row(part, f"dense matmul rate ({size}^2, {dtype})", peak / 1e12, "TFLOP/s"))
    rows.append(
        Row(part, "encoder fwd+bwd work", flops / 1e9, "GFLOP", note=f"batch {setting.batch}")
    )
    for name in [n for n in fns if n != "matmul"]:
        rate = flops / times[name]
        share = 100 * rate / peak
        met = share >= 50 if setting.paper_setting else None
        rows.append(Row(part, f"encoder fwd+bwd rate, {name}", rate / 1e12, "TFLOP/s"))
        rows.append(
            Row(
                part,
                f"encoder utilisation, {name}",
                share,
                "% of matmul",
                ">= 50 (CUDA, B/16)",
                met,
            )
        )
    return rows


# ---------------------------------------------------------------------------- part 3: compile
def compile_rows(
    setting: Setting, repeats: int, eager: BenchStep | None = None, backend: str = "inductor"
) -> list[Row]:
    """The full task set's step compiled as the trainer compiles it (`runtime.compile`: student
    and teacher pass each through torch.compile with `backend`) against the eager step, side by
    side. `backend="eager"` traces with dynamo only (no code generation): the tracing path, in
    seconds, for the CPU rehearsal of the GPU check."""
    part = "3 compile"
    eager = eager or BenchStep(bench_spec(setting, TASK_SETS[FULL]), setting.device)
    try:
        spec = bench_spec(
            setting, TASK_SETS[FULL], compile=True, extra=[f"runtime.compile_backend={backend}"]
        )
        compiled = BenchStep(spec, setting.device)
        start = time.perf_counter()
        for _ in range(2):  # the first step compiles; the second catches any recompilation
            compiled()
        synchronize(setting.device)
        warm = time.perf_counter() - start
    except Exception as err:  # e.g. no C++ compiler for inductor on a CPU build
        first = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {first[0] if first else ''}"[:300]
        return [Row(part, "compiled full-set step", None, "", note=f"compile failed: {reason}")]
    eager()
    fns = {"eager": eager, "compiled": compiled}
    times = {n: median(v) for n, v in interleaved(fns, repeats, setting.device).items()}
    return [
        Row(part, "full-set step, eager", times["eager"], "s", note=f"median of {repeats}"),
        Row(part, "full-set step, compiled", times["compiled"], "s", note=f"median of {repeats}"),
        Row(part, "compiled / eager step time", times["compiled"] / times["eager"], "x"),
        Row(
            part,
            "compilation time",
            max(0.0, warm - 2 * times["compiled"]),
            "s",
            note="first two compiled steps less two compiled step times",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=list(MODELS), default="mini")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    setting = Setting(args.model, args.image_size, args.batch, pick_device(args.device))
    print(setting.describe())
    rows, _ = task_set_rows(setting, args.repeats)
    rows += utilisation_rows(setting, args.repeats, compile=not args.no_compile)
    if not args.no_compile:
        rows += compile_rows(setting, args.repeats)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
