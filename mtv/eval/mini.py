"""The `mini` suite's data: held-out mini-world scenes with exact ground truth (rendered in
memory from seeds the training corpus never uses), in a minute on a CPU. Its evaluators are in
`mtv/eval/evaluators/` (each registered for the suite `mini`).

Two held-out sets: `scenes` multi-object scenes seen from two cameras (retrieval, probes,
correspondence, depth), and `scenes` single-object scenes, whole images as in training, whose
object's shape and colour are the labels of the zero-shot and pooled-embedding probes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mtv.eval.model import FrozenModel
from mtv.specs.experiment import HELD_OUT_WORLD_SEEDS
from mtv.world.geometry import SHAPE_NAMES
from mtv.world.render import RenderedView, render_views
from mtv.world.scene import CAMERA_DISTANCE, COLORS, Scene, sample_scene

# Never a training seed (the corpus spec refuses them): the suite's scenes are held out.
EVAL_SEED, SINGLE_OBJECT_SEED = HELD_OUT_WORLD_SEEDS  # multi-object, single-object scenes
COLOR_NAMES = tuple(COLORS)
# Zero-shot prompts in the captions' own language; a class's text embedding is the mean over
# these templates and over every value of the other attribute ("a red cube", "a blue cube", ...
# for the class "cube").
# Filled with a phrase and its article ("an orange cube"), as captions write it.
TEMPLATES = ("{}.", "a rendering of {}.", "{} on a floor.", "one object on a floor: {}.")
GALLERY = 100  # retrieval galleries: consecutive blocks of this many scenes
MAX_PROBE_DEPTH = 20.0  # world units; about the 95th percentile of patch depth in the mini-world


@dataclass
class MiniData:
    views: list[RenderedView]  # multi-object scene i's two views at 2i and 2i + 1
    images: np.ndarray  # (2 scenes, H, W, 3)
    singles: list[RenderedView]  # single-object scenes whose object is visible, one view each
    single_images: np.ndarray  # (len(singles), H, W, 3)
    scenes: list[Scene]  # multi-object scene i (what views 2i and 2i + 1 show)
    single_scenes: list[Scene]  # the scene of each of `singles`

    @classmethod
    def render(
        cls, scenes: int, size: int, camera_distance: tuple[float, float] = CAMERA_DISTANCE
    ) -> MiniData:
        """`scenes` held-out scenes of each set at `size` px, the cameras at `camera_distance`
        (the training corpus's range, so objects appear at the sizes the encoder learnt)."""
        multi = [sample_scene(EVAL_SEED, i, 2, None, camera_distance) for i in range(scenes)]
        views = _render([(scene, v) for scene in multi for v in range(2)], size)
        ones = [sample_scene(SINGLE_OBJECT_SEED, i, 1, 1, camera_distance) for i in range(scenes)]
        rendered = zip(ones, _render([(s, 0) for s in ones], size), strict=True)
        kept = [(scene, view) for scene, view in rendered if len(view.boxes) == 1]
        singles = [view for _, view in kept]
        return cls(
            views,
            np.stack([v.rgb for v in views]),
            singles,
            np.stack([v.rgb for v in singles]) if singles else np.zeros((0, size, size, 3)),
            multi,
            [scene for scene, _ in kept],
        )

    def single_labels(self, attribute: str) -> torch.Tensor:
        """The shape or colour class of each single-object scene's object."""
        names = SHAPE_NAMES if attribute == "shape" else COLOR_NAMES
        return torch.tensor(
            [names.index(getattr(s.objects[0], attribute)) for s in self.single_scenes]
        )


def _render(items: list, size: int) -> list[RenderedView]:
    return [
        view
        for start in range(0, len(items), 128)
        for view in render_views(items[start : start + 128], size)
    ]


def mini_size(model: FrozenModel) -> int:
    """The resolution the suite renders at: the training corpus's when it is the mini-world."""
    return getattr(model.spec.data.source, "image_size", model.size)


def mini_camera_distance(model: FrozenModel) -> tuple[float, float]:
    """The cameras' distance range of the suite's scenes: the training corpus's when it is the
    mini-world, the world's default otherwise."""
    return tuple(getattr(model.spec.data.source, "camera_distance", CAMERA_DISTANCE))


def halves(n: int) -> tuple[slice, slice]:
    """The train and test halves of n items (the probes fit on the first, score on the second)."""
    return slice(0, n // 2), slice(n // 2, n)


def view_halves(n_views: int) -> tuple[slice, slice]:
    """`halves` of the multi-object views (two per scene, scene i at 2i and 2i + 1), cut at a
    scene boundary: no scene has a view on each side, whatever the number of scenes (for an
    even number, the same cut as `halves`)."""
    cut = 2 * (n_views // 4)
    return slice(0, cut), slice(cut, n_views)


def view_depth(data: MiniData) -> np.ndarray:
    """(2 scenes, H, W) true depth of every view (inf for sky)."""
    return np.stack([v.depth for v in data.views])
