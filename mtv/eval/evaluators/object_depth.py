"""Object relief: how far each mini-world object's visible surface stands out in front of the
floor point under it, read by a ridge probe from the object's patch features. An instrument
where depth must come from the object, not from where it is.

On the held-out scenes most of a pixel's depth is where it is: a probe of the patch position
alone scores 1.60 RMSE on the scene-level depth probe (the constant 3.30), and on object
patches a constant scores about as well as any encoder, because an object's distance follows
from where it stands (the lower its base in the image, the nearer). Relief takes that away:
an object's target is its visible pixels' mean camera depth minus the camera depth of the
floor point under its centre. It follows from the object's shape, size and the viewing angle
(on 200 scenes a ridge fit of the true shape and size one-hots: 0.049 RMSE, the constant 0.139).

Each object seen over at least MIN_PIXELS pixels is one sample; its features are the mean of
the patch tokens weighted by the share of each patch its pixels cover. The probe
(`ridge_probe_predict`) fits on the objects of the first half of the views and scores on the
second. Trivial: of a constant (the training mean) and the same probe on what the image shows
without describing the object, its pixels' mean row and column and the log of its pixel area
(0.097 on the same 200 scenes), the one better on held-out training objects. The features'
probe reads those three too, so a score below the trivial one is what the features add.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtv.eval.contract import Evaluator, image_features, register_evaluator
from mtv.eval.metrics import Score, Scores
from mtv.eval.mini import MiniData, view_halves
from mtv.eval.model import FrozenModel
from mtv.eval.probes import RIDGE_PENALTIES, ridge_probe_predict

MIN_PIXELS = 16  # an object seen over fewer pixels is left out

RELIEF_PENALTIES = (*RIDGE_PENALTIES, 10.0, 100.0)  # per training row


def visible_objects(data: MiniData) -> list[tuple[int, int, float]]:
    """(view, instance id, relief) of every object seen over at least MIN_PIXELS pixels."""
    out = []
    for n, view in enumerate(data.views):
        scene = data.scenes[view.scene_index]
        for i, obj in enumerate(scene.objects):
            mask = view.instance == i + 1
            if mask.sum() < MIN_PIXELS:
                continue
            base = np.array([obj.x, 0.0, obj.z, 1.0]) @ view.world_to_camera.T
            out.append((n, i + 1, float(view.depth[mask].mean() - base[2])))
    return out


def object_features(
    patches: Tensor, data: MiniData, objects: list[tuple[int, int, float]]
) -> tuple[Tensor, Tensor]:
    """Per object: the coverage-weighted mean of its patch tokens (D,), and what the image
    shows of it without describing it: its pixels' mean row and column and log area (3,)."""
    grid = patches.shape[1]
    pooled, apparent = [], []
    for n, instance, _ in objects:
        mask = torch.from_numpy(data.views[n].instance == instance).float()
        cover = F.adaptive_avg_pool2d(mask[None, None], grid)[0, 0]  # share of each patch
        weights = cover / cover.sum()
        pooled.append((patches[n].double() * weights[..., None].double()).sum((0, 1)))
        rows, cols = torch.nonzero(mask, as_tuple=True)
        apparent.append(
            torch.tensor([rows.double().mean(), cols.double().mean(), float(np.log(len(rows)))])
        )
    return torch.stack(pooled), torch.stack(apparent).double()


def _rmse(prediction: Tensor, target: Tensor) -> float:
    return float(((prediction.double() - target.double()) ** 2).mean().sqrt())


def trivial_relief_rmse(apparent: Tensor, relief: Tensor, train: Tensor) -> float:
    """The trivial predictor's test RMSE: the better on held-out training rows (the last fifth,
    as the ridge penalty is chosen) of the training mean and the ridge probe of the apparent
    position and size. Chosen without the test labels, so that choosing does not flatter it."""
    x, y = apparent[train], relief[train]
    cut = max(1, int(0.8 * len(y)))
    held = slice(cut, len(y))
    constant_held = _rmse(torch.full_like(y[held], float(y[:cut].mean())), y[held])
    free = apparent.shape[1]  # least squares: three columns need no shrinking
    apparent_held = _rmse(ridge_probe_predict(x[:cut], y[:cut], x[held], free), y[held])
    truth = relief[~train]
    if constant_held <= apparent_held:
        return _rmse(torch.full_like(truth, float(y.mean())), truth)
    return _rmse(ridge_probe_predict(x, y, apparent[~train], free), truth)


def relief_scores(patches: Tensor, data: MiniData) -> Scores:
    """RMSE of the ridge probe of the objects' pooled patch features (and their apparent
    position and size) onto their relief, with the trivial predictors' (a constant; the probe
    on apparent position and size alone)."""
    objects = visible_objects(data)
    train_views, _ = view_halves(len(data.views))
    train = torch.tensor([n < train_views.stop for n, _, _ in objects])
    if int(train.sum()) < 2 or int((~train).sum()) < 2:
        return {}
    features, apparent = object_features(patches, data, objects)
    relief = torch.tensor([r for _, _, r in objects], dtype=torch.float64)
    truth = relief[~train]

    # The features' probe is given what the trivial one reads too, unshrunk, so that features
    # that say nothing cost it nothing (shrunk with them, the apparent columns' fit would fall
    # behind the trivial's): what the features add is the score. Penalties up to 100 per row
    # let it shrink an encoder's width of useless features to nothing.
    given = torch.cat([features, apparent], dim=1)
    probed = _rmse(
        ridge_probe_predict(
            given[train], relief[train], given[~train], apparent.shape[1], RELIEF_PENALTIES
        ),
        truth,
    )
    return {"relief_rmse": Score(probed, trivial_relief_rmse(apparent, relief, train))}


@register_evaluator
class MiniObjectDepth(Evaluator):
    name = "object_depth"
    suites = ("mini",)
    # 3: the apparent position and size unshrunk in the features' probe (2: the trivial
    # predictor chosen on training rows, not on the test labels)
    version = 3

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        return relief_scores(image_features(model, data.images).patches, data)
