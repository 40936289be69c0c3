"""What the encoder sees: PCA maps of patch features, and depth predictions beside the input
and the ground truth."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mtv.eval.metrics import align_disparity, fit_affine
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
    model: FrozenModel,
    images: np.ndarray,
    depth: np.ndarray | None = None,
    columns: int | None = None,
    disparity: np.ndarray | None = None,
) -> Figure:
    """Rows = images; columns = input, the reference (exact `depth`, or a label store's pseudo
    `disparity` for the user's own data), the run's depth prediction aligned to it (only when
    the run has a depth head) and the PCA map of its patch features."""
    import matplotlib.pyplot as plt

    features = model.images(images)
    colours = pca_rgb(features.patches)
    if depth is None and disparity is None:
        raise ValueError("plot_depth_and_pca needs the exact depth or a pseudo-disparity")
    as_disparity = depth is None
    truth = torch.from_numpy(depth if depth is not None else disparity).float()  # type: ignore[arg-type]
    kind = "disparity (labels)" if as_disparity else "depth"
    panels = ["input", f"{kind} (truth)" if not as_disparity else kind]
    predicted = None
    if model.has_depth_head:
        valid = torch.isfinite(truth)
        raw = model.disparity(images)
        predicted = (
            fit_affine(raw, truth.nan_to_num(0.0), valid)
            if as_disparity
            else depth_from_disparity(raw, truth.nan_to_num(1.0), valid)
        )
        panels.append(f"{kind.split(' ')[0]} (predicted)")
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
            is_map = panels[col].startswith(("depth", "disparity"))
            # Near is bright either way: depth reversed, disparity as it is.
            cmap = ("magma" if as_disparity else "magma_r") if is_map else None
            ax.imshow(image, cmap=cmap, vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(panels[col], fontsize=9)
    fig.tight_layout()
    return fig


def notebook_images(model: FrozenModel, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """Images a notebook shows for a run, at the model's input size, with their depth reference:
    held-out mini-world scenes and their exact depth when the run trained on the mini-world;
    else the first `n` readable samples of the run's own source, with the pseudo-disparity of
    its label store when it has depth (keyword `disparity`), else no reference. Returns
    (images, the keywords of `plot_depth_and_pca`, a line saying what they are)."""
    from PIL import Image

    from mtv.data.sources import UnusableSample, decode_image, open_source
    from mtv.data.store import LabelStore
    from mtv.eval.mini import MiniData
    from mtv.specs.experiment import MiniWorldSourceSpec

    spec = model.spec
    if isinstance(spec.data.source, MiniWorldSourceSpec):
        data = MiniData.render(scenes=n, size=spec.data.source.image_size)
        depth = np.stack([view.depth for view in data.views[0::2]])
        return data.images[0::2], {"depth": depth}, "held-out mini-world scenes, exact depth"
    source = open_source(spec.data.source)
    store_path = spec.data.labels.store
    store = LabelStore.open(store_path) if store_path else None
    with_depth = store is not None and "depth" in store.attrs["kinds"]
    images, maps = [], []
    size = model.size
    keys: list[str] = source.keys()  # a source, not a dict: its sample keys in order
    for key in keys:
        if len(images) == n:
            break
        try:
            image = decode_image(source.get(key))
        except UnusableSample:
            continue
        images.append(np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)))
        if with_depth:
            disparity, valid = store.depth(key)  # type: ignore[union-attr]
            resized = Image.fromarray(np.where(valid, disparity, np.nan).astype(np.float32))
            maps.append(np.asarray(resized.resize((size, size), Image.NEAREST)))
    what = f"the run's own data ({spec.data.source.kind}), first {len(images)} samples"
    if not with_depth:
        return np.stack(images), {}, what + "; no depth labels"
    return np.stack(images), {"disparity": np.stack(maps)}, what + ", pseudo-disparity labels"


def plot_held_out_scenes(model: FrozenModel, scenes: int = 3) -> Figure | None:
    """`plot_depth_and_pca` of the images `notebook_images` picks for the run (held-out
    mini-world scenes, or its own data): the figure training logs with its evaluations; None
    when there is no depth reference to draw against."""
    images, reference, _ = notebook_images(model, scenes)
    return plot_depth_and_pca(model, images, **reference) if reference else None


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
