"""Evaluate a checkpoint on labeled cells, or classify a folder of unlabeled cells (paper Sec. 3.2).

Metrics (Sec. 3.2): MCA, the mean over classes of each class's accuracy
(recall), and ACA, the overall accuracy. Both are reported as fractions in code
and JSON and as percentages on the console.

    python evaluate.py                                   # runs/pretrained.pt on its own test split
    python evaluate.py --checkpoint CKPT --data DIR      # every cell of DIR (or --split test)
    python evaluate.py --checkpoint CKPT --data DIR --json
    python evaluate.py --checkpoint CKPT --predict DIR --out predictions.csv
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from data import model_inputs
from lab import reports
from lab.commands import check_flags, refuse_unused, run_command
from lab.devices import add_device_flag, pick_device
from lab.layouts import load_unlabeled, parse_class_list, unlabeled_specimens
from lab.pictures import draw_confusion, made_here
from lab.recipe import in_precision
from lab.runs import check_output_file, check_outputs, load_checkpoint, network_from_checkpoint, preprocessing
from lab.splits import known_specimens, labeled_data_for

# ---------------------------------------------------------------------------------------------
# Metrics


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts; rows are the true class, columns the prediction."""
    y_true, y_pred = torch.as_tensor(y_true).long().cpu(), torch.as_tensor(y_pred).long().cpu()
    return torch.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """Recall of each class; None for a class with no samples (its accuracy is undefined)."""
    totals = confusion.sum(dim=1)
    return [float(confusion[i, i] / totals[i]) if totals[i] > 0 else None for i in range(len(totals))]


def mca_aca(y_true, y_pred, num_classes: int) -> tuple[float, float]:
    """(MCA, ACA) as fractions (Sec. 3.2).

    MCA averages the accuracies of the classes that have samples: a class absent
    from y_true has no accuracy to average, and counting it as 0 or 1 would
    move MCA by an amount that says nothing about the model.
    """
    return mca_aca_of(confusion_matrix(y_true, y_pred, num_classes))


def mca_aca_of(confusion: torch.Tensor) -> tuple[float, float]:
    """(MCA, ACA) of a confusion matrix. Summed over the k test sides of a cross-validation, every cell
    predicted once, it gives the pooled MCA and ACA: those of the k folds' predictions put together."""
    present = [accuracy for accuracy in per_class_accuracy(confusion) if accuracy is not None]
    total = int(confusion.sum())
    mca = sum(present) / len(present) if present else 0.0  # Sec. 3.2: the "mean class accuracy"
    # Sec. 3.2: the ACA "computes the overall accuracy by dividing the number of correctly classified data by the" total
    aca = float(confusion.diagonal().sum()) / total if total else 0.0
    return mca, aca


def specimen_votes(predictions: torch.Tensor, specimens: list[str], num_classes: int) -> dict:
    """{specimen: (its cells' positions, how many of them were predicted as each class)}, specimens sorted. A lab
    reports a slide's pattern: here the majority vote of its cells' predictions (argmax: ties, the lower class)."""
    members: dict[str, list[int]] = {}
    for index, specimen in enumerate(specimens):
        members.setdefault(specimen, []).append(index)
    cells = {specimen: torch.tensor(members[specimen]) for specimen in sorted(members)}
    return {specimen: (at, torch.bincount(predictions[at], minlength=num_classes)) for specimen, at in cells.items()}


def specimen_vote(labels: torch.Tensor, predictions: torch.Tensor, specimens: list[str], num_classes: int) -> dict:
    """Specimen-level result: each specimen's vote (specimen_votes) against the majority of its cells' true classes."""
    rows = []
    for specimen, (cells, votes) in specimen_votes(predictions, specimens, num_classes).items():
        true = int(torch.bincount(labels[cells], minlength=num_classes).argmax())
        predicted = int(votes.argmax())
        rows.append({"specimen": specimen, "cells": len(cells), "true": true, "predicted": predicted})
        rows[-1]["vote_share"] = float(votes[predicted]) / len(cells)
    correct = sum(row["true"] == row["predicted"] for row in rows)
    return {"specimen_accuracy": correct / len(rows) if rows else 0.0, "specimen_count": len(rows), "specimens": rows}


