"""`asen eval --store`: the paper's mAP ranked by the store (FLAT) equals asen/metrics.py on
the same embeddings to 1e-6, from an `asen embed` file and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from asen import AsenError
from asen.catalog.store import parse_store
from asen.catalog.store_map import store_map
from asen.checkpoint import atomic_save, make_checkpoint
from asen.cli import app
from asen.config import AttributeSpec, load_config
from asen.data.synthetic import DEFAULT_ATTRIBUTES, generate
from asen.evaluate import score
from asen.model.asen import ASENPP
from asen.search import load_embeddings
from tests.asen.catalog.store_world import make_items, write_catalog

ATTRIBUTES = [AttributeSpec(n, v) for n, v in DEFAULT_ATTRIBUTES.items()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("storemap")
    generate(root / "data", seed=2, n_train=10, n_eval=40)
    cfg = load_config(["small"])
    torch.manual_seed(0)
    atomic_save(make_checkpoint(ASENPP(cfg.model, len(ATTRIBUTES), 1), cfg, ATTRIBUTES),
                root / "m.pt")  # fmt: skip
    return root


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_store_map_equals_numpy_from_an_embed_file(world):
    npz = world / "test.npz"
    done = _cli("embed", world / "m.pt", "--data", world / "data", "--out", npz,
                "--device", "cpu", "--workers", 0)  # fmt: skip
    assert done.exit_code == 0, done.output
    embedded, names = load_embeddings(npz)
    expected = score(embedded, names, backend="torch", split="test")
    got = store_map(
        embedded, names, parse_store(str(world / "s.db")), backend="torch", split="test"
    )
    assert got.overall_map == pytest.approx(expected.overall_map, abs=1e-6)
    assert got.num_queries == expected.num_queries
    for name, value in expected.per_attribute.items():
        assert got.per_attribute[name] == pytest.approx(value, abs=1e-6)
    assert 0 < got.overall_map < 1
    # a second run replaces the evaluation collection and gives the same figure
    again = store_map(embedded, names, parse_store(str(world / "s.db")), backend="t", split="test")
    assert again.overall_map == got.overall_map


def test_eval_store_cli_equals_eval(world):
    common = [world / "m.pt", "--data", world / "data", "--device", "cpu", "--workers", 0]
    plain = _cli("eval", *common, "--json", world / "plain.json")
    stored = _cli("eval", *common, "--store", world / "cli.db", "--json", world / "store.json")
    assert plain.exit_code == 0 and stored.exit_code == 0, stored.output
    a = json.loads((world / "plain.json").read_text())
    b = json.loads((world / "store.json").read_text())
    assert abs(a["overall_map"] - b["overall_map"]) < 1e-6
    assert np.allclose(list(a["per_attribute"].values()), list(b["per_attribute"].values()),
                       atol=1e-6, rtol=0)  # fmt: skip


def test_a_catalog_collection_is_never_dropped(world, tmp_path):
    from asen.catalog.files import open_catalog
    from asen.catalog.load import load_catalog

    write_catalog(tmp_path / "cat", make_items(20))
    address = parse_store(str(tmp_path / "c.db"))
    load_catalog(open_catalog(tmp_path / "cat"), address, collection="asen_eval")
    embedded, names = load_embeddings(world / "test.npz")
    with pytest.raises(AsenError, match="not an evaluation collection"):
        store_map(embedded, names, address, backend="torch", split="test")
