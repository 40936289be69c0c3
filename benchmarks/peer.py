"""mtv's encoder against its reference implementation, transformers' `SiglipVisionModel` (the
class mtv's published weights load into), at the same shape: forward + backward, eager and
compiled, side by side in one process.

    python benchmarks/peer.py                       # CPU: tiny at 32 px, S/16 at 96, B/16 at 224
    python benchmarks/peer.py --quick               # tiny and S/16, eager; tiny compiled
    python benchmarks/peer.py --shapes B16-224 --modes compiled --append   # one more piece

The HF model is built from `siglip_config(encoder)` and loaded with `siglip_tensors(encoder)`
(mtv.models.hf_siglip, the export path), so the two are first shown to be one model: equal
parameter counts, and pooled outputs and input gradients equal in fp32 within TOLERANCE. A step
is `pooled.sum().backward()` on one fixed batch (bf16 autocast on CUDA, as in training). Writes
results/peer.md and .parquet (peer_gpu.* on CUDA); `--append` keeps the rows of the shapes and
modes this run does not measure, so a slow machine can measure them in pieces.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from argparse import RawTextHelpFormatter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import Tensor, nn
from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
from transformers import SiglipVisionConfig, SiglipVisionModel

from mtv.models.hf_siglip import siglip_config, siglip_tensors
from mtv.models.vit import VisionTransformer
from mtv.specs.model import EncoderSpec, model_presets

from common import ROOT, Row, Table, autocast, interleaved, median, pick_device, precision, section

# fp32, as torch.allclose: the two sum in different orders (fused qkv, SDPA vs MHA pooling).
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
MODES = ("eager", "compiled")
COMMAND = " ".join(["python benchmarks/peer.py", *sys.argv[1:]])
MEASURES = ("fwd+bwd, mtv", "fwd+bwd, HF", "mtv / HF", "compile time, mtv", "compile time, HF")


@dataclass(frozen=True)
class Shape:
    preset: str  # a name in mtv.specs.model's presets
    image_size: int
    batch: int
    inner: int = 1  # steps per timing: lifts a tiny step above timer and scheduler noise

    def spec(self) -> EncoderSpec:
        preset = model_presets()[self.preset]["encoder"]
        return EncoderSpec(**(preset | {"image_size": self.image_size}))

    def describe(self) -> str:
        s = self.spec()
        return (
            f"{self.preset} (width {s.width}, depth {s.depth}, heads {s.heads}, patch "
            f"{s.patch_size}) at {self.image_size} px = {s.grid**2} tokens, batch {self.batch}"
        )


SHAPES = {
    "tiny-32": Shape("tiny", 32, 32, inner=10),
    "S16-96": Shape("S/16", 96, 8),
    "B16-224": Shape("B/16", 224, 2),
    "B16-224-b64": Shape("B/16", 224, 64),  # the paper's GPU setting
}
CPU_SHAPES, GPU_SHAPES = ("tiny-32", "S16-96", "B16-224"), ("B16-224-b64",)


def build_pair(shape: Shape) -> tuple[VisionTransformer, SiglipVisionModel]:
    """mtv's encoder (seeded) and the SiglipVisionModel that its export config and tensors make."""
    torch.manual_seed(0)
    ours = VisionTransformer(shape.spec())
    config = siglip_config(ours)
    del config["architectures"], config["model_type"]  # the class's, not constructor arguments
    # sdpa: the attention kernel mtv calls too, and transformers' default where torch has it.
    peer = SiglipVisionModel(SiglipVisionConfig(**config, attn_implementation="sdpa"))
    # The converter names tensors as inside a SiglipModel; a standalone tower has no prefix.
    tensors = {k.removeprefix("vision_model."): v for k, v in siglip_tensors(ours).items()}
    peer.load_state_dict(tensors, strict=True)  # every tensor mapped, none left over
    return ours.train(), peer.train()


def pooled(model: nn.Module, images: Tensor) -> Tensor:
    inner = getattr(model, "_orig_mod", model)  # through torch.compile's wrapper
    if isinstance(inner, VisionTransformer):
        return model(images).pooled
    return model(pixel_values=images).pooler_output


