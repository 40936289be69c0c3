"""The object-level instruments of the mini suite, on planted encoders: one that carries what
the metric asks (a *seeing* encoder: the truth planted in its features) must beat the trivial
predictor clearly; one that does not (a *blind* encoder: patch position, noise, a constant) must
not. An instrument a seeing encoder cannot pass, or a blind one can, is broken."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mtv.eval.contract import evaluators_of, measure
from mtv.eval.evaluators.object_depth import relief_scores, trivial_relief_rmse, visible_objects
from mtv.eval.evaluators.object_shape import object_crops, square_window
from mtv.eval.evaluators.semantic_correspondence import cross_image_queries, sightings_by_shape
from mtv.eval.metrics import query_recalls
from mtv.eval.mini import (
    COLOR_NAMES,
    EVAL_SEED,
    SINGLE_OBJECT_SEED,
    MiniData,
    halves,
    view_halves,
)
from mtv.eval.model import Features
from mtv.specs import EvalSpec
from mtv.world.geometry import KEYPOINT_CLASSES, KEYPOINTS, SHAPE_NAMES
from mtv.world.render import KEYPOINT_IDS
from mtv.world.scene import sample_scene

SIZE, GRID = 64, 8
SIZES = ("small", "large")


@pytest.fixture(scope="module")
def data() -> MiniData:
    return MiniData.render(80, SIZE)


def object_identity_patches(data: MiniData) -> torch.Tensor:
    """A seeing encoder for relief: each patch carries the one-hot shape and size of the object
    covering most of it (zeros on floor and sky)."""
    out = torch.zeros(len(data.views), GRID, GRID, len(SHAPE_NAMES) + len(SIZES))
    cell = SIZE // GRID
    for n, view in enumerate(data.views):
        objects = data.scenes[view.scene_index].objects
        blocks = view.instance.reshape(GRID, cell, GRID, cell).transpose(0, 2, 1, 3)
        for r in range(GRID):
            for c in range(GRID):
                main = np.bincount(blocks[r, c].ravel()).argmax()
                if main:
                    obj = objects[main - 1]
                    out[n, r, c, SHAPE_NAMES.index(obj.shape)] = 1
                    out[n, r, c, len(SHAPE_NAMES) + SIZES.index(obj.size)] = 1
    return out


def test_relief_is_the_visible_surface_in_front_of_the_object_base(data: MiniData) -> None:
    """Visible surfaces face the camera: nearer than the floor point under the object's centre,
    by less than the largest object's extent (a wrong camera transform breaks both)."""
    reliefs = np.array([r for *_, r in visible_objects(data)])
    assert len(reliefs) > 200
    assert (reliefs < 0).mean() > 0.95
    assert np.abs(reliefs).max() < 1.5


def test_object_depth_sees_a_seeing_encoder_and_not_a_blind_one(data: MiniData) -> None:
    n = len(data.views)
    seeing = relief_scores(object_identity_patches(data), data)["relief_rmse"]
    assert seeing.trivial is not None and seeing.value < 0.8 * seeing.trivial
    position = torch.eye(GRID * GRID).reshape(1, GRID, GRID, -1).expand(n, -1, -1, -1)
    noise = torch.randn(n, GRID, GRID, 16, generator=torch.Generator().manual_seed(0))
    for blind in (position.clone(), noise):
        score = relief_scores(blind, data)["relief_rmse"]
        assert score.trivial == seeing.trivial  # the references do not depend on the encoder
        assert score.value > 0.95 * score.trivial


@pytest.mark.parametrize("width", [128, 384])
def test_features_that_say_nothing_cost_the_relief_probe_nothing(
    data: MiniData, width: int
) -> None:
    """Noise of an encoder's width beside the apparent position and size scores the trivial
    predictor's RMSE, not worse: a score above the trivial one is not a penalty of width."""
    noise = torch.randn(
        len(data.views), GRID, GRID, width, generator=torch.Generator().manual_seed(1)
    )
    score = relief_scores(noise, data)["relief_rmse"]
    assert score.trivial is not None
    assert abs(score.value / score.trivial - 1) < 0.02, (score.value, score.trivial)


class CropOracle:
    """Duck-types FrozenModel for `object_shape`: a crop's pooled embedding is the one-hot of
    its object's shape and colour (looked up by the crop's pixels when `seeing`; the same
    vector for every image when blind); a text's the one-hot of the shape and colour words in it.
    """

    size = SIZE
    has_text = True

    def __init__(self, data: MiniData, seeing: bool):
        crops = object_crops(data, SIZE)
        shapes, colours = data.single_labels("shape"), data.single_labels("color")
        self.codes = {
            crop.tobytes(): (int(s), int(c))
            for crop, s, c in zip(crops, shapes, colours, strict=True)
        }
        self.seeing = seeing

    def _code(self, shape: int, colour: int) -> torch.Tensor:
        out = torch.zeros(len(SHAPE_NAMES) + len(COLOR_NAMES))
        out[shape], out[len(SHAPE_NAMES) + colour] = 1.0, 1.0
        return out

    def images(self, images: np.ndarray) -> Features:
        codes = [self.codes[image.tobytes()] if self.seeing else (0, 0) for image in images]
        pooled = torch.stack([self._code(*code) for code in codes])
        return Features(pooled, pooled[:, None, None, :])

    def texts(self, texts: list[str]) -> torch.Tensor:
        def found(names: tuple[str, ...], text: str) -> int:
            return next(i for i, name in enumerate(names) if f" {name}" in f" {text}")

        return torch.stack(
            [self._code(found(SHAPE_NAMES, t), found(COLOR_NAMES, t)) for t in texts]
        )


