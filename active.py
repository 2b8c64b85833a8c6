"""Active learning on the target dataset with the pretrained networks (paper Sec. 2.2, Table 1, Fig. 7, Sec. 3.1-3.3).

The loop (Table 1), `run` below:
 1. split the target 80/20 (seeded, each specimen whole on one side when specimens are known):
    the unlabeled pool, and the test set, used only to report MCA and ACA after each round;
 2. budget = limit x pool size; label k = 15% of it at random (the simulated oracle reveals
    the stored labels);
 3. fine-tune on everything labeled so far (Sec. 3.1: until the training loss stops falling; here
    also at most 10 epochs, --max-epochs): the pretrained network (IN) with a fresh head for
    the target classes and both branches frozen up to the second pooling layer (model.transfer),
    or with --scratch the whole network from random initialisation;
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
results.json, labeled.csv, model.pt and confusion.png (records.py). The grid of cases x
limits x seeds is experiments.py; campaign.py puts a person in the oracle's place.
"""

import argparse
import time

import torch
import torch.nn.functional as F

import records
from commands import run_command
from data import NORMALIZATIONS, DataError, model_inputs
from devices import add_device_flag, in_precision, pick_device, pick_precision, precision_line, seed_everything
from evaluate import predict_probabilities, summarize
from layouts import get_dataset, parse_class_list
from model import ParallelResNet, trainable_parameters, transfer, unfreeze_early_layers
from runs import load_checkpoint, network_from_checkpoint, preprocessing
from splits import FOLDS, add_split_flags, describe_split, pool_and_test, resolve_split

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


def round_sizes(pool_size: int, limit: float, strategy="entropy", k_fraction=0.15, m_fraction=0.10) -> list[int]:
    """How many images each round labels: [k, m, m, ..., last], summing to the budget exactly.

    Sec. 3.1: budget = limit x pool (20% of 50,758 = 10,152), k = 15% of the budget at random first
    (1500), then m = 10% per round (1000); the last round is smaller when m does not divide what is
    left. The random strategy, and a budget of the whole pool, label everything at once.
    """
    budget = min(pool_size, max(1, round(limit * pool_size)))
    if strategy == "random" or budget == pool_size:
        return [budget]  # Sec. 3.3: at 100% there is nothing to choose, so no active learning process
    k = min(budget, max(1, round(k_fraction * budget)))
    m = max(1, round(m_fraction * budget))
    sizes, left = [k], budget - k
    while left > 0:
        sizes.append(min(m, left))
        left -= sizes[-1]
    return sizes


class Pool:
    """The unlabeled pool of Table 1 and what has been labeled from it, in labeling order (after baal's pool)."""

    def __init__(self, indices: torch.Tensor):
        self.indices = indices  # the dataset indices of the pool side of the split
        self.labeled: list[dict] = []  # {"index", "round", "reason"} of each labeled cell, in labeling order

    def labeled_indices(self) -> list[int]:
        return [entry["index"] for entry in self.labeled]

    def unlabeled(self) -> torch.Tensor:
        """The dataset indices of the pool's cells not labeled yet, in pool order."""
        taken = torch.tensor(self.labeled_indices(), dtype=torch.int64)
        return self.indices[~torch.isin(self.indices, taken)]

    def label(self, chosen: torch.Tensor, round_index: int, reasons: list[str]) -> None:
        """The oracle reveals these cells' labels (Table 1: the annotator; here the stored labels)."""
        self.labeled += [{"index": i, "round": round_index, "reason": r} for i, r in zip(chosen.tolist(), reasons)]

    def state_dict(self) -> dict:
        """What a resume needs of the pool: the labeled cells, in labeling order (the pool side is remade)."""
        return {"labeled": self.labeled}

    def load_state_dict(self, state: dict) -> None:
        self.labeled = list(state["labeled"])


def choose(model, forward, unlabeled, count, round_index, strategy, generator, device):
    """Steps 2, 4 and 5: (chosen dataset indices, why each, how many cells were scored)."""
    if round_index == 0 or strategy == "random":  # Step 2: the seed set, k at random (random strategy: all)
        chosen = unlabeled[torch.randperm(len(unlabeled), generator=generator)[:count]]
        return chosen, ["random"] * len(chosen), 0
    # Steps 4 and 5: score every unlabeled pool image (Eq. 3 by default), label the `count` most uncertain.
    scores = UNCERTAINTY[strategy](predict_probabilities(model, unlabeled, device, 64, forward=forward))
    positions = select_most_uncertain(scores, count)
    reasons = [f"{strategy}={value:.6f}" for value in scores[positions].tolist()]
    return unlabeled[positions], reasons, len(unlabeled)