def equivalence_rows(part: str, ours: nn.Module, peer: nn.Module, images: Tensor) -> list[Row]:
    """Parameter counts, and the pooled outputs and input gradients of one fp32 pass of each."""
    counts = [sum(p.numel() for p in m.parameters()) for m in (ours, peer)]
    outs, grads = [], []
    for model in (ours, peer):
        x = images.clone().requires_grad_(True)
        out = pooled(model, x)
        out.sum().backward()
        outs.append(out.detach())
        grads.append(x.grad)
        model.zero_grad(set_to_none=True)
    tol = f"rtol {TOLERANCE['rtol']:g}, atol {TOLERANCE['atol']:g}"
    same = counts[0] == counts[1]
    rows = [Row(part, "parameters, mtv", counts[0], "", note=f"{counts[0]:,}; no mask token")]
    rows.append(Row(part, "parameters, HF", counts[1], "", "= mtv", same, f"{counts[1]:,}"))
    for name, (a, b) in (("pooled output", outs), ("input gradient", grads)):
        diff, top = (a - b).abs().max().item(), a.abs().max().item()
        note = f"fp32, {len(images)} images; largest magnitude {top:.3g}"
        close = torch.allclose(a, b, **TOLERANCE)
        rows.append(Row(part, f"{name}: max abs difference", diff, "", tol, close, note))
    return rows


def timing_rows(
    name: str, pair: tuple[nn.Module, nn.Module], images: Tensor, modes: list[str], repeats: int
) -> list[Row]:
    """Step times of both models in each mode, all configurations interleaved in one loop."""
    device, inner = images.device, SHAPES[name].inner

    def step(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            for _ in range(inner):
                model.zero_grad(set_to_none=True)
                with autocast(device):
                    out = pooled(model, images)
                out.float().sum().backward()

        return run

    fns: dict[str, Callable[[], None]] = {}
    warm: dict[str, float] = {}
    if "compiled" in modes:  # the compiler's one-time start-up (worker pool), paid by neither
        with tempfile.TemporaryDirectory() as tmp, temporary_cache_dir(tmp):
            x = torch.ones(4, requires_grad=True)
            torch.compile(lambda t: t.sin() * 2)(x).sum().backward()
    for mode in modes:
        for who, model in zip(("mtv", "HF"), pair, strict=True):
            fn = step(torch.compile(model) if mode == "compiled" else model)
            # Each model compiles into its own fresh inductor cache: cold, and sharing no kernels
            # (importing transformers' models already fixes the cache dir, so no env var here).
            with tempfile.TemporaryDirectory() as tmp, temporary_cache_dir(tmp):
                start = time.perf_counter()
                fn()
                fn()  # warm-up excluded from the timings; a recompilation would fall here too
                warm[f"{mode}, {who}"] = time.perf_counter() - start
            fns[f"{mode}, {who}"] = fn
    times = interleaved(fns, repeats, device)
    rows: list[Row] = []
    for mode in modes:
        part, (a, b) = f"{name} {mode}", (times[f"{mode}, mtv"], times[f"{mode}, HF"])
        rounds = sorted(x / y for x, y in zip(a, b, strict=True))
        # The spread of paired (same-round) ratios, and the fastest rounds' ratio, show how much
        # of a difference is the load of other work on the machine.
        spread = (
            f"per-round ratios {rounds[0]:.3f}-{rounds[-1]:.3f}, median {median(rounds):.3f}; "
            f"fastest rounds {min(a) / min(b):.3f}"
        )
        steps = f" of {inner} steps" if inner > 1 else ""
        note = f"median of {repeats} interleaved rounds{steps}; {torch.get_num_threads()} thread(s)"
        for who, t in (("mtv", a), ("HF", b)):
            rows.append(Row(part, f"fwd+bwd, {who}", 1e3 * median(t) / inner, "ms", note=note))
        rows.append(Row(part, "command", None, "", note=f"`{COMMAND}`"))
        ratio = median(a) / median(b)
        rows.append(Row(part, "mtv / HF", ratio, "x", "<= 1", ratio <= 1, spread))
        for who, t in (("mtv", a), ("HF", b)) if mode == "compiled" else ():
            # Compilation: the two warm-up calls less two steady ones.
            built = warm[f"{mode}, {who}"] - 2 * median(t)
            rows.append(Row(part, f"compile time, {who}", built, "s", note="cold inductor cache"))
    return rows


def profile(shape: Shape, rows: int = 12) -> None:
    """torch.profiler's top operators of three eager steps of each: where a slower one loses."""
    from hotspots import top_ops  # imports the trainer benchmarks: only when asked

    ours, peer = build_pair(shape)
    images = torch.randn(shape.batch, 3, shape.image_size, shape.image_size)
    for who, model in (("mtv", ours), ("HF", peer)):

        def steps(m: nn.Module = model) -> None:
            for _ in range(3):
                pooled(m, images).sum().backward()

        print(f"\n## {who}, 3 eager steps, {shape.describe()}")
        print(top_ops(steps, torch.device("cpu"), rows))


def cpu_model() -> str:  # common.machine() names the architecture only
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line]
    return names[0] if names else "unknown CPU model"


