"""#63, reliability round six: a patient's folder, a given split, `--paper`'s flags and the ceiling tool."""

import csv
import os

import pytest
from conftest import TINY, fails
from test_predict_specimens import cells, predict

import train
from data import DataError
from lab import reports


def predicts(arguments):
    """predict() with its arguments as one list, as conftest.fails calls a main."""
    return predict(*arguments)

# ---------------------------------------------------------------------------------------------
# 1. No output replaces an input, a file inside a folder the command reads, or a file it did not make


def slide(tmp_path, specimens=("p1", "p2")):
    for index, name in enumerate(specimens):
        cells(tmp_path / "slide" / name, 3, seed=index)
    return tmp_path / "slide"


def test_a_derived_output_never_replaces_a_users_file(pretrained, tmp_path):
    mine = tmp_path / "p-specimens.csv"
    mine.write_text("my own notes\n")
    fails(predicts, [pretrained, slide(tmp_path), tmp_path / "p.csv"], str(mine), "not made by")
    assert mine.read_text() == "my own notes\n" and not (tmp_path / "p.csv").exists()


def test_a_rerun_replaces_its_own_pair_and_a_named_out(pretrained, tmp_path, capsys):
    folder = slide(tmp_path)
    (tmp_path / "p.csv").write_text("an older file the user names as --out\n")
    predict(pretrained, folder, tmp_path / "p.csv")
    assert "replaced" in capsys.readouterr().out  # a named --out is replaced, and the run says so
    predict(pretrained, folder, tmp_path / "p.csv")  # its own p-specimens.csv: replaced without a word
    rows = list(csv.DictReader((tmp_path / "p-specimens.csv").open()))
    assert [row["specimen"] for row in rows] == ["p1", "p2"]


def test_no_output_inside_the_folder_the_command_reads(pretrained, tmp_path):
    folder = slide(tmp_path)
    (folder / "specimens.csv").write_text("file,specimen\n")
    listed = tmp_path / "flat"
    cells(listed, 3)
    with open(listed / "specimens.csv", "w") as handle:
        handle.write("file,specimen\n" + "".join(f"cell{i:02d}.png,s\n" for i in range(3)))
    before = (listed / "specimens.csv").read_text()
    fails(predicts, [pretrained, listed, listed / "specimens.csv"], "--out", "inside the folder --predict reads")
    assert (listed / "specimens.csv").read_text() == before
    flat = tmp_path / "one"
    cells(flat, 3)
    png = (flat / "cell00.png").read_bytes()
    fails(predicts, [pretrained, flat, flat / "cell00.png", "--one-specimen", "P"], "inside the folder --predict reads")
    assert (flat / "cell00.png").read_bytes() == png


def test_the_specimens_file_read_is_never_the_derived_output(pretrained, tmp_path):
    flat = tmp_path / "flat"
    cells(flat, 3)
    given = tmp_path / "out-specimens.csv"
    given.write_text("file,specimen\n" + "".join(f"cell{i:02d}.png,s\n" for i in range(3)))
    before = given.read_text()
    fails(predicts, [pretrained, flat, tmp_path / "out.csv", "--specimens", str(given)], "--specimens")
    assert given.read_text() == before


def test_the_default_picture_never_replaces_a_users_png(pretrained, tmp_path):
    import shutil

    import evaluate
    from PIL import Image

    checkpoint = tmp_path / "mine.pt"
    shutil.copy(pretrained, checkpoint)
    theirs = tmp_path / "mine-evaluated.png"
    Image.new("L", (4, 4)).save(theirs)
    before = theirs.read_bytes()
    fails(evaluate.main, ["--checkpoint", str(checkpoint), "--device", "cpu"], str(theirs), "not made by")
    assert theirs.read_bytes() == before
    theirs.unlink()
    evaluate.main(["--checkpoint", str(checkpoint), "--device", "cpu"])  # drawn here: a rerun replaces it
    evaluate.main(["--checkpoint", str(checkpoint), "--device", "cpu"])


def test_training_never_writes_among_the_cells_or_over_a_users_picture(tmp_path):
    import active
    from PIL import Image

    from test_specimens import LAYOUT, write_cells

    root = tmp_path / "cells"
    write_cells(root, LAYOUT)
    inside = "inside the folder --data"
    fails(train.main, TINY + ["--data", str(root), "--out", str(root / "Golgi" / "p.pt")], inside)
    fails(active.main, TINY + ["--data", str(root), "--scratch", "--out", str(root / "run")], inside)
    Image.new("L", (4, 4)).save(tmp_path / "p-confusion.png")
    out = ["--out", str(tmp_path / "p.pt")]
    fails(train.main, TINY + ["--synthetic-cells", "60"] + out, "p-confusion.png", "not made by")


# ---------------------------------------------------------------------------------------------
# 2. The two CSVs of a --predict carry one id a run: a pair made together can be told from a mixed one


