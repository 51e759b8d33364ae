"""Decoded training images kept for the whole run, shared by the DataLoader workers.

Each epoch forks new DataLoader workers, and every triplet decodes its three images
afresh: at the `small` sizes decoding takes a third of the CPU the step could have. The
cache is one anonymous shared memory mapping made before the first epoch's workers fork:
whichever process decodes an image first stores it there, and every later epoch, in any
worker, copies it out. It holds images at the model's input size (uint8 [3, S, S]), the
first `budget_mb` MiB worth of image ids; the ids past that are decoded every time.
Pages are only touched as images arrive, so a large budget costs nothing until it fills.

Workers started by fork (Linux's default) share the mapping; one started by spawn or
forkserver receives a cache that is switched off (the mapping cannot cross a pickle).
"""

from __future__ import annotations

import mmap
import multiprocessing
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from asen.data.images import load_image


class DecodedImages:
    """`load(i)`: the uint8 [3, size, size] image of file i, decoded once per run."""

    def __init__(self, files: Sequence[Path], size: int, budget_mb: int):
        self.files, self.size = files, size
        slot = 3 * size * size
        self.slots = min(len(files), budget_mb * 2**20 // slot)
        self._lock = multiprocessing.Lock()  # orders an image's bytes before its flag
        if self.slots:
            pixels = self.slots * slot
            self._buffer = mmap.mmap(-1, pixels + self.slots)
            shape = (self.slots, 3, size, size)
            self._images = np.frombuffer(self._buffer, np.uint8, pixels).reshape(shape)
            self._filled = np.frombuffer(self._buffer, np.uint8, self.slots, offset=pixels)

    def __getstate__(self) -> dict:
        """A pickled copy (a spawned worker) decodes every image: the mapping stays here."""
        skip = ("_images", "_filled", "_buffer", "_lock")
        return {k: v for k, v in self.__dict__.items() if k not in skip} | {"slots": 0}

    @property
    def cached(self) -> int:
        """How many images the cache holds now."""
        return int(self._filled.sum()) if self.slots else 0

    def load(self, i: int) -> np.ndarray:
        """Image i from the cache, else decoded (and kept when its id has a slot). A file
        that fails to decode raises BadImageError each time and is never kept."""
        if i >= self.slots:
            return load_image(self.files[i], self.size)
        with self._lock:
            hit = bool(self._filled[i])
        if hit:
            return self._images[i].copy()
        image = load_image(self.files[i], self.size)
        self._images[i] = image
        with self._lock:
            self._filled[i] = 1
        return image
