"""Triplet sampling and the torch Datasets that decode images in DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from asen import AsenError
from asen.data.cache import DecodedImages
from asen.data.images import BadImageError, load_image
from asen.signals import held_stop_signals, ignore_stop_signals


def _pools(values: np.ndarray) -> list[np.ndarray]:
    """The ascending image ids of each value present in `values` (-1: unlabelled), by
    ascending value: memory and time in the number of images, whatever the values are."""
    labelled = np.flatnonzero(values >= 0)
    order = labelled[np.argsort(values[labelled], kind="stable")]
    _, starts = np.unique(values[order], return_index=True)
    return np.split(order, starts[1:]) if len(order) else []


class TripletSampler:
    """The reference's triplet sampling: an attribute uniformly, two distinct values of it,
    anchor and positive (distinct images) from the first, negative from the second.

    An epoch's triplets depend only on (seed, epoch, rank), so a resumed run draws exactly
    the triplets the interrupted one would have."""

    def __init__(self, labels: np.ndarray, seed: int = 0):
        self.seed = seed
        # per attribute: the image ids of each value that has images, by ascending value
        self.pools: list[list[np.ndarray]] = [_pools(labels[:, a]) for a in range(labels.shape[1])]
        self.usable = [
            a
            for a, pool in enumerate(self.pools)
            if sum(len(p) >= 2 for p in pool) >= 1 and sum(len(p) >= 1 for p in pool) >= 2
        ]
        if not self.usable:
            raise AsenError("no attribute has two values with images: cannot sample triplets")

    def epoch(self, epoch: int, count: int, rank: int = 0) -> np.ndarray:
        """int64 [count, 4]: (attribute, anchor, positive, negative) image ids."""
        rng = np.random.default_rng([self.seed, epoch, rank])
        out = np.empty((count, 4), dtype=np.int64)
        for i in range(count):
            a = self.usable[rng.integers(len(self.usable))]
            pool = self.pools[a]
            pos_values = [v for v, p in enumerate(pool) if len(p) >= 2]
            v1 = pos_values[rng.integers(len(pos_values))]
            neg_values = [v for v, p in enumerate(pool) if len(p) >= 1 and v != v1]
            v2 = neg_values[rng.integers(len(neg_values))]
            anchor, positive = rng.choice(pool[v1], size=2, replace=False)
            out[i] = (a, anchor, positive, pool[v2][rng.integers(len(pool[v2]))])
        return out


class TripletImages(Dataset):
    """Item i: uint8 [3, 3, S, S] (anchor, positive, negative), the attribute, and ok."""

    def __init__(self, images: DecodedImages, triplets: np.ndarray, skip_bad: bool):
        self.images, self.triplets, self.skip_bad = images, triplets, skip_bad

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int):
        attr, *ids = self.triplets[i]
        try:
            images = np.stack([self.images.load(j) for j in ids])
        except BadImageError:
            if not self.skip_bad:
                raise
            size = self.images.size
            return torch.zeros(3, 3, size, size, dtype=torch.uint8), int(attr), False
        return torch.from_numpy(images), int(attr), True


class EntryImages(Dataset):
    """Item i: the uint8 [3, S, S] image of entry i, its attribute, its index, and ok."""

    def __init__(
        self,
        files: list[Path],
        image_ids: np.ndarray,
        attributes: np.ndarray,
        size: int,
        skip_bad: bool,
    ):
        self.files, self.image_ids, self.attributes = files, image_ids, attributes
        self.size, self.skip_bad = size, skip_bad

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int):
        try:
            image = load_image(self.files[self.image_ids[i]], self.size)
        except BadImageError:
            if not self.skip_bad:
                raise
            return (
                torch.zeros(3, self.size, self.size, dtype=torch.uint8),
                int(self.attributes[i]),
                i,
                False,
            )
        return torch.from_numpy(image), int(self.attributes[i]), i, True


def make_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    """An ordered loader that decodes in `workers` processes. The workers ignore SIGTERM,
    SIGINT and SIGHUP (a signal to the process group reaches them too): the main process
    decides, and `batches` stops them."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        worker_init_fn=ignore_stop_signals if workers else None,
    )


def batches(loader: DataLoader):
    """Iterate a loader; an error raised in a worker comes back as its own one-line message.
    The workers start with the stop signals held (asen/signals.py), and when the iteration
    ends, however it ends (the last batch, a stop, an error, `close()`), they are stopped
    and joined here before the caller goes on."""
    iterator = None
    try:
        with held_stop_signals():  # a signal held here is raised as the block ends
            iterator = iter(loader)
        yield from iterator
    except BadImageError as e:
        last = str(e).strip().splitlines()[-1]
        raise BadImageError(last.split("BadImageError: ", 1)[-1]) from None
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's own orderly stop
        if shutdown is not None:
            shutdown()
