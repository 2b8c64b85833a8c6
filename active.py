"""Active learning on the target dataset with the pretrained networks (paper Sec. 2.2, Table 1, Fig. 7, Sec. 3.1-3.3).

The loop (Table 1):
 1. split the target 80/20 (seeded, each specimen whole on one side when specimens are known):
    the unlabeled pool, and the test set, used only to report MCA and ACA after each round;
 2. budget = limit x pool size; label k = 15% of it at random (the simulated oracle reveals
    the stored labels);
 3. fine-tune on everything labeled so far (Sec. 3.1: until the training loss stops falling; here
    also at most 10 epochs, --max-epochs): the pretrained network (IN) with a fresh head for
    the target classes and both branches frozen up to the second pooling layer (--freeze none:
    every layer trains), or with --scratch the whole network from random initialisation;
 4. score every unlabeled pool image by its uncertainty, entropy by default (Eq. 3);
 5. label the m = 10% of the budget most uncertain ones; back to 3 until the budget is spent.

The paper's four cases (Sec. 3.2, 3.3, Table 2):
    IN-AL   python active.py --limit 0.2                              (default)
    IN-RS   python active.py --limit 0.2 --strategy random
    AL      python active.py --limit 0.2 --scratch
    RS      python active.py --limit 0.2 --scratch --strategy random
With --strategy random the whole budget is drawn at random and the network is
trained once, as in the paper. Add --data DIR for real data (e.g. ../shared/data/i3a).

A run directory (--out, default runs/<case>-limit<limit>-seed<seed>) gets state.pt after
every round, so the same command with --resume continues a killed run; at the end
results.json, labeled.csv, model.pt and confusion.png. The grid of cases x limits x seeds
is experiments.py; campaign.py puts a person in the oracle's place.
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
    add_device_flag,
    add_split_flags,
    check_flags,
    describe_split,
    development_split,
    dihedral_views,
    get_dataset,
    jitter_intensity,
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
from evaluate import draw_confusion, model_from_checkpoint, predict_probabilities, summarize
from model import ParallelResNet, trainable_parameters

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
    return torch.sort(scores, descending=True, stable=True).indices[:count]


def round_sizes(
    pool_size: int,
    limit: float,
    k: int | None = None,
    m: int | None = None,
    strategy: str = "entropy",
    k_fraction: float = 0.15,
    m_fraction: float = 0.10,
):
    """How many images each round labels: [k, m, m, ..., last], summing to the budget exactly.

    Sec. 3.1: budget = limit x pool (20% of 50,758 = 10,152), k = 15% of the budget at random first
    (1500), then m = 10% per round (1000); the last round is smaller when m does not divide what is
    left. k_fraction and m_fraction set k and m as shares of the budget, k and m as counts (a count wins).
    The random strategy, and a budget of the whole pool, label everything at once.
    """
    budget = min(pool_size, max(1, round(limit * pool_size)))
    if strategy == "random" or budget == pool_size:
        return [budget]  # Sec. 3.3: at 100% there is nothing to choose, so no active learning process
    k = min(budget, max(1, round(k_fraction * budget)) if k is None else k)
    m = max(1, round(m_fraction * budget)) if m is None else m
    sizes, left = [k], budget - k
    while left > 0:
        sizes.append(min(m, left))
        left -= sizes[-1]
    return sizes


# ---------------------------------------------------------------------------------------------
# Training and scoring on the labeled set


@torch.inference_mode()
def early_feature_cache(model: ParallelResNet, images: torch.Tensor, device, batch_size: int = 16, views: int = 1):
    """The frozen layers' output for every image, once (float16 on the CPU: 50 KB a cell), so that every
    round trains and scores only the layers above them (--no-cache runs the full network every step).

    Valid because those layers are fixed and their BatchNorm is in eval mode, so their output for a given
    input never changes (Sec. 3.1). views=8 gives the output for the 8 dihedral views of every image,
    row view * N + i for view `view` of image i (view 0 the image as it is). Batches of 16: on a CPU a batch
    whose activations (800 KB a cell) fit in the caches beats a large one (a one-off probe, not a kept command).
    """
    model.eval()
    count = len(images)
    approximations = details = None
    for start in range(0, count, batch_size):
        for view, cells in enumerate(dihedral_views(images[start : start + batch_size])[:views]):
            early_approximation, early_details = model.early_features(*model_inputs(cells, device))
            if approximations is None:  # filled in place: concatenating batches would hold the cache twice
                approximations = torch.empty((views * count, *early_approximation.shape[1:]), dtype=torch.float16)
                details = torch.empty((views * count, *early_details.shape[1:]), dtype=torch.float16)
            rows = slice(view * count + start, view * count + start + len(cells))
            approximations[rows] = early_approximation.to("cpu", torch.float16)
            details[rows] = early_details.to("cpu", torch.float16)
    return approximations, details


def add_dihedral_views(model: ParallelResNet, images: torch.Tensor, cells, device, views: dict, capacity: int):
    """Cache the frozen layers' output for the 8 dihedral views of the given cells not cached yet (--augment).

    Only labeled cells are trained on, so only they need their 8 views; scoring and the test use the plain
    cache. views: {} at first, then {"row": (N,) each cell's row or -1, "approximations" and "details":
    (capacity, 8, C, H, W) float16, "count": rows used}, capacity the most cells it will hold (the budget).
    At I3A's 20% budget that is 0.8 GB and 17,000 images through the frozen layers, against 5.1 GB and
    109,000 for the views of every cell; 4 GB at LSHEp-2's 10,152 labels.
    """
    cells = torch.as_tensor(cells)
    if not views:
        views.update(row=torch.full((len(images),), -1, dtype=torch.int64), approximations=None, details=None, count=0)
    new = cells[views["row"][cells] < 0]
    if len(new) == 0:
        return
    approximations, details = early_feature_cache(model, images[new], device, views=8)  # row view * len(new) + i
    if views["approximations"] is None:
        views["approximations"] = torch.empty((capacity, 8, *approximations.shape[1:]), dtype=torch.float16)
        views["details"] = torch.empty((capacity, 8, *details.shape[1:]), dtype=torch.float16)
    rows = torch.arange(views["count"], views["count"] + len(new))
    views["approximations"][rows] = approximations.unflatten(0, (8, len(new))).transpose(0, 1)
    views["details"][rows] = details.unflatten(0, (8, len(new))).transpose(0, 1)
    views["row"][new] = rows
    views["count"] += len(new)


def forward_fn(model: ParallelResNet, images: torch.Tensor, cache, device, augment=None, views=None):
    """A function from dataset indices to logits: through the cached early features if any, else the full network.

    With a generator for augment, each cell is seen in one of its 8 dihedral views drawn at random (exact
    quarter turns and mirrors, as valid as the original: a pattern has no orientation), from the views
    cache of add_dihedral_views when the frozen layers are cached; --augment dihedral trains on that.
    Without, every cell as it is.
    """
    if cache is not None and augment is not None:

        def forward(index):
            rows = views["row"][torch.as_tensor(index)]
            if bool((rows < 0).any()):
                raise ValueError("forward_fn: a cell without its dihedral views cached (add_dihedral_views)")
            chosen = torch.randint(8, (len(rows),), generator=augment)
            inputs = views["approximations"][rows, chosen], views["details"][rows, chosen]
            return model.head(model.late_features(*(part.to(device).float() for part in inputs)))

    elif cache is not None:
        early_approximation, early_details = cache

        def forward(index):
            inputs = early_approximation[index].to(device).float(), early_details[index].to(device).float()
            return model.head(model.late_features(*inputs))

    else:

        def forward(index):
            cells = images[index]
            if augment is not None:
                chosen = torch.randint(8, (len(cells),), generator=augment)
                cells = torch.stack(dihedral_views(cells))[chosen, torch.arange(len(cells))]
            return model(*model_inputs(cells, device))

    return forward


def jittered_forward_fn(model: ParallelResNet, images: torch.Tensor, device, generator: torch.Generator):
    """--augment photometric: the full network on each cell with its own gamma, blur and noise (not in the paper).

    The frozen layers' cache holds the cells as they are, so training runs them on every jittered batch
    (the cost of --no-cache, on the labeled cells only); scoring and the test still use the cache.
    """

    def forward(index):
        return model(*model_inputs(jitter_intensity(images[index], generator), device))

    return forward


PROGRESS_SECONDS = 30  # fine_tune prints an epoch line at most this often (a round line ends every round)
# Each fine-tuning stops at this many epochs at most (--max-epochs). Not the paper's (Sec. 3.1 stops on patience
# alone): 10 scored higher than 30 on a development split of the pool's own specimens (docs/results-i3a.md,
# "The stopping rule"); a cap that never binds is the paper's rule.
MAX_EPOCHS = 10


def fine_tune(
    model,
    forward,
    labels: torch.Tensor,
    labeled,
    generator: torch.Generator,
    device,
    *,
    lr: float = 1e-3,
    max_epochs: int = MAX_EPOCHS,
    patience: int = 5,
    batch_size: int = 64,
    stop_weights: str = "best",
    batchnorm: str = "recalibrate",
    balanced: bool = False,
):
    """Adam at lr until the training loss has not decreased for patience epochs (Sec. 3.1), or max_epochs.

    labeled: the dataset indices to train on; forward maps a batch of them to logits.
    stop_weights "best" restores the lowest-training-loss epoch's weights at the end (a late spike of
    the loss on a small labeled set would otherwise be what the round keeps), "last" keeps the final
    epoch's; batchnorm "recalibrate" then recomputes the BatchNorm statistics (recalibrate_batchnorm);
    balanced weighs each class's loss by the inverse of its labeled count (not in the paper).
    Returns (epochs run, the kept epoch, its training loss, images seen): the epochs after the kept one are
    the rule's cost, patience epochs at least whenever it stops before max_epochs (docs/speed.md).
    """
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=lr)
    labeled = torch.as_tensor(labeled)
    weights = None
    if balanced:  # each class weighs as much in the loss as any other, however few of it are labeled
        counts = torch.bincount(labels[labeled], minlength=model.head.out_features).float()
        weights = (counts.sum() / (len(counts) * counts.clamp_min(1))).to(device)
    model.train()
    best, bad, epoch, seen, epoch_loss, best_weights = float("inf"), 0, 0, 0, float("nan"), None
    best_epoch = 0
    started = last_line = time.time()
    while epoch < max_epochs and bad < patience:
        epoch += 1
        order = labeled[torch.randperm(len(labeled), generator=generator)]
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(forward(index), labels[index].to(device), weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        epoch_loss = total / len(order)
        seen += len(order)
        if epoch_loss < best - 1e-4:  # "decreased": by more than 1e-4
            best, bad, best_epoch = epoch_loss, 0, epoch
            if stop_weights == "best":
                best_weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
        else:
            bad += 1
        now = time.time()
        if now - last_line >= PROGRESS_SECONDS:
            last_line, elapsed = now, now - started
            print(
                f"  epoch {epoch:3d}/{max_epochs} | loss {epoch_loss:.4f} | "
                f"{seen / max(elapsed, 1e-9):5.0f} img/s | {elapsed:6.1f}s",  # a coarse clock can read 0 s
                flush=True,
            )
    kept = epoch
    if best_weights is not None and bad > 0:
        model.load_state_dict(best_weights)
        epoch_loss, kept = best, best_epoch
    if batchnorm == "recalibrate":
        recalibrate_batchnorm(model, forward, labeled, batch_size)
    return epoch, kept, epoch_loss, seen


TRAINING_FLAGS = ("lr", "max_epochs", "patience", "batch_size", "stop_weights", "batchnorm", "balanced")


@torch.no_grad()
def recalibrate_batchnorm(model, forward, labeled, batch_size: int) -> None:
    """Recompute the trainable BatchNorm layers' statistics over the labeled cells with the kept weights.

    Training keeps an exponential average of the last batches' statistics, taken while the weights
    still moved, and eval mode uses it: from scratch on a small labeled set it can lag far behind the
    final weights (docs/paper-notes.md). One pass in train mode, every batch weighing the same
    (momentum None), makes eval mode match the trained network. Frozen layers stay untouched.
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


