"""train.py on a split that comes with the data (--split-file, or a split column of the labels CSV), as the paper
trained on SNPHEp-2's own training, validation and test lists (Sec. 3.1)."""

import pytest
from conftest import TINY, fails
from test_specimens import LAYOUT, write_cells

import evaluate
import train
from lab import given
from lab.layouts import load_dataset


@pytest.fixture()
def folder(tmp_path):
    """Three classes of 8 to 12 cells; a split file puts every third cell on val, every fourth on test."""
    root = tmp_path / "cells"
    files = [file for file, _ in write_cells(root, LAYOUT)]
    sides = {file: "val" if n % 3 == 1 else "test" if n % 4 == 2 else "train" for n, file in enumerate(files)}
    (tmp_path / "split.csv").write_text("file,split\n" + "".join(f"{f},{s}\n" for f, s in sides.items()))
    return root, sides


def test_the_sides_are_the_files_the_split_names(folder, tmp_path):
    root, sides = folder
    dataset = load_dataset(root, cache=False)
    parts = given.given_split(dataset, tmp_path / "split.csv")
    for name, part in zip(["train", "val", "test"], parts):
        named = sorted(str(root / file) for file, side in sides.items() if side == name)
        assert sorted(dataset.files[i] for i in part.tolist()) == named and named


def test_train_trains_and_validates_on_exactly_the_named_files(folder, tmp_path, capsys):
    root, sides = folder
    out = tmp_path / "given.pt"
    flags = TINY + ["--data", str(root), "--split-file", str(tmp_path / "split.csv"), "--max-epochs", "1"]
    result = train.main(flags + ["--rotations", "1", "--out", str(out)])
    counts = {name: sum(side == name for side in sides.values()) for name in ("train", "val", "test")}
    assert f"train {counts['train']}, val {counts['val']}, test {counts['test']}" in capsys.readouterr().out
    assert result["metrics"]["val"]["count"] == counts["val"] and result["metrics"]["test"]["count"] == counts["test"]
    # evaluate.py reads the same sides again from the split file the checkpoint names
    again = evaluate.main(["--checkpoint", str(out), "--split", "val", "--json", "--png", str(tmp_path / "v.png")])
    assert again["count"] == counts["val"] and again["mca"] == pytest.approx(result["metrics"]["val"]["mca"])


def test_a_split_column_of_the_labels_csv_is_the_datas_own_split(tmp_path, capsys):
    rows = write_cells(tmp_path, {"flat": {f"s{n}": 3 for n in range(6)}})
    classes = ["homogeneous", "golgi", "centromere"] * 6
    sides = ["train", "train", "val", "test", "train", "train"] * 3
    lines = ["image,class,split"] + [f"{f.split('/')[1]},{c},{s}" for (f, _), c, s in zip(rows, classes, sides)]
    (tmp_path / "flat" / "labels.csv").write_text("\n".join(lines) + "\n")
    train.main(TINY + ["--data", str(tmp_path / "flat"), "--max-epochs", "1", "--rotations", "1",
                       "--out", str(tmp_path / "p.pt")])  # fmt: skip
    printed = capsys.readouterr().out
    assert "split: the data's own, from" in printed and "labels.csv: train 12, val 3, test 3" in printed
    again = TINY + ["--data", str(tmp_path / "flat"), "--val-fraction", "0.2", "--out", str(tmp_path / "q.pt")]
    fails(train.main, again, "--val-fraction 0.2", "its own split")


def test_a_split_that_names_other_files_or_leaves_cells_out_is_one_line(folder, tmp_path):
    root, sides = folder
    base = TINY + ["--data", str(root), "--out", str(tmp_path / "p.pt"), "--split-file"]
    lines = ["file,split"] + [f"{file},{side}" for file, side in sides.items()]
    (tmp_path / "extra.csv").write_text("\n".join(lines + ["Golgi/nowhere.png,train"]) + "\n")
    fails(train.main, base + [str(tmp_path / "extra.csv")], "extra.csv:", "Golgi/nowhere.png is not a cell of the data")
    (tmp_path / "short.csv").write_text("\n".join(lines[:-1]) + "\n")
    fails(train.main, base + [str(tmp_path / "short.csv")], "short.csv", "leaves 1 cell(s) of the data out")
    (tmp_path / "side.csv").write_text("\n".join(lines[:-1] + [lines[-1].rsplit(",", 1)[0] + ",holdout"]) + "\n")
    fails(train.main, base + [str(tmp_path / "side.csv")], "side.csv:", "'holdout'", "expected train, val or test")
    fails(train.main, base + [str(tmp_path / "none.csv")], "--split-file", "no such file")


