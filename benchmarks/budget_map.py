"""The demo's time-budgeted training, this tree against an earlier revision: the same
synthetic dataset, `asen train -c small --time-budget B` for stage 1 and then stage 2
(initialised from stage 1's best checkpoint), and the test mAP of stage 2's best
checkpoint. The revision defaults to ceda30f, the tree before the training-speed work (fp32,
one pass of 48 images, contiguous weights, the old crop rule).

Each variant runs in turn, alone, through its own tree's CLI (a `git worktree` of the
revision, the same virtual environment). Prints one JSON object: per variant and stage
the steps, triplets seen, median triplets/s of the epochs, and the test mAP.
A full run is 4 x BUDGET minutes plus evaluation (about 45 minutes at the demo's 10).

    python -m benchmarks.budget_map [--budget 10] [--revision ceda30f] [--work DIR]
        [--figures PATH]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import harness

HERE = Path(__file__).resolve().parents[1]


def _asen(tree: Path, *args: str) -> None:
    """One `asen` command of `tree` (its own packages first on the path): its asen/cli.py,
    or the top-level cli.py of a revision from before the CLI moved into the package."""
    module = "asen.cli" if (tree / "asen" / "cli.py").is_file() else "cli"
    run_cli = f"import sys; sys.argv[0] = 'asen'; from {module} import main; main()"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-c", run_cli, *args]
    # its progress to stderr: stdout is this benchmark's one JSON object
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=sys.stderr)


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "triplets_per_s" in r]


def _variant(tree: Path, data: Path, work: Path, budget: float) -> dict:
    """Both stages under the budget, then the test mAP of stage 2's best checkpoint."""
    out: dict = {}
    for stage in (1, 2):
        run = work / f"stage{stage}"
        init = ["--init", str(work / "stage1" / "best.pt")] if stage == 2 else []
        _asen(tree, "train", "--data", str(data), "-c", "small", "--stage", str(stage),
              *init, "--time-budget", str(budget), "--out", str(run))  # fmt: skip
        records = _records(run)
        out[f"stage{stage}"] = {
            "epochs": len(records),
            "steps": sum(r.get("steps", 0) for r in records),
            "median_triplets_per_s": round(
                statistics.median(r["triplets_per_s"] for r in records), 1
            ),
        }
    result = work / "eval.json"
    _asen(tree, "eval", str(work / "stage2" / "best.pt"), "--data", str(data),
          "--json", str(result))  # fmt: skip
    figures = json.loads(result.read_text())
    out["test_map"] = figures.get("overall_map", figures.get("map"))
    return out


def figures(result: dict) -> harness.Figures:
    """One row per variant and stage: epochs, steps, speed, and the variant's test mAP."""
    rows = []
    for name, variant in result.items():
        if not isinstance(variant, dict) or "test_map" not in variant:
            continue
        for stage in ("stage1", "stage2"):
            found = variant[stage]
            rows.append(
                [
                    name,
                    stage.replace("stage", "stage "),
                    found["epochs"],
                    found["steps"],
                    found["median_triplets_per_s"],
                    variant["test_map"],
                ]
            )
    columns = ["tree", "stage", "epochs", "steps", "median triplets/s", "test mAP (stage 2)"]
    notes = [
        f"`asen train -c small --time-budget {result['budget_min']}` for each stage, "
        "the same synthetic dataset, variants run in turn"
    ]
    return harness.Figures("Time-budgeted training against an earlier tree", columns, rows, notes)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--budget", type=float, default=10.0, help="minutes a stage")
    parser.add_argument("--revision", default="ceda30f", help="the earlier tree")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="asen-budget-"))
    old = work / "old-tree"
    added = not old.exists()
    if added:
        git = ["git", "worktree", "add", "--detach", str(old), args.revision]
        subprocess.run(git, cwd=HERE, check=True)
    try:
        data = work / "data"
        if not (data / "dataset.yaml").is_file():
            _asen(HERE, "data", "synth", str(data))
        result: dict = {"benchmark": "budget_map", "budget_min": args.budget, "load_avg": []}
        for name, tree in (("revision " + args.revision, old), ("this tree", HERE)):
            result["load_avg"].append(os.getloadavg())
            result[name] = _variant(tree, data, work / name.replace(" ", "-"), args.budget)
        result["load_avg"].append(os.getloadavg())
    finally:
        if added:  # the worktree this run added, and only it
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=HERE)
    harness.finish(result, args, figures)


if __name__ == "__main__":
    main()