def summarize(
    labels: torch.Tensor, probabilities: torch.Tensor, class_names: list[str], specimens: list[str] | None = None
) -> dict:
    """Every metric this project reports, from true labels and predicted probabilities.

    With each cell's specimen, also the specimen-level majority vote (specimen_vote)."""
    num_classes = len(class_names)
    predictions = probabilities.argmax(dim=1)
    confusion = confusion_matrix(labels, predictions, num_classes)
    mca, aca = mca_aca(labels, predictions, num_classes)
    loss = F.nll_loss(torch.log(probabilities.clamp_min(1e-12)), labels).item() if len(labels) else float("nan")
    metrics = {"mca": mca, "aca": aca, "loss": loss, "count": len(labels)}
    metrics.update(per_class=dict(zip(class_names, per_class_accuracy(confusion))), confusion=confusion.tolist())
    if specimens is not None and len(labels):
        vote = specimen_vote(torch.as_tensor(labels), predictions, specimens, num_classes)
        for row in vote["specimens"]:
            row["true"], row["predicted"] = class_names[row["true"]], class_names[row["predicted"]]
        metrics.update(vote)
    return metrics


# ---------------------------------------------------------------------------------------------
# Inference


@torch.inference_mode()
def predict_probabilities(model, images, device: torch.device, batch_size=32, forward=None, precision="float32"):
    """Softmax probabilities (Eq. 1) in eval mode, batch by batch: the one inference function of the project.

    images are uint8 cells for the full network (under bfloat16 autocast with precision "bfloat16");
    with forward (a function from a batch of them to logits: active.py passes dataset indices and a
    function through its cached frozen layers) anything forward accepts.
    """
    if forward is None:

        def network(batch):
            return model(*model_inputs(batch, device))

        forward = in_precision(network, device, precision)

    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        outputs.append(torch.softmax(forward(images[start : start + batch_size]).float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0, len(model.head.bias))


def format_report(metrics: dict, class_names: list[str]) -> str:
    lines = [f"MCA {100 * metrics['mca']:.2f}%  ACA {100 * metrics['aca']:.2f}%  ({metrics['count']} cells)"]
    if "specimen_accuracy" in metrics:
        correct = sum(row["true"] == row["predicted"] for row in metrics["specimens"])
        wrong = [f"; {row['specimen']} ({row['true']}) voted {row['predicted']}" for row in metrics["specimens"]]
        wrong = [line for line, row in zip(wrong, metrics["specimens"]) if row["true"] != row["predicted"]]
        lines.append(
            f"specimens: {correct}/{metrics['specimen_count']} correct by majority vote of their cells "
            f"({100 * metrics['specimen_accuracy']:.1f}%)" + "".join(wrong)
        )
    width = max(len(name) for name in class_names)
    for name, accuracy in metrics["per_class"].items():
        lines.append(f"  {name:<{width}}  " + ("  n/a (no cells)" if accuracy is None else f"{100 * accuracy:6.2f}%"))
    lines.append("confusion matrix (% of each true class; rows true, columns predicted):")
    lines.append(" " * (width + 2) + " ".join(f"{name[:6]:>6}" for name in class_names))
    for name, row in zip(class_names, metrics["confusion"]):
        total = max(sum(row), 1)
        lines.append(f"  {name:<{width}}" + " ".join(f"{100 * count / total:6.1f}" for count in row))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    add = parser.add_argument
    add("--checkpoint", default="runs/pretrained.pt", help="model to evaluate (default: runs/pretrained.pt)")
    add("--data", default=None, help="labeled cells (default: the checkpoint's own data)")
    classes = "evaluate only these classes, e.g. the 5 a checkpoint knows on data with a sixth (default: all found)"
    add("--classes", nargs="+", default=None, help=classes)
    specimens = "CSV of file,specimen for --data or --predict (default: specimens.csv at the folder's root, if any)"
    add("--specimens", default=None, help=specimens)
    split = "which cells of the data (default: auto = the checkpoint's test split on its own data, all cells of --data)"
    add("--split", default="auto", choices=["auto", "all", "train", "val", "test", "pool"], help=split)
    add("--predict", default=None, help="folder of unlabeled cells to classify instead (default: off)")
    out = "CSV written by --predict, with OUT-specimens.csv where specimens are known (default: predictions.csv)"
    add("--out", default="predictions.csv", help=out)
    one = "with --predict: a flat folder is this one specimen (default: off; its specimens come as --data's do)"
    add("--one-specimen", default=None, metavar="NAME", help=one)
    add("--png", default=None, help="confusion matrix PNG (default: CHECKPOINT-evaluated.png beside the checkpoint)")
    add("--json", action="store_true", help="print the metrics as JSON instead of text (default: off)")
    add("--batch-size", type=int, default=32, help="inference batch size (default: 32)")
    add_device_flag(parser)
    return parser


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv))


