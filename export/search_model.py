"""The `asen_search` model: one Triton model that answers "the k gallery items most like this
image, for this attribute".

It is a Python-backend model (source `triton_python/search.py`) that decodes the query image
with the one preprocessing function, embeds it by calling the encoder model (`<name>_onnx` or
`<name>_trt`) through Triton's business-logic scripting, so queries still batch in the
encoder, and searches that attribute's FAISS index (`asen.search.SearchIndex`).

Layout, one version per gallery (Triton serves the newest):

    <repo>/asen_search/config.pbtxt          built with the ModelConfig protobuf
    <repo>/asen_search/<v>/model.py
    <repo>/asen_search/<v>/index/            manifest.json, items.npz, attr_<i>.faiss

The index manifest's `encoder` records which encoder made the gallery (model, precision,
checkpoint sha256 from the artifact's `model.json`, and the artifact's own sha256). The
gallery is checked against that encoder when it is added (a few gallery images are embedded
again and must match), and the model refuses to load when the repository's encoder differs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from asen.export import layout
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from asen import AsenError
from asen.atomic import atomic_write_bytes, atomic_write_text, file_sha256
from asen.evaluate import EmbeddedSplit
from asen.search import SearchIndex

SEARCH_MODEL = "asen_search"
INDEX_DIR = "index"
SOURCE = Path(__file__).parent / "triton_python" / "search.py"
MAX_K = 1000
MAX_IMAGE_BYTES = 10 * 2**20
MAX_BATCH = 16  # queries per execution of asen_search (they go to the encoder as one batch)
MAX_QUEUE_DELAY_US = 2000
PROBES = 8  # gallery images embedded again to check which encoder made the gallery
PROBE_MIN_COSINE = {"fp32": 0.999}  # any lower precision: PROBE_MIN_COSINE_LOW
PROBE_MIN_COSINE_LOW = 0.99
IDENTITY_KEYS = ("model", "precision", "checkpoint_sha256", "artifact_sha256")


def encoder_artifact(repo: Path, encoder: str) -> Path:
    """The artifact of encoder model `encoder`: `<repo>/<encoder>/1/model.onnx` or
    `model.plan`."""
    folder = Path(repo) / encoder / layout.VERSION
    for _, filename in layout.ARTIFACTS.values():
        if (folder / filename).is_file():
            return folder / filename
    raise AsenError(
        f"{folder}: no model.onnx or model.plan; --encoder names an encoder model that "
        "`asen export` wrote (e.g. asen_onnx)"
    )


def _probe_graph(repo: Path, encoder: str) -> Path:
    """The ONNX graph that re-embeds probe images: the encoder's own, or for a TensorRT
    plan `<name>_trt...` the fp32 graph `<name>_onnx`."""
    artifact = encoder_artifact(repo, encoder)
    if artifact.suffix == ".onnx":
        return artifact
    return encoder_artifact(repo, encoder.split("_trt")[0] + "_onnx")


def encoder_identity(repo: Path, encoder: str) -> dict[str, str | None]:
    """What identifies the encoder model `encoder` of `repo`: its name, precision and
    checkpoint sha256 (from `model.json`) and the sha256 of the artifact itself."""
    artifact = encoder_artifact(repo, encoder)
    meta = layout.read_sidecar(artifact)
    return {
        "model": encoder,
        "precision": meta.get("precision", "fp32"),
        "checkpoint_sha256": meta.get("checkpoint_sha256"),
        "artifact_sha256": file_sha256(artifact),
        "attribute_names": meta.get("attribute_names"),
        "embedding_dim": meta.get("embedding_dim"),
        "max_batch": meta.get("max_batch"),
        "source_size": meta.get("source_size"),
    }


def _short(identity: dict) -> str:
    ckpt = identity.get("checkpoint_sha256")
    art = str(identity.get("artifact_sha256"))[:12]
    return f"{identity.get('model')} {identity.get('precision')} " + (
        f"checkpoint {ckpt[:12]}" if ckpt else f"artifact {art}"
    )


def encoder_mismatch(recorded: dict | None, current: dict) -> str | None:
    """Why a gallery recorded as embedded by `recorded` cannot be searched with the encoder
    `current`; None when they are the same encoder. The checkpoint sha256 decides when both
    sides have one (a re-export of the same checkpoint is the same encoder), else the
    artifact's sha256."""
    if not recorded:
        return "the index manifest records no encoder (rebuild it with `asen index --repo`)"
    same_ckpt = recorded.get("checkpoint_sha256") and current.get("checkpoint_sha256")
    keys = ("model", "precision", "checkpoint_sha256" if same_ckpt else "artifact_sha256")
    if all(recorded.get(k) == current.get(k) for k in keys):
        return None
    return (
        f"the gallery was embedded by {_short(recorded)}, but the repository's encoder is "
        f"{_short(current)}; embed the gallery with this encoder and run `asen index --repo` again"
    )


def _probe_rows(gallery: EmbeddedSplit, n: int) -> np.ndarray:
    rows = np.flatnonzero(~gallery.is_query)
    rows = rows if len(rows) else np.arange(len(gallery.embeddings))
    return rows[np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int)]


