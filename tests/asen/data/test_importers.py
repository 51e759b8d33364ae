"""`asen data import`: label tables (long CSV, wide Parquet, JSON Lines), the FashionAI
layout and URL tables (a local HTTP server with dead links) become split-format datasets
that the reader opens; the same inputs give the same bytes; bad input is one line and
writes nothing."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from asen import AsenError
from asen.atomic import TEMP_PREFIX
from asen.data.fetch import FetchOptions, download
from asen.data.importers import (
    IMPORT_MARK,
    REPORT_FILE,
    UNDECODABLE,
    ImportOptions,
    import_dataset,
)
from asen.data.partition import SPLITS
from asen.data.splits import open_dataset
from asen.data.synthetic import render
from asen.data.tables import NOT_ONE_Y

# value names per attribute; render() draws attribute 0 as the neckline, 1 as the sleeves
ATTRIBUTES = {"neckline": ["round", "vee", "square"], "sleeves": ["none", "short", "long"]}
N_IMAGES = 45


def _draw(path: Path, values: list[int], seed: int, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    render(values, [3, 3], seed, image_size=48).save(path, fmt)
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Path, dict[str, dict[str, str]]]:
    """A folder of garment images and their labels: reference -> {attribute: value name}."""
    root = tmp_path_factory.mktemp("shop")
    rng = np.random.default_rng(7)
    labels = {}
    for i in range(N_IMAGES):
        values = [i % 3, int(rng.integers(3))]
        ref = f"photos/{i % 4}/item_{i:03d}.png"
        _draw(root / ref, values, seed=i)
        labels[ref] = {
            a: names[v] for (a, names), v in zip(ATTRIBUTES.items(), values, strict=True)
        }
    return root, labels


def _long_rows(labels: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    rows = [(ref, a, v) for ref, values in labels.items() for a, v in values.items()]
    return {k: [r[i] for r in rows] for i, k in enumerate(("image", "attribute", "value"))}


def _opts(tmp_path: Path, **kw) -> ImportOptions:
    kw.setdefault("cache", tmp_path / "cache")
    kw.setdefault("backoff", 0.01)
    kw.setdefault("retries", 1)
    kw.setdefault("workers", 4)
    return ImportOptions(**kw)


def _imported(out: Path) -> dict[str, dict[str, str]]:
    """What a dataset says, read back through the split reader: dataset path -> {attribute:
    value name}; checks that no image is in two splits and each value is evaluable."""
    dataset = open_dataset(out)
    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    names = [a["value_names"] for a in meta["attributes"]]
    seen: dict[str, dict[str, str]] = {}
    in_split = {s: {str(f.relative_to(out)) for f in dataset.files(s)} for s in SPLITS}
    for i, split in enumerate(SPLITS):  # no image in two splits
        assert not any(in_split[split] & in_split[other] for other in SPLITS[i + 1 :])
    for image_id, row in enumerate(dataset.train_labels()):
        name = str(dataset.files("train")[image_id].relative_to(out))
        seen[name] = {dataset.names[a]: names[a][v] for a, v in enumerate(row) if v >= 0}
    for split in ("valid", "test"):
        entries = dataset.eval_entries(split)
        for image_id, a, v in np.concatenate([entries.queries, entries.candidates]):
            name = str(entries.files[image_id].relative_to(out))
            seen.setdefault(name, {})[dataset.names[a]] = names[a][v]
        for a, spec in enumerate(dataset.attributes):  # a query and a relevant candidate
            for v in range(spec.values):
                assert ((entries.queries[:, 1] == a) & (entries.queries[:, 2] == v)).any()
                assert ((entries.candidates[:, 1] == a) & (entries.candidates[:, 2] == v)).any()
    return seen


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ tables


def test_long_csv(shop, tmp_path) -> None:
    root, labels = shop
    table = tmp_path / "labels.csv"
    pv.write_csv(pa.table(_long_rows(labels)), table)
    calls = []
    report = import_dataset(
        table,
        tmp_path / "ds",
        images=root,
        options=_opts(tmp_path),
        progress=lambda *done_total: calls.append(done_total),
    )
    assert calls == [(n, N_IMAGES) for n in range(1, N_IMAGES + 1)]  # every image decoded
    got = _imported(tmp_path / "ds")
    assert got == {f"images/{ref}": values for ref, values in labels.items()}
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    assert meta["written_by"] == IMPORT_MARK
    assert [a["name"] for a in meta["attributes"]] == ["neckline", "sleeves"]  # sorted
    assert meta["attributes"][0]["value_names"] == ["round", "square", "vee"]  # sorted names
    assert sum(report.images.values()) == N_IMAGES and not report.skipped
    for row in report.attributes:  # every image has both attributes
        assert row.images == report.images
        for split in ("valid", "test"):
            assert row.queries[split] + row.candidates[split] == report.images[split]
            assert 1 <= row.queries[split] < row.candidates[split]
    assert json.loads((tmp_path / "ds" / REPORT_FILE).read_text()) == report.to_dict()


def test_wide_parquet_with_unlabelled_cells(shop, tmp_path) -> None:
    root, labels = shop
    refs = sorted(labels)
    unlabelled = set(refs[::5])  # no sleeves label for every fifth image
    columns = {
        "image": refs,
        "neckline": [labels[r]["neckline"] for r in refs],
        "sleeves": [None if r in unlabelled else labels[r]["sleeves"] for r in refs],
    }
    pq.write_table(pa.table(columns), tmp_path / "labels.parquet")
    report = import_dataset(
        tmp_path / "labels.parquet", tmp_path / "ds", images=root, options=_opts(tmp_path)
    )
    expected = {
        f"images/{r}": {a: v for a, v in labels[r].items() if r not in unlabelled or a != "sleeves"}
        for r in refs
    }
    assert _imported(tmp_path / "ds") == expected
    sleeves = report.attributes[1]
    assert sleeves.name == "sleeves" and sum(sleeves.images.values()) == N_IMAGES - len(unlabelled)


def test_jsonl_numbers_values_numerically(shop, tmp_path) -> None:
    """Integer values are numbered as integers (2 before 10), and kept as names."""
    root, labels = shop
    code = {"round": 2, "vee": 10, "square": 7}
    lines = [
        json.dumps({"image": r, "neckline": code[v["neckline"]], "sleeves": v["sleeves"]})
        for r, v in labels.items()
    ]
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n")
    import_dataset(tmp_path / "labels.jsonl", tmp_path / "ds", images=root, options=_opts(tmp_path))
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    assert meta["attributes"][0]["value_names"] == ["2", "7", "10"]
    got = _imported(tmp_path / "ds")
    assert {r: v["neckline"] for r, v in got.items()} == {
        f"images/{r}": str(code[v["neckline"]]) for r, v in labels.items()
    }


def _fashionai(folder: Path) -> tuple[Path, dict[str, dict[str, str]], Counter]:
    """A FashionAI-layout release: Images/<task>/<file>.jpg and Annotations/label.csv with
    n/y/m labels; some rows have no `y` or two, which the import leaves out."""
    lines, expected, left = [], {}, Counter()
    for task, width, attr in (("collar_design_labels", 3, 0), ("sleeve_length_labels", 3, 1)):
        for i in range(24):
            ref = f"Images/{task}/{hashlib.md5(f'{task}{i}'.encode()).hexdigest()}.jpg"
            value = i % width
            values = [value, 1] if attr == 0 else [1, value]
            _draw(folder / ref, values, seed=100 * attr + i, fmt="JPEG")
            label = ["n"] * width
            label[value] = "y"
            if i in (3, 17):  # two y's, or a y turned into m: left out
                label[(value + 1) % width] = "y" if i == 3 else label[(value + 1) % width]
                label[value] = label[value] if i == 3 else "m"
                left[task] += 1
            else:
                expected[ref] = {task: str(value)}
            lines.append(f"{ref},{task},{''.join(label)}")
    (folder / "Annotations").mkdir()
    (folder / "Annotations" / "label.csv").write_text("\n".join(lines) + "\n")
    return folder / "Annotations" / "label.csv", expected, left


def test_fashionai_layout(tmp_path) -> None:
    release = tmp_path / "fashionAI_attributes_train"
    label_csv, expected, left = _fashionai(release)
    report = import_dataset(
        label_csv, tmp_path / "ds", images=release, kind="fashionai", options=_opts(tmp_path)
    )
    assert _imported(tmp_path / "ds") == {f"images/{r}": v for r, v in expected.items()}
    assert {a.name: a.skipped.get(NOT_ONE_Y, 0) for a in report.attributes} == dict(left)
    assert [a.values for a in report.attributes] == [["0", "1", "2"]] * 2


# ------------------------------------------------------------------ URLs


class _Handler(BaseHTTPRequestHandler):
    """/img/<ref> and /mirror/<ref>: the image file; /flaky/<ref>: 503 on the first request,
    then the image; /missing: 404; /reset: the connection is reset; /page: 200 with HTML."""

    root: Path
    hits: Counter

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits[self.path] += 1
        kind, _, ref = self.path.lstrip("/").partition("/")
        if kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if kind == "page":
            return self._send(200, b"<html>not found</html>", "text/html")
        if kind in ("img", "mirror") or (kind == "flaky" and self.hits[self.path] > 1):
            return self._send(200, (self.root / ref).read_bytes(), "image/png")
        self._send(503 if kind == "flaky" else 404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the reset connection


@pytest.fixture
def server(shop):
    handler = type("Handler", (_Handler,), {"root": shop[0], "hits": Counter()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.handle_error = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.hits
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def test_url_table_with_dead_links(shop, server, tmp_path) -> None:
    root, labels = shop
    base, hits = server
    refs = sorted(labels)
    urls = {r: f"{base}/{'flaky' if i == 0 else 'img'}/{r}" for i, r in enumerate(refs)}
    dead = {f"{base}/missing": "dead link", f"{base}/reset": "dead link"}
    dead[f"{base}/page"] = "not an image"
    rows = {"image": list(urls.values()) + list(dead), "sleeves": []}
    rows["sleeves"] = [labels[r]["sleeves"] for r in refs] + ["long"] * len(dead)
    pq.write_table(pa.table(rows), tmp_path / "urls.parquet")
    report = import_dataset(tmp_path / "urls.parquet", tmp_path / "ds", options=_opts(tmp_path))
    assert {s.image: s.problem for s in report.skipped} == dead
    assert "HTTP 404" in next(s.reason for s in report.skipped if s.image.endswith("/missing"))
    assert hits["/reset"] == 2 and hits["/missing"] == 1  # retried once; a 404 is final
    assert report.attributes[0].skipped == {"dead link": 2, "not an image": 1}
    digest = {r: hashlib.sha256((root / r).read_bytes()).hexdigest() for r in refs}
    expected = {f"downloads/{digest[r]}.png": {"sleeves": labels[r]["sleeves"]} for r in refs}
    assert _imported(tmp_path / "ds") == expected  # the flaky one came on its retry
    before = sum(hits.values())
    import_dataset(tmp_path / "urls.parquet", tmp_path / "ds2", options=_opts(tmp_path))
    assert sum(hits.values()) - before == 4  # from the cache: only the dead links again
    assert _files(tmp_path / "ds") == _files(tmp_path / "ds2")


def test_download_retries_are_bounded(server, tmp_path) -> None:
    base, hits = server
    with pytest.raises(Exception, match="HTTP 404"):
        download(f"{base}/missing", FetchOptions(tmp_path, retries=3, backoff=0.01))
    with pytest.raises(Exception, match="after 4 tries"):
        download(f"{base}/reset", FetchOptions(tmp_path, retries=3, backoff=0.01))
    assert hits["/missing"] == 1 and hits["/reset"] == 4


# ------------------------------------------------------------------ identical bytes


def _copy_shop(root: Path, labels: dict, to: Path) -> Path:
    for ref in labels:
        (to / ref).parent.mkdir(parents=True, exist_ok=True)
        (to / ref).write_bytes((root / ref).read_bytes())
    return to


def test_identical_bytes_are_one_image(shop, server, tmp_path) -> None:
    """Two URLs, a URL and a local file, or two local files serving the same bytes are one
    image in one split, with their labels combined; the command says how many merged."""
    from asen.cli import app

    shop_root, labels = shop
    base = server[0]
    root = _copy_shop(shop_root, labels, tmp_path / "root")
    refs = sorted(labels)
    copy = "copies/item.png"  # sorts before photos/: the local path kept for its group
    (root / copy).parent.mkdir()
    (root / copy).write_bytes((root / refs[5]).read_bytes())
    rows = [(r, a, v) for r in refs if r != refs[4] for a, v in labels[r].items()]
    rows += [(f"{base}/img/{r}", "neckline", labels[r]["neckline"]) for r in refs[:4]]
    rows += [(f"{base}/mirror/{r}", "sleeves", labels[r]["sleeves"]) for r in refs[3:5]]
    rows += [(f"{base}/img/{refs[4]}", "neckline", labels[refs[4]]["neckline"])]
    rows += [(copy, "sleeves", labels[refs[5]]["sleeves"])]
    columns = {k: [row[i] for row in rows] for i, k in enumerate(("image", "attribute", "value"))}
    pv.write_csv(pa.table(columns), tmp_path / "labels.csv")
    options = _opts(tmp_path, seed=2)
    report = import_dataset(tmp_path / "labels.csv", tmp_path / "ds", images=root, options=options)
    expected_merges = {r: [f"{base}/img/{r}"] for r in refs[:3]}
    expected_merges[refs[3]] = [f"{base}/img/{refs[3]}", f"{base}/mirror/{refs[3]}"]
    expected_merges[f"{base}/img/{refs[4]}"] = [f"{base}/mirror/{refs[4]}"]  # URLs only
    expected_merges[copy] = [refs[5]]  # two local files
    assert {m.image: m.references for m in report.merged} == expected_merges
    assert report.merged_references == 7 and sum(report.images.values()) == N_IMAGES
    digest4 = hashlib.sha256((root / refs[4]).read_bytes()).hexdigest()
    expected = {f"images/{r}": v for r, v in labels.items() if r not in refs[4:6]}
    expected[f"downloads/{digest4}.png"] = labels[refs[4]]  # neckline and sleeves combined
    expected[f"images/{copy}"] = labels[refs[5]]
    assert _imported(tmp_path / "ds") == expected
    dataset = open_dataset(tmp_path / "ds")
    contents = [
        hashlib.sha256(f.read_bytes()).hexdigest() for s in SPLITS for f in dataset.files(s)
    ]
    assert len(contents) == len(set(contents)) == N_IMAGES  # each picture once, in one split
    args = ["data", "import", str(tmp_path / "labels.csv"), "--images", str(root), "--seed", "2"]
    args += ["--out", str(tmp_path / "ds2"), "--cache", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "merged 7 references into 6 images" in result.output
    assert _files(tmp_path / "ds") == _files(tmp_path / "ds2")  # byte-identical rerun
    merged = json.loads((tmp_path / "ds" / REPORT_FILE).read_text())["merged"]
    assert {m["image"]: m["references"] for m in merged} == expected_merges


def test_identical_bytes_with_two_values_refused(shop, server, tmp_path) -> None:
    """A URL serving a local file's bytes with another value for one attribute is the same
    image with two values: one line naming both references, nothing written."""
    root, labels = shop
    ref = sorted(labels)[0]
    rows = _long_rows(labels)
    other = next(v for v in ATTRIBUTES["neckline"] if v != labels[ref]["neckline"])
    url = f"{server[0]}/mirror/{ref}"
    for key, cell in (("image", url), ("attribute", "neckline"), ("value", other)):
        rows[key].append(cell)
    pv.write_csv(pa.table(rows), tmp_path / "labels.csv")
    with pytest.raises(AsenError) as caught:
        import_dataset(
            tmp_path / "labels.csv", tmp_path / "ds", images=root, options=_opts(tmp_path)
        )
    message = str(caught.value)
    line = len(rows["image"]) + 1
    assert "\n" not in message and message.startswith(f"{tmp_path / 'labels.csv'}:{line}: ")
    assert f"image {url!r} has the same bytes as {ref!r}" in message
    assert f"two values for 'neckline': {labels[ref]['neckline']!r} and {other!r}" in message
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------ determinism


def test_same_inputs_same_bytes(shop, tmp_path) -> None:
    root, labels = shop
    pv.write_csv(pa.table(_long_rows(labels)), tmp_path / "labels.csv")
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        options = _opts(tmp_path, seed=seed)
        import_dataset(tmp_path / "labels.csv", tmp_path / name, images=root, options=options)
        runs[name] = _files(tmp_path / name)
    first = dict(runs["a"])
    options = _opts(tmp_path, seed=3)
    import_dataset(tmp_path / "labels.csv", tmp_path / "a", images=root, options=options)
    assert _files(tmp_path / "a") == first == runs["b"]  # replaced in place, same bytes
    assert runs["c"] != runs["a"]  # another seed, another split
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


# ------------------------------------------------------------------ bad input


def _bad_tables(root: Path, labels: dict, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (table, a phrase its one error line must hold)."""
    good = _long_rows(labels)
    first, second = sorted(labels)[:2]
    n = len(good["image"])
    cases = {
        "missing column": ({k: good[k] for k in ("image", "attribute")}, "missing column 'value'"),
        "unknown image": ({**good, "image": ["nope.png", *good["image"][1:]]}, "unknown image"),
        "one value": (
            {"image": [first, second], "attribute": ["a", "a"], "value": ["x", "x"]},
            "one value ('x')",
        ),
        "two values": (
            {k: [*v, "other" if k == "value" else v[0]] for k, v in good.items()},
            f"two_values.csv:{n + 2}: image {first!r} has two values for",
        ),
        "empty table": ({k: pa.array([], pa.string()) for k in good}, "empty table"),
        "outside root": ({**good, "image": ["../x.png", *good["image"][1:]]}, "leaves --images"),
    }
    tables = {}
    for name, (columns, phrase) in cases.items():
        path = tmp / f"{name.replace(' ', '_')}.csv"
        pv.write_csv(pa.table(columns), path)
        tables[name] = (path, phrase)
    return tables