def test_object_shape_sees_a_seeing_encoder_and_not_a_blind_one(data: MiniData) -> None:
    settings = EvalSpec(suite="mini", only=["object_shape"])
    assert "object_shape" in evaluators_of("mini")
    seeing = {
        metric: (value, trivial)
        for _, metric, value, trivial, *_ in measure(CropOracle(data, True), settings, data).rows()
    }
    assert set(seeing) == {"shape_top1", "shape_acc", "color_top1", "color_acc"}
    # Zero-shot is exact; the probes meet a few test objects of a class that the 40 training
    # objects lack, which no probe can name.
    assert seeing["shape_top1"][0] == 1.0 and seeing["color_top1"][0] == 1.0
    for value, trivial in seeing.values():
        assert value > 0.85 and trivial < 0.35
    blind = measure(CropOracle(data, False), settings, data)
    for _, metric, value, trivial, *_ in blind.rows():
        # One class for every image: at most that class's share, near chance / majority.
        assert value <= trivial + 0.1, (metric, value, trivial)


@pytest.mark.parametrize("evaluator", ["zero_shot", "object_shape"])
def test_zero_shot_chance_is_the_most_common_class_not_one_over_the_classes(
    data: MiniData, evaluator: str
) -> None:
    """The single-object scenes' classes are not balanced: answering the most common class
    scores its share, which is the trivial score, and an encoder that answers one class for
    every image cannot beat it."""
    rows = measure(CropOracle(data, False), EvalSpec(suite="mini", only=[evaluator]), data)
    for _, metric, value, trivial, *_ in rows.rows():
        if not metric.endswith("_top1"):
            continue
        labels = data.single_labels(metric.removesuffix("_top1")).numpy()
        majority = np.bincount(labels).max() / len(labels)
        assert trivial == pytest.approx(majority), metric
        assert value <= trivial + 1e-9, (metric, value, trivial)


def test_object_crops_zoom_on_the_object(data: MiniData) -> None:
    """A crop is the object's box, squared with its margin: the object fills far more of it than
    of the whole image (measured on the instance masks cropped the same way)."""
    crops = object_crops(data, SIZE)
    assert crops.shape == (len(data.singles), SIZE, SIZE, 3) and crops.dtype == np.uint8
    whole = np.mean([(v.instance > 0).mean() for v in data.singles])
    masks = replace(
        data,
        single_images=np.stack(
            [np.repeat((v.instance > 0)[..., None] * 255, 3, -1) for v in data.singles]
        ).astype(np.uint8),
    )
    zoomed = (object_crops(masks, SIZE)[..., 0] > 127).mean()
    assert zoomed > 3 * whole and zoomed > 0.3


def test_the_suite_renders_its_scenes_with_the_training_cameras() -> None:
    """A corpus rendered with closer cameras is evaluated on scenes seen as closely (else the
    encoder meets objects at sizes it never saw); the scenes kept are the ones rendered."""
    from types import SimpleNamespace

    from mtv.eval.mini import mini_camera_distance
    from mtv.specs.experiment import MiniWorldSourceSpec, ShardsSourceSpec

    def model(source: object) -> SimpleNamespace:
        return SimpleNamespace(spec=SimpleNamespace(data=SimpleNamespace(source=source)))

    near = MiniWorldSourceSpec(camera_distance=(3.0, 4.0))
    assert mini_camera_distance(model(near)) == (3.0, 4.0)
    assert mini_camera_distance(model(ShardsSourceSpec(urls=["x.tar"]))) == (5.0, 6.5)
    close = MiniData.render(6, 32, (3.0, 4.0))
    for view in close.views:
        scene = close.scenes[view.scene_index]
        assert scene == sample_scene(EVAL_SEED, view.scene_index, 2, None, (3.0, 4.0))
        position = np.array(scene.cameras[view.view].position)
        assert 3.0 <= np.linalg.norm(position) <= 4.0
    for view, scene in zip(close.singles, close.single_scenes, strict=True):
        assert scene.index == view.scene_index and len(scene.objects) == 1


