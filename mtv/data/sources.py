"""Image-text samples, their decoding, shard-name brace patterns, and `open_source` (a source
spec -> a source).

A source yields `Sample`s: a stable key, the still-encoded image bytes and the caption. Decoding is
a separate step (`decode_image`) so that the loader can skip, count and log undecodable images by
key instead of the source silently dropping them.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from mtv.specs.experiment import (
    FolderSourceSpec,
    MiniWorldSourceSpec,
    ParquetSourceSpec,
    ShardsSourceSpec,
)
from mtv.specs.limits import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from mtv.data.folder import FolderSource
    from mtv.data.shards import TarShardSource

ProblemCallback = Callable[[str, str], None]
"""Receives (key or location, reason) for every sample a source skips."""

# Decoders Pillow may try on untrusted bytes. Pillow otherwise sniffs every registered format,
# among them EPS, which runs Ghostscript on load.
DECODE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_warned_truncated_flag = False
_MAX_EXPANSION = 1_000_000
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")


class SkippedSampleWarning(UserWarning):
    """The default report of a sample a source skipped (missing image, caption or file)."""


class UnusableSample(Exception):
    """A sample that cannot be trained on (its caption is not UTF-8, its metadata not JSON, its
    image undecodable): loaders skip and count it, labelling records it as undecodable."""

    what = "cannot use sample"

    def __init__(self, key: str, origin: str, reason: str):
        self.key = key
        self.origin = origin
        self.reason = reason
        super().__init__(f"{self.what} {key!r} (from {origin}): {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # Rebuilt from its three fields when it crosses a process boundary (loader workers).
        return (type(self), (self.key, self.origin, self.reason))


class CorruptImageError(UnusableSample):
    """An image that Pillow cannot fully decode (truncated, corrupt, unsupported format)."""

    what = "cannot decode the image of sample"


class DuplicateKeyError(ValueError):
    """Two samples share a key: labels joined by key would be ambiguous, so reading stops."""


@dataclass(frozen=True)
class Sample:
    """One image-text pair, image still encoded.

    `key` is stable (derived from names in the corpus, never from reading order) and unique in the
    corpus, so labels stored by key join back to the right image however shards are shuffled.
    """

    key: str
    image: bytes = field(repr=False)
    caption: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    origin: str = ""  # the shard URL or file path, for error messages
    image_format: str = ""  # the file extension, lower case, without the dot


def warn_problem(key_or_location: str, reason: str) -> None:
    """The default problem callback: a `SkippedSampleWarning`."""
    warnings.warn(f"skipped {key_or_location}: {reason}", SkippedSampleWarning, stacklevel=2)


def is_unsafe_path(name: str) -> bool:
    """True for absolute paths and paths with `..` parts: never valid names inside a corpus."""
    return name.startswith(("/", "\\")) or ".." in PurePosixPath(name.replace("\\", "/")).parts


def decode_image(sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `sample.image` to an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    The image is fully loaded here, so a truncated or corrupt file raises `CorruptImageError`
    (naming the key and origin) instead of failing later or decoding with grey fill. So does an
    image of more than `max_pixels` pixels, before any of it is decoded.
    """
    _check_truncated_flag()
    try:
        with warnings.catch_warnings():
            # Pillow warns about bombs only above 89 MP; `max_pixels` is the limit here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(sample.image), formats=DECODE_FORMATS)
        with opened as image:
            if image.width * image.height > max_pixels:
                raise ValueError(
                    f"{image.width}x{image.height} pixels, more than the limit of {max_pixels:,} "
                    "(data.loader.max_pixels)"
                )
            image.load()  # forces the whole decode: truncation is detected here
            return _to_rgb_array(_upright(image))
    except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError, struct.error...
        reason = f"{type(error).__name__}: {error}"
        raise CorruptImageError(sample.key, sample.origin, reason) from error


