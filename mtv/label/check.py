"""`mtv label check`: validate a label store and name every bad sample."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mtv.data.store import STATUS_OK, STATUS_UNDECODABLE, LabelStore


@dataclass(frozen=True)
class StoreProblem:
    key: str  # the sample's key, or "" for the store as a whole
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.key or '(store)'}: {self.field}: {self.message}"


def check_store(
    store: LabelStore, source_keys: Iterable[str] | None = None, chunk: int = 4096
) -> list[StoreProblem]:
    """Every problem of the store: incomplete labelling, depth maps of the wrong shape or with
    NaN/inf or values outside [0, 1], boxes outside [0, 1] or inverted, empty names, scores out
    of range, broken offsets, and (given the source's keys) keys missing on either side."""
    problems: list[StoreProblem] = []
    keys = store.keys
    n = len(keys)
    done = store.done()
    if not done.all():
        problems.append(
            StoreProblem("", "done", f"{int((~done).sum())} of {len(done)} chunks not labelled")
        )
    if not store.complete:
        problems.append(StoreProblem("", "complete", "the store was never finalised"))
    status = store.root["status"][:]
    for i in np.flatnonzero(~np.isin(status, [STATUS_OK, STATUS_UNDECODABLE])):
        problems.append(StoreProblem(keys[i], "status", f"unknown status {status[i]}"))
    if "depth" in store.attrs["kinds"]:
        problems += _check_depth(store, chunk)
    if "boxes" in store.attrs["kinds"] and store.complete:
        problems += _check_boxes(store)
    if source_keys is not None:
        source = set(source_keys)
        problems += [StoreProblem(k, "keys", "not in the source") for k in keys if k not in source]
        stored = set(keys)
        problems += [
            StoreProblem(k, "keys", "in the source but not in the store")
            for k in sorted(source - stored)
        ]
    if len(set(keys)) != n:
        problems.append(StoreProblem("", "keys", "duplicate keys"))
    return problems


def _check_depth(store: LabelStore, chunk: int) -> list[StoreProblem]:
    problems = []
    depth, valid = store.root["depth"], store.root["depth_valid"]
    resolution = store.attrs["resolution"]
    expected = (len(store.keys), resolution, resolution)
    if depth.shape != expected or valid.shape != expected:
        return [StoreProblem("", "depth", f"shape {depth.shape}, expected {expected}")]
    for start in range(0, len(store.keys), chunk):
        block = depth[start : start + chunk].astype(np.float32)
        finite = np.isfinite(block).all(axis=(1, 2))
        in_range = ((block >= 0) & (block <= 1)).all(axis=(1, 2)) | ~finite
        for i in np.flatnonzero(~finite):
            problems.append(StoreProblem(store.keys[start + i], "depth", "NaN or inf values"))
        for i in np.flatnonzero(~in_range):
            problems.append(StoreProblem(store.keys[start + i], "depth", "values outside [0, 1]"))
    return problems


def _check_boxes(store: LabelStore) -> list[StoreProblem]:
    group = store.root["boxes"]
    offsets = group["offsets"][:]
    values = group["values"][:]
    names = group["names"][:]
    scores = group["scores"][:]
    n = len(store.keys)
    if len(offsets) != n + 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any():
        return [StoreProblem("", "boxes.offsets", "not a monotone array of length N + 1 from 0")]
    if offsets[-1] != len(values) or len(names) != len(values) or len(scores) != len(values):
        return [StoreProblem("", "boxes", "values, names, scores and offsets disagree in length")]
    owner = np.repeat(np.arange(n), np.diff(offsets))
    problems = []
    outside = ~((values >= 0) & (values <= 1) & np.isfinite(values)).all(axis=1)
    inverted = (values[:, 2] < values[:, 0]) | (values[:, 3] < values[:, 1])
    for row in np.flatnonzero(outside):
        problems.append(
            StoreProblem(
                store.keys[owner[row]], "boxes", f"box {values[row].tolist()} outside [0, 1]"
            )
        )
    for row in np.flatnonzero(inverted & ~outside):
        problems.append(
            StoreProblem(
                store.keys[owner[row]],
                "boxes",
                f"box {values[row].tolist()} has x1 < x0 or y1 < y0",
            )
        )
    for row in np.flatnonzero([not str(name).strip() for name in names]):
        problems.append(StoreProblem(store.keys[owner[row]], "boxes.names", "empty entity name"))
    for row in np.flatnonzero(~((scores >= 0) & (scores <= 1))):
        problems.append(
            StoreProblem(
                store.keys[owner[row]], "boxes.scores", f"score {scores[row]} outside [0, 1]"
            )
        )
    return problems
