"""Webdataset-style tar shards read through fsspec: streaming iteration and random access by key.

A shard holds samples as adjacent members `KEY.jpg|jpeg|png|webp` + `KEY.txt` [+ `KEY.json`]. As
in webdataset, the key is the member path up to the first dot of its base name
(`dir/000123.jpg` -> `dir/000123`), so keys come from names, never from reading order.

Members are read into memory; nothing is ever extracted, so names such as `../x` or `/etc/x`
cannot write anywhere (they are also refused as keys). Non-regular members (directories, links,
devices) are ignored.
"""

from __future__ import annotations

import json
import lzma
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

import fsspec

from mtv.data.sources import (
    DuplicateKeyError,
    ProblemCallback,
    Sample,
    UnusableSample,
    expand_braces,
    is_unsafe_path,
    warn_problem,
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
META_EXTENSION = "json"
_READ_EXTENSIONS = frozenset((*IMAGE_EXTENSIONS, CAPTION_EXTENSION, META_EXTENSION))
# Errors of a damaged shard (bad header, cut-off data, broken compression): the shard is reported
# and left, the run goes on. Network errors (OSError) are not among them and propagate.
_SHARD_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)
_COMPRESSION_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_BLOCK = tarfile.BLOCKSIZE


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a tar member name as webdataset splits it, or None for
    names without an extension (and hidden `.name` files, such as macOS `._x` forks)."""
    while name.startswith("./"):
        name = name[2:]
    directory, slash, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not stem or not dot or not extension:
        return None
    return directory + slash + stem, extension.lower()


class Span(NamedTuple):
    """Where one member's bytes lie in its shard."""

    name: str  # the member name, checked against the tar header on read
    offset: int  # of the data (TarInfo.offset_data)
    size: int


@dataclass(frozen=True)
class MemberRef:
    """Where one sample's members lie, for reading it with a seek and no scan."""

    shard: str
    image_format: str
    image: Span
    caption: Span
    meta: Span | None = None


class _SampleProblem(Exception):
    """A sample that cannot be used; iteration reports and skips it, `get` raises."""


_Parts = dict[str, tuple[tarfile.TarInfo, bytes | None]]


