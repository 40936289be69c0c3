"""The run's own depth head, zero-shot (nothing for a run without one).

- mini: AbsRel and delta1 after per-image least-squares scale and shift in disparity, depth up
  to `MAX_PROBE_DEPTH`; trivial: a constant disparity map;
- nyuv2: the same on the test frames, depth capped at NYUv2's 10 m;
- source: agreement with the label store's pseudo-disparity (`eval.labels`) over each image's
  valid pixels: the rank correlation (scale-free; a constant map scores 0) and the mean absolute
  error after least-squares scale and shift (trivial: a constant map, the maps' spread).
"""

from __future__ import annotations

import numpy as np
import torch

from mtv.eval.contract import Evaluator, register_evaluator
from mtv.eval.formats import DepthSet, TrainTest
from mtv.eval.metrics import Score, Scores, fit_affine, relative_depth_errors
from mtv.eval.mini import MAX_PROBE_DEPTH, MiniData, view_depth
from mtv.eval.model import FrozenModel
from mtv.eval.source import SourceData

NYU_MAX_DEPTH = 10.0  # metres: NYUv2's evaluation cap


def aligned_depth_scores(
    disparity: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, max_depth: float
) -> Scores:
    """AbsRel and delta1 of aligned `disparity` against `depth`, each with a constant map's."""
    errors = relative_depth_errors(disparity, depth, valid, max_depth)
    constant = relative_depth_errors(torch.ones_like(disparity), depth, valid, max_depth)
    return {name: Score(value, constant[name]) for name, value in errors.items()}


@register_evaluator
class MiniRelativeDepth(Evaluator):
    name = "relative_depth"
    suites = ("mini",)

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        if not model.has_depth_head:
            return {}
        depth = torch.from_numpy(view_depth(data))
        disparity = model.disparity(data.images)
        return aligned_depth_scores(disparity, depth, torch.isfinite(depth), MAX_PROBE_DEPTH)


@register_evaluator
class NyuRelativeDepth(Evaluator):
    name = "relative_depth"
    suites = ("nyuv2",)

    def __call__(self, model: FrozenModel, data: TrainTest[DepthSet]) -> Scores:
        if not model.has_depth_head:
            return {}
        test = data.test
        keep = test.valid.reshape(len(test.depth), -1).sum(1) >= 2  # scale and shift: 2 points
        if not keep.any():
            return {}
        disparity = model.disparity(test.images[keep])
        valid = torch.from_numpy(test.valid[keep])
        depth = torch.from_numpy(test.depth[keep])
        return aligned_depth_scores(disparity, depth, valid, NYU_MAX_DEPTH)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-d tensors (ties broken by position)."""
    ranks_a, ranks_b = a.argsort().argsort().float(), b.argsort().argsort().float()
    ranks_a, ranks_b = ranks_a - ranks_a.mean(), ranks_b - ranks_b.mean()
    denominator = (ranks_a.norm() * ranks_b.norm()).clamp(min=1e-12)
    return float((ranks_a * ranks_b).sum() / denominator)


@register_evaluator
class SourceRelativeDepth(Evaluator):
    name = "relative_depth"
    suites = ("source",)

    def __call__(self, model: FrozenModel, data: SourceData) -> Scores:
        if not model.has_depth_head or data.depth is None or data.depth_valid is None:
            return {}
        prediction = model.disparity(data.images)
        correlations, errors, constant = [], [], []
        targets, masks = torch.from_numpy(data.depth), torch.from_numpy(data.depth_valid)
        aligned = fit_affine(prediction, targets, masks)
        for pred, fitted, target, mask in zip(prediction, aligned, targets, masks, strict=True):
            if mask.sum() < 2:
                continue
            t = target[mask].double()
            correlations.append(spearman(pred[mask].double(), t))
            errors.append(float((fitted[mask].double() - t).abs().mean()))
            constant.append(float((t - t.mean()).abs().mean()))
        return {
            "rank_corr": Score(float(np.mean(correlations)), 0.0),
            "aligned_mae": Score(float(np.mean(errors)), float(np.mean(constant))),
        }