# ---------------------------------------------------------------------------------------------
# The loop (Table 1)


def run(args, state=None):
    """One active learning run, Table 1's steps; with state (from state.pt) the rest of a killed run."""
    run_started = time.time()
    check_run_flags(args)
    device = pick_device(args.device)
    seed_everything(args.seed)
    out = Path(run_folder(args))
    args.out = str(out)
    for name in ("state.pt", "model.pt", "results.json", "labeled.csv", "confusion.png"):
        remove_stale_temporaries(out / name)  # what a save killed half-way left behind

    # The network: pretrained (IN) with a new head and frozen early layers, or from scratch (Sec. 3.1, 3.2).
    pretrained = None
    if not args.scratch:  # the target cells must be prepared exactly as the source cells were
        pretrained = load_checkpoint(args.checkpoint)
        args.image_size, args.normalize = preprocessing(pretrained)
    classes = parse_class_list(args.classes)
    dataset = get_dataset(
        args.data, "target", classes, args.image_size, args.normalize, args.seed, args.synthetic_cells, args.specimens
    )
    args.split = resolve_split(args.split, dataset)
    fingerprint = data_fingerprint(dataset)  # what state.pt records, so that a resume reads the same data
    if state is not None and state["fingerprint"] != fingerprint:
        raise DataError(f"--resume: the data differs from the run's in {out} ({state['fingerprint']['source']})")
    num_classes = len(dataset.class_names)
    model = ParallelResNet(num_classes)  # built in every case: each seed's random stream stays as published
    if pretrained is not None:
        model = model_from_checkpoint(pretrained, device, new_classes=num_classes, freeze=args.freeze == "early")
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
    sizes = round_sizes(
        len(pool),
        args.limit,
        k=args.k,
        m=args.m,
        strategy=args.strategy,
        k_fraction=args.k_fraction,
        m_fraction=args.m_fraction,
    )
    cache = None
    if model.early_frozen and not args.no_cache:  # only frozen layers' output stays the same every round
        started = time.time()
        cache = early_feature_cache(model, dataset.images, device)
        print(f"cached the frozen layers' output for {len(dataset)} cells in {time.time() - started:.1f}s")
    forward = forward_fn(model, dataset.images, cache, device)
    uncertainty = None if args.strategy == "random" else UNCERTAINTY[args.strategy]
    generator = torch.Generator().manual_seed(args.seed)
    # --augment dihedral or photometric: training sees a random view or jitter of each cell, drawn from the
    # run's generator (so a resumed run draws the same); scoring and the test see the cells as they are.
    train_forward, views = forward, {}
    if args.augment == "dihedral":
        train_forward = forward_fn(model, dataset.images, cache, device, augment=generator, views=views)
    elif args.augment == "photometric":
        train_forward = jittered_forward_fn(model, dataset.images, device, generator)
    training = {key: getattr(args, key) for key in TRAINING_FLAGS}  # fine_tune's settings, the same every round
    setup_seconds = time.time() - run_started  # loading, model and cache; resumed runs add theirs
    # labeled: {"index", "round", "reason"} of each labeled cell in labeling order; rounds: round_record's
    labeled, rounds = [], []
    if state is not None:
        labeled, rounds, initial_weights = restore(state, model, generator)
        setup_seconds += state["setup_seconds"]
        print(f"resumed {args.out} after round {len(rounds) - 1} ({len(labeled)}/{sum(sizes)} labeled)")
    print(plan_line(args, len(pool), len(test), sizes))

    for round_index in range(len(rounds), len(sizes)):
        started = time.time()
        in_pool = torch.ones(len(dataset), dtype=torch.bool)
        in_pool[[entry["index"] for entry in labeled]] = False
        unlabeled = pool[in_pool[pool]]
        if round_index == 0 or uncertainty is None:  # Step 2: the seed set, k at random (random strategy: all)
            chosen = unlabeled[torch.randperm(len(unlabeled), generator=generator)[: sizes[round_index]]]
            reasons = ["random"] * len(chosen)
        else:  # Steps 4 and 5: score every unlabeled pool image (Eq. 3), label the m most uncertain
            scores = uncertainty(predict_probabilities(model, unlabeled, device, 64, forward=forward))
            positions = select_most_uncertain(scores, sizes[round_index])
            chosen = unlabeled[positions]
            reasons = [f"{args.strategy}={value:.6f}" for value in scores[positions].tolist()]
        scored = len(unlabeled) if round_index > 0 and uncertainty is not None else 0
        score_seconds = time.time() - started if scored else 0.0
        labeled += [{"index": i, "round": round_index, "reason": r} for i, r in zip(chosen.tolist(), reasons)]

        # Step 3: fine-tune on everything labeled so far.
        if args.round_start == "restart":
            model.load_state_dict(initial_weights)
        indices = [entry["index"] for entry in labeled]
        if cache is not None and args.augment == "dihedral":  # the 8 views of the cells labeled this round
            add_dihedral_views(model, dataset.images, indices, device, views, capacity=sum(sizes))
        train_started = time.time()
        epochs, kept, train_loss, seen = fine_tune(
            model, train_forward, dataset.labels, indices, generator, device, **training
        )
        train_seconds = time.time() - train_started

        # Report on the test split (never used for any decision).
        probabilities = predict_probabilities(model, test, device, 64, forward=forward)
        metrics = summarize(dataset.labels[test], probabilities, dataset.class_names)
        queried = torch.bincount(dataset.labels[chosen], minlength=num_classes).tolist()
        rounds.append(round_record(round_index, labeled, queried, metrics, epochs, kept, train_loss, dataset))
        rounds[-1].update(scored=scored, train_seconds=train_seconds, score_seconds=score_seconds)
        rounds[-1]["seconds"] = time.time() - started
        save_state(out, args, fingerprint, labeled, rounds, model, initial_weights, generator, setup_seconds)
        print(round_line(rounds[-1], sum(sizes), seen), flush=True)

    return finish(args, dataset, pool, test, labeled, rounds, model, setup_seconds)