class TarShardSource:
    """Image-text samples from webdataset-style tar shards (local paths or any fsspec URL).

    `urls` may hold brace patterns. Iteration streams each shard in the given order; samples
    missing an image or caption, and damaged shards, go to `on_problem` (key or location, reason)
    and are skipped. A key seen twice raises `DuplicateKeyError` naming both shards (tracked over
    the shards of one iteration; `check_duplicates=False` saves that memory on huge corpora).
    """

    def __init__(
        self,
        urls: list[str] | str,
        storage_options: dict[str, Any] | None = None,
        *,
        on_problem: ProblemCallback | None = None,
        check_duplicates: bool = True,
    ):
        patterns = [urls] if isinstance(urls, str) else list(urls)
        shards = [url for pattern in patterns for url in expand_braces(pattern)]
        if not shards:
            raise ValueError("a shard source needs at least one shard URL")
        repeated = sorted({url for url in shards if shards.count(url) > 1})
        if repeated:
            raise ValueError(f"shards listed more than once: {repeated[:5]}")
        self._shards = shards
        self.storage_options = dict(storage_options or {})
        self.on_problem: ProblemCallback = warn_problem if on_problem is None else on_problem
        self.check_duplicates = check_duplicates
        self._index: dict[str, MemberRef] | None = None

    @property
    def shards(self) -> list[str]:
        """The shard URLs, braces expanded, in the given order."""
        return list(self._shards)

    def __repr__(self) -> str:
        return f"TarShardSource({len(self._shards)} shards, first {self._shards[0]!r})"

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_shards(range(len(self._shards)))

    def iter_shards(self, indices: Iterable[int]) -> Iterator[Sample]:
        """Samples of the shards at `indices` (positions in `shards`), in that order: give each
        DataLoader worker or rank its own indices."""
        chosen = [self._shard_at(index) for index in indices]  # bad indices fail here, not later
        return self._iter_urls(chosen)

    def _iter_urls(self, urls: list[str]) -> Iterator[Sample]:
        seen: dict[str, str] | None = {} if self.check_duplicates else None
        for url in urls:
            yield from self._iter_shard(url, seen)

    def _iter_shard(self, url: str, seen: dict[str, str] | None) -> Iterator[Sample]:
        with self._open(url) as stream:
            size = _size_if_uncompressed(stream)
            groups = self._groups(stream, url, "r|*", seen, size)
            while (group := self._next_group(groups, url)) is not None:
                key, parts = group
                try:
                    image_format = _check_parts(parts)
                    yield _make_sample(
                        key, url, image_format, {e: d for e, (_, d) in parts.items()}
                    )
                except _SampleProblem as problem:
                    self.on_problem(key, f"{problem} (shard {url})")

    def build_index(self) -> dict[str, MemberRef]:
        """Scan the tar headers of every shard (no image data is read) and keep, per key, where
        its members lie; `get` then reads one sample with a seek. Needs uncompressed shards."""
        index: dict[str, MemberRef] = {}
        seen: dict[str, str] = {}
        for url in self._shards:
            with self._open(url) as stream:
                _refuse_compressed(stream, url)
                size = _size_if_uncompressed(stream)
                groups = self._groups(stream, url, "r:", seen, size)
                while (group := self._next_group(groups, url)) is not None:
                    key, parts = group
                    try:
                        image_format = _check_parts(parts)
                        _check_inside(parts, size)
                    except _SampleProblem as problem:
                        self.on_problem(key, f"{problem} (shard {url})")
                        continue
                    spans = {
                        ext: Span(info.name, info.offset_data, info.size)
                        for ext, (info, _) in parts.items()
                    }
                    index[key] = MemberRef(
                        url,
                        image_format,
                        spans[image_format],
                        spans[CAPTION_EXTENSION],
                        spans.get(META_EXTENSION),
                    )
        self._index = index
        return index

    def get(self, key: str) -> Sample:
        """The sample `key`, read by seeking into its shard (the index is built on first use)."""
        index = self._index if self._index is not None else self.build_index()
        ref = index.get(key)
        if ref is None:
            raise KeyError(f"no sample {key!r} in the {len(self._shards)} shards of this source")
        spans = {ref.image_format: ref.image, CAPTION_EXTENSION: ref.caption}
        if ref.meta is not None:
            spans[META_EXTENSION] = ref.meta
        with self._open(ref.shard) as stream:
            data = {ext: _read_span(stream, span, ref.shard) for ext, span in spans.items()}
        try:
            return _make_sample(key, ref.shard, ref.image_format, data)
        except _SampleProblem as problem:
            raise UnusableSample(key, ref.shard, str(problem)) from None

    def fingerprint(self, key: str) -> str:
        """What identifies the sample's content without reading it: its members' formats and
        byte sizes, from the index (another corpus with the same keys differs in them)."""
        index = self._index if self._index is not None else self.build_index()
        ref = index[key]
        meta = ref.meta.size if ref.meta is not None else -1
        return f"{ref.image_format}:{ref.image.size}:{ref.caption.size}:{meta}"

    def keys(self) -> list[str]:
        """Every usable key, in shard order (builds the index on first use)."""
        return list(self._index if self._index is not None else self.build_index())

    def save_index(self, path: str) -> None:
        """Write the index as JSON (e.g. next to the shards), so other processes skip the scan."""
        index = self._index if self._index is not None else self.build_index()
        position = {url: at for at, url in enumerate(self._shards)}
        samples = {
            key: [position[ref.shard], ref.image_format, ref.image, ref.caption, ref.meta]
            for key, ref in index.items()
        }
        document = {"format": "mtv-tar-index", "version": 1, "shards": self._shards}
        fs, target = fsspec.core.url_to_fs(path, **self.storage_options)
        partial = f"{target}.partial"
        # Written aside then moved, so a killed writer never leaves a half index under `path`.
        with fs.open(partial, "w") as file:
            json.dump({**document, "samples": samples}, file)
        fs.mv(partial, target)

    def load_index(self, path: str) -> dict[str, MemberRef]:
        """Read an index written by `save_index` for exactly these shards."""
        with fsspec.open(path, "r", **self.storage_options) as file:
            try:
                document = json.load(file)
            except ValueError as error:
                raise ValueError(f"{path} is not a shard index: {error}") from None
        if not isinstance(document, dict) or document.get("format") != "mtv-tar-index":
            raise ValueError(f"{path} is not a shard index written by save_index")
        if document["shards"] != self._shards:
            raise ValueError(f"the index {path} was built for other shards than this source's")
        shards = document["shards"]
        self._index = {
            key: MemberRef(
                shards[at], fmt, Span(*image), Span(*caption), Span(*meta) if meta else None
            )
            for key, (at, fmt, image, caption, meta) in document["samples"].items()
        }
        return self._index

    def _shard_at(self, index: int) -> str:
        if not 0 <= index < len(self._shards):
            raise IndexError(f"shard index {index} outside 0..{len(self._shards) - 1}")
        return self._shards[index]

    def _open(self, url: str) -> IO[bytes]:
        try:
            return fsspec.open(url, "rb", **self.storage_options).open()
        except FileNotFoundError:
            raise FileNotFoundError(f"shard not found: {url}") from None

    def _groups(
        self,
        stream: IO[bytes],
        url: str,
        mode: str,
        seen: dict[str, str] | None,
        size: int | None,
    ) -> Iterator[tuple[str, _Parts]]:
        """Adjacent members grouped by key. Mode "r|*" streams data (any compression), "r:"
        seeks over it and yields headers only. Keys are claimed in `seen` unless it is None.
        `size` (of an uncompressed shard): the end of the archive is checked against it."""
        with tarfile.open(fileobj=stream, mode=mode) as tar:  # type: ignore[call-overload]
            yield from self._group_members(tar, url, mode.startswith("r|"), seen)
            if size is not None and size - tar.offset < 2 * _BLOCK:
                # tarfile takes a header cut short for the end of the archive and stops without
                # a word; a complete archive ends with two zero blocks after its last member.
                self.on_problem(
                    url,
                    f"shard ends early: cut at byte {size} inside the member that starts at "
                    f"byte {tar.offset}; the samples after it are lost (damaged or incomplete "
                    "copy?)",
                )

    def _group_members(
        self, tar: tarfile.TarFile, url: str, read: bool, seen: dict[str, str] | None
    ) -> Iterator[tuple[str, _Parts]]:
        key: str | None = None
        parts: _Parts = {}
        for info in tar:
            if not info.isreg():
                continue  # directories, links, devices: nothing to read, nothing to follow
            if is_unsafe_path(info.name):
                self.on_problem(f"{url}:{info.name}", "absolute or '..' member name, ignored")
                continue
            split = split_member_name(info.name)
            if split is None:
                continue  # no extension: not part of any sample (as in webdataset)
            if split[0] != key:
                if key is not None:
                    yield key, parts
                key, parts = split[0], {}
                if seen is not None:
                    _claim(seen, key, url)
            extension = split[1]
            if extension in parts:
                raise DuplicateKeyError(f"member {info.name!r} appears twice in shard {url}")
            data = None
            if read and extension in _READ_EXTENSIONS:
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
            parts[extension] = (info, data)
        if key is not None:
            yield key, parts

    def _next_group(
        self, groups: Iterator[tuple[str, _Parts]], url: str
    ) -> tuple[str, _Parts] | None:
        # A damaged shard ends here: the sample being read when it broke is never yielded.
        try:
            return next(groups, None)
        except _SHARD_ERRORS as error:
            self.on_problem(
                url, f"damaged shard, rest of it skipped: {type(error).__name__}: {error}"
            )
            return None


