"""Evaluation suites on public benchmark formats the user has locally (`PUBLIC_SUITES`), run by
`run_public_suite(model, name, path)`; each returns the same rows as the `mini` suite.

| suite | reads | evaluators (protocol) |
|---|---|---|
| imagenet_folder | `<path>/val/<class>/*` | zero_shot: prompt-averaged class texts, top-1/top-5 |
| coco_karpathy | `dataset_coco.json`, test split | retrieval: 5 captions an image, R@1/R@5 |
| ade20k | ADEChallengeData2016 | segmentation: linear patch probe on training, mIoU on validation |
| nyuv2 | `nyu_depth_v2_labeled.mat` | depth_probe: [global ; patch] -> 256 bins, RMSE/AbsRel; |
|  |  | relative_depth: the run's depth head, zero-shot AbsRel/delta1 |
| spair | SPair-71k, test pairs | semantic_correspondence: nearest patch, PCK@0.1 of the box |

Probes and metrics are those of `mtv.eval.probes` / `mtv.eval.metrics`, so numbers are measured
at the model's input size (images resized and centre-cropped, see `mtv.eval.formats`), per
patch for the depth probe, per pixel of the crop for mIoU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from mtv.eval.formats import (
    BenchmarkFormatError,
    CaptionSet,
    ClassificationSet,
    DepthSet,
    KeypointPairSet,
    SegmentationSet,
    read_ade20k,
    read_coco_karpathy,
    read_image_folder,
)
from mtv.eval.metrics import (
    correspondence_recall,
    depth_errors,
    mean_iou,
    relative_depth_errors,
    result_rows,
    retrieval_recall,
    zero_shot_accuracy,
)
from mtv.eval.model import FrozenModel
from mtv.eval.nyuv2 import read_nyuv2
from mtv.eval.probes import DepthBinProbe, SegmentationProbe
from mtv.eval.spair import read_spair

# Generic photo prompts (written for this toolkit): averaged per class after normalising.
TEMPLATES = (
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

T = TypeVar("T")


@dataclass
class TrainTest(Generic[T]):
    train: T
    test: T


# Evaluators ------------------------------------------------------------------------------------


def zero_shot(model: FrozenModel, data: ClassificationSet) -> dict[str, float]:
    """Top-1/top-5 of classifying each image by cosine similarity to its class's text embedding,
    the mean of the normalised embeddings of TEMPLATES filled with the class name."""
    image = model.images(data.images).pooled
    prompts = [t.format(name) for name in data.class_names for t in TEMPLATES]
    text = F.normalize(model.texts(prompts).float(), dim=-1)
    class_text = text.reshape(len(data.class_names), len(TEMPLATES), -1).mean(1)
    return zero_shot_accuracy(image, class_text, torch.from_numpy(data.labels))


def retrieval(model: FrozenModel, data: CaptionSet) -> dict[str, float]:
    """Image->text (any of the image's captions in the top k) and text->image (the caption's
    image in the top k) recall at 1 and 5, over the whole split at once."""
    image = model.images(data.images).pooled
    text = model.texts(data.captions)
    return retrieval_recall(image, text, torch.from_numpy(data.caption_image))


def patch_labels(masks: np.ndarray, grid: int, n_classes: int, ignore_index: int) -> Tensor:
    """(N, S, S) pixel classes -> (N, grid, grid) majority class of each patch among its
    non-ignored pixels (ignore_index where all are ignored)."""
    size = masks.shape[1]
    cell = torch.arange(size) * grid // size  # patch row/column of each pixel row/column
    patch = (cell[:, None] * grid + cell[None, :]).flatten()
    out = []
    for start in range(0, len(masks), 64):  # bounded memory: 64 * grid^2 * classes counts
        chunk = torch.from_numpy(masks[start : start + 64]).long().flatten(1)
        keep = chunk != ignore_index
        slot = (torch.arange(len(chunk))[:, None] * grid * grid + patch) * n_classes + chunk
        counts = torch.bincount(slot[keep], minlength=len(chunk) * grid * grid * n_classes)
        counts = counts.reshape(len(chunk), grid, grid, n_classes)
        best = counts.argmax(-1)
        out.append(torch.where(counts.sum(-1) > 0, best, ignore_index))
    return torch.cat(out)


def segmentation(model: FrozenModel, data: TrainTest[SegmentationSet]) -> dict[str, float]:
    """A linear probe of patch tokens fitted to each training patch's majority class; its
    predictions on validation patches, upsampled (nearest) to pixels, scored by mIoU with the
    ignore label left out."""
    train, test = data.train, data.test
    features = model.images(train.images).patches
    grid = features.shape[1]
    labels = patch_labels(train.masks, grid, train.n_classes, train.ignore_index)
    probe = SegmentationProbe(features.shape[-1], train.n_classes)
    probe.fit(features.flatten(1, 2), labels.flatten(1), ignore_index=train.ignore_index)
    predicted = probe.predict(model.images(test.images).patches.flatten(1, 2))
    predicted = predicted.reshape(-1, 1, grid, grid).float()
    pixels = F.interpolate(predicted, size=test.masks.shape[1:], mode="nearest")[:, 0].long()
    target = torch.from_numpy(test.masks)
    return {"miou": mean_iou(pixels, target, test.n_classes, ignore_index=test.ignore_index)}


def patch_depth(data: DepthSet, grid: int) -> tuple[Tensor, Tensor]:
    """(N, grid, grid) mean depth of each patch, and whether all its pixels are valid."""
    valid = torch.from_numpy(data.valid).float()[:, None]
    total = F.adaptive_avg_pool2d(torch.from_numpy(data.depth)[:, None] * valid, grid)[:, 0]
    share = F.adaptive_avg_pool2d(valid, grid)[:, 0]
    return total / share.clamp(min=1e-6), share > 0.999


def depth_probe(model: FrozenModel, data: TrainTest[DepthSet]) -> dict[str, float]:
    """The paper's probe: [global ; patch] token -> linear logits over 256 depth bins spread over
    the training targets' range, trained by cross-entropy to the target bin; prediction = the
    softmax-weighted bin centre. RMSE (metres) and AbsRel over valid test patches."""
    train = model.images(data.train.images)
    grid = train.patches.shape[1]
    depth, valid = patch_depth(data.train, grid)
    if not valid.any():
        raise BenchmarkFormatError("no training patch has valid depth everywhere")
    probe = DepthBinProbe(
        train.patches.shape[-1], float(depth[valid].min()), float(depth[valid].max())
    )
    probe.fit(train.pooled, train.patches.flatten(1, 2), depth.flatten(1), valid.flatten(1))
    test = model.images(data.test.images)
    predicted = probe.predict(test.pooled, test.patches.flatten(1, 2))
    target, keep = patch_depth(data.test, grid)
    return depth_errors(predicted, target.flatten(1), keep.flatten(1))


def relative_depth(model: FrozenModel, data: TrainTest[DepthSet]) -> dict[str, float]:
    """The run's own depth head, zero-shot on the test frames: per image least-squares scale
    and shift in disparity, then AbsRel and delta1 (nothing when the run has no depth head)."""
    if not model.has_depth_head:
        return {}
    test = data.test
    keep = test.valid.reshape(len(test.depth), -1).sum(1) >= 2  # a scale and shift need 2 points
    if not keep.any():
        return {}
    disparity = model.disparity(test.images[keep])
    valid = torch.from_numpy(test.valid[keep])
    return relative_depth_errors(disparity, torch.from_numpy(test.depth[keep]), valid)


def semantic_correspondence(model: FrozenModel, data: KeypointPairSet) -> dict[str, float]:
    """Each source keypoint's patch feature is matched to the nearest (cosine) patch of the
    target image; a match is right when the patch centre is within the pair's threshold
    (alpha * max side of the target box) of the true keypoint. PCK over all keypoints."""
    patches = model.images(data.images).patches
    grid = patches.shape[1]
    step = data.images.shape[1] / grid  # pixels per patch
    hits = total = 0.0
    for pair in data.pairs:
        if not len(pair.source_xy):
            continue
        cells = np.minimum((pair.source_xy / step).astype(np.int64), grid - 1)
        queries = patches[pair.source, cells[:, 1], cells[:, 0]]
        recall = correspondence_recall(
            queries,
            patches[pair.target],
            torch.from_numpy(pair.target_xy / step),
            (pair.threshold / step,),
        )
        hits += next(iter(recall.values())) * len(cells)
        total += len(cells)
    if not total:
        return {}
    return {f"pck@{data.alpha:g}": hits / total}


# Registry --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicSuite:
    """A format's reader (path, image size, limit) -> data, and the evaluators run on it."""

    description: str
    load: Callable[[Path, int, int | None], Any]
    evaluators: dict[str, Callable[[FrozenModel, Any], dict[str, float]]]


