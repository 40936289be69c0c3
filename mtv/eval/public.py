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
| navi | NAVI multiview scenes | geometric_correspondence: nearest patch, recall@px (Probe3D) |

Probes and metrics are those of `mtv.eval.probes` / `mtv.eval.metrics`, so numbers are measured
at the model's input size (images resized and centre-cropped, see `mtv.eval.formats`), per
patch for the depth probe, per pixel of the crop for mIoU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import polars as pl
import torch

from mtv.eval.formats import (
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
    Score,
    Scores,
    correspondence_recall,
    random_match_recall,
    relative_depth_errors,
    result_rows,
    retrieval_recall,
    zero_shot_accuracy,
)
from mtv.eval.model import FrozenModel, class_embeddings
from mtv.eval.navi import ViewPairSet, pair_batches, read_navi
from mtv.eval.nyuv2 import read_nyuv2
from mtv.eval.probes import depth_probe_scores, patch_depth, segmentation_probe_scores
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
NYU_MAX_DEPTH = 10.0  # metres: NYUv2's evaluation cap
ROTATION_BINS = (0, 30, 60, 90, 120)  # degrees: Probe3D's bins of NAVI pairs' relative rotation
PAIRS_PER_BATCH = 256  # NAVI pairs whose images' features are held at once


@dataclass
class TrainTest(Generic[T]):
    train: T
    test: T


# Evaluators ------------------------------------------------------------------------------------


def zero_shot(model: FrozenModel, data: ClassificationSet) -> Scores:
    """Top-1/top-5 of classifying each image by cosine similarity to its class's text embedding,
    the mean of the normalised embeddings of TEMPLATES filled with the class name. Trivial:
    chance, k / classes."""
    image = model.images(data.images).pooled
    class_text = class_embeddings(model, data.class_names, TEMPLATES)
    found = zero_shot_accuracy(image, class_text, torch.from_numpy(data.labels))
    classes = len(data.class_names)
    return {name: Score(v, min(1.0, int(name[3:]) / classes)) for name, v in found.items()}


def retrieval(model: FrozenModel, data: CaptionSet) -> Scores:
    """Image->text (any of the image's captions in the top k) and text->image (the caption's
    image in the top k) recall at 1 and 5, over the whole split at once. Trivial: a random
    ranking (i2t: 1 - C(T - c, k) / C(T, k) with c captions an image; t2i: k / images)."""
    image = model.images(data.images).pooled
    text = model.texts(data.captions)
    found = retrieval_recall(image, text, torch.from_numpy(data.caption_image))
    images, texts = len(data.images), len(data.captions)
    per_image = np.bincount(data.caption_image, minlength=images)
    out: Scores = {}
    for name, value in found.items():
        k = int(name.rsplit("r", 1)[1])
        if name.startswith("i2t"):
            misses = [math.comb(texts - c, k) / math.comb(texts, k) for c in per_image]
            out[name] = Score(value, 1.0 - float(np.mean(misses)))
        else:
            out[name] = Score(value, min(1.0, k / images))
    return out


def segmentation(model: FrozenModel, data: TrainTest[SegmentationSet]) -> Scores:
    """`segmentation_probe_miou`: a linear patch probe fitted on the training split, mIoU on
    the validation split per pixel of the crop, the ignore label left out."""
    train, test = data.train, data.test
    return segmentation_probe_scores(
        model.images(train.images).patches,
        train.masks,
        model.images(test.images).patches,
        test.masks,
        train.n_classes,
        train.ignore_index,
    )


def depth_probe(model: FrozenModel, data: TrainTest[DepthSet]) -> Scores:
    """The paper's probe (`depth_probe_errors`): [global ; patch] token -> linear logits over
    256 depth bins spread over the training targets' range, trained by cross-entropy to the
    target bin; prediction = the softmax-weighted bin centre. RMSE (metres) and AbsRel over
    valid test patches."""
    train = model.images(data.train.images)
    grid = train.patches.shape[1]
    depth, valid = patch_depth(data.train.depth, data.train.valid, grid)
    target, keep = patch_depth(data.test.depth, data.test.valid, grid)
    return depth_probe_scores(train, depth, valid, model.images(data.test.images), target, keep)


def relative_depth(model: FrozenModel, data: TrainTest[DepthSet]) -> Scores:
    """The run's own depth head, zero-shot on the test frames: per image least-squares scale
    and shift in disparity, then AbsRel and delta1 with depth capped at NYUv2's 10 m (nothing
    when the run has no depth head). Trivial: a constant disparity map."""
    if not model.has_depth_head:
        return {}
    test = data.test
    keep = test.valid.reshape(len(test.depth), -1).sum(1) >= 2  # a scale and shift need 2 points
    if not keep.any():
        return {}
    disparity = model.disparity(test.images[keep])
    valid = torch.from_numpy(test.valid[keep])
    depth = torch.from_numpy(test.depth[keep])
    errors = relative_depth_errors(disparity, depth, valid, NYU_MAX_DEPTH)
    constant = relative_depth_errors(torch.ones_like(disparity), depth, valid, NYU_MAX_DEPTH)
    return {name: Score(value, constant[name]) for name, value in errors.items()}


