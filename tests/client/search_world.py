"""A model repository with an `asen_search` model over the synthetic test split (the query
images indexed too, so that a query finds itself first), built through the CLI."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from asen.client.server import free_ports, start_server
from typer.testing import CliRunner

from asen.cli import app

runner = CliRunner()


def invoke(*args) -> str:
    """Run the CLI; it must succeed. Returns its output."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def build_search_repo(repo: Path, synth: Path, root: Path, *, ivf: bool = False) -> dict:
    """Copy `repo`, embed the test split with its ONNX model, index it (with the queries)
    and add asen_search. Returns the paths involved."""
    models = root / "models"
    shutil.copytree(repo, models)
    gallery, index = root / "gallery.npz", root / "gallery.index"
    invoke(
        "embed",
        models,
        "--backend",
        "onnx",
        "--data",
        synth,
        "--out",
        gallery,
        "--workers",
        0,
        "--device",
        "cpu",
    )
    flags = ["--ivf", "--nprobe", 4] if ivf else []
    invoke(
        "index",
        gallery,
        "--out",
        index,
        "--data",
        synth,
        "--include-queries",
        "--repo",
        models,
        *flags,
    )
    return {"repo": models, "gallery": gallery, "index": index, "data": synth}


@contextmanager
def serving_search_repo(repo: Path, synth: Path, root: Path) -> Iterator[dict]:
    """`build_search_repo`, then a real tritonserver on it for the with-block; yields the
    paths and the server handle (`server`)."""
    built = build_search_repo(repo, synth, root)
    with start_server(built["repo"], log_file=root / "triton.log", **free_ports()) as handle:
        yield {**built, "server": handle}