def _train_test(read: Callable[..., T], train: str, test: str) -> Callable[..., TrainTest[T]]:
    def load(path: Path, size: int, limit: int | None) -> TrainTest[T]:
        return TrainTest(read(path, size, train, limit), read(path, size, test, limit))

    return load


PUBLIC_SUITES: dict[str, PublicSuite] = {
    "imagenet_folder": PublicSuite(
        "ImageNet-style class folders (val split): zero-shot top-1/top-5",
        lambda path, size, limit: read_image_folder(path, size, "val", limit),
        {"zero_shot": zero_shot},
    ),
    "coco_karpathy": PublicSuite(
        "COCO captions, Karpathy test split: image<->text retrieval R@1/R@5",
        lambda path, size, limit: read_coco_karpathy(path, size, "test", limit),
        {"retrieval": retrieval},
    ),
    "ade20k": PublicSuite(
        "ADE20k (ADEChallengeData2016): linear segmentation probe, mIoU",
        _train_test(read_ade20k, "training", "validation"),
        {"segmentation": segmentation},
    ),
    "nyuv2": PublicSuite(
        "NYU Depth v2 labelled set: depth-bin probe (RMSE, AbsRel), zero-shot relative depth",
        _train_test(read_nyuv2, "train", "test"),
        {"depth_probe": depth_probe, "relative_depth": relative_depth},
    ),
    "spair": PublicSuite(
        "SPair-71k test pairs: semantic correspondence PCK@0.1 (target box)",
        lambda path, size, limit: read_spair(path, size, "test", limit),
        {"semantic_correspondence": semantic_correspondence},
    ),
}


def run_public_suite(
    model: FrozenModel,
    name: str,
    path: str | Path,
    only: list[str] | None = None,
    limit: int | None = None,
) -> pl.DataFrame:
    """Read the benchmark at `path` in format `name` (at most `limit` samples a split) at the
    model's input size and run the chosen evaluators; rows (evaluator, metric, value,
    higher_is_better) as `run_mini_suite`'s."""
    if name not in PUBLIC_SUITES:
        raise ValueError(f"unknown benchmark format {name!r}; known: {', '.join(PUBLIC_SUITES)}")
    suite = PUBLIC_SUITES[name]
    unknown = sorted(set(only or []) - set(suite.evaluators))
    if unknown:
        raise ValueError(
            f"unknown evaluator(s) {unknown} for {name}; known: {', '.join(suite.evaluators)}"
        )
    data = suite.load(Path(path), model.size, limit)
    chosen = only or list(suite.evaluators)
    return result_rows({name: suite.evaluators[name](model, data) for name in chosen})
