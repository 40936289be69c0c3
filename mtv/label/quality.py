"""How good are pseudo-labels? A label store of mini-world images measured against the exact
ground truth, in the terms the experts' papers report: relative depth as AbsRel and delta1 after
per-image scale-and-shift alignment (Depth Anything V2's zero-shot protocol), boxes as recall and
precision at IoU >= 0.5 with the share of matched boxes that carry the right entity name.

This is what the oracle's noise model is calibrated with, so a reproduction can train on labels
as good (and as bad) as real experts give."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mtv.data.store import LabelStore
from mtv.eval.metrics import relative_depth_errors
from mtv.world.corpus import GroundTruth

# Depth is scored where the truth is no deeper than this (as the mini suite's depth metrics).
MAX_DEPTH = 20.0
IOU_MATCH = 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) xyxy -> (n, m) intersection over union."""
    a, b = a.reshape(-1, 4)[:, None], b.reshape(-1, 4)[None]
    low, high = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.clip(high - low, 0, None).prod(-1)
    area = lambda x: np.clip(x[..., 2:] - x[..., :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def _greedy_matches(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (label, truth) taken in order of decreasing IoU, each box at most once."""
    pairs = []
    used_label, used_truth = set(), set()
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < threshold:
            break
        if i not in used_label and j not in used_truth:
            pairs.append((int(i), int(j)))
            used_label.add(i)
            used_truth.add(j)
    return pairs


def label_quality(
    store: LabelStore, truth: GroundTruth, keys: Sequence[str] | None = None
) -> dict[str, float]:
    """Quality of the store's depth and box labels against the ground truth over `keys` (all of
    the store's by default): depth_absrel, depth_delta1, box_recall, box_precision,
    name_accuracy (of matched boxes), boxes_per_image (labels) and true_boxes_per_image."""
    keys = list(store.keys if keys is None else keys)
    kinds = set(store.attrs.get("kinds", []))
    out: dict[str, float] = {}
    if "depth" in kinds:
        predicted, depths, valids = [], [], []
        for key in keys:
            disparity, valid = store.depth(key)
            depth = truth.dense("depth", key)
            size = disparity.shape[-1]
            # The truth at the label's resolution, sampled at the label pixels' centres.
            true_depth = F.interpolate(
                torch.from_numpy(np.where(np.isfinite(depth), depth, np.inf))[None, None],
                size=(size, size),
                mode="nearest",
            )[0, 0]
            predicted.append(torch.from_numpy(disparity))
            depths.append(true_depth)
            valids.append(torch.from_numpy(valid) & torch.isfinite(true_depth))
        errors = relative_depth_errors(
            torch.stack(predicted), torch.stack(depths), torch.stack(valids), MAX_DEPTH
        )
        out["depth_absrel"], out["depth_delta1"] = errors["absrel"], errors["delta1"]
    if "boxes" in kinds:
        matched = named = labelled = true_total = 0
        for key in keys:
            label = store.boxes(key)
            true_boxes, true_names = truth.boxes(key)
            pairs = _greedy_matches(box_iou(label.boxes, true_boxes), IOU_MATCH)
            matched += len(pairs)
            named += sum(label.names[i] == true_names[j] for i, j in pairs)
            labelled += len(label.names)
            true_total += len(true_names)
        out["box_recall"] = matched / max(true_total, 1)
        out["box_precision"] = matched / max(labelled, 1)
        out["name_accuracy"] = named / max(matched, 1)
        out["boxes_per_image"] = labelled / max(len(keys), 1)
        out["true_boxes_per_image"] = true_total / max(len(keys), 1)
    return out
