"""Data-path benchmark: renderer, labelling experts, label-store writes, loader throughput.

    python benchmarks/data.py [--out benchmarks/results] [--scenes 512]

Every figure is a rate or a ratio measured side by side in this one process (medians of
repeats where it matters); the machine is named in the output. Writes Markdown and Parquet.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtv.data import TarShardSource  # noqa: E402
from mtv.data.loader import build_stream  # noqa: E402
from mtv.data.store import LabelStore  # noqa: E402
from mtv.graph import TaskGraph, plan_graph  # noqa: E402
from mtv.label import run_labelling  # noqa: E402
from mtv.models.tokenizer import load_or_train_tokenizer  # noqa: E402
from mtv.specs import load_spec  # noqa: E402
from mtv.specs.label import LabelSpec  # noqa: E402
from mtv.world.corpus import GroundTruth, render_corpus  # noqa: E402
from mtv.world.render import render_views  # noqa: E402
from mtv.world.scene import sample_scene  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}"


def median_rate(work: int, run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return work / statistics.median(times)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--scenes", type=int, default=512)
    args = parser.parse_args()
    rows: list[dict] = []

    def record(name: str, value: float, unit: str, note: str = "") -> None:
        rows.append({"measure": name, "value": round(value, 3), "unit": unit, "note": note})
        print(f"{name:<52} {value:>10.3f} {unit:<12} {note}")

    scenes = [sample_scene(0, i) for i in range(128)]
    items = [(s, 0) for s in scenes]
    render_views(items, 64)  # warm-up
    record(
        "renderer, 64x64, shadows",
        median_rate(128, lambda: render_views(items, 64)),
        "images/s",
        "batch 128",
    )
    record(
        "renderer, 64x64, no shadows",
        median_rate(128, lambda: render_views(items, 64, shadows=False)),
        "images/s",
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        corpus = render_corpus(tmp / "world", args.scenes, size=64, shard_size=256)
        elapsed = time.perf_counter() - start
        record("corpus render incl. PNG, tar, Zarr", args.scenes / elapsed, "images/s")

        experts = {
            "oracle depth + oracle boxes": {},
            "oracle depth (noisy)": {
                "depth": {"kind": "oracle", "blur_sigma": 1.0, "noise": 0.05, "warp": 0.05},
                "boxes": None,
            },
        }
        try:
            from tests.tiny_hf import build_tiny_depth_anything, build_tiny_owlv2

            experts["tiny Depth Anything V2 (random init)"] = {
                "depth": {
                    "kind": "depth_anything",
                    "model": str(build_tiny_depth_anything(tmp / "da2")),
                },
                "boxes": None,
            }
            experts["tiny OWLv2 (random init) + caption tagger"] = {
                "depth": None,
                "boxes": {
                    "kind": "owlv2",
                    "model": str(build_tiny_owlv2(tmp / "owl")),
                    "threshold": 0.05,
                },
            }
        except ImportError as err:
            print(f"(transformers experts skipped: {err})")
        for name, fields in experts.items():
            output = tmp / f"labels-{len(rows)}.zarr"
            spec = LabelSpec.model_validate(
                {
                    "source": {"kind": "miniworld", "root": str(tmp / "world")},
                    "output": str(output),
                    "resolution": 64,
                    "chunk_size": 256,
                    "batch_size": 32,
                    **fields,
                }
            )
            store, stats = run_labelling(spec)
            expert_seconds = sum(stats.seconds.get(k, 0.0) for k in ("depth", "boxes", "tagger"))
            record(f"labelling: {name}", stats.images / stats.seconds["total"], "images/s")
            record(
                f"  expert time per image: {name}", 1e3 * expert_seconds / stats.images, "ms/image"
            )
            record(
                f"  Zarr write time per image: {name}",
                1e3 * stats.seconds["write"] / stats.images,
                "ms/image",
            )
            record(
                f"  Zarr write / expert time: {name}",
                stats.seconds["write"] / max(expert_seconds, 1e-9),
                "ratio",
                "target < 0.05",
            )
            record(f"  store size: {name}", folder_bytes(output) / len(store.keys), "bytes/sample")

        exact = tmp / "labels-exact.zarr"
        run_labelling(
            LabelSpec.model_validate(
                {
                    "source": {"kind": "miniworld", "root": str(tmp / "world")},
                    "output": str(exact),
                    "resolution": 64,
                }
            )
        )
        spec = load_spec(ROOT / "experiments" / "vl_ssl_ground_depth.yaml")
        plan = plan_graph(spec)
        truth = GroundTruth(corpus.groundtruth)
        tokenizer = load_or_train_tokenizer(
            tmp / "tokenizer.json",
            lambda: truth._captions,
            spec.model.text.vocab_size,
            spec.model.text.context_length,
        )
        batch = None
        for workers in (0, 2):
            data = spec.data.model_copy(
                update={"loader": spec.data.loader.model_copy(update={"workers": workers})}
            )
            stream = build_stream(
                data,
                plan.view_request(spec),
                TarShardSource(corpus.shards),
                LabelStore.open(exact),
                tokenizer,
            )
            batch, _ = next(stream)
            count = 8
            rate = median_rate(
                count * data.batch_size,
                lambda s=stream, n=count: [next(s) for _ in range(n)],
                repeats=2,
            )
            record(
                f"loader, all views, {workers} worker(s)",
                rate,
                "samples/s",
                f"batch {data.batch_size}",
            )
        graph = TaskGraph(spec)

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = graph.step(batch)
            out.total.backward()

        step()
        demand = median_rate(spec.data.batch_size, step, repeats=3)
        record("train step demand (mini, all tasks, bf16, eager)", demand, "samples/s")
        record(
            "loader (2 workers) / step demand", rows[-2]["value"] / demand, "ratio", "target >= 2"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    table = pl.DataFrame(rows).with_columns(pl.lit(machine()).alias("machine"))
    table.write_parquet(args.out / "data.parquet")
    lines = [
        f"# Data-path benchmark\n\nMachine: {machine()}\n",
        "| measure | value | unit | note |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {r['measure'].strip()} | {r['value']} | {r['unit']} | {r['note']} |" for r in rows
    ]
    (args.out / "data.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'data.md'} and {args.out / 'data.parquet'}")


if __name__ == "__main__":
    main()
