"""`asen catalog embed` (asen/catalog/embed.py): a catalog from the synthetic generator,
killed with SIGKILL at three points and resumed, equals an uninterrupted run byte for byte;
bad items are listed and skipped; parts of a sharded run merge; bad tables are one line."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401 - pa.csv
import pyarrow.parquet as pq
import pytest
import torch

from asen import AsenError
from asen.catalog.embed import FAULT_ENV, Shard, embed_catalog, merge_catalog
from asen.catalog.files import Catalog, embedding_column, open_catalog
from asen.catalog.items import read_items, scan_images
from asen.catalog.synthetic import write_catalog
from asen.checkpoint import atomic_save, make_checkpoint
from asen.config import AttributeSpec, load_config
from asen.data.images import load_image
from asen.encoders import TorchEncoder
from asen.model.asen import ASENPP

ATTRIBUTES = [AttributeSpec("neck", 3), AttributeSpec("sleeve length", 4)]
ITEMS = 24
CHUNK = 4  # one batch a chunk: batch_size 8 // 2 attributes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = load_config(["small"])
    torch.manual_seed(0)
    model = ASENPP(cfg.model, len(ATTRIBUTES), 1)
    path = tmp_path_factory.mktemp("ckpt") / "stage1.pt"
    atomic_save(make_checkpoint(model, cfg, ATTRIBUTES), path)
    return path


@pytest.fixture(scope="module")
def encoder(checkpoint) -> TorchEncoder:
    return TorchEncoder.from_checkpoint(checkpoint, "cpu", batch_size=8)


@pytest.fixture(scope="module")
def catalog_table(tmp_path_factory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog"), items=ITEMS, image_size=64)


RUN = """
import sys
from asen.catalog.embed import embed_catalog
from asen.catalog.items import read_items
from asen.encoders import TorchEncoder
table, images, out, ckpt, resume = sys.argv[1:6]
encoder = TorchEncoder.from_checkpoint(ckpt, "cpu", batch_size=8)
items = read_items(table, id_column="sku")
embed_catalog(encoder, items, out, images_root=images, chunk_rows=CHUNK, resume=resume == "1",
              workers=1)
