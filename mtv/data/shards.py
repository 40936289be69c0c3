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
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec

from mtv.data.shard_index import (
    SHARD_ERRORS,
    ShardListing,
    Span,
    StaleIndexWarning,
    load_listing,
    open_shard,
    ordered_map,
    read_members,
    read_sidecar,
    scan_shard,
    size_if_uncompressed,
    write_sidecar,
)
from mtv.data.sources import (
    DuplicateKeyError,
    ProblemCallback,
    Sample,
    UnusableSample,
    expand_braces,
    is_unsafe_path,
    warn_problem,
)
from mtv.specs.limits import DEFAULT_INDEX_THREADS

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
META_EXTENSION = "json"
_READ_EXTENSIONS = frozenset((*IMAGE_EXTENSIONS, CAPTION_EXTENSION, META_EXTENSION))
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


_Parts = dict[str, tuple[Span, bytes | None]]
_Reader = Callable[[], bytes]


@dataclass(frozen=True)
class SidecarReport:
    """What `TarShardSource.write_sidecars` did."""

    shards: int
    written: int  # sidecars written (missing, stale, or all of them with `force`)
    kept: int  # sidecars that already matched their shard
    samples: int  # usable samples in the index built from the listings
    damaged: list[str]  # shards whose scan stopped at damage (their sidecars say so)