# ---------------------------------------------------------------------------------------------
# The loop's bookkeeping: what a round records, saves and prints, and what a run writes at the end


def check_run_flags(args) -> None:
    if not 0 < args.limit <= 1:
        raise DataError(f"--limit {args.limit}: expected a fraction in (0, 1]")
    if not 0 < args.test_fraction < 1:
        raise DataError(f"--test-fraction {args.test_fraction}: expected a fraction in (0, 1)")
    for flag in ("k_fraction", "m_fraction"):
        if not 0 < getattr(args, flag) <= 1:
            name = flag.replace("_", "-")
            raise DataError(f"--{name} {getattr(args, flag)}: expected a fraction of the budget in (0, 1]")
    check_flags(args, ("k", "m", "max_epochs", "patience", "batch_size", "synthetic_cells"), ("lr",))


def case_name(args) -> str:
    strategy = {"entropy": "al", "random": "rs"}.get(args.strategy, args.strategy)
    return strategy if args.scratch else f"in-{strategy}"


def run_folder(args) -> str:
    return args.out or f"runs/{case_name(args)}-limit{args.limit:g}-seed{args.seed}"


def data_fingerprint(dataset) -> dict:
    """What a resume checks: the same cells, classes and labels as the run's."""
    described = {"source": dataset.source, "cells": len(dataset), "class_names": dataset.class_names}
    return {**described, "label_sum": int(dataset.labels.sum()), "files_head": dataset.files[:3]}


