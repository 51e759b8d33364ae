"""Where artifacts live in the model repository, and the JSON sidecar beside each one.

`<repo>/<name>_onnx/1/model.onnx` and `<repo>/<name>_trt/1/model.plan` (fp32), each with a
`model.json` sidecar (the asen metadata, flat strings) in its version folder. Reduced
precisions add a suffix: `<name>_onnx_fp16`, `<name>_onnx_int8` (the ONNX Runtime CPU graph),
`<name>_onnx_int8_trt` (the TensorRT graph), `<name>_trt_fp16`, `<name>_trt_int8`; their
ensembles are `<name>_fp16` and `<name>_int8` (`<name>` runs the first precision exported).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from asen import AsenError
from asen.atomic import atomic_write_text

VERSION = "1"
SIDECAR = "model.json"
ARTIFACTS = {"onnx": ("_onnx", "model.onnx"), "trt": ("_trt", "model.plan")}  # kind: suffix, file
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PRECISIONS = ("fp32", "fp16", "int8")
_TAIL = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}
ALL = "_all"  # the all-attributes graphs of `<name>` are the models of `<name>_all`


def all_name(name: str) -> str:
    """The export name of `name`'s all-attributes graphs: `<name>_all` (models
    `<name>_all_onnx`, `<name>_all_trt`, ..., ensembles `<name>_all`, `<name>_all_fp16`...)."""
    return f"{name}{ALL}"


_ENDINGS = sorted(
    {kind + tail for kind in ("_onnx", "_trt", "") for tail in ("_int8_trt", *_TAIL.values())}
    | {"_fp32"},
    key=len,
    reverse=True,
)


def all_variant(model: str) -> str | None:
    """The all-attributes model beside an encoder or ensemble model of an export:
    `asen_onnx_fp16` -> `asen_all_onnx_fp16`, `asen` -> `asen_all`; None for a model that is
    already one (`..._all...`)."""
    for ending in _ENDINGS:
        if model.endswith(ending) and len(model) > len(ending):
            base = model[: len(model) - len(ending)]
            return None if base.endswith(ALL) else f"{all_name(base)}{ending}"
    return None


def onnx_model(name: str, precision: str = "fp32", *, tensorrt: bool = False) -> str:
    """`<name>_onnx`, `<name>_onnx_fp16`, `<name>_onnx_int8`; `<name>_onnx_int8_trt` is the
    INT8 graph for TensorRT (`tensorrt=True`)."""
    return f"{name}_onnx{_TAIL[precision]}" + ("_trt" if tensorrt else "")


def plan_model(name: str, precision: str = "fp32") -> str:
    """`<name>_trt`, `<name>_trt_fp16`, `<name>_trt_int8`."""
    return f"{name}_trt{_TAIL[precision]}"


def ensemble_model(name: str, precision: str, *, first: bool) -> str:
    """`<name>` for the first precision of an export, else `<name>_fp16` / `<name>_int8`."""
    return name if first else f"{name}{_TAIL[precision] or '_fp32'}"


def in_model(repo: Path, model: str, kind: str = "onnx") -> Path:
    """The artifact (`model.onnx` or `model.plan`) of the model folder `model`, version 1."""
    return Path(repo) / model / VERSION / ARTIFACTS[kind][1]


def _models(name: str) -> set[str]:
    names = {name, onnx_model(name, "int8", tensorrt=True)}
    for p in PRECISIONS:
        names |= {onnx_model(name, p), plan_model(name, p)}
        names |= {ensemble_model(name, p, first=False)}
    return names


def owned_models(name: str) -> list[str]:
    """Every model folder an export of `name` may write: the set it replaces as a whole
    (the all-attributes models of `<name>_all` included)."""
    return sorted({f"{name}_preprocess"} | _models(name) | _models(all_name(name)))


def check_name(name: str) -> None:
    """Model names become folder names (and Triton model names)."""
    if not NAME_PATTERN.fullmatch(name):
        raise AsenError(f"--name {name!r}: use letters, digits, '_', '-' and '.' only")


def model_dir(repo: Path, name: str, kind: str) -> Path:
    """`<repo>/<name>_onnx` or `<repo>/<name>_trt`."""
    return Path(repo) / f"{name}{ARTIFACTS[kind][0]}"


def artifact_path(repo: Path, name: str, kind: str) -> Path:
    """The artifact file of model `name` in `repo`, version 1."""
    return model_dir(repo, name, kind) / VERSION / ARTIFACTS[kind][1]


def write_sidecar(artifact: Path, meta: dict[str, str]) -> Path:
    """Write `model.json` beside `artifact` (in the staging folder); returns its path."""
    path = artifact.parent / SIDECAR
    atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(artifact: Path) -> dict[str, str]:
    """The `model.json` beside `artifact`; missing or malformed is one clear error."""
    path = Path(artifact).parent / SIDECAR
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise AsenError(
            f"{path}: sidecar missing (re-export the model with `asen export`)"
        ) from None
    except (OSError, ValueError) as e:
        raise AsenError(f"{path}: unreadable sidecar ({e})") from None
    if not isinstance(meta, dict):
        raise AsenError(f"{path}: sidecar is not a JSON object")
    return {str(k): str(v) for k, v in meta.items()}


def _versions(folder: Path, filename: str) -> list[Path]:
    """`folder/<n>/filename` for numeric versions n, oldest first."""
    found = [
        p / filename for p in folder.iterdir() if p.name.isdigit() and (p / filename).is_file()
    ]
    return sorted(found, key=lambda p: int(p.parent.name))


def find_artifact(path: str | Path, kind: str) -> Path:
    """The artifact for `path`: the file itself, a version or model folder, or a repository
    holding exactly one `*_onnx` (or `*_trt`) model (its newest version)."""
    suffix, filename = ARTIFACTS[kind]
    path = Path(path)
    if path.is_file():
        if path.suffix != Path(filename).suffix:
            raise AsenError(f"{path}: expected a {filename} file or a model repository folder")
        return path
    if not path.is_dir():
        raise AsenError(f"{path}: no such artifact file or model repository")
    if (path / filename).is_file():
        return path / filename
    if versions := _versions(path, filename):
        return versions[-1]
    models = sorted(
        p
        for p in path.glob(f"*{suffix}")
        if p.is_dir() and _versions(p, filename) and not p.name.endswith(f"{ALL}{suffix}")
    )
    if len(models) == 1:
        return _versions(models[0], filename)[-1]
    if not models:
        flag = " --trt" if kind == "trt" else ""
        raise AsenError(
            f"{path}: no {filename} in this model repository (write one with `asen export{flag}`)"
        )
    names = ", ".join(str(m) for m in models)
    raise AsenError(f"{path}: several {kind} models ({names}); pass one of these folders")
