"""Zero-shot classification: each image is given the class whose prompt-averaged text embedding
is nearest (cosine) to its pooled embedding (`class_embeddings`, `zero_shot_accuracy`).

- mini: single-object scenes by shape (7) and by colour (10), top-1; trivial: chance;
- source: images whose caption names exactly one of `eval.classes`, top-1; trivial: the share
  of the most common class;
- imagenet_folder: the val split's class folders, top-1/top-5; trivial: chance, k / classes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from mtv.eval import mini
from mtv.eval.contract import Evaluator, image_features, register_evaluator
from mtv.eval.formats import ClassificationSet
from mtv.eval.metrics import Score, Scores, zero_shot_accuracy
from mtv.eval.mini import COLOR_NAMES, MiniData
from mtv.eval.model import FrozenModel, class_embeddings
from mtv.eval.source import SourceData
from mtv.world.captions import with_article
from mtv.world.geometry import SHAPE_NAMES

# Generic photo prompts (written for this toolkit): averaged per class after normalising.
PHOTO_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "an image of a {}.",
)
SOURCE_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "an image of a {}.",
    "a picture of a {}.",
)


def attribute_texts(model: FrozenModel, attribute: str) -> torch.Tensor:
    """One text embedding per mini-world class of `attribute` (shape or color), averaged over
    the templates and the other attribute's values ("a red cube", "a blue cube", ... for the
    class "cube")."""
    if attribute == "shape":
        names = [[with_article(f"{c} {s}") for c in COLOR_NAMES] for s in SHAPE_NAMES]
    else:
        names = [[with_article(f"{c} {s}") for s in SHAPE_NAMES] for c in COLOR_NAMES]
    flat = [phrase for group in names for phrase in group]
    per_phrase = class_embeddings(model, flat, mini.TEMPLATES)
    return per_phrase.reshape(len(names), len(names[0]), -1).mean(1)


def majority_share(labels: Sequence[int] | np.ndarray | torch.Tensor) -> float:
    """The accuracy of always answering the most common class: chance when the classes are
    not balanced (1/classes is not)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return float(counts.max() / counts.sum())


@register_evaluator
class MiniZeroShot(Evaluator):
    """Single-object scenes classified by shape (7) and by colour (10); top-1. Trivial: the
    most common class's share of the scenes."""

    name = "zero_shot"
    suites = ("mini",)
    needs_text = True
    # 2: prompts with the article captions use ("an orange cube"); the trivial is the most
    # common class's share, not 1/classes
    version = 2

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        pooled = image_features(model, data.single_images).pooled
        out: Scores = {}
        for attribute in ("shape", "color"):
            labels = data.single_labels(attribute)
            accuracy = zero_shot_accuracy(pooled, attribute_texts(model, attribute), labels, (1,))
            out[f"{attribute}_top1"] = Score(accuracy["top1"], majority_share(labels))
        return out


def named_class(caption: str, patterns: list[re.Pattern[str]]) -> int:
    """The index of the one class a caption names (as a whole word), or -1 (none or several)."""
    found = [i for i, pattern in enumerate(patterns) if pattern.search(caption)]
    return found[0] if len(found) == 1 else -1


@register_evaluator
class SourceZeroShot(Evaluator):
    """Images whose caption names exactly one class of `eval.classes`, classified among all
    classes. Trivial: the share of the most common class. `named_share` says how many images
    that is: those whose caption names no class, or several, are left out."""

    name = "zero_shot"
    suites = ("source",)
    needs_text = True

    def __call__(self, model: FrozenModel, data: SourceData) -> Scores:
        if not data.class_names:
            return {}  # no `eval.classes`: nothing to classify by
        patterns = [re.compile(rf"\b{re.escape(n)}\b", re.IGNORECASE) for n in data.class_names]
        classes = np.asarray([named_class(c, patterns) for c in data.captions], dtype=np.int64)
        chosen = np.flatnonzero(classes >= 0)
        if len(chosen) < 2:
            raise ValueError(
                f"zero_shot: only {len(chosen)} caption(s) name exactly one of the "
                f"{len(data.class_names)} classes; name classes the captions use"
            )
        pooled = image_features(model, data.images).pooled
        texts = class_embeddings(model, data.class_names, SOURCE_TEMPLATES)
        accuracy = zero_shot_accuracy(
            pooled[chosen], texts, torch.from_numpy(classes[chosen]), (1,)
        )
        return {
            "top1": Score(accuracy["top1"], majority_share(classes[chosen])),
            "named_share": Score(len(chosen) / len(classes)),
        }


@register_evaluator
class FolderZeroShot(Evaluator):
    """Top-1/top-5 over an ImageNet-style folder's classes, PHOTO_TEMPLATES averaged per class.
    Trivial: chance, k / classes."""

    name = "zero_shot"
    suites = ("imagenet_folder",)
    needs_text = True

    def __call__(self, model: FrozenModel, data: ClassificationSet) -> Scores:
        image = image_features(model, data.images).pooled
        class_text = class_embeddings(model, data.class_names, PHOTO_TEMPLATES)
        found = zero_shot_accuracy(image, class_text, torch.from_numpy(data.labels))
        classes = len(data.class_names)
        return {name: Score(v, min(1.0, int(name[3:]) / classes)) for name, v in found.items()}