def _claim(seen: dict[str, str], key: str, url: str) -> None:
    first = seen.get(key)
    if first is not None:
        where = (
            f"twice in shard {url} (the members of one sample must be adjacent)"
            if first == url
            else f"in shard {first} and again in shard {url}"
        )
        raise DuplicateKeyError(
            f"key {key!r} is {where}: keys must be unique in the corpus, since labels are "
            "joined to images by key"
        )
    seen[key] = url


def _check_parts(parts: _Parts) -> str:
    """The image extension of a complete sample; `_SampleProblem` for an incomplete one."""
    images = [ext for ext in IMAGE_EXTENSIONS if ext in parts]
    if not images:
        raise _SampleProblem("no image member (.jpg, .jpeg, .png or .webp)")
    if len(images) > 1:
        raise _SampleProblem(f"several image members ({', '.join(images)}): ambiguous")
    if CAPTION_EXTENSION not in parts:
        raise _SampleProblem("no caption member (.txt)")
    return images[0]


def _make_sample(key: str, url: str, image_format: str, data: dict[str, Any]) -> Sample:
    try:
        caption = data[CAPTION_EXTENSION].decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise _SampleProblem(f"caption is not UTF-8 ({error})") from None
    meta: Any = {}
    if data.get(META_EXTENSION) is not None:
        try:
            meta = json.loads(data[META_EXTENSION])
        except ValueError as error:
            raise _SampleProblem(f"{key}.json is not valid JSON ({error})") from None
        if not isinstance(meta, dict):
            raise _SampleProblem(f"{key}.json holds a {type(meta).__name__}, not an object")
    return Sample(key, data[image_format], caption, meta, url, image_format)


