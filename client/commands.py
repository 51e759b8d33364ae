"""`asen serve`, `asen bench serve` and `asen app`, and what the client layer adds to
`asen search` (queries to the served asen_search model)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from asen import AsenError
from asen.commands import search
from asen.commands.options import ServerAddress, TritonConnection, with_options
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
) -> None:
    """Serve the model repository with a real tritonserver until Ctrl-C (model control off)."""
    from asen.client.server import find_server, launch, serve_until_stopped

    binary = find_server()
    kind = "bundled in nvidia-pytriton" if binary.bundled else "on PATH"
    console.print(f"tritonserver ({kind}): {binary.path}", highlight=False)
    with console.status("starting tritonserver"):
        handle = launch(repo, host, http_port, grpc_port, metrics_port, log_file)
    serve_until_stopped(handle, announce=functools.partial(_print_serving, handle))
    console.print("tritonserver stopped")


def _levels_table(levels: list, title: str) -> Table:
    """perf_analyzer's figures, one row a concurrency level."""
    table = Table(title=title, caption="latency, server queue and compute in ms")
    for name in ("concurrency", "images/s", "p50", "p90", "p99", "queue", "compute", "batch/exec"):
        table.add_column(name, justify="right")
    for v in levels:
        table.add_row(
            str(v.concurrency),
            f"{v.throughput:.1f}",
            *(f"{x:.2f}" for x in (v.p50_ms, v.p90_ms, v.p99_ms, v.queue_ms, v.compute_ms)),
            f"{v.batch_per_execution:.2f}",
        )
    return table


bench_app = typer.Typer(help="Load tests.", no_args_is_help=True)


@bench_app.command("serve")
@with_options(server=ServerAddress, connection=TritonConnection)
def bench_serve(
    model: Annotated[str, typer.Option(help="Served encoder model, e.g. asen_onnx.")],
    model_version: Annotated[
        str | None, typer.Option(help="Model version (default: the server's latest).")
    ] = None,
    concurrency: Annotated[
        str,
        typer.Option(help="Concurrency levels: first, last and step (e.g. 1:16:1), or one (8)."),
    ] = "1:16:1",
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 1,
    input_data: Annotated[
        Path | None,
        typer.Option(help="Dataset root: its test queries as inputs (default: random images)."),
    ] = None,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Write perf_analyzer's CSV.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a throughput-latency plot (PNG).")
    ] = None,
    measurement_interval: Annotated[
        int, typer.Option(help="perf_analyzer's measurement window (ms).")
    ] = 5000,
    stability: Annotated[
        int, typer.Option(help="perf_analyzer's stability threshold (percent).")
    ] = 10,
    *,
    server: ServerAddress,
    connection: TritonConnection,
) -> None:
    """Sweep concurrency on a running server with NVIDIA's perf_analyzer (real inputs)."""
    from asen.client.perf import Sweep, Target, run_sweep
    from asen.client.perf_report import plot as plot_levels

    if server.url is None:
        raise AsenError("--url is required: the server's HOST:PORT (gRPC or HTTP port)")
    sweep = Sweep.parse(concurrency)
    protocol = server.protocol or "grpc"
    shared_memory = connection.shared_memory or "none"
    options = connection.options()
    target = Target(
        server.url, model, protocol, model_version or "", options["tls"], options["headers"] or {}
    )
    with console.status(escape(f"perf_analyzer: {model} at {server.url}, concurrency {sweep}")):
        levels = run_sweep(
            target,
            sweep=sweep,
            batch_size=batch_size,
            shared_memory=shared_memory,
            input_data=input_data,
            csv_out=csv_out,
            interval_ms=measurement_interval,
            stability=stability,
        )
    title = (
        f"{model} at {server.url} ({protocol}, batch {batch_size}, shared memory {shared_memory})"
    )
    console.print(_levels_table(levels, title))
    if csv_out:
        console.print(f"wrote {csv_out}", markup=False)
    if plot:
        plot_levels(levels, plot, f"{model} ({protocol}, batch {batch_size}, shm {shared_memory})")
        console.print(f"wrote {plot}", markup=False)


@with_options(server=ServerAddress)
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
) -> None:
    """A web page on the served asen_search model: upload or pick a query, see the top k."""
    from asen.client.app import Settings, run

    if max_upload_mb <= 0:
        raise AsenError(f"--max-upload-mb {max_upload_mb}: must be positive")
    settings = Settings(
        server.url, model, server.protocol or "grpc", data, int(max_upload_mb * 2**20)
    )

    def ready(address: str) -> None:
        console.print(f"asen app on {address} (Ctrl-C to stop)", highlight=False)

    run(settings, host=host, port=port, ready=ready)


def register(root: typer.Typer) -> None:
    """Add the client layer's commands to `asen` (entry point `asen.commands`)."""
    from asen.client.search import served_search

    root.command("serve")(serve)
    root.add_typer(bench_app, name="bench")
    root.command("app")(app)
    search.EXTENSIONS.served_search = served_search
