"""A folder of images with a captions file (`.jsonl`, `.csv` or `.parquet`), read through fsspec.

Each captions row has `file` (relative to the root) and `caption`, optionally `key` (default: `file`
without its extension); other columns become the sample's `meta`. Hugging Face's `imagefolder`
layout works as it is: `metadata.jsonl` / `metadata.csv` / `metadata.parquet` in the root, found
without being named, with `file_name` for the file and `text` (or any named column) for the
caption. A relative captions path is relative to the root. The rows are read once, up front, so
`keys()`, `len()` and `get(key)` need no scan.
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

FILE_COLUMNS = ("file", "file_name")  # mtv's, Hugging Face imagefolder's
CAPTION_COLUMNS = ("caption", "text")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
SPLIT_FOLDERS = ("train", "validation", "valid", "val", "test")  # Hugging Face's split names


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
        captions: str | None = None,
        storage_options: dict[str, Any] | None = None,
        *,
        on_problem: ProblemCallback | None = None,
        check_files: bool = True,
        text_column: str | None = None,
    ):
        self.root = root.rstrip("/") or root
        self.storage_options = dict(storage_options or {})
        reported = warn_problem if on_problem is None else on_problem
        self._problems: list[tuple[str, str]] = []

        def problem(where: str, reason: str) -> None:
            self._problems.append((where, reason))
            reported(where, reason)

        self.on_problem: ProblemCallback = problem
        self._fs, root_path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self._root_path = root_path.rstrip("/")
        if not self._fs.isdir(self._root_path):
            raise FileNotFoundError(f"image folder not found: {root}")
        self.captions = self._captions_file(captions)
        self.text_column = text_column
        # On a local disk a relative path can still leave the root through a symlink.
        self._real_root = (
            os.path.realpath(self._root_path) if isinstance(self._fs, LocalFileSystem) else None
        )
        present = self._list_files() if check_files else None
        self._sizes: dict[str, int] = present or {}
        self._entries: dict[str, _Entry] = {}
        self._columns: tuple[str, str] | None = None
        rows = 0
        for row, values in self._read_rows():
            rows += 1
            self._add(row, values, present)
        if not self._entries:
            why = f"first: {self._problems[0][1]}" if self._problems else "the file has no rows"
            raise ValueError(
                f"{self.captions}: no usable sample in {rows} row(s) ({why}); each row needs "
                f"a file ({' or '.join(FILE_COLUMNS)}) under {self.root} and a caption "
                f"({self.text_column or ' or '.join(CAPTION_COLUMNS)})"
            )

    def _captions_file(self, captions: str | None) -> str:
        """The captions file: as given (relative to the root unless absolute or a URL), else
        the imagefolder metadata file found in the root."""
        if captions is None:
            for name in METADATA_FILES:
                if self._fs.isfile(f"{self._root_path}/{name}"):
                    return f"{self.root}/{name}"
            splits = [
                split
                for split in SPLIT_FOLDERS
                if any(self._fs.isfile(f"{self._root_path}/{split}/{n}") for n in METADATA_FILES)
            ]
            if splits:
                # Hugging Face's layout of a dataset with splits: one imagefolder per split.
                first, last = splits[0], splits[-1]
                raise FileNotFoundError(
                    f"{self.root} holds a Hugging Face dataset in splits ({', '.join(splits)}), "
                    f"one imagefolder each: train on one (data.source.root: {self.root}/{first}) "
                    f"and evaluate on another (mtv eval --suite source --data "
                    f"{self.root}/{last})"
                )
            raise FileNotFoundError(
                f"{self.root} has no {', '.join(METADATA_FILES)} (Hugging Face imagefolder); "
                "name the captions file with data.source.captions"
            )
        if "://" in captions or posixpath.isabs(captions):
            return captions
        return f"{self.root}/{captions}"

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
        if name.endswith((".parquet", ".csv")):
            return self._read_table()
        raise ValueError(f"captions must be a .jsonl, .csv or .parquet file, got {self.captions}")

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

    def _read_table(self) -> Iterator[tuple[int, dict[str, Any]]]:
        csv = self.captions.lower().endswith(".csv")
        with self._open_captions() as file:
            try:
                frame = pl.read_csv(file) if csv else pl.read_parquet(file)
            except (pl.exceptions.PolarsError, OSError) as error:
                kind = "CSV" if csv else "parquet"
                raise ValueError(f"cannot read {self.captions} as {kind}: {error}") from None
        self._pick_columns(frame.columns)
        yield from enumerate(frame.iter_rows(named=True), start=1)

    def _row_columns(self, values: dict[str, Any]) -> tuple[str, str]:
        """A jsonl row's (file, caption) columns: the first of each kind it has."""
        file = next((c for c in FILE_COLUMNS if c in values), FILE_COLUMNS[0])
        texts = [self.text_column] if self.text_column else list(CAPTION_COLUMNS)
        return file, next((c for c in texts if c in values), texts[0])

    def _pick_columns(self, columns: Iterable[str]) -> tuple[str, str]:
        """(file column, caption column) of the captions file, chosen once from its columns."""
        if self._columns is None:
            names = list(columns)
            files = [c for c in FILE_COLUMNS if c in names]
            texts = [self.text_column] if self.text_column else list(CAPTION_COLUMNS)
            found = [c for c in texts if c in names]
            if not files or not found:
                needed = " or ".join(texts)
                raise ValueError(
                    f"{self.captions} has columns {', '.join(names)}; needed: a file column "
                    f"({' or '.join(FILE_COLUMNS)}), a caption column ({needed}), optional key"
                )
            self._columns = (files[0], found[0])
        return self._columns

    def _open_captions(self) -> Any:
        try:
            return fsspec.open(self.captions, "rb", **self.storage_options).open()
        except FileNotFoundError:
            raise FileNotFoundError(f"captions file not found: {self.captions}") from None

    def _add(self, row: int, values: dict[str, Any], present: dict[str, int] | None) -> None:
        where = f"{self.captions}:{row}"
        file_column, caption_column = self._columns or self._row_columns(values)
        file, caption = values.get(file_column), values.get(caption_column)
        key = values.get("key")
        if not isinstance(file, str) or not file:
            self.on_problem(
                where, f"row {row} has no `{file_column}` (a path relative to {self.root})"
            )
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
            self.on_problem(key, f"row {row} of {self.captions} has no `{caption_column}` string")
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
        used = (file_column, caption_column, "key")
        meta = {name: value for name, value in values.items() if name not in used}
        self._entries[key] = _Entry(file, caption.strip(), meta, row)
