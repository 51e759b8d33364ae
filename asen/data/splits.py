"""Reader for the split format (docs/architecture.md, "Split format"), validating as it reads.

Every error names the file and line. Attribute names come from the dataset config when
one is given, else from `dataset.yaml` in the dataset root, else they are inferred from
the label files and named by index.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asen import AsenError
from asen.config import (
    MAX_ATTRIBUTE_VALUES,
    MAX_ATTRIBUTES,
    AttributeSpec,
    attributes_from_dicts,
    check_attributes,
    read_yaml_mapping,
)
from asen.parse import short_repr, whole_number

EVAL_SPLITS = ("valid", "test")
OUTSIDE_ROOT_KEY = "allow_paths_outside_root"  # dataset.yaml: opt in to absolute and ../ paths


class SplitError(AsenError):
    """A malformed split file; the message names the file and line."""


@dataclass
class EvalEntries:
    """Query and candidate entries of one evaluation split: arrays of (image_id, attr, value)."""

    split: str
    files: list[Path]
    queries: np.ndarray  # int64 [Q, 3]
    candidates: np.ndarray  # int64 [C, 3]


@dataclass
class SplitDataset:
    """A dataset root in the split format, read lazily split by split."""

    root: Path
    attributes: list[AttributeSpec]
    origin: str = "dataset.yaml"  # where the attributes come from, for error messages
    conflict: str = ""  # how dataset.yaml differs from given attributes, for error messages
    allow_outside_root: bool = False  # image paths may be absolute or leave the root (../)
    _files: dict[str, list[Path]] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def counts(self) -> list[int]:
        return [a.values for a in self.attributes]

    def attribute_index(self, name: str) -> int:
        """Index of an attribute by name (or by its number); a clear error lists the valid names."""
        if name in self.names:
            return self.names.index(name)
        number = whole_number(name)
        if number is not None and number < len(self.names):
            return number
        raise AsenError(f"unknown attribute {short_repr(name)}; valid: {', '.join(self.names)}")

    def files(self, split: str) -> list[Path]:
        if split not in self._files:
            self._files[split] = read_filenames(
                self.root, split, allow_outside_root=self.allow_outside_root
            )
        return self._files[split]

    def train_labels(self) -> np.ndarray:
        """int64 [N, A]: the value of each attribute for each training image, -1 if unlabelled."""
        n = len(self.files("train"))
        path = self.root / "label_train.txt"
        labels = np.full((n, len(self.attributes)), -1, dtype=np.int64)
        for lineno, nums in _read_ints(path):
            if len(nums) < 3 or len(nums) % 2 == 0:
                raise SplitError(
                    f"{path}:{lineno}: expected 'image_id attr value [attr value ...]'"
                )
            image_id = nums[0]
            _check_id(path, lineno, image_id, n)
            for attr, value in zip(nums[1::2], nums[2::2], strict=True):
                self._check_label(path, lineno, attr, value)
                labels[image_id, attr] = value
        if not (labels >= 0).any():
            raise SplitError(f"{path}: empty split (no labels)")
        return labels

    def eval_entries(self, split: str) -> EvalEntries:
        if split not in EVAL_SPLITS:
            raise AsenError(f"unknown split '{split}'; valid: {', '.join(EVAL_SPLITS)}")
        files = self.files(split)
        parts = []
        for kind in ("query", "candidate"):
            path = self.root / f"{kind}_{split}.txt"
            rows = []
            for lineno, nums in _read_ints(path):
                if len(nums) != 3:
                    raise SplitError(f"{path}:{lineno}: expected 'image_id attr value'")
                _check_id(path, lineno, nums[0], len(files))
                self._check_label(path, lineno, nums[1], nums[2])
                rows.append(nums)
            if not rows:
                raise SplitError(f"{path}: empty split (no entries)")
            parts.append(np.asarray(rows, dtype=np.int64))
        return EvalEntries(split, files, parts[0], parts[1])

    def _check_label(self, path: Path, lineno: int, attr: int, value: int) -> None:
        if not 0 <= attr < len(self.attributes):
            n = len(self.attributes)
            raise SplitError(
                f"{path}:{lineno}: attribute {attr} out of range (0..{n - 1}: "
                f"{n} attributes from {self.origin}){self.conflict}"
            )
        spec = self.attributes[attr]
        if not 0 <= value < spec.values:
            raise SplitError(
                f"{path}:{lineno}: value {value} out of range for attribute "
                f"'{spec.name}' (0..{spec.values - 1}){self.conflict}"
            )


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number from 1, stripped text) for every non-blank line of a UTF-8 file;
    a missing file or a line that is not UTF-8 is a SplitError naming the file and line."""
    if not path.is_file():
        raise SplitError(f"{path}: split file not found")
    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise SplitError(
                        f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                        f"column {e.start + 1})"
                    ) from None
                if line:
                    yield lineno, line
    except OSError as e:
        raise SplitError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_ints(path: Path) -> Iterator[tuple[int, list[int]]]:
    """Yield (line number from 1, list of ints) for every non-blank line."""
    for lineno, line in _read_lines(path):
        try:
            yield lineno, [int(tok) for tok in line.split()]
        except ValueError:
            raise SplitError(f"{path}:{lineno}: not an integer: {short_repr(line)}") from None


