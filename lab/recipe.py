"""The recipe: where active.py's defaults depart from the paper, each kept by a rule on a development split.

Not the paper (the workshop). active.py calls these at three marked places (`recipe.` in its code): the forward
function of a run, each epoch's weights and the weights a fine-tuning keeps. `--paper` turns every departure off at
once (PAPER below); each also has a flag of its own. Each was kept because it passed a rule written before its runs,
on a development split of the training side's own specimens (docs/results-i3a.md holds every row, kept or not, with
the commit that measured it):

  * the frozen layers' output cached once (float16), a speed device with no setting: the paper's early layers are
    fixed, so their output for a cell never changes (docs/speed.md);
  * bfloat16 autocast where the device computes in it (--float32 is the paper's exact path): 1.83x faster, the
    development MCA within the seeds' spread (docs/speed.md);
  * at most MAX_EPOCHS a fine-tuning, and a loss counts as lower when it falls by more than 1e-4 (--max-epochs
    1000 --min-decrease 0: the paper's rule alone, "the loss does not decrease five times in a row");
  * the mean of the weights of epochs AVERAGE_FROM to the last (--stop-weights last, the paper's);
  * BatchNorm statistics recomputed over the labeled cells (--batchnorm running, the paper's);
  * gone in #48 (42915d0 is the last commit with it; its rows in docs/results-i3a.md): every layer tuned after
    the last round (--final-tune 3, kept at #38 for +0.41 on the development split); it did not carry to another
    grouping of I3A's specimens (-0.24 by fold on average) and took a seeded cell split from 86.90 to 81.64;
  * the per-cell intensity stretch (--normalize none, the paper's; data.normalize_cell), set when pretraining.
"""

import time

import torch

from data import DataError, dihedral_view, model_inputs, rotation_angles
from lab.commands import was_typed

# --max-epochs: 10 scored higher than 30 on a development split of the pool's own specimens (docs/results-i3a.md,
# "The stopping rule"); the paper stops on its rule alone (--max-epochs NO_CAP below).
MAX_EPOCHS = 10
# --stop-weights average (issue #33): the mean of the weights of epochs 3 to the last, as stochastic weight
# averaging, whose flat minima generalise across domains (SWAD, Cha et al., NeurIPS 2021). It scored 2.91 points
# of MCA above the lowest-loss epoch's weights on the development split; --stop-weights last is the paper's.
AVERAGE_FROM = 3

# --paper: the paper's settings in one flag, each of the recipe's departures turned off. train.py's share is the
# preprocessing and the precision; active.py's all of it (its --normalize applies with --scratch; a pretrained run
# prepares its cells as its checkpoint's were, so `python train.py --paper` comes first).
NO_CAP = 1000  # --max-epochs that never binds: the paper stops on its rule alone (pretraining: after 32 epochs)
PAPER = {"normalize": "none", "float32": True, "max_epochs": NO_CAP, "min_decrease": 0.0, "stop_weights": "last"}
PAPER.update(batchnorm="running", augment="none")


def paper_flags(dests=tuple(PAPER)) -> str:
    """What --paper sets, as flags typed out."""
    flags = {"float32": "--float32"}
    return " ".join(flags.get(dest, f"--{dest.replace('_', '-')} {PAPER[dest]}") for dest in dests)


PRETRAINING = ("normalize", "float32", "max_epochs")  # train.py's share of PAPER


def paper_settings(args, parser, dests=tuple(PAPER)) -> None:
    """--paper: each of these PAPER flags set to the paper's value; one the user typed otherwise is refused in one line,
    even at the recipe's default (a flag not typed takes the paper's)."""
    if not args.paper:
        return
    for dest in dests:
        value, given = PAPER[dest], getattr(args, dest)
        if was_typed(args, parser, dest) and given != value:
            flag = dest.replace("_", "-")
            raise DataError(f"--{flag} {given}: --paper sets --{flag} {value}, the paper's; leave one of the two out")
        setattr(args, dest, value)


# ---------------------------------------------------------------------------------------------
# The forward function of a run: the frozen layers' output cached, bfloat16 where the device computes in it


def in_precision(forward, device: torch.device, precision: str):
    """forward under bfloat16 autocast when precision says so, its output back in float32: the convolutions and
    the linear layers compute in bfloat16, while the loss, the softmax and the entropy, the BatchNorm statistics
    and the optimizer's state stay float32. With float32, forward itself: the exact path."""
    if precision == "float32":
        return forward

    def autocast_forward(*inputs):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            return forward(*inputs).float()

    return autocast_forward


@torch.inference_mode()
def early_feature_cache(model, images: torch.Tensor, device, batch_size=16, precision="float32", degrees=None):
    """The frozen layers' output for every image, once (float16 on the CPU: 50 KB a cell), so that every
    round trains and scores only the layers above them.

    Valid because those layers are fixed and their BatchNorm is in eval mode, so their output for a given
    input never changes (Sec. 3.1). Batches of 16: on a CPU a batch whose activations (800 KB a cell) fit in
    the caches beats a large one. precision "bfloat16": the convolutions under bfloat16 autocast. degrees: each
    image turned first (data.model_inputs), for --augment rotations.
    """
    model.eval()
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    approximations = details = None
    for start in range(0, len(images), batch_size):
        with autocast:
            turns = None if degrees is None else degrees[start : start + batch_size]
            batch = model_inputs(images[start : start + batch_size], device, turns)
            early_approximation, early_details = model.early_features(*batch)
        if approximations is None:  # filled in place: concatenating batches would hold the cache twice
            approximations = torch.empty((len(images), *early_approximation.shape[1:]), dtype=torch.float16)
            details = torch.empty((len(images), *early_details.shape[1:]), dtype=torch.float16)
        rows = slice(start, start + len(early_approximation))
        approximations[rows] = early_approximation.to("cpu", torch.float16)
        details[rows] = early_details.to("cpu", torch.float16)
    return approximations, details