def test_a_kill_between_the_two_renames_leaves_a_pair_that_says_it_is_mixed(pretrained, tmp_path, monkeypatch):
    folder = slide(tmp_path)
    predict(pretrained, folder, tmp_path / "p.csv")
    ids = {reports.prediction_id(tmp_path / "p.csv"), reports.prediction_id(tmp_path / "p-specimens.csv")}
    assert len(ids) == 1 and None not in ids  # made together
    renames = []
    real_replace = os.replace

    def killed_after_one(source, target):
        if renames:
            raise KeyboardInterrupt
        renames.append(target)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", killed_after_one)
    with pytest.raises(SystemExit):
        predict(pretrained, folder, tmp_path / "p.csv")
    monkeypatch.setattr(os, "replace", real_replace)
    first, second = reports.prediction_id(tmp_path / "p.csv"), reports.prediction_id(tmp_path / "p-specimens.csv")
    assert first != second  # a reader (and reports.check_pair) tells the mixed pair
    with pytest.raises(DataError, match="not made together"):
        reports.check_pair(tmp_path / "p.csv")


# ---------------------------------------------------------------------------------------------
# 3. Every cell a command leaves out is said, with the count and an example


def test_an_empty_specimen_folder_is_said(pretrained, tmp_path, capsys):
    folder = slide(tmp_path)
    (folder / "p3").mkdir()
    predict(pretrained, folder, tmp_path / "p.csv")
    printed = capsys.readouterr().out
    assert "1 specimen folder holds no image" in printed and "p3" in printed


def test_cells_one_folder_deeper_belong_to_their_specimen(pretrained, tmp_path, capsys):
    folder = slide(tmp_path)
    cells(folder / "p3" / "day1", 4, seed=5)
    calls = predict(pretrained, folder, tmp_path / "p.csv")
    assert {row["specimen"]: row["cells"] for row in calls} == {"p1": 3, "p2": 3, "p3": 4}
    assert "4 cells in subfolders" in capsys.readouterr().out


def test_listed_files_that_do_not_exist_are_said(pretrained, tmp_path, capsys):
    flat = tmp_path / "flat"
    cells(flat, 3)
    rows = "".join(f"cell{i:02d}.png,s\n" for i in range(3)) + "gone1.png,s\ngone2.png,t\n"
    (flat / "specimens.csv").write_text("file,specimen\n" + rows)
    predict(pretrained, flat, tmp_path / "p.csv")
    printed = capsys.readouterr().out
    assert "2 files listed" in printed and "gone1.png" in printed


def test_a_pretraining_checkpoint_says_it_is_not_fine_tuned(pretrained, tmp_path, capsys):
    predict(pretrained, slide(tmp_path), tmp_path / "p.csv")
    printed = capsys.readouterr().out
    assert "pretraining" in printed and "not fine-tuned" in printed


def test_a_fine_tuned_checkpoint_has_no_such_note(tmp_path, pretrained, capsys):
    from test_active import run_active

    _, out = run_active(tmp_path, "in-al", [], pretrained)
    predict(out / "model.pt", slide(tmp_path), tmp_path / "p.csv")
    assert "not fine-tuned" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# 4. A given split is what it was: a path names its file only, and the checkpoint holds the sides' digest


def given_run(tmp_path):
    from test_specimens import LAYOUT, write_cells

    root = tmp_path / "cells"
    files = [file for file, _ in write_cells(root, LAYOUT)]
    sides = {file: "val" if n % 3 == 1 else "test" if n % 4 == 2 else "train" for n, file in enumerate(files)}
    split = tmp_path / "split.csv"
    split.write_text("file,split\n" + "".join(f"{f},{side}\n" for f, side in sides.items()))
    out = tmp_path / "given.pt"
    train.main(TINY + ["--data", str(root), "--split-file", str(split), "--max-epochs", "1", "--rotations", "1",
                       "--out", str(out)])  # fmt: skip
    return root, split, sides, out


def test_a_path_outside_the_data_is_not_a_cell_of_the_same_name(tmp_path):
    root, split, sides, _ = given_run(tmp_path)
    first = next(iter(sides))
    text = split.read_text().replace(f"{first},", f"../../elsewhere/{first.split('/')[-1]},", 1)
    split.write_text(text)
    fails(train.main, TINY + ["--data", str(root), "--split-file", str(split), "--out", str(tmp_path / "x.pt")],
          "elsewhere", "is not a cell of the data")


def test_an_edited_split_file_is_refused_with_the_file_and_the_checkpoint(tmp_path):
    import evaluate

    _, split, sides, out = given_run(tmp_path)
    swapped = {"train": "test", "test": "train", "val": "val"}
    split.write_text("file,split\n" + "".join(f"{f},{swapped[side]}\n" for f, side in sides.items()))
    png = ["--png", str(tmp_path / "e.png")]
    fails(evaluate.main, ["--checkpoint", str(out), "--split", "test"] + png, str(split), str(out), "changed")
    split.unlink()
    text = fails(evaluate.main, ["--checkpoint", str(out), "--split", "test"] + png, str(split), "--split all")
    assert "--split-file" not in text  # evaluate.py has no such flag


