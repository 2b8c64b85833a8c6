"""Active learning on the target dataset with the pretrained networks (paper Sec. 2.2, Table 1, Fig. 7, Sec. 3.1-3.3).

The loop (Table 1):
 1. split the target 80/20 (stratified, seeded; each specimen whole on one side
    when specimens are known): the 80% is the unlabeled pool, the 20% the test
    set, used only to report MCA and ACA after each round;
 2. budget = limit x pool size; label k = 15% of it at random (the simulated
    oracle reveals the stored labels);
 3. fine-tune on everything labeled so far: with the pretrained checkpoint
    (IN) the 5-class head is replaced by a fresh one for the target classes
    and both branches are frozen up to the second pooling layer; with
    --scratch the whole network trains from random initialisation;
 4. score every unlabeled pool image by its uncertainty, entropy by default (Eq. 3);
 5. label the m = 10% of the budget most uncertain images, and go to 3 until
    the budget is spent exactly.

The paper's four cases (Sec. 3.2, 3.3, Table 2):
    IN-AL   python active.py --limit 0.2                              (default)
    IN-RS   python active.py --limit 0.2 --strategy random
    AL      python active.py --limit 0.2 --scratch
    RS      python active.py --limit 0.2 --scratch --strategy random
With --strategy random the whole budget is drawn at random and the network is
trained once, as in the paper. Add --data DIR for real data (e.g. ../shared/data/i3a).

A run directory (--out, default runs/<case>-limit<limit>-seed<seed>) gets
state.pt after every round, so `python active.py --resume RUN_DIR` continues a
killed run; at the end results.json, labeled.csv, model.pt and confusion.png.

The grid of cases x limits x seeds is experiments.py; campaign.py puts a person
in the oracle's place.

Speed: the frozen layers give each image the same output in every round, so
with a pretrained checkpoint their output is computed once for the whole
dataset (`early_feature_cache`) and every round trains and scores only the
layers above it. --no-cache runs the full network every step instead.
"""

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from data import (
    NORMALIZATIONS,
    SHORT_NAMES,
    DataError,
    add_split_flags,
    check_flags,
    describe_split,
    development_split,
    get_dataset,
    load_checkpoint,
    model_inputs,
    parse_class_list,
    pick_device,
    preprocessing,
    remove_stale_temporaries,
    resolve_split,
    save_atomic,
    seed_everything,
    specimens_of,
    split_dataset,
    write_text_atomic,
)
from evaluate import (
    draw_confusion,
    model_from_checkpoint,
    predict_probabilities,
    summarize,
)
from model import (
    ParallelResNet,
    freeze_early_layers,
    replace_head,
    trainable_parameters,
)

# ---------------------------------------------------------------------------------------------
# Uncertainty measures (Sec. 2.2). Each maps (N, C) class probabilities to N scores, higher = more uncertain.


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """H(x) = -sum_j p_j log p_j (Eq. 3, natural log). The paper's Eq. 3 drops the minus sign;
    xlogy gives 0 log 0 = 0, so a zero probability yields no NaN or inf."""
    return -torch.special.xlogy(probabilities, probabilities).sum(dim=1)


def least_confidence(probabilities: torch.Tensor) -> torch.Tensor:
    """1 - max_j p_j: Eq. 4's confidence C, turned so that the least confident scores highest."""
    return 1.0 - probabilities.max(dim=1).values


def margin(probabilities: torch.Tensor) -> torch.Tensor:
    """1 - (p1 - p2): Eq. 5's margin between the two most probable classes, turned likewise."""
    top2 = probabilities.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


UNCERTAINTY = {"entropy": entropy, "least-confidence": least_confidence, "margin": margin}


def select_most_uncertain(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the `count` highest scores, highest first (ties: lower position first)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:count]