def test_bad_tables_one_line_nothing_written(shop, tmp_path) -> None:
    root, labels = shop
    tables = _bad_tables(root, labels, tmp_path)
    for name, (table, phrase) in tables.items():
        with pytest.raises(AsenError) as caught:
            import_dataset(table, tmp_path / "out" / "ds", images=root, options=_opts(tmp_path))
        message = str(caught.value)
        assert "\n" not in message and phrase in message, (name, message)
        assert str(table) in message, (name, message)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), name


def test_undecodable_image_refused_or_skipped(shop, tmp_path) -> None:
    root, labels = shop
    broken = tmp_path / "root"
    for ref in labels:
        (broken / ref).parent.mkdir(parents=True, exist_ok=True)
        (broken / ref).write_bytes((root / ref).read_bytes())
    bad_ref = sorted(labels)[4]
    (broken / bad_ref).write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    pv.write_csv(pa.table(_long_rows(labels)), tmp_path / "labels.csv")
    table = tmp_path / "labels.csv"
    with pytest.raises(AsenError, match="cannot decode image.*--skip-bad-images") as caught:
        import_dataset(table, tmp_path / "ds", images=broken, options=_opts(tmp_path))
    assert "\n" not in str(caught.value) and f"image {bad_ref!r}" in str(caught.value)
    assert not (tmp_path / "ds").exists()
    options = _opts(tmp_path, skip_bad_images=True)
    report = import_dataset(table, tmp_path / "ds", images=broken, options=options)
    assert [(s.image, s.problem) for s in report.skipped] == [(bad_ref, UNDECODABLE)]
    assert str(broken) not in report.skipped[0].reason  # the report does not name ROOT
    assert f"images/{bad_ref}" not in _imported(tmp_path / "ds")
    assert all(a.skipped == {UNDECODABLE: 1} for a in report.attributes)


