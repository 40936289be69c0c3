"""Linear probes on frozen features: per-patch segmentation, per-image classification of the
pooled embedding, and depth as the paper measures it ([global token ; patch token] -> a linear
head over 256 depth bins). Each protocol also scores its trivial predictor (the majority class,
a constant depth) on the same split, the reference a probe must beat."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtv.eval.metrics import (
    Score,
    Scores,
    constant_depth_errors,
    depth_errors,
    majority_accuracy,
    mean_iou,
)
from mtv.eval.model import Features

_SEED_OFFSET: ContextVar[int] = ContextVar("probe_seed_offset", default=0)


@contextmanager
def probe_seed_offset(offset: int) -> Iterator[None]:
    """Every probe trained inside draws its initial weights and minibatches from its seed plus
    `offset`: the same evaluation with another draw of the probe, which is how a probe's own
    spread, its noise floor, is measured (`benchmarks/probe_noise.py`)."""
    token = _SEED_OFFSET.set(offset)
    try:
        yield
    finally:
        _SEED_OFFSET.reset(token)


def _train(
    head: nn.Module, inputs: Tensor, loss_of, steps: int, lr: float, batch: int, seed: int
) -> None:  # type: ignore[no-untyped-def]
    """`steps` AdamW minibatch steps of `loss_of(index)`, the learning rate decayed from `lr` to
    0 on a half cosine. Without the decay a probe's score is its last noisy iterate: on the
    mini suite the DPT probe of one frozen encoder spread over 1.54-1.94 RMSE across probe
    seeds (a random encoder's over 1.68-2.60) at a constant rate, 1.36-1.40 with the decay."""
    # The initial weights come from `seed` too, not from the global RNG: otherwise a probe's
    # score would depend on what ran before it (e.g. the order of evaluators).
    seed += _SEED_OFFSET.get()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in head.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        index = torch.randint(
            0, inputs.shape[0], (min(batch, inputs.shape[0]),), generator=generator
        )
        optimizer.zero_grad(set_to_none=True)
        loss_of(index).backward()
        optimizer.step()


class Standardize(nn.Module):
    """Per-dimension z-scores with statistics of the training features: what the BatchNorm in
    front of DINOv2's linear heads does at evaluation, so a probe's optimisation does not depend
    on the scale of an encoder's features."""

    mean: Tensor
    std: Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit_(self, features: Tensor) -> None:
        flat = features.reshape(-1, features.shape[-1]).float()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp(min=1e-6))

    def forward(self, features: Tensor) -> Tensor:
        return (features.float() - self.mean) / self.std


