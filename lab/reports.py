"""What a classification of new cells writes (evaluate.py --predict): a row per cell and, where the specimens are
known, each specimen's call, as a lab reports a patient's serum. Not the paper (the workshop).

The call is the vote of the specimen's cells (evaluate.specimen_votes: the class most of them are predicted as),
the same vote that evaluation on labeled data scores (evaluate.specimen_vote). What it can promise is measured on
unseen specimens only (docs/data.md, "A patient's pattern"): it is a majority of cells, so it is as good
as the cells' accuracy on that serum, and a serum that shows two patterns is called by the one most cells show.
"""

import csv
import io
import secrets
import time
from pathlib import Path

from data import DataError
from lab.layouts import spreadsheet_cell
from lab.runs import write_all_atomic

SECOND_SHARE = 0.2  # a second pattern is named where it holds at least a fifth of the cells (real sera show two)
PAIR_COLUMN = "prediction_id"  # one id a --predict run, in every row of both its CSVs: a mixed pair shows
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


def specimens_path(out) -> Path:
    """Where the specimens' calls go: OUT-specimens.csv beside --out."""
    return Path(out).with_name(Path(out).stem + "-specimens.csv")


def made_by_predict(path) -> bool:
    """Whether a file is a specimens CSV that --predict wrote (its header, with the pair's id column)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:  # the header only: --predict writes UTF-8
            first = handle.readline().rstrip("\r\n")
    except OSError:
        return False
    return first.startswith("specimen,cells,call,") and first.endswith(f",{PAIR_COLUMN}")


def prediction_id(path) -> str | None:
    """The id a --predict wrote in every row of both its CSVs (None where the file has none)."""
    with open(path, newline="", encoding="utf-8") as handle:
        row = next(csv.DictReader(handle), None)
    return None if row is None else row.get(PAIR_COLUMN) or None


def check_pair(out) -> None:
    """A reader's check that OUT and OUT-specimens.csv were made by one --predict (a kill between their two renames
    leaves one new and one old: their ids differ)."""
    ids = prediction_id(out), prediction_id(specimens_path(out))
    if ids[0] is None or ids[0] != ids[1]:
        raise DataError(f"{out} and {specimens_path(out)}: not made together (prediction ids {ids[0]}, {ids[1]})")


def write_predictions(out, folder, class_names: list[str], cells: tuple, votes: dict | None, unreadable) -> list:
    """OUT: file, specimen (where known), predicted class, each class's probability, entropy, error; unreadable
    files listed with why, not counted. With specimens, OUT-specimens.csv and a short table on the console. Both
    CSVs are written in one step (lab/runs.write_all_atomic) and carry one id a run in every row (PAIR_COLUMN)."""
    files, specimens, probabilities, uncertainty = cells
    pair = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    where = ["specimen"] if specimens is not None else []
    classes = [f"p_{name}" for name in class_names]
    writer.writerow(["file", *where, "predicted", *classes, "entropy", "error", PAIR_COLUMN])
    rows = []
    for index, (file, row, value) in enumerate(zip(files, probabilities.tolist(), uncertainty.tolist())):
        predicted = class_names[max(range(len(row)), key=row.__getitem__)]
        specimen = [spreadsheet_cell(specimens[index])] if specimens is not None else []
        written = [*specimen, predicted, *[f"{p:.6f}" for p in row], f"{value:.6f}", "", pair]
        writer.writerow([spreadsheet_cell(file), *written])
        rows.append({"file": file, "predicted": predicted, "entropy": value})
    for file, error in unreadable:  # listed, not classified
        writer.writerow([spreadsheet_cell(file), *[""] * len(where), "", *[""] * len(class_names), "", error, pair])
    replaced = Path(out).exists()
    calls = None if votes is None else specimen_calls(class_names, probabilities, votes)
    writes = [] if calls is None else [(specimens_path(out), calls_csv(calls, class_names, pair))]
    write_all_atomic([(path, lambda temporary, text=text: temporary.write_bytes(text.encode()))
                      for path, text in [*writes, (out, buffer.getvalue())]])  # fmt: skip
    print(f"classified {len(files)} cells from {folder}; predictions written to {out}"
          + (" (it replaced the file there, as --out named it)" if replaced else ""))  # fmt: skip
    if unreadable:
        example = unreadable[0][0]
        print(f"{len(unreadable)} image(s) could not be read, e.g. {example}; their rows in {out} say why")
    if calls is None:
        return rows
    print_calls(calls, specimens_path(out))
    return calls


def calls_csv(calls: list[dict], class_names: list[str], pair: str) -> str:
    """OUT-specimens.csv's text: specimen, cells, call, share, second pattern, each class's mean, flag, the pair's id."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["specimen", "cells", "call", "share", "second", "second_share"]
                    + [f"mean_p_{name}" for name in class_names] + ["flag", PAIR_COLUMN])  # fmt: skip
    for row in calls:
        means = [f"{row['mean'][name]:.4f}" for name in class_names]
        second = [row["second"], f"{row['second_share']:.4f}" if row["second"] else ""]
        writer.writerow([spreadsheet_cell(row["specimen"]), row["cells"], row["call"], f"{row['share']:.4f}",
                         *second, *means, row["flag"], pair])  # fmt: skip
    return buffer.getvalue()


def print_calls(calls: list[dict], path: Path) -> None:
    """The table on the console: specimen, cells, call (share), second pattern, flag."""
    width = max(len("specimen"), *(len(row["specimen"]) for row in calls))
    print(f"{'specimen':<{width}}  cells  call (share of its cells)       second pattern        flag")
    for row in calls:
        call = f"{row['call']} ({100 * row['share']:.0f}%)"
        second = f"{row['second']} ({100 * row['second_share']:.0f}%)" if row["second"] else ""
        print(f"{row['specimen']:<{width}}  {row['cells']:5d}  {call:<30} {second:<21} {row['flag']}")
    print(f"each specimen's call written to {path}")