def order(row: Row) -> tuple[int, int]:
    """Shapes in SHAPES' order (GPU last), each: equivalence, eager, compiled."""
    shape, _, kind = row.part.rpartition(" ")
    kinds = ("equivalence", *MODES)
    return [*SHAPES, shape].index(shape), (*kinds, kind).index(kind)


def old_rows(path: Path, remeasured: set[str]) -> list[Row]:
    """An earlier run's rows (for --append), less the parts this run measures again."""
    import polars as pl

    rows = pl.read_parquet(path).drop("machine").to_dicts() if path.exists() else []
    return [Row(**r) for r in rows if r["part"] not in remeasured]


def summary(rows: list[Row]) -> str:
    """shape x mode: both step times, their ratio and compile times; the rows' table follows."""
    value = {(r.part, r.measure): r.value for r in rows}
    lines = ["| shape | mode | mtv ms/step | HF ms/step | mtv / HF | compile s, mtv / HF |"]
    lines.append("|---" * 6 + "|")
    for (name, shape), mode in itertools.product(SHAPES.items(), MODES):
        part = f"{name} {mode}"
        if (part, "mtv / HF") in value:
            ours, peer, ratio, c1, c2 = (value.get((part, m)) for m in MEASURES)
            built = f"{c1:.0f} / {c2:.0f}" if c1 is not None and c2 is not None else ""
            cells = (shape.describe(), mode, f"{ours:.1f}", f"{peer:.1f}", f"{ratio:.3f}", built)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=RawTextHelpFormatter)
    parser.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=None)
    parser.add_argument("--modes", nargs="*", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (7; quick 3)")
    parser.add_argument("--quick", action="store_true", help="tiny and S/16; only tiny compiled")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto: CUDA when visible")
    parser.add_argument("--append", action="store_true", help="keep other shapes' and modes' rows")
    parser.add_argument("--profile", choices=list(SHAPES), help="print top ops, measure nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        return profile(SHAPES[args.profile])
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    stem = "peer_gpu" if gpu else "peer"
    default = ("tiny-32", "S16-96") if args.quick else GPU_SHAPES if gpu else CPU_SHAPES
    names = args.shapes or default
    repeats = args.repeats or (3 if args.quick else 7)

    def modes(name: str) -> list[str]:  # --quick compiles the tiny shape only
        return ["eager"] if args.quick and name != "tiny-32" else args.modes

    measured = {f"{n} {k}" for n in names for k in ("equivalence", *modes(n))}
    table = Table()
    table.rows = old_rows(args.out / f"{stem}.parquet", measured | {"GPU"}) if args.append else []
    if not gpu:  # the figures a lent device would give: named, never a number
        note = f"{SHAPES[GPU_SHAPES[0]].describe()}, bf16: waits for a lent GPU (none this run)"
        for mode in MODES:
            table.add(Row("GPU", f"mtv / HF, {mode}", None, "x", "<= 1", None, note))
    for name in names:
        shape = SHAPES[name]
        print(f"== {name}: {shape.describe()}", flush=True)
        with section(table, f"{name} equivalence"):
            ours, peer = build_pair(shape)
            size = (shape.batch, 3, shape.image_size, shape.image_size)
            images = torch.randn(size, generator=torch.Generator().manual_seed(0))
            table.extend(equivalence_rows(f"{name} equivalence", ours, peer, images[:4]))
            pair = (ours.to(device), peer.to(device))
            table.extend(timing_rows(name, pair, images.to(device), modes(name), repeats))
    table.rows = sorted([r for r in table.rows if r.measure != "part wall time"], key=order)
    gpu_rows = "" if gpu else " GPU rows wait for a lent device: none was lent, none is measured."
    preamble = (
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, transformers {transformers.__version__}; {device.type} "
        f"{precision(device)}. mtv's `VisionTransformer` against `SiglipVisionModel` (sdpa "
        "attention) built from mtv's `siglip_config` and loaded through `siglip_tensors`. A step "
        "is forward + `pooled.sum().backward()`; times are medians of interleaved rounds, "
        "warm-up excluded, compile times apart. Each shape and mode's `command` row names the run "
        f"that measured it.{gpu_rows}\n\n{summary(table.rows)}"
    )
    table.write(args.out, stem, "mtv against transformers' SiglipVisionModel", preamble)
    print(summary(table.rows))


if __name__ == "__main__":
    main()
