"""The models the benchmarks time when no checkpoint is given: a randomly initialised
stage-2 ASEN++ of a named config, the same for every benchmark (seed 0)."""

from __future__ import annotations

from pathlib import Path

import torch

from asen.checkpoint import atomic_save, make_checkpoint
from asen.config import AttributeSpec, Config, load_config
from asen.data.synthetic import DEFAULT_ATTRIBUTES
from asen.model.asen import ASENPP

CONFIGS = {"small": ["small"], "paper": []}  # paper: the defaults (ResNet-50/34, 224/112)


def random_model(config: str) -> tuple[ASENPP, Config, list[AttributeSpec]]:
    """A stage-2 model of `config` (a key of CONFIGS) with random weights, its config and
    the synthetic dataset's attributes."""
    cfg = load_config(CONFIGS[config])
    attributes = [AttributeSpec(n, v) for n, v in DEFAULT_ATTRIBUTES.items()]
    torch.manual_seed(0)
    return ASENPP(cfg.model, len(attributes), stage=2).eval(), cfg, attributes


def random_checkpoint(config: str, path: Path) -> Path:
    """`random_model(config)` saved as a checkpoint at `path` (what the encoders open)."""
    model, cfg, attributes = random_model(config)
    atomic_save(make_checkpoint(model, cfg, attributes), path)
    return path
