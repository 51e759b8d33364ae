"""`asen data import` (docs/data-import.md): a label table (asen/data/tables.py) and its
images (paths under a root, or URLs through asen/data/fetch.py) become a dataset in the
split format (docs/architecture.md, "Split format") with its `dataset.yaml`.

Everything is checked before anything is written; the dataset is filled in a staging
folder and switched in as one step (asen/atomic.py). Images are hard-linked into the
dataset where the file system allows, else copied. An existing folder is replaced only
when its `dataset.yaml` says `asen data import` wrote it.

An image is its content: references whose bytes are identical (two URLs, or a URL and a
local file) are merged into one image before the split, their labels combined, so the
same picture never lands in two splits.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from asen import AsenError
from asen.atomic import atomic_folder, atomic_write_text, file_sha256
from asen.data.fetch import (
    FetchOptions,
    default_cache,
    fetch_all,
    image_format,
    is_url,
    plain_reason,
)
from asen.data.images import BadImageError
from asen.data.partition import EVAL, SPLITS, Partition, check_fractions, partition
from asen.data.synthetic import write_dataset_yaml, write_lines
from asen.data.tables import LabelTable, read_labels
from asen.output_paths import check_output_folder

IMPORT_MARK = "asen data import"  # dataset.yaml's `written_by`: the folder is asen's own
REPORT_FILE = "import-report.json"
UNDECODABLE = "undecodable image"
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "TIFF": ".tif"}


@dataclass(frozen=True)
class ImportOptions:
    """How to import: the split, the seed, bad images, and the URL downloads."""

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    query_fraction: float = 0.2
    skip_bad_images: bool = False
    cache: Path | None = None  # the download cache (default: fetch.default_cache())
    workers: int = 8  # threads downloading and decoding
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 30.0


@dataclass(frozen=True)
class Skipped:
    """An image left out: its reference, the kind of problem and the details."""

    image: str
    problem: str
    reason: str


@dataclass(frozen=True)
class Source:
    """Where an image's bytes are, the path they get in the dataset and their sha256."""

    path: Path
    name: str
    digest: str


@dataclass(frozen=True)
class Merged:
    """References with identical bytes imported as one image: the one kept and the others."""

    image: str
    references: list[str]


@dataclass
class AttributeReport:
    name: str
    values: list[str]
    images: dict[str, int]  # split -> images labelled with this attribute
    queries: dict[str, int]  # valid, test
    candidates: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)  # problem -> images (or rows)


@dataclass
class ImportReport:
    """What an import wrote and left out; also written to the dataset's REPORT_FILE."""

    out: Path
    images: dict[str, int]
    attributes: list[AttributeReport]
    skipped: list[Skipped]
    merged: list[Merged] = field(default_factory=list)

    @property
    def merged_references(self) -> int:
        """References merged into another one with the same bytes."""
        return sum(len(m.references) for m in self.merged)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "attributes": [asdict(a) for a in self.attributes],
            "skipped": [asdict(s) for s in self.skipped],
            "merged": [asdict(m) for m in self.merged],
        }


def _check_options(options: ImportOptions) -> None:
    if not isinstance(options.seed, int) or options.seed < 0:
        raise AsenError(f"--seed {options.seed}: expected a non-negative integer")
    if options.workers < 1:
        raise AsenError(f"--workers {options.workers}: expected at least 1")
    if options.retries < 0 or options.backoff < 0 or options.timeout <= 0:
        raise AsenError("retries and backoff must be 0 or more, the timeout above 0")
    check_fractions(options.fractions)


