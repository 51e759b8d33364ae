"""Where artifacts live in the model repository, and the JSON sidecar beside each one.

`<repo>/<name>_onnx/1/model.onnx` and `<repo>/<name>_trt/1/model.plan`, each with a
`model.json` sidecar (the asen metadata, flat strings) in its version folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from asen import AsenError

VERSION = "1"
SIDECAR = "model.json"
ARTIFACTS = {"onnx": ("_onnx", "model.onnx"), "trt": ("_trt", "model.plan")}  # kind: suffix, file
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
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
    models = sorted(p for p in path.glob(f"*{suffix}") if p.is_dir() and _versions(p, filename))
    if len(models) == 1:
        return _versions(models[0], filename)[-1]
    if not models:
        flag = " --trt" if kind == "trt" else ""
        raise AsenError(
            f"{path}: no {filename} in this model repository (write one with `asen export{flag}`)"
        )
    names = ", ".join(str(m) for m in models)
    raise AsenError(f"{path}: several {kind} models ({names}); pass one of these folders")