""".replace("CHUNK", str(CHUNK))


def _embed(*args, **kwargs):
    """embed_catalog decoding in this process (no worker start-up: the tests stay quick)."""
    return embed_catalog(*args, **{"workers": 0, **kwargs})


def _run(table: Path, out: Path, checkpoint: Path, *, resume: bool, fault: str = "") -> int:
    env = {**os.environ, FAULT_ENV: fault, "OMP_NUM_THREADS": "1"}
    args = [str(table), str(table.parent), str(out), str(checkpoint), "1" if resume else "0"]
    done = subprocess.run(
        [sys.executable, "-c", RUN, *args], env=env, capture_output=True, timeout=120
    )
    return done.returncode


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_kill_9_at_three_points_then_resume_equals_an_uninterrupted_run(
    tmp_path, catalog_table, checkpoint
) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert _run(catalog_table, whole, checkpoint, resume=False) == 0
    kills = ["batch#2", "chunk#2", "record#2"]  # mid-chunk; chunk written, not recorded; after
    first = _run(catalog_table, resumed, checkpoint, resume=False, fault=kills[0])
    assert first == -signal.SIGKILL
    progress = [len(open_catalog_parts(resumed))]
    for fault in kills[1:]:
        assert _run(catalog_table, resumed, checkpoint, resume=True, fault=fault) == -9
        progress.append(len(open_catalog_parts(resumed)))
    assert progress[0] < progress[1] < progress[2] < -(-ITEMS // CHUNK)  # each kill lost work
    assert _run(catalog_table, resumed, checkpoint, resume=True) == 0
    assert _files(whole) == _files(resumed)
    for name in _files(whole):
        assert filecmp.cmp(whole / name, resumed / name, shallow=False), name
    assert open_catalog(resumed).num_rows() == ITEMS


def open_catalog_parts(folder: Path) -> list[str]:
    """The chunks the part record of a one-part run lists."""
    from asen.catalog.files import read_parts

    return read_parts(folder)[0].manifest.chunks


def test_rows_keep_ids_metadata_and_every_attribute_embedding(
    tmp_path, catalog_table, encoder
) -> None:
    items = read_items(catalog_table, id_column="sku")
    result = embed_catalog(encoder, items, tmp_path / "c", images_root=catalog_table.parent)
    catalog = open_catalog(tmp_path / "c")
    table = catalog.read()
    assert result.complete and result.embedded == ITEMS and not result.skipped
    assert table.column_names == ["id", "image", "category", "price", "in_stock"] + [
        embedding_column(a.name) for a in ATTRIBUTES
    ]
    assert table.schema.field("emb_sleeve_length").type == pa.list_(pa.float32(), encoder.info.dim)
    assert table.column("id").to_pylist() == items.ids.to_pylist()
    assert catalog.manifest.attributes == ["neck", "sleeve length"]
    assert catalog.manifest.encoder.graph == "all"
    assert len(catalog.manifest.encoder.checkpoint_sha256) == 64
    rows = [0, 17, ITEMS - 1]
    images = np.stack([load_image(catalog_table.parent / items.images[r], 128) for r in rows])
    expected = encoder.encode_all(images)
    for a, attribute in enumerate(ATTRIBUTES):
        got = np.array(table.column(embedding_column(attribute.name)).to_pylist())[rows]
        np.testing.assert_allclose(got, expected[:, a], atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def _bad_table(tmp_path: Path, catalog_table: Path) -> Path:
    rows = pa.csv.read_csv(catalog_table).slice(0, 6).to_pylist()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows[1]["sku"] = rows[0]["sku"]  # duplicate id
    rows[2]["image"] = "images/nowhere.png"  # missing file
    rows[3]["image"] = "broken.png"  # undecodable
    rows[4]["image"] = None  # no image
    path = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    for row in rows:
        if row["image"] and row["image"].startswith("images/0"):
            target = tmp_path / row["image"]
            target.parent.mkdir(exist_ok=True)
            target.write_bytes((catalog_table.parent / row["image"]).read_bytes())
    return path


def test_bad_items_are_listed_with_reasons_and_skipped(tmp_path, catalog_table, encoder) -> None:
    table = _bad_table(tmp_path, catalog_table)
    items = read_items(table, id_column="sku")
    result = _embed(encoder, items, tmp_path / "c", images_root=tmp_path, chunk_rows=2)
    reasons = {p["row"]: p["reason"] for p in result.skipped}
    assert sorted(reasons) == [1, 2, 3, 4]
    assert reasons[1] == "duplicate id (first on row 0)"
    assert "not found" in reasons[2] and "nowhere.png" in reasons[2]
    assert "broken.png" in reasons[3]
    assert reasons[4] == "no image"
    catalog = Catalog(tmp_path / "c")
    assert catalog.read().column("id").to_pylist() == [items.ids[r].as_py() for r in (0, 5)]
    assert catalog.manifest.skipped == 4 and [p["row"] for p in catalog.problems()] == [1, 2, 3, 4]


def test_a_catalog_of_only_bad_items_stops(tmp_path, encoder) -> None:
    (tmp_path / "a.png").write_bytes(b"junk")
    table = tmp_path / "items.csv"
    table.write_text("id,image\n1,a.png\n2,missing.png\n")
    with pytest.raises(AsenError, match="none of the 2 items could be embedded"):
        _embed(encoder, read_items(table), tmp_path / "c", images_root=tmp_path)
    assert not (tmp_path / "c").exists()  # nothing written


def test_an_existing_catalog_is_refused_and_resume_checks_encoder_and_items(
    tmp_path, catalog_table, encoder, checkpoint
) -> None:
    items = read_items(catalog_table, id_column="sku")
    out = tmp_path / "c"
    _embed(encoder, items, out, images_root=catalog_table.parent, chunk_rows=16)
    before = _files(out)
    with pytest.raises(AsenError, match="already exists|finished catalog"):
        _embed(encoder, items, out, images_root=catalog_table.parent, chunk_rows=16)
    again = _embed(
        encoder, items, out, images_root=catalog_table.parent, chunk_rows=16, resume=True
    )
    assert again.chunks_written == 0 and again.chunks_resumed == 2 and _files(out) == before
    other = TorchEncoder(ASENPP(load_config(["small"]).model, 2, 1), encoder.info)
    other.source = str(checkpoint.parent / "other.pt")
    torch.save({"x": 1}, other.source)
    with pytest.raises(AsenError, match="embedded by checkpoint"):
        _embed(other, items, out, images_root=catalog_table.parent, resume=True)
    fewer = tmp_path / "fewer.csv"
    fewer.write_text("\n".join(catalog_table.read_text().splitlines()[:10]) + "\n")
    with pytest.raises(AsenError, match="other items"):
        _embed(
            encoder,
            read_items(fewer, id_column="sku"),
            out,
            images_root=catalog_table.parent,
            resume=True,
        )
    with pytest.raises(AsenError, match="--chunk-rows 16"):
        _embed(encoder, items, out, images_root=catalog_table.parent, resume=True)


def test_shards_write_one_catalog_that_merges_in_table_order(
    tmp_path, catalog_table, encoder
) -> None:
    items = read_items(catalog_table, id_column="sku")
    out = tmp_path / "c"
    for index in (2, 0):
        result = _embed(
            encoder, items, out, images_root=catalog_table.parent, shard=Shard(index, 3)
        )
        assert not result.complete
    with pytest.raises(AsenError, match=r"2 of 3 parts finished \(missing parts 1"):
        open_catalog(out)
    with pytest.raises(AsenError, match="missing parts 1"):
        merge_catalog(out)
    _embed(encoder, items, out, images_root=catalog_table.parent, shard=Shard(1, 3))
    assert open_catalog(out).num_rows() == ITEMS  # the reader merges the part records
    manifest = merge_catalog(out)
    assert (out / "manifest.json").is_file() and manifest.shards == 3
    whole = tmp_path / "whole"
    _embed(encoder, items, whole, images_root=catalog_table.parent)
    merged, single = open_catalog(out).read(), open_catalog(whole).read()
    assert merged.column("id").to_pylist() == items.ids.to_pylist()
    for name in merged.column_names:
        if name.startswith("emb_"):
            np.testing.assert_allclose(
                np.array(merged.column(name).to_pylist()),
                np.array(single.column(name).to_pylist()),
                atol=1e-6,
            )
    assert [Shard(i, 3).rows(10) for i in range(3)] == [range(0, 3), range(3, 6), range(6, 10)]


def test_a_folder_of_images_uses_relative_paths_as_ids(tmp_path, catalog_table, encoder) -> None:
    root = catalog_table.parent / "images"
    items = scan_images(root)
    result = _embed(encoder, items, tmp_path / "c", images_root=root)
    table = open_catalog(tmp_path / "c").read()
    assert result.embedded == len(list(root.glob("*.png")))
    assert table.column("id").to_pylist() == sorted(p.name for p in root.glob("*.png"))
    assert table.column_names[0] == "id" and not open_catalog(tmp_path / "c").manifest.metadata


def test_integer_ids_from_parquet_stay_int64(tmp_path, catalog_table, encoder) -> None:
    rows = pa.csv.read_csv(catalog_table).slice(0, 3)
    table = rows.drop_columns(["sku"]).append_column("item", pa.array([7, 8, 9], pa.int32()))
    pq.write_table(table, tmp_path / "items.parquet")
    items = read_items(tmp_path / "items.parquet", id_column="item")
    _embed(encoder, items, tmp_path / "c", images_root=catalog_table.parent)
    catalog = open_catalog(tmp_path / "c")
    assert catalog.manifest.id_type == "int64" and catalog.manifest.id_column == "item"
    assert catalog.schema().field("id").type == pa.int64()
    assert catalog.read().column("id").to_pylist() == [7, 8, 9]


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("sku,image\n", {"id_column": "sku"}, "empty table"),
        ("name,image\na,x.png\n", {}, "no column 'id' (--id-column; the table has: name, image)"),
        ("id,picture\na,x.png\n", {}, "no column 'image' (--image-column"),
        ("id,image,emb_x\na,x.png,1\n", {}, "metadata column 'emb_x' clashes"),
    ],
)
def test_bad_tables_are_one_line(tmp_path, content, options, message) -> None:
    path = tmp_path / "items.csv"
    path.write_text(content)
    with pytest.raises(AsenError, match=None) as caught:
        read_items(path, **options)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(path) in str(caught.value)
