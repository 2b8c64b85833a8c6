"""Score finished active.py runs again with test-time views (issue #64's first lever, measured before it is built in).

A pattern has no orientation: a cell turned by a quarter or mirrored is as valid a cell of its class. A specimen's
cells may still lie one way more than another, so averaging a network's probabilities (Eq. 1) over each cell's
exact quarter turns, or over those and their mirrors, may steady its call on a specimen it never saw. This needs no
training: it scores the run's own network on the run's own test side (Step 1 remade from its checkpoint), three
ways:

    python -m lab.views --runs runs/dev/in-al-s0 runs/dev/in-al-s1 runs/dev/in-al-s2 --out views.csv

Rows per run: one view (the run's own report, float32, the full network), the 4 quarter turns averaged, the 8 quarter
turns and mirrors averaged. The rule that keeps or drops the lever, written before its runs, is in
docs/results-i3a.md (issue #64); only if it passes does the option go into evaluate.py, the test report and --predict.
"""

import csv
import io
from pathlib import Path

import torch

from data import DataError, dihedral_view
from evaluate import predict_probabilities, summarize
from lab.commands import rescoring_parser, run_command
from lab.devices import pick_device
from lab.runs import (
    check_output_file,
    check_outputs,
    load_checkpoint,
    network_from_checkpoint,
    write_text_atomic,
)
from lab.splits import labeled_data_for, split_of_checkpoint

VIEWS = {"one view": 1, "4 quarter turns": 4, "8 quarter turns and mirrors": 8}
COLUMNS = ["run", "views", "cells", "mca", "aca"]


def view_probabilities(model, images: torch.Tensor, device, batch_size: int) -> list[torch.Tensor]:
    """The network's probabilities (Eq. 1) for each of the 8 views of every cell, in view order."""
    return [predict_probabilities(model, dihedral_view(images, view), device, batch_size) for view in range(8)]


def build_parser():
    runs = {"nargs": "+", "help": "finished active.py run folders (model.pt); required"}
    return rescoring_parser(__doc__, ("--runs",), runs)


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv))


def run(args):
    folders = [Path(folder) for folder in args.runs]
    for folder in folders:
        if not (folder / "model.pt").is_file():
            raise DataError(f"--runs: {folder / 'model.pt'} is missing; expected a finished active.py run folder")
    if args.out is not None:  # never a file inside a run folder it reads
        reads = {f"--runs {folder}": folder for folder in folders}
        check_outputs([("--out", check_output_file(args.out, "--out"), True, None)], {}, reads)
    device, rows = pick_device(args.device), []
    for folder in folders:
        checkpoint = load_checkpoint(str(folder / "model.pt"))
        model = network_from_checkpoint(checkpoint, f"--runs {folder}").to(device)
        everything, _ = labeled_data_for(checkpoint, None, "all")
        test = split_of_checkpoint(checkpoint, everything, "test")  # Step 1 again: the run's own test side
        each_view = view_probabilities(model, test.images, device, args.batch_size)
        for name, count in VIEWS.items():
            metrics = summarize(test.labels, torch.stack(each_view[:count]).mean(dim=0), test.class_names)
            rows.append({"run": str(folder), "views": name, "cells": len(test), **metrics})
            print(f"{folder} | {name:27s} | {len(test)} cells | MCA {100 * metrics['mca']:6.2f}% "
                  f"ACA {100 * metrics['aca']:6.2f}%")
    if args.out is not None:
        text = io.StringIO()
        writer = csv.DictWriter(text, COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "mca": f"{row['mca']:.4f}", "aca": f"{row['aca']:.4f}"} for row in rows)
        write_text_atomic(text.getvalue(), args.out)
    return rows


if __name__ == "__main__":
    main()
