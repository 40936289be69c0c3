"""Data-path benchmark: renderer, labelling experts, label-store writes (and, run alone, loader
throughput).

    python benchmarks/data.py [--out benchmarks/results] [--scenes 512] [--quick]

Every figure is a rate or a ratio measured side by side in this one process (medians of
repeats where it matters); the machine is named in the output. Writes Markdown and Parquet.
`benchmarks/run.py` runs `measure` as part 5 of the performance suite.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mtv.label import run_labelling
from mtv.specs import load_spec
from mtv.specs.label import LabelSpec
from mtv.world.corpus import render_corpus
from mtv.world.render import render_views
from mtv.world.scene import sample_scene

from common import ROOT, Row, Table, folder_bytes, median_rate

PART = "5 data"


def renderer_rows() -> list[Row]:
    scenes = [sample_scene(0, i) for i in range(128)]
    items = [(s, 0) for s in scenes]
    render_views(items, 64)  # warm-up
    return [
        Row(
            PART,
            "renderer, 64x64, shadows",
            median_rate(128, lambda: render_views(items, 64)),
            "images/s",
            note="batch 128",
        ),
        Row(
            PART,
            "renderer, 64x64, no shadows",
            median_rate(128, lambda: render_views(items, 64, shadows=False)),
            "images/s",
        ),
    ]


def experts(tmp: Path, quick: bool) -> dict[str, tuple[dict[str, Any], int]]:
    """Expert settings by name, each with the number of scenes it labels. The tiny transformers
    models cost well under a millisecond per image, as the oracles do; a Base-sized Depth
    Anything V2 at its 518 px input (random weights: the cost, not the quality) is what a real
    labelling run pays, so it is measured too, on a few images."""
    out: dict[str, tuple[dict[str, Any], int]] = {
        "oracle depth + oracle boxes": ({}, 0),
        "oracle depth (noisy)": (
            {
                "depth": {"kind": "oracle", "blur_sigma": 1.0, "noise": 0.05, "warp": 0.05},
                "boxes": None,
            },
            0,
        ),
    }
    try:
        from tests.tiny_hf import build_tiny_depth_anything, build_tiny_owlv2
    except ImportError as err:
        print(f"(transformers experts skipped: {err})")
        return out
    da2 = str(build_tiny_depth_anything(tmp / "da2"))
    out["tiny Depth Anything V2 (random init)"] = (
        {"depth": {"kind": "depth_anything", "model": da2}, "boxes": None},
        0,
    )
    owl = str(build_tiny_owlv2(tmp / "owl"))
    out["tiny OWLv2 (random init) + caption tagger"] = (
        {"depth": None, "boxes": {"kind": "owlv2", "model": owl, "threshold": 0.05}},
        0,
    )
    if not quick:
        base = str(build_tiny_depth_anything(tmp / "da2-base", input_size=518, size="base"))
        out["Base-sized Depth Anything V2 at 518 px (random init)"] = (
            {"depth": {"kind": "depth_anything", "model": base}, "boxes": None},
            4,
        )
    return out


def labelling_rows(tmp: Path, world: Path, quick: bool) -> list[Row]:
    rows: list[Row] = []
    for index, (name, (fields, scenes)) in enumerate(experts(tmp, quick).items()):
        source = world
        if scenes:  # a costly expert labels a corpus of its own, of a few images
            source = tmp / f"world-{scenes}"
            if not source.exists():
                render_corpus(source, scenes, size=64)
        output = tmp / f"labels-{index}.zarr"
        spec = LabelSpec.model_validate(
            {
                "source": {"kind": "miniworld", "root": str(source)},
                "output": str(output),
                "resolution": 64,
                "chunk_size": 256,
                "batch_size": 32,
                **fields,
            }
        )
        store, stats = run_labelling(spec)
        expert_seconds = sum(stats.seconds.get(k, 0.0) for k in ("depth", "boxes", "tagger"))
        n, write = stats.images, stats.seconds["write"]
        ratio = write / max(expert_seconds, 1e-9)
        rows += [
            Row(
                PART, f"labelling: {name}", n / stats.seconds["total"], "images/s", note=f"{n} img"
            ),
            Row(PART, f"expert time per image: {name}", 1e3 * expert_seconds / n, "ms/image"),
            Row(PART, f"Zarr write time per image: {name}", 1e3 * write / n, "ms/image"),
            Row(PART, f"Zarr write / expert time: {name}", ratio, "ratio", "< 0.05", ratio < 0.05),
            Row(
                PART, f"store size: {name}", folder_bytes(output) / len(store.keys), "bytes/sample"
            ),
        ]
    return rows


def measure(table: Table, tmp: Path, scenes: int, quick: bool) -> Path:
    """Add part 5's rows to `table`; return the rendered corpus (reused by the loader part)."""
    table.extend(renderer_rows())
    world = tmp / "world"
    start = time.perf_counter()
    render_corpus(world, scenes, size=64, shard_size=256)
    rate = scenes / (time.perf_counter() - start)
    table.add(Row(PART, "corpus render incl. PNG, tar, Zarr", rate, "images/s"))
    table.extend(labelling_rows(tmp, world, quick))
    return world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--scenes", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="skip the Base-sized expert")
    args = parser.parse_args()
    from loader import loader_rate, world_overrides

    table = Table()
    with tempfile.TemporaryDirectory() as tmp:
        world = measure(table, Path(tmp), args.scenes, args.quick)
        path = ROOT / "experiments" / "vl_ssl_ground_depth.yaml"
        for workers in (0, 2):
            rate, _ = loader_rate(load_spec(path, world_overrides(world, args.scenes, workers)))
            table.add(Row("4 loader", f"loader, all views, {workers} worker(s)", rate, "samples/s"))
    threads = f"{torch.get_num_threads()} torch CPU thread(s)"
    table.write(args.out, "data", "Data-path benchmark", f"Setting: {threads}.")
    print(f"wrote {args.out / 'data.md'} and {args.out / 'data.parquet'}")


if __name__ == "__main__":
    main()
