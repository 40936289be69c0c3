"""benchmarks/step_ab.py, the paired A/B of two trees' training steps: its verdict follows the
paired interval, and it runs end to end on two folders at a tiny size."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "step_ab.py"


def _module():  # the benchmarks folder is not a package
    spec = importlib.util.spec_from_file_location("step_ab", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_ab"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_verdict_follows_the_paired_ratios_not_the_drift() -> None:
    ab = _module()
    # The machine slows down fourfold across the rounds; the new tree is always 10% slower than
    # the old one in the same round. Unpaired medians would drown that in the drift.
    drift = [0.1 * (1 + 3 * r / 19) for r in range(20)]
    slower = ab.Comparison("vl", old=drift, new=[1.1 * t for t in drift])
    low, high = slower.interval()
    assert 1.09 < low <= high < 1.11
    assert slower.verdict().startswith("new slower")
    faster = ab.Comparison("vl", old=drift, new=[0.8 * t for t in drift])
    assert faster.verdict().startswith("new faster")
    # Noise either way around 1: nothing is claimed.
    noisy = ab.Comparison(
        "vl", old=drift, new=[t * (1.05 if r % 2 else 0.95) for r, t in enumerate(drift)]
    )
    assert noisy.verdict().startswith("no change shown")


def test_two_trees_are_measured_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "ab.md"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(ROOT),
            str(ROOT),
            "--model",
            "tiny",
            "--batch",
            "2",
            "--rounds",
            "2",
            "--steps",
            "1",
            "--pause",
            "0",
            "--task-sets",
            "vl",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert "| vl |" in table and "| 2 |" in table  # one task set, two paired rounds
    assert "round 2/2" in done.stderr


def test_a_tree_that_is_not_there_is_one_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "no-such-revision", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "no-such-revision" in done.stderr and "Traceback" not in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(empty), str(ROOT)], capture_output=True, text=True
    )
    assert "not an mtv tree" in done.stderr and "Traceback" not in done.stderr
