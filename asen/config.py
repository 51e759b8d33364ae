"""Typed configuration composed from YAML files and `key=value` overrides.

Configs compose as the reference's do: files apply in order, later ones override
earlier ones; a bare name (`FashionAI`, `small`) means a packaged config under
`asen/configs/`; `--set model.embed_dim=256` overrides one field.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asen import AsenError
from asen.parse import check_structure, short_repr

PACKAGED = Path(__file__).parent / "configs"
MAX_YAML_BYTES = 1 << 20  # a config or dataset.yaml larger than this is refused unread
MAX_YAML_DEPTH = 16  # nesting a YAML document may have (asen's own need 4)
MAX_ATTRIBUTES = 1024  # attributes a dataset may have
MAX_ATTRIBUTE_VALUES = 100_000  # values one attribute may take
MAX_DIM = 8192  # widths of the model's layers and embeddings
MAX_IMAGE_SIZE = 1024  # the global and local branch inputs (the source image is twice)


@dataclass
class AttributeSpec:
    name: str
    values: int

    @classmethod
    def from_dict(cls, raw: dict) -> AttributeSpec:
        """`{name, values}` (a config, `dataset.yaml`, a checkpoint) -> AttributeSpec."""
        try:
            return cls(str(raw["name"]), int(raw["values"]))
        except OverflowError as e:  # values: .inf
            raise ValueError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": self.values}


def attributes_from_dicts(raw: list) -> list[AttributeSpec]:
    """A list of `{name, values}` mappings; a malformed entry raises KeyError, TypeError or
    ValueError for the caller to name its source."""
    return [a if isinstance(a, AttributeSpec) else AttributeSpec.from_dict(a) for a in raw]


def check_attributes(attributes: list[AttributeSpec], source: str) -> None:
    """Names non-empty, unique and free of commas (the exported metadata lists them
    comma-separated); at least 2 values each. An error names `source`."""
    seen: set[str] = set()
    if len(attributes) > MAX_ATTRIBUTES:
        raise AsenError(f"{source}: {len(attributes)} attributes, at most {MAX_ATTRIBUTES}")
    for a in attributes:
        if not a.name.strip() or "," in a.name:
            raise AsenError(
                f"{source}: attribute name {a.name!r} must be non-empty and contain no comma "
                "(exported models list the names comma-separated)"
            )
        if a.name in seen:
            raise AsenError(f"{source}: attribute name {a.name!r} appears twice")
        if a.values < 2:
            raise AsenError(
                f"{source}: attribute {a.name!r} needs at least 2 values, got {a.values}"
            )
        if a.values > MAX_ATTRIBUTE_VALUES:
            raise AsenError(
                f"{source}: attribute {a.name!r} has {a.values} values, "
                f"at most {MAX_ATTRIBUTE_VALUES:,}"
            )
        seen.add(a.name)


TRAIN_PRECISIONS = ("auto", "fp32", "bf16")


def _range(default: Any, low: float, high: float | None = None, *, strict: bool = False):
    """A field whose value must be >= low (> low when `strict`) and <= high."""
    return field(default=default, metadata={"range": (low, high, strict)})


def _choice(default: str, choices: tuple[str, ...]):
    """A field whose value must be one of `choices`."""
    return field(default=default, metadata={"choices": choices})


@dataclass
class DataConfig:
    name: str = ""
    attributes: list[AttributeSpec] = field(default_factory=list)
    workers: int = _range(2, 0)
    skip_bad_images: bool = False
    cache_mb: int = _range(2048, 0)  # decoded training images kept for the run (0: none)


@dataclass
class ModelConfig:
    global_backbone: str = "resnet50"
    local_backbone: str = "resnet34"
    image_size: int = _range(224, 16, MAX_IMAGE_SIZE)  # global branch input G; source S = 2G
    local_size: int = _range(112, 16, MAX_IMAGE_SIZE)
    attr_dim: int = _range(512, 1, MAX_DIM)
    global_common: int = _range(512, 1, MAX_DIM)
    local_common: int = _range(256, 1, MAX_DIM)
    channel_hidden: int = _range(512, 1, MAX_DIM)
    embed_dim: int = _range(1024, 1, MAX_DIM)
    beta: float = _range(0.6, 0.0, 1.0)
    threshold: float = _range(0.1, 0.0, 1.0)
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
    epochs: int = _range(50, 1)
    triplets_per_epoch: int = _range(100_000, 1)
    batch_size: int = _range(16, 1)
    lr: float = _range(
        1e-4, 0.0, strict=True
    )  # the branch being trained (global in stage 1, local in stage 2)
    lr_global: float = _range(1e-5, 0.0)  # the global branch in stage 2
    lr_step: int = _range(3, 1)  # epochs between learning-rate decays
    lr_gamma: float = _range(0.9, 0.0, 1.0, strict=True)
    margin: float = _range(0.2, 0.0)
    local_weight: float = _range(0.1, 0.0)
    align_weight: float = _range(0.1, 0.0)
    eval_batch_size: int = _range(64, 1)
    seed: int = _range(0, 0)
    micro_batch: int = _range(0, 0)  # images a pass; 0: per device (CPU 16, CUDA all at once)
    precision: str = _choice("auto", TRAIN_PRECISIONS)  # auto: bf16 where native; eval fp32


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _looks_like_path(name: str) -> bool:
    """A YAML suffix or a folder separator makes a name a path; a bare word is a packaged
    config's name, whatever files the working folder holds."""
    return Path(name).suffix in (".yaml", ".yml") or "/" in name or os.sep in name


