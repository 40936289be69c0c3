"""Metrics of the evaluation protocols, as pure functions of features, predictions and labels.

Every function takes plain tensors, so each is tested on planted answers independently of any
model: class-encoding features must give ~100% zero-shot accuracy and R@1, random ones chance.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor

# Every other metric: higher is better.
LOWER_IS_BETTER = frozenset({"rmse", "absrel", "aligned_mae", "relief_rmse"})


class Score(NamedTuple):
    """A metric's value and what a trivial predictor scores on the same data: chance for
    classification and retrieval, the majority class for probes, a constant depth for depth
    (None where the evaluator knows no trivial predictor)."""

    value: float
    trivial: float | None = None


Scores = dict[str, Score]


def result_rows(results: dict[str, Scores]) -> pl.DataFrame:
    """{evaluator: {metric: Score}} -> rows (evaluator, metric, value, trivial,
    higher_is_better)."""
    rows = [
        (
            evaluator,
            metric,
            float(score.value),
            None if score.trivial is None else float(score.trivial),
            metric not in LOWER_IS_BETTER,
        )
        for evaluator, metrics in results.items()
        for metric, score in metrics.items()
    ]
    schema = {
        "evaluator": pl.String,
        "metric": pl.String,
        "value": pl.Float64,
        "trivial": pl.Float64,
        "higher_is_better": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def majority_accuracy(train_labels: Tensor, test_labels: Tensor) -> float:
    """Accuracy of always predicting the most frequent training label."""
    majority = torch.bincount(train_labels.flatten()).argmax()
    return float((test_labels == majority).float().mean())


def zero_shot_accuracy(
    image: Tensor, class_text: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy of classifying images (N, D) by cosine similarity to one text embedding
    per class (C, D) (prompt-averaged by the caller)."""
    scores = F.normalize(image.float(), dim=-1) @ F.normalize(class_text.float(), dim=-1).T
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {f"top{k}": float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


def retrieval_recall(
    image: Tensor, text: Tensor, text_image: Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k. `text_image` (T,) gives the image index of each
    text (COCO has 5 captions an image): an image query is right if any of its texts ranks in
    the top k; a text query if its image does."""
    scores = F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T  # (N, T)
    out = {}
    k_max = max(ks)
    top_texts = scores.topk(min(k_max, scores.shape[1]), dim=1).indices  # (N, k)
    match = text_image[top_texts] == torch.arange(image.shape[0])[:, None]
    top_images = scores.T.topk(min(k_max, scores.shape[0]), dim=1).indices  # (T, k)
    found = top_images == text_image[:, None]
    for k in ks:
        out[f"i2t_r{k}"] = float(match[:, :k].any(dim=1).float().mean())
        out[f"t2i_r{k}"] = float(found[:, :k].any(dim=1).float().mean())
    return out


def mean_iou(prediction: Tensor, target: Tensor, n_classes: int, ignore_index: int = -1) -> float:
    """Mean intersection-over-union over the classes present in target or prediction."""
    keep = target != ignore_index
    pred, true = prediction[keep].long(), target[keep].long()
    confusion = torch.bincount(true * n_classes + pred, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )
    intersection = confusion.diag().float()
    union = confusion.sum(0).float() + confusion.sum(1).float() - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean())


def depth_errors(prediction: Tensor, target: Tensor, valid: Tensor) -> dict[str, float]:
    """RMSE and AbsRel over valid pixels (metric depth, as the probe predicts)."""
    p, t = prediction[valid].float(), target[valid].float()
    return {
        "rmse": float(((p - t) ** 2).mean().sqrt()),
        "absrel": float(((p - t).abs() / t.clamp(min=1e-6)).mean()),
    }


def align_disparity(disparity: Tensor, depth: Tensor, valid: Tensor) -> Tensor:
    """Per image, the least-squares scale and shift that map predicted disparity (N, H, W) onto
    the true disparity 1 / depth over valid pixels, applied to every pixel: what relative
    (affine-invariant) depth predictions are compared after."""
    out = []
    for pred, true, mask in zip(disparity.float(), depth.float(), valid, strict=True):
        if mask.sum() < 2:  # a scale and a shift need two points
            out.append(pred)
            continue
        x, y = pred[mask], 1.0 / true[mask].clamp(min=1e-6)
        design = torch.stack([x, torch.ones_like(x)], dim=1)
        scale, shift = torch.linalg.lstsq(design, y[:, None]).solution.flatten()
        out.append(scale * pred + shift)
    return torch.stack(out)


def fit_affine(prediction: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Each map of `prediction` (N, H, W) mapped by the scale and shift that fit `target` best
    (least squares over the valid pixels): how a relative map is compared with another."""
    out = torch.empty_like(prediction, dtype=torch.float32)
    for i, (p, t, m) in enumerate(zip(prediction.double(), target.double(), valid, strict=True)):
        design = torch.stack([p[m], torch.ones_like(p[m])], dim=1)
        if len(design) < 2:
            out[i] = p.float()
            continue
        scale, shift = torch.linalg.lstsq(design, t[m][:, None]).solution[:, 0]
        out[i] = (p * scale + shift).float()
    return out


def constant_depth_errors(
    train_depth: Tensor, train_valid: Tensor, test_depth: Tensor, test_valid: Tensor
) -> dict[str, float]:
    """RMSE and AbsRel of predicting the median valid training depth everywhere: the trivial
    predictor a depth probe must beat to show it reads depth from the features."""
    constant = train_depth[train_valid].float().median()
    return depth_errors(torch.full_like(test_depth, float(constant)), test_depth, test_valid)


def relative_depth_errors(
    disparity: Tensor, depth: Tensor, valid: Tensor, max_depth: float
) -> dict[str, float]:
    """Zero-shot relative depth (paper appendix B): per image, the predicted disparity is
    aligned to the true disparity by least-squares scale and shift over the valid pixels no
    deeper than `max_depth`, turned into depth capped at `max_depth` (as NYUv2's protocol caps
    at 10 m: an aligned disparity near or below 0 would otherwise be a depth of millions), and
    scored there by AbsRel and delta1 (share of pixels with max(p/t, t/p) < 1.25). A constant
    prediction aligns to the mean true disparity: the trivial reference."""
    valid = valid & (depth <= max_depth)
    aligned = align_disparity(disparity, depth, valid)
    absrel, delta1 = [], []
    for pred, true, mask in zip(aligned, depth.float(), valid, strict=True):
        if not mask.any():
            continue
        pred_depth, true_depth = 1.0 / pred[mask].clamp(min=1.0 / max_depth), true[mask]
        absrel.append(((pred_depth - true_depth).abs() / true_depth).mean())
        ratio = torch.maximum(pred_depth / true_depth, true_depth / pred_depth)
        delta1.append((ratio < 1.25).float().mean())
    return {
        "absrel": float(torch.stack(absrel).mean()),
        "delta1": float(torch.stack(delta1).mean()),
    }


def _distance_to_truth(points: Tensor, target_xy: Tensor) -> Tensor:
    """Distance of each query's point(s) to the nearest of its true locations. `points` (Q, 2)
    or (P, 2) shared by all queries; `target_xy` (Q, 2), or (Q, K, 2) with NaN rows padding the
    queries that have fewer than K acceptable locations (symmetric keypoints). -> (Q,) or
    (Q, P)."""
    truth = target_xy.float()
    if truth.dim() == 2:
        truth = truth[:, None, :]
    if points.dim() == 2 and points.shape[0] == truth.shape[0]:
        distance = (points[:, None, :] - truth).norm(dim=-1)  # (Q, K)
    else:
        distance = (points[None, :, None, :] - truth[:, None, :, :]).norm(dim=-1)  # (Q, P, K)
    return distance.nan_to_num(math.inf).amin(dim=-1)


def random_match_recall(
    grid: tuple[int, int], target_xy: Tensor, thresholds: tuple[float, ...]
) -> dict[str, float]:
    """What `correspondence_recall` expects from a match drawn uniformly among the target's
    patches: per query, the share of patch centres within each threshold of the truth (of the
    nearest of its acceptable locations when `target_xy` is (Q, K, 2))."""
    rows, cols = grid
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    centres = torch.stack([xs.flatten(), ys.flatten()], dim=1).float() + 0.5
    truth = target_xy.float().reshape(-1, *target_xy.shape[-(target_xy.dim() - 1) :])
    error = _distance_to_truth(centres, truth)  # (Q, P)
    return {f"recall@{t:g}px": float((error <= t).float().mean()) for t in thresholds}


def correspondence_recall(
    source: Tensor, target: Tensor, target_xy: Tensor, thresholds: tuple[float, ...]
) -> dict[str, float]:
    """Nearest-neighbour matching of query features `source` (Q, D) into a dense target map
    `target` (H, W, D); recall = share of queries whose match lands within each pixel
    threshold of the true location `target_xy` (Q, 2) in (x, y) pixels, or of the nearest of
    several acceptable ones ((Q, K, 2), NaN-padded)."""
    _, width, dim = target.shape
    flat = F.normalize(target.reshape(-1, dim).float(), dim=-1)
    best = (F.normalize(source.float(), dim=-1) @ flat.T).argmax(dim=1)
    found = torch.stack([best % width, best // width], dim=1).float() + 0.5
    error = _distance_to_truth(found, target_xy)
    return {f"recall@{t:g}px": float((error <= t).float().mean()) for t in thresholds}


def query_recalls(
    patches: Tensor,
    queries: list[tuple[int, int, int, int, np.ndarray]],
    step: float,
    thresholds_px: tuple[float, ...],
) -> Scores:
    """Mean recall of nearest-patch matches in `patches` (images, rows, cols, D) of (source
    image, row, col, target image, true xy) queries (xy: (2,), or (K, 2) acceptable locations
    of which the nearest counts), with a uniform match's as trivial;
    locations and thresholds in image pixels (the matching itself runs on the patch grid, whose
    cells are `step` pixels wide). Queries into one target are matched at once."""
    if not queries:
        return {}
    thresholds = tuple(t / step for t in thresholds_px)
    names = [f"recall@{t:g}px" for t in thresholds_px]
    found: dict[str, list[float]] = {name: [] for name in names}
    chance: dict[str, list[float]] = {name: [] for name in names}
    counts: list[int] = []
    by_target: dict[int, list[tuple[int, int, int, np.ndarray]]] = {}
    for source, row, col, target, xy in queries:
        by_target.setdefault(target, []).append((source, row, col, xy))
    for target, items in by_target.items():
        sources = torch.stack([patches[s, r, c] for s, r, c, _ in items])
        # Each query's acceptable locations (one, or several for a symmetric keypoint),
        # NaN-padded to a common count.
        spots = [np.asarray(xy, dtype=np.float64).reshape(-1, 2) for *_, xy in items]
        padded = np.full((len(spots), max(len(x) for x in spots), 2), np.nan)
        for index, xy in enumerate(spots):
            padded[index, : len(xy)] = xy
        truth = torch.tensor(padded / step, dtype=torch.float32)
        recall = correspondence_recall(sources, patches[target], truth, thresholds)
        random = random_match_recall(tuple(patches.shape[1:3]), truth, thresholds)  # type: ignore[arg-type]
        for name, value, expected in zip(names, recall.values(), random.values(), strict=True):
            found[name].append(value)
            chance[name].append(expected)
        counts.append(len(items))
    weights = np.asarray(counts, dtype=np.float64)
    return {
        name: Score(
            float(np.average(found[name], weights=weights)),
            float(np.average(chance[name], weights=weights)),
        )
        for name in names
    }
