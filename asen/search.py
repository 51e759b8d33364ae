"""Attribute-specific search: one FAISS inner-product index per attribute, built from an
embeddings .npz written by `asen embed` (any backend), saved as a folder.

The folder holds `manifest.json` (format, attribute names, dim, index kind, counts,
dataset root), `items.npz` (paths, image ids, values, is_query of the indexed entries,
sorted by attribute, with per-attribute offsets) and `attr_<i>.faiss` per attribute.
Embeddings are already l2-normalised by the model, so inner product is cosine, the
similarity that evaluation ranks by.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

import asen
from asen import AsenError
from asen.atomic import atomic_folder, atomic_write, atomic_write_bytes, atomic_write_text
from asen.data.images import load_image
from asen.encoders import Encoder
from asen.evaluate import EmbeddedSplit
from asen.parse import check_structure, short_repr, whole_number

FORMAT = "asen-index/1"
NPZ_KEYS = ("embeddings", "image_ids", "attributes", "values", "is_query", "paths")
DEFAULT_NPROBE = 16
KMEANS_ITERATIONS = 10  # IVF training: fewer than faiss's 25, little loss, 2.5x faster
MIN_POINTS_PER_LIST = 39  # faiss k-means wants this many training points per centroid


@dataclass
class Hit:
    """One search result."""

    rank: int
    score: float
    path: str  # relative to the dataset root, as in the .npz
    image_id: int
    value: int
    is_query: bool


def attribute_id(name: str, names: list[str]) -> int:
    """Index of an attribute by name (or number); an unknown one lists the valid names."""
    if name in names:
        return names.index(name)
    number = whole_number(name)
    if number is not None and number < len(names):
        return number
    raise AsenError(f"unknown attribute {short_repr(name)}; valid: {', '.join(names)}")


def load_embeddings(path: Path) -> tuple[EmbeddedSplit, list[str]]:
    """Read an `asen embed` .npz; a missing key or a foreign file is one clear error."""
    if not path.is_file():
        raise AsenError(f"{path}: embeddings file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in (*NPZ_KEYS, "attribute_names") if k in npz}
    except (OSError, ValueError) as e:
        raise AsenError(f"{path}: not a readable .npz ({e})") from e
    missing = [k for k in (*NPZ_KEYS, "attribute_names") if k not in data]
    if missing:
        raise AsenError(f"{path}: not an `asen embed` file (missing {', '.join(missing)})")
    emb = data["embeddings"]
    if emb.ndim != 2 or any(len(data[k]) != len(emb) for k in NPZ_KEYS):
        raise AsenError(f"{path}: arrays of different lengths or embeddings not [N, D]")
    split = EmbeddedSplit(
        embeddings=np.ascontiguousarray(emb, dtype=np.float32),
        image_ids=data["image_ids"].astype(np.int64),
        attributes=data["attributes"].astype(np.int64),
        values=data["values"].astype(np.int64),
        is_query=data["is_query"].astype(bool),
        paths=[str(p) for p in data["paths"]],
    )
    return split, [str(n) for n in data["attribute_names"]]


def _ivf(d: int, nlist: int, compress: str | None) -> faiss.Index:
    """IVF storing full vectors, or `sq8` (one byte a dimension) or `pq<m>` (m bytes)."""
    quantizer, ip = faiss.IndexFlatIP(d), faiss.METRIC_INNER_PRODUCT
    if compress == "sq8":
        return faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, ip)
    if compress:
        return faiss.IndexIVFPQ(quantizer, d, nlist, int(compress[2:]), 8, ip)
    return faiss.IndexIVFFlat(quantizer, d, nlist, ip)


def check_compress(compress: str | None, dim: int | None = None) -> None:
    """`sq8` or `pq<m>` with m dividing the dimension (when known)."""
    if compress is None or compress == "sq8":
        return
    m = whole_number(compress[2:])
    if not (compress.startswith("pq") and m):
        raise AsenError(f"--compress {compress}: expected sq8 or pq<m> (e.g. pq32)")
    if dim is not None and dim % m:
        raise AsenError(f"--compress {compress}: {m} must divide the embedding dim {dim}")


def _new_index(x: np.ndarray, ivf: bool, nprobe: int, compress: str | None = None) -> faiss.Index:
    """Exact IndexFlatIP, or IVF with nlist ~ sqrt(N) trained on `x` (vectors compressed
    with `compress`, see `_ivf`)."""
    d = x.shape[1]
    if not ivf:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = max(1, min(round(math.sqrt(len(x))), len(x) // MIN_POINTS_PER_LIST))
        index = _ivf(d, nlist, compress)
        index.cp.niter = KMEANS_ITERATIONS
        index.train(x)
        index.nprobe = min(nprobe, nlist)
    index.add(x)
    return index


class SearchIndex:
    """Per-attribute FAISS indexes over a gallery, with the entries they point to."""

    def __init__(self, manifest: dict, items: dict[str, np.ndarray], path: Path | None = None):
        self.manifest, self.items, self.path = manifest, items, path
        self._indexes: dict[int, faiss.Index] = {}

    @property
    def names(self) -> list[str]:
        return self.manifest["attribute_names"]

    @property
    def dim(self) -> int:
        return self.manifest["dim"]

    @property
    def data_root(self) -> Path | None:
        root = self.manifest.get("data_root")
        return Path(root) if root else None

    def resolve(self, path: str) -> Path:
        """The file of an indexed entry (its path joined to the dataset root when known)."""
        return self.data_root / path if self.data_root else Path(path)

    @classmethod
    def build(
        cls,
        gallery: EmbeddedSplit,
        names: list[str],
        *,
        ivf: bool = False,
        include_queries: bool = False,
        nprobe: int = DEFAULT_NPROBE,
        data_root: Path | None = None,
        source: str | None = None,
        compress: str | None = None,
    ) -> SearchIndex:
        """Index the candidate entries (and the queries with `include_queries`); with `ivf`,
        `compress` (`sq8`, `pq<m>`) stores the vectors compressed."""
        if nprobe < 1:
            raise AsenError(f"--nprobe must be at least 1, got {nprobe}")
        if compress and not ivf:
            raise AsenError(f"--compress {compress} applies to an IVF index: add --ivf")
        check_compress(compress, gallery.embeddings.shape[1])
        attrs = gallery.attributes
        if len(attrs) and (attrs.min() < 0 or attrs.max() >= len(names)):
            raise AsenError(f"attribute ids out of range for {len(names)} attribute names")
        rows = np.flatnonzero(np.ones(len(attrs), bool) if include_queries else ~gallery.is_query)
        # an (image, attribute) pair listed as query and candidate is indexed once
        _, first = np.unique(
            np.stack([gallery.image_ids[rows], attrs[rows]], 1), axis=0, return_index=True
        )
        rows = rows[np.sort(first)]
        rows = rows[np.argsort(attrs[rows], kind="stable")]
        counts = np.bincount(attrs[rows], minlength=len(names))
        items = {
            "paths": np.asarray(gallery.paths)[rows] if gallery.paths else np.full(len(rows), ""),
            "image_ids": gallery.image_ids[rows],
            "values": gallery.values[rows],
            "is_query": gallery.is_query[rows],
            "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        }
        manifest = {
            "format": FORMAT,
            "asen_version": asen.__version__,
            "kind": "ivf" if ivf else "flat",
            "metric": "inner_product",
            "dim": int(gallery.embeddings.shape[1]),
            "attribute_names": list(names),
            "counts": [int(c) for c in counts],
            "nprobe": nprobe if ivf else None,
            "compress": compress,
            "include_queries": include_queries,
            "data_root": str(data_root.resolve()) if data_root else None,
            "source": source,
        }
        index = cls(manifest, items)
        for a, (lo, hi) in enumerate(zip(items["offsets"][:-1], items["offsets"][1:], strict=True)):
            if hi > lo:  # one attribute's embeddings at a time: one extra copy at most
                x = gallery.embeddings[rows[lo:hi]]
                index._indexes[a] = _new_index(x, ivf, nprobe, compress)
        manifest["nlist"] = [
            int(index._indexes[a].nlist) if ivf and a in index._indexes else None
            for a in range(len(names))
        ]
        return index

    def save(self, out: Path) -> None:
        """Write the folder; an existing index there is replaced, anything else is refused."""
        if out.exists() and not (out / "manifest.json").is_file():
            if not out.is_dir() or any(out.iterdir()):
                raise AsenError(f"{out}: exists and is not an index folder; choose another --out")
        with atomic_folder(out) as tmp:
            atomic_write(tmp / "items.npz", lambda fh: np.savez(fh, **self.items))
            for a, index in self._indexes.items():
                atomic_write_bytes(tmp / f"attr_{a}.faiss", faiss.serialize_index(index).tobytes())
            atomic_write_text(tmp / "manifest.json", json.dumps(self.manifest, indent=2) + "\n")
        self.path = out

    @classmethod
    def load(cls, path: Path) -> SearchIndex:
        """Read an index folder; a damaged or missing part is one line naming the file."""
        manifest = _read_manifest(path)
        items = _read_items(path / "items.npz", manifest["counts"])
        return cls(manifest, items, path)

    def _index(self, attribute: int) -> faiss.Index:
        if attribute not in self._indexes:
            if not self.manifest["counts"][attribute]:
                raise AsenError(f"the index holds no entries for '{self.names[attribute]}'")
            self._indexes[attribute] = self._read_index(attribute)
        return self._indexes[attribute]

    def _read_index(self, attribute: int) -> faiss.Index:
        file = self.path / f"attr_{attribute}.faiss"
        if not file.is_file():
            raise AsenError(f"{file}: missing from the index; {_REBUILD}")
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as e:
            reason = str(e).strip().split("Error: ")[-1] or "unreadable"
            raise AsenError(f"{file}: damaged index file ({reason}); {_REBUILD}") from None
        if index.d != self.dim or index.ntotal != self.manifest["counts"][attribute]:
            raise AsenError(
                f"{file}: holds {index.ntotal} vectors of dim {index.d}, the manifest says "
                f"{self.manifest['counts'][attribute]} of dim {self.dim}; {_REBUILD}"
            )
        return index

    def search(
        self, embedding: np.ndarray, attribute: int, k: int = 10, nprobe: int | None = None
    ) -> list[Hit]:
        """The top `k` entries of `attribute` by inner product with `embedding` [D]."""
        if nprobe is not None and nprobe < 1:
            raise AsenError(f"--nprobe must be at least 1, got {nprobe}")
        q = np.ascontiguousarray(embedding, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise AsenError(f"query embedding has dim {q.shape[1]}, the index {self.dim}")
        index = self._index(attribute)
        params = None
        if nprobe is not None and self.manifest["kind"] == "ivf":
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        scores, ids = index.search(q, min(k, index.ntotal), params=params)
        offset = int(self.items["offsets"][attribute])
        return [
            Hit(
                rank=rank,
                score=float(score),
                path=str(self.items["paths"][offset + i]),
                image_id=int(self.items["image_ids"][offset + i]),
                value=int(self.items["values"][offset + i]),
                is_query=bool(self.items["is_query"][offset + i]),
            )
            for rank, (score, i) in enumerate(zip(scores[0], ids[0], strict=True), start=1)
            if i >= 0
        ]


_REBUILD = "rebuild it with `asen index`"
_MANIFEST_KEYS = {"format": str, "attribute_names": list, "dim": int, "kind": str, "counts": list}
_ITEM_KEYS = ("paths", "image_ids", "values", "is_query", "offsets")


def _read_manifest(path: Path) -> dict:
    """manifest.json of an index folder, checked for the keys search uses."""
    file = path / "manifest.json"
    if not file.is_file():
        raise AsenError(f"{path}: not an index folder (no manifest.json; see `asen index`)")
    try:
        manifest = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AsenError(f"{file}: damaged index manifest ({e}); {_REBUILD}") from None
    except RecursionError:
        raise AsenError(f"{file}: damaged index manifest (nested too deep); {_REBUILD}") from None
    if not isinstance(manifest, dict):
        raise AsenError(f"{file}: damaged index manifest (not a JSON object); {_REBUILD}")
    check_structure(manifest, f"{file}: damaged index manifest")
    if manifest.get("format") != FORMAT:
        found = short_repr(manifest.get("format"))
        raise AsenError(f"{path}: index format {found}, expected {FORMAT}")
    wrong = [k for k, kind in _MANIFEST_KEYS.items() if not isinstance(manifest.get(k), kind)]
    if not wrong:
        names, counts, dim = manifest["attribute_names"], manifest["counts"], manifest["dim"]
        wrong += [] if all(isinstance(n, str) for n in names) else ["attribute_names"]
        wrong += [] if all(_is_count(c) for c in counts) else ["counts"]
        wrong += [] if _is_count(dim) and dim else ["dim"]
    if wrong or len(manifest["counts"]) != len(manifest["attribute_names"]):
        what = ", ".join(wrong) or "counts"
        raise AsenError(f"{file}: damaged index manifest ({what} missing or wrong); {_REBUILD}")
    return manifest


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_offsets(items: dict[str, np.ndarray], counts: list[int]) -> str | None:
    """What is wrong with items.npz's arrays against the manifest's counts, or None."""
    if any(items[k].ndim != 1 for k in _ITEM_KEYS):
        return "arrays not one-dimensional"
    lengths = {len(items[k]) for k in _ITEM_KEYS if k != "offsets"}
    offsets = items["offsets"]
    if len(lengths) != 1:
        return "arrays of different lengths"
    if offsets.dtype.kind not in "iu" or len(offsets) != len(counts) + 1:
        return "offsets"
    if offsets[0] != 0 or offsets[-1] != lengths.pop() or (np.diff(offsets) < 0).any():
        return "offsets out of range"
    if np.diff(offsets).tolist() != counts:
        return "offsets differ from the manifest's counts"
    return None


def _read_items(file: Path, counts: list[int]) -> dict[str, np.ndarray]:
    """items.npz of an index folder: the indexed entries and per-attribute offsets, which
    must agree with the manifest's `counts`."""
    if not file.is_file():
        raise AsenError(f"{file}: missing from the index; {_REBUILD}")
    try:
        with np.load(file, allow_pickle=False) as npz:
            items = {k: npz[k] for k in npz.files}
    except Exception as e:  # noqa: BLE001 - a truncated zip, a bad header: one line each
        raise AsenError(f"{file}: damaged index file ({e}); {_REBUILD}") from None
    missing = [k for k in _ITEM_KEYS if k not in items]
    what = f"missing {', '.join(missing)}" if missing else _check_offsets(items, counts)
    if what:
        raise AsenError(f"{file}: damaged index file ({what}); {_REBUILD}")
    return items


def query(
    encoder: Encoder,
    index: SearchIndex,
    image: Path,
    *,
    attribute: int,
    k: int = 10,
    nprobe: int | None = None,
) -> tuple[np.ndarray, list[Hit]]:
    """Embed one image file for `attribute` with any Encoder and search the index.
    Returns the preprocessed image uint8 [3,S,S] and the hits."""
    if encoder.info.names != index.names or encoder.info.dim != index.dim:
        raise AsenError(
            f"the model ({', '.join(encoder.info.names)}; dim {encoder.info.dim}) does not match "
            f"the index ({', '.join(index.names)}; dim {index.dim})"
        )
    if k < 1:
        raise AsenError(f"--top must be at least 1, got {k}")
    pixels = load_image(image, encoder.info.source_size)
    embedding = encoder.encode(pixels[None], np.asarray([attribute], dtype=np.int64))[0]
    return pixels, index.search(embedding, attribute, k, nprobe)
