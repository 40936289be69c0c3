"""`runtime.precision: auto`: bf16 where the device computes it natively, fp32 elsewhere; the run
says what it resolved (start line, environment.json) and warns of emulated bf16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.train import precision as precision_module
from mtv.train.precision import resolve_precision

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
CPU = torch.device("cpu")


def _cpu_with(monkeypatch: pytest.MonkeyPatch, *flags: str) -> None:
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset(flags))


def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_with(monkeypatch, "avx2", "fma", "avx512f")  # AVX-512 without its BF16 extension
    resolved = resolve_precision("auto", CPU)
    assert resolved.name == "fp32" and not resolved.native_bf16
    assert resolved.warning is None
    assert "no native bf16" in resolved.reason


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    _cpu_with(monkeypatch, "avx2", flag)
    assert resolve_precision("auto", CPU).name == "bf16"


def test_auto_is_bf16_on_cuda_with_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_with(monkeypatch)  # the host CPU must not matter for a CUDA device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", torch.device("cuda", 0)).name == "bf16"
    # A GPU without bf16 (before Ampere) computes in fp32.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert resolve_precision("auto", torch.device("cuda", 0)).name == "fp32"


def test_explicit_choices_are_kept_and_emulated_bf16_is_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cpu_with(monkeypatch, "avx2")
    emulated = resolve_precision("bf16", CPU)
    assert emulated.name == "bf16"
    assert emulated.warning is not None and "slower per step than fp32" in emulated.warning
    assert resolve_precision("fp32", CPU).name == "fp32"
    _cpu_with(monkeypatch, "avx512_bf16")
    assert resolve_precision("bf16", CPU).warning is None
    assert resolve_precision("fp32", CPU).name == "fp32"  # asked for, so kept
    with pytest.raises(ValueError, match=r"runtime\.precision"):
        resolve_precision("fp16", CPU)


def test_autocast_follows_the_resolved_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    _cpu_with(monkeypatch)
    with resolve_precision("auto", CPU).autocast(CPU):
        assert layer(x).dtype == torch.float32
    _cpu_with(monkeypatch, "amx_bf16")
    with resolve_precision("auto", CPU).autocast(CPU):
        assert layer(x).dtype == torch.bfloat16


def test_mtv_run_prints_and_records_the_resolved_precision(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cpu_with(monkeypatch, "avx2")
    runner = CliRunner()
    sets = [f"data.source.root={corpus}", "data.loader.workers=0", "schedule.steps=1"]
    args = ["run", str(SMOKE), *(x for s in sets for x in ("--set", s))]
    auto = runner.invoke(app, [*args, "--set", "runtime.precision=auto", "--out", f"{tmp_path}/a"])
    assert auto.exit_code == 0, auto.output
    assert "precision fp32 (auto: cpu with no native bf16)" in auto.output
    recorded = json.loads((tmp_path / "a" / "environment.json").read_text())["precision"]
    assert recorded == {"resolved": "fp32", "requested": "auto", "native_bf16": False}
    forced_args = [*args, "--set", "runtime.precision=bf16", "--out", f"{tmp_path}/b"]
    forced = runner.invoke(app, forced_args)
    assert forced.exit_code == 0, forced.output
    assert "precision bf16 (as the spec asks" in forced.output
    assert "warning: runtime.precision: bf16 on cpu, which has no native bf16" in forced.output