def _check_truncated_flag() -> None:
    # Pillow's switch is process-global: never set it here, but say so when someone else did,
    # because truncated images would then decode silently.
    global _warned_truncated_flag
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated_flag:
        _warned_truncated_flag = True
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set elsewhere in this process): "
            "truncated images will decode with grey fill instead of raising CorruptImageError",
            RuntimeWarning,
            stacklevel=3,
        )


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # Broken EXIF metadata says nothing about the pixels: keep them as stored.
        return image


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale (PNG): scale to 8 bits; convert("RGB") would clip at 255 instead.
        grey = (np.asarray(image, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns when converting such palettes straight to RGB
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def expand_braces(pattern: str) -> list[str]:
    """Expand `{0000..0099}` ranges (zero padding kept, optional `..step`) and `{a,b}` lists,
    several and nested, as webdataset does: `s{0..1}-{a,b}.tar` -> 4 names, in order."""
    return _expand(pattern, pattern)


def _expand(text: str, pattern: str) -> list[str]:
    open_at, close_at = text.find("{"), text.find("}")
    if close_at >= 0 and (open_at < 0 or close_at < open_at):
        raise _malformed(pattern, "'}' without a matching '{'")
    if open_at < 0:
        return [text]
    depth = 0
    for end in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            break
    else:
        raise _malformed(pattern, "'{' without a matching '}'")
    choices = _choices(text[open_at + 1 : end], pattern)
    tails = _expand(text[end + 1 :], pattern)
    if len(choices) * len(tails) > _MAX_EXPANSION:
        raise _malformed(pattern, f"expands to more than {_MAX_EXPANSION} names")
    return [text[:open_at] + choice + tail for choice in choices for tail in tails]


def _choices(body: str, pattern: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for at, char in enumerate(body):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[start:at])
            start = at + 1
    if parts:
        return [name for part in [*parts, body[start:]] for name in _expand(part, pattern)]
    match = _RANGE.fullmatch(body)
    if match is None:
        raise _malformed(
            pattern, f"{{{body}}} is neither a range such as {{0000..0099}} nor a list {{a,b}}"
        )
    first, last, step_text = match.groups()
    step = abs(int(step_text)) if step_text else 1
    if step == 0:
        raise _malformed(pattern, "a range step of 0")
    low, high = int(first), int(last)
    if abs(high - low) // step + 1 > _MAX_EXPANSION:
        raise _malformed(pattern, f"expands to more than {_MAX_EXPANSION} names")
    padded = any(len(end.lstrip("-")) > 1 and end.lstrip("-")[0] == "0" for end in (first, last))
    width = max(len(first), len(last)) if padded else 0
    direction = 1 if high >= low else -1
    return [f"{value:0{width}d}" for value in range(low, high + direction, step * direction)]


def _malformed(pattern: str, reason: str) -> ValueError:
    return ValueError(f"malformed brace pattern {pattern!r}: {reason}")


def open_source(
    spec: ShardsSourceSpec | FolderSourceSpec | ParquetSourceSpec | MiniWorldSourceSpec,
    *,
    on_problem: ProblemCallback | None = None,
    storage_options: dict[str, Any] | None = None,
) -> TarShardSource | FolderSource:
    """The source a data spec names. `storage_options` go to fsspec (credentials, endpoints)."""
    # Imported here: shards.py and folder.py import Sample and the errors from this module.
    from mtv.data.folder import FolderSource
    from mtv.data.shards import TarShardSource

    if isinstance(spec, ShardsSourceSpec):
        return TarShardSource(
            spec.urls, storage_options, on_problem=on_problem, index_threads=spec.index_threads
        )
    if isinstance(spec, FolderSourceSpec):
        return FolderSource(
            spec.root,
            spec.captions,
            storage_options,
            on_problem=on_problem,
            text_column=spec.text_column,
        )
    if isinstance(spec, ParquetSourceSpec):
        from mtv.data.parquet import ParquetSource

        return ParquetSource(  # type: ignore[return-value]
            spec.urls,
            storage_options,
            image_column=spec.image_column,
            text_column=spec.text_column,
            key_column=spec.key_column,
            image_root=spec.image_root,
            on_problem=on_problem,
        )
    if isinstance(spec, MiniWorldSourceSpec):
        raise ValueError(
            "the mini-world corpus is not read directly: `mtv world render OUT` renders it into "
            "tar shards, which are then read with a `shards` source (kind: shards, urls: "
            "[OUT/...tar]); render it first"
        )
    raise TypeError(f"not a source spec: {type(spec).__name__}")
