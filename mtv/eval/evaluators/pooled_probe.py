"""A linear probe of the pooled embedding on the mini-world's single-object scenes (fitted on
the first half, scored on the second): shape and colour accuracy. Global semantics that respond
even where the text tower has not learned the words yet. Trivial: the majority class."""

from __future__ import annotations

from mtv.eval.contract import Evaluator, image_features, register_evaluator
from mtv.eval.metrics import Scores
from mtv.eval.mini import COLOR_NAMES, MiniData, halves
from mtv.eval.model import FrozenModel
from mtv.eval.probes import classifier_probe_accuracy
from mtv.world.geometry import SHAPE_NAMES


@register_evaluator
class PooledProbe(Evaluator):
    name = "pooled_probe"
    suites = ("mini",)
    version = 2  # probes trained with a decaying learning rate

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        train, test = halves(len(data.singles))
        pooled = image_features(model, data.single_images).pooled
        out: Scores = {}
        for attribute, count in (("shape", len(SHAPE_NAMES)), ("color", len(COLOR_NAMES))):
            labels = data.single_labels(attribute)
            out[f"{attribute}_acc"] = classifier_probe_accuracy(
                pooled[train], labels[train], pooled[test], labels[test], count
            )
        return out
