"""Model versions in the repository, and the record of the files asen generated.

The encoder models (`<name>_onnx...`, `<name>_trt...`: those holding an artifact) are
versioned: an export writes version N (`--model-version N|next`, default 1) beside the
versions already there, which are carried into the staged set (hard links, the files are
never changed in place) and switched in with it; `--keep K` keeps the K newest versions asen
wrote. Every version shares the model's one `config.pbtxt`, so a new version must have the
same inputs, outputs and asen metadata as those it joins. The ensembles and the
preprocessing model stay version 1 and run the latest encoder version.

Each model folder holds `generated.json`: the sha256 of every config asen wrote there and
the versions asen wrote. A config edited since is not replaced silently: re-export says
which file (`--overwrite-edited` replaces it).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asen.export import layout
from asen.export.repository import CONFIG, read_config

import asen
from asen import AsenError
from asen.atomic import atomic_write_text, file_sha256

MANIFEST = "generated.json"
Report = Callable[[str], None]


def versioned_models(name: str) -> list[str]:
    """The encoder models of export `name` (its all-attributes graphs included): the ones
    whose versions hold an artifact."""
    models = set()
    for base in (name, layout.all_name(name)):
        models.add(layout.onnx_model(base, "int8", tensorrt=True))
        for p in layout.PRECISIONS:
            models |= {layout.onnx_model(base, p), layout.plan_model(base, p)}
    return sorted(models)


def version_folders(folder: Path) -> list[int]:
    """The numeric version folders of a model folder, in order."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def read_manifest(folder: Path) -> dict | None:
    """`generated.json` of a model folder; None for one written before asen kept it."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {"files": dict(data["files"]), "versions": [int(v) for v in data["versions"]]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AsenError(f"{path}: unreadable record of asen's files ({e})") from None


def asen_versions(folder: Path) -> list[int]:
    """The versions asen wrote in a model folder (before the record: version 1)."""
    manifest = read_manifest(folder)
    present = version_folders(folder)
    if manifest is None:
        return [v for v in present if v == 1]
    return [v for v in present if v in manifest["versions"]]


@dataclass(frozen=True)
class VersionRequest:
    """`--model-version N|next`, `--keep K`, `--overwrite-edited`."""

    model_version: str = "1"
    keep: int | None = None
    overwrite_edited: bool = False

    def number(self, repo: Path, name: str) -> int:
        """The version to write: N, or one past the newest of any encoder model."""
        if self.model_version == "next":
            found = [v for m in versioned_models(name) for v in version_folders(repo / m)]
            return max(found, default=0) + 1
        if not self.model_version.isdigit() or int(self.model_version) < 1:
            raise AsenError(
                f"--model-version {self.model_version}: expected a version number (1, 2, ...) "
                "or next"
            )
        return int(self.model_version)

    def check(self, repo: Path, name: str, report: Report) -> None:
        """Before any work: the options, and no config edited since asen wrote it."""
        self.number(repo, name)
        if self.keep is not None and self.keep < 1:
            raise AsenError(f"--keep {self.keep}: keep at least 1 version")
        for model in layout.owned_models(name):
            for path in edited_configs(repo / model):
                if not self.overwrite_edited:
                    raise AsenError(
                        f"{path}: edited since asen generated it; set what you changed with "
                        "the export options (see `asen export --help`), or pass "
                        "--overwrite-edited to replace it"
                    )
                report(f"replacing {path}, edited since asen generated it (--overwrite-edited)")


def edited_configs(folder: Path) -> list[Path]:
    """Configs of a model folder that differ from what asen recorded writing, and configs
    asen did not write."""
    manifest = read_manifest(folder)
    if manifest is None:
        return []
    configs = [folder / CONFIG, *sorted((folder / "configs").glob("*.pbtxt"))]
    out = []
    for path in configs:
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and manifest["files"].get(rel) != file_sha256(path):
            out.append(path)
    return out


def _link_tree(source: Path, target: Path) -> None:
    """Copy a version folder as hard links (a copy where the filesystem has none)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(
        source, target, copy_function=link, ignore=shutil.ignore_patterns("__pycache__")
    )


def _signature(config_path: Path) -> tuple:
    """What every version of a model must share: tensors, max batch, asen metadata."""
    config = read_config(config_path)
    params = {k: v.string_value for k, v in config.parameters.items()}
    params.pop("intra_op_thread_count", None)
    tensors = [(t.name, t.data_type, tuple(t.dims)) for t in [*config.input, *config.output]]
    return tensors, config.max_batch_size, params


def _kept(folder: Path, version: int, keep: int | None, model: str) -> list[int]:
    """The versions of `folder` to carry beside the new `version`."""
    ours = [v for v in asen_versions(folder) if v != version]
    if keep is None:
        return ours
    newest = sorted([*ours, version])[-keep:]
    if version not in newest:
        raise AsenError(
            f"--model-version {version} with --keep {keep}: {model} has newer versions "
            f"({', '.join(map(str, ours))}), so the new one would be pruned"
        )
    return [v for v in ours if v in newest]


