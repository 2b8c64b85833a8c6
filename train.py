"""Pretrain the parallel residual networks on a small source dataset (paper Sec. 2.1 and 3.1).

The paper's "initial learning": the network of Fig. 5 is trained from scratch
on SNPHEp-2 (5 classes) with rotation augmentation (18 degree steps, 20 views
per image), Adam at learning rate 0.001, stopping when the validation loss has
not improved for 5 epochs in a row. The best checkpoint (lowest validation
loss) is what active.py fine-tunes on the target.

    python train.py                                      # embedded synthetic 5-class source
    python train.py --data DIR [--classes homogeneous coarse_speckled ...]
    python train.py --resume                             # continue a killed run

When the specimen of each cell is known (a specimens.csv at the data root, --specimens FILE,
or a specimen column in the labels CSV), train, validation and test hold different
specimens, so the validation loss that picks the epoch and the test result both measure
cells of specimens the network never saw (--split cells turns this off).

Writes runs/pretrained.pt (read by active.py by default) and, after every
epoch, runs/pretrained.pt.state so that a killed run resumes where it was.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from data import (
    NORMALIZATIONS,
    DataError,
    add_device_flag,
    add_split_flags,
    check_flags,
    describe_split,
    get_dataset,
    jitter_intensity,
    load_checkpoint,
    model_inputs,
    parse_class_list,
    pick_device,
    remove_stale_temporaries,
    resolve_split,
    rotation_angles,
    save_atomic,
    seed_everything,
    specimens_of,
    split_dataset,
)
from evaluate import draw_confusion, format_report, predict_probabilities, summarize
from model import ParallelResNet, trainable_parameters

RESUME_MAY_CHANGE = {"max_epochs", "patience", "device", "resume"}


def train_epoch(model, optimizer, images, labels, batch_size, device, views=1, generator=None, jitter=False):
    """One pass over every (image, rotation view) pair in a random order; returns (loss, accuracy, seen).

    With views=20 an epoch sees each training image at 0, 18, ..., 342 degrees
    (Sec. 3.1: augmentation "increases the original training set by a factor
    of 20"), rotated on the fly so the 20x set is never stored. jitter (--augment photometric, not in the
    paper): each view also gets its own gamma, blur and noise (data.jitter_intensity).
    """
    model.train()
    angles = rotation_angles(views)
    order = torch.randperm(len(images) * views, generator=generator)
    total_loss, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        pairs = order[start : start + batch_size]
        index, view = pairs // views, pairs % views
        cells = jitter_intensity(images[index], generator) if jitter else images[index]
        approximation, details = model_inputs(cells, device, angles[view] if views > 1 else None)
        target = labels[index].to(device)
        logits = model(approximation, details)
        loss = F.cross_entropy(logits, target)  # Eq. 2 on the softmax of Eq. 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(index)
        correct += (logits.argmax(dim=1) == target).sum().item()
    return total_loss / len(order), correct / len(order), len(order)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "--data", default=None, help="labeled source cells (default: the embedded synthetic 5-class set)"
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help="keep only these classes, e.g. drop cytoplasmatic from ICPR2012 (default: all found)",
    )
    parser.add_argument(
        "--synthetic-cells",
        type=int,
        default=200,
        help="size of the synthetic source when no --data is given (default: 200)",
    )
    add_split_flags(parser, "train/validation/test")
    parser.add_argument("--out", default="runs/pretrained.pt", help="best checkpoint (default: runs/pretrained.pt)")
    parser.add_argument("--max-epochs", type=int, default=30, help="most epochs (default: 30; the paper stopped at 32)")
    parser.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop after this many epochs without a lower validation loss (default: 5, Sec. 3.1)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 0.001, Sec. 3.1)")
    parser.add_argument(
        "--rotations",
        type=int,
        default=20,
        help="rotation views per training image, 360/N degrees apart (default: 20 = 18 degree steps, "
        "Sec. 3.1; 1 turns augmentation off)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.15, help="validation share, stratified (default: 0.15)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.15,
        help="test share, reported once at the end and never used for training; 0 when the data comes with "
        "its own test set (default: 0.15)",
    )
    parser.add_argument(
        "--image-size", type=int, default=112, help="cells are resized to this (default: 112, Sec. 3.1)"
    )
    parser.add_argument(
        "--normalize",
        default="percentile",
        choices=NORMALIZATIONS,
        help="per-cell intensity stretch before the network: its 1st-99th percentiles to 0-1, or to its maximum, "
        "or none as in the paper (default: percentile, chosen on unseen specimens: docs/results-i3a.md)",
    )
    parser.add_argument(
        "--augment",
        default="none",
        choices=["none", "photometric"],
        help="also jitter each view's gamma, blur and noise, what differs between specimens after the stretch "
        "(default: none, as the paper)",
    )
    add_device_flag(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and order (default: 0)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.state if it exists (default: off)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once, even in a log file
    try:
        return run(args)
    except DataError as error:
        sys.exit(f"error: {error}")


def run(args):
    check_flags(args, ("max_epochs", "batch_size", "rotations", "patience", "synthetic_cells"), ("lr",))
    if args.image_size < 16 or args.image_size % 4:
        raise DataError(f"--image-size {args.image_size}: expected a multiple of 4, at least 16")
    if not (0 < args.val_fraction < 1 and 0 <= args.test_fraction < 1 and args.val_fraction + args.test_fraction < 1):
        raise DataError("--val-fraction/--test-fraction: expected fractions in (0, 1) that sum to less than 1")
    device = pick_device(args.device)
    seed_everything(args.seed)
    classes = parse_class_list(args.classes)
    dataset = get_dataset(
        args.data, "source", classes, args.image_size, args.normalize, args.seed, args.synthetic_cells, args.specimens
    )
    # Train, validation and test on different specimens: the validation loss picks the epoch (Sec. 3.1), so
    # it must measure what generalises to unseen specimens, not what recognises the training ones.
    names = ["train", "val", "test"]
    fractions = [1 - args.val_fraction - args.test_fraction, args.val_fraction, args.test_fraction]
    split = resolve_split(args.split, dataset)
    train_idx, val_idx, test_idx = split_dataset(dataset, split, fractions, args.seed, names)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(f"--data: {len(dataset)} cells are too few to split into train and validation sets")
    train_set, val_set, test_set = (dataset.subset(part) for part in (train_idx, val_idx, test_idx))
    print(f"data: {dataset.source}, {len(dataset)} cells, classes {', '.join(dataset.class_names)}")
    print(describe_split(dataset, split, [train_idx, val_idx, test_idx], names, args.seed))
    print(f"training on {len(train_set)} cells x {args.rotations} rotations")

    model = ParallelResNet(len(dataset.class_names)).to(device)
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    record = {
        "class_names": dataset.class_names,
        "args": {key: value for key, value in vars(args).items()},
        "data_kind": "source",
        "image_size": args.image_size,
        "normalize": args.normalize,
        "split": split,
        "split_parts": {"names": names, "fractions": fractions, "seed": args.seed},
        "test_specimens": specimens_of(dataset, test_idx),
    }
    state_path = Path(args.out).with_name(Path(args.out).name + ".state")
    for path in (args.out, state_path):  # what a save killed half-way left behind
        remove_stale_temporaries(path)
    start_epoch, best_loss, bad_epochs, history = 1, float("inf"), 0, []
    if args.resume and state_path.exists():
        state = load_checkpoint(state_path, "--resume")
        if (
            state["class_names"] != dataset.class_names
            or state["args"].get("data") != args.data
            or state.get("split") != split
        ):
            raise DataError(
                f"--resume: {state_path} was made on other data, classes or split; remove it or drop --resume"
            )
        # Only the flags that do not change what is trained or how the data is split may differ.
        for key, value in vars(args).items():
            if key not in RESUME_MAY_CHANGE and key in state["args"] and state["args"][key] != value:
                raise DataError(
                    f"--resume: {state_path} was made with --{key.replace('_', '-')} {state['args'][key]}, not "
                    f"{value}; a resume may change only --max-epochs, --patience and --device"
                )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best_loss, bad_epochs, history = (
            state["epoch"] + 1,
            state["best_loss"],
            state["bad_epochs"],
            state["history"],
        )
        print(
            f"resumed from {state_path} after epoch {state['epoch']} "
            "(a resume may change --max-epochs, --patience, --device)"
        )

    for epoch in range(start_epoch, args.max_epochs + 1):
        if bad_epochs >= args.patience:
            break
        started = time.time()
        train_loss, train_acc, seen = train_epoch(
            model,
            optimizer,
            train_set.images,
            train_set.labels,
            args.batch_size,
            device,
            args.rotations,
            generator,
            jitter=args.augment == "photometric",
        )
        val = summarize(val_set.labels, predict_probabilities(model, val_set.images, device), dataset.class_names)
        seconds = time.time() - started
        improved = val["loss"] < best_loss
        if improved:
            best_loss, bad_epochs = val["loss"], 0
            save_atomic({**record, "model": model.state_dict(), "epoch": epoch, "metrics": {"val": val}}, args.out)
        else:
            bad_epochs += 1  # Sec. 3.1: stop when the validation loss has not improved 5 times in a row
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val["loss"],
                "val_mca": val["mca"],
                "val_aca": val["aca"],
                "seconds": seconds,
            }
        )
        print(
            f"epoch {epoch:3d} | train loss {train_loss:.4f} acc {100 * train_acc:5.1f}% | val loss {val['loss']:.4f} "
            f"MCA {100 * val['mca']:5.1f}% ACA {100 * val['aca']:5.1f}% | {seconds:5.1f}s {seen / seconds:6.0f} img/s"
            + (" | saved" if improved else ""),
            flush=True,
        )
        save_atomic(
            {
                **record,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_loss": best_loss,
                "bad_epochs": bad_epochs,
                "history": history,
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
            },
            state_path,
        )

    if best_loss == float("inf"):  # no epoch improved on nothing: every validation loss was NaN
        raise DataError(
            f"no epoch gave a finite validation loss (last: {history[-1]['val_loss'] if history else 'none'}); "
            f"nothing was saved and {args.out} was left as it was"
        )
    # The test split is looked at once, after training, by the chosen (best validation loss) model.
    best = load_checkpoint(args.out)
    model.load_state_dict(best["model"])
    metrics = dict(best["metrics"])
    if len(test_set):
        metrics["test"] = summarize(
            test_set.labels,
            predict_probabilities(model, test_set.images, device),
            dataset.class_names,
            test_set.specimens if split == "specimen" else None,
        )
        draw_confusion(
            metrics["test"]["confusion"],
            dataset.class_names,
            Path(args.out).with_name("pretrained-confusion.png"),
            f"pretraining, test split of {dataset.source}",
        )
    save_atomic({**best, "metrics": metrics, "history": history}, args.out)
    val = metrics["val"]
    print(f"best epoch {best['epoch']}: validation MCA {100 * val['mca']:.2f}% ACA {100 * val['aca']:.2f}%")
    if "test" in metrics:
        print(f"test split ({split}): " + format_report(metrics["test"], dataset.class_names))
    print(f"checkpoint written to {args.out}")
    return {"checkpoint": args.out, "metrics": metrics, "history": history}


if __name__ == "__main__":
    main()
