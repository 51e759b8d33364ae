"""Does bf16 autocast cost retrieval quality? Trains stage 1 (and with --stage2 also
stage 2) on two synthetic datasets, once in fp32 and once under bf16 autocast, the same
number of steps from the same training seed, for each seed in --seeds, and compares the
test mAP of the last checkpoints (fp32 evaluation). The bar: within 0.01; one seed is
noisy, so the mean difference over the seeds is set against it, beside the range.

Datasets: the default synthetic one (seed 0, 4 attributes) and
`asen data synth --seed 1 --attributes 3,6,2,7,4`. Prints one JSON object. Finished runs
in --work are reused (resumed to nothing), so adding a seed trains only that seed, and a
longer --epochs extends the finished stage-1 runs of fewer epochs instead of retraining.
A pair (fp32 and bf16, 2,000 steps, stage 1) takes about 15 minutes on a 2-core CPU;
--quick is a short smoke version.

--jitter REL adds a control to each seed: fp32 again, from the seed's initial weights
each multiplied by (1 + REL * N(0, 1)). It measures how far a run's outcome moves for a
numerical difference far smaller than bf16's, the noise floor the bf16 gap is set against.

Per dataset, `stage1_attributes_learned` counts, per attribute, the runs of each kind
whose test AP reached 0.9, with the one-sided p that bf16 learns it less often than fp32
(a per-seed mAP gap often comes down to one attribute a run did not learn): Fisher's
exact test over the runs, and the exact sign test over the seeds where only one of the
two precisions learned it (`p_paired`: a seed's two runs share initial weights and data
order, so they are pairs, not independent draws).

--inference-from CKPT trains nothing: it scores one checkpoint on each --datasets test
split in fp32 and with the forward under bf16 autocast (overall and per attribute), and
under bf16 with one part kept in fp32 (the global stem convolution, the global backbone,
the global attention).
Where a trained model keeps an attribute under bf16 inference, the forward pass carries
that attribute's signal in bf16 and a bf16 run that fails to learn it loses it in training.

    python -m studies.bf16_map [--quick] [--seeds 0,1] [--stage2] [--jitter REL]
        [--gradients N] [--inference-from CKPT] [--figures PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from math import comb
from pathlib import Path

import torch

from asen import AsenError
from asen.checkpoint import atomic_save, make_checkpoint
from asen.config import load_config
from asen.data.datasets import batches
from asen.data.splits import open_dataset
from asen.data.synthetic import generate
from asen.encoders import TorchEncoder
from asen.evaluate import evaluate
from asen.train import train
from asen.training.epoch import epoch_loader
from asen.training.setup import build_state, open_training_data
from asen.training.step import MicroBatches, StepSetup, resolve_micro_batch, train_step
from benchmarks import harness

DATASETS = {"synthetic-0": (0, None), "synthetic-1-5attrs": (1, "3,6,2,7,4")}
PRECISIONS = ("fp32", "bf16")
LEARNED_AP = 0.9  # an attribute counts as learned where its test AP reaches this


def _dataset(work: Path, name: str, *, n_train: int, n_eval: int) -> Path:
    seed, counts = DATASETS[name]
    root = work / f"{name}-{n_train}"
    if not (root / "dataset.yaml").is_file():
        attrs = (
            None
            if counts is None
            else {f"attr{i}": int(v) for i, v in enumerate(counts.split(","))}
        )
        generate(root, seed=seed, n_train=n_train, n_eval=n_eval, attributes=attrs)
    return root


# The parts of the network --inference-from also runs in fp32, one at a time, inside bf16.
FP32_PARTS = ("global_branch.backbone.0", "global_branch.backbone", "global_branch.attention")


class Bf16Encoder(TorchEncoder):
    """The checkpoint's forward under bf16 autocast (weights stay fp32, as in training)."""

    def encode_batch(self, images, attributes):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return super().encode_batch(images, attributes)