class ClassifierProbe(nn.Module):
    """A linear classifier of standardised features (..., D) into `n_classes`: per patch for
    segmentation, per image for the pooled embedding."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.norm = Standardize(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.norm(features))

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        steps: int = 300,
        lr: float = 1e-2,
        batch: int = 64,
        seed: int = 0,
        ignore_index: int = -1,
    ) -> ClassifierProbe:
        """features (N, ..., D), labels (N, ...) (ignore_index: skip); minibatches of `batch`
        rows of the first axis."""
        features = features.float()
        self.norm.fit_(features)

        def loss(index: Tensor) -> Tensor:
            logits = self(features[index])
            return F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                labels[index].flatten(),
                ignore_index=ignore_index,
            )

        _train(self, features, loss, steps, lr, batch, seed)
        return self

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        return self(features).argmax(-1)


def log_depth_sig_loss(prediction: Tensor, target: Tensor, variance_focus: float = 0.85) -> Tensor:
    """The scale-invariant log loss that DINOv2's depth heads train with (its `SigLoss`, from
    AdaBins): g = log p - log t over valid pixels, L = sqrt(Var(g) + (1 - lambda) mean(g)^2),
    lambda = `variance_focus`."""
    g = prediction.clamp(min=1e-3).log() - target.clamp(min=1e-3).log()
    return (g.var(unbiased=False) + (1 - variance_focus) * g.mean() ** 2).clamp(min=1e-12).sqrt()


class DepthBinProbe(nn.Module):
    """Depth per patch from [global ; patch] features: logits over `n_bins` depth bins spread
    uniformly over [min_depth, max_depth]; the prediction is the softmax-weighted bin centre.
    As DINOv2's linear depth head (its `classify` mode, which the paper follows): standardised
    features, and the bin scores trained through the prediction by the log-depth SigLoss. (A
    cross-entropy to the nearest bin, tried first, could not beat a constant depth on the
    mini-world even with features that encode depth exactly.)"""

    centres: Tensor

    def __init__(
        self,
        dim: int,
        min_depth: float,
        max_depth: float,
        n_bins: int = 256,
        pooled_dim: int | None = None,
    ):
        super().__init__()
        pooled_dim = pooled_dim or dim
        self.norm_pooled, self.norm_patches = Standardize(pooled_dim), Standardize(dim)
        # A linear layer on the concatenation [g ; p] = W_g g + W_p p: the global part is
        # computed once per image instead of once per patch.
        self.pooled_head = nn.Linear(pooled_dim, n_bins)
        self.patch_head = nn.Linear(dim, n_bins, bias=False)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, n_bins))

    def logits(self, pooled: Tensor, patches: Tensor) -> Tensor:
        """pooled (B, D), patches (B, N, D) -> (B, N, n_bins)."""
        return self.pooled_head(self.norm_pooled(pooled))[:, None] + self.patch_head(
            self.norm_patches(patches)
        )

    def depth(self, pooled: Tensor, patches: Tensor) -> Tensor:
        return self.logits(pooled, patches).softmax(-1) @ self.centres

    def fit(
        self,
        pooled: Tensor,
        patches: Tensor,
        depth: Tensor,
        valid: Tensor,
        steps: int = 300,
        lr: float = 1e-2,
        batch: int = 64,
        seed: int = 0,
    ) -> DepthBinProbe:
        """depth, valid: (B, N) per-patch target depth and where it counts."""
        self.norm_pooled.fit_(pooled)
        self.norm_patches.fit_(patches)

        def loss(index: Tensor) -> Tensor:
            keep = valid[index]
            return log_depth_sig_loss(
                self.depth(pooled[index], patches[index])[keep], depth[index][keep]
            )

        _train(self, patches, loss, steps, lr, batch, seed)
        return self

    @torch.no_grad()
    def predict(self, pooled: Tensor, patches: Tensor) -> Tensor:
        return self.depth(pooled, patches)


# The probe protocols, shared by the `mini` suite and the public-benchmark suites ---------------


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


def patch_depth(depth: np.ndarray, valid: np.ndarray, grid: int) -> tuple[Tensor, Tensor]:
    """(N, S, S) depth and validity -> (N, grid, grid) mean depth of each patch's valid pixels,
    and whether all its pixels are valid."""
    weight = torch.from_numpy(valid).float()[:, None]
    values = torch.from_numpy(np.where(valid, depth, 0.0)).float()[:, None]
    total = F.adaptive_avg_pool2d(values, grid)[:, 0]
    share = F.adaptive_avg_pool2d(weight, grid)[:, 0]
    return total / share.clamp(min=1e-6), share > 0.999


def segmentation_probe_scores(
    train_patches: Tensor,
    train_masks: np.ndarray,
    test_patches: Tensor,
    test_masks: np.ndarray,
    n_classes: int,
    ignore_index: int = -1,
) -> Scores:
    """mIoU of a linear probe of (N, grid, grid, D) patch tokens fitted to each training
    patch's majority class; its test predictions, upsampled (nearest) to pixels, scored with
    the ignore label left out. Trivial: the most frequent training class everywhere."""
    grid = train_patches.shape[1]
    labels = patch_labels(train_masks, grid, n_classes, ignore_index)
    probe = ClassifierProbe(train_patches.shape[-1], n_classes)
    probe.fit(train_patches.flatten(1, 2), labels.flatten(1), ignore_index=ignore_index)
    predicted = probe.predict(test_patches.flatten(1, 2)).reshape(-1, 1, grid, grid).float()
    pixels = F.interpolate(predicted, size=test_masks.shape[1:], mode="nearest")[:, 0].long()
    target = torch.from_numpy(test_masks).long()
    known = labels[labels != ignore_index]
    majority = torch.full_like(target, int(torch.bincount(known).argmax()) if known.numel() else 0)
    return {
        "miou": Score(
            mean_iou(pixels, target, n_classes, ignore_index),
            mean_iou(majority, target, n_classes, ignore_index),
        )
    }


def classifier_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    n_classes: int,
) -> Score:
    """Test accuracy of a linear probe of (N, D) features (e.g. pooled embeddings); trivial:
    the majority training class."""
    probe = ClassifierProbe(train_features.shape[-1], n_classes)
    probe.fit(train_features, train_labels)
    accuracy = float((probe.predict(test_features) == test_labels).float().mean())
    return Score(accuracy, majority_accuracy(train_labels, test_labels))


def depth_probe_scores(
    train: Features,
    train_depth: Tensor,
    train_valid: Tensor,
    test: Features,
    test_depth: Tensor,
    test_valid: Tensor,
) -> Scores:
    """The paper's depth probe on (N, grid, grid) patch depths: `DepthBinProbe` with its bins
    over the valid training targets' range; RMSE and AbsRel over the valid test patches.
    Trivial: the median training depth everywhere."""
    if not train_valid.any():
        raise ValueError("no training patch has valid depth everywhere")
    low, high = float(train_depth[train_valid].min()), float(train_depth[train_valid].max())
    probe = DepthBinProbe(train.patches.shape[-1], low, high, pooled_dim=train.pooled.shape[-1])
    probe.fit(
        train.pooled, train.patches.flatten(1, 2), train_depth.flatten(1), train_valid.flatten(1)
    )
    predicted = probe.predict(test.pooled, test.patches.flatten(1, 2))
    errors = depth_errors(predicted, test_depth.flatten(1), test_valid.flatten(1))
    constant = constant_depth_errors(train_depth, train_valid, test_depth, test_valid)
    return {name: Score(value, constant[name]) for name, value in errors.items()}


def dpt_depth_probe_scores(
    train_layers: list[Tensor],
    train_depth: Tensor,
    train_valid: Tensor,
    test_layers: list[Tensor],
    test_depth: Tensor,
    test_valid: Tensor,
    grid: tuple[int, int],
    steps: int = 150,
    lr: float = 2e-3,
    batch: int = 16,
    seed: int = 0,
) -> Scores:
    """Metric depth from frozen features *with spatial context*: a fresh DPT head (the depth
    task's own architecture) trained on the frozen encoder's 4 tapped layers (each (N, T, D)),
    as DINOv2's DPT depth evaluation, by the log-depth SigLoss (`steps` minibatches, at most 3
    per training image); RMSE and AbsRel per pixel over the valid test pixels of (N, H, W)
    depth maps. Trivial: the median training depth.

    Where depth is mostly a matter of where a pixel is in the image and of the camera (as in the
    mini-world), per-patch tokens that do not encode their position cannot show depth to a
    linear probe; a convolutional decoder sees the whole map and can."""
    from mtv.tasks.depth import DPTHead, default_features  # eval reads the task's head

    width = train_layers[0].shape[-1]
    size = tuple(train_depth.shape[-2:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + _SEED_OFFSET.get())  # its convolutions, which `_train` keeps
        head = DPTHead(width, default_features(width), (width // 8, width // 4, width // 2, width))
    norms = [Standardize(width) for _ in train_layers]
    for norm, layer in zip(norms, train_layers, strict=True):
        norm.fit_(layer)

    def predict(layers: list[Tensor], index: Tensor | slice) -> Tensor:
        inputs = [norm(layer[index]) for norm, layer in zip(norms, layers, strict=True)]
        return head(inputs, grid, size)[:, 0].clamp(-10, 10).exp()  # type: ignore[arg-type]

    def loss(index: Tensor) -> Tensor:
        keep = train_valid[index]
        return log_depth_sig_loss(predict(train_layers, index)[keep], train_depth[index][keep])

    # A handful of training images (smoke-sized evaluations) is fitted in a few passes.
    steps = min(steps, max(10, 3 * len(train_depth)))
    _train(head, train_layers[0], loss, steps, lr, batch, seed)
    with torch.no_grad():
        predicted = torch.cat(
            [predict(test_layers, slice(i, i + 64)) for i in range(0, len(test_depth), 64)]
        )
    errors = depth_errors(predicted, test_depth, test_valid)
    constant = constant_depth_errors(train_depth, train_valid, test_depth, test_valid)
    return {name: Score(value, constant[name]) for name, value in errors.items()}


RIDGE_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # per training row, on standardised features
FREE_PENALTY = 1e-8  # per training row, on the columns a probe must not shrink


def _ridge_fit(x: Tensor, y: Tensor, penalty: float, free: int = 0) -> Tensor:
    """Weights (D + 1,) of y ~ [x, 1] with an L2 penalty `penalty * rows` on the x weights but
    the last `free` columns'."""
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    gram = design.T @ design
    reg = torch.eye(design.shape[1], dtype=x.dtype) * penalty * len(x)
    # The free columns are all but unshrunk: a trace of penalty keeps the system solvable
    # where one is constant or they are collinear (a handful of training rows).
    free_columns = torch.arange(design.shape[1] - 1 - free, design.shape[1] - 1)
    reg[free_columns, free_columns] = FREE_PENALTY * len(x)
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    return torch.linalg.solve(gram + reg, design.T @ y)


