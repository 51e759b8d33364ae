"""`asen catalog embed` throughput and memory on a synthetic catalog (decode included).

Throughput: a random stage-2 model of each size is exported as the all-attributes graph
(fp32, and INT8 calibrated on synthetic garments), then a synthetic catalog of PNG files
is embedded through ONNX Runtime with `embed_catalog` (2 decode workers, every attribute)
in interleaved rounds; images/s = items / wall seconds, decoding and Parquet writing
included, encoder start-up not.

Memory (`--memory 5000,20000`): the same run at the small size (fp32) on catalogs of those
sizes (rows reuse 256 drawn images), with the peak resident memory of the process and its
decode workers sampled every 50 ms: it should not grow with the catalog.

Resume (`--resume-items 20000`): the small model is exported with its all-attributes graph
(fp32), and the CLI embeds the catalog through ONNX Runtime once uninterrupted and once
killed with SIGKILL at three points (mid-chunk, chunk written but not recorded, after a
record) and resumed; the Parquet files must be byte-identical.

    python -m benchmarks.bench_catalog_embed --sizes small,paper --items 64,16 \
        --figures docs/figures/catalog-embed.json
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from asen.export.encoders import OnnxEncoder
from asen.export.onnx import export_onnx
from asen.export.precision import to_int8
from asen.export.verify import probe_inputs

from asen.catalog.embed import FAULT_ENV, embed_catalog
from asen.catalog.items import read_items
from asen.catalog.synthetic import write_catalog
from asen.checkpoint import atomic_save, make_checkpoint
from asen.model.shape import ModelInfo
from benchmarks.harness import (
    Figures,
    PeakMemory,
    finish,
    interleaved,
    load_average,
    median,
    parser,
)
from benchmarks.models import random_model


def _graphs(size: str, folder: Path) -> dict[str, Path]:
    """The all-attributes graph of a random `size` model, fp32 and INT8 (CPU activations)."""
    model, cfg, attributes = random_model(size)
    info = ModelInfo.from_config(cfg.model, attributes, 2)
    fp32 = folder / f"{size}_fp32.onnx"
    export_onnx(model, info, fp32, 64, graph="all")
    images, _ = probe_inputs(info, n_images=16)
    int8 = {e: folder / f"{size}_int8_{e}.onnx" for e in ("cpu", "tensorrt")}
    to_int8(fp32, int8, np.ascontiguousarray(images[:: len(attributes)]), None)
    return {"fp32": fp32, "int8": int8["cpu"]}


def throughput(size: str, *, items: int, rounds: int, folder: Path) -> list[dict]:
    """Images/s of each precision on a catalog of `items` at `size`, interleaved."""
    graphs = _graphs(size, folder)
    encoders = {p: OnnxEncoder(path, "cpu") for p, path in graphs.items()}
    source = encoders["fp32"].info.source_size
    table = write_catalog(folder / f"shop_{size}", items=items, image_size=2 * source)
    catalog = read_items(table, id_column="sku")
    runs = {p: 0 for p in encoders}

    def embed(precision: str):
        def call() -> None:
            runs[precision] += 1
            out = folder / f"out_{size}_{precision}_{runs[precision]}"
            embed_catalog(encoders[precision], catalog, out, images_root=table.parent, workers=2)

        return call

    times = interleaved({p: embed(p) for p in encoders}, rounds, warmup=0)
    return [
        {
            "size": size,
            "precision": p,
            "items": items,
            "image_px": 2 * source,
            "images_per_s": round(items / median(times[p]), 1),
        }
        for p in encoders
    ]


def memory(items_list: list[int], folder: Path) -> list[dict]:
    """Peak memory of a small fp32 catalog run at each catalog size."""
    fp32 = _graphs("small", folder)["fp32"]
    encoder = OnnxEncoder(fp32, "cpu")
    found = []
    for items in items_list:
        table = write_catalog(folder / f"mem{items}", items=items, distinct_images=256)
        catalog = read_items(table, id_column="sku")
        start = time.perf_counter()
        with PeakMemory() as peak:
            embed_catalog(encoder, catalog, folder / f"memout{items}", images_root=table.parent)
        seconds = time.perf_counter() - start
        found.append(
            {
                "items": items,
                "peak_rss_mib": round(peak.peak / 2**20),
                "images_per_s": round(items / seconds, 1),
            }
        )
    return found


RUN = [sys.executable, "-m", "asen.cli", "catalog", "embed"]


def _cli(table: Path, out: Path, model: Path, *, resume: bool, fault: str = "") -> int:
    args = [str(table), "--images", str(table.parent), "--model", str(model), "--out", str(out)]
    args += ["--id-column", "sku", "--backend", "onnx", "--device", "cpu"]
    env = {**os.environ, FAULT_ENV: fault}
    return subprocess.run([*RUN, *args, *(["--resume"] if resume else [])], env=env).returncode


def resume_check(items: int, folder: Path) -> dict:
    """Uninterrupted vs killed three times and resumed: identical Parquet files?"""
    model, cfg, attributes = random_model("small")
    checkpoint = folder / "small.pt"
    atomic_save(make_checkpoint(model, cfg, attributes), checkpoint)
    repo = folder / "repo"
    export = [sys.executable, "-m", "asen.cli", "export", str(checkpoint), "--repo", str(repo)]
    subprocess.run([*export, "--all-attributes", "--precision", "fp32"], check=True)
    table = write_catalog(folder / "shop", items=items, distinct_images=256)
    start = time.perf_counter()
    codes = [_cli(table, folder / "whole", repo, resume=False)]
    seconds = time.perf_counter() - start
    chunks = -(-items // 1024)
    kills = [f"batch#{chunks}", f"chunk#{chunks // 3 + 1}", f"record#{chunks // 3 + 1}"]
    codes.append(_cli(table, folder / "resumed", repo, resume=False, fault=kills[0]))
    for fault in (*kills[1:], ""):
        codes.append(_cli(table, folder / "resumed", repo, resume=True, fault=fault))
    names = sorted(p.relative_to(folder / "whole") for p in (folder / "whole").rglob("*.*"))
    same = all(
        filecmp.cmp(folder / "whole" / n, folder / "resumed" / n, shallow=False) for n in names
    )
    return {"items": items, "exit_codes": codes, "files": len(names), "identical": same,
            "uninterrupted_s": round(seconds, 1)}  # fmt: skip


def to_figures(result: dict) -> Figures:
    rows = [
        [r["size"], r["precision"], r["items"], r["image_px"], r["images_per_s"]]
        for r in result.get("throughput", [])
    ]
    notes = [f"load average {result['load_average']} on a shared 2-core machine"]
    for run in result.get("memory", []):
        notes.append(f"peak memory at {run['items']} items: {run['peak_rss_mib']} MiB")
    if resume := result.get("resume"):
        same = "byte-identical to" if resume["identical"] else "DIFFERENT from"
        notes.append(
            f"kill -9 at three points and --resume at {resume['items']} items (ONNX Runtime, "
            f"small): exit codes {resume['exit_codes']}, {resume['files']} files {same} an "
            f"uninterrupted run ({resume['uninterrupted_s']} s)"
        )
    return Figures(
        title="asen catalog embed: images/s, decode included (ONNX Runtime, all-attributes graph)",
        columns=["size", "precision", "items", "image px", "images/s"],
        rows=rows,
        notes=notes,
    )


def main() -> None:
    args_parser = parser(__doc__)
    args_parser.add_argument("--sizes", default="small")
    args_parser.add_argument("--items", default="64", help="catalog items per size (comma list)")
    args_parser.add_argument("--rounds", type=int, default=2)
    args_parser.add_argument("--memory", default="", help="catalog sizes for the memory run")
    args_parser.add_argument("--resume-items", type=int, default=0)
    args = args_parser.parse_args()
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.sizes:
            sizes, counts = args.sizes.split(","), [int(n) for n in args.items.split(",")]
            counts = counts * len(sizes) if len(counts) == 1 else counts
            result["throughput"] = [
                run
                for size, items in zip(sizes, counts, strict=True)
                for run in throughput(size, items=items, rounds=args.rounds, folder=folder)
            ]
        if args.memory:
            result["memory"] = memory([int(n) for n in args.memory.split(",")], folder)
        if args.resume_items:
            result["resume"] = resume_check(args.resume_items, folder)
    result["load_average"] = load_average()
    finish(result, args, to_figures, indent=1)


if __name__ == "__main__":
    main()