def run(args):
    """Sec. 3.2's report (MCA, ACA, per class, confusion) of a checkpoint on labeled cells, or --predict."""
    check_flags(args, ("batch_size",))
    with_predict = "--predict classifies a folder of unlabeled cells"
    refuse_unused(args, build_parser(), [
        ("out", args.predict is not None, "the predictions' CSV is written only with --predict"),
        ("png", args.predict is None, f"{with_predict}; it draws no confusion matrix"),
        ("data", args.predict is None, f"{with_predict}; --data names labeled cells to score"),
        ("split", args.predict is None, f"{with_predict}; nothing is split"),
        ("classes", args.predict is None, f"{with_predict}; every class of the model is predicted"),
        ("one_specimen", args.predict is not None, "it names the one specimen of a flat --predict folder"),
    ])
    inputs = {"--checkpoint": args.checkpoint, "--data": args.data, "--specimens": args.specimens}
    folders = {"--predict": args.predict, "--data": args.data}
    if args.predict:
        check_output_file(args.out, "--out")
        check_outputs([("--out", args.out, True, None)], inputs, folders)
    device, where = pick_device(args.device), f"--checkpoint {args.checkpoint}"
    checkpoint = load_checkpoint(args.checkpoint)
    model = network_from_checkpoint(checkpoint, where).to(device)
    class_names = checkpoint["class_names"]
    if args.predict:
        return predict_folder(model, checkpoint, args, device)
    # Not confusion.png: that is the picture a run drew of its own test side, and stays the run's.
    png = args.png or str(Path(args.checkpoint).with_name(f"{Path(args.checkpoint).stem}-evaluated.png"))
    check_output_file(png, "--png")
    check_outputs([("--png", png, args.png is not None, made_here)], inputs, folders)
    classes = parse_class_list(args.classes)
    dataset, split = labeled_data_for(checkpoint, args.data, args.split, classes, args.specimens, where)
    probabilities = predict_probabilities(model, dataset.images, device, args.batch_size)
    metrics = summarize(dataset.labels, probabilities, class_names, known_specimens(dataset))
    title = f"{Path(args.checkpoint).name} on {dataset.source} ({split})"
    draw_confusion(metrics["confusion"], class_names, png, title)
    metrics.update(checkpoint=args.checkpoint, data=dataset.source, split=split, png=png)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{args.checkpoint} on {dataset.source} ({split} split)")
        print(format_report(metrics, class_names))
        print(f"confusion matrix drawn to {png}")
    return metrics


def predict_folder(model, checkpoint: dict, args, device) -> list[dict]:
    """Classify every image of a folder: file, predicted class, each class's probability, entropy (Eq. 3); with
    specimens known (as --data knows them), each specimen's call too (lab/records.write_predictions)."""
    unreadable: list[tuple[str, str]] = []
    paths, specimens = unlabeled_specimens(args.predict, args.specimens, args.one_specimen)
    if specimens is not None:  # the calls' CSV beside --out: derived, so never over a file it did not make
        inputs = {"--checkpoint": args.checkpoint, "--specimens": args.specimens}
        what = [("--out's specimens file", reports.specimens_path(args.out), False, reports.made_by_predict)]
        check_outputs(what, inputs, {"--predict": args.predict})
    if checkpoint["derived"].get("data_kind", "source") == "source":
        print(f"note: {args.checkpoint} is train.py's pretraining, not fine-tuned on the target: it calls its source "
              f"classes ({', '.join(checkpoint['class_names'])}); active.py's model.pt is the target's model")
    images, files = load_unlabeled(args.predict, *preprocessing(checkpoint), unreadable=unreadable, paths=paths)
    if specimens is not None:  # the cells read, each with its specimen
        of_path = dict(zip(map(str, paths), specimens))
        specimens = [of_path[file] for file in files]
    probabilities = predict_probabilities(model, images, device, args.batch_size)
    uncertainty = -torch.special.xlogy(probabilities, probabilities).sum(dim=1)  # entropy, Eq. 3 (active.entropy)
    names = checkpoint["class_names"]
    votes = None if specimens is None else specimen_votes(probabilities.argmax(dim=1), specimens, len(names))
    cells = (files, specimens, probabilities, uncertainty)
    return reports.write_predictions(args.out, args.predict, names, cells, votes, unreadable)


if __name__ == "__main__":
    main()
