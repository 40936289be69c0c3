"""A folder of images with a captions file (`.jsonl` or `.parquet`), read through fsspec.

Each captions row has `file` (relative to the root) and `caption`, optionally `key` (default: `file`
without its extension); other columns become the sample's `meta`. The rows are read once, up
front, so `keys()`, `len()` and `get(key)` need no scan.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import polars as pl
from fsspec.implementations.local import LocalFileSystem

from mtv.data.sources import (
    DuplicateKeyError,
    ProblemCallback,
    Sample,
    is_unsafe_path,
    warn_problem,
)

_RESERVED_COLUMNS = ("file", "caption", "key")


@dataclass(frozen=True)
class _Entry:
    file: str  # normalised, relative to the root
    caption: str
    meta: dict[str, Any]
    row: int  # 1-based row (jsonl: line) in the captions file, for messages


class FolderSource:
    """Image-text samples from a folder of image files and a captions `.jsonl` or `.parquet`.

    Rows that cannot be used (no `file` or `caption`, a path outside the root, or, with
    `check_files`, an image file that does not exist) go to `on_problem` (key or location, reason)
    and are left out of `keys()`. Malformed jsonl lines and duplicate keys raise, naming the file
    and rows. `check_files` lists the root once (one recursive listing, not a request per file).
    """

    def __init__(
        self,
        root: str,
        captions: str,
        storage_options: dict[str, Any] | None = None,
        *,
        on_problem: ProblemCallback | None = None,
        check_files: bool = True,
    ):
        self.root = root.rstrip("/") or root
        self.captions = captions
        self.storage_options = dict(storage_options or {})
        self.on_problem: ProblemCallback = warn_problem if on_problem is None else on_problem
        self._fs, root_path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self._root_path = root_path.rstrip("/")
        if not self._fs.isdir(self._root_path):
            raise FileNotFoundError(f"image folder not found: {root}")
        # On a local disk a relative path can still leave the root through a symlink.
        self._real_root = (
            os.path.realpath(self._root_path) if isinstance(self._fs, LocalFileSystem) else None
        )
        present = self._list_files() if check_files else None
        self._sizes: dict[str, int] = present or {}
        self._entries: dict[str, _Entry] = {}
        for row, values in self._read_rows():
            self._add(row, values, present)

    def __repr__(self) -> str:
        return f"FolderSource({self.root!r}, {self.captions!r}, {len(self)} samples)"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        """Every usable key, in captions-file order."""
        return list(self._entries)

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_keys(self._entries)

    def iter_keys(self, keys: Iterable[str]) -> Iterator[Sample]:
        """The samples of `keys` (e.g. `keys()[rank::world]`), skipping and reporting images that
        have disappeared since the listing."""
        for key in keys:
            try:
                yield self.get(key)
            except FileNotFoundError as error:
                self.on_problem(key, str(error))

    def get(self, key: str) -> Sample:
        """The sample `key`; `KeyError` for an unknown key, `FileNotFoundError` for a lost file."""
        entry = self._entries.get(key)
        if entry is None:
            raise KeyError(f"no sample {key!r} in {self.captions}")
        if self._escapes(entry.file):  # made a symlink after the listing
            raise FileNotFoundError(
                f"row {entry.row} of {self.captions}: {entry.file!r} now leaves {self.root} "
                "through a symlink; not read"
            )
        try:
            with self._fs.open(f"{self._root_path}/{entry.file}", "rb") as file:
                image = file.read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"row {entry.row} of {self.captions}: image file {entry.file!r} not found under "
                f"{self.root}"
            ) from None
        extension = posixpath.splitext(entry.file)[1].lstrip(".").lower()
        origin = f"{self.root}/{entry.file}"
        return Sample(key, image, entry.caption, dict(entry.meta), origin, extension)

    def _escapes(self, file: str) -> bool:
        if self._real_root is None:
            return False
        real = os.path.realpath(os.path.join(self._root_path, file))
        return not real.startswith(self._real_root + os.sep)

    def fingerprint(self, key: str) -> str:
        """What identifies the sample's content without reading the image: its file, the file's
        byte size (when the root was listed) and its caption."""
        entry = self._entries[key]
        return f"{entry.file}:{self._sizes.get(entry.file, -1)}:{entry.caption}"

    def _list_files(self) -> dict[str, int]:
        """Every file under the root (relative path -> byte size), in one recursive listing."""
        prefix = f"{self._root_path}/"
        return {
            path[len(prefix) :]: int(info.get("size") or 0)
            for path, info in self._fs.find(self._root_path, detail=True).items()
            if path.startswith(prefix)
        }

    def _read_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        name = self.captions.lower()
        if name.endswith(".jsonl"):
            return self._read_jsonl()
        if name.endswith(".parquet"):
            return self._read_parquet()
        raise ValueError(f"captions must be a .jsonl or .parquet file, got {self.captions}")

    def _read_jsonl(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self._open_captions() as file:
            for line_number, raw in enumerate(file, start=1):
                where = f"{self.captions} line {line_number}"
                try:
                    line = raw.decode("utf-8")
                    if not line.strip():
                        continue
                    values = json.loads(line)
                except ValueError as error:  # also UnicodeDecodeError
                    raise ValueError(f"{where}: not valid UTF-8 JSON ({error})") from None
                if not isinstance(values, dict):
                    raise ValueError(
                        f"{where}: expected a JSON object, got {type(values).__name__}"
                    )
                yield line_number, values

    def _read_parquet(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self._open_captions() as file:
            try:
                frame = pl.read_parquet(file)
            except (pl.exceptions.PolarsError, OSError) as error:
                raise ValueError(f"cannot read {self.captions} as parquet: {error}") from None
        missing = [column for column in ("file", "caption") if column not in frame.columns]
        if missing:
            raise ValueError(
                f"{self.captions} has no column {', '.join(missing)} (columns: "
                f"{', '.join(frame.columns)}; needed: file, caption, optional key)"
            )
        yield from enumerate(frame.iter_rows(named=True), start=1)

    def _open_captions(self) -> Any:
        try:
            return fsspec.open(self.captions, "rb", **self.storage_options).open()
        except FileNotFoundError:
            raise FileNotFoundError(f"captions file not found: {self.captions}") from None

    def _add(self, row: int, values: dict[str, Any], present: dict[str, int] | None) -> None:
        where = f"{self.captions}:{row}"
        file, caption, key = values.get("file"), values.get("caption"), values.get("key")
        if not isinstance(file, str) or not file:
            self.on_problem(where, f"row {row} has no `file` (a path relative to {self.root})")
            return
        if is_unsafe_path(file):
            self.on_problem(where, f"row {row}: file {file!r} is absolute or leaves the root")
            return
        file = posixpath.normpath(file)
        if self._escapes(file):
            self.on_problem(where, f"row {row}: file {file!r} is a symlink that leaves the root")
            return
        if key is None:
            key = posixpath.splitext(file)[0]
        elif isinstance(key, int) and not isinstance(key, bool):
            key = str(key)  # integer ids from parquet
        if not isinstance(key, str) or not key:
            self.on_problem(where, f"row {row}: `key` must be a non-empty string, got {key!r}")
            return
        if not isinstance(caption, str):
            self.on_problem(key, f"row {row} of {self.captions} has no `caption` string")
            return
        if present is not None and file not in present:
            self.on_problem(
                key,
                f"row {row} of {self.captions}: image file {file!r} not found under {self.root}",
            )
            return
        if key in self._entries:
            raise DuplicateKeyError(
                f"key {key!r} is on rows {self._entries[key].row} and {row} of {self.captions}: "
                "keys must be unique, since labels are joined to images by key"
            )
        meta = {name: value for name, value in values.items() if name not in _RESERVED_COLUMNS}
        self._entries[key] = _Entry(file, caption.strip(), meta, row)
