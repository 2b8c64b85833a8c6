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
import csv
import io
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from data import (
    DataError,
    check_flags,
    development_split,
    dihedral_views,
    get_dataset,
    load_checkpoint,
    load_unlabeled,
    model_inputs,
    parse_class_list,
    pick_device,
    preprocessing,
    resolve_split,
    split_dataset,
    write_bytes_atomic,
    write_text_atomic,
)
from model import ParallelResNet

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
    confusion = confusion_matrix(y_true, y_pred, num_classes)
    present = [accuracy for accuracy in per_class_accuracy(confusion) if accuracy is not None]
    total = int(confusion.sum())
    mca = sum(present) / len(present) if present else 0.0
    aca = float(confusion.diagonal().sum()) / total if total else 0.0
    return mca, aca


def specimen_vote(labels: torch.Tensor, predictions: torch.Tensor, specimens: list[str], num_classes: int) -> dict:
    """Specimen-level result, as a lab reports a slide: each specimen's pattern is the majority vote of its
    cells' predictions, compared with the majority of its cells' true classes (ties: the lower class index)."""
    members: dict[str, list[int]] = {}
    for index, specimen in enumerate(specimens):
        members.setdefault(specimen, []).append(index)
    rows = []
    for specimen in sorted(members):
        cells = torch.tensor(members[specimen])
        votes = torch.bincount(predictions[cells], minlength=num_classes)
        true = int(torch.bincount(labels[cells], minlength=num_classes).argmax())
        predicted = int(votes.argmax())
        rows.append(
            {
                "specimen": specimen,
                "cells": len(cells),
                "true": true,
                "predicted": predicted,
                "vote_share": float(votes[predicted]) / len(cells),
            }
        )
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
    metrics = {
        "mca": mca,
        "aca": aca,
        "loss": loss,
        "count": len(labels),
        "per_class": dict(zip(class_names, per_class_accuracy(confusion))),
        "confusion": confusion.tolist(),
    }
    if specimens is not None and len(labels):
        vote = specimen_vote(torch.as_tensor(labels), predictions, specimens, num_classes)
        for row in vote["specimens"]:
            row["true"], row["predicted"] = class_names[row["true"]], class_names[row["predicted"]]
        metrics.update(vote)
    return metrics


# ---------------------------------------------------------------------------------------------
# Inference