# ---------------------------------------------------------------------------------------------
# 5. --paper (and every unused-flag check) judges the flags the user typed, not their values


def test_paper_refuses_a_typed_flag_even_at_the_recipes_default(tmp_path):
    import active

    out = ["--out", str(tmp_path / "x.pt")]
    fails(train.main, TINY + ["--paper", "--normalize", "percentile"] + out, "--normalize percentile", "--paper")
    fails(active.main, TINY + ["--paper", "--max-epochs", "10", "--scratch", "--out", str(tmp_path / "run")],
          "--max-epochs 10", "--paper sets --max-epochs 1000")  # fmt: skip


def test_a_flag_typed_at_its_default_where_it_cannot_apply_is_refused(tmp_path):
    import active

    none = tmp_path / "none.pt"  # a source prepared without the stretch: --normalize percentile cannot apply
    train.main(TINY + ["--synthetic-cells", "60", "--max-epochs", "1", "--rotations", "1", "--normalize", "none",
                       "--out", str(none)])  # fmt: skip
    flags = TINY[2:] + ["--checkpoint", str(none), "--normalize", "percentile", "--out", str(tmp_path / "r")]
    fails(active.main, flags, "--normalize percentile", "its --checkpoint's")


def test_typed_flags_are_the_ones_on_the_command_line():
    from lab.commands import parse_typed

    parser = train.build_parser()
    parse_typed(parser, ["--max-epochs", "30", "--paper"])
    assert parser.typed_dests == {"max_epochs", "paper"}


# ---------------------------------------------------------------------------------------------
# 6. The ceiling tool: one data and preprocessing a grid, no flag ignored, no abbreviation, no traceback


@pytest.fixture(scope="module")
def seeds_grid(tmp_path_factory):
    from test_ceiling import LAYOUT
    from test_specimens import write_cells, write_specimens_csv

    from lab import experiments

    root = tmp_path_factory.mktemp("ceiling") / "cells"
    write_specimens_csv(root / "specimens.csv", write_cells(root, LAYOUT))
    grid = root.parent / "grid"
    flags = ["--data", str(root), "--cv", "5", "--cases", "rs", "--limits", "1", "--seeds", "0", "1"]
    experiments.main(flags + ["--out", str(grid), "--max-epochs", "1"] + TINY)
    return root, grid


def copy_of(grid, tmp_path):
    import shutil

    return shutil.copytree(grid, tmp_path / "grid")


def test_an_ensemble_of_runs_on_other_preprocessing_is_refused(seeds_grid, tmp_path):
    import torch

    from lab import ceiling

    grid = copy_of(seeds_grid[1], tmp_path)
    path = grid / "rs-limit1-seed1-fold2" / "model.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["derived"]["image_size"] = 48  # as if that seed ran at another image size
    torch.save(checkpoint, path)
    fails(ceiling.main, ["--ensemble", str(grid), "--out", str(tmp_path / "c"), "--device", "cpu"],
          "rs-limit1-seed1-fold2", "image_size")  # fmt: skip


def test_flags_the_ensemble_cannot_use_are_refused(seeds_grid, tmp_path):
    from lab import ceiling

    common = ["--ensemble", str(seeds_grid[1]), "--out", str(tmp_path / "c")]
    fails(ceiling.main, common + ["--shares", "0.5"], "--shares", "--ensemble")
    fails(ceiling.main, common + ["--folds", "0", "1", "2", "3", "4"], "--folds", "--ensemble")


def test_the_specimen_curve_needs_data_at_once_and_no_abbreviation(tmp_path):
    from lab import ceiling

    fails(ceiling.main, ["--out", str(tmp_path / "c")], "--data", "required")
    assert "synthetic" not in ceiling.build_parser().format_help()
    with pytest.raises(SystemExit) as exit_info:
        ceiling.main(["--sha", "0", "--out", str(tmp_path / "c")])
    assert exit_info.value.code == 2  # argparse's usage error: --sha is not --shares
    assert not (tmp_path / "c").exists()


def test_a_partial_grid_names_its_missing_runs(seeds_grid, tmp_path):
    from lab import ceiling

    grid = copy_of(seeds_grid[1], tmp_path)
    (grid / "rs-limit1-seed1-fold3" / "model.pt").unlink()
    text = fails(ceiling.main, ["--ensemble", str(grid), "--out", str(tmp_path / "c")], "rs-limit1-seed1-fold3",
                 "lab.experiments")  # fmt: skip
    assert "train.py" not in text


def test_a_stray_folder_named_like_a_run_is_said(seeds_grid, tmp_path, capsys):
    from lab import ceiling

    grid = copy_of(seeds_grid[1], tmp_path)
    (grid / "rs-limit1-seedX-fold0").mkdir()
    pooled = ceiling.main(["--ensemble", str(grid), "--out", str(tmp_path / "c"), "--device", "cpu"])
    assert set(pooled) == {"seed 0", "seed 1", "mean of the seeds"}
    assert "rs-limit1-seedX-fold0" in capsys.readouterr().out
