"""#51: evaluate.py --predict knows specimens the way --data does, and reports each specimen's call."""

import csv

import numpy as np
import pytest
from conftest import TINY, fails
from PIL import Image

import evaluate
from lab import reports


def cells(folder, count, seed=0, size=(40, 36)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(folder / f"cell{index:02d}.png")


def predict(pretrained, folder, out, *extra):
    return evaluate.main(["--checkpoint", str(pretrained), "--predict", str(folder), "--out", str(out)] + TINY[2:]
                         + list(extra))  # fmt: skip


def test_one_subfolder_per_specimen_gives_a_call_each(pretrained, tmp_path, capsys):
    cells(tmp_path / "slide" / "=patient-1", 12, seed=1)  # a name a spreadsheet would run as a formula
    cells(tmp_path / "slide" / "patient-2", 2, seed=2)  # a specimen of two cells
    (tmp_path / "slide" / "patient-2" / "broken.png").write_bytes(b"not a png")
    calls = predict(pretrained, tmp_path / "slide", tmp_path / "p.csv")
    assert [row["specimen"] for row in calls] == ["=patient-1", "patient-2"]
    assert [row["cells"] for row in calls] == [12, 2]  # the unreadable file is listed, not counted
    for row in calls:
        assert abs(sum(row["mean"].values()) - 1) < 1e-4 and 0 < row["share"] <= 1
        assert "few cells" in row["flag"]  # fewer than reports.FEW_CELLS
    cells_rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(cells_rows) == 15 and cells_rows[-1]["error"] and cells_rows[0]["specimen"] == "'=patient-1"
    by_specimen = list(csv.DictReader((tmp_path / "p-specimens.csv").open()))
    assert [row["specimen"] for row in by_specimen] == ["'=patient-1", "patient-2"]  # escaped as the other CSVs
    classes = [column.removeprefix("p_") for column in cells_rows[0] if column.startswith("p_")]
    for row, call in zip(by_specimen, calls):  # the call: the class most cells are predicted as (ties: the first)
        voted = [r["predicted"] for r in cells_rows if r["specimen"] == row["specimen"] and not r["error"]]
        assert row["call"] == call["call"] == max(classes, key=lambda name: (voted.count(name), -classes.index(name)))
    printed = capsys.readouterr().out
    assert "=patient-1" in printed and "p-specimens.csv" in printed


def test_a_mixed_specimen_names_its_second_pattern_and_no_majority():
    import torch

    names = ["homogeneous", "speckled", "golgi"]
    predictions = torch.tensor([0] * 9 + [1] * 8 + [2] * 5)  # 22 cells: 41%, 36%, 23%
    probabilities = torch.nn.functional.one_hot(predictions, 3).float()
    votes = evaluate.specimen_votes(predictions, ["s"] * 22, 3)
    (row,) = reports.specimen_calls(names, probabilities, votes)
    assert row["call"] == "homogeneous" and row["second"] == "speckled" and row["flag"] == "no majority"
    assert row["share"] == pytest.approx(9 / 22) and row["mean"]["golgi"] == pytest.approx(5 / 22)
    tie = evaluate.specimen_votes(torch.tensor([2, 1] * 15), ["t"] * 30, 3)  # a tie: the lower class, as argmax
    assert reports.specimen_calls(names, torch.ones(30, 3) / 3, tie)[0]["call"] == "speckled"


def test_a_flat_folder_is_one_specimen_only_when_the_user_says_so(pretrained, tmp_path):
    cells(tmp_path / "flat", 5)
    rows = predict(pretrained, tmp_path / "flat", tmp_path / "a.csv")
    assert len(rows) == 5 and "specimen" not in rows[0] and not (tmp_path / "a-specimens.csv").exists()
    calls = predict(pretrained, tmp_path / "flat", tmp_path / "b.csv", "--one-specimen", "serum 7")
    assert [(row["specimen"], row["cells"]) for row in calls] == [("serum 7", 5)]
    (tmp_path / "flat" / "specimens.csv").write_text("file,specimen\n" + "".join(
        f"cell{index:02d}.png,{'a' if index < 3 else 'b'}\n" for index in range(5)))  # fmt: skip
    calls = predict(pretrained, tmp_path / "flat", tmp_path / "c.csv")
    assert [(row["specimen"], row["cells"]) for row in calls] == [("a", 3), ("b", 2)]


def test_folders_that_do_not_say_their_specimens_plainly_are_one_line(pretrained, tmp_path):
    cells(tmp_path / "both", 3)
    cells(tmp_path / "both" / "s1", 3)
    base = ["--checkpoint", str(pretrained), "--out", str(tmp_path / "x.csv"), "--predict"]
    fails(evaluate.main, base + [str(tmp_path / "both")], "holds both cells", "subfolders")
    cells(tmp_path / "listed", 3)
    (tmp_path / "listed" / "specimens.csv").write_text("file,specimen\ncell00.png,a\n")
    fails(evaluate.main, base + [str(tmp_path / "listed")], "2 of 3 cells are not listed")
    fails(evaluate.main, base + [str(tmp_path / "listed"), "--one-specimen", "z"], "--one-specimen z", "already")
    fails(evaluate.main, ["--checkpoint", str(pretrained), "--one-specimen", "z"], "--one-specimen z")
