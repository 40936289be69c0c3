"""What the encoder sees: PCA maps of patch features, and depth predictions beside the input
and the ground truth."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mtv.eval.metrics import align_disparity
from mtv.eval.mini import MiniData
from mtv.eval.model import FrozenModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pca_rgb(patches: Tensor, foreground: Tensor | None = None) -> np.ndarray:
    """(N, rows, cols, D) patch features -> (N, rows, cols, 3) colours in [0, 1]: the first
    three principal components, fitted jointly over all images (so a colour means the same
    direction in every image), each stretched between its 1st and 99th percentile."""
    flat = patches.reshape(-1, patches.shape[-1]).double()
    fit = flat if foreground is None else flat[foreground.reshape(-1)]
    mean = fit.mean(0)
    # Right singular vectors of the centred features are the principal directions.
    _, _, v = torch.linalg.svd(fit - mean, full_matrices=False)
    components = (flat - mean) @ v[:3].T
    low = torch.quantile(components, 0.01, dim=0)
    high = torch.quantile(components, 0.99, dim=0)
    scaled = ((components - low) / (high - low).clamp(min=1e-12)).clamp(0, 1)
    return scaled.reshape(*patches.shape[:-1], 3).float().numpy()


def depth_from_disparity(disparity: Tensor, depth: Tensor, valid: Tensor) -> Tensor:
    """A relative disparity map turned into depth with the scale and shift (in disparity) that
    best fit the ground truth: the alignment relative-depth evaluation uses."""
    return 1.0 / align_disparity(disparity, depth, valid).clamp(min=1e-6)


def plot_depth_and_pca(
    model: FrozenModel, images: np.ndarray, depth: np.ndarray, columns: int | None = None
) -> Figure:
    """Rows = images; columns = input, ground-truth depth, the run's depth prediction (aligned;
    only when the run has a depth head) and the PCA map of its patch features."""
    import matplotlib.pyplot as plt

    features = model.images(images)
    colours = pca_rgb(features.patches)
    truth = torch.from_numpy(depth).float()
    panels = ["input", "depth (truth)"]
    predicted = None
    if model.has_depth_head:
        valid = torch.isfinite(truth)
        predicted = depth_from_disparity(model.disparity(images), truth.nan_to_num(1.0), valid)
        panels.append("depth (predicted)")
    panels.append("patch-feature PCA")
    fig, axes = plt.subplots(
        len(images), len(panels), figsize=(2.2 * len(panels), 2.2 * len(images)), squeeze=False
    )
    finite = truth[torch.isfinite(truth)]
    low, high = float(finite.min()), float(finite.quantile(0.98))
    for row in range(len(images)):
        shown = [images[row], truth[row].numpy()]
        if predicted is not None:
            shown.append(predicted[row].numpy())
        shown.append(colours[row])
        for col, (ax, image) in enumerate(zip(axes[row], shown, strict=True)):
            is_depth = panels[col].startswith("depth")
            ax.imshow(image, cmap="magma_r" if is_depth else None, vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(panels[col], fontsize=9)
    fig.tight_layout()
    return fig


def plot_held_out_scenes(model: FrozenModel, scenes: int = 3) -> Figure:
    """`plot_depth_and_pca` of held-out mini-world scenes (one view each, the `mini` suite's
    seed) at the model's input size: the figure training logs with its evaluations."""
    data = MiniData.render(scenes=scenes, size=model.size)
    depth = np.stack([view.depth for view in data.views[0::2]])
    return plot_depth_and_pca(model, data.images[0::2], depth)


def plot_pca_grid(models: dict[str, FrozenModel], images: np.ndarray) -> Figure:
    """Rows = runs, columns = the input images then their patch-feature PCA maps (fitted per
    run, jointly over its images): how each task set organises the same scenes."""
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(
        len(models) + 1, n, figsize=(1.8 * n, 1.8 * (len(models) + 1)), squeeze=False
    )
    for col in range(n):
        axes[0, col].imshow(images[col])
    axes[0, 0].set_ylabel("input", fontsize=8)
    for row, (name, model) in enumerate(models.items(), start=1):
        colours = pca_rgb(model.images(images).patches)
        for col in range(n):
            axes[row, col].imshow(colours[col])
        axes[row, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