def plan_line(args, pool_size: int, test_size: int, sizes: list[int]) -> str:
    plan = " + ".join(map(str, sizes)) if len(sizes) < 8 else f"{sizes[0]} + {len(sizes) - 1} rounds of <= {sizes[1]}"
    return f"{case_name(args).upper()}: pool {pool_size}, test {test_size}, budget {sum(sizes)} = {plan}"


def round_record(round_index, labeled, queried, metrics, epochs, kept_epoch, train_loss, dataset) -> dict:
    """What results.json keeps of a round (the times are added once the round ends)."""
    return {
        "round": round_index,
        "labeled": len(labeled),
        "queried": dict(zip(dataset.class_names, queried)),
        "mca": metrics["mca"],
        "aca": metrics["aca"],
        "per_class": metrics["per_class"],
        "epochs": epochs,
        "kept_epoch": kept_epoch,  # the weights the round keeps; the epochs after it only decided to stop
        "train_loss": train_loss,
    }


def round_line(record: dict, budget: int, seen: int) -> str:
    """The progress line of a round: what it labeled, the test metrics, the time and the throughput."""
    histogram = " ".join(f"{SHORT_NAMES.get(name, name[:6])}:{count}" for name, count in record["queried"].items())
    throughput = seen / max(record["train_seconds"], 1e-9)
    return (
        f"round {record['round']:2d} | labeled {record['labeled']:5d}/{budget} | queried {histogram} | "
        f"MCA {100 * record['mca']:5.1f}% ACA {100 * record['aca']:5.1f}% | train {record['train_seconds']:5.1f}s "
        f"({record['epochs']} ep, kept {record['kept_epoch']}, {throughput:5.0f} img/s) "
        f"score {record['score_seconds']:4.1f}s | {record['seconds']:5.1f}s"
    )


