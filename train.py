"""Pretrain the parallel residual networks on a small source dataset (paper Sec. 2.1 and 3.1).

The paper's "initial learning": the network of Fig. 5 is trained from scratch
on SNPHEp-2 (5 classes) with rotation augmentation (18 degree steps, 20 views
per image), learning rate 0.001, stopping when the validation loss has not
improved for 5 epochs in a row. The paper names no optimizer: Adam here (a
choice). The best checkpoint (lowest validation loss) is what active.py
fine-tunes on the target.

    python train.py                                      # embedded synthetic 5-class source
    python train.py --data DIR [--classes homogeneous coarse_speckled ...]
    python train.py --data SNPHEP2_DIR --split-file FOLD.csv --paper   # as the paper: its split, its settings
    python train.py --resume                             # the same command continues a killed run

When the specimen of each cell is known (a specimens.csv at the data root, --specimens FILE,
or a specimen column in the labels CSV), train, validation and test hold different
specimens, so the validation loss that picks the epoch and the test result both measure
cells of specimens the network never saw (--split cells turns this off).

Writes runs/pretrained.pt (read by active.py by default) and, after every epoch,
runs/pretrained.pt.state so that a killed run resumes where it was (lab/records.py writes both).
"""

import argparse
import time

import torch
import torch.nn.functional as F

from data import NORMALIZATIONS, model_inputs, rotation_angles
from evaluate import format_report, predict_probabilities, summarize
from lab import records
from lab.commands import parse_typed, run_command
from lab.devices import add_device_flag
from lab.recipe import PRETRAINING, in_precision, paper_flags
from lab.splits import add_split_flags
from model import ParallelResNet, trainable_parameters


def train_epoch(model, optimizer, images, labels, batch_size, device, views=1, generator=None, precision="float32"):
    """One pass over every (image, rotation view) pair in a random order; returns (loss, accuracy, seen).

    Sec. 3.1: "cell rotation, with a step of 18 degrees in a quadrant of 360 degrees ... increases the original
    training set by a factor of 20": with views=20 an epoch sees each training image at 0, 18, ..., 342 degrees,
    rotated on the fly so that the 20x set is never stored.
    """
    model.train()
    network = in_precision(model, device, precision)  # bfloat16 autocast where the device computes in it
    angles = rotation_angles(views)
    order = torch.randperm(len(images) * views, generator=generator)
    total_loss, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        pairs = order[start : start + batch_size]
        index, view = pairs // views, pairs % views
        approximation, details = model_inputs(images[index], device, angles[view] if views > 1 else None)
        target = labels[index].to(device)
        logits = network(approximation, details)
        loss = F.cross_entropy(logits, target)  # Eq. 2, the cross-entropy of the softmax of Eq. 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(index)
        correct += (logits.argmax(dim=1) == target).sum().item()
    return total_loss / len(order), correct / len(order), len(order)


