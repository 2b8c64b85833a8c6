"""Score a finished active.py run again with its BatchNorm statistics recomputed (issue #61's collapse diagnosis).

A `--paper` run's last round can undo the others (IN-AL on specimen fold 1: 73.6% MCA after round 8, 39.8% after
round 9). Either the round's weights went wrong, or only the running mean and variance that its BatchNorm layers
carry into evaluation did: every training batch moves them by the layer's momentum, so they describe the last few
batches, not the cells. This keeps the weights and recomputes those statistics as the exact average over a set of
cells (momentum None), as the recipe's `--batchnorm recalibrate` does after every fine-tuning, then scores the run's
test side again:

    python -m lab.batchnorm --run runs/grid/in-al-limit0.2-seed0-fold1

Rows: the run as it finished; the statistics of the layers that trained recomputed on its labeled cells (what the
last round trained on); recomputed on its whole pool (images only, no labels: a lab has them). The test side is
never used to recompute anything. Then each round's labeled cells, epochs, training loss and MCA from the run's
results.json, to see which round fell and how long it trained.
"""

import argparse
import copy
import csv
from pathlib import Path

import torch

from data import DataError, model_inputs
from evaluate import predict_probabilities, summarize
from lab import recipe
from lab.commands import run_command
from lab.devices import add_device_flag, pick_device
from lab.records import read_results
from lab.runs import (
    check_output_file,
    check_outputs,
    load_checkpoint,
    network_from_checkpoint,
    write_text_atomic,
)
from lab.splits import labeled_data_for, split_of_checkpoint
from model import freeze_early_layers


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--run", required=True, help="a finished active.py run folder (model.pt, labeled.csv, "
                        "results.json); required")
    parser.add_argument("--batch-size", type=int, default=64, help="cells a forward pass (default: 64)")
    parser.add_argument("--out", default=None, help="also write the rows to this CSV (default: none)")
    add_device_flag(parser)
    return parser


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv))


def recalibrated(model, images, device, batch_size: int):
    """A copy of model after the recipe's own recalibration (recipe.recalibrate_batchnorm, `--batchnorm recalibrate`)
    over images: its trainable BatchNorm layers hold the exact mean and variance over them, the weights kept. The
    frozen layers (Sec. 3.1: "fixed all the layers before the second residual block") keep their pretraining's."""
    model = copy.deepcopy(model)
    recipe.recalibrate_batchnorm(model, lambda batch: model(*model_inputs(batch, device)), images, batch_size)
    return model


def labeled_indices(run_folder: Path, dataset) -> torch.Tensor:
    """The dataset indices of the run's labeled cells (labeled.csv's index column, checked against its files)."""
    path = run_folder / "labeled.csv"
    if not path.is_file():
        raise DataError(f"--run: {path} is missing; expected the labeled.csv of a finished active.py run")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    indices = [int(row["index"]) for row in rows]
    wrong = [row["file"] for row, index in zip(rows, indices) if index >= len(dataset) or
             Path(dataset.files[index]).name != Path(row["file"]).name]
    if wrong:
        raise DataError(f"--run: {path} lists {len(wrong)} cells that are not the run's data (first: {wrong[0]})")
    return torch.tensor(indices)


def run(args):
    folder = Path(args.run)
    for name in ("model.pt", "results.json"):
        if not (folder / name).is_file():
            raise DataError(f"--run: {folder / name} is missing; expected a finished active.py run folder")
    if args.out is not None:  # never a file of the run folder it reads
        check_outputs([("--out", check_output_file(args.out, "--out"), True, None)], {}, {"--run": folder})
    device = pick_device(args.device)
    checkpoint = load_checkpoint(str(folder / "model.pt"))
    model = network_from_checkpoint(checkpoint, f"--run {folder}")
    if not checkpoint["args"].get("scratch"):
        freeze_early_layers(model)  # as active.py's network(): only the layers that trained are recomputed
    model = model.to(device)
    everything, _ = labeled_data_for(checkpoint, None, "all")  # the run's cells, in its order (labeled.csv's index)
    test, pool = (split_of_checkpoint(checkpoint, everything, side) for side in ("test", "pool"))  # Step 1 again
    labeled = everything.images[labeled_indices(folder, everything)]

    rows = []
    for name, cells in (("as the run finished", None), ("recomputed on the labeled cells", labeled),
                        ("recomputed on the whole pool", pool.images)):
        scored = model if cells is None else recalibrated(model, cells, device, args.batch_size)
        probabilities = predict_probabilities(scored, test.images, device, args.batch_size)
        metrics = summarize(test.labels, probabilities, test.class_names)
        rows.append({"statistics": name, "cells": 0 if cells is None else len(cells), **metrics})
        print(f"{name:34s} | cells {rows[-1]['cells']:5d} | MCA {100 * metrics['mca']:6.2f}% "
              f"ACA {100 * metrics['aca']:6.2f}% | test loss {metrics['loss']:.4f}")
    if args.out is not None:
        table = "statistics,cells,mca,aca,test_loss\n" + "".join(
            f"{row['statistics']},{row['cells']},{row['mca']:.4f},{row['aca']:.4f},{row['loss']:.4f}\n" for row in rows)
        write_text_atomic(table, args.out)
    print("round | labeled | epochs | train loss | MCA %")
    for record in read_results(folder / "results.json")["rounds"]:
        loss = record.get("train_loss")
        print(f"{record['round']:5d} | {record['labeled']:7d} | {record['epochs']:6d} | "
              f"{'' if loss is None else f'{loss:.4f}':>10s} | {100 * record['mca']:.2f}")
    return rows


if __name__ == "__main__":
    main()
