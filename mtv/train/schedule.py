"""Step-based learning-rate schedule: linear warm-up from 0, then cosine, linear, constant, or
warmup-stable-decay (constant, then a linear decay over the last `decay_fraction` of the run)."""

from __future__ import annotations

import math

from mtv.specs.experiment import ScheduleSpec


def lr_factor(schedule: ScheduleSpec, step: int) -> float:
    """Multiplier of the base learning rate for optimiser step `step` (0-based)."""
    if schedule.warmup_steps and step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.decay == "constant":
        return 1.0
    span = max(1, schedule.steps - schedule.warmup_steps)
    progress = min(1.0, (step - schedule.warmup_steps) / span)
    floor = schedule.final_lr_fraction
    if schedule.decay == "wsd":
        decay_steps = max(1, round(schedule.decay_fraction * schedule.steps))
        remaining = (schedule.steps - 1 - step) / decay_steps  # 0 at the last step
        return floor + (1 - floor) * min(1.0, max(0.0, remaining))
    if schedule.decay == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
