"""A linear probe of patch tokens -> semantic class, fitted on one split and scored on another
by mIoU per pixel (`segmentation_probe_scores`; the ignore label left out). Trivial: the most
frequent class everywhere.

- mini: sky, floor and the 7 shapes; first half of the held-out views fits, second scores;
- ade20k: ADEChallengeData2016's training split fits, validation scores.
"""

from __future__ import annotations

import numpy as np

from mtv.eval.contract import Evaluator, image_features, register_evaluator
from mtv.eval.formats import SegmentationSet, TrainTest
from mtv.eval.metrics import Scores
from mtv.eval.mini import MiniData, view_halves
from mtv.eval.model import FrozenModel
from mtv.eval.probes import segmentation_probe_scores
from mtv.world.render import CLASS_NAMES


@register_evaluator
class MiniSegmentation(Evaluator):
    name = "segmentation"
    suites = ("mini",)
    version = 2  # probes trained with a decaying learning rate

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        semantic = np.stack([v.semantic for v in data.views]).astype(np.int64)
        train, test = view_halves(len(semantic))
        patches = image_features(model, data.images).patches
        return segmentation_probe_scores(
            patches[train], semantic[train], patches[test], semantic[test], len(CLASS_NAMES)
        )


@register_evaluator
class Ade20kSegmentation(Evaluator):
    name = "segmentation"
    suites = ("ade20k",)
    version = 2  # probes trained with a decaying learning rate

    def __call__(self, model: FrozenModel, data: TrainTest[SegmentationSet]) -> Scores:
        train, test = data.train, data.test
        return segmentation_probe_scores(
            image_features(model, train.images).patches,
            train.masks,
            image_features(model, test.images).patches,
            test.masks,
            train.n_classes,
            train.ignore_index,
        )
