"""Active learning on the target dataset with the pretrained network (paper Sec. 2.2, Table 1, Fig. 7, Sec. 3.1-3.3).

The loop (Table 1), `run` below: 1. split the target 80/20 into the unlabeled pool and the test set (reported on
only); 2. label k = 15% of the budget (limit x pool) at random (the simulated oracle reveals the stored labels);
3. fine-tune until the training loss stops falling (Sec. 3.1): the pretrained network (IN) with a new head and
both branches fixed to the second pooling layer, or with --scratch all of it from random weights; 4. score every
unlabeled cell's uncertainty, entropy by default (Eq. 3); 5. label the m = 10% most uncertain; back to 3.

    IN-AL   python active.py --limit 0.2          IN-RS   python active.py --limit 0.2 --strategy random
    AL      python active.py --limit 0.2 --scratch          RS      ... --scratch --strategy random
With --strategy random the whole budget is drawn at random and trained on once, as in the paper; random-rounds
(RS-ROUNDS, IN-RS-ROUNDS) is the literature's baseline: AL's loop, k and m and fine-tuning, with random picks.
--data DIR reads real cells; --paper sets the paper's values where the defaults depart (lab/recipe.py). A run folder
(--out, default runs/<case>-limit<limit>-seed<seed>) gets state.pt after every round (--resume goes on), then
results.json, labeled.csv, model.pt, confusion.png. The grid: `python -m lab.experiments`.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from data import NORMALIZATIONS
from evaluate import predict_probabilities, summarize
from lab import recipe, records, splits
from lab.commands import parse_typed, run_command
from lab.devices import add_device_flag
from lab.splits import add_split_flags
from model import ParallelResNet, trainable_parameters, transfer

# ---------------------------------------------------------------------------------------------
# Step 1: the pool and the test set (Sec. 3.1: "A 80-20% splitting was performed")

TEST_FRACTION = 0.2


def split_target(dataset, settings: dict) -> tuple:
    """Step 1: the unlabeled pool and the test set, 80/20 by --seed or fold --fold of --folds, each specimen whole on
    one side whenever specimens are known (--split cells: cells); --development splits the pool again. The test side
    is only reported on (Sec. 3.1: "just used for validation, not for fine-tuning"). Returns (by, parts, pool, test)."""
    by = splits.resolve_split(settings["split"], dataset)
    parts = {"names": ["pool", "test"], "fractions": [1 - TEST_FRACTION, TEST_FRACTION], "seed": settings["seed"]}
    parts.update(development=settings["development"], fold=settings["fold"], folds=settings["folds"])
    pool, test = splits.pool_and_test(dataset, by, parts)  # evaluate.py remakes it from the parts
    print(splits.describe_pool_and_test(dataset, by, parts, pool, test))
    return by, parts, pool, test


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
    """How many images each round labels: [k, m, m, ..., last], summing to the budget exactly. Sec. 3.1: budget =
    limit x pool (20% of 50,758 = 10,152), k = 15% of the budget at random first (1500), then m = 10% per round
    (1000); the last round is smaller when m does not divide what is left. The random strategy (the paper's RS,
    trained once), and a budget of the whole pool, label everything at once; random-rounds labels in the rounds of
    the uncertainty strategies."""
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
    """Table 1's unlabeled pool and what the oracle has labeled of it, in labeling order (after baal's pool)."""

    def __init__(self, indices: torch.Tensor, oracle: torch.Tensor):
        self.indices = indices  # the dataset indices of the pool side of the split
        self.oracle = oracle  # Table 1's annotator: here the stored label of every dataset cell
        self.ledger: list[dict] = []  # {"index", "label", "round", "reason"} of each labeled cell, in labeling order

    def __len__(self) -> int:
        return len(self.indices)

    def unlabeled(self) -> torch.Tensor:
        """The dataset indices of the pool's cells not labeled yet, in pool order."""
        taken = torch.tensor([entry["index"] for entry in self.ledger], dtype=torch.int64)
        return self.indices[~torch.isin(self.indices, taken)]

    def labeled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dataset indices, labels) of the labeled cells, in labeling order."""
        indices = torch.tensor([entry["index"] for entry in self.ledger], dtype=torch.int64)
        return indices, torch.tensor([entry["label"] for entry in self.ledger], dtype=torch.int64)

    def label(self, chosen: torch.Tensor, round_index: int, reasons: list[str]) -> torch.Tensor:
        """The oracle reveals these cells' labels; returns them (dataset indices)."""
        for index, reason in zip(chosen.tolist(), reasons):
            entry = {"index": index, "label": int(self.oracle[index]), "round": round_index, "reason": reason}
            self.ledger.append(entry)
        return chosen

    def label_randomly(self, count: int, round_index: int, generator: torch.Generator) -> torch.Tensor:
        """Step 2: `count` unlabeled cells drawn at random (the seed set; the random strategy's whole budget)."""
        unlabeled = self.unlabeled()
        chosen = unlabeled[torch.randperm(len(unlabeled), generator=generator)[:count]]
        return self.label(chosen, round_index, ["random"] * len(chosen))

    def label_most_uncertain(self, candidates, scores, count: int, round_index: int, measure: str) -> torch.Tensor:
        """Step 5: the `count` candidates of highest uncertainty, each with its score as the reason."""
        positions = select_most_uncertain(scores, count)
        reasons = [f"{measure}={value:.6f}" for value in scores[positions].tolist()]
        return self.label(candidates[positions], round_index, reasons)

    def state_dict(self) -> dict:
        """What a resume needs of the pool: the labeled cells, in labeling order (the pool side is remade)."""
        return {"labeled": [dict(entry) for entry in self.ledger]}

    def load_state_dict(self, state: dict) -> None:
        self.ledger = [dict(entry) for entry in state["labeled"]]


