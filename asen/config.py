"""Typed configuration composed from YAML files and `key=value` overrides.

Configs compose as the reference's do: files apply in order, later ones override
earlier ones; a bare name (`FashionAI`, `small`) means a packaged config under
`asen/configs/`; `--set model.embed_dim=256` overrides one field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asen import AsenError

PACKAGED = Path(__file__).parent / "configs"


@dataclass
class AttributeSpec:
    name: str
    values: int

    @classmethod
    def from_dict(cls, raw: dict) -> AttributeSpec:
        """`{name, values}` (a config, `dataset.yaml`, a checkpoint) -> AttributeSpec."""
        return cls(str(raw["name"]), int(raw["values"]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": self.values}


def attributes_from_dicts(raw: list) -> list[AttributeSpec]:
    """A list of `{name, values}` mappings; a malformed entry raises KeyError, TypeError or
    ValueError for the caller to name its source."""
    return [a if isinstance(a, AttributeSpec) else AttributeSpec.from_dict(a) for a in raw]


@dataclass
class DataConfig:
    name: str = ""
    attributes: list[AttributeSpec] = field(default_factory=list)
    workers: int = 2
    skip_bad_images: bool = False


@dataclass
class ModelConfig:
    global_backbone: str = "resnet50"
    local_backbone: str = "resnet34"
    image_size: int = 224  # global branch input G; the source image is S = 2G
    local_size: int = 112
    attr_dim: int = 512
    global_common: int = 512
    local_common: int = 256
    channel_hidden: int = 512
    embed_dim: int = 1024
    beta: float = 0.6
    threshold: float = 0.1
    weights: str | None = None  # None (random), "imagenet", or a local state-dict file

    @property
    def source_size(self) -> int:
        """S: the model's input size, twice the global branch's."""
        return 2 * self.image_size

    def embedding_dim(self, stage: int) -> int:
        """D: `embed_dim` for stage 1; stage 2 concatenates the local branch's."""
        return self.embed_dim * (2 if stage == 2 else 1)


@dataclass
class TrainConfig:
    epochs: int = 50
    triplets_per_epoch: int = 100_000
    batch_size: int = 16
    lr: float = 1e-4  # the branch being trained (global in stage 1, local in stage 2)
    lr_global: float = 1e-5  # the global branch in stage 2
    lr_step: int = 3  # epochs between learning-rate decays
    lr_gamma: float = 0.9
    margin: float = 0.2
    local_weight: float = 0.1
    align_weight: float = 0.1
    eval_batch_size: int = 64
    seed: int = 0
    micro_batch: int = 0  # images a forward pass; 0: per device (CPU 16, CUDA the whole step)
    precision: str = "auto"  # auto (bf16 where native), fp32 or bf16; validation is fp32


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_path(name: str) -> Path:
    """A path to a YAML file, or a packaged config's bare name."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise AsenError(f"{name}: config file not found")
        return path
    packaged = PACKAGED / f"{name}.yaml"
    if not packaged.is_file():
        known = ", ".join(sorted(p.stem for p in PACKAGED.glob("*.yaml")))
        raise AsenError(f"{name}: no such config file or packaged config (packaged: {known})")
    return packaged


def _merge(base: dict, update: dict, schema: type, source: str, prefix: str = "") -> None:
    """Merge `update` into `base` in place, rejecting keys `schema` does not have."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    if not isinstance(update, dict):
        raise AsenError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping")
    for key, value in update.items():
        if key not in fields:
            raise AsenError(f"{source}: unknown key '{prefix}{key}'")
        sub = _SECTIONS.get((schema, key))
        if sub is not None:
            _merge(base[key], value or {}, sub, source, f"{prefix}{key}.")
        else:
            base[key] = _coerce(value, fields[key], f"{prefix}{key}", source)  # blame this source


_SECTIONS = {
    (Config, "data"): DataConfig,
    (Config, "model"): ModelConfig,
    (Config, "train"): TrainConfig,
}


def _build(raw: dict, source: str) -> Config:
    """Typed Config from a merged dict; type errors name the field."""
    sections = {}
    for (_, key), schema in _SECTIONS.items():
        values = dict(raw[key])
        for f in dataclasses.fields(schema):
            values[f.name] = _coerce(values[f.name], f, f"{key}.{f.name}", source)
        sections[key] = schema(**values)
    return Config(**sections)


def _coerce(value: Any, f: dataclasses.Field, key: str, source: str) -> Any:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if key == "data.attributes":
        try:
            return attributes_from_dicts(value)
        except (TypeError, KeyError, ValueError) as e:
            raise AsenError(f"{source}: data.attributes must be a list of {{name, values}}") from e
    if default is None:  # optional field (model.weights): any value, None included
        return value
    kind = type(default)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AsenError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
    return value


def load_config(
    names: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple = ()
) -> Config:
    """Compose packaged/user YAML files in order, then apply `key=value` overrides."""
    raw = Config().to_dict()
    source = "defaults"
    for name in names:
        path = resolve_path(name)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise AsenError(f"{path}: invalid YAML ({e})".replace("\n", " ")) from e
        _merge(raw, data, Config, str(path))
        source = str(path)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise AsenError(f"--set {item}: expected key=value, e.g. model.embed_dim=256")
        nested: dict = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = yaml.safe_load(text)
        _merge(raw, nested, Config, f"--set {key}")
        source = f"--set {key}"
    return _build(raw, source)


def config_from_dict(raw: dict) -> Config:
    """Rebuild a Config stored in a checkpoint."""
    base = Config().to_dict()
    _merge(base, raw, Config, "checkpoint")
    return _build(base, "checkpoint")
