"""Evaluation metrics and probes on planted answers: right features score ~100%, random ones
score chance, a perfect segmentation scores mIoU 1, the depth probe recovers a planted signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtv.eval.metrics import (
    correspondence_recall,
    depth_errors,
    majority_accuracy,
    mean_iou,
    random_match_recall,
    relative_depth_errors,
    retrieval_recall,
    zero_shot_accuracy,
)
from mtv.eval.model import Features
from mtv.eval.probes import (
    ClassifierProbe,
    DepthBinProbe,
    _train,
    depth_probe_scores,
    probe_seed_offset,
)

g = torch.Generator().manual_seed(0)


def class_features(
    labels: torch.Tensor, n_classes: int, dim: int = 64, noise: float = 0.1
) -> torch.Tensor:
    prototypes = torch.randn(n_classes, dim, generator=g)
    return prototypes[labels] + noise * torch.randn(len(labels), dim, generator=g), prototypes


def test_zero_shot_on_planted_and_random_features() -> None:
    labels = torch.randint(0, 20, (500,), generator=g)
    images, prototypes = class_features(labels, 20)
    right = zero_shot_accuracy(images, prototypes, labels)
    assert right["top1"] > 0.99 and right["top5"] == 1.0
    random = zero_shot_accuracy(torch.randn(500, 64, generator=g), prototypes, labels)
    assert abs(random["top1"] - 1 / 20) < 0.04 and abs(random["top5"] - 5 / 20) < 0.08


def test_retrieval_on_planted_and_random_features() -> None:
    n = 200
    images = torch.randn(n, 32, generator=g)
    text_image = torch.arange(n).repeat_interleave(2)  # two captions per image
    texts = images[text_image] + 0.05 * torch.randn(2 * n, 32, generator=g)
    right = retrieval_recall(images, texts, text_image)
    assert right["i2t_r1"] > 0.99 and right["t2i_r1"] > 0.99
    random = retrieval_recall(images, torch.randn(2 * n, 32, generator=g), text_image)
    assert random["t2i_r1"] < 0.03 and random["i2t_r1"] < 0.04  # chance: 1/200 and 2/400


def test_miou() -> None:
    target = torch.randint(0, 5, (4, 16, 16), generator=g)
    assert mean_iou(target, target, 5) == 1.0
    shifted = (target + 1) % 5
    assert mean_iou(shifted, target, 5) == 0.0
    half = target.clone()
    half[:, :8] = (half[:, :8] + 1) % 5
    assert 0.2 < mean_iou(half, target, 5) < 0.5


def test_depth_errors_and_relative_alignment() -> None:
    depth = torch.rand(3, 8, 8, generator=g) * 4 + 1
    valid = torch.ones_like(depth, dtype=torch.bool)
    assert depth_errors(depth, depth, valid) == {"rmse": 0.0, "absrel": 0.0}
    # any positive affine map of the true disparity is a perfect relative prediction
    disparity = 3.0 / depth + 0.5
    exact = relative_depth_errors(disparity, depth, valid, max_depth=10.0)
    assert exact["absrel"] < 1e-4 and exact["delta1"] == 1.0
    wrong = relative_depth_errors(torch.rand(3, 8, 8, generator=g), depth, valid, 10.0)
    assert wrong["absrel"] > 0.1


def test_correspondence_recall() -> None:
    target = torch.randn(8, 8, 16, generator=g)
    ys, xs = torch.randint(0, 8, (30,), generator=g), torch.randint(0, 8, (30,), generator=g)
    source = target[ys, xs]
    truth = torch.stack([xs, ys], dim=1).float() + 0.5
    assert correspondence_recall(source, target, truth, (0.5, 2))["recall@0.5px"] == 1.0
    shifted = correspondence_recall(source, target, truth + torch.tensor([3.0, 0.0]), (1, 4))
    assert shifted["recall@1px"] == 0.0 and shifted["recall@4px"] == 1.0


def test_depth_probe_recovers_a_planted_linear_signal() -> None:
    """Patch features carry depth linearly (plus noise): the 256-bin probe reads it back."""
    images, patches, dim = 64, 16, 24
    depth = torch.rand(images, patches, generator=g) * 8 + 1
    direction = torch.randn(dim, generator=g)
    features = depth[..., None] * direction + 0.05 * torch.randn(images, patches, dim, generator=g)
    pooled = features.mean(1)
    valid = torch.ones_like(depth, dtype=torch.bool)
    probe = DepthBinProbe(dim, 1.0, 9.0).fit(pooled, features, depth, valid, steps=600, lr=5e-2)
    predicted = probe.predict(pooled, features)
    errors = depth_errors(predicted, depth, valid)
    assert errors["rmse"] < 0.6  # depth spans 8 units (std 2.3)
    assert torch.corrcoef(torch.stack([predicted.flatten(), depth.flatten()]))[0, 1] > 0.97
    untrained = DepthBinProbe(dim, 1.0, 9.0)
    assert depth_errors(untrained.predict(pooled, features), depth, valid)["rmse"] > 1.5


def test_segmentation_probe_learns_planted_classes() -> None:
    labels = torch.randint(0, 4, (32, 16), generator=g)
    features, _ = class_features(labels.flatten(), 4, dim=16, noise=0.2)
    features = features.reshape(32, 16, 16)
    probe = ClassifierProbe(16, 4).fit(features, labels, steps=200)
    assert mean_iou(probe.predict(features), labels, 4) > 0.95


@pytest.mark.parametrize("ks", [(1,), (1, 5)])
def test_metric_keys(ks: tuple[int, ...]) -> None:
    labels = torch.arange(6)
    images, prototypes = class_features(labels, 6)
    assert set(zero_shot_accuracy(images, prototypes, labels, ks)) == {f"top{k}" for k in ks}


def test_probe_scores_do_not_depend_on_the_global_random_state() -> None:
    features = torch.randn(6, 16, 8)
    labels = torch.randint(0, 3, (6, 16))
    predictions = []
    for state in (0, 1):
        torch.manual_seed(state)  # what ran before the probe
        probe = ClassifierProbe(8, 3).fit(features, labels, steps=20)
        predictions.append(probe(features))
    torch.testing.assert_close(predictions[0], predictions[1])


def test_another_probe_draw_is_another_probe_and_the_same_draw_the_same() -> None:
    features = torch.randn(48, 8, generator=g)
    labels = torch.randint(0, 3, (48,), generator=g)

    def weights(offset: int) -> torch.Tensor:
        with probe_seed_offset(offset):
            return ClassifierProbe(8, 3).fit(features, labels, steps=10).head.weight.detach()

    torch.testing.assert_close(weights(0), weights(0))
    assert not torch.allclose(weights(0), weights(1))
    # Outside the context the offset is gone: the default draw again.
    torch.testing.assert_close(
        ClassifierProbe(8, 3).fit(features, labels, steps=10).head.weight.detach(), weights(0)
    )


def test_a_probe_ends_at_its_minimum_not_at_a_noisy_iterate() -> None:
    """The learning rate decays to 0, so the last minibatches barely move the weights; at a
    constant rate Adam moves them as far at the end as at the start, and the score is whichever
    noisy iterate the last minibatch left."""
    features = torch.randn(64, 8, generator=g)
    labels = (features[:, 0] > 0).long() ^ (torch.rand(64, generator=g) < 0.3).long()  # noisy
    head = torch.nn.Linear(8, 2)
    seen = []

    def loss(index: torch.Tensor) -> torch.Tensor:
        seen.append(torch.cat([head.weight.detach().flatten(), head.bias.detach()]))
        return F.cross_entropy(head(features[index]), labels[index])

    _train(head, features, loss, steps=50, lr=1e-2, batch=4, seed=0)
    seen.append(torch.cat([head.weight.detach().flatten(), head.bias.detach()]))
    first, last = (seen[1] - seen[0]).norm(), (seen[-1] - seen[-2]).norm()
    assert first > 0 and last < 0.05 * first


def test_depth_probe_beats_the_constant_predictor_only_when_features_carry_depth() -> None:
    """Depth that depends on where a patch is (as the mini-world's floor does): features that
    encode the position beat the median-depth constant clearly, random features do not."""
    images, grid, dim = 48, 6, 36
    rows = torch.arange(grid).repeat_interleave(grid).float()
    depth = (2.0 + 12.0 / (1.0 + rows))[None].repeat(images, 1) * (
        1 + 0.05 * torch.randn(images, grid * grid, generator=g)
    )
    valid = torch.ones_like(depth, dtype=torch.bool)
    position = torch.eye(grid * grid)[None].repeat(images, 1, 1)
    noise = torch.randn(images, grid * grid, dim, generator=g)

    def scores(patches: torch.Tensor) -> dict:
        maps = patches.reshape(images, grid, grid, -1)
        train, test = slice(0, 24), slice(24, 48)
        return depth_probe_scores(
            Features(maps[train].mean((1, 2)), maps[train]),
            depth[train].reshape(-1, grid, grid),
            valid[train].reshape(-1, grid, grid),
            Features(maps[test].mean((1, 2)), maps[test]),
            depth[test].reshape(-1, grid, grid),
            valid[test].reshape(-1, grid, grid),
        )

    seeing = scores(position)
    assert seeing["absrel"].value < 0.5 * seeing["absrel"].trivial
    assert seeing["rmse"].value < 0.5 * seeing["rmse"].trivial
    blind = scores(noise)
    assert blind["absrel"].value > 0.8 * blind["absrel"].trivial


def test_relative_depth_stays_finite_when_an_aligned_disparity_reaches_zero() -> None:
    depth = torch.rand(2, 8, 8) * 9 + 1
    valid = torch.ones_like(depth, dtype=torch.bool)
    wild = torch.randn(2, 8, 8, generator=g)  # aligns to disparities around and below 0
    errors = relative_depth_errors(wild, depth, valid, max_depth=10.0)
    assert all(torch.isfinite(torch.tensor(v)) for v in errors.values())
    assert errors["absrel"] < 10.0  # capped depth: at most (10 - 1) / 1
    perfect = relative_depth_errors(2.0 / depth + 0.1, depth, valid, max_depth=10.0)
    assert perfect["absrel"] < 1e-5 and perfect["delta1"] == 1.0


def test_trivial_references_match_their_definitions() -> None:
    train, test = torch.tensor([0, 1, 1, 2, 1]), torch.tensor([1, 1, 0, 2])
    assert majority_accuracy(train, test) == 0.5
    truth = torch.tensor([[0.5, 0.5], [2.5, 1.5]])
    expected = random_match_recall((4, 4), truth, (1.0, 8.0))
    centres = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="xy"), -1)
    distance = (centres.reshape(-1, 2).float() + 0.5)[None] - truth[:, None]
    assert expected["recall@1px"] == pytest.approx(
        float((distance.norm(dim=-1) <= 1).float().mean())
    )
    assert expected["recall@8px"] == 1.0


class NamedClassOracle:
    """Duck-types FrozenModel: an image's pooled embedding is the one-hot of the class its
    pixels encode (the fill value); a text's is the one-hot of the class word in it."""

    has_text = True
    classes = ("cat", "dog")

    def images(self, images: np.ndarray) -> Features:
        pooled = F.one_hot(torch.from_numpy(images[:, 0, 0, 0].astype(np.int64)), 2).float()
        return Features(pooled, pooled[:, None, None, :])

    def texts(self, texts: list[str]) -> torch.Tensor:
        found = [next(i for i, c in enumerate(self.classes) if c in t) for t in texts]
        return F.one_hot(torch.tensor(found), 2).float()


def test_source_zero_shot_says_how_many_images_it_classified() -> None:
    """Captions that name no class or several are left out of source zero-shot; the share of
    images it classified is a metric of its own (they were dropped without a count)."""
    from mtv.eval.evaluators.zero_shot import SourceZeroShot
    from mtv.eval.source import SourceData
    from mtv.specs import EvalSpec

    captions = ["a cat", "a dog on a sofa", "two cats", "a Dog", "a tree", "a cat and a dog"]
    truth = [0, 1, 0, 1, 0, 0]
    images = np.zeros((6, 4, 4, 3), np.uint8) + np.asarray(truth, np.uint8)[:, None, None, None]
    data = SourceData([str(i) for i in range(6)], images, captions, ["cat", "dog"], None, None)
    scores = SourceZeroShot(EvalSpec(suite="source"))(NamedClassOracle(), data)
    # "two cats" names no class as a whole word; "a cat and a dog" names two
    assert scores["named_share"].value == pytest.approx(3 / 6)
    assert scores["top1"].value == 1.0 and scores["top1"].trivial == pytest.approx(2 / 3)