def ridge_probe_predict(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    free: int = 0,
    penalties: tuple[float, ...] = RIDGE_PENALTIES,
) -> Tensor:
    """A ridge regression of (N, D) features onto (N,) targets, standardised with the training
    features' statistics, its penalty chosen among `penalties` on the last fifth of the
    training rows and refitted on all of them; predictions for `test_x`. Closed form, float64:
    the same answer on every run, however the features are scaled. The last `free` columns are
    not shrunk: what a baseline reads from them alone, the probe keeps whatever the penalty."""
    x, y = train_x.double(), train_y.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x, t = (x - mean) / std, (test_x.double() - mean) / std
    cut = max(1, int(0.8 * len(x)))
    fit, held = slice(0, cut), slice(cut, len(x))

    def held_out_error(penalty: float) -> float:
        w = _ridge_fit(x[fit], y[fit], penalty, free)
        design = torch.cat([x[held], torch.ones(len(x[held]), 1, dtype=x.dtype)], dim=1)
        return float(((design @ w - y[held]) ** 2).mean()) if len(x[held]) else 0.0

    penalty = min(penalties, key=held_out_error)
    w = _ridge_fit(x, y, penalty, free)
    return torch.cat([t, torch.ones(len(t), 1, dtype=t.dtype)], dim=1) @ w
