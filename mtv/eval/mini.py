"""The `mini` evaluation suite: every evaluator on held-out mini-world scenes with exact ground
truth (rendered in memory from seeds the training corpus never uses), in a minute on a CPU.

Two held-out sets: `scenes` multi-object scenes seen from two cameras (retrieval, probes,
correspondence, depth), and `scenes` single-object scenes, whole images as in training, whose
object's shape and colour are the labels of the zero-shot and pooled-embedding probes. Every
metric comes with the score of a trivial predictor on the same data (`Score.trivial`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

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
from mtv.eval.model import Features, FrozenModel, class_embeddings
from mtv.eval.probes import (
    classifier_probe_accuracy,
    depth_probe_scores,
    dpt_depth_probe_scores,
    patch_depth,
    segmentation_probe_scores,
)
from mtv.tasks.depth import default_depth_layers
from mtv.world.geometry import SHAPE_NAMES
from mtv.world.render import CLASS_NAMES, RenderedView, render_views
from mtv.world.scene import COLORS, sample_scene

EVAL_SEED = 1_000_003  # never a training seed: the suite's scenes are held out
SINGLE_OBJECT_SEED = 1_000_033  # the held-out single-object scenes
COLOR_NAMES = tuple(COLORS)
# Zero-shot prompts in the captions' own language; a class's text embedding is the mean over
# these templates and over every value of the other attribute ("a red cube", "a blue cube", ...
# for the class "cube").
TEMPLATES = ("a {}.", "a rendering of a {}.", "a {} on a floor.", "one object on a floor: a {}.")
GALLERY = 100  # retrieval galleries: consecutive blocks of this many scenes
MAX_PROBE_DEPTH = 20.0  # world units; about the 95th percentile of patch depth in the mini-world


@dataclass
class MiniData:
    views: list[RenderedView]  # multi-object scene i's two views at 2i and 2i + 1
    images: np.ndarray  # (2 scenes, H, W, 3)
    singles: list[RenderedView]  # single-object scenes whose object is visible, one view each
    single_images: np.ndarray  # (len(singles), H, W, 3)

    @classmethod
    def render(cls, scenes: int, size: int) -> MiniData:
        items = [(sample_scene(EVAL_SEED, i, views=2), v) for i in range(scenes) for v in range(2)]
        views = _render(items, size)
        ones = [(sample_scene(SINGLE_OBJECT_SEED, i, n_objects=1), 0) for i in range(scenes)]
        singles = [view for view in _render(ones, size) if len(view.boxes) == 1]
        return cls(
            views,
            np.stack([v.rgb for v in views]),
            singles,
            np.stack([v.rgb for v in singles]) if singles else np.zeros((0, size, size, 3)),
        )

    def single_labels(self, attribute: str) -> torch.Tensor:
        """The shape or colour class of each single-object scene's object."""
        names = SHAPE_NAMES if attribute == "shape" else COLOR_NAMES
        scenes = [
            sample_scene(SINGLE_OBJECT_SEED, v.scene_index, n_objects=1) for v in self.singles
        ]
        return torch.tensor([names.index(getattr(s.objects[0], attribute)) for s in scenes])


def _render(items: list, size: int) -> list[RenderedView]:
    return [
        view
        for start in range(0, len(items), 128)
        for view in render_views(items[start : start + 128], size)
    ]


@dataclass
class MiniFeatures:
    views: Features  # of MiniData.images
    singles: Features  # of MiniData.single_images


def _attribute_texts(model: FrozenModel, attribute: str) -> torch.Tensor:
    """One text embedding per class of `attribute`, averaged over the templates and the other
    attribute's values."""
    if attribute == "shape":
        names = [[f"{c} {s}" for c in COLOR_NAMES] for s in SHAPE_NAMES]
    else:
        names = [[f"{c} {s}" for s in SHAPE_NAMES] for c in COLOR_NAMES]
    flat = [phrase for group in names for phrase in group]
    per_phrase = class_embeddings(model, flat, TEMPLATES)
    return per_phrase.reshape(len(names), len(names[0]), -1).mean(1)