def test_value_too_small_is_named(shop, tmp_path) -> None:
    root, labels = shop
    rows = _long_rows(labels)
    rare = [i for i, a in enumerate(rows["attribute"]) if a == "sleeves"]
    for i in rare[:4]:
        rows["value"][i] = "sleeveless-rare"
    pv.write_csv(pa.table(rows), tmp_path / "labels.csv")
    too_small = "'sleeves' value 'sleeveless-rare' has 4 images; .* at least 5"
    with pytest.raises(AsenError, match=too_small):
        import_dataset(
            tmp_path / "labels.csv", tmp_path / "ds", images=root, options=_opts(tmp_path)
        )
    assert not (tmp_path / "ds").exists()


def test_foreign_folder_refused(shop, tmp_path) -> None:
    root, labels = shop
    table = tmp_path / "labels.csv"
    pv.write_csv(pa.table(_long_rows(labels)), table)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(AsenError, match="not written by asen data import"):
        import_dataset(table, tmp_path / "mine", images=root, options=_opts(tmp_path))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------ train and evaluate

QUICK_TRAIN = ["-c", "small", "--set", "train.triplets_per_epoch=16", "--set",
               "train.batch_size=8", "--set", "train.eval_batch_size=32", "--workers", "0",
               "--epochs", "1"]  # fmt: skip


