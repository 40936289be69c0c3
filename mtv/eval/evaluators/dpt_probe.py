"""A fresh DPT head trained on the frozen encoder's 4 tapped layers (DINOv2's DPT depth
evaluation; the linear depth probe's counterpart with spatial context): metric depth per 2 x 2
pixel block of the mini-world's held-out views up to `MAX_PROBE_DEPTH`, first half fits, second
scores; RMSE and AbsRel. Trivial: the median training depth everywhere."""

from __future__ import annotations

import numpy as np
import torch

from mtv.eval.contract import Evaluator, register_evaluator
from mtv.eval.metrics import Scores
from mtv.eval.mini import MAX_PROBE_DEPTH, MiniData, view_depth, view_halves
from mtv.eval.model import FrozenModel
from mtv.eval.probes import dpt_depth_probe_scores
from mtv.tasks.depth import default_depth_layers


def half_resolution(depth: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S, S) depth (inf for sky) -> (N, S/2, S/2) mean depth of each 2 x 2 block and
    whether the block is finite and no deeper than `MAX_PROBE_DEPTH` everywhere."""
    blocks = torch.from_numpy(depth).unflatten(1, (-1, 2)).unflatten(3, (-1, 2))
    mean = blocks.mean(dim=(2, 4))
    valid = (torch.isfinite(blocks) & (blocks <= MAX_PROBE_DEPTH)).all(4).all(2)
    return torch.where(valid, mean, 0.0), valid


@register_evaluator
class MiniDptProbe(Evaluator):
    name = "depth_dpt_probe"
    suites = ("mini",)
    version = 2  # probes trained with a decaying learning rate

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        taps = default_depth_layers(model.graph.student.encoder.spec.depth)
        maps, grid = model.layers(data.images, taps)
        # At half the image resolution (2 x 2 pixel blocks, valid where all 4 are): a quarter
        # of the decoder's work at the finest scale, which dominates the probe's cost on a CPU.
        depth, valid = half_resolution(view_depth(data))
        train, test = view_halves(len(depth))
        return dpt_depth_probe_scores(
            [m[train] for m in maps],
            depth[train],
            valid[train],
            [m[test] for m in maps],
            depth[test],
            valid[test],
            grid,
        )
