"""The served search model `asen_search` on a real tritonserver: the same top 10 as local
search for every query of the test split, clear errors for bad queries while the server
keeps serving, and a gallery from another encoder refused at load."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from asen.client.search import ServedSearch
from asen.client.server import free_port, free_ports, start_server
from asen.export.encoders import OnnxEncoder
from asen.export.search_model import INDEX_DIR, SEARCH_MODEL
from tritonclient.utils import InferenceServerException

from asen import AsenError
from asen.data.splits import open_dataset
from asen.search import SearchIndex, query
from tests.client.search_world import invoke, serving_search_repo


@pytest.fixture(scope="module")
def world(repo, synth, tmp_path_factory) -> dict:
    with serving_search_repo(repo, synth, tmp_path_factory.mktemp("served")) as world:
        yield world


@pytest.fixture(scope="module")
def served(world):
    with ServedSearch(world["server"].grpc_url) as client:
        yield client


def test_same_top10_as_local_search_for_every_test_query(world, served) -> None:
    index = SearchIndex.load(world["index"])
    encoder = OnnxEncoder(world["repo"] / "asen_onnx" / "1" / "model.onnx", "cpu")
    entries = open_dataset(world["data"], encoder.info.attributes).eval_entries("test")
    assert len(entries.queries) > 0
    for image_id, attribute, _ in entries.queries:
        image = world["data"] / entries.files[image_id]
        _, local = query(encoder, index, image, attribute=int(attribute), k=10)
        remote = served.search(image.read_bytes(), index.names[attribute], 10)
        assert [h.image_id for h in remote] == [h.image_id for h in local], image
        assert [h.path for h in remote] == [h.path for h in local]
        assert [h.value for h in remote] == [h.value for h in local]
        np.testing.assert_allclose([h.score for h in remote], [h.score for h in local], atol=1e-5)
        assert remote[0].image_id == image_id  # the query is in the gallery: it comes first


def test_cli_served_search_equals_local_cli(world, synth, tmp_path) -> None:
    image = sorted((synth / "images" / "test").iterdir())[3]
    local, remote = tmp_path / "local.json", tmp_path / "remote.json"
    invoke(
        "search",
        image,
        "--attr",
        "sleeve_length",
        "--index",
        world["index"],
        "--model",
        world["repo"],
        "--backend",
        "onnx",
        "--device",
        "cpu",
        "--json",
        local,
    )
    out = invoke(
        "search",
        image,
        "--attr",
        "1",
        "--backend",
        "triton",
        "--url",
        world["server"].grpc_url,
        "--json",
        remote,
    )
    assert "same sleeve_length (triton)" in out
    assert json.loads(remote.read_text()) != []
    ids = [[h["image_id"] for h in json.loads(p.read_text())] for p in (local, remote)]
    assert ids[0] == ids[1]


def _raw_infer(url: str, inputs: dict[str, np.ndarray]) -> InferenceServerException:
    client = grpcclient.InferenceServerClient(url)
    tensors = []
    for name, array in inputs.items():
        dtype = {np.dtype(object): "BYTES", np.dtype(np.int32): "INT32"}.get(array.dtype, "UINT8")
        tensors.append(grpcclient.InferInput(name, list(array.shape), dtype))
        tensors[-1].set_data_from_numpy(array)
    with pytest.raises(InferenceServerException) as info:
        client.infer(SEARCH_MODEL, tensors)
    client.close()
    return info.value


@pytest.mark.parametrize(
    ("attribute", "k", "image", "message"),
    [
        ("hem", 5, "file", "unknown attribute 'hem'; valid: collar_design, sleeve_length"),
        ("7", 5, "file", "unknown attribute '7'"),
        ("pattern", 0, "file", "k 0 out of range (1..1000)"),
        ("pattern", 1001, "file", "k 1001 out of range (1..1000)"),
        ("pattern", 5, b"GIF89a but not really", "image_bytes: cannot decode image"),
        ("pattern", 5, b"\x89PNG" + bytes(11 * 2**20), "over the 10485760-byte limit"),
    ],
)
def test_bad_queries_are_invalid_argument_and_the_server_keeps_serving(
    world, served, synth, attribute, k, image, message
) -> None:
    good = sorted((synth / "images" / "test").iterdir())[0].read_bytes()
    blob = good if image == "file" else image
    with pytest.raises(
        AsenError,
        match="^asen_search: .*"
        + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\."),
    ) as info:
        served.search(blob, attribute, k)
    assert "\n" not in str(info.value)
    error = _raw_infer(
        world["server"].grpc_url,
        {
            "image_bytes": np.array([[blob]], dtype=object),
            "attribute": np.array([[attribute.encode()]], dtype=object),
            "k": np.array([[k]], dtype=np.int32),
        },
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert world["server"].alive()
    assert len(served.search(good, "pattern", 3)) == 3  # still serving


def test_pixels_query_and_bad_shapes(world, served, synth) -> None:
    from asen.data.images import load_image

    image = sorted((synth / "images" / "test").iterdir())[5]
    pixels = load_image(image, 128)
    by_pixels = served.search(pixels, "garment_length", 5)
    by_bytes = served.search(image.read_bytes(), "garment_length", 5)
    assert [h.image_id for h in by_pixels] == [h.image_id for h in by_bytes]
    with pytest.raises(AsenError, match="unexpected shape for input 'image'"):  # Triton's check
        served.search(pixels[:, :64], "garment_length", 5)
    error = _raw_infer(
        world["server"].grpc_url,
        {"attribute": np.array([[b"0"]], dtype=object), "k": np.array([[3]], dtype=np.int32)},
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "send exactly one of image_bytes" in error.message()


def test_unreachable_and_unserved(world) -> None:
    with pytest.raises(AsenError, match="unreachable"):
        ServedSearch(f"127.0.0.1:{free_port()}")
    with pytest.raises(AsenError, match="model nope is not served"):
        ServedSearch(world["server"].grpc_url, model="nope")


def test_gallery_of_another_encoder_is_refused_at_load(world, tmp_path) -> None:
    models = tmp_path / "models"
    shutil.copytree(world["repo"], models, ignore=shutil.ignore_patterns("*.log"))
    manifest = models / SEARCH_MODEL / "1" / INDEX_DIR / "manifest.json"
    data = json.loads(manifest.read_text())
    for key in ("checkpoint_sha256", "artifact_sha256"):  # as if another model embedded it
        if data["encoder"].get(key):
            data["encoder"][key] = "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(AsenError) as info:
        with start_server(models, log_file=tmp_path / "log", timeout=60, **free_ports()):
            pass
    line = str(info.value)
    assert "model asen_search failed to load" in line
    assert re.search(
        r"the gallery was embedded by asen_onnx fp32 (checkpoint|artifact) 0{12}, but", line
    )
    assert "\n" not in line