class TarShardSource:
    """Image-text samples from webdataset-style tar shards (local paths or any fsspec URL).

    `urls` may hold brace patterns. Iteration streams each shard in the given order; samples
    missing an image or caption, and damaged shards, go to `on_problem` (key or location, reason)
    and are skipped. A key seen twice raises `DuplicateKeyError` naming both shards (tracked over
    the shards of one iteration; `check_duplicates=False` saves that memory on huge corpora).

    Random access (`keys`, `get`, `fingerprint`) needs an index of every shard's members. Each
    shard's listing comes from its sidecar `SHARD.tar.idx.json` when that matches the shard
    (`sidecars=False`: never), else from a scan of its tar headers; `index_threads` shards are
    listed at once (1: one after the other, in this thread), and the listings are indexed in
    shard order here, so keys, duplicate-key errors and problem reports are those of a
    sequential scan.
    """

    def __init__(
        self,
        urls: list[str] | str,
        storage_options: dict[str, Any] | None = None,
        *,
        on_problem: ProblemCallback | None = None,
        check_duplicates: bool = True,
        index_threads: int = DEFAULT_INDEX_THREADS,
        sidecars: bool = True,
    ):
        patterns = [urls] if isinstance(urls, str) else list(urls)
        shards = [url for pattern in patterns for url in expand_braces(pattern)]
        if not shards:
            raise ValueError("a shard source needs at least one shard URL")
        if len(set(shards)) != len(shards):
            counts = Counter(shards)  # not list.count per shard: quadratic on 10,000 shards
            repeated = sorted(url for url, n in counts.items() if n > 1)
            raise ValueError(f"shards listed more than once: {repeated[:5]}")
        if index_threads < 1:
            raise ValueError(f"index_threads must be at least 1, not {index_threads}")
        self._shards = shards
        self.storage_options = dict(storage_options or {})
        self.on_problem: ProblemCallback = warn_problem if on_problem is None else on_problem
        self.check_duplicates = check_duplicates
        self.index_threads = index_threads
        self.sidecars = sidecars
        self._index: dict[str, MemberRef] | None = None

    @property
    def shards(self) -> list[str]:
        """The shard URLs, braces expanded, in the given order."""
        return list(self._shards)

    def __repr__(self) -> str:
        return f"TarShardSource({len(self._shards)} shards, first {self._shards[0]!r})"

    def __iter__(self) -> Iterator[Sample]:
        return self._iter_urls(self._shards)

    def _iter_urls(self, urls: list[str]) -> Iterator[Sample]:
        seen: dict[str, str] | None = {} if self.check_duplicates else None
        for url in urls:
            yield from self._iter_shard(url, seen)

    def _iter_shard(self, url: str, seen: dict[str, str] | None) -> Iterator[Sample]:
        with open_shard(url, self.storage_options) as stream:
            size = size_if_uncompressed(stream)
            groups = self._stream_groups(stream, url, seen, size)
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
        """List every shard (from its sidecar, or by scanning its tar headers: no image data is
        read) and keep, per key, where its members lie; `get` then reads one sample with one
        ranged read. Needs uncompressed shards."""
        listings = ordered_map(self._listing, self._shards, self._threads())
        return self._index_listings(listings)

    def write_sidecars(
        self, force: bool = False, progress: Callable[[int], None] | None = None
    ) -> SidecarReport:
        """Write the sidecar index of every shard that has none or a stale one (`force`: of
        every shard), on `index_threads` threads, then build the index from the listings (so
        problems and duplicate keys are reported as `keys()` would). `progress(1)` per shard."""
        counts = {"written": 0, "kept": 0}
        damaged: list[str] = []

        def listing_of(url: str) -> tuple[ShardListing, bool]:
            found = None if force else read_sidecar(url, self.storage_options)
            if found is not None and found.stale is None:
                return found, False
            scanned = scan_shard(url, self.storage_options)
            write_sidecar(scanned, self.storage_options)
            return scanned, True

        def counted(pairs: Iterator[tuple[ShardListing, bool]]) -> Iterator[ShardListing]:
            for listing, written in pairs:
                counts["written" if written else "kept"] += 1
                if listing.damage is not None:
                    damaged.append(listing.url)
                if progress is not None:
                    progress(1)
                yield listing

        pairs = ordered_map(listing_of, self._shards, self._threads())
        index = self._index_listings(counted(pairs))
        shards, written, kept = len(self._shards), counts["written"], counts["kept"]
        return SidecarReport(shards, written, kept, len(index), damaged)

    def _threads(self) -> int:
        return min(self.index_threads, len(self._shards))

    def _listing(self, url: str) -> ShardListing:
        return load_listing(url, self.storage_options, self.sidecars)

    def _index_listings(self, listings: Iterable[ShardListing]) -> dict[str, MemberRef]:
        index: dict[str, MemberRef] = {}
        seen: dict[str, str] = {}
        stale: list[str] = []
        try:
            for listing in listings:  # in shard order, whatever thread listed them
                if listing.stale is not None:
                    stale.append(f"{listing.url} ({listing.stale})")
                self._index_listing(listing, index, seen)
        finally:
            if stale:  # one warning, not one per shard of a corpus rewritten in place
                more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
                warnings.warn(
                    f"ignored the sidecar index of {len(stale)} shard(s) and scanned them "
                    f"instead: {'; '.join(stale[:3])}{more}; `mtv data index` rewrites them",
                    StaleIndexWarning,
                    stacklevel=3,
                )
        self._index = index
        return index

    def _index_listing(
        self, listing: ShardListing, index: dict[str, MemberRef], seen: dict[str, str]
    ) -> None:
        url, size = listing.url, listing.size
        groups = self._group_members(_listed(listing), url, seen)
        while (group := self._next_group(groups, url)) is not None:
            key, parts = group
            try:
                image_format = _check_parts(parts)
                _check_inside(parts, size)
            except _SampleProblem as problem:
                self.on_problem(key, f"{problem} (shard {url})")
                continue
            spans = {ext: span for ext, (span, _) in parts.items()}
            index[key] = MemberRef(
                url,
                image_format,
                spans[image_format],
                spans[CAPTION_EXTENSION],
                spans.get(META_EXTENSION),
            )
        if listing.damage is None:
            self._check_end(url, size, listing.end)

    def get(self, key: str) -> Sample:
        """The sample `key`, read from its shard with one ranged read (the index is built on
        first use); every member's tar header is checked against the index."""
        index = self._index if self._index is not None else self.build_index()
        ref = index.get(key)
        if ref is None:
            raise KeyError(f"no sample {key!r} in the {len(self._shards)} shards of this source")
        spans = {ref.image_format: ref.image, CAPTION_EXTENSION: ref.caption}
        if ref.meta is not None:
            spans[META_EXTENSION] = ref.meta
        # fsspec keeps one filesystem per thread and per options: finding it costs ~10 us.
        fs, path = fsspec.core.url_to_fs(ref.shard, **self.storage_options)
        data = read_members(fs, path, ref.shard, spans)
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

    def _stream_groups(
        self, stream: IO[bytes], url: str, seen: dict[str, str] | None, size: int | None
    ) -> Iterator[tuple[str, _Parts]]:
        """Adjacent members grouped by key, their data read as the stream passes (any
        compression). Keys are claimed in `seen` unless it is None. `size` (of an uncompressed
        shard): the end of the archive is checked against it."""
        with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
            yield from self._group_members(_tar_members(tar), url, seen)
            self._check_end(url, size, tar.offset)

    def _check_end(self, url: str, size: int | None, end: int) -> None:
        if size is not None and size - end < 2 * _BLOCK:
            # tarfile takes a header cut short for the end of the archive and stops without
            # a word; a complete archive ends with two zero blocks after its last member.
            self.on_problem(
                url,
                f"shard ends early: cut at byte {size} inside the member that starts at "
                f"byte {end}; the samples after it are lost (damaged or incomplete copy?)",
            )

    def _group_members(
        self,
        members: Iterable[tuple[Span, _Reader | None]],
        url: str,
        seen: dict[str, str] | None,
    ) -> Iterator[tuple[str, _Parts]]:
        key: str | None = None
        parts: _Parts = {}
        for span, reader in members:
            if is_unsafe_path(span.name):
                self.on_problem(f"{url}:{span.name}", "absolute or '..' member name, ignored")
                continue
            split = split_member_name(span.name)
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
                raise DuplicateKeyError(f"member {span.name!r} appears twice in shard {url}")
            data = None
            if reader is not None and extension in _READ_EXTENSIONS:
                data = reader()
            parts[extension] = (span, data)
        if key is not None:
            yield key, parts

    def _next_group(
        self, groups: Iterator[tuple[str, _Parts]], url: str
    ) -> tuple[str, _Parts] | None:
        # A damaged shard ends here: the sample being read when it broke is never yielded.
        try:
            return next(groups, None)
        except _DamagedShard as damage:
            self.on_problem(url, f"damaged shard, rest of it skipped: {damage}")
        except SHARD_ERRORS as error:
            self.on_problem(
                url, f"damaged shard, rest of it skipped: {type(error).__name__}: {error}"
            )
        return None


class _DamagedShard(Exception):
    """The damage a listing recorded, raised where the scan met it."""


def _tar_members(tar: tarfile.TarFile) -> Iterator[tuple[Span, _Reader | None]]:
    """A streamed archive's regular members, each with a reader of its data (called only for
    the members a sample reads, and only once the sample before has been yielded)."""
    for info in tar:
        if info.isreg():  # directories, links, devices: nothing to read, nothing to follow
            span = Span(info.name, info.offset_data, info.size)
            yield span, lambda info=info: tar.extractfile(info).read()  # type: ignore[union-attr, misc]


def _listed(listing: ShardListing) -> Iterator[tuple[Span, _Reader | None]]:
    """A listing's members as a scan would meet them, the damage (if any) where it stopped."""
    for span in listing.members:
        yield span, None
    if listing.damage is not None:
        raise _DamagedShard(listing.damage)


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


def _check_inside(parts: _Parts, size: int | None) -> None:
    """A sample whose data runs past the end of its shard (cut inside it) is unusable."""
    for span, _ in parts.values():
        if size is not None and span.offset + span.size > size:
            raise _SampleProblem(
                f"member {span.name!r} is cut: its data ends at byte "
                f"{span.offset + span.size}, the shard at {size}"
            )