# ---------------------------------------------------------------------------------------------
# Fine-tuning on the labeled cells (Sec. 3.1)

# Sec. 3.1: "The same learning approach was used for all the fine-tuning processes: a learning rate of 0.001 was
# utilized, training is stopped when the loss does not decrease five times in a row." The mini-batch size is not
# given for fine-tuning: 64 as for pretraining. The rest are the recipe's departures (lab/recipe.py; --paper).
TRAINING = {"lr": 1e-3, "patience": 5, "batch_size": 64, "max_epochs": recipe.MAX_EPOCHS, "min_decrease": 1e-4}
TRAINING.update(stop_weights="average", batchnorm="recalibrate")
# --batchnorm-constants: the paper ran TensorFlow (BatchNorm momentum 0.99, 0.01 as PyTorch counts, epsilon 1e-3).
BATCHNORM_CONSTANTS = {"pytorch": (0.1, 1e-5), "tensorflow": (0.01, 1e-3)}  # (momentum, epsilon)


def fine_tune(model, forward, cells, labels, generator, settings=TRAINING, stop_loss=None) -> dict:
    """Step 3: fine-tune on the labeled cells until the loss has not decreased for `patience` epochs (Sec. 3.1), or
    `max_epochs`. The paper says "the loss": the training loss here, which keeps the test side out of training
    (stop_loss, called after each epoch, decides instead where given: --stop-on test); the optimizer is not named:
    Adam (a choice). forward maps dataset indices to logits (Eq. 1), the loss is Eq. 2's cross-entropy. Returns the
    epochs, the last one's training (and stopping) loss, images seen, seconds."""
    started = last_line = time.time()
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=settings["lr"])
    best, bad, epoch, seen, epoch_loss, watched, averaged = float("inf"), 0, 0, 0, float("nan"), None, None
    model.train()
    while epoch < settings["max_epochs"] and bad < settings["patience"]:
        epoch += 1
        order, total = torch.randperm(len(cells), generator=generator), 0.0
        for start in range(0, len(order), settings["batch_size"]):
            batch = order[start : start + settings["batch_size"]]
            logits = forward(cells[batch])
            loss = F.cross_entropy(logits, labels[batch].to(logits.device))  # Eq. 2 on the softmax of Eq. 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        epoch_loss, seen = total / len(order), seen + len(order)
        watched = epoch_loss if stop_loss is None else stop_loss()  # --stop-on test: the test split's loss
        # Sec. 3.1: "training is stopped when the loss does not decrease five times in a row" (the recipe: by 1e-4)
        best, bad = (watched, 0) if watched < best - settings["min_decrease"] else (best, bad + 1)
        averaged = recipe.average_weights(averaged, model, epoch, settings)  # the recipe: the later epochs' mean
        last_line = records.epoch_progress(last_line, started, epoch, settings["max_epochs"], epoch_loss, seen)
    recipe.keep_weights(model, averaged, forward, cells, settings)  # the recipe: mean weights, BatchNorm recomputed
    fit = {"epochs": epoch, "train_loss": epoch_loss, "stop_loss": watched, "seen": seen, "started": started}
    return {**fit, "seconds": time.time() - started}