def save_state(out, args, fingerprint, labeled, rounds, model, initial_weights, generator, setup_seconds) -> None:
    """state.pt after every round, written atomically: what `--resume` needs to go on exactly."""
    state = {
        "args": vars(args),
        "fingerprint": fingerprint,
        "round": len(rounds) - 1,
        "labeled": labeled,
        "rounds": rounds,
        "model": model.state_dict(),
        "initial_weights": initial_weights,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "class_names": fingerprint["class_names"],
        "setup_seconds": setup_seconds,
    }
    save_atomic(state, out / "state.pt")


def restore(state: dict, model, generator) -> tuple[list, list, dict]:
    """Put a killed run's weights and random states back; its labeled cells, rounds and initial weights."""
    model.load_state_dict(state["model"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    labeled = state["labeled"]
    if labeled and not isinstance(labeled[0], dict):  # state.pt of an older version: three parallel lists
        labeled = [
            {"index": i, "round": r, "reason": why}
            for i, r, why in zip(labeled, state["label_round"], state["reasons"])
        ]
    return labeled, state["rounds"], state["initial_weights"]


def finish(args, dataset, pool, test, labeled, rounds, model, setup_seconds):
    """Write what a run leaves behind: results.json, labeled.csv, model.pt, confusion.png."""
    out, device = Path(args.out), next(model.parameters()).device
    # The final test metrics with the full network: they must equal the cached path's.
    cell_specimens = [dataset.specimens[i] for i in test.tolist()] if args.split == "specimen" else None
    probabilities = predict_probabilities(model, dataset.images[test], device, 64, tta=args.tta)  # tta: 8 views
    metrics = summarize(dataset.labels[test], probabilities, dataset.class_names, cell_specimens)
    test_specimens = specimens_of(dataset, test)
    split = {"names": ["pool", "test"], "fractions": [1 - args.test_fraction, args.test_fraction], "seed": args.seed}
    split["development"] = args.development  # the development split is remade from the same seed (evaluate.py)
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
    title = f"{case_name(args).upper()} at limit {args.limit:g}, test split"
    draw_confusion(metrics["confusion"], dataset.class_names, out / "confusion.png", title)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "file", "label", "specimen", "round", "reason"])
    for entry in labeled:
        index = entry["index"]
        specimen = dataset.specimens[index] if dataset.specimens is not None else None
        label = dataset.class_names[dataset.labels[index]]
        writer.writerow([index, dataset.files[index], label, specimen or "", entry["round"], entry["reason"]])
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
        "budget": len(labeled),  # the loop spends the budget exactly (round_sizes)
        "labeled": len(labeled),
        "seconds": setup_seconds + sum(r["seconds"] for r in rounds),
        "pool": len(pool),
        "test": len(test),
        "rounds": rounds,
    }
    write_text_atomic(json.dumps(results, indent=2), out / "results.json")
    vote = metrics.get("specimen_accuracy")
    by_specimen = f", specimens {100 * vote:.1f}% by majority vote" if vote is not None else ""
    print(
        f"final ({args.split} split): MCA {100 * metrics['mca']:.2f}% ACA {100 * metrics['aca']:.2f}%{by_specimen} "
        f"with {len(labeled)} labels ({len(labeled) / len(pool):.1%} of the pool); run written to {out}"
    )
    return results


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    add = parser.add_argument
    add("--limit", type=float, default=0.2, help="labeling budget as a fraction of the pool (default: 0.2)")
    add("--data", default=None, help="labeled target cells (default: the embedded synthetic 6-class set)")
    add("--classes", nargs="+", default=None, help="keep only these target classes (default: all found)")
    add_split_flags(parser, "pool/test")
    add("--synthetic-cells", type=int, default=1500, help="synthetic target size without --data (default: 1500)")
    add("--checkpoint", default="runs/pretrained.pt", help="network from train.py (default: runs/pretrained.pt)")
    add("--scratch", action="store_true", help="train the whole network from random weights (AL, RS; default: off)")
    add(
        "--strategy",
        default="entropy",
        choices=[*UNCERTAINTY, "random"],
        help="what to label (default: entropy, Eq. 3)",
    )
    share = "random seed-set size as a fraction of the budget (default: 0.15, Sec. 3.1)"
    add("--k-fraction", type=float, default=0.15, help=share)
    add("--k", type=int, default=None, help="random seed-set size as a count; overrides --k-fraction (default: none)")
    per_round = "images labeled per round as a fraction of the budget (default: 0.10, Sec. 3.1)"
    add("--m-fraction", type=float, default=0.10, help=per_round)
    add(
        "--m",
        type=int,
        default=None,
        help="images labeled per round as a count; overrides --m-fraction (default: none)",
    )
    freeze = (
        "with the pretrained network: fix both branches up to the second pooling layer, or train every layer "
        "(default: early, Sec. 3.1)"
    )
    add("--freeze", default="early", choices=["early", "none"], help=freeze)
    rounds = "fine-tune from the previous round's weights, or from the first ones (default: continue)"
    add("--round-start", default="continue", choices=["continue", "restart"], help=rounds)
    cap = f"most epochs per fine-tuning (default: {MAX_EPOCHS}, chosen on the development split; 30 is the earlier cap)"
    add("--max-epochs", type=int, default=MAX_EPOCHS, help=cap)
    add(
        "--patience", type=int, default=5, help="stop after this many epochs without a lower training loss (default: 5)"
    )
    stop = "keep the weights of the lowest-training-loss epoch, or the last epoch's (default: best)"
    add("--stop-weights", default="best", choices=["best", "last"], help=stop)
    batchnorm = (
        "recompute trainable BatchNorm statistics after fine-tuning, or keep the running ones (default: recalibrate)"
    )
    add("--batchnorm", default="recalibrate", choices=["recalibrate", "running"], help=batchnorm)
    add("--balanced", action="store_true", help="class-balanced cross-entropy (default: off, as in the paper)")
    augment = (
        "fine-tune on a random one of each cell's 8 rotations and mirrors, or on each cell with its own gamma, blur "
        "and noise (default: none, as the paper)"
    )
    add("--augment", default="none", choices=["none", "dihedral", "photometric"], help=augment)
    add("--tta", action="store_true", help="final test over the 8 rotations and mirrors (default: off, as the paper)")
    development = "leave the test specimens out, split the pool again into a development pool and test (default: off)"
    add("--development", action="store_true", help=development)
    add("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    add("--lr", type=float, default=1e-3, help="Adam learning rate (default: 0.001, Sec. 3.1)")
    add("--test-fraction", type=float, default=0.2, help="held-out test share (default: 0.2, Sec. 3.1)")
    add("--image-size", type=int, default=112, help="with --scratch: cell size (default: 112; else the checkpoint's)")
    normalize = "with --scratch: per-cell intensity stretch (default: percentile; none is the paper's)"
    add("--normalize", default="percentile", choices=NORMALIZATIONS, help=normalize)
    add("--no-cache", action="store_true", help="run the frozen layers every step (default: cache their output)")
    add("--out", default=None, help="run directory (default: runs/<case>-limit<limit>-seed<seed>)")
    add("--resume", action="store_true", help="continue the killed run in --out from its state.pt (default: off)")
    add_device_flag(parser)
    add("--seed", type=int, default=0, help="seed for the split, the seed set and training (default: 0)")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once, even in a log file
    try:
        if args.resume:
            unset = object()  # parsed again into a namespace where argparse sets no defaults: the flags given
            given = build_parser().parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))
            return resume(run_folder(args), args.device, {k: v for k, v in vars(given).items() if v is not unset})
        return run(args)
    except DataError as error:
        sys.exit(f"error: {error}")