# ---------------------------------------------------------------------------------------------
# Fine-tuning on the labeled cells (Sec. 3.1)


@torch.inference_mode()
def early_feature_cache(model: ParallelResNet, images: torch.Tensor, device, batch_size=16, precision="float32"):
    """The frozen layers' output for every image, once (float16 on the CPU: 50 KB a cell), so that every
    round trains and scores only the layers above them (--no-cache runs the full network every step).

    Valid because those layers are fixed and their BatchNorm is in eval mode, so their output for a given
    input never changes (Sec. 3.1). Not the paper: a speed device (docs/speed.md). Batches of 16: on a CPU
    a batch whose activations (800 KB a cell) fit in the caches beats a large one. precision "bfloat16": the
    convolutions under bfloat16 autocast (devices.in_precision).
    """
    model.eval()
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    approximations = details = None
    for start in range(0, len(images), batch_size):
        with autocast:
            batch = model_inputs(images[start : start + batch_size], device)
            early_approximation, early_details = model.early_features(*batch)
        if approximations is None:  # filled in place: concatenating batches would hold the cache twice
            approximations = torch.empty((len(images), *early_approximation.shape[1:]), dtype=torch.float16)
            details = torch.empty((len(images), *early_details.shape[1:]), dtype=torch.float16)
        rows = slice(start, start + len(early_approximation))
        approximations[rows] = early_approximation.to("cpu", torch.float16)
        details[rows] = early_details.to("cpu", torch.float16)
    return approximations, details


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


PROGRESS_SECONDS = 30  # fine_tune prints an epoch line at most this often (a round line ends every round)
# Each fine-tuning stops at this many epochs at most (--max-epochs). Not the paper's (Sec. 3.1 stops on patience
# alone): 10 scored higher than 30 on a development split of the pool's own specimens (docs/results-i3a.md,
# "The stopping rule"); a cap that never binds is the paper's rule.
MAX_EPOCHS = 10
# --stop-weights average, the default (not in the paper; issue #33): the mean of the weights of epochs 3 to the last,
# as stochastic weight averaging, whose flat minima generalise across domains (SWAD, Cha et al., NeurIPS 2021).
# It scored 2.91 points of MCA above the lowest-loss epoch's weights on the development split (docs/results-i3a.md);
# --stop-weights last keeps the last epoch's, as the paper.
AVERAGE_FROM = 3
# fine_tune's settings, the same every round. Sec. 3.1: "The same learning approach was used for all the fine-tuning
# processes: a learning rate of 0.001 was utilized, training is stopped when the loss does not decrease five times in
# a row." The mini-batch size is not given for fine-tuning; 64 as for pretraining.
TRAINING = {"lr": 1e-3, "max_epochs": MAX_EPOCHS, "patience": 5, "batch_size": 64}
TRAINING.update(stop_weights="average", batchnorm="recalibrate")