class Fp32Part(torch.nn.Module):
    """A submodule run in fp32 (autocast off, inputs cast up) inside a bf16 forward."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        with torch.autocast("cpu", enabled=False):
            return self.inner(*(a.float() if a.is_floating_point() else a for a in args))


def _test_maps(
    checkpoint: Path, root: Path, workers: int, *, bf16: bool = False, fp32_part: str = ""
) -> dict:
    """Test mAP of a checkpoint, overall and per attribute, in fp32 or under bf16 (with
    `fp32_part`, a submodule's dotted name, kept in fp32)."""
    kind = Bf16Encoder if bf16 else TorchEncoder
    encoder = kind.from_checkpoint(checkpoint, "cpu", batch_size=128)
    if fp32_part:
        parent, _, name = fp32_part.rpartition(".")
        holder = encoder.model.get_submodule(parent)
        setattr(holder, name, Fp32Part(getattr(holder, name)))
    result = evaluate(encoder, open_dataset(root), "test", batch_size=128, workers=workers)
    per_attribute = {k: round(v, 4) for k, v in result.per_attribute.items()}
    return {"test_map": round(result.overall_map, 4), "per_attribute": per_attribute}


def _stage1_result(run: Path, root: Path, workers: int, minutes: float) -> dict:
    """A stage-1 run's entry in the output: its last checkpoint's test mAP, per attribute
    too, and the minutes it trained."""
    scores = _test_maps(run / "last.pt", root, workers)
    return {
        "stage1_test_map": scores["test_map"],
        "stage1_per_attribute": scores["per_attribute"],
        "stage1_minutes": minutes,
    }


def inference_precision(work: Path, checkpoint: Path, args) -> dict:
    """One checkpoint scored in fp32 and under bf16 autocast on each dataset's test split."""
    out: dict = {}
    for name in args.datasets:
        root = _dataset(work, name, n_train=args.n_train, n_eval=args.n_eval)
        fp32 = _test_maps(checkpoint, root, args.workers)
        bf16 = _test_maps(checkpoint, root, args.workers, bf16=True)
        drop = {k: round(bf16["per_attribute"][k] - v, 4) for k, v in fp32["per_attribute"].items()}
        out[name] = {"fp32": fp32, "bf16_autocast": bf16, "bf16_minus_fp32": drop}
        for part in FP32_PARTS:
            scores = _test_maps(checkpoint, root, args.workers, bf16=True, fp32_part=part)
            out[name][f"bf16_with_{part}_in_fp32"] = scores
    return out


def _run_dir(
    root: Path, *, precision: str, epochs: int, per_epoch: int, seed: int, stage: int
) -> Path:
    """One run's folder beside the dataset's, named by everything that makes it."""
    return root.parent / f"{root.name}-{precision}-{epochs}x{per_epoch}-seed{seed}-s{stage}"


def _shorter_stage1(root: Path, *, precision: str, seed: int, args) -> Path | None:
    """The longest finished stage-1 run of the same pair with fewer epochs, if any."""
    for epochs in range(args.epochs - 1, 0, -1):
        run = _run_dir(
            root,
            precision=precision,
            epochs=epochs,
            per_epoch=args.triplets_per_epoch,
            seed=seed,
            stage=1,
        )
        if (run / "last.pt").exists():
            return run
    return None


def _run_config(stage: int, *, precision: str, seed: int, args):
    """The config a run of the comparison trains with."""
    sets = [
        f"train.precision={precision}",
        f"train.seed={seed}",
        f"train.epochs={args.epochs}",
        f"train.triplets_per_epoch={args.triplets_per_epoch}",
        f"data.workers={args.workers}",
    ]
    return load_config([f"stage{stage}", "small"], sets)


def _jittered_init(root: Path, *, seed: int, rel: float, args) -> Path:
    """A stage-1 checkpoint of the seed's initial weights, each multiplied by
    (1 + rel * N(0, 1)) (noise from a generator of its own; buffers unchanged)."""
    path = root.parent / f"{root.name}-init-seed{seed}-jitter{rel:g}.pt"
    if path.exists():
        return path
    cfg = _run_config(1, precision="fp32", seed=seed, args=args)
    attributes = open_dataset(root, cfg.data.attributes or None).attributes
    model = build_state(cfg, stage=1, attributes=attributes, device=torch.device("cpu")).model
    noise = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + rel * torch.randn(p.shape, generator=noise))
    atomic_save(make_checkpoint(model, cfg, attributes), path)
    return path