def _carry(old: Path, new: Path, versions: list[int]) -> None:
    """Versions of the repository's model folder `old` (and every version asen did not
    write, which it never removes) into the staged folder `new`."""
    foreign = [v for v in version_folders(old) if v not in asen_versions(old)]
    for v in sorted({*versions, *foreign}):
        if not (new / str(v)).exists():
            _link_tree(old / str(v), new / str(v))


def _place_new(repo: Path, new: Path, model: str, version: int, keep: int | None) -> list[int]:
    """Move the staged version 1 of an encoder model to `version`, check it fits the versions
    it joins and carry those in; returns the model's versions asen wrote."""
    staged = new / model
    if version != 1:
        os.replace(staged / layout.VERSION, staged / str(version))
    old = repo / model
    if version in version_folders(old) and version not in asen_versions(old):
        raise AsenError(f"{old / str(version)}: a version asen did not write; move it away first")
    kept = _kept(old, version, keep, model) if old.is_dir() else []
    if kept and _signature(old / CONFIG) != _signature(staged / CONFIG):
        raise AsenError(
            f"{model}: version {version} does not fit versions {', '.join(map(str, kept))} "
            "(attributes, image size, embedding size or max batch differ, and one config "
            "serves every version); export under another --name, or prune them with --keep 1"
        )
    _carry(old, staged, kept)
    sidecar = staged / str(version) / layout.SIDECAR  # read and written beside the artifact
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    meta = {**layout.read_sidecar(sidecar), "model_version": str(version), "exported_at": stamp}
    layout.write_sidecar(sidecar, meta)
    return sorted([*kept, version])


def _carry_model(
    repo: Path, new: Path, model: str, version: int, keep: int | None
) -> list[int] | None:
    """A model of the repository this export does not write: its other versions stay (with
    its config) while any remain, and so do versions asen did not write; returns the kept
    versions asen wrote (None: the model goes, as before)."""
    old = repo / model
    kept = [v for v in asen_versions(old) if v != version]  # version N: the export replaced
    kept = kept[len(kept) - (keep - 1) :] if keep is not None else kept  # the new export: one
    if not kept and set(version_folders(old)) <= set(asen_versions(old)):
        return None
    shutil.copytree(old, new / model, ignore=lambda d, names: [n for n in names if n.isdigit()])
    _carry(old, new / model, kept)
    return kept


def _write_manifest(folder: Path, versions: list[int]) -> None:
    """The record of a staged model folder: its configs' sha256 as generated (a folder
    carried over keeps its earlier record, so an edit there stays visible) and versions."""
    earlier = read_manifest(folder)
    configs = [folder / CONFIG, *sorted((folder / "configs").glob("*.pbtxt"))]
    files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in configs if p.is_file()}
    files = earlier["files"] if earlier else files
    record = {"generated_by": f"asen {asen.__version__}", "files": files, "versions": versions}
    atomic_write_text(folder / MANIFEST, json.dumps(record, indent=2) + "\n")


def _ensemble_steps(folder: Path) -> list[str]:
    """The models an ensemble runs (none for any other model)."""
    return [s.model_name for s in read_config(folder / CONFIG).ensemble_scheduling.step]


def install(
    repo: Path, new: Path, name: str, request: VersionRequest, report: Report
) -> tuple[int, set[Path]]:
    """Turn the staged export (every model at version 1) into the repository's next state:
    the encoder models at the requested version beside their kept versions, the models of
    an earlier export that still have versions carried over, a record in every folder.
    Returns the version written and the files carried over (paths relative to `new`)."""
    version = request.number(repo, name)
    encoders = set(versioned_models(name))
    versions: dict[str, list[int]] = {}
    for model in sorted(p.name for p in new.iterdir()):
        if model in encoders:
            versions[model] = _place_new(repo, new, model, version, request.keep)
        else:
            versions[model] = [int(layout.VERSION)]
    written_here = set(versions)
    for model in sorted(encoders - set(versions)):
        if (repo / model).is_dir():
            kept = _carry_model(repo, new, model, version, request.keep)
            if kept is not None:
                versions[model] = kept
    for model in layout.owned_models(name):  # an earlier ensemble whose models all stay
        folder = repo / model
        if model not in versions and (folder / CONFIG).is_file():
            steps = _ensemble_steps(folder)
            if steps and all(s in versions for s in steps):
                shutil.copytree(folder, new / model)
                versions[model] = [int(layout.VERSION)]
    for model, numbers in versions.items():
        _write_manifest(new / model, numbers)
        latest = max(version_folders(new / model), default=0)  # asen's or not
        if model in encoders and latest > version:
            report(f"note: {model} version {latest} stays the latest (served by default)")
    carried = {
        p.relative_to(new)
        for p in new.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and (p.relative_to(new).parts[0] not in written_here or _same(p, repo / p.relative_to(new)))
    }
    return version, carried


def _same(path: Path, other: Path) -> bool:
    """Whether `other` exists and is the same file (a hard link carried over)."""
    return other.is_file() and os.path.samefile(path, other)
