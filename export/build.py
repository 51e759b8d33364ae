"""`export_model`: checkpoint -> verified ONNX graphs of every requested precision (and
TensorRT plans) with their Triton configs, switched into the model repository as one set.

The fp32 graph is exported from PyTorch and checked on probe images; FP16 and INT8 graphs
are made from it (`export.precision`); every graph (and plan) is verified against PyTorch
fp32 on the verification dataset or, without one, on probe images (`export.verify`).
Everything is written into a staging folder inside the repository and switched in only
after all of it passed (`export.staging`), so a failed or killed export leaves the
repository as it was.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from asen.export import layout, staging, versions
from asen.export.calibrate import CalibrationSource, calibration_set, check_attributes
from asen.export.deployment import DeploymentOptions
from asen.export.encoders import OnnxEncoder, TrtEncoder
from asen.export.onnx import OPSET, check_onnx, export_onnx
from asen.export.precision import ACTIVATIONS, parse_precisions, to_fp16, to_int8
from asen.export.release import TRITON_RELEASE
from asen.export.repository import write_repository
from asen.export.tensorrt import build_engine, require_tensorrt
from asen.export.verify import (
    ONNX_TOLERANCE,
    TRT_TOLERANCE,
    DatasetCheck,
    Parity,
    Tolerance,
    check_all_graph,
    check_parity,
    tolerance_for,
)

import asen
from asen import AsenError
from asen.atomic import file_sha256
from asen.checkpoint import load_model
from asen.data.splits import open_dataset
from asen.encoders import Encoder, TorchEncoder
from asen.model.shape import ModelInfo

Report = Callable[[str], None]
OWNED_ENTRIES = {"config.pbtxt", "configs", "warmup", versions.MANIFEST}  # and versions
VERIFY_SPLIT = "valid"


@dataclass(frozen=True)
class Options:
    """What to export and how to check it (`asen export` options)."""

    name: str = "asen"
    precisions: tuple[str, ...] = ("fp32",)
    trt: bool = False
    max_batch: int = 64
    calibrate: CalibrationSource | None = None
    verify: Path | None = None  # default: the calibration root; None: probe images
    max_map_drop: float | None = None
    min_cosine: float | None = None
    checkpoint_sha256: str = ""  # recorded in every model.json
    all_graph: bool = False  # also export the all-attributes graphs (`<name>_all_onnx`...)
    deployment: DeploymentOptions = DeploymentOptions()
    model_versions: versions.VersionRequest = versions.VersionRequest()

    @property
    def verify_root(self) -> Path | None:
        return self.verify or (self.calibrate.root if self.calibrate else None)


def _check_repo(repo: Path, name: str) -> None:
    """The repository must be a folder, and its folders of this model set asen's own."""
    if repo.exists() and not repo.is_dir():
        raise AsenError(f"{repo}: is a file, not a model repository folder")
    for model in layout.owned_models(name):
        folder = repo / model
        if folder.exists() and not folder.is_dir():
            raise AsenError(f"{folder}: is a file where export writes model {model}")
        foreign = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        foreign = [n for n in foreign if n not in OWNED_ENTRIES and not n.isdigit()]
        if foreign:
            raise AsenError(
                f"{folder}: holds {', '.join(foreign)}, which asen did not write; move it away "
                "before exporting (export replaces this model folder as a whole)"
            )


def _check_request(repo: Path, opts: Options, report: Report) -> None:
    """Everything that can be rejected before reading the checkpoint or writing anything."""
    if opts.max_batch < 1:
        raise AsenError(f"--max-batch {opts.max_batch}: must be at least 1")
    layout.check_name(opts.name)
    if "int8" in opts.precisions and opts.calibrate is None:
        raise AsenError(
            "--precision int8 needs calibration images: add --calibrate ROOT (a dataset in "
            "the split format, e.g. the training data)"
        )
    if opts.calibrate is not None:
        opts.calibrate.check()
    if opts.verify is not None and not opts.verify.is_dir():
        raise AsenError(f"--verify {opts.verify}: dataset root not found")
    for option, value in (("--max-map-drop", opts.max_map_drop), ("--min-cosine", opts.min_cosine)):
        if value is not None and not 0 <= value <= 1:
            raise AsenError(f"{option} {value}: must be between 0 and 1")
    _check_repo(repo, opts.name)
    opts.deployment.check(trt=opts.trt, max_batch=opts.max_batch)
    opts.model_versions.check(repo, opts.name, report)
    if opts.trt:
        require_tensorrt()