def _check_id(path: Path, lineno: int, image_id: int, n: int) -> None:
    if not 0 <= image_id < n:
        raise SplitError(f"{path}:{lineno}: image id {image_id} out of range (0..{n - 1})")


def _leaves_root(name: str) -> bool:
    """An absolute path, or a relative one whose `..` steps lead out of the root (checked on
    the text: a symlink inside the root may point anywhere, as the dataset's author chose)."""
    norm = os.path.normpath(name)
    return os.path.isabs(name) or norm == ".." or norm.startswith(".." + os.sep)


def read_filenames(root: Path, split: str, *, allow_outside_root: bool = False) -> list[Path]:
    """Image paths of a split, checked to exist (the first few missing ones and the count).
    Paths are relative to the root; absolute ones and `../` ones that leave it are refused
    unless `allow_outside_root` (dataset.yaml: `allow_paths_outside_root: true`)."""
    path = root / f"filenames_{split}.txt"
    files = []
    for lineno, line in _read_lines(path):
        if not allow_outside_root and _leaves_root(line):
            raise SplitError(
                f"{path}:{lineno}: image path {line!r} leaves the dataset root (absolute or ../); "
                f"set '{OUTSIDE_ROOT_KEY}: true' in {root / 'dataset.yaml'} to allow it"
            )
        files.append(root / line)
    if not files:
        raise SplitError(f"{path}: empty split (no image paths)")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        shown = ", ".join(missing[:3])
        raise SplitError(f"{path}: {len(missing)} image files missing (first: {shown})")
    return files


def _infer_attributes(root: Path) -> list[AttributeSpec]:
    """Attribute count and value counts from the label and query/candidate files."""
    counts: dict[int, int] = {}
    sources = [root / "label_train.txt"] + [
        root / f"{kind}_{split}.txt" for split in EVAL_SPLITS for kind in ("query", "candidate")
    ]
    for path in sources:
        if not path.is_file():
            continue
        for lineno, nums in _read_ints(path):
            pairs = zip(nums[1::2], nums[2::2], strict=False)
            for attr, value in pairs:
                if attr < 0 or value < 0:
                    raise SplitError(f"{path}:{lineno}: negative attribute or value")
                if attr >= MAX_ATTRIBUTES or value >= MAX_ATTRIBUTE_VALUES:
                    raise SplitError(
                        f"{path}:{lineno}: attribute {attr} value {value} out of range (at most "
                        f"{MAX_ATTRIBUTES} attributes of {MAX_ATTRIBUTE_VALUES:,} values each)"
                    )
                counts[attr] = max(counts.get(attr, 0), value + 1)
    if not counts:
        raise SplitError(f"{root}: no label files to infer attributes from")
    return [AttributeSpec(f"attr{i}", max(counts.get(i, 0), 2)) for i in range(max(counts) + 1)]


def open_dataset(root: str | Path, attributes: list[AttributeSpec] | None = None) -> SplitDataset:
    """Open a dataset root; `attributes` (from a dataset config) take precedence over
    `dataset.yaml`, which takes precedence over inference from the labels."""
    root = Path(root)
    if not root.is_dir():
        raise AsenError(f"{root}: dataset root not found (expected a folder in the split format)")
    meta = root / "dataset.yaml"
    described, allow = _read_meta(meta) if meta.is_file() else (None, False)
    conflict = ""
    if attributes:
        origin = "the model or config"
        check_attributes(list(attributes), origin)
        if described is not None and [a.values for a in described] != [
            a.values for a in attributes
        ]:
            conflict = (
                f"; the model or config has {_show(attributes)} but {meta} has "
                f"{_show(described)}: are they for different datasets?"
            )
    elif described is not None:
        attributes, origin = described, str(meta)
    else:
        attributes, origin = _infer_attributes(root), f"the label files in {root}"
    return SplitDataset(root, list(attributes), origin, conflict, allow)


def _show(attributes: list[AttributeSpec]) -> str:
    names = ", ".join(f"{a.name} ({a.values})" for a in attributes)
    return f"{len(attributes)} attributes [{names}]"


def _read_meta(meta: Path) -> tuple[list[AttributeSpec], bool]:
    """dataset.yaml: its attributes (checked) and whether paths may leave the root."""
    raw = read_yaml_mapping(meta)
    try:
        attributes = attributes_from_dicts(raw["attributes"])
    except (KeyError, TypeError, ValueError) as e:
        raise AsenError(f"{meta}: expected 'attributes: [{{name, values}}, ...]'") from e
    check_attributes(attributes, str(meta))
    allow = raw.get(OUTSIDE_ROOT_KEY, False)
    if not isinstance(allow, bool):
        raise AsenError(f"{meta}: {OUTSIDE_ROOT_KEY} must be true or false, got {allow!r}")
    return attributes, allow