def round_sizes(pool_size: int, limit: float, k: int | None = None, m: int | None = None, strategy: str = "entropy"):
    """How many images each round labels: [k, m, m, ..., last], summing to the budget exactly.

    Sec. 3.1: budget = limit x pool (20% of 50,758 = 10,152), k = 15% of the
    budget at random first (1500), then m = 10% per round (1000). The last
    round is smaller when m does not divide what is left. The random strategy,
    and a budget of the whole pool, label everything at once.
    """
    budget = min(pool_size, max(1, round(limit * pool_size)))
    if strategy == "random" or budget == pool_size:
        return [budget]  # Sec. 3.3: at 100% there is nothing to choose, so no active learning process
    k = min(budget, max(1, round(0.15 * budget)) if k is None else k)
    m = max(1, round(0.10 * budget)) if m is None else m
    sizes, left = [k], budget - k
    while left > 0:
        sizes.append(min(m, left))
        left -= sizes[-1]
    return sizes


# ---------------------------------------------------------------------------------------------
# Training and scoring on the labeled set


@torch.inference_mode()
def early_feature_cache(model: ParallelResNet, images: torch.Tensor, device, batch_size: int = 16):
    """The frozen layers' output for every image, once (float16 on the CPU: 50 KB a cell).

    Small batches are faster on a CPU: the first layers' activations are
    800 KB a cell, and a batch that fits in the caches beats a large one
    (I3A: 42 s at 16 in bench.py, 83 to 97 s at 256 in earlier active.py runs, on 2 cores).

    Valid because those layers are fixed, their BatchNorm is in eval mode and
    fine-tuning uses no augmentation, so their output never changes (Sec. 3.1).
    """
    model.eval()
    approximations, details = [], []
    for start in range(0, len(images), batch_size):
        early_approximation, early_details = model.early_features(
            *model_inputs(images[start : start + batch_size], device)
        )
        approximations.append(early_approximation.to("cpu", torch.float16))
        details.append(early_details.to("cpu", torch.float16))
    return torch.cat(approximations), torch.cat(details)


def forward_fn(model: ParallelResNet, images: torch.Tensor, cache, device):
    """A function from dataset indices to logits: through the cached early features if any, else the full network."""
    if cache is not None:
        early_approximation, early_details = cache

        def forward(index):
            inputs = early_approximation[index].to(device).float(), early_details[index].to(device).float()
            return model.head(model.late_features(*inputs))

    else:

        def forward(index):
            return model(*model_inputs(images[index], device))

    return forward


def transfer_model(pretrained: dict, num_classes: int, device) -> ParallelResNet:
    """The pretrained network with a fresh head for the target classes and its early layers frozen (Sec. 3.1)."""
    model = model_from_checkpoint(pretrained, device)
    return freeze_early_layers(replace_head(model, num_classes)).to(device)


PROGRESS_SECONDS = 30  # fine_tune prints an epoch line at most this often (a round line ends every round)


