"""NYU Depth v2's labelled set (`nyu_depth_v2_labeled.mat`, 1449 RGB-D frames at 640x480).

The official file is MATLAB v7.3, i.e. HDF5 (read with h5py, `pip install 'mtv[benchmarks]'`):
h5py sees MATLAB's column-major arrays transposed, so `images` is (N, 3, W, H) uint8 and `depths`
(N, W, H) float metres. A MATLAB v5 file (scipy.io.savemat / loadmat) keeps MATLAB's own order,
`images` (H, W, 3, N) and `depths` (H, W, N); both are accepted.

The split is the standard 795 train / 654 test one, read from beside the .mat file:
`splits.mat` (the toolbox's file: `trainNdxs`, `testNdxs`, 1-based indices) or `splits.json`
({"train": [...], "test": [...]}, also 1-based so that it can be copied from splits.mat), or
passed in as `splits`. Without one a deterministic stand-in is used, with a warning: the last
654/1449 of the frames are the test set, the rest train; numbers are then not comparable to
published ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from mtv.eval.formats import BenchmarkFormatError, DepthSet, SquareCrop, read_json, subset

NYU_FILE = "nyu_depth_v2_labeled.mat"
TEST_SHARE = 654 / 1449
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

Frame = Callable[[int], tuple[np.ndarray, np.ndarray]]  # index -> (H, W, 3) rgb, (H, W) depth


def _is_hdf5(path: Path) -> bool:
    # MATLAB v7.3 puts a 512-byte header before the HDF5 superblock; HDF5 looks for its
    # signature at 0, 512, 1024, ... so check the first few of those offsets.
    with path.open("rb") as f:
        head = f.read(4096)
    return any(head[o : o + 8] == HDF5_MAGIC for o in (0, 512, 1024, 2048))


@contextmanager
def _frames(path: Path) -> Iterator[tuple[int, Frame]]:
    """(number of frames, a reader of frame i as (H, W, 3) uint8 and (H, W) depth)."""
    if _is_hdf5(path):
        try:
            import h5py
        except ImportError as err:
            raise BenchmarkFormatError(
                f"{path}: a MATLAB v7.3 (HDF5) file needs h5py: pip install 'mtv[benchmarks]'"
            ) from err
        with h5py.File(path, "r") as f:
            for key in ("images", "depths"):
                if key not in f:
                    raise BenchmarkFormatError(f"{path}: no {key!r} dataset")
            images, depths = f["images"], f["depths"]
            if (
                images.ndim != 4
                or images.shape[1] != 3
                or depths.shape
                != (
                    images.shape[0],
                    *images.shape[2:],
                )
            ):
                raise BenchmarkFormatError(
                    f"{path}: expected images (N, 3, W, H) and depths (N, W, H), got "
                    f"{images.shape} and {depths.shape}"
                )
            yield images.shape[0], lambda i: (images[i].transpose(2, 1, 0), depths[i].T)
        return
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise BenchmarkFormatError(f"{path}: reading a .mat file needs scipy") from err
    try:
        data = loadmat(path, variable_names=["images", "depths"])
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        raise BenchmarkFormatError(f"{path}: not a readable .mat file ({err})") from err
    for key in ("images", "depths"):
        if key not in data:
            raise BenchmarkFormatError(f"{path}: no {key!r} variable")
    images, depths = data["images"], data["depths"]
    if images.ndim == 3:  # MATLAB drops a trailing singleton: a file with a single frame
        images, depths = images[..., None], depths[..., None]
    if (
        images.ndim != 4
        or images.shape[2] != 3
        or depths.shape != (*images.shape[:2], images.shape[3])
    ):
        raise BenchmarkFormatError(
            f"{path}: expected images (H, W, 3, N) and depths (H, W, N), got "
            f"{images.shape} and {depths.shape}"
        )
    yield images.shape[3], lambda i: (images[..., i], depths[..., i])


def _read_splits(mat: Path) -> dict[str, np.ndarray] | None:
    """1-based train/test indices from splits.mat or splits.json beside the data, if any."""
    if (mat.parent / "splits.mat").is_file():
        from scipy.io import loadmat

        path = mat.parent / "splits.mat"
        raw = loadmat(path)
        keys = {"train": "trainNdxs", "test": "testNdxs"}
    elif (mat.parent / "splits.json").is_file():
        path = mat.parent / "splits.json"
        raw = read_json(path)
        keys = {"train": "train", "test": "test"}
    else:
        return None
    if not isinstance(raw, dict) or any(k not in raw for k in keys.values()):
        raise BenchmarkFormatError(f"{path}: expected {' and '.join(keys.values())}")
    return {split: np.asarray(raw[key]).reshape(-1) for split, key in keys.items()}


def read_nyuv2(
    path: str | Path,
    size: int,
    split: str = "test",
    limit: int | None = None,
    splits: Mapping[str, Sequence[int]] | None = None,
) -> DepthSet:
    """Frames of `split` ("train" or "test") of the labelled set, `path` being the .mat file or
    its directory. `splits` ({"train": [...], "test": [...]}, 1-based) overrides the split file."""
    path = Path(path)
    if path.is_dir():
        path = path / NYU_FILE
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: file not found")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with _frames(path) as (n, frame):
        chosen = (
            {k: np.asarray(v).reshape(-1) for k, v in splits.items()}
            if splits is not None
            else _read_splits(path)
        )
        if chosen is None:
            warnings.warn(
                f"{path}: no splits.mat or splits.json beside it; using the last "
                f"{TEST_SHARE:.0%} of frames as the test set (not the standard split)",
                stacklevel=2,
            )
            first_test = n - round(n * TEST_SHARE)
            indices = np.arange(first_test, n) if split == "test" else np.arange(first_test)
        else:
            if split not in chosen:
                raise BenchmarkFormatError(f"{path}: the split has no {split!r} indices")
            indices = chosen[split].astype(np.int64) - 1
            bad = indices[(indices < 0) | (indices >= n)]
            if len(bad):
                raise BenchmarkFormatError(
                    f"{path}: {split} index {int(bad[0]) + 1} outside 1..{n} (1-based)"
                )
        images, depths = [], []
        for i in indices[subset(len(indices), limit)].tolist():
            rgb, depth = frame(i)
            height, width = rgb.shape[:2]
            crop = SquareCrop(width, height, size)
            images.append(crop.image(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))))
            depths.append(crop.depth(np.asarray(depth, dtype=np.float32)))
    if not images:
        raise BenchmarkFormatError(f"{path}: no frames in the {split} split")
    return DepthSet(np.stack(images), np.stack(depths))
