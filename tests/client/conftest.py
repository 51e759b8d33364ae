"""A tiny exported model, a synthetic split and one real Triton server on them, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from asen.client.server import ServerHandle, free_ports, start_server
from asen.export.build import export_model

from asen.checkpoint import atomic_save, make_checkpoint
from asen.config import AttributeSpec, load_config
from asen.data.synthetic import DEFAULT_ATTRIBUTES, generate
from asen.model.asen import ASENPP

ATTRIBUTES = [AttributeSpec(n, v) for n, v in DEFAULT_ATTRIBUTES.items()]
MAX_BATCH = 8  # small, so that a gallery is split into several requests


@pytest.fixture
def ports() -> dict[str, int]:
    """Free HTTP, gRPC and metrics ports, as `start_server` keyword arguments."""
    return free_ports()


@pytest.fixture(scope="session")
def max_batch() -> int:
    return MAX_BATCH


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised `small` stage-2 model (a high attention threshold keeps the
    untrained crop inside the image)."""
    path = tmp_path_factory.mktemp("ckpt") / "stage2.pt"
    torch.manual_seed(0)
    cfg = load_config(["small"], ["model.threshold=0.8"])
    atomic_save(make_checkpoint(ASENPP(cfg.model, len(ATTRIBUTES), 2), cfg, ATTRIBUTES), path)
    return path


@pytest.fixture(scope="session")
def repo(tmp_path_factory, checkpoint) -> Path:
    out = tmp_path_factory.mktemp("triton") / "models"
    export_model(checkpoint, out, max_batch=MAX_BATCH)
    return out


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=3, n_train=10, n_eval=20)
    return root


@pytest.fixture(scope="session")
def server(repo, tmp_path_factory) -> ServerHandle:
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    with start_server(repo, log_file=log, **free_ports()) as handle:
        yield handle
