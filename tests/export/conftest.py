"""Tiny stage-1/stage-2 checkpoints, their exports and a synthetic split, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from asen.export.build import export_model
from asen.export.calibrate import CalibrationSource

from asen.checkpoint import atomic_save, make_checkpoint
from asen.config import AttributeSpec, load_config
from asen.data.synthetic import DEFAULT_ATTRIBUTES, generate
from asen.model.asen import ASENPP

ATTRIBUTES = [AttributeSpec(n, v) for n, v in DEFAULT_ATTRIBUTES.items()]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[int, Path]:
    """Randomly initialised `small` models of both stages, saved as asen checkpoints (a high
    attention threshold, so that the untrained stage-2 model crops boxes inside the image)."""
    root = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(["small"], ["model.threshold=0.8"])
    out = {}
    for stage in (1, 2):
        torch.manual_seed(stage)
        model = ASENPP(cfg.model, len(ATTRIBUTES), stage)
        out[stage] = root / f"stage{stage}.pt"
        atomic_save(make_checkpoint(model, cfg, ATTRIBUTES), out[stage])
    return out


@pytest.fixture(scope="session")
def repos(tmp_path_factory, checkpoints) -> dict[int, Path]:
    """A model repository per stage: stage 2 with the default max batch, stage 1 with 3."""
    out = {}
    for stage, max_batch in ((1, 3), (2, 64)):
        out[stage] = tmp_path_factory.mktemp(f"repo{stage}") / "models"
        export_model(checkpoints[stage], out[stage], max_batch=max_batch)
    return out


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=1, n_train=10, n_eval=12)
    return root


LOOSE = {"min_cosine": 0.9, "max_map_drop": 1.0}  # random weights: near-flat attention maps


@pytest.fixture(scope="session")
def precision_repo(tmp_path_factory, checkpoints, synth) -> Path:
    """The stage-2 model exported in every precision, INT8 calibrated on the synthetic
    split and everything verified on its valid split (tolerances loosened: the untrained
    model's crop boxes move with small changes of its attention maps)."""
    out = tmp_path_factory.mktemp("precisions") / "models"
    export_model(
        checkpoints[2],
        out,
        precisions=["fp32", "fp16", "int8"],
        max_batch=16,
        calibrate=CalibrationSource(synth, "train", 8),
        **LOOSE,
    )
    return out
