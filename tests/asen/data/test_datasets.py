"""Triplet sampling and the image Datasets decoded in DataLoader workers."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from asen import AsenError
from asen.data.cache import DecodedImages
from asen.data.datasets import EntryImages, TripletImages, TripletSampler, batches, make_loader
from asen.data.images import BadImageError, load_image

S = 16


def random_labels(n=300, counts=(3, 5, 2, 7), hole=0.3, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, c, n) for c in counts], axis=1)
    labels[rng.random(labels.shape) < hole] = -1
    return labels


def check_triplets(labels: np.ndarray, t: np.ndarray) -> None:
    a, anc, pos, neg = t.T
    va, vp, vn = labels[anc, a], labels[pos, a], labels[neg, a]
    assert (va >= 0).all() and (vn >= 0).all()  # never an unlabelled image
    assert (va == vp).all()
    assert (vn != va).all()
    assert (anc != pos).all()


# ------------------------------------------------------------------ sampler


def test_sampler_never_pairs_equal_values():
    labels = random_labels()
    t = TripletSampler(labels, seed=1).epoch(0, 3000)
    assert t.shape == (3000, 4) and t.dtype == np.int64
    assert ((t[:, 1:] >= 0) & (t[:, 1:] < len(labels))).all()
    check_triplets(labels, t)


def test_sampler_sparse_labels_and_rare_values():
    # most images unlabelled, some values with a single image (usable only as negatives)
    labels = np.full((60, 2), -1)
    labels[:5, 0] = [0, 0, 1, 2, 2]
    labels[10:14, 1] = [3, 3, 0, 5]
    t = TripletSampler(labels, seed=0).epoch(2, 2000)
    check_triplets(labels, t)
    # value 1 of attribute 0 has one image: it is a negative, never an anchor
    anchors0 = t[t[:, 0] == 0, 1]
    assert set(labels[anchors0, 0].tolist()) <= {0, 2}
    negs0 = t[t[:, 0] == 0, 3]
    assert 1 in set(labels[negs0, 0].tolist())


def test_attributes_chosen_uniformly():
    labels = random_labels(n=400, counts=(2, 9, 4, 30))  # very different value counts
    t = TripletSampler(labels, seed=3).epoch(0, 4000)
    counts = np.bincount(t[:, 0], minlength=4)
    # 1000 expected each, binomial std ~27: 150 is > 5 std
    assert (np.abs(counts - 1000) < 150).all(), counts


def test_epoch_deterministic_per_seed_and_epoch():
    labels = random_labels()
    s = TripletSampler(labels, seed=5)
    a = s.epoch(3, 500)
    np.testing.assert_array_equal(a, s.epoch(3, 500))
    np.testing.assert_array_equal(a, TripletSampler(labels.copy(), seed=5).epoch(3, 500))
    assert not np.array_equal(a, s.epoch(4, 500))
    assert not np.array_equal(a, TripletSampler(labels, seed=6).epoch(3, 500))
    assert not np.array_equal(a, s.epoch(3, 500, rank=1))


def test_single_value_attribute_never_sampled():
    labels = random_labels(n=200, counts=(4, 3, 5))
    labels[:, 1] = np.where(labels[:, 1] >= 0, 2, -1)  # attribute 1: one value only
    t = TripletSampler(labels, seed=0).epoch(0, 2000)
    assert 1 not in set(t[:, 0].tolist())
    assert {0, 2} == set(t[:, 0].tolist())
    check_triplets(labels, t)


def test_unlabelled_and_singleton_attributes_never_sampled():
    labels = random_labels(n=100, counts=(3, 3, 3))
    labels[:, 1] = -1  # attribute 1: nothing labelled
    labels[:, 2] = -1
    labels[[0, 1], 2] = [0, 1]  # attribute 2: two values, one image each: no positive pair
    t = TripletSampler(labels, seed=0).epoch(0, 500)
    assert set(t[:, 0].tolist()) == {0}


def test_no_usable_attribute_is_an_error():
    labels = np.array([[0, -1], [0, -1], [-1, 1]])
    with pytest.raises(AsenError, match="triplets"):
        TripletSampler(labels)


# ------------------------------------------------------------------ image datasets


def test_entry_images_ok(files):
    ds = EntryImages(files, np.array([0, 3, 1]), np.array([1, 0, 2]), S, skip_bad=False)
    assert len(ds) == 3
    img, attr, idx, ok = ds[1]
    assert ok is True and attr == 0 and idx == 1
    assert img.dtype == torch.uint8 and img.shape == (3, S, S)
    np.testing.assert_array_equal(img.numpy(), load_image(files[3], S))


def test_entry_images_skip_bad_marks_not_ok(files):
    ids = np.array([0, 2, 1, 2, 3])
    ds = EntryImages(files, ids, np.zeros(5, dtype=np.int64), S, skip_bad=True)
    seen_ok, seen_idx = [], []
    for img, _attr, idx, ok in batches(make_loader(ds, batch_size=2, workers=0)):
        seen_ok += ok.tolist()
        seen_idx += idx.tolist()
        assert img.shape[1:] == (3, S, S)
    assert seen_idx == [0, 1, 2, 3, 4]
    assert seen_ok == [True, False, True, False, True]
    assert sum(not o for o in seen_ok) == 2  # counted, not silently dropped


def test_triplet_images(files):
    triplets = np.array([[1, 0, 1, 3], [0, 0, 2, 3], [2, 3, 1, 0]])
    ds = TripletImages(DecodedImages(files, S, budget_mb=0), triplets, skip_bad=True)
    images, attr, ok = ds[0]
    assert images.shape == (3, 3, S, S) and images.dtype == torch.uint8
    assert attr == 1 and ok is True
    for j, fid in enumerate(triplets[0, 1:]):
        np.testing.assert_array_equal(images[j].numpy(), load_image(files[fid], S))
    oks = []
    for _images, _attrs, ok in batches(make_loader(ds, batch_size=3, workers=0)):
        oks += ok.tolist()
    assert oks == [True, False, True]


@pytest.fixture
def fast_worker_shutdown(monkeypatch):
    """A loader iterator left by an exception is freed by the garbage collector, and its
    worker then takes DataLoader's full status interval (5 s) to be joined; shorten it."""
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    yield
    gc.collect()


@pytest.mark.usefixtures("fast_worker_shutdown")
@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_error_is_one_line_naming_file(files, workers):
    ds = EntryImages(files, np.array([0, 1, 2, 3]), np.zeros(4, dtype=np.int64), S, skip_bad=False)
    with pytest.raises(BadImageError) as e:
        for _ in batches(make_loader(ds, batch_size=2, workers=workers)):
            pass
    msg = str(e.value)
    assert str(files[2]) in msg
    assert "\n" not in msg.strip()
    assert "Traceback" not in msg and "worker" not in msg.lower()
    if workers:  # without batches() the worker's error arrives wrapped in its traceback
        with pytest.raises(BadImageError) as raw:
            list(make_loader(ds, batch_size=2, workers=workers))
        assert "Traceback" in str(raw.value)


@pytest.mark.usefixtures("fast_worker_shutdown")
def test_triplet_bad_image_raises_through_worker(files):
    triplets = np.array([[0, 0, 1, 3], [0, 3, 0, 2]])
    ds = TripletImages(DecodedImages(files, S, budget_mb=1), triplets, skip_bad=False)
    with pytest.raises(BadImageError) as e:
        list(batches(make_loader(ds, batch_size=1, workers=1)))
    msg = str(e.value)
    assert str(files[2]) in msg and "\n" not in msg.strip()
