"""deploy/: the KServe manifests, validated with jsonschema against KServe's own CRD schemas
(tests/schemas/, the openAPIV3Schema of each CRD as KServe v0.20.0 publishes it; the
`$comment` in each file names its source). Unknown fields are errors, as with `kubectl apply`
(strict field validation): every object schema that lists its properties and neither
preserves unknown fields nor declares additionalProperties is closed before validating."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parent.parent
SCHEMAS = Path(__file__).parent / "schemas"
INFERENCE_SERVICE = ROOT / "deploy" / "kserve-inferenceservice.yaml"
SERVING_RUNTIME = ROOT / "deploy" / "kserve-servingruntime.yaml"
KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-v1beta1.json",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "clusterservingruntime-v1alpha1.json",
}
# KServe's validation webhook: an InferenceService name is a DNS-1035 label
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def strict(schema: dict) -> dict:
    """`schema` with unknown fields refused where the API server refuses them."""
    schema = copy.deepcopy(schema)

    def close(node) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def crd_validator(manifest: dict) -> jsonschema.Draft4Validator:
    """The validator of the manifest's apiVersion and kind (OpenAPI v3 schemas: draft 4)."""
    name = KINDS[(manifest.get("apiVersion"), manifest.get("kind"))]
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft4Validator(strict(schema))


def errors_of(manifest: dict) -> list[str]:
    found = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(manifest).iter_errors(manifest)
    ]
    if manifest["kind"] == "InferenceService" and not ISVC_NAME.match(manifest["metadata"]["name"]):
        found.append(f"metadata.name: {manifest['metadata']['name']!r} is not a DNS-1035 label")
    return found


@pytest.fixture
def service() -> dict:
    return yaml.safe_load(INFERENCE_SERVICE.read_text())


@pytest.fixture
def runtime() -> dict:
    return yaml.safe_load(SERVING_RUNTIME.read_text())


def test_the_vendored_schemas_name_their_source() -> None:
    for name in KINDS.values():
        schema = json.loads((SCHEMAS / name).read_text())
        assert "KServe v0.20.0" in schema["$comment"]
        jsonschema.Draft4Validator.check_schema(schema)


def test_manifests_match_the_kserve_crds(service: dict, runtime: dict) -> None:
    assert errors_of(service) == []
    assert errors_of(runtime) == []


def test_the_service_runs_the_asen_runtime_with_the_full_repository(
    service: dict, runtime: dict
) -> None:
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = [(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]]
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].startswith("s3://")
    (container,) = runtime["spec"]["containers"]
    args = container["args"]
    # every model of the repository: the ensemble, the encoders and asen_search
    assert "--load-model=*" in args and "--model-control-mode=explicit" in args
    assert not any(a.startswith("--load-model=") and a != "--load-model=*" for a in args)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ASEN_REPO"] == "/mnt/models"  # where KServe's storage initializer puts it
    # gRPC on the port Triton opens; Knative names HTTP/2 ports h2c
    assert container["ports"] == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
    assert "--grpc-port=9000" in args
    resources = model["resources"]
    gpus = resources["limits"]["nvidia.com/gpu"]
    assert int(gpus) >= 1 and resources["requests"]["nvidia.com/gpu"] == gpus  # k8s: equal
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


def _service_change(edit):
    return lambda service, runtime: (service, edit(service))


def _runtime_change(edit):
    return lambda service, runtime: (runtime, edit(runtime))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            _service_change(lambda m: m["spec"]["predictor"]["model"].update(storageURI="s3://x")),
            "Additional properties are not allowed ('storageURI'",
        ),
        (_service_change(lambda m: m["spec"]["predictor"].update(minReplicas="1")), "not of type"),
        (
            _service_change(lambda m: m["spec"].pop("predictor")),
            "'predictor' is a required property",
        ),
        (
            _service_change(lambda m: m["spec"]["predictor"].update(scaleMetric="gpu")),
            "is not one of",
        ),
        (_service_change(lambda m: m["metadata"].update(name="Asen_Model")), "DNS-1035"),
        (
            _runtime_change(lambda m: m["spec"]["containers"][0]["ports"][0].pop("containerPort")),
            "'containerPort' is a required property",
        ),
        (
            _runtime_change(lambda m: m["spec"]["containers"][0].update(args="--grpc-port=9000")),
            "not of type 'array'",
        ),
        (
            _runtime_change(lambda m: m["spec"].update(supportedModelFormat=[])),
            "Additional properties are not allowed ('supportedModelFormat'",
        ),
    ],
)
def test_the_schema_catches_mistakes(service: dict, runtime: dict, change, error: str) -> None:
    manifest, _ = change(service, runtime)
    errors = errors_of(manifest)
    assert len(errors) == 1 and error in errors[0], errors