def _size_if_uncompressed(stream: IO[bytes]) -> int | None:
    """The byte size of a seekable, uncompressed shard (None otherwise: then tarfile's offsets
    count decompressed bytes, and the end cannot be checked against the size)."""
    try:
        head = stream.read(6)
        size = stream.seek(0, 2)
        stream.seek(0)
    except (OSError, ValueError):
        return None
    return None if any(head.startswith(m) for m in _COMPRESSION_MAGIC) else size


def _check_inside(parts: _Parts, size: int | None) -> None:
    """A sample whose data runs past the end of its shard (cut inside it) is unusable."""
    for info, _ in parts.values():
        if size is not None and info.offset_data + info.size > size:
            raise _SampleProblem(
                f"member {info.name!r} is cut: its data ends at byte "
                f"{info.offset_data + info.size}, the shard at {size}"
            )


def _refuse_compressed(stream: IO[bytes], url: str) -> None:
    head = stream.read(6)
    stream.seek(0)
    for magic, name in _COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            raise ValueError(
                f"random access needs uncompressed .tar shards; {url} is {name}-compressed "
                "(iterating over it works)"
            )


def _read_span(stream: IO[bytes], span: Span, url: str) -> bytes:
    # The member's own 512-byte header sits right before its data: read both at once and check
    # the header, so an index gone stale (shard rewritten) fails loudly instead of joining a
    # label to the wrong image.
    stream.seek(span.offset - _BLOCK)
    block = stream.read(_BLOCK + span.size)
    try:
        header = tarfile.TarInfo.frombuf(block[:_BLOCK], tarfile.ENCODING, "surrogateescape")
    except tarfile.TarError:
        header = None
    short_name = len(span.name.encode()) < 100 and span.name.isascii()
    if (
        header is None
        or header.size != span.size
        or len(block) != _BLOCK + span.size
        or (short_name and header.name != span.name)
    ):
        raise ValueError(
            f"shard {url} no longer matches its index at member {span.name!r}: rebuild the index"
        )
    return block[_BLOCK:]
