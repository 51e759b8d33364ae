"""Peak memory of the served preprocessing for a decompression-bomb-shaped image.

A 40000 x 1 PNG is about 200 bytes; a preprocessor that scales the short side to S before
cropping would allocate gigabytes. This starts the bundled tritonserver on a randomly
initialised `small` model, reads the peak resident memory (VmHWM) of the `asen_preprocess`
Python-backend stubs, sends ordinary images and then the thin PNGs through the `asen`
ensemble (encoded bytes, as a network client would), and reads it again. Prints JSON.

    python -m benchmarks.bench_served_bomb [--figures PATH]
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from asen.client.server import free_ports, start_server
from asen.export.build import export_model
from PIL import Image

from asen.backends import open_encoder
from benchmarks import harness
from benchmarks.models import random_checkpoint


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def preprocess_stubs() -> list[int]:
    """Pids of the Python-backend stubs serving `asen_preprocess`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "triton_python_backend_stub" in cmd and "asen_preprocess" in cmd:
            pids.append(int(proc.name))
    return pids


def measure(repo: Path) -> dict:
    """Serve `repo`, send ordinary then thin PNGs, and read the stubs' peak memory."""
    ports = free_ports()
    with start_server(repo, **ports) as server:
        url = f"127.0.0.1:{ports['grpc_port']}"
        encoder = open_encoder("triton", "asen", url=url, send_bytes=True, batch_size=1)
        normal = [png(640, 480)] * 4
        encoder.encode_bytes(normal, np.zeros(4, np.int64))  # warm: plugins loaded
        stubs = preprocess_stubs()
        before = {p: status_kib(p, "VmHWM") for p in stubs}
        thin = [png(40000, 1), png(1, 40000)] * 2
        emb, ok = encoder.encode_bytes(thin, np.zeros(len(thin), np.int64))
        after = {p: status_kib(p, "VmHWM") for p in stubs}
        encoder.close()
        return {
            "server": server.grpc_url,
            "thin_png_bytes": [len(b) for b in thin],
            "encoded": int(ok.sum()),
            "embedding_dim": int(emb.shape[1]),
            "preprocess_stubs": len(stubs),
            "peak_kib_before": before,
            "peak_kib_after": after,
            "max_peak_growth_mib": round(max(after[p] - before[p] for p in stubs) / 1024, 2),
        }


def figures(result: dict) -> harness.Figures:
    columns = [
        "thin PNGs sent",
        "PNG bytes",
        "encoded",
        "preprocess stubs",
        "largest peak growth (MiB)",
    ]
    thin = result["thin_png_bytes"]
    rows = [
        [
            len(thin),
            max(thin),
            result["encoded"],
            result["preprocess_stubs"],
            result["max_peak_growth_mib"],
        ]
    ]
    notes = [
        "40000 x 1 and 1 x 40000 PNGs through the `asen` ensemble as encoded bytes; "
        "peak resident memory (VmHWM) of the asen_preprocess stubs"
    ]
    return harness.Figures(
        "Served preprocessing of decompression-bomb-shaped images", columns, rows, notes
    )


def main() -> None:
    args = harness.parser(__doc__).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = random_checkpoint("small", Path(tmp) / "model.pt")
        export_model(ckpt, Path(tmp) / "models", max_batch=8)
        result = measure(Path(tmp) / "models")
    harness.finish(result, args, figures, indent=2)


if __name__ == "__main__":
    main()
