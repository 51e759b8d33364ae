"""A synthetic product catalog for examples, tests and benchmarks: garments from the
synthetic generator (`asen.data.synthetic.render`) as PNG files and an items table with a
SKU, the image path and a few metadata columns (category, price, stock)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq

from asen import AsenError
from asen.atomic import atomic_write
from asen.data.synthetic import DEFAULT_ATTRIBUTES, render

CATEGORIES = ("dress", "shirt", "top", "coat")


def write_catalog(
    out: str | Path,
    *,
    items: int = 100,
    image_size: int = 128,
    seed: int = 0,
    table: str = "items.csv",
    distinct_images: int | None = None,
) -> Path:
    """Write `items` catalog rows under `out`: `images/*.png` and the table `out/table`
    (.csv or .parquet) with columns sku, image, category, price, in_stock. With
    `distinct_images`, only that many images are drawn and the rows reuse them in turn
    (a big catalog without rendering every picture). Returns the table's path."""
    out = Path(out)
    if items < 1:
        raise AsenError(f"items {items}: must be at least 1")
    rng = np.random.default_rng(seed)
    counts = list(DEFAULT_ATTRIBUTES.values())
    drawn = min(items, distinct_images or items)
    names = [f"images/{i:06d}.png" for i in range(drawn)]
    for name in names:
        values = rng.integers(0, counts).tolist()
        img = render(values, counts, int(rng.integers(2**62)), image_size)
        atomic_write(out / name, lambda fh, img=img: img.save(fh, "PNG", compress_level=1))
    rows = pa.table(
        {
            "sku": [f"SKU-{i:07d}" for i in range(items)],
            "image": [names[i % drawn] for i in range(items)],
            "category": [CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), items)],
            "price": np.round(rng.uniform(5, 200, items), 2),
            "in_stock": rng.random(items) < 0.8,
        }
    )
    path = out / table
    if path.suffix == ".parquet":
        atomic_write(path, lambda fh: pq.write_table(rows, fh))
    else:
        atomic_write(path, lambda fh: pv.write_csv(rows, fh))
    return path
