"""INT8 calibration images from the user's dataset: (image, attribute) pairs of one split,
every attribute represented in turn, each image through the one preprocessing function
(`asen.data.images.load_image`), drawn with a fixed seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asen import AsenError
from asen.data.images import load_image
from asen.data.splits import SplitDataset, open_dataset
from asen.model.shape import ModelInfo

SPLITS = ("train", "valid", "test")
SEED = 0


@dataclass(frozen=True)
class CalibrationSource:
    """What `--calibrate ROOT [--split S] [--calibration-images N]` asks for."""

    root: Path
    split: str = "train"
    images: int = 512
    seed: int = SEED

    def check(self) -> None:
        """What can be rejected before anything is read."""
        if self.split not in SPLITS:
            raise AsenError(f"--split {self.split}: expected one of {', '.join(SPLITS)}")
        if self.images < 1:
            raise AsenError(f"--calibration-images {self.images}: must be at least 1")
        if not Path(self.root).is_dir():
            raise AsenError(f"--calibrate {self.root}: dataset root not found")

    def record(self, pairs: int) -> dict[str, str]:
        """The sidecar fields of an INT8 graph calibrated on this source."""
        return {
            "calibration_root": str(Path(self.root).resolve()),
            "calibration_split": self.split,
            "calibration_images": str(self.images),
            "calibration_pairs": str(pairs),
            "calibration_seed": str(self.seed),
        }


def check_attributes(dataset: SplitDataset, info: ModelInfo, option: str) -> None:
    """The dataset must have the checkpoint's attributes (the same value counts)."""
    counts = [a.values for a in info.attributes]
    if dataset.counts != counts:
        raise AsenError(
            f"{option} {dataset.root}: dataset attributes {dataset.names} {dataset.counts} do "
            f"not match the checkpoint's {info.names} {counts}"
        )


def _labelled(dataset: SplitDataset, split: str) -> list[np.ndarray]:
    """Per attribute, the image ids of the split that carry a label for it."""
    if split == "train":
        labels = dataset.train_labels()
        return [np.flatnonzero(labels[:, a] >= 0) for a in range(len(dataset.attributes))]
    entries = dataset.eval_entries(split)
    rows = np.concatenate([entries.queries, entries.candidates])
    return [np.unique(rows[rows[:, 1] == a, 0]) for a in range(len(dataset.attributes))]


def choose_pairs(dataset: SplitDataset, source: CalibrationSource) -> np.ndarray:
    """int64 [N, 2] (image id, attribute): N distinct images, the attributes taken in turn,
    each image drawn among those labelled for its attribute."""
    files = dataset.files(source.split)
    if len(files) < source.images:
        raise AsenError(
            f"--calibrate {dataset.root}: the {source.split} split has {len(files)} images, "
            f"fewer than --calibration-images {source.images}"
        )
    rng = np.random.default_rng(source.seed)
    pools = [rng.permutation(ids) for ids in _labelled(dataset, source.split)]
    missing = [dataset.names[a] for a, ids in enumerate(pools) if not len(ids)]
    if missing:
        raise AsenError(
            f"--calibrate {dataset.root}: no {source.split} image is labelled for "
            f"{', '.join(missing)} (every attribute must be represented)"
        )
    used: set[int] = set()
    cursor = [0] * len(pools)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < source.images:
        before = len(pairs)
        for a, ids in enumerate(pools):
            while cursor[a] < len(ids) and int(ids[cursor[a]]) in used:
                cursor[a] += 1
            if cursor[a] < len(ids) and len(pairs) < source.images:
                used.add(int(ids[cursor[a]]))
                pairs.append((int(ids[cursor[a]]), a))
        if len(pairs) == before:
            raise AsenError(
                f"--calibrate {dataset.root}: only {len(pairs)} labelled {source.split} images, "
                f"fewer than --calibration-images {source.images}"
            )
    return np.asarray(pairs, dtype=np.int64)


def calibration_set(
    source: CalibrationSource, info: ModelInfo
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """uint8 [N,3,S,S] images and int64 [N] attributes for the quantizer, and the sidecar
    record. An undecodable image is one error naming the file."""
    source.check()
    dataset = open_dataset(source.root)
    check_attributes(dataset, info, "--calibrate")
    pairs = choose_pairs(dataset, source)
    files = dataset.files(source.split)
    images = np.stack([load_image(files[i], info.source_size) for i in pairs[:, 0]])
    return images, pairs[:, 1].copy(), source.record(len(pairs))