def semantic_correspondence(model: FrozenModel, data: KeypointPairSet) -> Scores:
    """Each source keypoint's patch feature is matched to the nearest (cosine) patch of the
    target image; a match is right when the patch centre is within the pair's threshold
    (alpha * max side of the target box) of the true keypoint. PCK over all keypoints."""
    patches = model.images(data.images).patches
    grid = patches.shape[1]
    step = data.images.shape[1] / grid  # pixels per patch
    hits = chance = total = 0.0
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
        random = random_match_recall(
            (grid, grid), torch.from_numpy(pair.target_xy / step), (pair.threshold / step,)
        )
        hits += next(iter(recall.values())) * len(cells)
        chance += next(iter(random.values())) * len(cells)
        total += len(cells)
    if not total:
        return {}
    return {f"pck@{data.alpha:g}": Score(hits / total, chance / total)}


def geometric_correspondence(model: FrozenModel, data: ViewPairSet) -> Scores:
    """NAVI pairs (`mtv.eval.navi`): each ground-truth point of the source view takes the
    feature of the patch containing it, matched to the nearest (cosine) patch of the target
    view; a match is right when that patch's centre lies within a threshold of the point's true
    location. Recall at size/16, size/8 and size/4 pixels (the mini suite's thresholds), the
    mean over pairs (each pair weighs the same, as Probe3D's fixed number of matches a pair),
    and at size/8 per bin of relative rotation (Probe3D's 0-30-60-90-120 degrees; empty bins
    left out). Trivial: a match drawn uniformly among the target's patches."""
    size = data.images.shape[1]
    thresholds_px = (size / 16, size / 8, size / 4)
    names = [f"recall@{t:g}px" for t in thresholds_px]
    found, chance, angles = [], [], []
    for images, batch in pair_batches(data, PAIRS_PER_BATCH):
        patches = model.images(data.images[images]).patches
        row = {int(image): n for n, image in enumerate(images)}
        grid = tuple(patches.shape[1:3])
        step = size / grid[1]  # pixels per patch (square images, square grid)
        thresholds = tuple(t / step for t in thresholds_px)
        for pair in batch:
            if not len(pair.source_xy):
                continue
            cells = np.minimum((pair.source_xy / step).astype(np.int64), grid[1] - 1)
            queries = patches[row[pair.source], cells[:, 1], cells[:, 0]]
            truth = torch.from_numpy(pair.target_xy / step)
            recall = correspondence_recall(queries, patches[row[pair.target]], truth, thresholds)
            random = random_match_recall(grid, truth, thresholds)  # type: ignore[arg-type]
            found.append(list(recall.values()))
            chance.append(list(random.values()))
            angles.append(pair.rotation)
    if not found:
        return {}
    hits, trivial, rotation = np.array(found), np.array(chance), np.array(angles)
    out = {
        name: Score(float(hits[:, k].mean()), float(trivial[:, k].mean()))
        for k, name in enumerate(names)
    }
    for low, high in itertools.pairwise(ROTATION_BINS):
        inside = (rotation >= low) & (rotation < high)
        if inside.any():
            out[f"{names[1]}_{low}-{high}deg"] = Score(
                float(hits[inside, 1].mean()), float(trivial[inside, 1].mean())
            )
    return out


# Registry --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicSuite:
    """A format's reader (path, image size, limit) -> data, and the evaluators run on it."""

    description: str
    load: Callable[[Path, int, int | None], Any]
    evaluators: dict[str, Callable[[FrozenModel, Any], Scores]]


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
    "navi": PublicSuite(
        "NAVI multiview pairs: geometric correspondence recall@px, by relative rotation",
        lambda path, size, limit: read_navi(path, size, limit),
        {"geometric_correspondence": geometric_correspondence},
    ),
}


def load_public_suite(name: str, path: str | Path, size: int, limit: int | None = None) -> Any:
    """Read the benchmark at `path` in format `name` (at most `limit` samples a split) at
    `size` pixels."""
    if name not in PUBLIC_SUITES:
        raise ValueError(f"unknown benchmark format {name!r}; known: {', '.join(PUBLIC_SUITES)}")
    return PUBLIC_SUITES[name].load(Path(path), size, limit)


def run_public_suite(
    model: FrozenModel,
    name: str,
    path: str | Path,
    only: list[str] | None = None,
    limit: int | None = None,
    data: Any = None,
) -> pl.DataFrame:
    """Read the benchmark at `path` in format `name` (unless `data` holds it already, as
    `load_public_suite` returns it) at the model's input size and run the chosen evaluators;
    rows (evaluator, metric, value, trivial, higher_is_better) as `run_mini_suite`'s."""
    if name not in PUBLIC_SUITES:
        raise ValueError(f"unknown benchmark format {name!r}; known: {', '.join(PUBLIC_SUITES)}")
    suite = PUBLIC_SUITES[name]
    unknown = sorted(set(only or []) - set(suite.evaluators))
    if unknown:
        raise ValueError(
            f"unknown evaluator(s) {unknown} for {name}; known: {', '.join(suite.evaluators)}"
        )
    if data is None:
        data = load_public_suite(name, path, model.size, limit)
    chosen = only or list(suite.evaluators)
    return result_rows({name: suite.evaluators[name](model, data) for name in chosen})
