"""Pretrain the parallel residual networks on a small source dataset (paper Sec. 2.1 and 3.1).

The paper's "initial learning": the network of Fig. 5 is trained from scratch
on SNPHEp-2 (5 classes) with rotation augmentation (18 degree steps, 20 views
per image), Adam at learning rate 0.001, stopping when the validation loss has
not improved for 5 epochs in a row. The best checkpoint (lowest validation
loss) is what active.py fine-tunes on the target.

    python train.py                                      # embedded synthetic 5-class source
    python train.py --data DIR [--classes homogeneous coarse_speckled ...]
    python train.py --resume                             # the same command continues a killed run

When the specimen of each cell is known (a specimens.csv at the data root, --specimens FILE,
or a specimen column in the labels CSV), train, validation and test hold different
specimens, so the validation loss that picks the epoch and the test result both measure
cells of specimens the network never saw (--split cells turns this off).

Writes runs/pretrained.pt (read by active.py by default) and, after every
epoch, runs/pretrained.pt.state so that a killed run resumes where it was.
"""

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from data import NORMALIZATIONS, DataError, model_inputs, rotation_angles
from evaluate import draw_confusion, format_report, predict_probabilities, summarize
from layouts import get_dataset, parse_class_list
from model import ParallelResNet, trainable_parameters
from runs import (
    CHECKPOINT_FORMAT,
    NUMBER,
    add_device_flag,
    check_flags,
    check_image_size,
    check_output_file,
    check_resume,
    check_same_data,
    check_same_precision,
    data_fingerprint,
    derived,
    in_precision,
    load_checkpoint,
    load_state,
    pick_device,
    pick_precision,
    precision_line,
    release_lock,
    remove_stale_temporaries,
    run_command,
    save_atomic,
    seed_everything,
    take_lock,
)
from splits import add_split_flags, describe_split, resolve_split, specimens_of, split_dataset

RESUME_MAY_CHANGE = ("max_epochs", "patience", "device")
# What OUT.state must hold, each of its type, before a resume trusts it.
STATE_FIELDS = {"args": dict, "fingerprint": dict, "model": dict, "optimizer": dict, "history": list}
STATE_FIELDS.update(generator=torch.Tensor, torch_rng=torch.Tensor, epoch=int, best_loss=NUMBER, bad_epochs=int)