def _train_stage(
    root: Path, *, stage: int, precision: str, seed: int, args, init, variant: str = ""
):
    """Train (or reuse) one run; returns its folder and the minutes it took. A stage-1
    run longer than a finished one extends that one: the learning rate steps by epoch,
    so 10 epochs resumed to 20 follow a 20-epoch run's schedule. `variant` names a run
    of `precision` that differs otherwise (its folder)."""
    variant = variant or precision
    run = _run_dir(
        root,
        precision=variant,
        epochs=args.epochs,
        per_epoch=args.triplets_per_epoch,
        seed=seed,
        stage=stage,
    )
    if stage == 1 and not run.exists():
        shorter = _shorter_stage1(root, precision=variant, seed=seed, args=args)
        if shorter is not None:
            shutil.copytree(shorter, run)
    cfg = _run_config(stage, precision=precision, seed=seed, args=args)
    t0 = time.monotonic()
    resume = (run / "last.pt").exists()
    train(
        None if resume else cfg,
        data_root=root,
        stage=stage,
        run_dir=run,
        init=None if resume else init,  # a resumed run has its weights
        resume=resume,
        changes={"train.epochs": args.epochs} if resume else None,
    )
    return run, round((time.monotonic() - t0) / 60, 2)


def compare_seed(root: Path, seed: int, args) -> dict:
    """fp32 and bf16 runs from one training seed: test mAP a stage and the difference."""
    out: dict = {}
    for precision in PRECISIONS:
        run, took = _train_stage(
            root, stage=1, precision=precision, seed=seed, args=args, init=None
        )
        out[precision] = _stage1_result(run, root, args.workers, took)
        if args.stage2:
            init = run / "last.pt"
            run, took = _train_stage(
                root, stage=2, precision=precision, seed=seed, args=args, init=init
            )
            scores = _test_maps(run / "last.pt", root, args.workers)
            out[precision]["stage2_test_map"] = scores["test_map"]
            out[precision]["stage2_minutes"] = took
    for key in [k for k in out["fp32"] if k.endswith("_test_map")]:
        out[f"{key}_bf16_minus_fp32"] = round(out["bf16"][key] - out["fp32"][key], 4)
    if args.jitter is not None:
        out["fp32_jitter"] = _jitter_control(root, seed, args)
        diff = out["fp32_jitter"]["stage1_test_map"] - out["fp32"]["stage1_test_map"]
        out["stage1_test_map_jitter_minus_fp32"] = round(diff, 4)
    return out


def _jitter_control(root: Path, seed: int, args) -> dict:
    """Stage 1 in fp32 from the seed's jittered initial weights (--jitter)."""
    init = _jittered_init(root, seed=seed, rel=args.jitter, args=args)
    run, took = _train_stage(
        root,
        stage=1,
        precision="fp32",
        seed=seed,
        args=args,
        init=init,
        variant=f"fp32jitter{args.jitter:g}",
    )
    return _stage1_result(run, root, args.workers, took)


def compare(work: Path, name: str, args) -> dict:
    """Every seed on one dataset, and the mean difference over the seeds against the bar."""
    root = _dataset(work, name, n_train=args.n_train, n_eval=args.n_eval)
    out: dict = {f"seed{seed}": compare_seed(root, seed, args) for seed in args.seeds}
    per_seed = list(out.values())
    for key in [k for k in per_seed[0] if k.endswith("_minus_fp32")]:
        diffs = [r[key] for r in per_seed]
        out[f"{key}_mean"] = round(statistics.mean(diffs), 4)
        out[f"{key}_mean_abs"] = round(statistics.mean(abs(d) for d in diffs), 4)
        out[f"{key}_range"] = [min(diffs), max(diffs)]
        out[f"{key}_mean_within_0.01"] = abs(statistics.mean(diffs)) <= 0.01
    out["stage1_attributes_learned"] = attributes_learned(per_seed)
    return out