def resolve_path(name: str) -> Path:
    """A path to a YAML file (it has a .yaml/.yml suffix or a separator), or a packaged
    config's bare name (`small`, even beside a file or folder called `small`)."""
    if _looks_like_path(name):
        path = Path(name)
        if not path.is_file():
            what = "is a folder, not a config file" if path.is_dir() else "config file not found"
            raise AsenError(f"{name}: {what}")
        return path
    packaged = PACKAGED / f"{name}.yaml"
    if not packaged.is_file():
        known = ", ".join(sorted(p.stem for p in PACKAGED.glob("*.yaml")))
        local = f"; for the file here, write ./{name}" if Path(name).is_file() else ""
        raise AsenError(f"{name}: no such packaged config (packaged: {known}){local}")
    return packaged


class _BoundedLoader(yaml.SafeLoader):
    """yaml's SafeLoader without aliases (asen's YAML needs none; nested ones expand to
    billions of values: "billion laughs") and nested at most MAX_YAML_DEPTH deep."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not supported", mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml_text(text: str) -> Any:
    """Parse YAML text safely and bounded (see `_BoundedLoader`); errors are yaml.YAMLError."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_bounded(path: Path) -> bytes:
    """A file's bytes, refused (OSError EFBIG) past MAX_YAML_BYTES before reading them all."""
    with path.open("rb") as fh:
        data = fh.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_YAML_BYTES // 1024} KiB")
    return data


def _yaml_error_line(path: str | Path, error: yaml.YAMLError) -> str:
    """`path: invalid YAML (line N: problem)` where yaml marks the place, else its text."""
    mark = getattr(error, "problem_mark", None)
    if mark is not None and getattr(error, "problem", None):
        return f"{path}: invalid YAML (line {mark.line + 1}: {error.problem})"
    return f"{path}: invalid YAML ({error})".replace("\n", " ")


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file's top-level mapping ({} for an empty file); an unreadable, non-UTF-8,
    invalid or non-mapping file is one line naming it."""
    try:
        data = load_yaml_text(_read_bounded(Path(path)).decode("utf-8"))
    except OSError as e:
        raise AsenError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise AsenError(f"{path}: not a UTF-8 text file (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise AsenError(_yaml_error_line(path, e)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AsenError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _merge(base: dict, update: dict, schema: type, source: str, prefix: str = "") -> None:
    """Merge `update` into `base` in place, rejecting keys `schema` does not have."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    if not isinstance(update, dict):
        raise AsenError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping")
    for key, value in update.items():
        if key not in fields:
            raise AsenError(f"{source}: unknown key {short_repr(f'{prefix}{key}')}")
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
            specs = attributes_from_dicts(value)
        except (TypeError, KeyError, ValueError) as e:
            raise AsenError(f"{source}: data.attributes must be a list of {{name, values}}") from e
        check_attributes(specs, f"{source}: data.attributes")
        return specs
    if default is None:  # optional field (model.weights): any value, None included
        return value
    kind = type(default)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AsenError(f"{source}: {key} must be {kind.__name__}, got {short_repr(value)}")
    _check_declared(value, f, key, source)
    return value


def _check_declared(value: Any, f: dataclasses.Field, key: str, source: str) -> None:
    """The bounds (`_range`) or choices (`_choice`) a field declares, as one line naming
    the key."""
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        choices = ", ".join(f.metadata["choices"])
        raise AsenError(f"{source}: {key} must be one of {choices}, got {short_repr(value)}")
    if "range" not in f.metadata:
        return
    if isinstance(value, float) and math.isinf(value):
        raise AsenError(f"{source}: {key} must be a finite number, got {value!r}")
    low, high, strict = f.metadata["range"]
    if value != value or value < low or (strict and value == low):  # NaN too
        raise AsenError(
            f"{source}: {key} must be {'greater than' if strict else 'at least'} {low}, "
            f"got {value!r}"
        )
    if high is not None and value > high:
        raise AsenError(f"{source}: {key} must be at most {high}, got {value!r}")


def check_declared(cfg: Config, source: str) -> None:
    """Every field of `cfg` against its declared bounds and choices: for a Config built or
    changed in code (files and --set are checked as they are read)."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            _check_declared(getattr(values, f.name), f, f"{section.name}.{f.name}", source)


def load_config(
    names: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple = ()
) -> Config:
    """Compose packaged/user YAML files in order, then apply `key=value` overrides."""
    raw = Config().to_dict()
    source = "defaults"
    for name in names:
        path = resolve_path(name)
        _merge(raw, read_yaml_mapping(path), Config, str(path))
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
        try:
            cursor[parts[-1]] = load_yaml_text(text)
        except yaml.YAMLError:
            cursor[parts[-1]] = text  # not YAML (e.g. a path with brackets): the plain text
        _merge(raw, nested, Config, f"--set {key}")
        source = f"--set {key}"
    return _build(raw, source)


def config_from_dict(raw: dict) -> Config:
    """Rebuild a Config stored in a checkpoint."""
    base = Config().to_dict()
    check_structure(raw, "checkpoint config")
    _merge(base, raw, Config, "checkpoint")
    return _build(base, "checkpoint")
