"""deploy/catalog-embed-job.yaml: an Indexed Job whose pods each embed one part of the
catalog with options `asen catalog embed` really has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer.main
import yaml

from asen.cli import app

JOB = Path(__file__).resolve().parents[1] / "deploy" / "catalog-embed-job.yaml"


def _embed_options() -> set[str]:
    command = typer.main.get_command(app).commands["catalog"].commands["embed"]
    return {opt for param in command.params for opt in param.opts}


def test_the_job_shards_the_catalog_over_its_completions() -> None:
    job = yaml.safe_load(JOB.read_text())
    spec = job["spec"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    words = shlex.split(container["args"][0])
    assert words[:4] == ["exec", "asen", "catalog", "embed"]
    shard = words[words.index("--shard") + 1]
    assert re.fullmatch(r"\$JOB_COMPLETION_INDEX/(\d+)", shard)
    assert int(shard.split("/")[1]) == spec["completions"] == spec["parallelism"]
    assert "--resume" in words  # a retried pod carries on its part
    flags = {w for w in words if w.startswith("--")}
    assert flags <= _embed_options(), flags - _embed_options()
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert all(words[words.index(f) + 1].startswith(tuple(mounts)) for f in ("--out", "--images"))
