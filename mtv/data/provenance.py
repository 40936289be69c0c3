"""Which corpus a label store labelled, and whether the source in hand is that corpus.

A store keeps, per sample, a 64-bit fingerprint of what the source said about it when it was
labelled (member sizes and formats for tar shards; file, size and caption for folders: nothing
that needs the image decoded). Matching a store against a source then finds:
- keys the store labels that the source lacks (another corpus, or a shrunk one): refused;
- keys in both whose fingerprints differ (same names, other images, e.g. the mini-world of
  another seed): refused, naming the samples;
- keys the source has and the store lacks (a grown source): said, and left out of training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class FingerprintedSource(Protocol):
    def keys(self) -> list[str]: ...

    def fingerprint(self, key: str) -> str: ...


def sample_fingerprints(source: FingerprintedSource, keys: Sequence[str]) -> np.ndarray:
    """(len(keys),) uint64: each sample's fingerprint, hashed."""
    out = np.empty(len(keys), dtype=np.uint64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(source.fingerprint(key).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


def content_digest(fingerprints: np.ndarray) -> str:
    """One digest of all the samples' fingerprints (in key order), for a store's attributes."""
    return hashlib.sha256(np.ascontiguousarray(fingerprints, dtype="<u8").tobytes()).hexdigest()[
        :16
    ]


def _examples(keys: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


@dataclass
class StoreMatch:
    """How a store's samples line up with a source's."""

    store: str
    source: str
    not_in_source: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    legacy: bool = False  # the store has no fingerprints (made before they existed)

    @property
    def refused(self) -> str:
        """Why the store cannot be used with the source ("" when it can)."""
        if self.legacy:
            return (
                f"the label store {self.store} records no fingerprints of the corpus it "
                "labelled (made by an older mtv), so it cannot be matched to the source: label "
                "the source again with `mtv label`"
            )
        if self.not_in_source:
            return (
                f"the label store {self.store} labels {len(self.not_in_source)} sample(s) the "
                f"source {self.source} does not have ({_examples(self.not_in_source)}): it was "
                "made from another corpus"
            )
        if self.changed:
            return (
                f"{len(self.changed)} sample(s) of the source {self.source} differ from the ones "
                f"the label store {self.store} labelled ({_examples(self.changed)}): same keys, "
                "other content, so it was made from another corpus; label this one with "
                "`mtv label`"
            )
        return ""

    @property
    def note(self) -> str:
        """What training will leave out, if anything."""
        if not self.unlabelled:
            return ""
        return (
            f"{len(self.unlabelled)} sample(s) of the source have no labels in {self.store} "
            f"({_examples(self.unlabelled)}) and are left out; label them with `mtv label`"
        )


def match_store(store: Any, source: FingerprintedSource, source_name: str) -> StoreMatch:
    """Compare `store` (a `LabelStore`) with `source`."""
    match = StoreMatch(str(store.path), source_name)
    source_keys = source.keys()
    present = set(source_keys)
    labelled = set(store.keys)
    match.not_in_source = [k for k in store.keys if k not in present]
    match.unlabelled = [k for k in source_keys if k not in labelled]
    if "fingerprints" not in store.root:
        match.legacy = True
        return match
    shared = [k for k in store.keys if k in present]
    now = sample_fingerprints(source, shared)
    rows = np.asarray([store.index[k] for k in shared], dtype=np.int64)
    then = store.root["fingerprints"][:][rows] if len(rows) else np.zeros(0, np.uint64)
    match.changed = [shared[i] for i in np.flatnonzero(now != then)]
    return match
