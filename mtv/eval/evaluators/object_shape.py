"""Object-centric shape and colour: the single-object scenes' object, its box zoomed to the
model's input size, classified zero-shot (as `zero_shot` does whole images) and by a linear
probe of the pooled embedding (as `pooled_probe`).

In the whole 64 px image the median object covers 1.6 patches, and shape is at chance for
every encoder trained here while a linear probe of the raw pixels of the object's box reads it
(0.52 against the majority's 0.16: benchmarks/results/shape_visibility.md). Zoomed, the object
fills the view: an encoder that describes shapes at all can show it here. The crop is the
square around the box with a margin of `MARGIN` of its larger side on each side (clamped to the
image; an object at the border gets a smaller margin there), resized bilinearly. Trivial:
chance (zero-shot), the majority class (probe).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mtv.eval.contract import Evaluator, image_features, register_evaluator
from mtv.eval.evaluators.zero_shot import attribute_texts, majority_share
from mtv.eval.metrics import Score, Scores, zero_shot_accuracy
from mtv.eval.mini import COLOR_NAMES, MiniData, halves
from mtv.eval.model import FrozenModel
from mtv.eval.probes import classifier_probe_accuracy
from mtv.world.geometry import SHAPE_NAMES

MARGIN = 0.15  # of the box's larger side, on each side of it


def square_window(cx: float, cy: float, half: float, side: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a square of about 2 * `half` pixels centred on (cx, cy),
    shifted inside a `side`-pixel image where it would cross its border (cut to the image only
    when larger than it): zoomed to a square, it keeps the object's aspect."""
    width = min(side, max(1, math.ceil(2 * half)))
    left = min(max(0, math.floor(cx - width / 2)), side - width)
    top = min(max(0, math.floor(cy - width / 2)), side - width)
    return left, top, left + width, top + width


def object_crops(data: MiniData, size: int) -> np.ndarray:
    """(singles, size, size, 3) uint8: each single-object scene's object box, squared with a
    margin (shifted inside the image at its border, never stretched) and zoomed to `size`
    pixels."""
    images = data.single_images
    side = images.shape[1]
    crops = []
    for view, image in zip(data.singles, images, strict=True):
        x0, y0, x1, y1 = (np.asarray(view.boxes[0], dtype=np.float64) * side).tolist()
        half = max(x1 - x0, y1 - y0) * (0.5 + MARGIN)
        left, top, right, bottom = square_window((x0 + x1) / 2, (y0 + y1) / 2, half, side)
        pixels = torch.from_numpy(image[top:bottom, left:right]).permute(2, 0, 1)[None].float()
        zoomed = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)
        crops.append(zoomed[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    return np.stack(crops) if crops else np.zeros((0, size, size, 3), dtype=np.uint8)


@register_evaluator
class MiniObjectShape(Evaluator):
    name = "object_shape"
    suites = ("mini",)
    # 4: zero-shot prompts with the captions' article, its trivial the most common class's
    # share (3: crops kept square at the image border; 2: probes' decaying learning rate)
    version = 4

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        crops = object_crops(data, model.size)
        if len(crops) < 4:
            return {}
        pooled = image_features(model, crops).pooled
        train, test = halves(len(crops))
        out: Scores = {}
        for attribute, count in (("shape", len(SHAPE_NAMES)), ("color", len(COLOR_NAMES))):
            labels = data.single_labels(attribute)
            if getattr(model, "has_text", True):
                accuracy = zero_shot_accuracy(
                    pooled, attribute_texts(model, attribute), labels, (1,)
                )
                out[f"{attribute}_top1"] = Score(accuracy["top1"], majority_share(labels))
            out[f"{attribute}_acc"] = classifier_probe_accuracy(
                pooled[train], labels[train], pooled[test], labels[test], count
            )
        return out