def _open_repository(repo: Path, report: Report) -> list[Path]:
    """Create the repository if needed (returns the folders created) and clean up after
    killed exports."""
    created = [p for p in (repo, *repo.parents) if not p.exists()]
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AsenError(f"{repo}: cannot create the model repository ({e.strerror})") from None
    try:
        for stale in staging.recover(repo):
            report(f"removed {stale.name}, left by an interrupted export (repository restored)")
    except OSError as e:
        raise AsenError(f"{repo}: cannot write to the model repository ({e.strerror})") from None
    return created


class _Verifier:
    """Checks each graph or plan against PyTorch fp32: on the dataset's valid split, else on
    probe images."""

    def __init__(self, reference: Encoder, root: Path | None, report: Report):
        self.reference, self.dataset = reference, None
        self.source = "probe images"
        if root is not None:
            dataset = open_dataset(root)
            check_attributes(dataset, reference.info, "--verify")
            report(f"PyTorch fp32 on {root} ({VERIFY_SPLIT} split), the reference")
            self.dataset = DatasetCheck(reference, dataset, VERIFY_SPLIT)
            self.source = f"{Path(root).resolve()} ({VERIFY_SPLIT} split)"

    def check(self, candidate: Encoder, tol: Tolerance, what: str) -> Parity:
        if self.dataset is None:
            return check_parity(self.reference, candidate, tol, what)
        return self.dataset.check(candidate, tol, what)


def _graph_paths(new: Path, source: Path, name: str, precisions: Iterable[str]) -> dict:
    """(precision, engine) -> where that graph is staged; the fp32 graph is `source`."""
    paths = {("fp32", "any"): source}
    for p in precisions:
        if p == "fp16":
            paths[(p, "any")] = layout.in_model(new, layout.onnx_model(name, p))
        elif p == "int8":
            for engine in ("cpu", "tensorrt"):
                model = layout.onnx_model(name, p, tensorrt=engine == "tensorrt")
                paths[(p, engine)] = layout.in_model(new, model)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    return paths


def _make_graphs(
    model,
    info: ModelInfo,
    paths: dict,
    opts: Options,
    calibration,
    report: Report,
    graph: str = "pair",
) -> dict:
    """Export the fp32 graph (`graph="all"`: the all-attributes graph) and convert it;
    returns (precision, engine) -> sidecar fields."""
    source = paths[("fp32", "any")]
    what = "all-attributes graph" if graph == "all" else "model"
    report(
        f"exporting stage-{info.stage} {what} (S={info.source_size}, D={info.dim}) "
        f"to ONNX opset {OPSET}"
    )
    export_onnx(model, info, source, opts.max_batch, graph=graph)
    staging.fault_point("onnx")
    fields = {("fp32", "any"): {"precision": "fp32", "producer": f"torch.onnx {torch.__version__}"}}
    if "fp16" in opts.precisions:
        report("converting to mixed FP16 (fp32 inputs and outputs)")
        fields[("fp16", "any")] = to_fp16(source, paths[("fp16", "any")])
    if "int8" in opts.precisions:
        images, attributes, record = calibration
        report(f"calibrating INT8 on {len(images)} images of {opts.calibrate.root}")
        targets = {e: paths[("int8", e)] for e in ("cpu", "tensorrt")}
        shared = {**to_int8(source, targets, images, attributes), **record}
        for engine in targets:
            fields[("int8", engine)] = {**shared, "int8_activations": ACTIVATIONS[engine]}
    for key, path in paths.items():
        if key in fields:
            check_onnx(path, info)  # every graph keeps the contract's inputs and outputs
    staging.fault_point("converted")
    return fields


