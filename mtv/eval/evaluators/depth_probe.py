"""The paper's depth probe (`depth_probe_scores`): the [global ; patch] token -> linear logits
over 256 depth bins spread over the training targets' range; prediction = the softmax-weighted
bin centre, trained through that prediction by the log-depth SigLoss (`DepthBinProbe`). RMSE
and AbsRel over valid test patches. Trivial: the median training depth everywhere.

- mini: per patch of depth up to `MAX_PROBE_DEPTH` (and no sky), first half of the held-out
  views fits, second scores;
- nyuv2: the labelled set's train split fits, test scores (metres).
"""

from __future__ import annotations

import numpy as np

from mtv.eval.contract import Evaluator, image_features, register_evaluator
from mtv.eval.formats import DepthSet, TrainTest
from mtv.eval.metrics import Scores
from mtv.eval.mini import MAX_PROBE_DEPTH, MiniData, view_depth, view_halves
from mtv.eval.model import Features, FrozenModel
from mtv.eval.probes import depth_probe_scores, patch_depth


@register_evaluator
class MiniDepthProbe(Evaluator):
    name = "depth_probe"
    suites = ("mini",)
    version = 2  # probes trained with a decaying learning rate

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        depth = view_depth(data)
        views = image_features(model, data.images)
        target, whole = patch_depth(depth, np.isfinite(depth), views.patches.shape[1])
        # Patches that see no sky, nearer than the cap (as NYUv2's 10 m): the floor near the
        # horizon reaches hundreds of units and would make RMSE a measure of a few patches.
        valid = whole & (target <= MAX_PROBE_DEPTH)
        train, test = view_halves(len(depth))
        return depth_probe_scores(
            Features(views.pooled[train], views.patches[train]),
            target[train],
            valid[train],
            Features(views.pooled[test], views.patches[test]),
            target[test],
            valid[test],
        )


@register_evaluator
class NyuDepthProbe(Evaluator):
    name = "depth_probe"
    suites = ("nyuv2",)
    version = 2  # probes trained with a decaying learning rate

    def __call__(self, model: FrozenModel, data: TrainTest[DepthSet]) -> Scores:
        train = image_features(model, data.train.images)
        grid = train.patches.shape[1]
        depth, valid = patch_depth(data.train.depth, data.train.valid, grid)
        target, keep = patch_depth(data.test.depth, data.test.valid, grid)
        test = image_features(model, data.test.images)
        return depth_probe_scores(train, depth, valid, test, target, keep)