# ---------------------------------------------------------------------------------------------
# The loop (Table 1)


def network(pretrained: ParallelResNet | None, num_classes: int, batchnorm_constants="pytorch") -> ParallelResNet:
    """The pretrained network (IN) through Sec. 3.1's transfer step (a new head, the early layers fixed: "we had fixed
    all the layers before the second residual block"), or with --scratch the network of Fig. 5 from random weights;
    the BatchNorm layers that train take the framework's constants (frozen ones keep their pretraining's)."""
    model = ParallelResNet(num_classes)  # built in every case: each seed's random stream stays as published
    if pretrained is not None:
        model = transfer(pretrained, num_classes)  # "changed to have six neurons"
    for layer in [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.weight.requires_grad]:
        layer.momentum, layer.eps = BATCHNORM_CONSTANTS[batchnorm_constants]
    return model


def run(job: dict) -> dict:
    """One active learning run, Table 1's steps (with a killed run's state, the rest of it). job: what the workshop
    opened at the edge (lab/records.open_run): settings, device, cells, pretrained network, state (ceiling: pool)."""
    settings, dataset, device, precision = job["settings"], job["dataset"], job["device"], job["precision"]
    model = network(job["pretrained"], len(dataset.class_names), settings["batchnorm_constants"]).to(device)
    by, parts, pool_cells, test = job.get("sides") or split_target(dataset, settings)  # Step 1
    pool = Pool(pool_cells, dataset.labels)  # the unlabeled pool; the oracle: the stored labels
    strategy = settings["strategy"]
    sizes = round_sizes(len(pool), settings["limit"], strategy, *settings["fractions"])  # Sec. 3.1: k, then m a round
    generator = torch.Generator().manual_seed(settings["seed"])
    forward = recipe.run_forward(model, dataset.images, device, precision)  # the recipe: cached, bfloat16
    train_forward = recipe.training_forward(model, dataset.images, forward, device, precision, settings, generator)
    training = {key: settings.get(key, value) for key, value in TRAINING.items()}  # lr: Sec. 3.1's 0.001
    def test_loss():  # --stop-on test (off by default, labelled wherever it shows): the test split chooses the stop
        probabilities = predict_probabilities(model, test, device, 64, forward=forward)  # eval mode, then back
        return summarize(dataset.labels[test], probabilities, dataset.class_names)["loss"]  # Eq. 2's mean

    stop_loss = test_loss if settings["stop_on"] == "test" else None  # Sec. 3.1: else the training loss
    book = records.start_run(job, model, (pool, test, by, parts), generator, sizes)  # a killed run's rounds

    for round_index in range(len(book["rounds"]), len(sizes)):
        started, size, scored = time.time(), sizes[round_index], 0
        if round_index == 0 or strategy in ("random", "random-rounds"):  # random-rounds: m a round at random
            chosen = pool.label_randomly(size, round_index, generator)  # Step 2: the seed set, k at random
        else:  # Step 4: score every unlabeled pool image (entropy by default, Eq. 3); Step 5: label the m highest
            unlabeled = pool.unlabeled()
            scores = UNCERTAINTY[strategy](predict_probabilities(model, unlabeled, device, 64, forward=forward))
            chosen, scored = pool.label_most_uncertain(unlabeled, scores, size, round_index, strategy), len(scores)
        fit = fine_tune(model, train_forward, *pool.labeled(), generator, training, stop_loss)  # Step 3
        probabilities = predict_probabilities(model, test, device, 64, forward=forward)  # reported, never a decision
        metrics = summarize(dataset.labels[test], probabilities, dataset.class_names)
        records.end_round(book, round_index, chosen, scored, fit, metrics, started)  # state.pt: a kill resumes here

    specimens = [dataset.specimens[i] for i in test.tolist()] if by == "specimen" else None
    probabilities = predict_probabilities(model, dataset.images[test], device, 64)  # full network, float32: exact
    return records.finish(book, summarize(dataset.labels[test], probabilities, dataset.class_names, specimens))


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    add = parser.add_argument
    add("--limit", type=float, default=0.2, help="labeling budget as a fraction of the pool (default: 0.2)")
    add("--data", default=None, help="labeled target cells (default: the embedded synthetic 6-class set)")
    add_split_flags(parser, "pool/test", folds=True)  # --specimens, --split, --fold, --folds, --development
    add("--synthetic-cells", type=int, default=1500, help="synthetic target size without --data (default: 1500)")
    add("--checkpoint", default="runs/pretrained.pt", help="network from train.py (default: runs/pretrained.pt)")
    add("--scratch", action="store_true", help="train the whole network from random weights (AL, RS; default: off)")
    strategies = [*UNCERTAINTY, "random", "random-rounds"]
    what = "an uncertainty (Eq. 3-5), random (all at once, trained once: the paper's RS) or random-rounds (AL's rounds"
    add("--strategy", default="entropy", choices=strategies, help=what + ", random picks) (default: entropy, Eq. 3)")
    fractions = "k and m: the random seed set and each round's labels as fractions of the budget (default: 0.15 0.10, "
    add("--fractions", type=float, nargs=2, default=[0.15, 0.10], metavar=("K", "M"), help=fractions + "Sec. 3.1)")
    add("--batch-size", type=int, default=64, help="mini-batch size (default: 64, a choice: the paper gives none)")
    add("--paper", action="store_true", help=f"the paper's settings: {recipe.paper_flags()} (default: off)")
    cap = f"most epochs per fine-tuning (default: {recipe.MAX_EPOCHS}, the recipe; the paper has none: {recipe.NO_CAP})"
    add("--max-epochs", type=int, default=recipe.MAX_EPOCHS, help=cap)
    decrease = "a training loss counts as decreased when it falls by more than this (default: 1e-4, the recipe; 0: "
    add("--min-decrease", type=float, default=1e-4, help=decrease + "any decrease, the paper's rule)")
    stop = f"keep the mean of the weights of epochs {recipe.AVERAGE_FROM} to the last (the recipe), or the last "
    add("--stop-weights", default="average", choices=["average", "last"], help=stop + "epoch's (the paper's)")
    batchnorm = "recompute trainable BatchNorm statistics after fine-tuning (the recipe), or keep the running ones "
    add("--batchnorm", default="recalibrate", choices=["recalibrate", "running"], help=batchnorm + "(the paper's)")
    bn = "BatchNorm momentum and epsilon of the layers that train: PyTorch's or TensorFlow's (default: pytorch)"
    add("--batchnorm-constants", default="pytorch", choices=[*BATCHNORM_CONSTANTS], help=bn)
    stop = "the loss that stops each fine-tuning: the training loss, or the test split's, which LETS THE TEST SPLIT "
    stop += "CHOOSE, as the paper appears to have done (Sec. 3.3); marked 'stopped on the test split' (default: train)"
    add("--stop-on", default="train", choices=["train", "test"], help=stop)
    augment = "fine-tune on each cell in a random view: quarter turns and mirrors, or turns of 18 degrees (issue #64) "
    add("--augment", default="none", choices=[*recipe.AUGMENTS], help=augment + "(default: none, the paper's)")
    add("--image-size", type=int, default=112, help="with --scratch: cell size (default: 112; else the checkpoint's)")
    normalize = "with --scratch: per-cell intensity stretch (default: percentile, the recipe; none is the paper's)"
    add("--normalize", default="percentile", choices=NORMALIZATIONS, help=normalize)
    float32 = "compute in float32 (the frozen layers' cache stays float16) (default: bfloat16 autocast where the device "
    add("--float32", action="store_true", help=float32 + "computes in it: AVX512-BF16 or AMX CPUs, CUDA GPUs)")
    add("--out", default=None, help="run directory (default: runs/<case>-limit<limit>-seed<seed>)")
    add("--resume", action="store_true", help="continue the killed run in --out: the same command (default: off)")
    add_device_flag(parser)
    add("--seed", type=int, default=0, help="seed for the split, the seed set and training (default: 0)")
    return parser


def main(argv=None):
    """The command line: the workshop opens the run (flags, device, --out, the cells), Table 1 runs it."""
    parser = build_parser()
    return run_command(lambda args: run(records.open_run(args, parser)), parse_typed(parser, argv))


if __name__ == "__main__":
    main()