def _verify_graphs(
    paths: dict,
    fields: dict,
    verifier: _Verifier,
    opts: Options,
    report: Report,
    graph: str = "pair",
):
    """Verify every graph against PyTorch fp32 and write its `model.json`."""
    info = verifier.reference.info
    for (precision, engine), path in paths.items():
        what = f"ONNX Runtime {precision}" + (f" ({engine} graph)" if engine != "any" else "")
        what += " all-attributes graph" if graph == "all" else ""
        if precision == "fp32":  # the exact check on probes first: the source of every graph
            check_parity(verifier.reference, OnnxEncoder(path, "cpu"), ONNX_TOLERANCE, what)
        tol = tolerance_for(precision, max_map_drop=opts.max_map_drop, min_cosine=opts.min_cosine)
        parity = verifier.check(OnnxEncoder(path, "cpu"), tol, what)
        report(f"{what} vs PyTorch fp32: {parity}")
        sidecar = {
            **info.to_metadata(opts.max_batch),
            "onnx_opset": str(OPSET),
            "asen_export": f"asen {asen.__version__}",
            "checkpoint_sha256": opts.checkpoint_sha256,
            **fields[(precision, engine)],
            **({"graph": "all"} if graph == "all" else {}),
            "verified_on": verifier.source,
            **parity.figures(),
        }
        layout.write_sidecar(path, sidecar)
    staging.fault_point("verified")


def _build_plans(new: Path, paths: dict, verifier: _Verifier, opts: Options, report: Report):
    """A strongly typed TensorRT engine from each precision's graph, verified like them."""
    info = verifier.reference.info
    for precision in opts.precisions:
        graph = paths[(precision, "tensorrt" if precision == "int8" else "any")]
        plan = layout.in_model(new, layout.plan_model(opts.name, precision), "trt")
        plan.parent.mkdir(parents=True)
        report(f"building TensorRT {precision} engine (strongly typed, batch 1..{opts.max_batch})")
        meta = build_engine(graph, plan, info, opts.max_batch, precision)
        report(TRITON_RELEASE.plan_compatibility(meta["tensorrt_version"]))
        meta["checkpoint_sha256"] = opts.checkpoint_sha256
        if opts.name.endswith(layout.ALL):  # the plans of the all-attributes graphs
            meta["graph"] = "all"
        layout.write_sidecar(plan, meta)
        base = tolerance_for(precision, max_map_drop=opts.max_map_drop)
        tol = replace(TRT_TOLERANCE[precision], max_map_drop=base.max_map_drop)
        parity = verifier.check(TrtEncoder(plan), tol, f"TensorRT {precision}")
        report(f"TensorRT {precision} vs PyTorch fp32: {parity}")
        layout.write_sidecar(plan, {**meta, "verified_on": verifier.source, **parity.figures()})
    staging.fault_point("plans")


def _stage_all(
    stage: staging.Staging,
    verifier: _Verifier,
    opts: Options,
    calibration,
    report: Report,
    *,
    pair_source: Path,
) -> dict:
    """The all-attributes graphs (`<name>_all_onnx...`) beside the pair graphs: exported,
    converted, checked against the fp32 pair graph per attribute and verified against
    PyTorch like them. Returns their paths ({} with `all_graph` off)."""
    if not opts.all_graph:
        return {}
    model, info = verifier.reference.model, verifier.reference.info
    name = layout.all_name(opts.name)
    source = (
        layout.in_model(stage.new, layout.onnx_model(name))
        if "fp32" in opts.precisions
        else stage.path / "source" / f"{name}.onnx"
    )
    paths = _graph_paths(stage.new, source, name, opts.precisions)
    fields = _make_graphs(model, info, paths, opts, calibration, report, graph="all")
    parity = check_all_graph(OnnxEncoder(source, "cpu"), OnnxEncoder(pair_source, "cpu"))
    report(f"all-attributes graph vs the pair graph (ONNX Runtime fp32), per attribute: {parity}")
    if "fp32" not in opts.precisions:
        del paths[("fp32", "any")]
    _verify_graphs(paths, fields, verifier, opts, report, graph="all")
    return paths


