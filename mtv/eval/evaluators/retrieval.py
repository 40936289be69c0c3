"""Image <-> caption retrieval, one implementation for every suite (`gallery_retrieval`).

Images are split into fixed galleries of consecutive images (the mini-world's scenes 0-99,
100-199, ...; a source's samples likewise; COCO's whole Karpathy test split as one gallery),
each image with its own captions (one, or COCO's five). Image->text is right when any of the
image's captions ranks in the top k among the gallery's captions; text->image when the caption's
image ranks in the top k among the gallery's images. Recall averaged over galleries. Trivial: a
random ranking (i2t: 1 - C(T - c, k) / C(T, k) for an image with c of the gallery's T captions;
t2i: k / images).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mtv.eval.contract import Evaluator, image_features, register_evaluator
from mtv.eval.formats import CaptionSet
from mtv.eval.metrics import Score, Scores, retrieval_recall
from mtv.eval.mini import GALLERY, MiniData
from mtv.eval.model import FrozenModel
from mtv.eval.source import SourceData


def _random_ranking(name: str, per_image: np.ndarray, texts: int, images: int) -> float:
    """What a random ranking scores on recall `name` (i2t_rK or t2i_rK) in one gallery."""
    k = int(name.rsplit("r", 1)[1])
    if name.startswith("i2t"):
        if k >= texts:
            return 1.0
        # In integers, then one division: 1 caption in 10 gives exactly 0.1, as k / images.
        hits = [
            (math.comb(texts, k) - math.comb(texts - c, k)) / math.comb(texts, k) for c in per_image
        ]
        return float(np.mean(hits))
    return min(1.0, k / images)


def gallery_retrieval(
    image: Tensor, text: Tensor, caption_image: np.ndarray, gallery: int | None
) -> Scores:
    """Recall@1/5 both ways of `image` (N, D) against `text` (T, D), where caption t belongs to
    image `caption_image[t]`, in galleries of `gallery` consecutive images (None: all at once;
    a last partial gallery is left out so that every gallery has the same chance)."""
    n = len(image)
    size = n if gallery is None else min(gallery, n)
    found: dict[str, list[float]] = {}
    chance: dict[str, list[float]] = {}
    for start in range(0, n - size + 1, size):
        inside = (caption_image >= start) & (caption_image < start + size)
        owners = caption_image[inside] - start
        recalls = retrieval_recall(
            image[start : start + size], text[torch.from_numpy(inside)], torch.from_numpy(owners)
        )
        per_image = np.bincount(owners, minlength=size)
        for name, value in recalls.items():
            found.setdefault(name, []).append(value)
            chance.setdefault(name, []).append(_random_ranking(name, per_image, len(owners), size))
    return {
        name: Score(float(np.mean(values)), float(np.mean(chance[name])))
        for name, values in found.items()
    }


@register_evaluator
class MiniRetrieval(Evaluator):
    """Caption <-> scene retrieval within galleries of GALLERY scenes, one view of each scene
    (captions describe a scene, and both its views would match)."""

    name = "retrieval"
    suites = ("mini",)
    needs_text = True

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        first = np.arange(0, len(data.views), 2)
        pooled = image_features(model, data.images).pooled[torch.from_numpy(first)]
        text = model.texts([data.views[i].caption for i in first.tolist()])
        return gallery_retrieval(pooled, text, np.arange(len(first)), GALLERY)


@register_evaluator
class SourceRetrieval(Evaluator):
    """Image <-> caption retrieval over held-out image-caption data, galleries of GALLERY."""

    name = "retrieval"
    suites = ("source",)
    needs_text = True

    def __call__(self, model: FrozenModel, data: SourceData) -> Scores:
        pooled = image_features(model, data.images).pooled
        text = model.texts(data.captions)
        return gallery_retrieval(pooled, text, np.arange(len(data.captions)), GALLERY)


@register_evaluator
class CocoRetrieval(Evaluator):
    """COCO's Karpathy test split, five captions an image, the whole split one gallery."""

    name = "retrieval"
    suites = ("coco_karpathy",)
    needs_text = True

    def __call__(self, model: FrozenModel, data: CaptionSet) -> Scores:
        image = image_features(model, data.images).pooled
        text = model.texts(data.captions)
        return gallery_retrieval(image, text, np.asarray(data.caption_image), None)
