"""`asen serve`, `asen bench serve` and `asen app`, and what the client layer adds to
`asen search` (queries to the served asen_search model)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from asen import AsenError
from asen.catalog.store import DEFAULT_COLLECTION
from asen.commands import search
from asen.commands.catalog import STORE_HELP, Collection, StoreToken
from asen.commands.options import (
    Backend,
    BackendName,
    Device,
    ServerAddress,
    TritonConnection,
    with_options,
)
from asen.commands.ui import console

if TYPE_CHECKING:
    from asen.client.server import ServerHandle


def _print_serving(handle: ServerHandle) -> None:
    """What `asen serve` serves, where, and how to stop it."""
    for choice in handle.choices:
        served = handle.versions.get(choice.model, [])
        version = "version " + ",".join(map(str, served)) if served else ""
        version += f" (serves {served[-1]} by default)" if len(served) > 1 else ""
        console.print(
            f"  {choice.model:<24} {version:<10} {choice.how}",
            markup=False,
            highlight=False,
        )
    console.print(
        f"HTTP {handle.http_url}  gRPC {handle.grpc_url}  metrics {handle.metrics_url}\n"
        f"ready: {', '.join(handle.models)}\nlog: {handle.log_file} (pid {handle.process.pid})"
        "\nCtrl-C to stop",
        highlight=False,
    )


class ModelControl(str, Enum):
    """`asen serve --model-control` (client/model_control.py)."""

    none = "none"
    explicit = "explicit"
    poll = "poll"


def serve(
    repo: Annotated[Path, typer.Option(help="Model repository (written by `asen export`).")] = Path(
        "triton_models"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=1, max=65535, help="gRPC port.")] = 8001,
    metrics_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Prometheus metrics port.")
    ] = 8002,
    log_file: Annotated[
        Path | None, typer.Option(help="Server log (default: tritonserver.log in --repo).")
    ] = None,
    model_control: Annotated[
        ModelControl,
        typer.Option(
            help="none: the repository is read once; explicit: `asen export/index --reload "
            "URL` loads new versions; poll: Triton rescans the repository (docs/operations.md)."
        ),
    ] = ModelControl.none,
) -> None:
    """Serve the model repository with a real tritonserver until Ctrl-C."""
    from asen.client.server import find_server, launch, serve_until_stopped

    binary = find_server()
    kind = "bundled in nvidia-pytriton" if binary.bundled else "on PATH"
    console.print(f"tritonserver ({kind}): {binary.path}", highlight=False)
    with console.status("starting tritonserver"):
        handle = launch(
            repo,
            host,
            http_port,
            grpc_port,
            metrics_port,
            log_file,
            model_control=model_control.value,
        )
    serve_until_stopped(handle, announce=functools.partial(_print_serving, handle))
    console.print("tritonserver stopped")


bench_app = typer.Typer(help="Load tests.", no_args_is_help=True)


@dataclass(frozen=True)
class BenchLoad:
    """`asen bench serve`: the load levels and how perf_analyzer measures each."""

    concurrency: Annotated[
        str | None,
        typer.Option(help="Concurrency levels: first, last and step, or one (8); default 1:16:1."),
    ] = None
    request_rate: Annotated[
        str | None,
        typer.Option(help="Sweep request rates instead (requests/s): 10:40:10, or one (20)."),
    ] = None
    request_distribution: Annotated[
        str, typer.Option(help="With --request-rate: constant or poisson arrivals.")
    ] = "constant"
    latency_threshold: Annotated[
        float | None,
        typer.Option(help="Stop the sweep after the first level whose p99 is over this (ms)."),
    ] = None
    measurement_interval: Annotated[
        int, typer.Option(help="perf_analyzer's measurement window (ms).")
    ] = 5000
    stability: Annotated[
        int, typer.Option(help="perf_analyzer's stability threshold (percent).")
    ] = 10


@bench_app.command("serve")
@with_options(server=ServerAddress, connection=TritonConnection, load=BenchLoad)
def bench_serve(
    model: Annotated[
        str,
        typer.Option(
            help="Served model: an encoder (asen_onnx), the asen ensemble or asen_search."
        ),
    ],
    model_version: Annotated[
        str | None, typer.Option(help="Model version (default: the server's latest).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 1,
    input_data: Annotated[
        Path | None,
        typer.Option(
            help="Dataset root: its test queries as inputs (default: random images, as PNG "
            "for the ensemble and asen_search)."
        ),
    ] = None,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Write perf_analyzer's CSV.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a throughput-latency plot (PNG).")
    ] = None,
    *,
    server: ServerAddress,
    connection: TritonConnection,
    load: BenchLoad,
) -> None:
    """Sweep concurrency or request rate on a running server with NVIDIA's perf_analyzer
    (real inputs; server queue and compute from Triton's statistics)."""
    from asen.client.perf import Target, parse_load, run_sweep
    from asen.client.perf_report import levels_table, threshold_note
    from asen.client.perf_report import plot as plot_levels

    if server.url is None:
        raise AsenError("--url is required: the server's HOST:PORT (gRPC or HTTP port)")
    sweep, rates = parse_load(load.concurrency, load.request_rate, load.request_distribution)
    protocol = server.protocol or "grpc"
    shared_memory = connection.shared_memory or "none"
    options = connection.options()
    target = Target(
        server.url, model, protocol, model_version or "", options["tls"], options["headers"] or {}
    )
    what = f"{rates}" if rates else f"concurrency {sweep}"
    with console.status(escape(f"perf_analyzer: {model} at {server.url}, {what}")):
        levels = run_sweep(
            target,
            sweep=sweep,
            rates=rates,
            latency_threshold_ms=load.latency_threshold,
            batch_size=batch_size,
            shared_memory=shared_memory,
            input_data=input_data,
            csv_out=csv_out,
            interval_ms=load.measurement_interval,
            stability=load.stability,
        )
    title = (
        f"{model} at {server.url} ({protocol}, batch {batch_size}, shared memory {shared_memory})"
    )
    console.print(levels_table(levels, title))
    for note in threshold_note(levels, load.latency_threshold), csv_out and f"wrote {csv_out}":
        if note:
            console.print(note, markup=False)
    if plot:
        plot_levels(levels, plot, f"{model} ({protocol}, batch {batch_size}, shm {shared_memory})")
        console.print(f"wrote {plot}", markup=False)


@dataclass(frozen=True)
class CatalogAppOptions:
    """`asen app --store`: the catalog page and JSON API instead of the served search."""

    # the store options of the catalog commands, with the store optional here
    store: Annotated[
        str | None, typer.Option("--store", help=f"{STORE_HELP} Serves its page and JSON API.")
    ] = None
    collection: Collection = DEFAULT_COLLECTION
    token: StoreToken = None
    encoder: Annotated[
        str | None, typer.Option(help="With --store: the photo encoder's model (see --backend).")
    ] = None
    backend: Backend = BackendName.torch
    device: Device = "auto"
    write_token: Annotated[
        str | None, typer.Option(help="With --store: bearer token the write endpoints require.")
    ] = None
    images: Annotated[
        Path | None, typer.Option(help="With --store: the root of the items' image paths.")
    ] = None


@with_options(server=ServerAddress, catalog=CatalogAppOptions)
def app(
    model: Annotated[str, typer.Option(help="Served search model.")] = "asen_search",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the page.")] = 8080,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Gallery dataset root (default: the one the model reports)."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest query image accepted.")] = 10.0,
    *,
    server: ServerAddress,
    catalog: CatalogAppOptions,
) -> None:
    """A web page on the served asen_search model (or, with --store, on a catalog store and
    its JSON API): upload or pick a query, see the top k."""
    from asen.client.app import Settings, run, upload_limit_bytes
    from asen.client.catalog_api import catalog_settings

    limit = upload_limit_bytes(max_upload_mb)  # nan, inf, 0 and below: one line
    settings = Settings(server.url, model, server.protocol or "grpc", data, limit)
    if catalog.store is not None:
        options = dataclasses.asdict(catalog) | {"backend": BackendName(catalog.backend).value}
        settings.catalog = catalog_settings(host, url=server.url, warn=console.print, **options)

    def ready(address: str) -> None:
        console.print(f"asen app on {address} (Ctrl-C to stop)", highlight=False)

    run(settings, host=host, port=port, ready=ready)


def register(root: typer.Typer) -> None:
    """Add the client layer's commands to `asen` (entry point `asen.commands`)."""
    from asen.client import model_control
    from asen.client.search import served_search
    from asen.export import commands as export_commands

    root.command("serve")(serve)
    root.add_typer(bench_app, name="bench")
    root.command("app")(app)
    search.EXTENSIONS.served_search = served_search
    export_commands.SERVER_CONTROL[:] = [
        export_commands.ServerControl(
            check_reload_url=model_control.check_reload_url,
            reload_models=model_control.reload_models,
            written_versions=model_control.written_versions,
        )
    ]
