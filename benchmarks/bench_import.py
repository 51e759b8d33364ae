"""`asen data import` throughput from URLs, with a cold and a warm download cache.

N small JPEGs (drawn with PIL, every one different) are served by a local HTTP server on
127.0.0.1, and a wide Parquet table of their URLs with two attributes is imported with
`import_dataset` in interleaved rounds: "cold" downloads into a new, empty cache each time,
"warm" reads a cache filled before the rounds. Every run writes a new dataset folder, so
nothing is replaced. images/s = images / median wall seconds, decoding, hashing, linking
and the staged switch included.

The dataset is written with `atomic_folder`, which fsyncs every file and folder of the
staged tree before the switch; the seconds spent in that step (asen.atomic._fsync_tree,
timed by wrapping it, not changed) are reported per variant, with their share of the run.
fsync costs depend on the file system of the work folder (`--work`), which is reported.

    python -m benchmarks.bench_import --images 500 --rounds 3 --figures docs/figures/import.json
"""

from __future__ import annotations

import functools
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import asen.atomic
from asen.data.importers import ImportOptions, import_dataset
from benchmarks import harness

COLORS = ["red", "green", "blue", "white"]
SHAPES = ["round", "vee", "square"]
MIN_IMAGES = 40  # every value needs 5 images (a query and a candidate in valid and test)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """`folder` over HTTP on 127.0.0.1 (a free port) while the block runs; its base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def write_images(folder: Path, count: int, size: int = 64) -> list[str]:
    """`count` different JPEGs of `size` pixels (seeded noise); their names."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        names.append(f"{i:06d}.jpg")
        Image.fromarray(pixels).save(folder / names[-1], "JPEG", quality=85)
    return names


def write_table(path: Path, urls: list[str]) -> Path:
    """A wide table: the URLs and two attributes, every value on many images."""
    columns = {
        "image": urls,
        "color": [COLORS[i % len(COLORS)] for i in range(len(urls))],
        "shape": [SHAPES[(i // len(COLORS)) % len(SHAPES)] for i in range(len(urls))],
    }
    pq.write_table(pa.table(columns), path)
    return path


class TreeSyncTimer:
    """Seconds spent in asen.atomic._fsync_tree during the calls it wraps."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.original = asen.atomic._fsync_tree

    def _timed(self, root: Path) -> None:
        start = time.perf_counter()
        try:
            self.original(root)
        finally:
            self.seconds += time.perf_counter() - start

    def __enter__(self) -> TreeSyncTimer:
        asen.atomic._fsync_tree = self._timed
        return self

    def __exit__(self, *exc: object) -> None:
        asen.atomic._fsync_tree = self.original


def file_system(path: Path) -> str:
    """The type of the file system holding `path` (psutil's partitions, longest mount)."""
    resolved = str(path.resolve())
    mounts = [p for p in psutil.disk_partitions(all=True) if resolved.startswith(p.mountpoint)]
    return max(mounts, key=lambda p: len(p.mountpoint)).fstype if mounts else "unknown"


def run_variants(
    table: Path, work: Path, *, workers: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved cold and warm imports: seconds per round and tree-fsync seconds per round."""
    warm_cache = work / "warm-cache"
    import_dataset(table, work / "prime", options=ImportOptions(cache=warm_cache, workers=workers))
    runs = {"cold": 0, "warm": 0}
    synced: dict[str, list[float]] = {name: [] for name in runs}

    def variant(name: str) -> Callable[[], None]:
        def call() -> None:
            runs[name] += 1
            cache = warm_cache if name == "warm" else work / f"cold-cache-{runs[name]}"
            options = ImportOptions(cache=cache, workers=workers)
            with TreeSyncTimer() as timer:
                import_dataset(table, work / f"out-{name}-{runs[name]}", options=options)
            synced[name].append(timer.seconds)

        return call

    times = harness.interleaved({name: variant(name) for name in runs}, rounds, warmup=1)
    return times, {name: values[1:] for name, values in synced.items()}  # less the warmup


def measure(*, images: int, rounds: int, workers: int, work: Path) -> dict:
    """The benchmark's result: per variant, median seconds, images/s and tree-fsync cost."""
    names = write_images(work / "served", images)
    load_before = harness.load_average()
    with serve(work / "served") as base:
        table = write_table(work / "labels.parquet", [f"{base}/{n}" for n in names])
        times, synced = run_variants(table, work, workers=workers, rounds=rounds)
    result: dict = {"images": images, "rounds": rounds, "workers": workers}
    for name, seconds in times.items():
        fsync = harness.median(synced[name])
        result[name] = {
            "median_s": harness.median(seconds, 3),
            "images_per_s": round(images / harness.median(seconds), 1),
            "tree_fsync_s": round(fsync, 3),
            "tree_fsync_share": round(harness.median_ratio(synced[name], seconds), 3),
            "seconds": [round(s, 3) for s in seconds],
        }
    result["file_system"] = file_system(work)
    result["load_average"] = {"before": load_before, "after": harness.load_average()}
    return result


def to_figures(result: dict) -> harness.Figures:
    rows = [
        [
            name,
            result["images"],
            result["workers"],
            result[name]["median_s"],
            result[name]["images_per_s"],
            result[name]["tree_fsync_s"],
            result[name]["tree_fsync_share"],
        ]
        for name in ("cold", "warm")
    ]
    load = result["load_average"]
    notes = [
        f"local HTTP server on 127.0.0.1; {result['rounds']} interleaved rounds, medians",
        f"work folder on {result['file_system']}; tree fsync = atomic_folder's fsync of "
        "every staged file and folder before the switch",
        f"load average {load['before']} before, {load['after']} after, on a shared machine",
    ]
    return harness.Figures(
        title="asen data import from URLs: cold and warm download cache",
        columns=[
            "cache",
            "images",
            "workers",
            "median s",
            "images/s",
            "tree fsync s",
            "tree fsync share",
        ],  # fmt: skip
        rows=rows,
        notes=notes,
    )


def main() -> None:
    args_parser = harness.parser(__doc__)
    args_parser.add_argument("--images", type=int, default=500, help="images to import")
    args_parser.add_argument("--rounds", type=int, default=3, help="timed rounds (interleaved)")
    args_parser.add_argument("--workers", type=int, default=8, help="download/decode threads")
    args_parser.add_argument("--work", type=Path, default=None, help="folder for the files")
    args = args_parser.parse_args()
    if args.images < MIN_IMAGES or args.rounds < 1:
        args_parser.error(f"--images must be at least {MIN_IMAGES} and --rounds at least 1")
    with tempfile.TemporaryDirectory(dir=args.work, prefix="bench-import-") as tmp:
        result = measure(
            images=args.images, rounds=args.rounds, workers=args.workers, work=Path(tmp)
        )
    harness.finish(result, args, to_figures, indent=1)


if __name__ == "__main__":
    main()