def zero_shot(model: FrozenModel, data: MiniData, features: MiniFeatures) -> Scores:
    """Single-object scenes classified by shape (7) and by colour (10) with prompt-ensembled
    class texts; top-1 accuracy. Trivial: chance, 1/classes."""
    out: Scores = {}
    for attribute, count in (("shape", len(SHAPE_NAMES)), ("color", len(COLOR_NAMES))):
        accuracy = zero_shot_accuracy(
            features.singles.pooled,
            _attribute_texts(model, attribute),
            data.single_labels(attribute),
            (1,),
        )
        out[f"{attribute}_top1"] = Score(accuracy["top1"], 1 / count)
    return out


def _halves(n: int) -> tuple[slice, slice]:
    return slice(0, n // 2), slice(n // 2, n)


def pooled_probe(model: FrozenModel, data: MiniData, features: MiniFeatures) -> Scores:
    """A linear probe of the pooled embedding on the single-object scenes (trained on the first
    half, tested on the second): shape and colour accuracy. Global semantics that respond even
    where the text tower has not learned the words yet. Trivial: the majority class."""
    train, test = _halves(len(data.singles))
    pooled = features.singles.pooled
    out: Scores = {}
    for attribute, count in (("shape", len(SHAPE_NAMES)), ("color", len(COLOR_NAMES))):
        labels = data.single_labels(attribute)
        out[f"{attribute}_acc"] = classifier_probe_accuracy(
            pooled[train], labels[train], pooled[test], labels[test], count
        )
    return out


def retrieval(model: FrozenModel, data: MiniData, features: MiniFeatures) -> Scores:
    """Caption <-> scene retrieval within fixed galleries of GALLERY scenes (one view each;
    scenes 0-99, 100-199, ...), recall averaged over the galleries. Trivial: k / gallery."""
    first = torch.arange(0, len(data.views), 2)  # one view per scene: captions differ per scene
    text = model.texts([data.views[i].caption for i in first.tolist()])
    pooled = features.views.pooled[first]
    size = min(GALLERY, len(first))
    recalls: dict[str, list[float]] = {}
    for start in range(0, len(first) - size + 1, size):
        block = slice(start, start + size)
        found = retrieval_recall(pooled[block], text[block], torch.arange(size))
        for name, value in found.items():
            recalls.setdefault(name, []).append(value)
    return {
        name: Score(float(np.mean(values)), int(name.rsplit("r", 1)[1]) / size)
        for name, values in recalls.items()
    }


def segmentation(model: FrozenModel, data: MiniData, features: MiniFeatures) -> Scores:
    """Linear probe of patch tokens -> semantic class (sky, floor, 7 shapes); mIoU in pixels.
    Trivial: the most frequent class everywhere."""
    semantic = np.stack([v.semantic for v in data.views]).astype(np.int64)
    train, test = _halves(len(semantic))
    patches = features.views.patches
    return segmentation_probe_scores(
        patches[train], semantic[train], patches[test], semantic[test], len(CLASS_NAMES)
    )


def depth_probe(model: FrozenModel, data: MiniData, features: MiniFeatures) -> Scores:
    """[global ; patch] -> 256 depth bins (the paper's protocol), per patch of depth up to
    `MAX_PROBE_DEPTH`; RMSE and AbsRel. Trivial: the median training depth everywhere."""
    depth = np.stack([v.depth for v in data.views])
    views = features.views
    target, whole = patch_depth(depth, np.isfinite(depth), views.patches.shape[1])
    # Patches that see no sky, nearer than the cap (as NYUv2's 10 m): the floor near the horizon
    # reaches hundreds of units and would make RMSE a measure of a few patches.
    valid = whole & (target <= MAX_PROBE_DEPTH)
    train, test = _halves(len(depth))
    return depth_probe_scores(
        Features(views.pooled[train], views.patches[train]),
        target[train],
        valid[train],
        Features(views.pooled[test], views.patches[test]),
        target[test],
        valid[test],
    )


def depth_dpt_probe(model: FrozenModel, data: MiniData, features: MiniFeatures) -> Scores:
    """A fresh DPT head trained on the frozen encoder's 4 tapped layers (DINOv2's DPT depth
    evaluation; the linear probe's counterpart with spatial context), metric depth per 2 x 2
    pixel block up to `MAX_PROBE_DEPTH`; RMSE and AbsRel. Trivial: the median training depth
    everywhere."""
    taps = default_depth_layers(model.graph.student.encoder.spec.depth)
    maps, grid = model.layers(data.images, taps)
    # At half the image resolution (2 x 2 pixel blocks, valid where all 4 are): a quarter of
    # the decoder's work at the finest scale, which dominates the probe's cost on a CPU.
    depth, valid = _half_resolution(np.stack([v.depth for v in data.views]))
    train, test = _halves(len(depth))
    return dpt_depth_probe_scores(
        [m[train] for m in maps],
        depth[train],
        valid[train],
        [m[test] for m in maps],
        depth[test],
        valid[test],
        grid,
    )


def _half_resolution(depth: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S, S) depth (inf for sky) -> (N, S/2, S/2) mean depth of each 2 x 2 block and
    whether the block is finite and no deeper than `MAX_PROBE_DEPTH` everywhere."""
    blocks = torch.from_numpy(depth).unflatten(1, (-1, 2)).unflatten(3, (-1, 2))
    mean = blocks.mean(dim=(2, 4))
    valid = (torch.isfinite(blocks) & (blocks <= MAX_PROBE_DEPTH)).all(4).all(2)
    return torch.where(valid, mean, 0.0), valid


def geometric_correspondence(model: FrozenModel, data: MiniData, features: MiniFeatures) -> Scores:
    """Object patch centres of view 0, reprojected into view 1 with the true depth and cameras
    (where not occluded), matched by nearest patch feature; recall at pixel thresholds.
    Trivial: a match drawn uniformly among the target's patches."""
    size = data.images.shape[1]
    grid = features.views.patches.shape[1]
    step = size / grid
    centres = (np.arange(grid) + 0.5) * step
    queries: list[tuple[int, int, int, int, np.ndarray]] = []  # source, row, col, target, xy
    for i in range(0, len(data.views), 2):
        first, second = data.views[i], data.views[i + 1]
        rows, cols = np.meshgrid(centres.astype(int), centres.astype(int), indexing="ij")
        object_patch = first.instance[rows, cols] > 0
        z = np.where(object_patch, first.depth[rows, cols], 1.0)  # sky depth is inf
        k, pose = first.intrinsics.astype(np.float64), first.world_to_camera.astype(np.float64)
        camera = np.stack(
            [(cols + 0.5 - k[0, 2]) / k[0, 0] * z, (rows + 0.5 - k[1, 2]) / k[1, 1] * z, z], -1
        )
        world = (camera - pose[:3, 3]) @ pose[:3, :3]
        k2, pose2 = second.intrinsics.astype(np.float64), second.world_to_camera.astype(np.float64)
        cam2 = world @ pose2[:3, :3].T + pose2[:3, 3]
        xy = cam2[..., :2] / cam2[..., 2:] * np.diag(k2)[:2] + k2[:2, 2]
        inside = object_patch & (cam2[..., 2] > 0) & (xy >= 0).all(-1) & (xy < size).all(-1)
        px = np.clip(xy.astype(int), 0, size - 1)
        seen = inside & (
            np.abs(second.depth[px[..., 1], px[..., 0]] - cam2[..., 2]) < 0.02 * cam2[..., 2]
        )
        queries += [(i, r, c, i + 1, xy[r, c]) for r, c in zip(*np.nonzero(seen), strict=True)]
    return _recalls(features.views, queries, step, (size / 16, size / 8, size / 4))


def _recalls(
    features: Features,
    queries: list[tuple[int, int, int, int, np.ndarray]],
    step: float,
    thresholds_px: tuple[float, ...],
) -> Scores:
    """Mean recall of nearest-patch matches of (source image, row, col, target image, true xy)
    queries; locations and thresholds in image pixels (the matching itself runs on the patch
    grid, whose cells are `step` pixels wide). Queries into one target are matched at once."""
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
    patches = features.patches
    for target, items in by_target.items():
        sources = torch.stack([patches[s, r, c] for s, r, c, _ in items])
        truth = torch.tensor(np.stack([xy for *_, xy in items]) / step, dtype=torch.float32)
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


def semantic_correspondence(model: FrozenModel, data: MiniData, features: MiniFeatures) -> Scores:
    """Keypoints of the same kind on different instances (different scenes): the nearest patch
    feature in the other image must land within 10% of the image side (PCK@0.1). Trivial: a
    match drawn uniformly among the target's patches."""
    size = data.images.shape[1]
    grid = features.views.patches.shape[1]
    step = size / grid
    by_kind: dict[int, list[tuple[int, float, float]]] = {}
    for index, view in enumerate(data.views[0::2]):
        for _, kp_id, x, y, visible in view.keypoints:
            if visible:
                by_kind.setdefault(int(kp_id), []).append((2 * index, float(x), float(y)))
    queries = []
    for points in by_kind.values():
        for (a, xa, ya), (b, xb, yb) in itertools.pairwise(points):
            row, col = min(int(ya / step), grid - 1), min(int(xa / step), grid - 1)
            queries.append((a, row, col, b, np.array([xb, yb])))
    recall = _recalls(features.views, queries, step, (0.1 * size,))
    return {"pck@0.1": recall[f"recall@{0.1 * size:g}px"]} if recall else {}


def relative_depth(model: FrozenModel, data: MiniData, features: MiniFeatures) -> Scores:
    """The run's own depth head, zero-shot: AbsRel and delta1 after scale-and-shift alignment,
    up to `MAX_PROBE_DEPTH`. Trivial: a constant disparity map."""
    if not model.has_depth_head:
        return {}
    disparity = model.disparity(data.images)
    depth = torch.from_numpy(np.stack([v.depth for v in data.views]))
    valid = torch.isfinite(depth)
    errors = relative_depth_errors(disparity, depth, valid, MAX_PROBE_DEPTH)
    constant = relative_depth_errors(torch.ones_like(disparity), depth, valid, MAX_PROBE_DEPTH)
    return {name: Score(value, constant[name]) for name, value in errors.items()}


Evaluator = Callable[[FrozenModel, MiniData, MiniFeatures], Scores]
EVALUATORS: dict[str, Evaluator] = {
    "zero_shot": zero_shot,
    "pooled_probe": pooled_probe,
    "retrieval": retrieval,
    "segmentation": segmentation,
    "depth_probe": depth_probe,
    "depth_dpt_probe": depth_dpt_probe,
    "geometric_correspondence": geometric_correspondence,
    "semantic_correspondence": semantic_correspondence,
    "relative_depth": relative_depth,
}
# Evaluators that read the text tower (a run without one cannot be measured by them).
NEEDS_TEXT = frozenset({"zero_shot", "retrieval"})


def run_mini_suite(
    model: FrozenModel,
    only: list[str] | None = None,
    scenes: int = 500,
    data: MiniData | None = None,
) -> pl.DataFrame:
    """Rows (evaluator, metric, value, trivial, higher_is_better) for the chosen evaluators.
    `data`: the held-out scenes, when already rendered (e.g. for a second model)."""
    unknown = sorted(set(only or []) - set(EVALUATORS))
    if unknown:
        raise ValueError(f"unknown evaluator(s) {unknown}; known: {', '.join(EVALUATORS)}")
    if data is None:
        data = MiniData.render(scenes, mini_size(model))
    features = MiniFeatures(model.images(data.images), model.images(data.single_images))
    chosen = only or list(EVALUATORS)
    if not model.has_text:
        chosen = [name for name in chosen if name not in NEEDS_TEXT]
    return result_rows({name: EVALUATORS[name](model, data, features) for name in chosen})


def mini_size(model: FrozenModel) -> int:
    """The resolution the suite renders at: the training corpus's when it is the mini-world."""
    return getattr(model.spec.data.source, "image_size", model.size)