def check_destination(out: Path) -> None:
    """Refuse (one line) an output asen may not replace: anything but a missing or empty
    folder or a dataset `asen data import` wrote."""
    check_output_folder(out, "--out")
    if out.is_symlink() or not out.is_dir() or not any(out.iterdir()):
        if out.is_symlink():
            raise AsenError(f"--out {out}: is a symbolic link; give the folder itself")
        return
    try:
        meta = yaml.safe_load((out / "dataset.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        meta = None
    if not isinstance(meta, dict) or meta.get("written_by") != IMPORT_MARK:
        raise AsenError(
            f"--out {out}: exists and was not written by {IMPORT_MARK}; "
            "move it away or choose another folder"
        )


def _local_name(ref: str, where: str, root: Path | None) -> str:
    """The dataset path of a local image: `images/<path under ROOT>`; refuses one outside."""
    if root is None:
        raise AsenError(f"{where}: image {ref!r} is a path; give --images ROOT, its folder")
    norm = os.path.normpath(ref)
    if os.path.isabs(ref) or norm == ".." or norm.startswith(".." + os.sep):
        raise AsenError(f"{where}: image {ref!r} leaves --images {root} (absolute or ../)")
    return Path("images", norm).as_posix()


def _check_local(path: Path) -> tuple[str, str]:
    """(why the image cannot be used, without its path, or '' when it decodes; the sha256 of
    its bytes, '' when it does not decode)."""
    try:
        image_format(path)
    except BadImageError as e:
        return plain_reason(str(e).removeprefix(f"{path}: ")), ""
    return "", file_sha256(path)


def _local_sources(
    table: LabelTable,
    refs: list[str],
    root: Path | None,
    options: ImportOptions,
    progress: Callable[[int, int], object] | None,
) -> tuple[dict[str, Source], list[Skipped]]:
    """Local images: inside ROOT, present, decodable (or skipped with skip_bad_images)."""
    names = {ref: _local_name(ref, table.rows[ref], root) for ref in refs}
    missing = [ref for ref in refs if not (root / ref).is_file()]
    if missing:
        first = missing[0]
        more = f" ({len(missing)} images missing in all)" if len(missing) > 1 else ""
        raise AsenError(
            f"{table.rows[first]}: unknown image {first!r}: no such file under {root}{more}"
        )
    problems, sources = {}, {}
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        paths = [root / r for r in refs]
        for ref, (problem, digest) in zip(refs, pool.map(_check_local, paths), strict=True):
            problems[ref] = problem
            if not problem:
                sources[ref] = Source(root / ref, names[ref], digest)
            if progress is not None:
                progress(len(problems), len(refs))
    bad = [ref for ref in refs if problems[ref]]
    if bad and not options.skip_bad_images:
        more = f" ({len(bad)} undecodable in all)" if len(bad) > 1 else ""
        first = bad[0]
        raise AsenError(
            f"{table.rows[first]}: image {first!r}: {problems[first]}{more}; "
            "--skip-bad-images leaves them out"
        )
    skipped = [Skipped(ref, UNDECODABLE, problems[ref]) for ref in bad]
    return sources, skipped


def _url_sources(
    refs: list[str], options: ImportOptions, progress: Callable[[int, int], object] | None
) -> tuple[dict[str, Source], list[Skipped]]:
    """URL images through the download cache; dead links and non-images are skipped."""
    fetch = FetchOptions(
        options.cache or default_cache(),
        workers=options.workers,
        retries=options.retries,
        backoff=options.backoff,
        timeout=options.timeout,
    )
    try:
        fetched = fetch_all(refs, fetch, progress)
    except OSError as e:
        raise AsenError(
            f"{e.filename or fetch.cache}: cannot write the download cache ({e.strerror or e})"
        ) from None
    sources, skipped = {}, []
    for ref in refs:
        got = fetched[ref]
        if got.problem:
            skipped.append(Skipped(ref, got.problem, got.reason))
            continue
        extension = EXTENSIONS.get(got.image_format, f".{got.image_format.lower()}")
        # the cache names a blob by the sha256 of its bytes
        sources[ref] = Source(got.blob, f"downloads/{got.blob.name}{extension}", got.blob.name)
    return sources, skipped


def _sources(
    table: LabelTable,
    root: Path | None,
    options: ImportOptions,
    progress: Callable[[int, int], object] | None,
) -> tuple[dict[str, Source], list[Skipped]]:
    refs = sorted(table.labels)
    paths = [r for r in refs if not is_url(r)]
    local, local_skipped = _local_sources(table, paths, root, options, progress)
    urls = [r for r in refs if is_url(r)]
    web, web_skipped = _url_sources(urls, options, progress) if urls else ({}, [])
    skipped = sorted(local_skipped + web_skipped, key=lambda s: s.image)
    if not local and not web:
        first = skipped[0]
        raise AsenError(
            f"{table.source}: no usable image ({len(skipped)} left out; first: "
            f"{first.image}: {first.problem}, {first.reason})"
        )
    return {**local, **web}, skipped


def _conflict(table: LabelTable, *, attribute: int, first: str, second: str) -> AsenError:
    """Two references to the same bytes with two values for one attribute, as one line."""
    names = table.value_names[attribute]
    old, new = (names[table.labels[ref][attribute]] for ref in (first, second))
    return AsenError(
        f"{table.rows[second]}: image {second!r} has the same bytes as {first!r} "
        f"({table.rows[first]}): the same image has two values for "
        f"{table.attributes[attribute]!r}: {old!r} and {new!r}"
    )


def _merge_identical(
    table: LabelTable, sources: dict[str, Source]
) -> tuple[dict[str, dict[int, int]], list[Merged]]:
    """One image per content: references whose bytes are identical become one image (the
    first local path in sorted order, else the first URL) with their labels combined; two
    values for one attribute among them is an error naming both references."""
    groups = defaultdict(list)
    for ref in sorted(sources):
        groups[sources[ref].digest].append(ref)
    labels, merged = {}, []
    for refs in groups.values():
        image = min(refs, key=lambda ref: (is_url(ref), ref))
        others = [ref for ref in refs if ref != image]
        origin = dict.fromkeys(table.labels[image], image)  # attribute -> reference
        for ref in others:
            for attribute, value in table.labels[ref].items():
                first = origin.setdefault(attribute, ref)
                if table.labels[first][attribute] != value:
                    raise _conflict(table, attribute=attribute, first=first, second=ref)
        labels[image] = {a: table.labels[ref][a] for a, ref in sorted(origin.items())}
        if others:
            merged.append(Merged(image, others))
    return labels, sorted(merged, key=lambda m: m.image)


def _place(source: Path, target: Path) -> None:
    """Hard-link the image into the dataset where the file system allows, else copy it."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: atomic_folder syncs the copy
        shutil.copyfile(source, target)


def _write_split(
    tmp: Path, split: str, *, part: Partition, labels: dict, sources: dict[str, Source]
) -> None:
    """One split's files: filenames (sorted by dataset path) and labels or queries."""
    members = sorted(part.members(split), key=lambda image: (sources[image].name, image))
    ids = {image: n for n, image in enumerate(members)}
    for image in members:
        _place(sources[image].path, tmp / sources[image].name)
    write_lines(tmp / f"filenames_{split}.txt", [sources[image].name for image in members])
    if split == "train":
        rows = [" ".join(f"{a} {v}" for a, v in sorted(labels[i].items())) for i in members]
        write_lines(tmp / "label_train.txt", [f"{n} {row}" for n, row in enumerate(rows)])
        return
    for kind, entries in (("query", part.queries[split]), ("candidate", part.candidates[split])):
        rows = sorted((ids[image], a, v) for image, a, v in entries)
        write_lines(tmp / f"{kind}_{split}.txt", [f"{n} {a} {v}" for n, a, v in rows])


def _meta(table: LabelTable, kind: str, options: ImportOptions) -> dict:
    """dataset.yaml: the attributes with their value names, and how the import ran."""
    return {
        "name": table.source.stem,
        "written_by": IMPORT_MARK,
        "labels": {"file": table.source.name, "format": kind, "sha256": file_sha256(table.source)},
        "seed": options.seed,
        "split": list(options.fractions),
        "query_fraction": options.query_fraction,
        "attributes": [
            {"name": name, "values": len(values), "value_names": values}
            for name, values in zip(table.attributes, table.value_names, strict=True)
        ],
    }


def _report(
    out: Path, table: LabelTable, *, labels: dict, part: Partition, skipped: list[Skipped]
) -> ImportReport:
    """Per attribute: images per split, queries, candidates and what was left out."""
    rows = []
    for a, (name, values) in enumerate(zip(table.attributes, table.value_names, strict=True)):
        images = {s: sum(a in labels[i] for i in part.members(s)) for s in SPLITS}
        queries = {s: sum(e[1] == a for e in part.queries[s]) for s in EVAL}
        candidates = {s: sum(e[1] == a for e in part.candidates[s]) for s in EVAL}
        left = Counter(table.left_out[a])
        left.update(s.problem for s in skipped if a in table.labels[s.image])
        rows.append(AttributeReport(name, values, images, queries, candidates, dict(left)))
    images = {s: len(part.members(s)) for s in SPLITS}
    return ImportReport(out, images, rows, skipped)


def import_dataset(
    labels: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    kind: str = "table",
    options: ImportOptions | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> ImportReport:
    """Import LABELS (with images under `images` or at URLs) into the dataset `out`;
    `progress(done, total)` is called after each local image is decoded, then after each
    URL is fetched. Returns the report (also in REPORT_FILE)."""
    options, out = options or ImportOptions(), Path(out)
    _check_options(options)
    check_destination(out)
    table = read_labels(labels, kind)
    root = Path(images) if images is not None else None
    if root is not None and not root.is_dir():
        raise AsenError(f"--images {root}: not a folder")
    sources, skipped = _sources(table, root, options, progress)
    kept, merged = _merge_identical(table, sources)
    part = partition(
        kept,
        fractions=options.fractions,
        seed=options.seed,
        query_fraction=options.query_fraction,
        value_counts=[len(v) for v in table.value_names],
        describe=lambda a, v: (
            f"{table.source}: attribute {table.attributes[a]!r} value {table.value_names[a][v]!r}"
        ),
    )
    report = _report(out, table, labels=kept, part=part, skipped=skipped)
    report.merged = merged
    try:
        with atomic_folder(out) as tmp:
            for split in SPLITS:
                _write_split(tmp, split, part=part, labels=kept, sources=sources)
            write_dataset_yaml(tmp, _meta(table, kind, options))
            atomic_write_text(tmp / REPORT_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
    except OSError as e:
        raise AsenError(f"{e.filename or out}: cannot write ({e.strerror or e})") from None
    return report
