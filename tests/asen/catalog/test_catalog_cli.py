"""`asen catalog load / upsert / delete / stats / search` through the CLI: real Milvus Lite
files, a real torch encoder for upsert and photo search; user mistakes are one line, exit 1."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from typer.testing import CliRunner

from asen.catalog.embed import embed_catalog
from asen.catalog.items import read_items
from asen.catalog.synthetic import write_catalog as write_items
from asen.checkpoint import atomic_save, make_checkpoint
from asen.cli import app
from asen.config import AttributeSpec, load_config
from asen.encoders import TorchEncoder
from asen.model.asen import ASENPP
from tests.asen.catalog.store_world import OTHER_IDENTITY, make_items, write_catalog

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, says: str) -> None:
    assert result.exit_code == 1, result.output
    assert says in result.output and len(result.output.strip().splitlines()) == 1, result.output


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    items = make_items(200, seed=7)
    write_catalog(root / "catalog", items)
    write_catalog(root / "other", items, identity=OTHER_IDENTITY)
    return root, items


def test_load_stats_search_delete(world):
    root, items = world
    store = root / "cli.db"
    first = _run("catalog", "load", root / "catalog", "--store", store, "--batch-size", 64)
    assert first.exit_code == 0 and "loaded 200 items" in first.output, first.output
    again = _run("catalog", "load", root / "catalog", "--store", store)
    assert again.exit_code == 0 and "it holds 200" in again.output
    stats = _run("catalog", "stats", "--store", store, "--json", root / "stats.json")
    assert stats.exit_code == 0 and json.loads((root / "stats.json").read_text())["rows"] == 200
    found = _run(
        "catalog", "search", "--store", store, "--item", items["id"][5],
        "-a", "neck=2", "-a", "collar design", "--filter", '{"price": {"lt": 50}}',
        "--field", "price", "--k", 4, "--json", root / "hits.json",
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    hits = json.loads((root / "hits.json").read_text())
    assert len(hits) == 4 and all(h["fields"]["price"] < 50 for h in hits)
    assert set(hits[0]["scores"]) == {"neck", "collar design"}
    gone = _run("catalog", "delete", items["id"][5], "nope", "--store", store)
    assert gone.exit_code == 0 and "deleted 1 items; 1 were not in the store" in gone.output
    assert _run("catalog", "stats", "--store", store, "--json", root / "after.json").exit_code == 0
    assert json.loads((root / "after.json").read_text())["rows"] == 199


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--item", "item000001", "-a", "colour"], "unknown attribute 'colour'"),
        (["--item", "item000001", "-a", "neck=0"], "must be a number > 0"),
        (["--item", "item000001", "-a", "neck=x"], "is not a number"),
        (["--item", "item000001", "-a", "neck", "--k", "0"], "k must be an integer"),
        (["--item", "item000001", "-a", "neck", "--filter", '{"colour": 1}'], "unknown filter"),
        (["--item", "item000001", "-a", "neck", "--filter", '{"price": "x"}'], "takes a finite"),
        (["--item", "item000001", "-a", "neck", "--filter", "{price"], "--filter is not JSON"),
        (["--item", "nope", "-a", "neck"], "unknown item id 'nope'"),
        (["-a", "neck"], "give --image PHOTO or --item ID"),
    ],
)
def test_search_mistakes_are_one_line(world, args, says):
    root, _ = world
    store = root / "mistakes.db"
    if not store.exists():
        assert _run("catalog", "load", root / "catalog", "--store", store).exit_code == 0
    _one_line_error(_run("catalog", "search", "--store", store, *args), says)


def test_store_and_catalog_mistakes_are_one_line(world, tmp_path):
    root, _ = world
    store = root / "refuse.db"
    assert _run("catalog", "load", root / "catalog", "--store", store).exit_code == 0
    _one_line_error(_run("catalog", "load", root / "other", "--store", store), "another encoder")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _one_line_error(
        _run("catalog", "stats", "--store", f"http://127.0.0.1:{port}"), "cannot be reached"
    )
    _one_line_error(_run("catalog", "stats", "--store", tmp_path / "x.txt"), "ending in .db")
    _one_line_error(_run("catalog", "stats", "--store", tmp_path / "x.db"), "no collection")
    _one_line_error(_run("catalog", "load", tmp_path, "--store", store), "not a catalog")
    _one_line_error(
        _run("catalog", "load", root / "catalog", "--store", store, "--index", "lsh"), "--index"
    )


def test_upsert_embeds_and_writes_then_photo_search_finds_it(tmp_path):
    attributes = [AttributeSpec("neck", 3), AttributeSpec("fit", 2)]
    cfg = load_config(["small"])
    torch.manual_seed(0)
    checkpoint = tmp_path / "m.pt"
    atomic_save(make_checkpoint(ASENPP(cfg.model, 2, 1), cfg, attributes), checkpoint)
    table = write_items(tmp_path / "items", items=12, image_size=64, seed=1)
    encoder = TorchEncoder.from_checkpoint(checkpoint, "cpu", batch_size=8)
    first = read_items(table, id_column="sku")
    embed_catalog(encoder, first, tmp_path / "cat", images_root=table.parent, workers=0)
    store = tmp_path / "up.db"
    assert _run("catalog", "load", tmp_path / "cat", "--store", store).exit_code == 0
    more = write_items(tmp_path / "more", items=3, image_size=64, seed=9, table="new.csv")
    text = more.read_text().replace("SKU-", "NEW-")
    more.write_text(text)
    done = _run(
        "catalog", "upsert", more, "--images", more.parent, "--model", checkpoint,
        "--id-column", "sku", "--store", store, "--device", "cpu", "--workers", 0,
    )  # fmt: skip
    assert done.exit_code == 0 and "upserted 3 items" in done.output, done.output
    photo = more.parent / "images" / "000001.png"
    found = _run(
        "catalog", "search", "--store", store, "--image", photo, "--model", checkpoint,
        "-a", "neck", "-a", "fit", "--k", 1, "--device", "cpu", "--json", tmp_path / "h.json",
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    assert json.loads((tmp_path / "h.json").read_text())[0]["id"] == "NEW-0000001"