def fine_tune(model, forward, labels, labeled, args, generator, device):
    """Adam at args.lr until the training loss has not decreased for args.patience epochs (Sec. 3.1).

    With args.stop_weights == "best" the weights of the epoch with the lowest
    training loss are restored at the end (a late spike of the loss on a small
    labeled set would otherwise be what the round keeps); "last" keeps the
    final epoch's. With args.batchnorm == "recalibrate" the trainable BatchNorm
    statistics are then recomputed for the kept weights (recalibrate_batchnorm).
    A round on a large labeled set takes minutes (23 to 25 on 2 CPU cores at
    100% of I3A), so an epoch line is printed whenever PROGRESS_SECONDS have
    passed since the round began or the last such line; it only prints.
    Returns (epochs run, the kept epoch's training loss, images seen, optimizer).
    """
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=args.lr)
    labeled = torch.as_tensor(labeled)
    weights = None
    if args.balanced:  # each class weighs as much in the loss as any other, however few of it are labeled
        counts = torch.bincount(labels[labeled], minlength=model.head.out_features).float()
        weights = (counts.sum() / (len(counts) * counts.clamp_min(1))).to(device)
    model.train()
    best, bad, epoch, seen, epoch_loss, best_weights = float("inf"), 0, 0, 0, float("nan"), None
    started = last_line = time.time()
    while epoch < args.max_epochs and bad < args.patience:
        epoch += 1
        order = labeled[torch.randperm(len(labeled), generator=generator)]
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            index = order[start : start + args.batch_size]
            loss = F.cross_entropy(forward(index), labels[index].to(device), weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        epoch_loss = total / len(order)
        seen += len(order)
        if epoch_loss < best - 1e-4:  # "decreased": by more than 1e-4
            best, bad = epoch_loss, 0
            if args.stop_weights == "best":
                best_weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
        else:
            bad += 1
        now = time.time()
        if now - last_line >= PROGRESS_SECONDS:
            last_line, elapsed = now, now - started
            print(
                f"  epoch {epoch:3d}/{args.max_epochs} | loss {epoch_loss:.4f} | "
                f"{seen / max(elapsed, 1e-9):5.0f} img/s | {elapsed:6.1f}s",  # a coarse clock can read 0 s
                flush=True,
            )
    if best_weights is not None and bad > 0:
        model.load_state_dict(best_weights)
        epoch_loss = best
    if args.batchnorm == "recalibrate":
        recalibrate_batchnorm(model, forward, labeled, args.batch_size)
    return epoch, epoch_loss, seen, optimizer


@torch.no_grad()
def recalibrate_batchnorm(model, forward, labeled, batch_size: int) -> None:
    """Recompute the trainable BatchNorm layers' statistics over the labeled cells with the kept weights.

    During training a BatchNorm layer keeps an exponential average of the last
    few dozen batches' statistics, taken while the weights were still moving;
    eval mode (scoring, testing) uses that average. Trained from scratch on a
    small labeled set it can lag far behind the final weights (README paper
    notes: scratch AL on I3A, 54.90% MCA with the running averages, 93.21%
    recalibrated). One pass over the labeled cells in train
    mode, averaging every batch equally (momentum None), makes eval mode match
    the network that was trained (README paper notes; --batchnorm running
    keeps the running averages). Frozen layers stay in eval mode, untouched.
    """
    model.train()  # ParallelResNet.train keeps the frozen early layers in eval mode
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.training]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches of this pass
    # A fixed shuffle, so batches mix classes and rounds, without touching the run's generator.
    order = torch.as_tensor(labeled)[torch.randperm(len(labeled), generator=torch.Generator().manual_seed(0))]
    whole = len(order) // batch_size * batch_size or len(order)  # a small last batch would weigh as much as a full one
    for start in range(0, whole, batch_size):
        forward(order[start : start + batch_size])
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.eval()