def fine_tune(model, forward, labels: torch.Tensor, labeled, generator: torch.Generator, settings=TRAINING) -> dict:
    """Step 3: Adam on the labeled cells until the training loss has not decreased for `patience` epochs (Sec. 3.1),
    or `max_epochs`; forward maps a batch of dataset indices to logits (Eq. 1), the loss is Eq. 2's cross-entropy.

    The weights kept: the last epoch's (stop_weights "last", the paper's) or the mean of those of the epochs from
    AVERAGE_FROM on ("average"); batchnorm "recalibrate" then recomputes the BatchNorm statistics over the labeled
    cells (recalibrate_batchnorm). Returns the epochs run, the last one's training loss, images seen and seconds.
    """
    started = time.time()
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=settings["lr"])
    labeled, batch_size = torch.as_tensor(labeled), settings["batch_size"]
    model.train()
    best, bad, epoch, seen, epoch_loss, averaged = float("inf"), 0, 0, 0, float("nan"), None
    first_averaged, last_line = min(AVERAGE_FROM, settings["max_epochs"]), started
    while epoch < settings["max_epochs"] and bad < settings["patience"]:
        epoch += 1
        order = labeled[torch.randperm(len(labeled), generator=generator)]
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            logits = forward(index)
            loss = F.cross_entropy(logits, labels[index].to(logits.device))  # Eq. 2 on the softmax of Eq. 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        epoch_loss, seen = total / len(order), seen + len(order)
        if epoch_loss < best - 1e-4:  # "decrease": by more than 1e-4
            best, bad = epoch_loss, 0
        else:
            bad += 1  # Sec. 3.1: "training is stopped when the loss does not decrease five times in a row"
        if settings["stop_weights"] == "average" and epoch >= first_averaged:
            averaged = running_mean(averaged, model.state_dict(), epoch - first_averaged + 1)
        if time.time() - last_line >= PROGRESS_SECONDS:  # a long round shows its epochs
            line = {"epoch": epoch, "max_epochs": settings["max_epochs"], "train_loss": epoch_loss}
            print("  " + records.epoch_line({**line, "seconds": time.time() - started}, seen))
            last_line = time.time()
    if averaged is not None:
        model.load_state_dict(averaged)
    if settings["batchnorm"] == "recalibrate":
        recalibrate_batchnorm(model, forward, labeled, batch_size)
    fit = {"epochs": epoch, "train_loss": epoch_loss, "seen": seen, "started": started}
    return {**fit, "seconds": time.time() - started}


def running_mean(mean: dict | None, weights: dict, count: int) -> dict:
    """The mean of `count` state dicts, given the mean of the first count - 1 and the count-th (integer
    buffers, such as BatchNorm's batch counter, are the latest's)."""
    if mean is None:
        return {key: value.detach().clone() for key, value in weights.items()}
    for key, value in weights.items():
        if value.is_floating_point():
            mean[key] += (value.detach() - mean[key]) / count
        else:
            mean[key] = value.detach().clone()
    return mean


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


# --final-tune, the default since #38 (not the paper, whose early layers stay fixed to the end): 3 epochs of every layer
# after the last round scored 0.40 points of MCA above the defaults on fold 0's development split with a spread under
# half theirs (std 0.27 against 0.67), for about a tenth more time (docs/results-i3a.md); --final-tune 0 is the paper.
FINAL_TUNE = 3


def final_tune(model, images, labels, labeled, generator, settings, epochs: int, device, precision: str) -> dict:
    """--final-tune N (issue #38; not the paper, whose early layers stay fixed): after the last round, every layer,
    the frozen ones too, fine-tuned on the labeled cells for N epochs at a tenth of Sec. 3.1's learning rate, so
    that the filters learned on the synthetic source adapt to real cells without the cost of doing so every round.
    """
    unfreeze_early_layers(model)  # their BatchNorm trains and is recalibrated with the rest
    forward = in_precision(forward_fn(model, images, None, device), device, precision)  # the full network
    tuning = {**settings, "lr": settings["lr"] / 10, "max_epochs": epochs, "stop_weights": "last"}
    fit = fine_tune(model, forward, labels, labeled, generator, tuning)
    record = {"epoch": fit["epochs"], "max_epochs": epochs, "train_loss": fit["train_loss"], "seconds": fit["seconds"]}
    print(f"final tuning of every layer at lr {tuning['lr']:g}: " + records.epoch_line(record, fit["seen"]))
    return fit


# ---------------------------------------------------------------------------------------------
# The loop (Table 1)