@torch.inference_mode()
def predict_probabilities(
    model, images: torch.Tensor, device: torch.device, batch_size: int = 32, tta: bool = False
) -> torch.Tensor:
    """Softmax probabilities (Eq. 1) for uint8 cells, in eval mode.

    With tta, the mean of the probabilities of the 8 dihedral views of each cell (test-time augmentation;
    not in the paper): 8 times the work."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        views = dihedral_views(images[start : start + batch_size]) if tta else [images[start : start + batch_size]]
        probabilities = [torch.softmax(model(*model_inputs(view, device)).float(), dim=1) for view in views]
        outputs.append(torch.stack(probabilities).mean(dim=0).cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0, len(model.head.bias))


def model_from_checkpoint(checkpoint: dict, device: torch.device, name: str = "--checkpoint") -> ParallelResNet:
    model = ParallelResNet(len(checkpoint["class_names"]))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:  # another network's weights, or another number of classes
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise DataError(f"{name}: its weights do not fit this project's network ({first})") from None
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Pictures


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def draw_confusion(confusion, class_names: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG: true class down, prediction across, percent in cells."""
    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    rows = confusion / confusion.sum(dim=1, keepdim=True).clamp_min(1)
    n, cell, left, top = len(class_names), 78, 150, 150
    image = Image.new("RGB", (left + n * cell + 20, top + n * cell + 50), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(12)
    draw.text((10, 10), title or "confusion matrix (% of each true class)", fill="black", font=font)
    draw.text((left, top - 20), "predicted class", fill="black", font=small)
    for i in range(n):
        for j in range(n):
            value = float(rows[i, j])
            shade = int(255 - 200 * value)
            color = (shade, shade, 255) if i == j else (255, shade, shade)
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=color, outline="gray")
            draw.text((box[0] + 14, box[1] + 30), f"{100 * value:.1f}", fill="black", font=font)
        draw.text((8, top + i * cell + 30), class_names[i][:18], fill="black", font=small)
        label = Image.new("RGBA", (120, 16), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((0, 0), class_names[i][:18], fill="black", font=small)
        image.paste(label.rotate(90, expand=True), (left + i * cell + 30, top - 145), label.rotate(90, expand=True))
    draw.text((8, top + n * cell + 15), "rows: true class", fill="black", font=small)
    _save_png(image, path)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _save_png(image: Image.Image, path: str | Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(buffer.getvalue(), path)


def draw_line_chart(path, title: str, panels: list, xlabel: str = "labeled fraction of the pool") -> None:
    """Side-by-side panels of lines with a +-1 std band, y in percent.

    panels: [(y label, {series name: [(x, mean, std), ...]}), ...], x and y as fractions.
    """
    width, height, margin = 440, 340, 55
    image = Image.new("RGB", (width * len(panels), height + 70), "white")
    draw = ImageDraw.Draw(image, "RGBA")
    font, small = _font(14), _font(11)
    draw.text((10, 8), title, fill="black", font=font)
    for panel_index, (ylabel, series) in enumerate(panels):
        left, top = panel_index * width + margin, 40
        plot_w, plot_h = width - margin - 20, height - 60
        xs = sorted({x for points in series.values() for x, _, _ in points}) or [0.0, 1.0]
        low = min(50.0, min((100 * (m - s) for points in series.values() for _, m, s in points), default=50.0))
        low = max(0.0, 10 * int(low // 10))

        def to_pixel(x, y):
            return left + plot_w * x, top + plot_h * (1 - (100 * y - low) / (100 - low))

        draw.rectangle((left, top, left + plot_w, top + plot_h), outline="black")
        for tick in range(int(low), 101, 10):
            _, y = to_pixel(0, tick / 100)
            draw.line((left, y, left + plot_w, y), fill=(225, 225, 225))
            draw.text((left - 28, y - 6), f"{tick}", fill="black", font=small)
        for x in xs:
            px, _ = to_pixel(x, low / 100)
            draw.text((px - 10, top + plot_h + 4), f"{100 * x:g}%", fill="black", font=small)
        draw.text((left, top + plot_h + 20), xlabel, fill="black", font=small)
        draw.text((left + 4, top + 4), f"{ylabel} (%)", fill="black", font=font)
        for index, (name, points) in enumerate(series.items()):
            color = PALETTE[index % len(PALETTE)]
            points = sorted(points)
            upper = [to_pixel(x, m + s) for x, m, s in points]
            lower = [to_pixel(x, m - s) for x, m, s in reversed(points)]
            if len(points) > 1:
                draw.polygon(upper + lower, fill=(*color, 50))
                draw.line([to_pixel(x, m) for x, m, _ in points], fill=color, width=2)
            for x, m, _ in points:
                px, py = to_pixel(x, m)
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=color)
            legend_y = top + plot_h - 18 * (len(series) - index)
            draw.line((left + plot_w - 90, legend_y + 6, left + plot_w - 70, legend_y + 6), fill=color, width=3)
            draw.text((left + plot_w - 65, legend_y), name, fill="black", font=small)
    _save_png(image, path)


def draw_bar_chart(path, title: str, groups: list[str], series: dict[str, list]) -> None:
    """Grouped bars in percent: one group per entry of groups, one bar per series (values as fractions)."""
    group_w, bar_w, left, top, plot_h = 60 + 22 * len(series), 22, 50, 40, 260
    image = Image.new("RGB", (left + group_w * len(groups) + 140, top + plot_h + 60), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(11)
    draw.text((10, 8), title, fill="black", font=font)
    for tick in range(0, 101, 20):
        y = top + plot_h * (1 - tick / 100)
        draw.line((left, y, left + group_w * len(groups), y), fill=(225, 225, 225))
        draw.text((left - 28, y - 6), f"{tick}", fill="black", font=small)
    for g, group in enumerate(groups):
        x0 = left + g * group_w + 20
        for index, values in enumerate(series.values()):
            value = values[g]
            if value is None:
                continue
            x = x0 + index * bar_w
            draw.rectangle((x, top + plot_h * (1 - value), x + bar_w - 3, top + plot_h), fill=PALETTE[index % 6])
            draw.text((x, top + plot_h * (1 - value) - 12), f"{100 * value:.0f}", fill="black", font=small)
        draw.text((x0, top + plot_h + 6), group, fill="black", font=small)
    for index, name in enumerate(series):
        y = top + 18 * index
        x = left + group_w * len(groups) + 10
        draw.rectangle((x, y, x + 12, y + 12), fill=PALETTE[index % 6])
        draw.text((x + 18, y), name, fill="black", font=small)
    _save_png(image, path)


def draw_contact_sheet(cells: list, captions: list[str], path, title: str = "", tile: int = 180, columns: int = 5):
    """Cells (2-D float arrays in [0, 1]) in a numbered grid, large enough for an annotator to judge.

    Each cell is stretched to its own brightest pixel for display only, so dim
    (intermediate) cells are as readable as bright ones.
    """
    rows = max(1, (len(cells) + columns - 1) // columns)
    image = Image.new("RGB", (columns * tile, rows * (tile + 34) + 30), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(11)
    draw.text((8, 6), title, fill="black", font=font)
    for position, (cell, caption) in enumerate(zip(cells, captions)):
        x, y = (position % columns) * tile, 30 + (position // columns) * (tile + 34)
        peak = float(cell.max()) or 1.0
        picture = Image.fromarray((255 * cell / peak).clip(0, 255).astype("uint8"), mode="L")
        image.paste(picture.resize((tile - 8, tile - 8), Image.BICUBIC).convert("RGB"), (x + 4, y + 4))
        draw.rectangle((x + 4, y + 4, x + 38, y + 24), fill="black")
        draw.text((x + 8, y + 6), f"{position + 1}", fill="yellow", font=font)
        draw.text((x + 6, y + tile - 2), caption[:34], fill="black", font=small)
    _save_png(image, path)


def format_report(metrics: dict, class_names: list[str]) -> str:
    lines = [f"MCA {100 * metrics['mca']:.2f}%  ACA {100 * metrics['aca']:.2f}%  ({metrics['count']} cells)"]
    if "specimen_accuracy" in metrics:
        correct = sum(row["true"] == row["predicted"] for row in metrics["specimens"])
        lines.append(
            f"specimens: {correct}/{metrics['specimen_count']} correct by majority vote of their cells "
            f"({100 * metrics['specimen_accuracy']:.1f}%)"
            + "".join(
                f"; {row['specimen']} ({row['true']}) voted {row['predicted']}"
                for row in metrics["specimens"]
                if row["true"] != row["predicted"]
            )
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


def checkpoint_split(checkpoint: dict) -> tuple[str, dict | None]:
    """(how the run split its data, {names, fractions, seed}) from a checkpoint; older ones split by cells."""
    split = checkpoint.get("split")
    if isinstance(split, dict):  # checkpoints written before specimen splits
        return "cells", split
    return split or "cells", checkpoint.get("split_parts")


def split_of_checkpoint(checkpoint: dict, dataset, split: str):
    """Recreate the split the checkpoint's run made (same sides, fractions, seed and unit) and return one side."""
    by, info = checkpoint_split(checkpoint)
    if not info:
        raise DataError("--split: this checkpoint records no split; use --split all")
    if split not in info["names"]:
        raise DataError(f"--split {split}: this checkpoint's run made the splits {', '.join(info['names'])}")
    by = resolve_split(by, dataset)
    parts = split_dataset(dataset, by, info["fractions"], info["seed"], info["names"])
    if info.get("development"):  # active.py --development: the pool split again, the test side left out
        parts = list(development_split(dataset, by, parts[0], info["fractions"], info["seed"]))
    return dataset.subset(parts[info["names"].index(split)])


def labeled_data_for(checkpoint: dict, data: str | None, split: str, classes=None, specimens=None):
    """The cells to evaluate (only `classes` if given), with labels in the checkpoint's class order.

    On the checkpoint's own data the run's classes are loaded and its split made again first, so
    that `--split test` is the run's test side whatever `--classes` keeps of it."""
    run_args = checkpoint.get("args", {})
    class_names = checkpoint["class_names"]
    own_data = data is None
    if classes is not None:
        unknown = [name for name in classes if name not in class_names]
        if unknown:
            raise DataError(
                f"--classes: the model does not know {', '.join(unknown)}; it knows {', '.join(class_names)}"
            )
    dataset = get_dataset(
        run_args.get("data") if own_data else data,
        checkpoint.get("data_kind", "source"),
        parse_class_list(run_args.get("classes")) if own_data else classes,
        *preprocessing(checkpoint),
        run_args.get("seed", 0),
        run_args.get("synthetic_cells"),
        specimens if specimens is not None else (run_args.get("specimens") if own_data else None),
    )
    unknown = [name for name in dataset.class_names if name not in class_names]
    if unknown:
        where = data or "the checkpoint's data"
        raise DataError(
            f"--checkpoint: the model knows {', '.join(class_names)}, but {where} also has {', '.join(unknown)}; "
            "evaluate the classes it knows with --classes"
        )
    dataset.labels = torch.tensor([class_names.index(dataset.class_names[label]) for label in dataset.labels.tolist()])
    dataset.class_names = list(class_names)
    if split == "auto":
        split = "test" if own_data and checkpoint.get("split") else "all"
    if split != "all":
        dataset = split_of_checkpoint(checkpoint, dataset, split)
    if classes is not None and own_data:
        keep = torch.tensor([class_names[label] in classes for label in dataset.labels.tolist()], dtype=torch.bool)
        dataset = dataset.subset(torch.nonzero(keep).squeeze(1))
    return dataset, split


def known_specimens(dataset) -> list[str] | None:
    """Each cell's specimen when every cell has one, else None (no specimen-level result)."""
    specimens = dataset.specimens
    return specimens if specimens is not None and all(s is not None for s in specimens) else None


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "--checkpoint", default="runs/pretrained.pt", help="model to evaluate (default: runs/pretrained.pt)"
    )
    parser.add_argument("--data", default=None, help="labeled cells (default: the checkpoint's own data)")
    parser.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help="evaluate only these classes, e.g. the 5 a checkpoint knows on data with a sixth (default: all found)",
    )
    parser.add_argument(
        "--specimens",
        default=None,
        help="CSV of file,specimen for --data (default: specimens.csv at the data root, if any)",
    )
    parser.add_argument(
        "--split",
        default="auto",
        choices=["auto", "all", "train", "val", "test", "pool"],
        help="which cells of the data (default: auto = the checkpoint's test split on its own data, "
        "all cells of --data)",
    )
    parser.add_argument("--predict", default=None, help="folder of unlabeled cells to classify instead (default: off)")
    parser.add_argument("--out", default="predictions.csv", help="CSV written by --predict (default: predictions.csv)")
    parser.add_argument(
        "--png", default=None, help="confusion matrix PNG (default: confusion.png beside the checkpoint)"
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of text (default: off)")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="average each cell's probabilities over its 8 rotations and mirrors (default: off, as in the paper)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="inference batch size (default: 32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    args = parser.parse_args(argv)
    try:
        check_flags(args, ("batch_size",))
        if args.predict and Path(args.out).is_dir():
            raise DataError(f"--out {args.out}: is a folder; expected the path of the CSV to write")
        device = pick_device(args.device)
        checkpoint = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(checkpoint, device, f"--checkpoint {args.checkpoint}")
        class_names = checkpoint["class_names"]
        if args.predict:
            return predict_folder(model, checkpoint, args, device)
        classes = parse_class_list(args.classes)
        dataset, split = labeled_data_for(checkpoint, args.data, args.split, classes, args.specimens)
    except DataError as error:
        sys.exit(f"error: {error}")
    probabilities = predict_probabilities(model, dataset.images, device, args.batch_size, args.tta)
    metrics = summarize(dataset.labels, probabilities, class_names, known_specimens(dataset))
    png = args.png or str(Path(args.checkpoint).with_name("confusion.png"))
    draw_confusion(
        metrics["confusion"], class_names, png, f"{Path(args.checkpoint).name} on {dataset.source} ({split})"
    )
    metrics.update(checkpoint=args.checkpoint, data=dataset.source, split=split, png=png, tta=args.tta)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{args.checkpoint} on {dataset.source} ({split} split)")
        print(format_report(metrics, class_names))
        print(f"confusion matrix drawn to {png}")
    return metrics


def predict_folder(model, checkpoint: dict, args, device) -> list[dict]:
    """Classify every image of a folder: file, predicted class, each class's probability, entropy (Eq. 3)."""
    unreadable: list[tuple[str, str]] = []
    images, files = load_unlabeled(args.predict, *preprocessing(checkpoint), unreadable=unreadable)
    from active import entropy  # imported here: active.py itself imports this file

    probabilities = predict_probabilities(model, images, device, args.batch_size)
    uncertainty = entropy(probabilities)
    class_names = checkpoint["class_names"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "predicted", *[f"p_{name}" for name in class_names], "entropy", "error"])
    rows = []
    for file, row, value in zip(files, probabilities.tolist(), uncertainty.tolist()):
        predicted = class_names[max(range(len(row)), key=row.__getitem__)]
        writer.writerow([file, predicted, *[f"{p:.6f}" for p in row], f"{value:.6f}", ""])
        rows.append({"file": file, "predicted": predicted, "entropy": value})
    for file, error in unreadable:  # listed, not classified
        writer.writerow([file, "", *[""] * len(class_names), "", error])
    write_text_atomic(buffer.getvalue(), args.out)
    print(f"classified {len(files)} cells from {args.predict}; predictions written to {args.out}")
    if unreadable:
        print(
            f"{len(unreadable)} image(s) could not be read, e.g. {unreadable[0][0]}; their rows in {args.out} say why"
        )
    return rows


if __name__ == "__main__":
    main()