def _stage(
    stage: staging.Staging, verifier: _Verifier, opts: Options, calibration, report: Report
) -> set[Path]:
    """Everything of the export, written into `stage.new`."""
    model, info = verifier.reference.model, verifier.reference.info
    source = (
        layout.in_model(stage.new, layout.onnx_model(opts.name))
        if "fp32" in opts.precisions
        else stage.path / "source" / "model.onnx"
    )
    paths = _graph_paths(stage.new, source, opts.name, opts.precisions)
    fields = _make_graphs(model, info, paths, opts, calibration, report)
    if "fp32" not in opts.precisions:
        del paths[("fp32", "any")]  # the source of the others, not installed
    _verify_graphs(paths, fields, verifier, opts, report)
    all_paths = _stage_all(stage, verifier, opts, calibration, report, pair_source=source)
    if opts.trt:
        _build_plans(stage.new, paths, verifier, opts, report)
        if all_paths:
            all_opts = replace(opts, name=layout.all_name(opts.name))
            _build_plans(stage.new, all_paths, verifier, all_opts, report)
    write_repository(
        stage.new,
        opts.name,
        opts.trt,
        precisions=list(opts.precisions),
        deployment=opts.deployment,
    )
    version, carried = versions.install(
        stage.repo, stage.new, opts.name, opts.model_versions, report
    )
    report(f"model version {version}")
    staging.fault_point("configs")
    return carried  # earlier versions, kept: not written by this export


def _remove_created(created: list[Path]) -> None:
    """Remove the folders this export created, when nothing was installed in them."""
    if created and not any(p.is_file() for p in created[-1].rglob("*")):
        shutil.rmtree(created[-1], ignore_errors=True)


def export_model(
    checkpoint: str | Path,
    repo: str | Path = "triton_models",
    *,
    name: str = "asen",
    precisions: Iterable[str] = ("fp32",),
    trt: bool = False,
    max_batch: int = 64,
    calibrate: CalibrationSource | None = None,
    verify: str | Path | None = None,
    max_map_drop: float | None = None,
    min_cosine: float | None = None,
    deployment: DeploymentOptions | None = None,
    model_versions: versions.VersionRequest | None = None,
    all_graph: bool = False,
    report: Report = lambda line: None,
) -> list[Path]:
    """Export `checkpoint` into the model repository `repo`: per precision its verified ONNX
    graph(s) (`<name>_onnx`, `<name>_onnx_fp16`, `<name>_onnx_int8` + `_int8_trt`), with
    `trt` their TensorRT plans, each with a `model.json`, and the Triton configs around them
    (`export.repository`). The repository's previous models of `name` are replaced as one
    set; `deployment` says how Triton runs the encoder models, `model_versions` which
    version the export writes beside which kept ones (`export.versions`); `all_graph`
    adds the all-attributes graphs (`<name>_all_onnx`..., image -> [B, A, D]) in every
    precision, with their configs and `<name>_all` ensembles. Returns the files
    installed; `report` receives progress lines."""
    repo = Path(repo)
    opts = Options(
        name=name,
        precisions=tuple(parse_precisions(precisions)),
        trt=trt,
        max_batch=max_batch,
        calibrate=calibrate,
        verify=Path(verify) if verify is not None else None,
        max_map_drop=max_map_drop,
        min_cosine=min_cosine,
        deployment=deployment or DeploymentOptions(),
        model_versions=model_versions or versions.VersionRequest(),
        all_graph=all_graph,
    )
    _check_request(repo, opts, report)
    model, ckpt = load_model(checkpoint, "cpu")
    info = ModelInfo.from_checkpoint(ckpt)
    reference = TorchEncoder(model, info, torch.device("cpu"), source=str(checkpoint))
    opts = replace(opts, checkpoint_sha256=file_sha256(Path(checkpoint)))
    calibration = calibration_set(opts.calibrate, info) if "int8" in opts.precisions else None
    verifier = _Verifier(reference, opts.verify_root, report)
    created = _open_repository(repo, report)
    try:
        with staging.Staging(repo) as stage:
            try:
                staging.fault_point("staging")
                carried = _stage(stage, verifier, opts, calibration, report)
            except OSError as e:
                raise AsenError(
                    f"{repo}: cannot stage the export ({e.strerror or e}); "
                    "the repository is unchanged"
                ) from None
            staged = {p.relative_to(stage.new) for p in stage.new.rglob("*") if p.is_file()}
            written = sorted(staged - carried)
            removed = stage.switch(layout.owned_models(opts.name))
    except BaseException:
        _remove_created(created)
        raise
    for model in removed:
        report(f"removed {repo / model}, from the export this one replaces")
    return [repo / p for p in written]
