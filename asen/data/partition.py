"""Dividing imported images into train, valid and test, and valid and test into queries
and candidates per attribute (docs/data-import.md, "Splitting").

The split is by image, so no image is in two splits, and everything follows from the seed:
one permutation of the images (sorted by reference first) orders every choice. Each value
keeps at least MIN_EVAL images in valid and in test, a query and a relevant candidate,
moving images from train when the fractions left too few; a value with too few images
to do so (and keep one to train) is named.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from asen import AsenError

SPLITS = ("train", "valid", "test")
EVAL = ("valid", "test")
MIN_EVAL = 2  # images of each value in valid and in test: one query, one relevant candidate
Labels = dict[str, dict[int, int]]  # image -> attribute index -> value index


@dataclass
class Partition:
    """Which split each image is in and, for valid and test, the query and candidate
    entries as (image, attribute, value), all in the seeded order."""

    split_of: dict[str, str]
    order: list[str]
    queries: dict[str, list[tuple[str, int, int]]]
    candidates: dict[str, list[tuple[str, int, int]]]

    def members(self, split: str) -> list[str]:
        return [image for image in self.order if self.split_of[image] == split]


def check_fractions(fractions: tuple[float, ...], shown: str = "") -> tuple[float, float, float]:
    """Three fractions above 0 for train, valid, test that sum to 1, else one line."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise AsenError(
            f"--split {shown or ','.join(map(str, fractions))}: expected three fractions above "
            "0 for train, valid, test that sum to 1, e.g. 0.8,0.1,0.1"
        )
    return tuple(fractions)  # type: ignore[return-value]


def parse_fractions(text: str) -> tuple[float, float, float]:
    """`0.8,0.1,0.1` -> fractions of train, valid, test."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    return check_fractions(parts, text)


def _first_assignment(
    labels: Labels, fractions: tuple[float, float, float], seed: int
) -> tuple[list[str], dict[str, str]]:
    """The seeded order of the images and the split of each by the fractions."""
    images = sorted(labels)
    order = [images[i] for i in np.random.default_rng(seed).permutation(len(images))]
    n_valid = round(fractions[1] * len(order))
    n_test = round(fractions[2] * len(order))
    split_of = {}
    for rank, image in enumerate(order):
        split_of[image] = (
            "valid" if rank < n_valid else "test" if rank < n_valid + n_test else "train"
        )
    return order, split_of


def _top_up(
    order: list[str],
    labels: Labels,
    split_of: dict[str, str],
    *,
    value_counts: list[int],
    describe: Callable[[int, int], str],
) -> None:
    """Move train images into valid and test until each value has MIN_EVAL there."""
    count = Counter((split_of[i], a, v) for i in order for a, v in labels[i].items())
    in_train = defaultdict(list)
    for image in order:
        if split_of[image] == "train":
            for pair in labels[image].items():
                in_train[pair].append(image)
    pairs = [(a, v) for a, n in enumerate(value_counts) for v in range(n)]
    for split in EVAL:
        for pair in pairs:
            movable = (i for i in in_train[pair] if split_of[i] == "train")
            while count[(split, *pair)] < MIN_EVAL:
                image = next(movable, None) if count[("train", *pair)] > 1 else None
                if image is None:
                    total = sum(count[(s, *pair)] for s in SPLITS)
                    raise AsenError(
                        f"{describe(*pair)} has {total} images; every value needs at least "
                        f"{2 * MIN_EVAL + 1} (a query and a relevant candidate in valid and "
                        "in test, and one to train)"
                    )
                for a, v in labels[image].items():
                    count[("train", a, v)] -= 1
                    count[(split, a, v)] += 1
                split_of[image] = split


def _divide(
    members: list[str], labels: Labels, query_fraction: float
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """Queries and candidates of one split: per attribute and value, the first share of
    its images (in the seeded order) are queries, at least one, leaving one candidate."""
    groups = defaultdict(list)
    for image in members:
        for a, v in labels[image].items():
            groups[(a, v)].append(image)
    queries, candidates = [], []
    for (a, v), images in sorted(groups.items()):
        n_queries = min(len(images) - 1, max(1, round(query_fraction * len(images))))
        queries += [(i, a, v) for i in images[:n_queries]]
        candidates += [(i, a, v) for i in images[n_queries:]]
    return queries, candidates


def partition(
    labels: Labels,
    *,
    fractions: tuple[float, float, float],
    seed: int,
    query_fraction: float,
    value_counts: list[int],
    describe: Callable[[int, int], str],
) -> Partition:
    """Split the labelled images (`value_counts`: values of each attribute, each needs
    images); `describe(attribute, value)` names a value in errors."""
    check_fractions(fractions)
    if not 0 < query_fraction < 1:
        raise AsenError(f"--query-fraction {query_fraction}: expected a fraction above 0, below 1")
    order, split_of = _first_assignment(labels, fractions, seed)
    _top_up(order, labels, split_of, value_counts=value_counts, describe=describe)
    result = Partition(split_of, order, {}, {})
    for split in EVAL:
        result.queries[split], result.candidates[split] = _divide(
            result.members(split), labels, query_fraction
        )
    return result
