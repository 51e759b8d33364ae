"""Label values and attribute numbers that would size arrays by their magnitude: one line
naming the file and line, at once, instead of gigabytes; attribute numbers parsed as ASCII
digits only. The triplet sampler's memory follows the images, not the values."""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest

from asen import AsenError
from asen.data.datasets import TripletSampler
from asen.data.splits import SplitError, open_dataset
from tests.asen.data.test_splits import make_root


@pytest.mark.parametrize(
    "labels",
    ["0 0 2000000000\n1 0 1\n", "0 2000000000 1\n1 0 1\n", "0 0 1 1999 1\n1 0 1\n"],
)
def test_huge_label_values_without_dataset_yaml_are_one_line(tmp_path, labels: str) -> None:
    root = make_root(tmp_path, labels=labels, meta=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.monotonic()
    with pytest.raises(SplitError) as info:
        open_dataset(root).train_labels()
    assert time.monotonic() - began < 2
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"grew {grown_mb:.0f} MB"
    message = str(info.value)
    assert message.startswith(f"{root / 'label_train.txt'}:1: ") and "out of range" in message


def test_huge_label_values_with_dataset_yaml_are_one_line(tmp_path) -> None:
    root = make_root(tmp_path, labels="0 0 2000000000\n")
    with pytest.raises(SplitError, match=r"label_train.txt:1: value 2000000000 out of range"):
        open_dataset(root).train_labels()


@pytest.mark.parametrize("name", ["²", "³", "1²", "٣", "9" * 5000])
def test_attribute_numbers_are_ascii_digits(tmp_path, name: str) -> None:
    dataset = open_dataset(make_root(tmp_path))
    assert dataset.attribute_index("1") == 1
    with pytest.raises(AsenError, match="unknown attribute") as info:
        dataset.attribute_index(name)
    assert len(str(info.value)) < 300


def test_sampler_memory_follows_the_images_not_the_values() -> None:
    labels = np.full((1000, 2), -1, dtype=np.int64)
    labels[:500, 0], labels[500:, 0] = 0, 99_999  # two values, far apart
    labels[::2, 1], labels[1::2, 1] = 3, 7
    began = time.monotonic()
    sampler = TripletSampler(labels, seed=1)
    triplets = sampler.epoch(0, 2000)
    assert time.monotonic() - began < 2
    assert [len(p) for p in sampler.pools[0]] == [500, 500]
    a, anchor, positive, negative = triplets.T
    assert (labels[anchor, a] == labels[positive, a]).all()
    assert (labels[anchor, a] != labels[negative, a]).all() and (anchor != positive).all()