def train_and_test_only(folder, tmp_path):
    """The folder's split file with every val row moved to train: SNPHEp-2's folds, training and test lists only."""
    root, sides = folder
    sides = {file: "train" if side == "val" else side for file, side in sides.items()}
    (tmp_path / "two.csv").write_text("file,split\n" + "".join(f"{f},{s}\n" for f, s in sides.items()))
    return root, sides, tmp_path / "two.csv"


def test_a_split_of_train_and_test_only_validates_on_part_of_its_train_side(folder, tmp_path, capsys):
    root, sides, two = train_and_test_only(folder, tmp_path)
    out = tmp_path / "two.pt"
    flags = TINY + ["--data", str(root), "--split-file", str(two), "--max-epochs", "1", "--rotations", "1"]
    result = train.main(flags + ["--val-fraction", "0.25", "--out", str(out)])
    assert "validation: 0.25 of the given train side, by cells (seed 0)" in capsys.readouterr().out
    dataset = load_dataset(root, cache=False)
    train_files = {str(root / file) for file, side in sides.items() if side == "train"}
    test_files = sorted(str(root / file) for file, side in sides.items() if side == "test")
    val = evaluate.main(["--checkpoint", str(out), "--split", "val", "--json", "--png", str(tmp_path / "v.png")])
    test = evaluate.main(["--checkpoint", str(out), "--split", "test", "--json", "--png", str(tmp_path / "t.png")])
    assert val["count"] == result["metrics"]["val"]["count"] == round(0.25 * len(train_files))  # remade alike
    assert val["mca"] == pytest.approx(result["metrics"]["val"]["mca"])
    assert test["count"] == len(test_files) == result["metrics"]["test"]["count"]  # the test side as listed
    parts = given.given_split(dataset, two)
    assert len(parts[1]) == 0 and sorted(dataset.files[i] for i in parts[2].tolist()) == test_files


def test_a_split_of_train_and_test_only_may_validate_on_its_test_side_when_asked(folder, tmp_path, capsys):
    root, sides, two = train_and_test_only(folder, tmp_path)
    flags = TINY + ["--data", str(root), "--split-file", str(two), "--max-epochs", "1", "--rotations", "1"]
    result = train.main(flags + ["--val-from", "test", "--out", str(tmp_path / "t.pt")])
    assert "the test split picks the epoch" in capsys.readouterr().out
    tested = sum(side == "test" for side in sides.values())
    assert result["metrics"]["val"]["count"] == result["metrics"]["test"]["count"] == tested
    assert result["metrics"]["val"]["mca"] == pytest.approx(result["metrics"]["test"]["mca"])


def test_a_split_of_train_and_test_only_says_what_is_missing(folder, tmp_path):
    root, sides, two = train_and_test_only(folder, tmp_path)
    base = TINY + ["--data", str(root), "--out", str(tmp_path / "p.pt"), "--split-file", str(two)]
    # Golgi has 9 cells, 2 of them on the test side: 7 train cells cannot give 0.01 of themselves to validation
    text = fails(train.main, base + ["--val-fraction", "0.01"], "two.csv", "lists no val cells", "--val-from test")
    assert "too few to split into train and validation sets" not in text  # the old message, which named no file
    only_train = tmp_path / "train-only.csv"
    only_train.write_text("file,split\n" + "".join(f"{f},train\n" for f in sides))
    fails(train.main, base[:-1] + [str(only_train), "--val-from", "test"], "--val-from test", "no val and no test")
    fails(train.main, TINY + ["--val-from", "test", "--out", str(tmp_path / "q.pt")], "--val-from test", "applies only")
    fails(train.main, TINY + ["--data", str(root), "--split-file", str(tmp_path / "split.csv"), "--val-from", "test",
                              "--out", str(tmp_path / "r.pt")], "--val-from test", "its own split")  # fmt: skip
