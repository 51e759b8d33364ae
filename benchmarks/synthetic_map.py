"""The headline quality figures: test mAP on the default synthetic dataset for random
weights, stage 1 (a time budget) and stage 2 (another budget, from stage 1), per attribute.

    python -m benchmarks.synthetic_map [--budget 10] [--seed 0] [--work runs/bench]
        [--figures PATH]

Prints one JSON object. Takes about 2 x budget minutes plus data generation.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from asen.backends import open_encoder
from asen.checkpoint import atomic_save, make_checkpoint
from asen.config import load_config
from asen.data.splits import open_dataset
from asen.data.synthetic import generate
from asen.evaluate import evaluate
from asen.model.asen import ASENPP
from asen.train import train
from benchmarks import harness


def figures(result) -> dict:
    return {
        "overall_map": round(result.overall_map, 4),
        "per_attribute": {k: round(v, 4) for k, v in result.per_attribute.items()},
    }


def to_figures(out: dict) -> harness.Figures:
    """One row per model (random weights, stage 1, stage 2): overall and per-attribute mAP."""
    attributes = list(out["random"]["per_attribute"])
    rows = [
        [name, out[key]["overall_map"], *(out[key]["per_attribute"][a] for a in attributes)]
        for key, name in (
            ("random", "random weights"),
            ("stage1", "stage 1"),
            ("stage2", "stage 2"),
        )
    ]
    notes = [
        f"{out['budget_min']} minutes of training a stage, {out['threads']} threads",
        f"stage 1 - random: {out['stage1_minus_random']}; "
        f"stage 2 - stage 1: {out['stage2_minus_stage1']}",
    ]
    columns = ["model", "test mAP", *attributes]
    return harness.Figures("Test mAP on the default synthetic dataset", columns, rows, notes)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--work", type=Path, default=Path("runs/bench"))
    parser.add_argument("--budget", type=float, default=10.0, help="minutes per stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = args.work / f"synthetic-{args.seed}"
    if not (root / "dataset.yaml").is_file():
        generate(root, seed=args.seed)
    dataset = open_dataset(root)
    out: dict = {
        "benchmark": "synthetic_map",
        "dataset": str(root),
        "budget_min": args.budget,
        "threads": torch.get_num_threads(),
    }

    cfg = load_config(["stage1", "small"])
    torch.manual_seed(cfg.train.seed)
    model = ASENPP(cfg.model, len(dataset.attributes), 1).eval()
    random_weights = args.work / f"random-{args.seed}.pt"
    atomic_save(make_checkpoint(model, cfg, dataset.attributes), random_weights)
    batch = cfg.train.eval_batch_size
    encoder = open_encoder("torch", str(random_weights), device="cpu", batch_size=batch)
    out["random"] = figures(evaluate(encoder, dataset, "test", batch_size=batch))

    for stage in (1, 2):
        run = args.work / f"stage{stage}-{args.seed}"
        cfg = load_config([f"stage{stage}", "small"])
        t0 = time.monotonic()
        init = args.work / f"stage1-{args.seed}" / "best.pt" if stage == 2 else None
        result = train(
            cfg,
            data_root=root,
            stage=stage,
            run_dir=run,
            init=init,
            time_budget_min=args.budget,
            resume=(run / "last.pt").exists(),
        )
        encoder = open_encoder(
            "torch", str(run / "best.pt"), device="cpu", batch_size=cfg.train.eval_batch_size
        )
        out[f"stage{stage}"] = {
            **figures(evaluate(encoder, dataset, "test", batch_size=cfg.train.eval_batch_size)),
            "train_minutes": round((time.monotonic() - t0) / 60, 2),
            "epochs": len(result.records),
            "best_val_map": round(result.best_val_map, 4),
            "triplets": sum(r["triplets"] for r in result.records),
        }
    out["stage1_minus_random"] = round(
        out["stage1"]["overall_map"] - out["random"]["overall_map"], 4
    )
    out["stage2_minus_stage1"] = round(
        out["stage2"]["overall_map"] - out["stage1"]["overall_map"], 4
    )
    harness.finish(out, args, to_figures)


if __name__ == "__main__":
    main()
