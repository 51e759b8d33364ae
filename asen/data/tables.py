"""Label tables for `asen data import` (docs/data-import.md): a CSV, Parquet or JSON Lines
file read with pyarrow, in long form (`image, attribute, value`), wide form (`image` and one
column per attribute, an empty cell is unlabelled) or the FashionAI attribute release
(`Annotations/label.csv`: `Images/<task>/<file>.jpg,<task>,<n/y/m string>`, no header).

Values are kept as names and numbered in sorted order (numerically when every name of the
attribute is an integer), so the same table always gives the same numbers. Every error is
one `AsenError` line naming the file and the line (CSV) or row (Parquet, JSON Lines).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.json as pj
import pyarrow.parquet as pq

from asen import AsenError
from asen.config import AttributeSpec, check_attributes

IMAGE, ATTRIBUTE, VALUE = "image", "attribute", "value"
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "json",
                  ".ndjson": "json", ".json": "json"}  # fmt: skip
FASHIONAI_COLUMNS = ["image", "attribute", "label"]
NOT_ONE_Y = "not exactly one y"  # a FashionAI label left out


@dataclass
class LabelTable:
    """The labels of a table: per image reference, attribute index -> value index."""

    source: Path
    attributes: list[str]
    value_names: list[list[str]]
    labels: dict[str, dict[int, int]]
    rows: dict[str, str] = field(default_factory=dict)  # image -> where it first appears
    left_out: list[Counter] = field(default_factory=list)  # per attribute: reason -> rows

    def specs(self) -> list[AttributeSpec]:
        return [
            AttributeSpec(a, len(v)) for a, v in zip(self.attributes, self.value_names, strict=True)
        ]


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_table(
    path: Path,
    *,
    text_columns: list[str],
    header: list[str] | None = None,
    what: str = "labels file",
) -> pa.Table:
    """A CSV, Parquet or JSON Lines file, by its suffix. In a CSV the `text_columns` stay
    text (ids such as `00123` keep their zeros), an empty cell is null, and the first line
    names the columns unless `header` does. `what` names the file in errors."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise AsenError(f"{path}: unknown table type; expected .csv, .parquet or .jsonl")
    if not path.is_file():
        raise AsenError(f"{path}: {what} not found")
    try:
        if kind == "parquet":
            return pq.read_table(path)
        if kind == "json":
            return pj.read_json(path)
        convert = pv.ConvertOptions(
            strings_can_be_null=True, column_types={c: pa.string() for c in text_columns}
        )
        return pv.read_csv(path, pv.ReadOptions(column_names=header), convert_options=convert)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise AsenError(f"{path}: cannot read the table ({_first_line(e)})") from None


def _where(path: Path, row: int, header: bool = True) -> str:
    """Where a row (from 0) is: the line of a CSV file, else the row number from 1."""
    if path.suffix.lower() == ".csv":
        return f"{path}:{row + 1 + header}"
    return f"{path}: row {row + 1}"


def _texts(table: pa.Table, name: str, path: Path) -> list[str | None]:
    """A column as stripped text, None for a null or empty cell."""
    if name not in table.column_names:
        have = ", ".join(table.column_names)
        hint = ""
        if table.column_names and table.column_names[0].startswith("Images/"):
            hint = "; a FashionAI label.csv needs --format fashionai"
        raise AsenError(f"{path}: missing column {name!r} (the table has: {have}){hint}")
    try:
        cells = table.column(name).cast(pa.string()).to_pylist()
    except (pa.ArrowException, ValueError):
        raise AsenError(f"{path}: column {name!r} must hold text or numbers") from None
    return [c.strip() or None if c is not None else None for c in cells]