def check_gallery(
    gallery: EmbeddedSplit, data_root: Path, repo: Path, encoder: str, source: str
) -> float:
    """Embed a few gallery images again with the repository's ONNX graph and compare: a
    gallery embedded by another model is refused with one line. Returns the lowest cosine."""
    from asen.export.encoders import OnnxEncoder

    from asen.data.images import load_image

    identity = encoder_identity(repo, encoder)
    model = OnnxEncoder(_probe_graph(repo, encoder), "cpu")
    if gallery.embeddings.shape[1] != model.info.dim:
        raise AsenError(
            f"{source}: embeddings of dim {gallery.embeddings.shape[1]}, but {encoder} "
            f"makes dim {model.info.dim}: not a gallery of this encoder"
        )
    rows = _probe_rows(gallery, PROBES)
    images = np.stack(
        [load_image(data_root / gallery.paths[r], model.info.source_size) for r in rows]
    )
    fresh = model.encode(images, gallery.attributes[rows])
    stored = gallery.embeddings[rows]
    cos = (fresh * stored).sum(1) / (
        np.linalg.norm(fresh, axis=1) * np.linalg.norm(stored, axis=1) + 1e-12
    )
    need = PROBE_MIN_COSINE.get(str(identity["precision"]), PROBE_MIN_COSINE_LOW)
    if float(cos.min()) < need:
        raise AsenError(
            f"{source}: not embedded by {repo}/{encoder} (cosine {cos.min():.4f} on {len(rows)} "
            f"gallery images re-embedded, need >= {need}); embed the gallery with this model"
        )
    return float(cos.min())


def search_config(index: SearchIndex, identity: dict, name: str = SEARCH_MODEL) -> mc.ModelConfig:
    """The model config: one query per request (image bytes or a uint8 tensor, attribute
    name or id, k, optional nprobe), dynamic batching of queries, ragged outputs."""
    size = int(identity["source_size"])
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=MAX_BATCH)
    for tensor, dtype, dims, optional in (
        ("image_bytes", mc.TYPE_STRING, [1], True),
        ("image", mc.TYPE_UINT8, [3, size, size], True),
        ("attribute", mc.TYPE_STRING, [1], False),
        ("k", mc.TYPE_INT32, [1], False),
        ("nprobe", mc.TYPE_INT32, [1], True),
    ):
        config.input.add(name=tensor, data_type=dtype, dims=dims, optional=optional)
    for tensor, dtype in (
        ("ids", mc.TYPE_INT64),
        ("scores", mc.TYPE_FP32),
        ("values", mc.TYPE_INT64),
        ("keys", mc.TYPE_STRING),
        ("is_query", mc.TYPE_BOOL),
    ):
        config.output.add(name=tensor, data_type=dtype, dims=[-1])
    params = {
        "encoder_model": identity["model"],
        "encoder_max_batch": str(identity["max_batch"]),
        "source_size": str(size),
        "attribute_names": ",".join(index.names),
        "index_kind": index.manifest["kind"],
        "max_k": str(MAX_K),
        "max_image_bytes": str(MAX_IMAGE_BYTES),
        "data_root": index.manifest.get("data_root") or "",
    }
    for key, value in params.items():
        config.parameters[key].string_value = value
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    config.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    return config


def _versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def add_search_model(repo: Path, index: SearchIndex, encoder: str) -> Path:
    """Add `index` (its manifest must record `encoder`) as the next version of `asen_search`
    in `repo`, with the config and the model source. The version folder is staged in the
    repository and moved into place whole. Returns the version folder."""
    repo = Path(repo)
    identity = encoder_identity(repo, encoder)
    problem = encoder_mismatch(index.manifest.get("encoder"), identity)
    if problem:
        raise AsenError(f"{repo / SEARCH_MODEL}: {problem}")
    model_dir = repo / SEARCH_MODEL
    version = (_versions(model_dir) or [0])[-1] + 1
    staging = Path(tempfile.mkdtemp(dir=repo, prefix=f".{SEARCH_MODEL}-"))
    saved_at = index.path
    try:
        staging.chmod(0o755)
        index.save(staging / INDEX_DIR)
        atomic_write_bytes(staging / "model.py", SOURCE.read_bytes())
        model_dir.mkdir(exist_ok=True)
        os.replace(staging, model_dir / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        index.path = saved_at
    config = text_format.MessageToString(search_config(index, identity))
    atomic_write_text(model_dir / "config.pbtxt", config)
    return model_dir / str(version)


def record_encoder(
    index: SearchIndex,
    gallery: EmbeddedSplit,
    *,
    data_root: Path | None,
    repo: Path,
    encoder: str,
    source: str,
) -> float:
    """Check that `gallery` was embedded by `repo`'s `encoder` and record that encoder in
    the index manifest (before the index is saved). Returns the lowest probe cosine."""
    if data_root is None:
        raise AsenError(
            "--repo needs --data ROOT: a few gallery images are embedded again to check "
            "which encoder made the gallery"
        )
    cosine = check_gallery(gallery, data_root, repo, encoder, source)
    index.manifest["encoder"] = encoder_identity(repo, encoder)
    return cosine