@torch.inference_mode()
def probabilities_of(model, forward, indices: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Class probabilities for dataset indices; eval mode (BN running statistics), no augmentation."""
    model.eval()
    outputs = [
        torch.softmax(forward(indices[start : start + batch_size]).float(), dim=1).cpu()
        for start in range(0, len(indices), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.zeros(0, model.head.out_features)


# ---------------------------------------------------------------------------------------------
# The loop


def case_name(args) -> str:
    strategy = {"entropy": "al", "random": "rs"}.get(args.strategy, args.strategy)
    return strategy if args.scratch else f"in-{strategy}"


def data_fingerprint(dataset) -> dict:
    return {
        "source": dataset.source,
        "cells": len(dataset),
        "class_names": dataset.class_names,
        "label_sum": int(dataset.labels.sum()),
        "files_head": dataset.files[:3],
    }


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "--limit", type=float, default=0.2, help="labeling budget as a fraction of the pool (default: 0.2)"
    )
    parser.add_argument(
        "--data", default=None, help="labeled target cells (default: the embedded synthetic 6-class set)"
    )
    parser.add_argument(
        "--classes", nargs="+", default=None, help="keep only these target classes (default: all found)"
    )
    add_split_flags(parser, "pool/test")
    parser.add_argument(
        "--synthetic-cells",
        type=int,
        default=1500,
        help="size of the synthetic target when no --data is given (default: 1500)",
    )
    parser.add_argument(
        "--checkpoint",
        default="runs/pretrained.pt",
        help="pretrained network from train.py (default: runs/pretrained.pt)",
    )
    parser.add_argument(
        "--scratch",
        action="store_true",
        help="no pretraining: train the whole network from random initialisation (the AL and RS cases; default: off)",
    )
    parser.add_argument(
        "--strategy",
        default="entropy",
        choices=["entropy", "least-confidence", "margin", "random"],
        help="how to pick images to label (default: entropy, Eq. 3)",
    )
    parser.add_argument("--k", type=int, default=None, help="random seed-set size (default: 15%% of the budget)")
    parser.add_argument("--m", type=int, default=None, help="images labeled per round (default: 10%% of the budget)")
    parser.add_argument(
        "--round-start",
        default="continue",
        choices=["continue", "restart"],
        help="each round fine-tunes from the previous round's weights (continue) or from the "
        "pretrained or initial weights (restart) (default: continue)",
    )
    parser.add_argument("--max-epochs", type=int, default=30, help="most epochs per fine-tuning (default: 30)")
    parser.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop when the training loss has not decreased this many epochs (default: 5, Sec. 3.1)",
    )
    parser.add_argument(
        "--stop-weights",
        default="best",
        choices=["best", "last"],
        help="after fine-tuning keep the weights of the lowest-training-loss epoch, or the last (default: best)",
    )
    parser.add_argument(
        "--batchnorm",
        default="recalibrate",
        choices=["recalibrate", "running"],
        help="after each fine-tuning recompute the trainable BatchNorm statistics over the labeled cells "
        "(recalibrate), or keep the running averages of training (running) (default: recalibrate)",
    )
    parser.add_argument(
        "--balanced",
        action="store_true",
        help="weigh each class's cross-entropy by the inverse of its share of the labeled cells (default: off, "
        "as in the paper)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="final test metrics averaged over the 8 rotations and mirrors of each cell (default: off, as in "
        "the paper; round lines stay without)",
    )
    parser.add_argument(
        "--development",
        action="store_true",
        help="leave the test specimens out entirely and split the pool again, by the same rule, into a "
        "development pool and test: for choosing settings (default: off)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 0.001, Sec. 3.1)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out test share (default: 0.2, Sec. 3.1)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=112,
        help="with --scratch: cell size (default: 112); otherwise the checkpoint's",
    )
    parser.add_argument(
        "--normalize",
        default="none",
        choices=NORMALIZATIONS,
        help="with --scratch: per-cell intensity stretch, as train.py's (default: none); otherwise the checkpoint's",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="run the frozen layers every step instead of caching their output (default: cache)",
    )
    parser.add_argument("--out", default=None, help="run directory (default: runs/<case>-limit<limit>-seed<seed>)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run from its state.pt")
    parser.add_argument(
        "--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps (default: auto)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the split, the seed set and training (default: 0)"
    )
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["grid"], ["query"], ["ingest"], ["status"]):  # subcommands that became scripts of their own
        script = "experiments.py" if argv[0] == "grid" else f"campaign.py {argv[0]}"
        sys.exit(f"error: `active.py {argv[0]}` is now `python {script}`")
    parser = build_parser()
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once, even in a log file
    try:
        if args.resume:
            explicit = build_parser()
            for action in explicit._actions:  # parse again keeping only the flags actually given
                action.default = argparse.SUPPRESS
            return resume(args, vars(explicit.parse_args(argv)))
        return run(args)
    except DataError as error:
        sys.exit(f"error: {error}")


# Flags that define a run: a resume that gives another value is refused (--device and the rest may differ).
RESUME_REFUSES = ("data", "specimens", "split", "development", "limit", "classes", "strategy", "scratch", "seed")
RESUME_REFUSES += ("k", "m", "checkpoint", "round_start", "balanced", "tta")


def resume(args, given: dict):
    """Continue the run in args.resume with its own saved arguments; flags that would change it are refused."""
    state_path = Path(args.resume) / "state.pt"
    if not state_path.exists():
        raise DataError(f"--resume {args.resume}: no state.pt in that folder")
    state = load_checkpoint(state_path, "--resume")
    if "args" not in state or "rounds" not in state:
        raise DataError(f"--resume {state_path}: not the state of an active.py run (no 'args' or 'rounds')")
    saved = argparse.Namespace(**{**vars(build_parser().parse_args([])), **state["args"]})  # flags newer than the run
    for key in RESUME_REFUSES:
        if key in given and given[key] != getattr(saved, key):
            raise DataError(
                f"--resume {args.resume}: the run was made with --{key.replace('_', '-')} {getattr(saved, key)}, "
                f"not {given[key]}; start a new run with another --out instead"
            )
    saved.resume, saved.out, saved.device = args.resume, args.resume, args.device
    return run(saved, state)


def run(args, state=None):
    run_started = time.time()
    if not 0 < args.limit <= 1:
        raise DataError(f"--limit {args.limit}: expected a fraction in (0, 1]")
    if not 0 < args.test_fraction < 1:
        raise DataError(f"--test-fraction {args.test_fraction}: expected a fraction in (0, 1)")
    check_flags(args, ("k", "m", "max_epochs", "patience", "batch_size", "synthetic_cells"), ("lr",))
    device = pick_device(args.device)
    seed_everything(args.seed)
    out = Path(args.out or f"runs/{case_name(args)}-limit{args.limit:g}-seed{args.seed}")
    args.out = str(out)
    for name in ("state.pt", "model.pt", "results.json", "labeled.csv", "confusion.png"):
        remove_stale_temporaries(out / name)  # what a save killed half-way left behind
    classes = parse_class_list(args.classes)

    # The network: pretrained (IN) with a new head and frozen early layers, or from scratch (Sec. 3.1, 3.2).
    pretrained = None
    if not args.scratch:  # the target cells must be prepared exactly as the source cells were
        pretrained = load_checkpoint(args.checkpoint)
        args.image_size, args.normalize = preprocessing(pretrained)
    dataset = get_dataset(
        args.data, "target", classes, args.image_size, args.normalize, args.seed, args.synthetic_cells, args.specimens
    )
    args.split = resolve_split(args.split, dataset)
    fingerprint = data_fingerprint(dataset)
    if state is not None and state["fingerprint"] != fingerprint:
        raise DataError(f"--resume {args.out}: the data differs from the run's ({state['fingerprint']['source']})")
    num_classes = len(dataset.class_names)
    model = ParallelResNet(num_classes)
    if pretrained is not None:
        model = transfer_model(pretrained, num_classes, device)
    model.to(device)
    initial_weights = {key: value.detach().clone() for key, value in model.state_dict().items()}

    # Step 1: the 80/20 split, each specimen whole on one side when specimens are known, so that the test
    # cells come from specimens the model never saw. The test part is only ever evaluated, never trained on
    # or scored for selection.
    fractions, sides = [1 - args.test_fraction, args.test_fraction], ["pool", "test"]
    pool, test = split_dataset(dataset, args.split, fractions, args.seed, sides)
    if args.development:  # the test specimens are set aside unseen; the pool's own are split again
        pool, test = development_split(dataset, args.split, pool, fractions, args.seed)
        sides = ["dev pool", "dev test"]
    print(describe_split(dataset, args.split, [pool, test], sides, args.seed))
    sizes = round_sizes(len(pool), args.limit, args.k, args.m, args.strategy)
    budget = sum(sizes)
    cache = None
    if pretrained is not None and not args.no_cache:
        started = time.time()
        cache = early_feature_cache(model, dataset.images, device)
        print(f"cached the frozen layers' output for {len(dataset)} cells in {time.time() - started:.1f}s")
    forward = forward_fn(model, dataset.images, cache, device)
    uncertainty = None if args.strategy == "random" else UNCERTAINTY[args.strategy]

    generator = torch.Generator().manual_seed(args.seed)
    setup_seconds = time.time() - run_started  # loading, model and cache; resumed runs add theirs
    labeled: list[int] = []  # dataset indices, in labeling order
    reasons: list[str] = []
    label_round: list[int] = []
    rounds: list[dict] = []
    optimizer = None
    if state is not None:
        model.load_state_dict(state["model"])
        initial_weights = state["initial_weights"]
        setup_seconds += state["setup_seconds"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        labeled, reasons, label_round, rounds = (
            state["labeled"],
            state["reasons"],
            state["label_round"],
            state["rounds"],
        )
        # Rounds are numbered from 0 in the round lines, so the last finished one is len(rounds) - 1.
        print(f"resumed {args.out} after round {len(rounds) - 1} ({len(labeled)}/{budget} labeled)")
    print(
        f"{case_name(args).upper()}: pool {len(pool)}, test {len(test)}, budget {budget} = "
        f"{' + '.join(map(str, sizes)) if len(sizes) < 8 else f'{sizes[0]} + {len(sizes) - 1} rounds of <= {sizes[1]}'}"
    )

    for round_index in range(len(rounds), len(sizes)):
        started = time.time()
        in_pool = torch.ones(len(dataset), dtype=torch.bool)
        in_pool[labeled] = False
        unlabeled = pool[in_pool[pool]]
        # Steps 2 and 4-5: the seed set at random, then the most uncertain unlabeled pool images.
        if round_index == 0 or uncertainty is None:
            chosen = unlabeled[torch.randperm(len(unlabeled), generator=generator)[: sizes[round_index]]]
            chosen_reasons = ["random"] * len(chosen)
            score_seconds = 0.0
        else:
            scores = uncertainty(probabilities_of(model, forward, unlabeled))
            positions = select_most_uncertain(scores, sizes[round_index])
            chosen = unlabeled[positions]
            chosen_reasons = [f"{args.strategy}={value:.6f}" for value in scores[positions].tolist()]
            score_seconds = time.time() - started
        labeled += chosen.tolist()
        reasons += chosen_reasons
        label_round += [round_index] * len(chosen)
        queried = torch.bincount(dataset.labels[chosen], minlength=num_classes).tolist()

        # Step 3: fine-tune on everything labeled so far.
        if args.round_start == "restart":
            model.load_state_dict(initial_weights)
        train_started = time.time()
        epochs, train_loss, seen, optimizer = fine_tune(
            model, forward, dataset.labels, labeled, args, generator, device
        )
        train_seconds = time.time() - train_started

        # Report on the test split (never used for any decision).
        metrics = summarize(dataset.labels[test], probabilities_of(model, forward, test), dataset.class_names)
        rounds.append(
            {
                "round": round_index,
                "labeled": len(labeled),
                "queried": dict(zip(dataset.class_names, queried)),
                "mca": metrics["mca"],
                "aca": metrics["aca"],
                "per_class": metrics["per_class"],
                "epochs": epochs,
                "train_loss": train_loss,
                "train_seconds": train_seconds,
                "score_seconds": score_seconds,
                "seconds": time.time() - started,
            }
        )
        save_atomic(
            {
                "args": vars(args),
                "fingerprint": fingerprint,
                "round": round_index,
                "labeled": labeled,
                "reasons": reasons,
                "label_round": label_round,
                "rounds": rounds,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "initial_weights": initial_weights,
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "class_names": dataset.class_names,
                "setup_seconds": setup_seconds,
            },
            out / "state.pt",
        )
        histogram = " ".join(
            f"{SHORT_NAMES.get(name, name[:6])}:{count}" for name, count in zip(dataset.class_names, queried)
        )
        print(
            f"round {round_index:2d} | labeled {len(labeled):5d}/{budget} | queried {histogram} | "
            f"MCA {100 * metrics['mca']:5.1f}% ACA {100 * metrics['aca']:5.1f}% | train {train_seconds:5.1f}s "
            f"({epochs} ep, {seen / max(train_seconds, 1e-9):5.0f} img/s) score {score_seconds:4.1f}s | "
            f"{time.time() - started:5.1f}s",
            flush=True,
        )

    return finish(args, dataset, pool, test, labeled, reasons, label_round, rounds, model, budget, out, setup_seconds)


def finish(args, dataset, pool, test, labeled, reasons, label_round, rounds, model, budget, out, setup_seconds):
    """Write what a run leaves behind: results.json, labeled.csv, model.pt, confusion.png."""
    device = next(model.parameters()).device
    # Recompute the final test metrics with the full network: they must equal the cached path's.
    forward = forward_fn(model, dataset.images, None, device)
    # The specimen vote only where the test side holds whole specimens.
    cell_specimens = [dataset.specimens[i] for i in test.tolist()] if args.split == "specimen" else None
    if args.tta:  # the 8 rotations and mirrors of each test cell, averaged
        probabilities = predict_probabilities(model, dataset.images[test], device, 64, tta=True)
    else:
        probabilities = probabilities_of(model, forward, test)
    metrics = summarize(dataset.labels[test], probabilities, dataset.class_names, cell_specimens)
    test_specimens = specimens_of(dataset, test)
    split = {
        "names": ["pool", "test"],
        "fractions": [1 - args.test_fraction, args.test_fraction],
        "seed": args.seed,
        "development": args.development,
    }
    checkpoint = {
        "model": model.state_dict(),
        "class_names": dataset.class_names,
        "args": vars(args),
        "round": len(rounds) - 1,
        "metrics": {"test": metrics},
        "data_kind": "target",
        "split": args.split,
        "split_parts": split,
        "test_specimens": test_specimens,
        "image_size": args.image_size,
        "normalize": args.normalize,
    }
    save_atomic(checkpoint, out / "model.pt")
    draw_confusion(
        metrics["confusion"],
        dataset.class_names,
        out / "confusion.png",
        f"{case_name(args).upper()} at limit {args.limit:g}, test split",
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "file", "label", "specimen", "round", "reason"])
    for index, reason, round_index in zip(labeled, reasons, label_round):
        specimen = dataset.specimens[index] if dataset.specimens is not None else None
        label = dataset.class_names[dataset.labels[index]]
        writer.writerow([index, dataset.files[index], label, specimen or "", round_index, reason])
    write_text_atomic(buffer.getvalue(), out / "labeled.csv")
    results = {
        "args": vars(args),
        "case": case_name(args),
        "mca": metrics["mca"],
        "aca": metrics["aca"],
        "per_class": metrics["per_class"],
        "confusion": metrics["confusion"],
        "split": args.split,
        "development": args.development,
        "test_specimens": test_specimens,
        "specimen_accuracy": metrics.get("specimen_accuracy"),
        "specimen_results": metrics.get("specimens"),
        "budget": budget,
        "labeled": len(labeled),
        "seconds": setup_seconds + sum(r["seconds"] for r in rounds),
        "pool": len(pool),
        "test": len(test),
        "rounds": rounds,
    }
    write_text_atomic(json.dumps(results, indent=2), out / "results.json")
    by_specimen = (
        f", specimens {100 * metrics['specimen_accuracy']:.1f}% by majority vote"
        if "specimen_accuracy" in metrics
        else ""
    )
    print(
        f"final ({args.split} split): MCA {100 * metrics['mca']:.2f}% ACA {100 * metrics['aca']:.2f}%{by_specimen} "
        f"with {len(labeled)} labels ({len(labeled) / len(pool):.1%} of the pool); run written to {out}"
    )
    return results


if __name__ == "__main__":
    main()
