"""Data: image-text sources over fsspec (tar shards, image folders) and image decoding."""

from mtv.data.folder import FolderSource
from mtv.data.shard_index import StaleIndexWarning
from mtv.data.shards import MemberRef, SidecarReport, Span, TarShardSource, split_member_name
from mtv.data.sources import (
    CorruptImageError,
    DuplicateKeyError,
    ProblemCallback,
    Sample,
    SkippedSampleWarning,
    UnusableSample,
    decode_image,
    expand_braces,
    open_source,
    warn_problem,
)

__all__ = [
    "CorruptImageError",
    "DuplicateKeyError",
    "FolderSource",
    "MemberRef",
    "ProblemCallback",
    "Sample",
    "SidecarReport",
    "SkippedSampleWarning",
    "Span",
    "StaleIndexWarning",
    "TarShardSource",
    "UnusableSample",
    "decode_image",
    "expand_braces",
    "open_source",
    "split_member_name",
    "warn_problem",
]
