"""Image-text pairs in Parquet files: what img2dataset writes (`jpg` binary, `caption`, `key`)
and what Hugging Face `datasets` writes (`image` as a struct of `bytes` and `path`, `text`). Read
through fsspec with pyarrow, one row group at a time. Where `datasets` stored a path and no bytes
(images it did not embed), the image is read from that path: a relative one against
`image_root` (default: the Parquet file's folder), which it may not leave; an absolute one as
it is, or only inside `image_root` when one is given.

Keys are the `key` column when there is one, else `FILE_STEM/ROW` (stable: names, not order).
The index (key -> file, row group, row) is built from the small columns only; image bytes are
read when a sample is asked for, a row group at a time with a small cache, so a loader worker
that walks a shuffled permutation reads each row group a few times, not once per image.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from mtv.data.sources import (
    DuplicateKeyError,
    ProblemCallback,
    Sample,
    UnusableSample,
    expand_braces,
    warn_problem,
)

IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img")
TEXT_COLUMNS = ("caption", "text", "txt")
_MAGIC = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpg", b"RIFF": "webp"}


@dataclass(frozen=True)
class _Row:
    url: str
    group: int
    row: int  # within the row group
    caption: str
    size: int  # the file's byte size (part of the fingerprint)


def _image_format(data: bytes) -> str:
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), "")


class ParquetSource:
    """Samples from image-text Parquet files (local paths or fsspec URLs, brace patterns)."""

    def __init__(
        self,
        urls: list[str] | str,
        storage_options: dict[str, Any] | None = None,
        *,
        image_column: str | None = None,
        text_column: str | None = None,
        key_column: str | None = "key",
        image_root: str | None = None,
        on_problem: ProblemCallback | None = None,
        cached_groups: int = 4,
    ):
        patterns = [urls] if isinstance(urls, str) else list(urls)
        self.urls = [url for pattern in patterns for url in expand_braces(pattern)]
        if not self.urls:
            raise ValueError("a parquet source needs at least one file")
        self.storage_options = dict(storage_options or {})
        self.image_root = image_root.rstrip("/") if image_root else None
        self.on_problem = warn_problem if on_problem is None else on_problem
        self._wanted = (image_column, text_column, key_column)
        self._columns: dict[str, tuple[str, str]] = {}  # url -> (image column, text column)
        self._groups: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._cached = cached_groups
        self._index: dict[str, _Row] = {}
        for url in self.urls:
            self._index_file(url)
        if not self._index:
            raise ValueError(
                f"no usable sample in {len(self.urls)} parquet file(s) (first: {self.urls[0]})"
            )

    def __repr__(self) -> str:
        return f"ParquetSource({len(self.urls)} files, {len(self._index)} samples)"

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Sample]:
        for key in self._index:
            try:
                yield self.get(key)
            except UnusableSample as err:
                self.on_problem(key, err.reason)

    def fingerprint(self, key: str) -> str:
        row = self._index[key]
        return f"{row.url}:{row.size}:{row.group}:{row.row}:{row.caption}"

    def get(self, key: str) -> Sample:
        row = self._index.get(key)
        if row is None:
            raise KeyError(f"no sample {key!r} in the {len(self.urls)} parquet file(s)")
        image_column, _ = self._columns[row.url]
        value = self._group(row.url, row.group).column(image_column)[row.row].as_py()
        data = value.get("bytes") if isinstance(value, dict) else value
        path = value.get("path") if isinstance(value, dict) else None
        if not data and isinstance(path, str) and path:
            data = self._read_image_file(key, row, path)
        if not isinstance(data, bytes) or not data:
            raise UnusableSample(key, row.url, f"no image bytes in column {image_column!r}")
        fmt = _image_format(data) or "jpg"
        return Sample(key, data, row.caption, {}, f"{row.url}#row{row.row}", fmt)

    def _read_image_file(self, key: str, row: _Row, path: str) -> bytes:
        """The bytes of the image file a row names instead of embedding it."""
        protocol, base = fsspec.core.split_protocol(self.image_root or posixpath.dirname(row.url))
        base = posixpath.normpath(base or ".")
        absolute = posixpath.isabs(path) or "://" in path
        if absolute and self.image_root is None:
            target = path
        else:
            target = posixpath.normpath(posixpath.join(base, path))
            if posixpath.relpath(target, base).startswith(".."):
                raise UnusableSample(
                    key,
                    row.url,
                    f"its image path {path!r} leaves the image root {self.image_root or base!r}",
                )
            target = f"{protocol}://{target}" if protocol else target
        try:
            with fsspec.open(target, "rb", **self.storage_options) as file:
                return file.read()
        except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
            reason = type(err).__name__
            raise UnusableSample(key, row.url, f"its image file {target} ({reason})") from None

    # ------------------------------------------------------------------ reading
    def _open(self, url: str) -> pq.ParquetFile:
        try:
            handle = fsspec.open(url, "rb", **self.storage_options).open()
        except FileNotFoundError:
            raise FileNotFoundError(f"parquet file not found: {url}") from None
        try:
            return pq.ParquetFile(handle)
        except (pa.ArrowInvalid, OSError) as err:
            raise ValueError(f"{url} is not a readable parquet file: {err}") from None

    def _pick(self, url: str, names: list[str]) -> tuple[str, str, str | None]:
        image, text, key = self._wanted
        images = [image] if image else [c for c in IMAGE_COLUMNS if c in names]
        texts = [text] if text else [c for c in TEXT_COLUMNS if c in names]
        if not images or images[0] not in names or not texts or texts[0] not in names:
            raise ValueError(
                f"{url} has columns {', '.join(names)}; needed: image bytes "
                f"({image or ' or '.join(IMAGE_COLUMNS)}) and a caption "
                f"({text or ' or '.join(TEXT_COLUMNS)})"
            )
        return images[0], texts[0], key if key in names else None

    def _index_file(self, url: str) -> None:
        file = self._open(url)
        image, text, key_column = self._pick(url, file.schema_arrow.names)
        self._columns[url] = (image, text)
        size = int(file.metadata.serialized_size) + sum(
            file.metadata.row_group(g).total_byte_size for g in range(file.num_row_groups)
        )
        stem = posixpath.splitext(posixpath.basename(url))[0]
        columns = [text] + ([key_column] if key_column else [])
        start = 0
        for group in range(file.num_row_groups):
            table = file.read_row_group(group, columns=columns)
            texts = table.column(text).to_pylist()
            keys = (
                [str(k) if k is not None else None for k in table.column(key_column).to_pylist()]
                if key_column
                else [f"{stem}/{start + i}" for i in range(len(texts))]
            )
            for i, (key, caption) in enumerate(zip(keys, texts, strict=True)):
                where = f"{url} row {start + i}"
                if not key:
                    self.on_problem(where, f"no {key_column!r} value")
                    continue
                if not isinstance(caption, str):
                    self.on_problem(key, f"{where}: no caption string in column {text!r}")
                    continue
                if key in self._index:
                    first = self._index[key]
                    raise DuplicateKeyError(
                        f"key {key!r} is in {first.url} and again at {where}: keys must be "
                        "unique, since labels are joined to images by key"
                    )
                self._index[key] = _Row(url, group, i, caption.strip(), size)
            start += len(texts)

    def _group(self, url: str, group: int) -> pa.Table:
        """A row group's image column, through a small LRU cache."""
        slot = (url, group)
        if slot in self._groups:
            self._groups.move_to_end(slot)
            return self._groups[slot]
        table = self._open(url).read_row_group(group, columns=[self._columns[url][0]])
        self._groups[slot] = table
        while len(self._groups) > self._cached:
            self._groups.popitem(last=False)
        return table
