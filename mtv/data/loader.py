"""The training loader: source samples joined with their labels *by key*, turned into the views
the task graph asked for, batched, resumable, and robust to undecodable images."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from mtv.data.batch import Batch, name_id
from mtv.data.photometric import augment
from mtv.data.sources import UnusableSample, decode_image
from mtv.data.store import LabelStore
from mtv.data.views import ViewRequest, crop_boxes, crop_image, crop_map, sample_crop
from mtv.models.tokenizer import TextTokenizer
from mtv.runtime.signals import ignore_stop_signals
from mtv.specs.experiment import DataSpec
from mtv.specs.limits import DEFAULT_MAX_PIXELS

log = logging.getLogger("mtv.data")
# torchdata 0.11 calls an API that torch 2.13 deprecates; the warning means nothing to our users.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
MAX_SUBSTITUTES = 16  # consecutive undecodable samples tolerated before giving up


class TooManyBadSamples(RuntimeError):
    """More samples failed to decode than `data.loader.max_bad_fraction` allows."""


def _generator(*seed: int) -> torch.Generator:
    state = np.random.SeedSequence([abs(int(s)) for s in seed]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _signed(image: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1], the encoder's input range (as SigLIP)."""
    return image * 2.0 - 1.0


class ViewBuilder:
    """One sample's views and labels, as requested (CPU, in loader workers)."""

    def __init__(self, data: DataSpec, request: ViewRequest, tokenizer: TextTokenizer):
        self.views = data.views
        self.request = request
        self.tokenizer = tokenizer
        self.needs_regions = request.max_regions > 0
        self.needs_depth = request.depth

    def __call__(
        self, image: np.ndarray, caption: str, labels: dict[str, Any], generator: torch.Generator
    ) -> dict[str, Any]:
        # Crops are cut in [0, 1] (where colour augmentation works), then mapped to [-1, 1].
        pixels = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        size = tuple(pixels.shape[-2:])
        views = self.views
        crop = sample_crop(size, views.global_scale, views.aspect, generator, views.hflip)  # type: ignore[arg-type]
        global_view = crop_image(pixels, crop, self.request.global_size)
        if views.global_photometric is not None:
            global_view = augment(global_view, views.global_photometric, generator)
        out: dict[str, Any] = {"images": _signed(global_view)}
        out["crop"] = torch.tensor([crop.x0, crop.y0, crop.x1, crop.y1, float(crop.flip)])
        if self.request.caption:
            out["captions"] = self.tokenizer([caption])[0]
        if self.request.local_crops:
            local = []
            for _ in range(self.request.local_crops):
                box = sample_crop(
                    size, views.local_scale, views.aspect, generator, views.local_hflip
                )  # type: ignore[arg-type]
                view = crop_image(pixels, box, self.request.local_size)
                if views.local_photometric is not None:
                    view = augment(view, views.local_photometric, generator)
                local.append(_signed(view))
            out["local_images"] = torch.stack(local)
        if self.request.patch_mask is not None:
            out["patch_mask"] = self.request.patch_mask(generator)
        if self.needs_depth:
            depth, valid = crop_map(
                labels["depth"], labels["depth_valid"], crop, self.request.global_size
            )
            out["depth"], out["depth_valid"] = depth[None], valid[None]
        if self.needs_regions:
            out.update(self._regions(labels["boxes"], labels["names"], crop, generator))
        return out

    def _regions(
        self, boxes: np.ndarray, names: list[str], crop: Any, generator: torch.Generator
    ) -> dict[str, Tensor]:
        kept, mask = crop_boxes(boxes, crop, self.views.min_box_visibility)
        kept_names = [n for n, k in zip(names, mask, strict=True) if k]
        order = torch.randperm(len(kept_names), generator=generator)[
            : self.request.max_regions
        ].tolist()
        regions = self.request.max_regions
        out = {
            "boxes": torch.zeros(regions, 4),
            "box_valid": torch.zeros(regions, dtype=torch.bool),
            "region_name_ids": torch.zeros(regions, dtype=torch.long),
        }
        chosen = [kept_names[i] for i in order]
        if order:
            out["boxes"][: len(order)] = torch.from_numpy(kept[order])
            out["box_valid"][: len(order)] = True
            out["region_name_ids"][: len(order)] = torch.tensor([name_id(n) for n in chosen])
        out["region_slot_names"] = self.tokenizer(chosen + [""] * (regions - len(chosen)))
        return out


