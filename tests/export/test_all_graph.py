"""The all-attributes graph (`<name>_all_onnx...`: image -> embedding [B, A, D]) exported
beside the pair graph in every precision, verified, with Triton configs and ensembles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from asen.export.build import export_model
from asen.export.calibrate import CalibrationSource
from asen.export.encoders import OnnxEncoder
from asen.export.layout import all_variant, in_model, onnx_model
from asen.export.repository import read_config
from asen.export.verify import check_all_graph, compare, probe_inputs, tolerance_for
from tritonclient.grpc import model_config_pb2 as mc

from asen import AsenError
from asen.config import load_config
from asen.encoders import TorchEncoder
from asen.model.asen import ASENPP

from .conftest import ATTRIBUTES, LOOSE

ALL_MODELS = ["asen_all_onnx", "asen_all_onnx_fp16", "asen_all_onnx_int8", "asen_all_onnx_int8_trt"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, checkpoints, synth):
    out = tmp_path_factory.mktemp("all") / "models"
    export_model(
        checkpoints[2],
        out,
        precisions=["fp32", "fp16", "int8"],
        max_batch=8,
        calibrate=CalibrationSource(synth, "train", 8),
        all_graph=True,
        **LOOSE,
    )
    return out


def test_every_precision_has_its_verified_all_attributes_graph(repo) -> None:
    for model in ALL_MODELS:
        artifact = repo / model / "1" / "model.onnx"
        meta = json.loads((artifact.parent / "model.json").read_text())
        assert meta["graph"] == "all" and len(meta["checkpoint_sha256"]) == 64
        assert float(meta["parity_min_cosine"]) >= LOOSE["min_cosine"]
        assert "map" in meta  # verified on the dataset split like the pair graphs
        encoder = OnnxEncoder(artifact, "cpu")
        assert encoder.graph == "all" and encoder.has_all_graph
        assert [i.name for i in encoder.session.get_inputs()] == ["image"]
        assert encoder.session.get_outputs()[0].shape[1:] == [len(ATTRIBUTES), encoder.info.dim]


def test_fp32_all_graph_equals_the_pair_graph_per_attribute(repo) -> None:
    encoder = OnnxEncoder.open(str(repo), device="cpu")  # the repository: the pair graph
    assert encoder.path == in_model(repo, "asen_onnx") and encoder.has_all_graph
    images, attributes = probe_inputs(encoder.info)
    count = len(ATTRIBUTES)
    together = encoder.encode_all(np.ascontiguousarray(images[::count]))
    pairs = encoder.encode(images, attributes).reshape(together.shape)
    cosine = (together * pairs).sum(axis=2) / (
        np.linalg.norm(together, axis=2) * np.linalg.norm(pairs, axis=2)
    )
    assert cosine.min() >= 0.99999


def test_int8_all_graph_is_within_the_int8_bounds(repo, checkpoints) -> None:
    reference = TorchEncoder.from_checkpoint(checkpoints[2], "cpu")
    images, attributes = probe_inputs(reference.info)
    count = len(ATTRIBUTES)
    expected = reference.encode(images, attributes)
    for engine in (False, True):
        graph = in_model(repo, onnx_model("asen_all", "int8", tensorrt=engine))
        every = OnnxEncoder(graph, "cpu").encode_all(np.ascontiguousarray(images[::count]))
        parity = compare(expected, every.reshape(len(expected), -1))
        assert parity.within(tolerance_for("int8", **LOOSE)), parity
        assert parity.mean_cosine >= 0.99


def test_triton_configs_and_bytes_ensembles_of_the_all_graphs(repo) -> None:
    dims = [len(ATTRIBUTES), 256]
    for model in ALL_MODELS:
        config = read_config(repo / model / "config.pbtxt")
        assert [t.name for t in config.input] == ["image"]
        assert [(t.name, list(t.dims)) for t in config.output] == [("embedding", dims)]
        assert config.parameters["graph"].string_value == "all"
    for ensemble, encoder in (
        ("asen_all", "asen_all_onnx"),
        ("asen_all_fp16", "asen_all_onnx_fp16"),
        ("asen_all_int8", "asen_all_onnx_int8"),
    ):
        config = read_config(repo / ensemble / "config.pbtxt")
        assert config.platform == "ensemble"
        assert [(t.name, t.data_type) for t in config.input] == [("image_bytes", mc.TYPE_STRING)]
        assert list(config.output[0].dims) == dims
        steps = [s.model_name for s in config.ensemble_scheduling.step]
        assert steps == ["asen_preprocess", encoder]


def test_an_export_without_it_writes_no_all_models(repos) -> None:
    assert not list(repos[2].glob("*_all*"))
    assert not OnnxEncoder.open(str(repos[2]), device="cpu").has_all_graph


def test_a_graph_that_differs_from_the_pairs_is_refused(repo) -> None:
    every = OnnxEncoder(in_model(repo, "asen_all_onnx"), "cpu")
    torch.manual_seed(99)
    other = ASENPP(load_config(["small"], ["model.threshold=0.8"]).model, len(ATTRIBUTES), 2)
    pairs = TorchEncoder(other.eval(), every.info)
    with pytest.raises(AsenError, match="all-attributes graph vs the pair graph"):
        check_all_graph(every, pairs)


@pytest.mark.parametrize(
    ("model", "expected"),
    [("asen", "asen_all"), ("asen_onnx_int8_trt", "asen_all_onnx_int8_trt"),
     ("asen_trt_fp16", "asen_all_trt_fp16"), ("asen_all_onnx", None)],
)  # fmt: skip
def test_the_all_model_beside_each_model(model, expected) -> None:
    assert all_variant(model) == expected


def test_asen_export_all_attributes_writes_the_all_graph(checkpoints, tmp_path) -> None:
    from typer.testing import CliRunner

    from asen.cli import app

    repo = tmp_path / "models"
    args = ["export", str(checkpoints[1]), "--repo", str(repo), "--max-batch", "4"]
    result = CliRunner().invoke(app, [*args, "--all-attributes"])
    assert result.exit_code == 0, result.output
    assert (repo / "asen_all_onnx" / "config.pbtxt").is_file()
    assert OnnxEncoder.open(str(repo), device="cpu").has_all_graph
