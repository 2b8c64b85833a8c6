"""Bad input stops with one line `error: ...` naming the file or flag (SystemExit: exit status 1, no traceback)."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY, fails
from PIL import Image

import active
import data
import evaluate
import train
from lab import campaign, experiments, labeling, layouts, runs


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--patience", "0"], "--patience 0"),
        (["--max-epochs", "0"], "--max-epochs 0"),
        (["--synthetic-cells", "0"], "--synthetic-cells 0"),
        (["--batch-size", "0"], "--batch-size 0"),
    ],
)
def test_training_flags_are_checked_in_train_and_active(flags, flag, tmp_path):
    fails(train.main, TINY + ["--out", str(tmp_path / "p.pt")] + flags, flag)
    if flags[0] != "--patience":  # active.py's patience is Sec. 3.1's five, not a flag
        fails(active.main, TINY + ["--scratch", "--out", str(tmp_path / "run")] + flags, flag)


def test_device_that_is_not_there():
    if torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    fails(train.main, ["--device", "mps"], "--device mps", "not available")


def test_evaluate_batch_size_and_an_output_that_is_a_folder(pretrained, tmp_path):
    fails(evaluate.main, ["--checkpoint", str(pretrained), "--batch-size", "-1"], "--batch-size -1")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "cell.png")
    (tmp_path / "out").mkdir()
    flags = ["--checkpoint", str(pretrained), "--predict", str(tmp_path), "--out", str(tmp_path / "out")]
    fails(evaluate.main, flags, "--out", "is a folder")
    assert not list(tmp_path.glob(".*tmp*")) and not list((tmp_path / "out").iterdir())


def test_weights_that_do_not_fit_and_a_state_without_args(pretrained, tmp_path):
    checkpoint = torch.load(pretrained, weights_only=True)
    checkpoint["class_names"] = checkpoint["class_names"] + ["golgi"]  # 6 names for a 5-class head
    torch.save(checkpoint, tmp_path / "six.pt")
    fails(evaluate.main, ["--checkpoint", str(tmp_path / "six.pt")], str(tmp_path / "six.pt"), "do not fit")
    checkpoint.pop("derived")  # what a checkpoint of an older version of the project lacks
    torch.save(checkpoint, tmp_path / "old.pt")
    fails(evaluate.main, ["--checkpoint", str(tmp_path / "old.pt")], "old.pt", "older version", "no 'derived'")
    fails(active.main, ["--checkpoint", str(tmp_path / "old.pt"), "--out", str(tmp_path / "o")], "older version")
    (tmp_path / "run").mkdir()
    torch.save({"model": {}, "class_names": ["a", "b"]}, tmp_path / "run" / "state.pt")
    fails(active.main, ["--resume", "--out", str(tmp_path / "run")], "state.pt", "not the state of an active.py run")


def test_damaged_json_is_named(pretrained, tmp_path):
    (tmp_path / "campaign").mkdir()
    (tmp_path / "campaign" / "campaign.json").write_text('{"pool": ')
    fails(campaign.main, ["status", str(tmp_path / "campaign")], "campaign.json", "not readable JSON")
    fails(labeling.main, [str(tmp_path / "campaign"), "--port", "0"], "campaign.json", "not readable JSON")  # no page
    (tmp_path / "grid" / "rs-limit0.5-seed0").mkdir(parents=True)
    (tmp_path / "grid" / "rs-limit0.5-seed0" / "results.json").write_text("{")
    flags = ["--cases", "rs", "--limits", "0.5", "--seeds", "0", "--out", str(tmp_path / "grid")]
    fails(experiments.main, flags, "results.json", "not readable JSON")


def test_campaign_flags(pretrained, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for index in range(4):
        Image.fromarray(np.full((30, 30), 40 * index, np.uint8)).save(pool / f"c{index}.png")
    flags = ["query", "--pool", str(pool), "--checkpoint", str(pretrained), "--device", "cpu"]
    fails(campaign.main, flags + ["--out", str(tmp_path / "a"), "--max-epochs", "0"], "--max-epochs 0")
    fails(campaign.main, flags + ["--out", str(tmp_path / "b"), "--classes", "golgi"], "--classes golgi")
    fails(campaign.main, flags + ["--out", str(pool / "campaign")], "--out", "inside the pool")
    assert sorted(path.name for path in pool.iterdir()) == ["c0.png", "c1.png", "c2.png", "c3.png"]


def test_train_resume_refuses_flags_that_change_the_run(tmp_path, capsys):
    args = TINY + ["--synthetic-cells", "40", "--rotations", "1", "--out", str(tmp_path / "p.pt")]
    train.main(args + ["--max-epochs", "1"])
    fails(
        train.main,
        args + ["--max-epochs", "2", "--resume", "--seed", "3"],
        "with --seed 0, not with --seed 3",
        "--max-epochs, --patience",
    )
    fails(train.main, args + ["--resume", "--val-fraction", "0.3"], "--val-fraction 0.15, not with --val-fraction 0.3")
    train.main(args + ["--max-epochs", "2", "--resume", "--patience", "3"])  # what may change
    assert "a resume may change --max-epochs, --patience, --device" in capsys.readouterr().out


def test_a_run_that_saves_nothing_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "p.pt"
    args = TINY + ["--synthetic-cells", "40", "--rotations", "1", "--max-epochs", "2", "--out", str(out)]
    train.main(args)
    before = out.read_bytes()
    real_summarize = train.summarize
    monkeypatch.setattr(train, "summarize", lambda *a, **k: {**real_summarize(*a, **k), "loss": float("nan")})
    fails(train.main, args + ["--seed", "1"], "no epoch gave a finite validation loss", str(out))
    assert out.read_bytes() == before


def test_partial_files_of_a_killed_save_are_removed(tmp_path, monkeypatch):
    def broken_save(obj, path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(data.DataError, match="state.pt: cannot write .disk full"):  # one line naming the file
        runs.save_atomic({"a": 1}, tmp_path / "state.pt")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    monkeypatch.undo()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".state.pt.tmp4242").write_bytes(b"left by a kill")
    active.main(
        TINY + ["--scratch", "--synthetic-cells", "60", "--max-epochs", "1", "--limit", "0.3", "--out", str(run)]
    )
    assert not list(run.glob(".*tmp*")) and json.loads((run / "results.json").read_text())["labeled"] > 0


def test_hidden_files_zip_leftovers_and_nested_folders(tmp_path):
    root = tmp_path / "cells"
    for folder in ["Golgi", "Homogeneous", "Golgi/specimen-2", "__MACOSX/Golgi", "Golgi/.ipynb_checkpoints"]:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in ["Golgi/a.png", "Golgi/specimen-2/b.png", "Homogeneous/c.png", "Golgi/.ipynb_checkpoints/d.png"]:
        Image.fromarray(np.full((30, 30), 90, np.uint8)).save(root / name)
    for name in ["Golgi/._a.png", "Golgi/.x.png", "__MACOSX/Golgi/._a.png"]:
        (root / name).write_bytes(b"\x00\x05 resource fork, not an image")
    dataset = layouts.load_dataset(root, cache=False)
    assert sorted(path.split("cells/")[1] for path in dataset.files) == [
        "Golgi/a.png",
        "Golgi/specimen-2/b.png",  # nested images are read
        "Homogeneous/c.png",
    ]


def test_csv_problems_are_named(tmp_path):
    Image.fromarray(np.full((30, 30), 90, np.uint8)).save(tmp_path / "07924.png")
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(tmp_path / "07924_Mask.png")
    (tmp_path / "labels.csv").write_text("file,class\n")
    with pytest.raises(data.DataError, match=r"labels\.csv: no rows of image and class"):
        layouts.load_dataset(tmp_path, cache=False)
    (tmp_path / "labels.csv").write_text("file,class\n./07924_Mask.png,golgi\n07924.png,centromere\n")
    with pytest.raises(data.DataError, match=r"labels\.csv:2: ./07924_Mask.png is a segmentation mask, not a cell"):
        layouts.load_dataset(tmp_path, cache=False)


def test_predict_lists_unreadable_images_and_classifies_the_rest(pretrained, tmp_path, capsys):
    cells = tmp_path / "cells"
    cells.mkdir()
    for index in range(3):
        Image.fromarray(np.full((30, 30), 60 * index, np.uint8)).save(cells / f"c{index}.png")
    (cells / "broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "predictions.csv"
    rows = evaluate.main(["--checkpoint", str(pretrained), "--predict", str(cells), "--out", str(out)])
    assert len(rows) == 3 and "1 image(s) could not be read" in capsys.readouterr().out
    written = {row["file"].split("/")[-1]: row for row in __import__("csv").DictReader(out.open())}
    assert written["broken.png"]["predicted"] == "" and "cannot read image" in written["broken.png"]["error"]
    assert written["c1.png"]["error"] == "" and written["c1.png"]["predicted"]
    for index in range(3):
        (cells / f"c{index}.png").write_bytes(b"not an image")
    fails(evaluate.main, ["--checkpoint", str(pretrained), "--predict", str(cells)], "none of its 4 images")
    (tmp_path / "empty").mkdir()
    flags = ["query", "--pool", str(tmp_path / "empty"), "--checkpoint", str(pretrained), "--out", str(tmp_path / "c")]
    fails(campaign.main, flags, "--pool", "no images found")


def test_data_that_is_a_file_but_not_a_csv_and_bench_counts(tmp_path):
    (tmp_path / "labels.txt").write_text("a.png,golgi\n")
    fails(train.main, ["--data", str(tmp_path / "labels.txt")], "--data", "labels.txt", "expected a folder")
    from lab import bench
    fails(bench.main, ["--quick", "--epochs", "0"], "--epochs 0")