class KeyedDataset(Dataset):
    """Item (index, epoch) -> the views of sample keys[index]; its labels are looked up by the
    same key in the store, so no ordering of shards or files can pair an image with another
    image's labels. An undecodable image is replaced by the next key (deterministically) and
    reported in the item's `skipped` list."""

    def __init__(
        self,
        source: Any,
        keys: list[str],
        store: LabelStore | None,
        builder: ViewBuilder,
        seed: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.source, self.keys, self.store, self.builder, self.seed = (
            source,
            keys,
            store,
            builder,
            seed,
        )
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.keys)

    def labels(self, key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.store is None:
            return out
        if self.builder.needs_depth:
            depth, valid = self.store.depth(key)
            out["depth"], out["depth_valid"] = torch.from_numpy(depth), torch.from_numpy(valid)
        if self.builder.needs_regions:
            label = self.store.boxes(key)
            out["boxes"], out["names"] = label.boxes, label.names
        return out

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, epoch = item
        skipped: list[tuple[str, str]] = []
        for attempt in range(MAX_SUBSTITUTES):
            key = self.keys[(index + attempt) % len(self.keys)]
            try:
                sample = self.source.get(key)
                image = decode_image(sample, self.max_pixels)
            except UnusableSample as err:
                skipped.append((key, err.reason))
                continue
            generator = _generator(self.seed, epoch, index)
            out = self.builder(image, sample.caption, self.labels(key), generator)
            out["key"], out["skipped"] = key, skipped
            return out
        raise TooManyBadSamples(
            f"{MAX_SUBSTITUTES} consecutive samples from {self.keys[index]!r} could not be decoded"
        )


class EpochSampler(Sampler[tuple[int, int]]):
    """Endless (index, epoch) pairs: each epoch a seeded permutation, rank r taking every
    world-th index, so ranks see disjoint samples. Its state (epoch, position) makes resuming
    exact."""

    def __init__(
        self, size: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True
    ):
        if size < world:
            raise ValueError(f"{size} samples cannot be shared by {world} ranks")
        self.size, self.rank, self.world, self.seed, self.shuffle = size, rank, world, seed, shuffle
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> list[int]:
        order = (
            torch.randperm(self.size, generator=_generator(self.seed, epoch, 7)).tolist()
            if self.shuffle
            else list(range(self.size))
        )
        per_rank = self.size // self.world  # equal shares: every rank runs the same steps
        return order[self.rank :: self.world][:per_rank]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        while True:
            order = self._order(self.epoch)
            while self.position < len(order):
                self.position += 1
                yield order[self.position - 1], self.epoch
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


@dataclass
class BatchInfo:
    keys: list[str]  # the sample of each row
    crops: Tensor  # (B, 5): the global crop of each row, x0 y0 x1 y1 in [0, 1] and a flip flag
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) undecodable


INFO_FIELDS = ("key", "skipped", "crop")


def collate(items: list[dict[str, Any]]) -> tuple[Batch, BatchInfo]:
    fields = [k for k in items[0] if k not in INFO_FIELDS]
    batch = Batch(**{k: torch.stack([item[k] for item in items]) for k in fields})
    batch = batch.share_region_names()
    info = BatchInfo(
        [item["key"] for item in items],
        torch.stack([item["crop"] for item in items]),
        [s for item in items for s in item["skipped"]],
    )
    return batch, info


class BatchStream:
    """Batches from a resumable loader, with the health checks and timings a trainer reports:
    skipped samples (logged by key; the run stops above `max_bad_fraction`) and the time spent
    waiting for data."""

    def __init__(
        self,
        loader: StatefulDataLoader,
        max_bad_fraction: float,
        on_skip: Callable[[str, str], None] | None = None,
    ):
        self.loader, self.max_bad_fraction = loader, max_bad_fraction
        self.on_skip = on_skip or (lambda key, reason: log.warning("skipped %s: %s", key, reason))
        self.seen = self.bad = 0
        self.wait_seconds = 0.0
        self._iterator: Iterator[tuple[Batch, BatchInfo]] | None = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[Batch, BatchInfo]:
        start = time.perf_counter()
        if self._iterator is None:
            self._iterator = iter(self.loader)
        batch, info = next(self._iterator)
        self.wait_seconds += time.perf_counter() - start
        self.seen += len(info.keys) + len(info.skipped)
        self.bad += len(info.skipped)
        for key, reason in info.skipped:
            self.on_skip(key, reason)
        if self.bad > self.max_bad_fraction * max(self.seen, 100):
            raise TooManyBadSamples(
                f"{self.bad} of {self.seen} samples could not be decoded, more than "
                f"data.loader.max_bad_fraction = {self.max_bad_fraction} (latest: "
                f"{info.skipped[-1][0] if info.skipped else '?'}); check the source's images"
            )
        return batch, info

    def close(self) -> None:
        """Stop the loader's worker processes now. Left to the interpreter's exit, a failed run
        waited forever on its persistent workers (they ignore stop signals, which the trainer
        handles) after printing its error."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(), "seen": self.seen, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        self.seen, self.bad = state["seen"], state["bad"]
        self._iterator = None


def build_stream(
    data: DataSpec,
    request: ViewRequest,
    source: Any,
    store: LabelStore | None,
    tokenizer: TextTokenizer,
    rank: int = 0,
    world: int = 1,
    keys: list[str] | None = None,
    accumulate: int = 1,
    pin_memory: bool = False,
) -> BatchStream:
    """The rank's stream of micro-batches: global batch / (world x accumulate) samples each.
    `pin_memory` (for CUDA training): batches arrive in page-locked memory, so the trainer's
    non-blocking copy to the GPU is a DMA transfer instead of a synchronous staged copy."""
    if data.batch_size % (world * accumulate):
        raise ValueError(
            f"data.batch_size {data.batch_size} is not divisible by {world} rank(s) x "
            f"{accumulate} accumulation step(s)"
        )
    keys = list(keys if keys is not None else (store.keys if store is not None else source.keys()))
    seed = data.loader.seed
    builder = ViewBuilder(data, request, tokenizer)
    dataset = KeyedDataset(source, keys, store, builder, seed, data.loader.max_pixels)
    workers = data.loader.workers
    loader = StatefulDataLoader(
        dataset,
        batch_size=data.batch_size // (world * accumulate),
        sampler=EpochSampler(len(keys), rank, world, seed),
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=pin_memory,
        worker_init_fn=ignore_stop_signals,
    )
    return BatchStream(loader, data.loader.max_bad_fraction)
