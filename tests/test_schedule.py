"""The learning-rate schedules, against their definitions written out step by step."""

from __future__ import annotations

import math

import pytest

from mtv.specs.experiment import ScheduleSpec
from mtv.train.schedule import lr_factor


def test_warmup_stable_decay_is_flat_then_linear_to_its_floor() -> None:
    spec = ScheduleSpec(steps=100, warmup_steps=10, decay="wsd", decay_fraction=0.2)
    factors = [lr_factor(spec, step) for step in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # warm-up
    assert factors[10:80] == [1.0] * 70  # stable until the last 20 steps
    # then linear: (steps - 1 - step) / 20, reaching 0 at the last step
    assert factors[80:] == pytest.approx([(99 - s) / 20 for s in range(80, 100)])
    assert factors[-1] == 0.0
    floored = ScheduleSpec(steps=100, warmup_steps=0, decay="wsd", final_lr_fraction=0.1)
    assert lr_factor(floored, 99) == pytest.approx(0.1)
    assert lr_factor(floored, 89) == pytest.approx(0.1 + 0.9 * 10 / 20)


def test_cosine_and_linear_decay_after_warmup() -> None:
    cosine = ScheduleSpec(steps=110, warmup_steps=10, decay="cosine")
    for step in (10, 35, 60, 109):
        progress = (step - 10) / 100
        expected = 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_factor(cosine, step) == pytest.approx(expected)
    linear = ScheduleSpec(steps=110, warmup_steps=10, decay="linear", final_lr_fraction=0.2)
    assert lr_factor(linear, 60) == pytest.approx(0.2 + 0.8 * 0.5)
