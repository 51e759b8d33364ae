"""A small real catalog for the app's catalog API: synthetic garments embedded by a small
random torch model (asen catalog embed's library), loaded into a Milvus Lite file."""

from __future__ import annotations

from pathlib import Path

import torch
from asen.client.catalog_api import CatalogSettings

from asen.catalog.embed import embed_catalog
from asen.catalog.files import open_catalog
from asen.catalog.items import read_items
from asen.catalog.load import load_catalog
from asen.catalog.store import DEFAULT_COLLECTION, parse_store
from asen.catalog.synthetic import write_catalog
from asen.checkpoint import atomic_save, make_checkpoint
from asen.config import AttributeSpec, load_config
from asen.encoders import TorchEncoder
from asen.model.asen import ASENPP

ATTRIBUTES = [AttributeSpec("neck", 3), AttributeSpec("sleeve length", 4), AttributeSpec("fit", 2)]


def small_checkpoint(path: Path, seed: int = 0) -> Path:
    cfg = load_config(["small"])
    torch.manual_seed(seed)
    atomic_save(make_checkpoint(ASENPP(cfg.model, len(ATTRIBUTES), 1), cfg, ATTRIBUTES), path)
    return path


def catalog_world(root: Path, items: int = 48) -> dict:
    """The items table, its images, the checkpoint and a loaded store."""
    table = write_catalog(root / "items", items=items, image_size=64, seed=5)
    checkpoint = small_checkpoint(root / "model.pt")
    encoder = TorchEncoder.from_checkpoint(checkpoint, "cpu", batch_size=16)
    embed_catalog(
        encoder,
        read_items(table, id_column="sku"),
        root / "catalog",
        images_root=table.parent,
        workers=0,
    )
    address = parse_store(str(root / "store.db"))
    load_catalog(open_catalog(root / "catalog"), address)
    settings = CatalogSettings(
        address,
        DEFAULT_COLLECTION,
        "torch",
        str(checkpoint),
        {"device": "cpu"},
        images_root=table.parent,
    )
    return {
        "table": table,
        "images": table.parent,
        "checkpoint": checkpoint,
        "encoder": encoder,
        "address": address,
        "settings": settings,
    }