def train_epoch(model, optimizer, images, labels, batch_size, device, views=1, generator=None, precision="float32"):
    """One pass over every (image, rotation view) pair in a random order; returns (loss, accuracy, seen).

    With views=20 an epoch sees each training image at 0, 18, ..., 342 degrees
    (Sec. 3.1: augmentation "increases the original training set by a factor
    of 20"), rotated on the fly so the 20x set is never stored.
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
        loss = F.cross_entropy(logits, target)  # Eq. 2 on the softmax of Eq. 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(index)
        correct += (logits.argmax(dim=1) == target).sum().item()
    return total_loss / len(order), correct / len(order), len(order)


def run(args):
    """Sec. 3.1's initial learning: train epoch by epoch, keep the lowest validation loss, stop after patience."""
    check_train_flags(args)
    device = pick_device(args.device)
    state_path = claim_output(args)
    seed_everything(args.seed)
    dataset, made, (train_set, val_set, test_set) = source_and_split(args)
    made["precision"] = pick_precision(device, args.float32)  # bfloat16 where the device computes in it
    fingerprint = data_fingerprint(dataset)  # once: every epoch's state records it, so a resume reads the same data
    print(precision_line(device, made["precision"]))
    model = ParallelResNet(len(dataset.class_names)).to(device)
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=1e-3)  # Sec. 3.1: "a learning rate of 0.001"
    generator = torch.Generator().manual_seed(args.seed)
    progress = {"epoch": 0, "best_loss": math.inf, "bad_epochs": 0, "history": []}
    if args.resume:
        progress = restore(args, made, state_path, fingerprint, model, optimizer, generator)
    record = {"class_names": dataset.class_names, "args": vars(args), "derived": made, "format": CHECKPOINT_FORMAT}

    for epoch in range(progress["epoch"] + 1, args.max_epochs + 1):
        if progress["bad_epochs"] >= args.patience:
            break  # Sec. 3.1: the validation loss has not improved for `patience` epochs in a row
        started = time.time()
        train_loss, train_acc, seen = train_epoch(
            model, optimizer, train_set.images, train_set.labels, args.batch_size, device, args.rotations, generator,
            made["precision"],
        )
        probabilities = predict_probabilities(model, val_set.images, device, precision=made["precision"])
        val = summarize(val_set.labels, probabilities, dataset.class_names)
        seconds = time.time() - started
        improved = val["loss"] < progress["best_loss"]
        if improved:  # the best checkpoint: what active.py fine-tunes
            progress.update(best_loss=val["loss"], bad_epochs=0)
            save_atomic({**record, "model": model.state_dict(), "epoch": epoch, "metrics": {"val": val}}, args.out)
        else:
            progress["bad_epochs"] += 1
        progress["epoch"] = epoch
        progress["history"].append(epoch_record(epoch, train_loss, train_acc, val, seconds))
        print(epoch_line(progress["history"][-1], seen) + (" | saved" if improved else ""), flush=True)
        state = {**record, **progress, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        state.update(fingerprint=fingerprint, generator=generator.get_state())
        save_atomic({**state, "torch_rng": torch.get_rng_state()}, state_path)

    return final_test(args, model, dataset, made, test_set, progress, device)


def check_train_flags(args) -> None:
    check_flags(args, ("max_epochs", "batch_size", "rotations", "patience", "synthetic_cells"))
    check_image_size(args.image_size)
    if not (0 < args.val_fraction < 1 and 0 <= args.test_fraction < 1 and args.val_fraction + args.test_fraction < 1):
        raise DataError("--val-fraction/--test-fraction: expected fractions in (0, 1) that sum to less than 1")


def claim_output(args) -> Path:
    """Check --out before any work and hold its lock; returns the state file's path (OUT.state).

    A checkpoint of another kind at --out (active.py's model.pt, a campaign's) is never overwritten."""
    out = check_output_file(args.out, "--out")
    state_path = out.with_name(out.name + ".state")
    take_lock(out.with_name(out.name + ".lock"), f"--out {out}")
    for path in (out, state_path):  # what a save killed half-way left behind
        remove_stale_temporaries(path)
    if out.exists() and not args.resume:
        kind = derived(load_checkpoint(out, "--out")).get("data_kind", "source")
        if kind != "source":
            raise DataError(f"--out {out}: holds a {kind} checkpoint, not train.py's; choose another --out")
    return state_path


def source_and_split(args):
    """The source cells, and train, validation and test on different specimens when specimens are known.

    The validation loss picks the epoch (Sec. 3.1), so it must measure what generalises to unseen specimens,
    not what recognises the training ones. Returns (dataset, what the run derived, the three sides)."""
    classes = parse_class_list(args.classes)
    dataset = get_dataset(
        args.data, "source", classes, args.image_size, args.normalize, args.seed, args.synthetic_cells, args.specimens
    )
    names = ["train", "val", "test"]
    fractions = [1 - args.val_fraction - args.test_fraction, args.val_fraction, args.test_fraction]
    split = resolve_split(args.split, dataset)
    parts = split_dataset(dataset, split, fractions, args.seed, names)
    if len(parts[0]) == 0 or len(parts[1]) == 0:
        raise DataError(f"--data: {len(dataset)} cells are too few to split into train and validation sets")
    print(f"data: {dataset.source}, {len(dataset)} cells, classes {', '.join(dataset.class_names)}")
    print(describe_split(dataset, split, parts, names, args.seed))
    print(f"training on {len(parts[0])} cells x {args.rotations} rotations")
    made = {"data_kind": "source", "image_size": args.image_size, "normalize": args.normalize, "split": split}
    made.update(split_parts={"names": names, "fractions": fractions, "seed": args.seed})
    made["test_specimens"] = specimens_of(dataset, parts[2])
    return dataset, made, [dataset.subset(part) for part in parts]


def restore(args, made: dict, state_path: Path, fingerprint: dict, model, optimizer, generator) -> dict:
    """Put a killed run's weights, optimizer and random states back (the one resume design: runs.py)."""
    state = load_state(state_path, STATE_FIELDS, "a train.py run")
    check_resume(state["args"], args, state_path, RESUME_MAY_CHANGE)
    check_same_data(state["fingerprint"], fingerprint, state_path)
    check_same_precision(state.get("derived", {}), made, state_path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    may_change = "a resume may change --max-epochs, --patience, --device"
    print(f"resumed from {state_path} after epoch {state['epoch']} ({may_change})")
    return {key: state[key] for key in ("epoch", "best_loss", "bad_epochs", "history")}


def epoch_record(epoch, train_loss, train_acc, val, seconds) -> dict:
    record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val["loss"]}
    return {**record, "val_mca": val["mca"], "val_aca": val["aca"], "seconds": seconds}


def epoch_line(record: dict, seen: int) -> str:
    """The progress line of an epoch: losses, validation MCA and ACA, the time and the throughput."""
    return (
        f"epoch {record['epoch']:3d} | train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:5.1f}% | "
        f"val loss {record['val_loss']:.4f} MCA {100 * record['val_mca']:5.1f}% ACA {100 * record['val_aca']:5.1f}% | "
        f"{record['seconds']:5.1f}s {seen / record['seconds']:6.0f} img/s"
    )


def final_test(args, model, dataset, made, test_set, progress: dict, device) -> dict:
    """The test split is looked at once, after training, by the chosen (best validation loss) model."""
    history = progress["history"]
    if progress["best_loss"] == math.inf:  # no epoch improved on nothing: every validation loss was NaN
        last = history[-1]["val_loss"] if history else "none"
        kept = f"nothing was saved and {args.out} was left as it was"
        raise DataError(f"no epoch gave a finite validation loss (last: {last}); {kept}")
    best = load_checkpoint(args.out)
    model.load_state_dict(best["model"])
    metrics = dict(best["metrics"])
    if len(test_set):
        specimens = test_set.specimens if made["split"] == "specimen" else None
        probabilities = predict_probabilities(model, test_set.images, device)  # float32: exact, as evaluate.py
        metrics["test"] = summarize(test_set.labels, probabilities, dataset.class_names, specimens)
        picture = Path(args.out).with_name(Path(args.out).stem + "-confusion.png")  # beside --out, named after it
        title = f"pretraining, test split of {dataset.source}"
        draw_confusion(metrics["test"]["confusion"], dataset.class_names, picture, title)
    save_atomic({**best, "metrics": metrics, "history": history}, args.out)
    val = metrics["val"]
    print(f"best epoch {best['epoch']}: validation MCA {100 * val['mca']:.2f}% ACA {100 * val['aca']:.2f}%")
    if "test" in metrics:
        print(f"test split ({made['split']}): " + format_report(metrics["test"], dataset.class_names))
    release_lock(Path(args.out).with_name(Path(args.out).name + ".lock"))
    print(f"checkpoint written to {args.out}")
    return {"checkpoint": args.out, "metrics": metrics, "history": history}


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
    add("--out", default="runs/pretrained.pt", help="best checkpoint (default: runs/pretrained.pt)")
    add("--max-epochs", type=int, default=30, help="most epochs (default: 30; the paper stopped at 32)")
    patience = "stop after this many epochs without a lower validation loss (default: 5, Sec. 3.1)"
    add("--patience", type=int, default=5, help=patience)
    add("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    rotations = "rotation views per training image, 360/N degrees apart (default: 20 = 18 degree steps, Sec. 3.1; "
    add("--rotations", type=int, default=20, help=rotations + "1 turns augmentation off)")
    add("--val-fraction", type=float, default=0.15, help="validation share, stratified (default: 0.15)")
    test = "test share, reported once at the end and never used for training; 0 when the data comes with its own "
    add("--test-fraction", type=float, default=0.15, help=test + "test set (default: 0.15)")
    add("--image-size", type=int, default=112, help="cells are resized to this (default: 112, Sec. 3.1)")
    normalize = "per-cell intensity stretch before the network: its 1st-99th percentiles to 0-1, or to its maximum, "
    normalize += "or none as in the paper (default: percentile, chosen on unseen specimens: docs/results-i3a.md)"
    add("--normalize", default="percentile", choices=NORMALIZATIONS, help=normalize)
    float32 = "compute in float32 everywhere, the exact path (default: bfloat16 autocast where the device computes "
    add("--float32", action="store_true", help=float32 + "in it: CPUs with AVX512-BF16 or AMX, CUDA GPUs)")
    add_device_flag(parser)
    add("--seed", type=int, default=0, help="seed for the split, initialisation and order (default: 0)")
    resume = "continue the killed run from OUT.state: the same command; --max-epochs, --patience may change "
    add("--resume", action="store_true", help=resume + "(default: off)")
    return parser


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