def keypoint_class_patches(data: MiniData) -> torch.Tensor:
    """A seeing encoder for semantic correspondence: each patch carries the one-hot (shape,
    symmetry class) of the visible keypoints in it, the most a yaw-invariant appearance allows
    (a cube's four top corners look alike), over a faint constant channel."""
    names = sorted({(s, g) for s, c in KEYPOINT_CLASSES.items() for g in c.values() if g})
    out = torch.zeros(len(data.views), GRID, GRID, len(names) + 1)
    out[..., -1] = 0.05
    cell = SIZE // GRID
    for n, view in enumerate(data.views):
        for _, kp_id, x, y, visible in view.keypoints:
            shape, name = KEYPOINT_IDS[int(kp_id)]
            group = KEYPOINT_CLASSES[shape][name]
            if visible and group:
                row, col = min(int(y // cell), GRID - 1), min(int(x // cell), GRID - 1)
                out[n, row, col, names.index((shape, group))] += 1
    return out


def test_keypoints_of_one_class_are_what_a_turn_maps_onto_each_other() -> None:
    # yaw-equivalent points share their height and distance from the vertical axis; points of
    # two classes of one shape must not (else nothing tells the classes apart either)
    for shape, points in KEYPOINTS.items():
        assert set(KEYPOINT_CLASSES[shape]) == set(points)
        where: dict[str, set[tuple[float, float]]] = {}
        for name, (x, y, z) in points.items():
            group = KEYPOINT_CLASSES[shape][name]
            if group is not None:
                where.setdefault(group, set()).add((round(y, 6), round(math.hypot(x, z), 6)))
        assert all(len(v) == 1 for v in where.values()), (shape, where)
        assert len({next(iter(v)) for v in where.values()}) == len(where), shape


def test_semantic_correspondence_sees_a_seeing_encoder_and_not_a_blind_one(
    data: MiniData,
) -> None:
    queries = cross_image_queries(sightings_by_shape(data.views), SIZE / GRID, GRID)
    assert len(queries) > 300
    assert all(source != target for source, _, _, target, _ in queries)  # never its own image
    threshold = (0.1 * SIZE,)
    recall = f"recall@{0.1 * SIZE:g}px"
    seeing = query_recalls(keypoint_class_patches(data), queries, SIZE / GRID, threshold)[recall]
    assert seeing.value > 0.9 and seeing.trivial is not None and seeing.trivial < 0.2
    n = len(data.views)
    noise = torch.randn(n, GRID, GRID, 16, generator=torch.Generator().manual_seed(0))
    position = torch.eye(GRID * GRID).reshape(1, GRID, GRID, -1).expand(n, -1, -1, -1).clone()
    for blind in (noise, position):
        score = query_recalls(blind, queries, SIZE / GRID, threshold)[recall]
        assert score.value < seeing.trivial + 0.1


def test_the_relief_trivial_is_chosen_without_the_test_labels() -> None:
    # On the training objects apparent position says nothing about relief; on the test objects
    # it happens to say everything. Choosing by the test labels would take the probe (RMSE 0);
    # chosen on training rows, the trivial predictor is the constant.
    gen = torch.Generator().manual_seed(0)
    apparent = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    relief = torch.randn(400, generator=gen, dtype=torch.float64)
    train = torch.arange(400) < 200
    relief[~train] = 0.5 * apparent[~train, 0]
    constant = float(((relief[~train] - relief[train].mean()) ** 2).mean().sqrt())
    assert trivial_relief_rmse(apparent, relief, train) == pytest.approx(constant)
    # where the apparent position does predict relief on the training objects, the probe wins
    relief[train] = 0.5 * apparent[train, 0]
    assert trivial_relief_rmse(apparent, relief, train) < 0.1 * constant


@pytest.mark.parametrize(
    ("cx", "cy", "half"), [(32, 32, 10), (2, 60, 9.5), (63, 0, 12), (10, 50, 40), (5, 5, 0.2)]
)
def test_a_crop_window_stays_square_inside_the_image(cx: float, cy: float, half: float) -> None:
    left, top, right, bottom = square_window(cx, cy, half, SIZE)
    assert right - left == bottom - top == min(SIZE, max(1, math.ceil(2 * half)))
    assert left >= 0 and top >= 0 and right <= SIZE and bottom <= SIZE
    if 2 * half < SIZE:  # the object's centre stays inside the window
        assert left <= cx <= right and top <= cy <= bottom


@pytest.mark.parametrize("scenes", [4, 5, 7, 500])
def test_probes_on_views_never_split_a_scene(scenes: int) -> None:
    train, test = view_halves(2 * scenes)
    assert train.stop == test.start and train.stop % 2 == 0  # a cut between two scenes
    assert train.stop - train.start >= 2 * (scenes // 2) and test.stop == 2 * scenes
    if scenes % 2 == 0:  # the cut every evaluation so far used
        assert (train, test) == halves(2 * scenes)


def test_a_corpus_cannot_be_drawn_from_the_suites_held_out_seeds() -> None:
    from mtv.specs.experiment import MiniWorldSourceSpec

    for seed in (EVAL_SEED, SINGLE_OBJECT_SEED):
        with pytest.raises(ValueError, match="held-out evaluation scenes"):
            MiniWorldSourceSpec(seed=seed)
    assert MiniWorldSourceSpec(seed=7).seed == 7