def _source(kind: str, shop, server, tmp: Path) -> tuple[Path, Path | None, str]:
    """(LABELS, ROOT, format) of one kind of input, built from the shop's images."""
    root, labels = shop
    if kind == "fashionai":
        return _fashionai(tmp / "release")[0], tmp / "release", "fashionai"
    if kind == "long csv":
        pv.write_csv(pa.table(_long_rows(labels)), tmp / "labels.csv")
        return tmp / "labels.csv", root, "table"
    refs = sorted(labels)
    column = [f"{server[0]}/img/{r}" for r in refs] if kind == "urls" else refs
    columns = {"image": column, **{a: [labels[r][a] for r in refs] for a in ATTRIBUTES}}
    if kind == "urls":
        columns = {k: [*v, f"{server[0]}/missing"] if k == "image" else [*v, v[0]]
                   for k, v in columns.items()}  # fmt: skip
    pq.write_table(pa.table(columns), tmp / "labels.parquet")
    return tmp / "labels.parquet", None if kind == "urls" else root, "table"


@pytest.mark.parametrize("kind", ["fashionai", "long csv", "wide parquet", "urls"])
def test_imported_dataset_trains_and_evaluates(kind, shop, server, tmp_path) -> None:
    from asen.cli import app

    table, root, fmt = _source(kind, shop, server, tmp_path)
    import_dataset(table, tmp_path / "ds", images=root, kind=fmt, options=_opts(tmp_path))
    runner = CliRunner()
    data = ["--data", str(tmp_path / "ds")]
    result = runner.invoke(app, ["train", *data, *QUICK_TRAIN, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    best = tmp_path / "run" / "best.pt"
    result = runner.invoke(
        app, ["eval", str(best), *data, "--json", str(tmp_path / "m.json"), "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "m.json").read_text())
    entries = open_dataset(tmp_path / "ds").eval_entries("test")
    names = open_dataset(tmp_path / "ds").names
    assert set(figures["per_attribute"]) == set(names)
    assert figures["num_queries"] == {  # every query of the imported test split was scored
        n: int((entries.queries[:, 1] == a).sum()) for a, n in enumerate(names)
    }
    assert 0 < figures["overall_map"] <= 1


def test_images_linked_or_copied(shop, tmp_path, monkeypatch) -> None:
    """Images are hard-linked into the dataset; where the file system refuses a link (another
    device), they are copied, with the same bytes either way."""
    root, labels = shop
    pv.write_csv(pa.table(_long_rows(labels)), tmp_path / "labels.csv")
    ref = sorted(labels)[0]
    import_dataset(
        tmp_path / "labels.csv", tmp_path / "linked", images=root, options=_opts(tmp_path)
    )
    assert (tmp_path / "linked" / "images" / ref).stat().st_ino == (root / ref).stat().st_ino

    def no_links(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("asen.data.importers.os.link", no_links)
    import_dataset(
        tmp_path / "labels.csv", tmp_path / "copied", images=root, options=_opts(tmp_path)
    )
    copied = tmp_path / "copied" / "images" / ref
    assert copied.stat().st_ino != (root / ref).stat().st_ino
    assert _files(tmp_path / "copied") == _files(tmp_path / "linked")


# ------------------------------------------------------------------ the command


def test_command_imports_and_reports(shop, server, tmp_path) -> None:
    from asen.cli import app

    root, labels = shop
    refs = sorted(labels)
    rows = _long_rows(labels)
    rows = {k: [*v, f"{server[0]}/missing" if k == "image" else v[-1]] for k, v in rows.items()}
    pv.write_csv(pa.table(rows), tmp_path / "labels.csv")
    args = ["data", "import", str(tmp_path / "labels.csv"), "--images", str(root)]
    args += ["--out", str(tmp_path / "ds"), "--cache", str(tmp_path / "cache"), "--seed", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ds" / REPORT_FILE).read_text())
    for row in report["attributes"]:
        shown = [row["name"], str(len(row["values"])), *map(str, row["images"].values())]
        assert any(all(cell in line for cell in shown) for line in result.output.splitlines())
    assert f"left out {server[0]}/missing: dead link" in result.output
    assert len(refs) == sum(report["images"].values())
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    assert meta["seed"] == 5 and meta["split"] == [0.8, 0.1, 0.1]


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--split", "0.5,0.5"], "--split 0.5,0.5: expected three fractions"),
        (["--format", "darn"], "--format"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_command_bad_options_one_line(shop, tmp_path, extra, phrase) -> None:
    from asen.cli import app

    root, labels = shop
    pv.write_csv(pa.table(_long_rows(labels)), tmp_path / "labels.csv")
    args = ["data", "import", str(tmp_path / "labels.csv"), "--images", str(root)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ds"), *extra])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and phrase in lines[0], lines
    assert not (tmp_path / "ds").exists()


def test_command_bad_tables_one_line(shop, tmp_path) -> None:
    from asen.cli import app

    root, labels = shop
    for name, (table, phrase) in _bad_tables(root, labels, tmp_path).items():
        args = ["data", "import", str(table), "--images", str(root), "--out", str(tmp_path / "ds")]
        result = CliRunner().invoke(app, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and phrase in lines[0], (name, lines)
        assert not (tmp_path / "ds").exists(), name
