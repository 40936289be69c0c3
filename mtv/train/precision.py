"""Which precision a run computes in: `runtime.precision` resolved against the device.

`auto` (the default) picks bf16 autocast where the device computes bf16 natively (CUDA devices
that support it; CPUs with AVX512-BF16 or AMX-BF16, or Arm cores with the BF16 extension) and
fp32 elsewhere. On a CPU without those instructions, bf16 autocast is emulated: each matmul
converts to and from fp32 around an fp32 kernel, so a step is several times *slower* than in fp32
(`benchmarks/precision.py` measures it side by side; `results/precision.md`). An explicit `bf16`
there is kept, with a warning that says so.
"""

from __future__ import annotations

import platform
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

Precision = Literal["bf16", "fp32"]

# The cpuinfo flags of native bf16 arithmetic (x86: AVX512-BF16, AMX-BF16; Arm: FEAT_BF16).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# What benchmarks/precision.py measured with torch's and oneDNN's kernels limited to AVX2 (as on
# a CPU without native bf16; 2-core AMD EPYC): a training step of the mini-world protocol
# (VL and the full task set, batch 64), bf16 autocast against fp32.
EMULATED_BF16_SLOWDOWN = "9-15x"


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 and Arm spell the field differently
            flags.update(value.split())
    return frozenset(flags)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively (not by emulation through fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        if platform.system() == "Darwin" and platform.machine() == "arm64":
            return False  # torch's CPU kernels on Apple silicon take the fp32 path
        return bool(cpu_flags() & BF16_CPU_FLAGS)
    return False


@dataclass(frozen=True)
class ResolvedPrecision:
    name: Precision
    requested: str  # what the spec asked for: auto, bf16 or fp32
    native_bf16: bool  # whether the device computes bf16 natively
    device: str

    @property
    def reason(self) -> str:
        """Why this precision, in words for the run's start line."""
        support = "native bf16" if self.native_bf16 else "no native bf16"
        if self.requested == "auto":
            return f"auto: {self.device} with {support}"
        return f"as the spec asks; {self.device} with {support}"

    @property
    def warning(self) -> str | None:
        """A warning for bf16 asked of a device that only emulates it, else None."""
        if self.name != "bf16" or self.native_bf16:
            return None
        return (
            f"runtime.precision: bf16 on {self.device}, which has no native bf16 (no "
            "AVX512-BF16/AMX): autocast emulates it through fp32, measured "
            f"{EMULATED_BF16_SLOWDOWN} slower per step than fp32 "
            "(benchmarks/results/precision.md); `auto` or `fp32` avoids it"
        )

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """The autocast context of a forward pass at this precision."""
        if self.name == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def as_dict(self) -> dict[str, Any]:
        """What `environment.json` records."""
        return {"resolved": self.name, "requested": self.requested, "native_bf16": self.native_bf16}


def resolve_precision(requested: str, device: torch.device) -> ResolvedPrecision:
    """`runtime.precision` (auto, bf16 or fp32) on `device`: auto becomes bf16 where the device
    computes it natively and fp32 elsewhere; an explicit choice is kept."""
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"runtime.precision: {requested!r} is not one of auto, bf16, fp32")
    native = native_bf16(device)
    name: Precision
    if requested == "auto":
        name = "bf16" if native else "fp32"
    else:
        name = "bf16" if requested == "bf16" else "fp32"
    return ResolvedPrecision(name, requested, native, device.type)
