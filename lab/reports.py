"""What a classification of new cells writes (evaluate.py --predict): a row per cell and, where the specimens are
known, each specimen's call, as a lab reports a patient's serum. Not the paper (the workshop).

The call is the vote of the specimen's cells (evaluate.specimen_votes: the class most of them are predicted as),
the same vote that evaluation on labeled data scores (evaluate.specimen_vote). What it can promise is measured on
unseen specimens only (docs/data.md, "A patient's pattern"): it is a majority of cells, so it is as good
as the cells' accuracy on that serum, and a serum that shows two patterns is called by the one most cells show.
"""

import csv
import io
from pathlib import Path

from lab.layouts import spreadsheet_cell
from lab.runs import write_text_atomic

SECOND_SHARE = 0.2  # a second pattern is named where it holds at least a fifth of the cells (real sera show two)
FEW_CELLS = 20  # a call on fewer cells is flagged: one or two cells then move the vote's share by 5 to 10 points


def specimen_calls(class_names: list[str], probabilities, votes: dict) -> list[dict]:
    """Each specimen's row: its cells, the call and its share, the second pattern, the mean probability of each
    class, and a flag where the call rests on few cells or no class holds a majority."""
    rows = []
    for specimen, (cells, counts) in votes.items():
        order = sorted(range(len(class_names)), key=lambda label: (-int(counts[label]), label))  # argmax's ties
        called, second = order[0], order[1]
        share, second_share = float(counts[called]) / len(cells), float(counts[second]) / len(cells)
        flags = (["few cells"] if len(cells) < FEW_CELLS else []) + (["no majority"] if share <= 0.5 else [])
        mean = probabilities[cells].mean(dim=0).tolist()
        row = {"specimen": specimen, "cells": len(cells), "call": class_names[called], "share": share}
        row.update(second=class_names[second] if second_share >= SECOND_SHARE else "", second_share=second_share)
        rows.append({**row, "flag": "; ".join(flags), "mean": dict(zip(class_names, mean))})
    return rows


def write_predictions(out, folder, class_names: list[str], cells: tuple, votes: dict | None, unreadable) -> list:
    """OUT: file, specimen (where known), predicted class, each class's probability, entropy, error; unreadable
    files listed with why, not counted. With specimens, OUT-specimens.csv and a short table on the console."""
    files, specimens, probabilities, uncertainty = cells
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    where = ["specimen"] if specimens is not None else []
    writer.writerow(["file", *where, "predicted", *[f"p_{name}" for name in class_names], "entropy", "error"])
    rows = []
    for index, (file, row, value) in enumerate(zip(files, probabilities.tolist(), uncertainty.tolist())):
        predicted = class_names[max(range(len(row)), key=row.__getitem__)]
        specimen = [spreadsheet_cell(specimens[index])] if specimens is not None else []
        writer.writerow([spreadsheet_cell(file), *specimen, predicted, *[f"{p:.6f}" for p in row], f"{value:.6f}", ""])
        rows.append({"file": file, "predicted": predicted, "entropy": value})
    for file, error in unreadable:  # listed, not classified
        writer.writerow([spreadsheet_cell(file), *[""] * len(where), "", *[""] * len(class_names), "", error])
    write_text_atomic(buffer.getvalue(), out)
    print(f"classified {len(files)} cells from {folder}; predictions written to {out}")
    if unreadable:
        example = unreadable[0][0]
        print(f"{len(unreadable)} image(s) could not be read, e.g. {example}; their rows in {out} say why")
    if votes is None:
        return rows
    calls = specimen_calls(class_names, probabilities, votes)
    write_calls(calls, class_names, Path(out).with_name(Path(out).stem + "-specimens.csv"))
    return calls


def write_calls(calls: list[dict], class_names: list[str], path: Path) -> None:
    """OUT-specimens.csv, and the table: specimen, cells, call (share), second pattern, flag."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["specimen", "cells", "call", "share", "second", "second_share"]
                    + [f"mean_p_{name}" for name in class_names] + ["flag"])  # fmt: skip
    for row in calls:
        means = [f"{row['mean'][name]:.4f}" for name in class_names]
        second = [row["second"], f"{row['second_share']:.4f}" if row["second"] else ""]
        writer.writerow([spreadsheet_cell(row["specimen"]), row["cells"], row["call"], f"{row['share']:.4f}",
                         *second, *means, row["flag"]])  # fmt: skip
    write_text_atomic(buffer.getvalue(), path)
    width = max(len("specimen"), *(len(row["specimen"]) for row in calls))
    print(f"{'specimen':<{width}}  cells  call (share of its cells)       second pattern        flag")
    for row in calls:
        call = f"{row['call']} ({100 * row['share']:.0f}%)"
        second = f"{row['second']} ({100 * row['second_share']:.0f}%)" if row["second"] else ""
        print(f"{row['specimen']:<{width}}  {row['cells']:5d}  {call:<30} {second:<21} {row['flag']}")
    print(f"each specimen's call written to {path}")