def fisher_one_sided(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Fisher's exact test, one-sided, of two groups' (hits, runs): with the margins fixed,
    the chance that group b has as few hits as it has or fewer (small where b succeeds
    less often than a)."""
    (hits_a, n_a), (hits_b, n_b) = a, b
    hits = hits_a + hits_b
    tables = sum(comb(n_b, k) * comb(n_a, hits - k) for k in range(hits_b + 1))
    return tables / comb(n_a + n_b, hits)


def sign_test_one_sided(fp32_only: int, bf16_only: int) -> float:
    """The exact sign test (McNemar's, exact) of paired runs, one-sided: of the seeds where
    exactly one precision learned the attribute, the chance that fp32 is the one as often
    as it is or more, were each equally likely."""
    n = fp32_only + bf16_only
    return sum(comb(n, k) for k in range(fp32_only, n + 1)) / 2**n


def attributes_learned(per_seed: list[dict]) -> dict:
    """Per attribute: how many runs of each kind reached test AP `LEARNED_AP` in stage 1
    ("k/n"), and the one-sided p that bf16 learns it less often than fp32: Fisher's, the
    runs taken as independent, and the sign test over the seeds where only one learned it
    (each seed's fp32 and bf16 runs share initial weights and data order)."""
    kinds = [k for k in ("fp32", "bf16", "fp32_jitter") if k in per_seed[0]]
    out: dict = {}
    for attribute in per_seed[0]["fp32"]["stage1_per_attribute"]:
        hits = {
            kind: sum(r[kind]["stage1_per_attribute"][attribute] >= LEARNED_AP for r in per_seed)
            for kind in kinds
        }
        n = len(per_seed)
        out[attribute] = {kind: f"{hits[kind]}/{n}" for kind in kinds}
        p = fisher_one_sided((hits["fp32"], n), (hits["bf16"], n))
        out[attribute]["p_bf16_learns_fewer"] = round(p, 4)
        learned = [
            (r["fp32"]["stage1_per_attribute"][attribute] >= LEARNED_AP)
            - (r["bf16"]["stage1_per_attribute"][attribute] >= LEARNED_AP)
            for r in per_seed
        ]
        fp32_only, bf16_only = learned.count(1), learned.count(-1)
        out[attribute]["seeds_fp32_only"] = fp32_only
        out[attribute]["seeds_bf16_only"] = bf16_only
        out[attribute]["p_paired"] = round(sign_test_one_sided(fp32_only, bf16_only), 4)
    return out


def _step_gradients(setup: StepSetup, images, attrs) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss and the gradients of the trainer's own step (its optimizer has lr 0:
    weights stay), flattened per parameter."""
    loss = train_step(setup, images, attrs)["loss"]
    model = setup.forward.model
    grads = {n: p.grad.flatten().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss, grads


def _attribute_batches(loader, index: int, size: int):
    """The loader's triplets of attribute `index` only, regrouped into batches of `size`."""
    images, attrs = [], []
    for batch in batches(loader):
        keep = batch[1] == index
        images.append(batch[0][keep])
        attrs.append(batch[1][keep])
        if sum(len(a) for a in attrs) >= size:
            joined_images, joined_attrs = torch.cat(images), torch.cat(attrs)
            yield joined_images[:size], joined_attrs[:size]
            images, attrs = [joined_images[size:]], [joined_attrs[size:]]


def gradient_agreement(work: Path, args) -> dict:
    """Stage 1 at initialisation (seed 0) or from --gradients-from, the first --gradients
    batches of the first of --datasets (with --gradients-attribute, batches of that
    attribute's triplets only): cosine between the fp32 and the bf16 gradient of each
    layer, min and mean over the batches where both losses are above zero (a trained
    model meets the margin on whole batches: no gradient to compare); beside it, the
    cosine between consecutive batches' fp32 gradients (the minibatch noise a step has
    anyway) and between consecutive batches' bf16 errors (bf16 - fp32: near 0 when the
    error does not point the same way step after step, so it does not add up)."""
    dataset = args.datasets[0]
    root = _dataset(work, dataset, n_train=args.n_train, n_eval=args.n_eval)
    cfg = load_config(["stage1", "small"], ["data.workers=0"])
    data = open_training_data(cfg, root)
    loader = epoch_loader(cfg, data, epoch=0, start_step=0)
    if args.gradients_attribute:
        names = [a.name for a in data.attributes]
        if args.gradients_attribute not in names:
            have = ", ".join(names)
            raise AsenError(
                f"--gradients-attribute: {dataset} has no attribute "
                f"{args.gradients_attribute!r} (it has {have})"
            )
        index = names.index(args.gradients_attribute)
        stream = _attribute_batches(loader, index, cfg.train.batch_size)
    else:
        stream = ((b[0], b[1]) for b in batches(loader))  # uint8 triplets, attributes
    cpu = torch.device("cpu")
    state = build_state(
        cfg, stage=1, attributes=data.attributes, device=cpu, init=args.gradients_from
    )
    forward = MicroBatches(state.model, resolve_micro_batch(cfg.train.micro_batch, cpu))
    frozen = torch.optim.SGD(state.model.parameters(), lr=0.0)
    setups = {p: StepSetup(forward, frozen, cfg.train, cpu, p) for p in PRECISIONS}
    cosines: dict[str, list[float]] = {}
    between_batches: dict[str, list[float]] = {}  # fp32 gradients of consecutive batches
    between_errors: dict[str, list[float]] = {}  # bf16 - fp32 of consecutive batches
    losses: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    previous: dict[str, torch.Tensor] = {}
    previous_error: dict[str, torch.Tensor] = {}
    for _, (images, attrs) in zip(range(args.gradients), stream, strict=False):
        loss32, g32 = _step_gradients(setups["fp32"], images, attrs)
        loss16, g16 = _step_gradients(setups["bf16"], images, attrs)
        losses["fp32"].append(round(loss32, 5))
        losses["bf16"].append(round(loss16, 5))
        if loss32 == 0 or loss16 == 0:
            continue
        _add_layer_cosines(cosines, g32, g16)
        error = {k: g16[k] - g32[k] for k in g32}
        if previous:
            _add_layer_cosines(between_batches, previous, g32)
            _add_layer_cosines(between_errors, previous_error, error)
        previous, previous_error = g32, error
    return {
        "batch_losses": losses,
        "cosine_per_layer": _min_mean(cosines),
        "fp32_cosine_between_consecutive_batches": _min_mean(between_batches),
        "bf16_error_cosine_between_consecutive_batches": _min_mean(between_errors),
    }


def _add_layer_cosines(into: dict, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
    """Append, per layer (first three name parts), the cosine of gradients `a` and `b`."""
    for name in a:
        layer = ".".join(name.split(".")[:3])
        cos = torch.nn.functional.cosine_similarity(a[name], b[name], dim=0)
        into.setdefault(layer, []).append(cos.item())


def _min_mean(values: dict[str, list[float]]) -> dict:
    """Each layer's list of cosines as its min and mean."""
    return {
        k: {"min": round(min(v), 4), "mean": round(statistics.mean(v), 4)}
        for k, v in values.items()
    }


def _comparison_rows(result: dict, datasets: list[str]) -> tuple[list[str], list[list]]:
    """Columns and one row per dataset and seed of the fp32 / bf16 comparison."""
    first = next(iter(result[datasets[0]].values()))
    stage2, jitter = "stage2_test_map" in first["fp32"], "fp32_jitter" in first
    columns = ["dataset", "seed", "fp32 stage 1", "bf16 stage 1", "bf16 - fp32"]
    columns += ["fp32 stage 2", "bf16 stage 2", "bf16 - fp32 (stage 2)"] if stage2 else []
    columns += ["jittered fp32 - fp32"] if jitter else []
    rows = []
    for name in datasets:
        for seed, run in result[name].items():
            if not seed.startswith("seed"):
                continue
            row = [
                name,
                int(seed[4:]),
                run["fp32"]["stage1_test_map"],
                run["bf16"]["stage1_test_map"],
                run["stage1_test_map_bf16_minus_fp32"],
            ]
            if stage2:
                row += [
                    run["fp32"]["stage2_test_map"],
                    run["bf16"]["stage2_test_map"],
                    run["stage2_test_map_bf16_minus_fp32"],
                ]
            rows.append(row + ([run["stage1_test_map_jitter_minus_fp32"]] if jitter else []))
    return columns, rows


def _inference_rows(inference: dict) -> tuple[list[str], list[list]]:
    """Columns and one row per dataset and forward precision of --inference-from."""
    rows = [
        [name, variant.replace("_", " "), scores["test_map"]]
        for name, found in inference.items()
        for variant, scores in found.items()
        if "test_map" in scores
    ]
    return ["dataset", "forward", "test mAP"], rows


def _gradient_rows(found: dict) -> tuple[list[str], list[list]]:
    """Columns and one row per layer of --gradients."""
    between = found["fp32_cosine_between_consecutive_batches"]
    errors = found["bf16_error_cosine_between_consecutive_batches"]
    rows = [
        [
            layer,
            c["min"],
            c["mean"],
            between.get(layer, {}).get("mean"),
            errors.get(layer, {}).get("mean"),
        ]
        for layer, c in found["cosine_per_layer"].items()
    ]
    columns = [
        "layer",
        "bf16 vs fp32 cosine, min",
        "mean",
        "fp32 between batches, mean",
        "bf16 error between batches, mean",
    ]
    return columns, rows


def figures(result: dict, args: argparse.Namespace) -> harness.Figures:
    """The study's table: the comparison per seed, or the inference or gradient figures."""
    if "inference" in result:
        title, (columns, rows) = "bf16 at inference", _inference_rows(result["inference"])
    elif "gradient_cosine_bf16_vs_fp32" in result:
        found = result["gradient_cosine_bf16_vs_fp32"]
        title, (columns, rows) = "bf16 against fp32 gradients", _gradient_rows(found)
    else:
        title = "bf16 against fp32 training: test mAP per seed"
        columns, rows = _comparison_rows(result, args.datasets)
    notes = [
        f"{result['steps_a_stage']} steps a stage, {args.n_train} training images, "
        f"{result['threads']} threads"
    ]
    return harness.Figures(title, columns, rows, notes)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--work", type=Path, default=Path("runs/bf16_map"))
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--epochs", type=int, default=None, help="epochs a stage (default 10)")
    parser.add_argument("--triplets-per-epoch", type=int, default=None, help="default 3200")
    parser.add_argument("--n-train", type=int, default=None, help="training images (4000)")
    parser.add_argument("--n-eval", type=int, default=None, help="valid and test images (1000)")
    parser.add_argument("--stage2", action="store_true", help="also compare stage 2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--seeds",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[0],
        help="training seeds, comma-separated (train.seed); each gives an fp32 and a bf16 run",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=list(DATASETS),
        default=list(DATASETS),
        help="which datasets to compare on",
    )
    parser.add_argument(
        "--jitter",
        type=float,
        default=None,
        metavar="REL",
        help="also train fp32 from each seed's initial weights times (1 + REL * N(0, 1))",
    )
    parser.add_argument(
        "--gradients",
        type=int,
        default=0,
        metavar="N",
        help="instead of training: per-layer cosine of fp32 and bf16 gradients on N batches",
    )
    parser.add_argument(
        "--gradients-from",
        type=Path,
        default=None,
        metavar="CKPT",
        help="with --gradients: a stage-1 checkpoint's weights instead of initialisation",
    )
    parser.add_argument(
        "--gradients-attribute",
        default="",
        metavar="NAME",
        help="with --gradients: batches of this attribute's triplets only (e.g. attr4)",
    )
    parser.add_argument(
        "--inference-from",
        type=Path,
        default=None,
        metavar="CKPT",
        help="instead of training: score CKPT in fp32, in bf16, and in bf16 with one part fp32",
    )
    args = parser.parse_args()
    quick = {"epochs": 1, "triplets_per_epoch": 480, "n_train": 400, "n_eval": 100}
    full = {"epochs": 10, "triplets_per_epoch": 3200, "n_train": 4000, "n_eval": 1000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    result: dict = {
        "benchmark": "bf16_map",
        "steps_a_stage": args.epochs * args.triplets_per_epoch // 16,
        "threads": torch.get_num_threads(),
        "load_avg_before": os.getloadavg(),
    }
    try:
        if args.gradients:
            result["gradient_cosine_bf16_vs_fp32"] = gradient_agreement(args.work, args)
        elif args.inference_from:
            result["inference"] = inference_precision(args.work, args.inference_from, args)
        else:
            for name in args.datasets:
                result[name] = compare(args.work, name, args)
    except AsenError as e:  # a bad --gradients-from or --work: one line
        raise SystemExit(f"error: {e}") from None
    result["load_avg_after"] = os.getloadavg()
    harness.finish(result, args, lambda r: figures(r, args))


if __name__ == "__main__":
    main()