def _value_order(names: set[str]) -> list[str]:
    """Names sorted: as integers when all are integers, else as text."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


class _Collector:
    """Gathers (image, attribute, value) triples, refusing an image with two values for an
    attribute, then numbers attributes and values."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: dict[tuple[str, str], tuple[str, str]] = {}  # (image, attr) -> (value, where)
        self.rows: dict[str, str] = {}  # image -> where it first appears

    def add(self, image: str, attribute: str, value: str, where: str) -> None:
        self.rows.setdefault(image, where)
        old = self.seen.setdefault((image, attribute), (value, where))
        if old[0] != value:
            raise AsenError(
                f"{where}: image {image!r} has two values for {attribute!r}: "
                f"{old[0]!r} ({old[1]}) and {value!r}"
            )

    def table(self, attributes: list[str], names: dict[str, list[str]] | None = None) -> LabelTable:
        """Number what was added; `names` fixes the values of an attribute (else sorted)."""
        if not self.seen:
            raise AsenError(f"{self.path}: empty table (no labels)")
        names = dict(names or {})
        for attribute in attributes:
            if attribute not in names:
                found = {v for (_, a), (v, _) in self.seen.items() if a == attribute}
                names[attribute] = _value_order(found)
        for attribute in attributes:
            if len(names[attribute]) < 2:
                shown = f" ({names[attribute][0]!r})" if names[attribute] else ""
                raise AsenError(
                    f"{self.path}: attribute {attribute!r} has one value{shown}; "
                    "an attribute needs at least 2"
                )
        index = {a: i for i, a in enumerate(attributes)}
        numbers = {a: {v: i for i, v in enumerate(names[a])} for a in attributes}
        labels: dict[str, dict[int, int]] = {}
        for (image, attribute), (value, _) in self.seen.items():
            labels.setdefault(image, {})[index[attribute]] = numbers[attribute][value]
        check_attributes([AttributeSpec(a, len(names[a])) for a in attributes], str(self.path))
        left = [Counter() for _ in attributes]
        values = [names[a] for a in attributes]
        return LabelTable(self.path, attributes, values, labels, self.rows, left)


def _rows(table: pa.Table, path: Path) -> None:
    if table.num_rows == 0:
        raise AsenError(f"{path}: empty table (no rows)")


def read_long(path: Path, table: pa.Table) -> LabelTable:
    """`image, attribute, value` rows; other columns are ignored."""
    _rows(table, path)
    columns = [_texts(table, name, path) for name in (IMAGE, ATTRIBUTE, VALUE)]
    collector = _Collector(path)
    for row, cells in enumerate(zip(*columns, strict=True)):
        for name, cell in zip((IMAGE, ATTRIBUTE, VALUE), cells, strict=True):
            if cell is None:
                raise AsenError(f"{_where(path, row)}: empty {name!r} cell")
        collector.add(*cells, _where(path, row))
    return collector.table(sorted({a for _, a in collector.seen}))


def read_wide(path: Path, table: pa.Table) -> LabelTable:
    """`image` and one column per attribute, in the table's order; empty is unlabelled."""
    _rows(table, path)
    images = _texts(table, IMAGE, path)
    attributes = [c for c in table.column_names if c != IMAGE]
    if not attributes:
        raise AsenError(f"{path}: no attribute columns beside {IMAGE!r}")
    collector = _Collector(path)
    for attribute in attributes:
        for row, (image, value) in enumerate(
            zip(images, _texts(table, attribute, path), strict=True)
        ):
            if image is None:
                raise AsenError(f"{_where(path, row)}: empty {IMAGE!r} cell")
            if value is not None:
                collector.add(image, attribute, value, _where(path, row))
    return collector.table(attributes)


def read_fashionai(path: Path) -> LabelTable:
    """FashionAI's `Annotations/label.csv`: the label's one `y` is the value; rows with no
    `y` or several are counted per attribute and left out."""
    table = read_table(path, text_columns=FASHIONAI_COLUMNS, header=FASHIONAI_COLUMNS)
    _rows(table, path)
    images, attributes, labels = (_texts(table, c, path) for c in FASHIONAI_COLUMNS)
    collector, widths, left = _Collector(path), {}, Counter()
    for row, (image, attribute, label) in enumerate(zip(images, attributes, labels, strict=True)):
        where = _where(path, row, header=False)
        if image is None or attribute is None or label is None or set(label) - set("nym"):
            raise AsenError(f"{where}: expected 'Images/<task>/<file>.jpg,<task>,<n/y/m label>'")
        if widths.setdefault(attribute, len(label)) != len(label):
            raise AsenError(
                f"{where}: label {label!r} has {len(label)} positions; earlier rows of "
                f"{attribute!r} have {widths[attribute]}"
            )
        if label.count("y") != 1:
            left[attribute] += 1
            continue
        collector.add(image, attribute, str(label.index("y")), where)
    order = sorted(widths)
    result = collector.table(order, {a: [str(i) for i in range(widths[a])] for a in order})
    result.left_out = [Counter({NOT_ONE_Y: left[a]}) if left[a] else Counter() for a in order]
    return result


def read_labels(path: str | Path, kind: str = "table") -> LabelTable:
    """Read LABELS: `kind` "table" (long form when it has an `attribute` or a `value`
    column, else wide form) or "fashionai"."""
    path = Path(path)
    if kind == "fashionai":
        return read_fashionai(path)
    if kind != "table":
        raise AsenError(f"unknown labels format {kind!r}; valid: table, fashionai")
    table = read_table(path, text_columns=[IMAGE, ATTRIBUTE, VALUE])
    if ATTRIBUTE in table.column_names or VALUE in table.column_names:
        return read_long(path, table)
    return read_wide(path, table)