def forward_fn(model, images: torch.Tensor, cache, device):
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


def run_forward(model, images: torch.Tensor, device, precision: str):
    """A run's forward function (dataset indices to logits): through the cache when the early layers are frozen
    (every IN run), the full network otherwise; under bfloat16 autocast with precision "bfloat16"."""
    cache = None
    if model.early_frozen:  # only frozen layers' output stays the same every round
        started = time.time()
        cache = early_feature_cache(model, images, device, precision=precision)
        print(f"cached the frozen layers' output for {len(images)} cells in {time.time() - started:.1f}s")
    return in_precision(forward_fn(model, images, cache, device), device, precision)


# ---------------------------------------------------------------------------------------------
# --augment (issue #64, off by default; not the paper's fine-tuning): each labeled cell trained on in one of its views,
# drawn at random from the run's generator every time it is seen; scoring and the test see the cell as it is.

AUGMENTS = {"none": 1, "dihedral": 8, "rotations": 20}  # quarter turns and mirrors; Sec. 3.1's 20 turns of 18 degrees


def views_of(images: torch.Tensor, views, augment: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cells, degrees) that data.model_inputs turns into each cell's view (an int: the same view for every cell):
    quarter turns and mirrors made exactly here (dihedral), or turns of 18 x view degrees done there (rotations)."""
    views = torch.as_tensor(views).expand(len(images))
    if augment != "dihedral":
        return images, rotation_angles(AUGMENTS[augment])[views]
    turned = torch.empty_like(images)
    for view in views.unique().tolist():  # one call a view drawn (at most 8), not one a cell
        at = views == view
        turned[at] = dihedral_view(images[at], view)
    return turned, None


def training_forward(model, images: torch.Tensor, forward, device, precision: str, settings: dict, generator):
    """The forward function fine-tuning trains through: `forward` itself with --augment none; else each cell in a
    view drawn at random. When the early layers are frozen, through their output for every view of the cells
    trained on, cached the first time a cell is seen (8 or 20 x 50 KB a labeled cell); the full network else."""
    augment = settings["augment"]
    if augment == "none":
        return forward
    count = AUGMENTS[augment]

    def drawn(index):  # one view a cell, from the run's generator: a resumed run draws the same
        return torch.randint(count, (len(index),), generator=generator)

    if not model.early_frozen:

        def through_network(index):
            cells, degrees = views_of(images[index], drawn(index), augment)
            return model(*model_inputs(cells, device, degrees))

        return in_precision(through_network, device, precision)
    store = {"row": torch.full((len(images),), -1), "count": 0, "approximations": None, "details": None}

    def through_views(index):
        index = torch.as_tensor(index)
        new = index[store["row"][index] < 0].unique()
        if len(new):  # outside the forward's autocast: the cache is filled in its own precision
            with torch.autocast(torch.device(device).type, enabled=False):
                add_views(store, model, images, new, device, precision, augment)
        rows, views = store["row"][index], drawn(index)
        inputs = (store[name][rows, views].to(device).float() for name in ("approximations", "details"))
        return model.head(model.late_features(*inputs))

    return in_precision(through_views, device, precision)


def add_views(store: dict, model, images, new: torch.Tensor, device, precision: str, augment: str) -> None:
    """The frozen layers' output for every view of the cells `new` (dataset indices), appended to the store (its
    rows grown by doubling); the model's mode kept."""
    was_training, features = model.training, []
    for view in range(AUGMENTS[augment]):
        cells, degrees = views_of(images[new], view, augment)
        features.append(early_feature_cache(model, cells, device, precision=precision, degrees=degrees))
    model.train(was_training)  # early_feature_cache puts the model in eval mode
    start, end = store["count"], store["count"] + len(new)
    for position, name in enumerate(("approximations", "details")):
        stacked = torch.stack([feature[position] for feature in features], dim=1)  # (cells, views, ...)
        if store[name] is None or end > len(store[name]):
            grown = torch.empty((max(2 * start, end), *stacked.shape[1:]), dtype=stacked.dtype)
            if store[name] is not None:
                grown[:start] = store[name][:start]
            store[name] = grown
        store[name][start:end] = stacked
    store["row"][new] = torch.arange(start, end)
    store["count"] = end


# ---------------------------------------------------------------------------------------------
# The weights a fine-tuning keeps: the mean of the later epochs', BatchNorm statistics recomputed


def average_weights(mean: dict | None, model, epoch: int, settings: dict) -> dict | None:
    """After each epoch: with stop_weights "average", the running mean of the weights of the epochs from
    AVERAGE_FROM (or the last, if fewer) on; None otherwise (the paper keeps the last epoch's)."""
    first = min(AVERAGE_FROM, settings["max_epochs"])
    if settings["stop_weights"] != "average" or epoch < first:
        return mean
    return running_mean(mean, model.state_dict(), epoch - first + 1)


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


def keep_weights(model, averaged: dict | None, forward, cells: torch.Tensor, settings: dict) -> None:
    """After the last epoch: the averaged weights, if any, and with batchnorm "recalibrate" BatchNorm statistics
    recomputed over the labeled cells (the paper keeps the last epoch's weights and running statistics)."""
    if averaged is not None:
        model.load_state_dict(averaged)
    if settings["batchnorm"] == "recalibrate":
        recalibrate_batchnorm(model, forward, cells, settings["batch_size"])


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