def run(args):
    """One active learning run, Table 1's steps; with --resume the rest of a killed run."""
    run_started = time.time()
    records.check_run_flags(args, build_parser())
    device = pick_device(args.device)
    seed_everything(args.seed)
    out, state = records.open_run(args)  # --out checked and locked before any work; state.pt with --resume
    precision = pick_precision(device, args.float32)  # bfloat16 where the device computes in it
    print(precision_line(device, precision))
    dataset, pretrained, preparation = target_data(args)
    model = network(pretrained, len(dataset.class_names)).to(device)  # IN (Sec. 3.1's transfer) or from scratch
    split, parts = resolve_split(args.split, dataset), split_parts(args)  # by specimen whenever specimens are known
    pool_side, test = split_pool_and_test(dataset, split, parts, args)  # Step 1: the pool, and the test side
    derived = {"case": records.case_name(args), "out": str(out), "precision": precision, **preparation}
    derived.update(split=split, split_parts=parts)  # what the run worked out; args stay as given
    sizes = round_sizes(len(pool_side), args.limit, args.strategy, args.k_fraction, args.m_fraction)
    cache = frozen_cache(model, dataset, device, args.no_cache, precision)
    forward = in_precision(forward_fn(model, dataset.images, cache, device), device, precision)
    generator = torch.Generator().manual_seed(args.seed)
    training = {key: getattr(args, key, value) for key, value in TRAINING.items()}  # lr: Sec. 3.1's 0.001
    pool = Pool(pool_side)
    book = records.start_run(args, derived, dataset, model, generator, pool, sum(sizes))  # what the rounds record
    records.resume(book, state, run_started)  # with --resume: the killed run's labels, weights and random states
    print(records.plan_line(derived["case"], len(pool_side), len(test), sizes))

    for round_index in range(len(book["rounds"]), len(sizes)):
        started = time.time()
        chosen, reasons, scored = choose(  # Steps 2, 4, 5: the seed set at random, then the most uncertain
            model, forward, pool.unlabeled(), sizes[round_index], round_index, args.strategy, generator, device
        )
        pool.label(chosen, round_index, reasons)
        fit = fine_tune(model, forward, dataset.labels, pool.labeled_indices(), generator, training)  # Step 3
        # Report on the test split: never used for any decision (Sec. 3.1: "just used for validation").
        probabilities = predict_probabilities(model, test, device, 64, forward=forward)
        metrics = summarize(dataset.labels[test], probabilities, dataset.class_names)
        records.end_round(book, round_index, chosen, scored, fit, metrics, started)  # state.pt: a kill resumes here

    if args.final_tune and not args.scratch:  # not the paper; a kill here resumes from the last round and tunes again
        images, labels, labeled = dataset.images, dataset.labels, pool.labeled_indices()
        fit = final_tune(model, images, labels, labeled, generator, training, args.final_tune, device, precision)
        book["final_tune_seconds"] = fit["seconds"]  # in results.json's seconds
    return records.finish(book, pool_side, test)


# ---------------------------------------------------------------------------------------------
# The loop's setup: what `run` calls by name


def target_data(args):
    """(the target cells, the pretrained checkpoint or None, their preprocessing): the cells prepared as the
    checkpoint's source cells were, so that target cells meet the network as source cells did, or as --image-size
    and --normalize say with --scratch."""
    pretrained = None if args.scratch else load_checkpoint(args.checkpoint)
    image_size, normalize = (args.image_size, args.normalize) if args.scratch else preprocessing(pretrained)
    parser = build_parser()
    for flag, value in (("image_size", image_size), ("normalize", normalize)):
        given = getattr(args, flag)
        if given != parser.get_default(flag) and given != value:  # a flag this run cannot use, refused in one line
            why = f"a pretrained run prepares its cells as its --checkpoint's were ({value}; add --scratch to set it)"
            raise DataError(f"--{flag.replace('_', '-')} {given}: {why}")
    classes = parse_class_list(args.classes)
    dataset = get_dataset(
        args.data, "target", classes, image_size, normalize, args.seed, args.synthetic_cells, args.specimens
    )
    return dataset, pretrained, {"image_size": image_size, "normalize": normalize}


def network(pretrained: dict | None, num_classes: int) -> ParallelResNet:
    """The pretrained network (IN) through Sec. 3.1's transfer step (a new head, the early layers fixed: "we had fixed
    all the layers before the second residual block"), or with --scratch the network of Fig. 5 from random weights."""
    model = ParallelResNet(num_classes)  # built in every case: each seed's random stream stays as published
    if pretrained is not None:
        model = transfer(network_from_checkpoint(pretrained), num_classes)  # "changed to have six neurons"
    return model


def split_pool_and_test(dataset, split: str, parts: dict, args):
    """Step 1: the pool and the test side (whole specimens on each); --development splits the pool again.

    Sec. 3.1: "A 80-20% splitting was performed"; the test part is only ever evaluated, never trained on or scored
    for selection ("the testing set was just used for validation, not for fine-tuning")."""
    pool, test = pool_and_test(dataset, split, parts)
    sides = ["dev pool", "dev test"] if args.development else ["pool", "test"]
    print(describe_split(dataset, split, [pool, test], sides, args.seed, args.fold, args.folds))
    return pool, test


