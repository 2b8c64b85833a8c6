"""A split that comes with the data: train.py's train, validation and test as the data lists them (SNPHEp-2's
training and test images and its validation folds, Sec. 3.1), from --split-file or a split column of the labels CSV.

Not the paper (the workshop): lab/splits.py makes the seeded splits; this file reads the given ones.
"""

import hashlib
import json
from pathlib import Path

import torch

from data import CellDataset, DataError
from lab.layouts import FILE_COLUMNS, find_labels_csv, read_csv_rows, squash

SPLIT_COLUMNS = ("split", "set", "subset", "partition")
SIDE_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
SIDE_NAMES.update(test="test", testing="test")


def labels_with_split(data: str | None) -> Path | None:
    """The data's labels CSV when it has a split column (a split that comes with the data), else None."""
    if data is None or not Path(data).exists():
        return None
    labels = find_labels_csv(Path(data))
    if labels is None:
        return None
    rows, _ = read_csv_rows(labels)
    return labels if rows and any(squash(cell) in SPLIT_COLUMNS for cell in rows[0]) else None


def sides_digest(parts: list) -> str:
    """A digest of a given split's sides (the cells' indices in the data's stable order): the checkpoint keeps it,
    so that an edited split file is not taken for the one the run was trained and tested on."""
    text = json.dumps([sorted(part.tolist()) for part in parts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def given_split(dataset: CellDataset, path) -> list[torch.Tensor]:
    """(train, val, test) as a split file lists them: a CSV of file,split (a header may name the columns; split one
    of train, val, test), every cell of the data on exactly one side. A file is a path relative to the data root,
    or a name or id that one cell bears; a file not in the data, a cell left out or a side unknown is one line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--split-file {path}: no such file")
    rows, _ = read_csv_rows(path)
    header = [squash(cell) for cell in rows[0]] if rows else []
    split_column = next((i for i, name in enumerate(header) if name in SPLIT_COLUMNS), None)
    file_column = next((i for i, name in enumerate(header) if name in FILE_COLUMNS), 0)
    has_header, split_column = split_column is not None, 1 if split_column is None else split_column
    root = Path(dataset.source) if Path(dataset.source).is_dir() else Path(dataset.source).parent
    cells = {}  # every way a row may name a cell: its path, its name, its stem
    for index, file in enumerate(dataset.files):
        cells[Path(file).resolve()] = index
        for key in (Path(file).name.lower(), Path(file).stem.lower()):
            cells[key] = -1 if key in cells else index  # -1: a name two cells bear names neither
    sides = [[], [], []]
    for line, row in enumerate(rows[has_header:], start=1 + has_header):
        if len(row) <= max(file_column, split_column) or not row[file_column].strip():
            raise DataError(f"{path}:{line}: expected 'file,split', got {','.join(row)!r}")
        file, side = row[file_column].strip().replace("\\", "/"), SIDE_NAMES.get(squash(row[split_column]))
        index = cells.get((root / file).resolve())
        if "/" not in file:  # a bare name or id; a path names its file only, never a cell elsewhere of that name
            index = cells.get((root / file).resolve(), cells.get(file.lower(), cells.get(Path(file).stem.lower())))
        if side is None:
            raise DataError(f"{path}:{line}: split {row[split_column].strip()!r}; expected train, val or test")
        if index is None or index == -1:
            why = "is not a cell of the data" if index is None else "names two cells of the data"
            raise DataError(f"{path}:{line}: {file} {why} ({dataset.source})")
        sides[["train", "val", "test"].index(side)].append(index)
    listed = [index for side in sides for index in side]
    if len(set(listed)) < len(listed):
        raise DataError(f"{path}: lists a cell twice; expected every cell on exactly one side")
    if len(listed) < len(dataset):
        missing = sorted(set(range(len(dataset))) - set(listed))
        raise DataError(f"{path}: leaves {len(missing)} cell(s) of the data out (e.g. {dataset.files[missing[0]]})")
    return [torch.tensor(sorted(side), dtype=torch.int64) for side in sides]
