"""Training throughput (triplets/s) for stage 1 and 2 at the synthetic and the paper's sizes.

Times optimizer steps on in-memory uint8 triplets (decoding runs in DataLoader workers in
real training, beside the step); prints one JSON object with medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from asen.config import load_config
from asen.losses import alignment_loss, triplet_loss
from asen.model.asen import ASENPP

SIZES = {"synthetic": ["small"], "paper": []}  # paper: the defaults (ResNet-50/34, 224/112)


def step_times(configs: list[str], stage: int, steps: int, device: str) -> dict:
    cfg = load_config([f"stage{stage}", *configs])
    torch.manual_seed(0)
    model = ASENPP(cfg.model, 8, stage).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n, s = cfg.train.batch_size, cfg.model.source_size
    x = torch.randint(0, 256, (3 * n, 3, s, s), dtype=torch.uint8, device=device)
    a = torch.randint(0, 8, (n,), device=device).repeat(3)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        out = model.branches(x, a)
        g = out.global_embedding.view(3, n, -1)
        loss = triplet_loss(g[0], g[1], g[2], 0.2)
        if stage == 2:
            lo = out.local_embedding.view(3, n, -1)
            loss = loss + 0.1 * triplet_loss(lo[0], lo[1], lo[2], 0.2)
            loss = loss + 0.1 * alignment_loss(out.global_embedding, out.local_embedding)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times[1:])
    return {
        "batch_triplets": n,
        "source_size": s,
        "median_step_s": round(median, 4),
        "triplets_per_s": round(n / median, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (synthetic size)")
    parser.add_argument("--paper-steps", type=int, default=3, help="timed steps (paper size)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    result = {
        "benchmark": "train",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "load_avg_before": os.getloadavg()[0],
    }
    for name, configs in SIZES.items():
        steps = args.steps if name == "synthetic" else args.paper_steps
        for stage in (1, 2):
            result[f"{name}_stage{stage}"] = step_times(configs, stage, steps, args.device)
    result["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
