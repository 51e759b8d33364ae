"""`asen catalog embed` on the command line: a catalog written, then read with pandas;
user mistakes are one line and exit 1, with nothing written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from asen.catalog.synthetic import write_catalog
from asen.checkpoint import atomic_save, make_checkpoint
from asen.cli import app
from asen.config import AttributeSpec, load_config
from asen.model.asen import ASENPP

runner = CliRunner()


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shop")
    table = write_catalog(root / "shop", items=12, image_size=64)
    cfg = load_config(["small"])
    torch.manual_seed(0)
    model = ASENPP(cfg.model, 2, 1)
    specs = [AttributeSpec("neck", 3), AttributeSpec("sleeve", 2)]
    atomic_save(make_checkpoint(model, cfg, specs), root / "model.pt")
    return table, root / "model.pt"


def _invoke(*args: object):
    return runner.invoke(app, ["catalog", "embed", *map(str, args)])


def _one_error_line(result) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error:") and "Traceback" not in result.output
    return lines[-1]


def test_embed_writes_a_catalog_pandas_reads(tmp_path, shop) -> None:
    table, model = shop
    out = tmp_path / "catalog"
    common = (table, "--images", table.parent, "--model", model, "--out", out)
    result = _invoke(*common, "--id-column", "sku", "--chunk-rows", "5", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "12 items embedded, 0 skipped; 3 chunks written" in result.output
    frame = pd.read_parquet(out / "chunks")
    assert list(frame["id"]) == [f"SKU-{i:07d}" for i in range(12)]
    assert len(frame["emb_neck"][0]) == 128 and {"category", "price"} <= set(frame.columns)
    again = _one_error_line(_invoke(*common, "--id-column", "sku"))
    assert "holds a finished catalog; pass --resume" in again
    resumed = _invoke(*common, "--id-column", "sku", "--chunk-rows", "5", "--resume")
    assert resumed.exit_code == 0 and "0 chunks written, 3 resumed" in resumed.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shard", "2/2"], "--shard 2/2: needs 0 <= I < N"),
        (["--id-column", "nope"], "no column 'nope' (--id-column"),
        (["--id-column", "sku", "--send-bytes"], "--send-bytes"),  # Triton only
        (
            ["--id-column", "sku", "--concurrency", "2", "--backend", "onnx"],
            "--concurrency does not",
        ),
    ],
)
def test_mistakes_are_one_line_and_write_nothing(tmp_path, shop, extra, message) -> None:
    table, model = shop
    out = tmp_path / "catalog"
    result = _invoke(table, "--images", table.parent, "--model", model, "--out", out, *extra)
    assert message in _one_error_line(result)
    assert not out.exists()


def test_merge_names_the_missing_parts(tmp_path, shop) -> None:
    table, model = shop
    out = tmp_path / "catalog"
    args = (table, "--images", table.parent, "--model", model, "--out", out, "--id-column", "sku")
    assert _invoke(*args, "--shard", "0/3", "--workers", "0").exit_code == 0
    line = _one_error_line(_invoke("--merge", "--out", out))
    assert "1 of 3 parts finished (missing parts 1, 2" in line
    for index in (1, 2):
        assert _invoke(*args, "--shard", f"{index}/3", "--workers", "0").exit_code == 0
    merged = _invoke("--merge", "--out", out)
    assert merged.exit_code == 0 and "3 parts" in merged.output and "12 items" in merged.output
    assert (out / "manifest.json").is_file()
