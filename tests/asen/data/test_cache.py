"""DecodedImages: each training image is decoded once a run, in whichever DataLoader
worker meets it first, and read back by every later epoch's workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from asen.data.cache import DecodedImages
from asen.data.datasets import TripletImages, batches, make_loader
from asen.data.images import BadImageError, load_image

S = 16


def _repaint(paths) -> None:
    """Give the files new pixels: a read that decodes sees them, a cached one does not."""
    for p in paths:
        Image.new("RGB", (30, 30), (0, 255, 0)).save(p)


def test_an_image_is_decoded_once(files) -> None:  # files: conftest.py
    cache = DecodedImages(files, S, budget_mb=1)
    original = load_image(files[3], S)
    first = cache.load(3)
    np.testing.assert_array_equal(first, original)
    first[:] = 0  # the caller's copy, not the cache's
    _repaint([files[3]])
    assert not (load_image(files[3], S) == original).all()  # the file did change
    np.testing.assert_array_equal(cache.load(3), original)  # the cache did not
    assert cache.cached == 1


def test_workers_fill_one_cache_that_later_epochs_read(files) -> None:
    cache = DecodedImages(files, S, budget_mb=1)
    triplets = np.array([[0, 0, 1, 3], [1, 3, 1, 0], [0, 1, 0, 3]])
    epochs = []
    for _ in range(2):  # a new loader an epoch, as training makes: new worker processes
        ds = TripletImages(cache, triplets, skip_bad=False)
        epochs.append([b[0] for b in batches(make_loader(ds, batch_size=2, workers=2))])
        assert cache.cached == 3  # the workers' decodes are seen here: ids 0, 1, 3
        _repaint(files[:2] + files[3:])  # the second epoch decodes nothing
    for a, b in zip(*epochs, strict=True):
        assert a.shape[1:] == (3, 3, S, S)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(epochs[1][0][0, 0].numpy(), cache.load(0))


def test_ids_past_the_budget_are_decoded_every_time(files) -> None:
    big = 512  # one image is 768 KiB: a 1 MiB budget has one slot
    cache = DecodedImages(files, big, budget_mb=1)
    assert cache.slots == 1
    cache.load(0), cache.load(1)
    _repaint(files[:2])
    assert cache.load(0)[1].min() < 255  # kept: the old colour
    assert (cache.load(1)[1] == 255).all()  # decoded again: the new green
    assert DecodedImages(files, S, budget_mb=0).slots == 0


def test_a_bad_image_is_never_kept(files) -> None:
    cache = DecodedImages(files, S, budget_mb=1)
    for _ in range(2):
        with pytest.raises(BadImageError, match="im2.png"):
            cache.load(2)
    assert cache.cached == 0


def test_a_pickled_cache_decodes_and_leaves_the_original(files) -> None:
    """What a spawned worker gets: no shared mapping, so it decodes every image."""
    cache = DecodedImages(files, S, budget_mb=1)
    cache.load(0)
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.slots == 0 and copy.cached == 0
    np.testing.assert_array_equal(copy.load(1), load_image(files[1], S))
    assert cache.cached == 1 and cache.slots == len(files)