def run(job: dict) -> dict:
    """Sec. 3.1's initial learning: train epoch by epoch, keep the lowest validation loss, stop after patience.
    job: what the workshop opened at the edge (lab/records.open_pretraining): the settings, device, source cells
    and their train, validation and test sides, a killed run's state."""
    settings, device, precision, dataset = job["settings"], job["device"], job["precision"], job["dataset"]
    train_set, val_set, test_set = job["sides"]
    model = ParallelResNet(len(dataset.class_names)).to(device)  # Fig. 5, from random weights
    # Sec. 3.1: "The learning rate is set to be 0.001"; the optimizer is not named (Adam: a choice)
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=1e-3)
    generator = torch.Generator().manual_seed(settings["seed"])
    book = records.start_pretraining(job, model, optimizer, generator)  # with a killed run's state: its epochs
    best_loss, bad_epochs = book["resumed"]["best_loss"], book["resumed"]["bad_epochs"]  # inf and 0 on a new run

    for epoch in range(book["epoch"] + 1, settings["max_epochs"] + 1):
        if bad_epochs >= settings["patience"]:  # Sec. 3.1: "training is terminated when the validation loss did
            break  # not surpass the reached minimum 5 times in a row"
        started = time.time()
        train_loss, train_acc, seen = train_epoch(
            model, optimizer, train_set.images, train_set.labels, settings["batch_size"], device,
            settings["rotations"], generator, precision,
        )  # fmt: skip
        probabilities = predict_probabilities(model, val_set.images, device, precision=precision)
        val = summarize(val_set.labels, probabilities, dataset.class_names)
        # The lowest validation loss so far is the checkpoint active.py fine-tunes (records.end_epoch writes it).
        best_loss, bad_epochs = (val["loss"], 0) if val["loss"] < best_loss else (best_loss, bad_epochs + 1)
        record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val["loss"]}
        record.update(val_mca=val["mca"], val_aca=val["aca"], seconds=time.time() - started)
        records.end_epoch(book, record, val, seen, best_loss, bad_epochs)  # OUT if the best so far; OUT.state

    # The test split is looked at once, after training, by the kept (lowest validation loss) network, in float32.
    best = records.kept_checkpoint(book, best_loss)
    model.load_state_dict(best["model"])
    test = None
    if len(test_set):
        specimens = test_set.specimens if job["derived"]["split"] == "specimen" else None
        probabilities = predict_probabilities(model, test_set.images, device)
        test = summarize(test_set.labels, probabilities, dataset.class_names, specimens)
        print(f"test split ({job['derived']['split']}): " + format_report(test, dataset.class_names))
    return records.finish_pretraining(book, best, test)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    add = parser.add_argument
    add("--data", default=None, help="labeled source cells (default: the embedded synthetic 5-class set)")
    classes = "keep only these classes, e.g. drop cytoplasmatic from ICPR2012 (default: all found)"
    add("--classes", nargs="+", default=None, help=classes)
    synthetic = "size of the synthetic source when no --data is given (default: 200)"
    add("--synthetic-cells", type=int, default=200, help=synthetic)
    add_split_flags(parser, "train/validation/test")
    given = "the data's own train/val/test lists, as SNPHEp-2's folds: a CSV of file,split (train, val or test; "
    given += "default: the labels CSV's split column if it has one, else a seeded split by --val/--test-fraction)"
    add("--split-file", default=None, help=given)
    val_from = "where a given split lists no val side (SNPHEp-2's folds): split --val-fraction of its train side off "
    val_from += "(by specimen where known), or validate on its test side, as Sec. 3.3 reads (default: train)"
    add("--val-from", default="train", choices=["train", "test"], help=val_from)
    add("--out", default="runs/pretrained.pt", help="best checkpoint (default: runs/pretrained.pt)")
    cap = "most epochs (default: 30, a choice; the paper has none: its rule stopped it after 32; --paper: 1000)"
    add("--max-epochs", type=int, default=30, help=cap)
    patience = "stop after this many epochs without a lower validation loss (default: 5, Sec. 3.1)"
    add("--patience", type=int, default=5, help=patience)
    add("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    rotations = "rotation views per training image, 360/N degrees apart (default: 20 = 18 degree steps, Sec. 3.1; "
    add("--rotations", type=int, default=20, help=rotations + "1 turns augmentation off)")
    val = "validation share, stratified (of the train side where a given split lists no val side) (default: 0.15)"
    add("--val-fraction", type=float, default=0.15, help=val)
    test = "test share, reported once at the end and never used for training; 0 when the data comes with its own "
    add("--test-fraction", type=float, default=0.15, help=test + "test set (default: 0.15)")
    add("--image-size", type=int, default=112, help="cells are resized to this (default: 112, Sec. 3.1)")
    normalize = "per-cell intensity stretch before the network: its 1st-99th percentiles to 0-1, or to its maximum, "
    normalize += "or none as in the paper (default: percentile, chosen on unseen specimens: docs/results-i3a.md)"
    add("--normalize", default="percentile", choices=NORMALIZATIONS, help=normalize)
    float32 = "compute in float32 everywhere, the exact path (default: bfloat16 autocast where the device computes "
    add("--float32", action="store_true", help=float32 + "in it: CPUs with AVX512-BF16 or AMX, CUDA GPUs)")
    paper = "the paper's settings where the defaults depart from them: " + paper_flags(PRETRAINING)
    add("--paper", action="store_true", help=paper + " (default: off)")
    add_device_flag(parser)
    add("--seed", type=int, default=0, help="seed for the split, initialisation and order (default: 0)")
    resume = "continue the killed run from OUT.state: the same command; --max-epochs, --patience may change "
    add("--resume", action="store_true", help=resume + "(default: off)")
    return parser


def main(argv=None):
    """The command line: the workshop opens the run (flags, device, --out, the source cells, the split), then run."""
    parser = build_parser()
    return run_command(lambda args: run(records.open_pretraining(args, parser)), parse_typed(parser, argv))


if __name__ == "__main__":
    main()
