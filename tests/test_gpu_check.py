"""benchmarks/gpu_check.sh, the prepared GPU check, on the CPU at tiny sizes: the same parts and
code paths (task-set steps and utilisation, the peer rows, a torchrun training run, the host-read
test), so a session lent a GPU spends its minutes measuring."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

SCRIPT = str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh")


def test_the_gpu_check_runs_every_part_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = subprocess.run(
        ["bash", SCRIPT, "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ | {"PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = (out / "summary.md").read_text()
    for part in ("step", "compile", "peer", "gloo", "syncs"):
        assert f"| {part} | ok |" in summary, summary
    compiled = pl.read_parquet(out / "compile.parquet")
    assert "full-set step, compiled" in compiled["measure"].to_list()  # it traced, and ran
    steps = pl.read_parquet(out / "step.parquet")
    assert "FAILED" not in steps["measure"].to_list()
    assert steps.filter(pl.col("part") == "2 utilisation").height > 0
    peer = pl.read_parquet(out / "peer.parquet")
    assert peer.height > 0 and "FAILED" not in peer["measure"].to_list()


def test_the_gpu_check_refuses_cuda_without_a_gpu_and_unknown_arguments(tmp_path: Path) -> None:
    env = os.environ | {"PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    no_gpu = subprocess.run(
        ["bash", SCRIPT, "--out", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert no_gpu.returncode == 2 and "no CUDA device" in no_gpu.stderr
    unknown = subprocess.run(["bash", SCRIPT, "--fast"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "unknown argument --fast" in unknown.stderr