def split_parts(args) -> dict:
    """How Step 1 splits: 80/20 by --seed, or fold --fold of --folds (fixed by the data; splits.pool_and_test).
    --development: the pool side split again, the test side set aside unseen."""
    fractions = [1 - args.test_fraction, args.test_fraction]
    parts = {"names": ["pool", "test"], "fractions": fractions, "seed": args.seed, "development": args.development}
    return {**parts, "fold": args.fold, "folds": args.folds}


def frozen_cache(model, dataset, device, no_cache: bool, precision: str):
    """The frozen layers' output for every cell when the early layers are frozen, else None (full network)."""
    if not model.early_frozen or no_cache:  # only frozen layers' output stays the same every round
        return None
    started = time.time()
    cache = early_feature_cache(model, dataset.images, device, precision=precision)
    print(f"cached the frozen layers' output for {len(dataset)} cells in {time.time() - started:.1f}s")
    return cache


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
    strategies = [*UNCERTAINTY, "random"]
    add("--strategy", default="entropy", choices=strategies, help="what to label (default: entropy, Eq. 3)")
    share = "random seed-set size as a fraction of the budget (default: 0.15, Sec. 3.1)"
    add("--k-fraction", type=float, default=0.15, help=share)
    per_round = "images labeled per round as a fraction of the budget (default: 0.10, Sec. 3.1)"
    add("--m-fraction", type=float, default=0.10, help=per_round)
    cap = f"most epochs per fine-tuning (default: {MAX_EPOCHS}, chosen on the development split; 30 never binds)"
    add("--max-epochs", type=int, default=MAX_EPOCHS, help=cap)
    patience = "stop after this many epochs without a lower training loss (default: 5, Sec. 3.1)"
    add("--patience", type=int, default=5, help=patience)
    stop = f"keep the mean of the weights of epochs {AVERAGE_FROM} to the last, or the last epoch's as the paper "
    stop += "(default: average, chosen on the development split)"
    add("--stop-weights", default="average", choices=["average", "last"], help=stop)
    batchnorm = "recompute trainable BatchNorm statistics after fine-tuning, or keep the running ones as the paper "
    batchnorm += "(default: recalibrate)"
    add("--batchnorm", default="recalibrate", choices=["recalibrate", "running"], help=batchnorm)
    tune = "after the last round, fine-tune every layer, the frozen ones too, for this many epochs at a tenth of the "
    tune += f"learning rate (default: {FINAL_TUNE}, chosen on the development split; 0 keeps them fixed as the paper)"
    add("--final-tune", type=int, default=FINAL_TUNE, help=tune)
    development = "leave the test specimens out, split the pool again into a development pool and test (default: off)"
    add("--development", action="store_true", help=development)
    add("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    add("--test-fraction", type=float, default=0.2, help="held-out test share (default: 0.2, Sec. 3.1)")
    fold = f"test on this fold of --folds (cross-validation by specimen: each specimen tested in one fold; the "
    fold += "folds fixed by the data, whatever --seed) instead of the seeded --test-fraction split (default: off)"
    add("--fold", type=int, default=None, help=fold)
    add("--folds", type=int, default=FOLDS, help=f"how many folds --fold counts (default: {FOLDS})")
    add("--image-size", type=int, default=112, help="with --scratch: cell size (default: 112; else the checkpoint's)")
    normalize = "with --scratch: per-cell intensity stretch (default: percentile; none is the paper's)"
    add("--normalize", default="percentile", choices=NORMALIZATIONS, help=normalize)
    add("--no-cache", action="store_true", help="run the frozen layers every step (default: cache their output)")
    float32 = "compute in float32 everywhere, the exact path (default: bfloat16 autocast where the device computes "
    float32 += "in it: CPUs with AVX512-BF16 or AMX, CUDA GPUs; docs/speed.md)"
    add("--float32", action="store_true", help=float32)
    add("--out", default=None, help="run directory (default: runs/<case>-limit<limit>-seed<seed>)")
    add("--resume", action="store_true", help="continue the killed run in --out: the same command (default: off)")
    add_device_flag(parser)
    add("--seed", type=int, default=0, help="seed for the split, the seed set and training (default: 0)")
    return parser


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
