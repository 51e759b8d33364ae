"""deploy/kserve-inferenceservice.yaml: parsed with PyYAML and validated against a JSON
schema written here from KServe's v1beta1 Go types (pkg/apis/serving/v1beta1: PredictorSpec,
ComponentExtensionSpec, PredictorExtensionSpec with its inline corev1.Container, and the
inline corev1.PodSpec). jsonschema is not a dependency, so `_validate` implements the
subset of JSON Schema keywords the schema uses: type, properties, required,
additionalProperties, items, enum, const, pattern, minimum, maximum."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

MANIFEST = Path(__file__).parent.parent / "deploy" / "kserve-inferenceservice.yaml"

QUANTITY = {"type": ["string", "integer", "number"], "pattern": r"^[0-9.]+([eE][0-9]+)?[a-zA-Z]*$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
STRINGS = {"type": "array", "items": {"type": "string"}}
OBJECT = {"type": "object"}
OBJECTS = {"type": "array", "items": OBJECT}

CONTAINER_PORT = {
    "type": "object",
    "required": ["containerPort"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$"},
        "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
        "hostPort": {"type": "integer"},
        "hostIP": {"type": "string"},
    },
}
ENV_VAR = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "value": {"type": "string"}, "valueFrom": OBJECT},
}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "limits": {"type": "object", "additionalProperties": QUANTITY},
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "claims": OBJECTS,
    },
}
# corev1.Container, inline in PredictorExtensionSpec
CONTAINER_FIELDS = {
    "name": {"type": "string"},
    "image": {"type": "string"},
    "command": STRINGS,
    "args": STRINGS,
    "workingDir": {"type": "string"},
    "ports": {"type": "array", "items": CONTAINER_PORT},
    "envFrom": OBJECTS,
    "env": {"type": "array", "items": ENV_VAR},
    "resources": RESOURCES,
    "resizePolicy": OBJECTS,
    "restartPolicy": {"type": "string"},
    "volumeMounts": OBJECTS,
    "volumeDevices": OBJECTS,
    "livenessProbe": OBJECT,
    "readinessProbe": OBJECT,
    "startupProbe": OBJECT,
    "lifecycle": OBJECT,
    "terminationMessagePath": {"type": "string"},
    "terminationMessagePolicy": {"enum": ["File", "FallbackToLogsOnError"]},
    "imagePullPolicy": {"enum": ["Always", "Never", "IfNotPresent"]},
    "securityContext": OBJECT,
    "stdin": {"type": "boolean"},
    "stdinOnce": {"type": "boolean"},
    "tty": {"type": "boolean"},
}
PREDICTOR_EXTENSION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "storageUri": {"type": "string", "pattern": r"^(s3|gs|hdfs|webhdfs|pvc|https?|oci)://"},
        "runtimeVersion": {"type": "string"},
        "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
        "storage": OBJECT,
        **CONTAINER_FIELDS,
    },
}
# ComponentExtensionSpec, inline in PredictorSpec
COMPONENT_EXTENSION_FIELDS = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 1},
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
    "logger": OBJECT,
    "batcher": OBJECT,
    "labels": STRING_MAP,
    "annotations": STRING_MAP,
    "deploymentStrategy": OBJECT,
}
# corev1.PodSpec, inline in PredictorSpec
POD_SPEC_FIELDS = {
    **dict.fromkeys("affinity dnsConfig nodeSelector os overhead securityContext".split(), OBJECT),
    **dict.fromkeys(
        "containers ephemeralContainers hostAliases imagePullSecrets initContainers "
        "readinessGates resourceClaims schedulingGates tolerations topologySpreadConstraints "
        "volumes".split(),
        OBJECTS,
    ),
    **dict.fromkeys(
        "dnsPolicy hostname nodeName preemptionPolicy priorityClassName restartPolicy "
        "runtimeClassName schedulerName serviceAccount serviceAccountName subdomain".split(),
        {"type": "string"},
    ),
    **dict.fromkeys(
        "automountServiceAccountToken enableServiceLinks hostIPC hostNetwork hostPID hostUsers "
        "setHostnameAsFQDN shareProcessNamespace".split(),
        {"type": "boolean"},
    ),
    **dict.fromkeys(
        ["activeDeadlineSeconds", "priority", "terminationGracePeriodSeconds"], {"type": "integer"}
    ),
}
FRAMEWORKS = "sklearn xgboost tensorflow pytorch onnx huggingface pmml lightgbm paddle model"
PREDICTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "triton": PREDICTOR_EXTENSION,
        **dict.fromkeys(FRAMEWORKS.split(), OBJECT),
        "storageUris": OBJECTS,
        "workerSpec": OBJECT,
        **POD_SPEC_FIELDS,
        **COMPONENT_EXTENSION_FIELDS,
    },
}
INFERENCE_SERVICE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                # the name rule KServe's validation webhook applies
                "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {"predictor": PREDICTOR, "transformer": OBJECT, "explainer": OBJECT},
        },
    },
}
TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}


def _validate(value, schema: dict, path: str = "$") -> list[str]:
    """Errors of `value` against `schema` (the keyword subset named in the module docstring)."""
    if "const" in schema and value != schema["const"]:
        return [f"{path}: {value!r} is not {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {schema['enum']}"]
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        is_bool = isinstance(value, bool)
        if not any(isinstance(value, TYPES[k]) and (k == "boolean") == is_bool for k in kinds):
            return [f"{path}: {value!r} is not of type {schema['type']}"]
    errors = []
    if "pattern" in schema and not re.search(schema["pattern"], str(value)):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: {value} is below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: {value} is above {schema['maximum']}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        errors += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in properties:
                errors += _validate(item, properties[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unknown field {key}")
            elif isinstance(extra, dict):
                errors += _validate(item, extra, f"{path}.{key}")
    return errors


@pytest.fixture
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def test_manifest_matches_the_kserve_schema(manifest: dict) -> None:
    assert _validate(manifest, INFERENCE_SERVICE) == []


def test_manifest_fields(manifest: dict) -> None:
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1"
    assert manifest["kind"] == "InferenceService"
    predictor = manifest["spec"]["predictor"]
    triton = predictor["triton"]
    assert triton["storageUri"].startswith("s3://")
    assert re.fullmatch(r"\d{2}\.\d{2}-py3", triton["runtimeVersion"])  # an NGC release tag
    # gRPC on the port the runtime opens (--grpc-port=9000); Knative names HTTP/2 ports h2c
    assert triton["ports"] == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
    assert triton["protocolVersion"] == "grpc-v2"
    assert "--load-model=asen_trt" in triton["args"]
    resources = triton["resources"]
    gpus = resources["limits"]["nvidia.com/gpu"]
    assert int(gpus) >= 1 and resources["requests"]["nvidia.com/gpu"] == gpus  # k8s: equal
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda m: m["spec"]["predictor"]["triton"].update(storageURI="s3://x"), "unknown field"),
        (lambda m: m.update(apiVersion="serving.kserve.io/v1alpha1"), "is not"),
        (lambda m: m["spec"]["predictor"].update(minReplicas=-1), "below"),
        (lambda m: m["spec"]["predictor"]["triton"]["ports"][0].pop("containerPort"), "missing"),
        (lambda m: m["spec"]["predictor"]["triton"].update(protocolVersion="v3"), "one of"),
        (lambda m: m["metadata"].update(name="Asen_Model"), "does not match"),
    ],
)
def test_the_schema_catches_mistakes(manifest: dict, change, error: str) -> None:
    change(manifest)
    errors = _validate(manifest, INFERENCE_SERVICE)
    assert len(errors) == 1 and error in errors[0], errors