# Flags that define a run: a resume that gives another value is refused (--device and the rest may differ).
RESUME_REFUSES = ("data", "specimens", "split", "development", "limit", "classes", "strategy", "scratch", "seed")
RESUME_REFUSES += ("k", "k_fraction", "m", "m_fraction", "checkpoint", "freeze", "round_start", "balanced")
RESUME_REFUSES += ("tta", "augment")


def resume(folder: str, device: str = "auto", given: dict | None = None):
    """Continue the run in folder with its own saved arguments; given flags that would change it are refused."""
    state_path = Path(folder) / "state.pt"
    if not state_path.exists():
        raise DataError(f"--resume: no state.pt in {folder} (give the run's --out, or the flags that name it)")
    state = load_checkpoint(state_path, "--resume")
    if "args" not in state or "rounds" not in state:
        raise DataError(f"--resume {state_path}: not the state of an active.py run (no 'args' or 'rounds')")
    saved = argparse.Namespace(**{**vars(build_parser().parse_args([])), **state["args"]})  # flags newer than the run
    for key in RESUME_REFUSES:
        if key in (given or {}) and given[key] != getattr(saved, key):
            raise DataError(
                f"--resume {folder}: the run was made with --{key.replace('_', '-')} {getattr(saved, key)}, "
                f"not {given[key]}; start a new run with another --out instead"
            )
    saved.resume, saved.out, saved.device = True, str(folder), device
    return run(saved, state)


if __name__ == "__main__":
    main()
