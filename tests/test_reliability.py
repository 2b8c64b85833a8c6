"""Issue #32's kinds of failure, one test a kind: each is fixed where it lives (one fingerprint, one lock, one
output-path check, one reader per saved format), so cases nobody listed are covered too."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TINY, fails
from PIL import Image

import active
import train
from data import DataError, read_cell
from lab import bench, campaign, experiments, layouts, runs


def write_folder(root, per_class=8, seed=0):
    """Two class folders of distinct random cells."""
    rng = np.random.default_rng(seed)
    for folder in ("Homogeneous", "Golgi"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            cell = rng.integers(0, 255, (36, 36), dtype=np.uint8)
            Image.fromarray(cell).save(root / folder / f"{folder[0]}{number}.png")
    return root


TRAIN = ["--image-size", "32", "--device", "cpu", "--rotations", "1", "--split", "cells"]


# 1. A resume that reads other data -------------------------------------------------------------


@pytest.mark.parametrize("change", ["content", "swap", "rename"])
def test_a_resume_on_changed_data_is_refused_naming_the_cell(tmp_path, change):
    cells = write_folder(tmp_path / "cells")
    args = TRAIN + ["--data", str(cells), "--out", str(tmp_path / "p.pt"), "--max-epochs", "1"]
    train.main(args)
    first, second = cells / "Golgi" / "G0.png", cells / "Golgi" / "G1.png"
    if change == "content":  # another cell's image under the same name (and the same size)
        first.write_bytes(second.read_bytes())
    elif change == "swap":
        swap = first.read_bytes()
        first.write_bytes(second.read_bytes())
        second.write_bytes(swap)
    else:
        first.rename(cells / "Golgi" / "G9.png")
    text = fails(train.main, args[:-1] + ["2", "--resume"], "--resume", "the data differs")
    assert "G0.png" in text or "G1.png" in text or "G9.png" in text


# 2. A resume that silently differs ---------------------------------------------------------------


def test_a_resume_with_nothing_to_resume_is_an_error_and_leaves_out_alone(tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"another script's file")
    fails(train.main, TINY + ["--synthetic-cells", "40", "--out", str(out), "--resume"], "no model.pt.state")
    assert out.read_bytes() == b"another script's file"
    fails(active.main, TINY + ["--scratch", "--out", str(tmp_path / "run"), "--resume"], "no state.pt")


def test_train_refuses_to_overwrite_a_checkpoint_of_another_kind(tmp_path):
    out = tmp_path / "model.pt"
    torch.save({"model": {}, "class_names": ["a", "b"], "derived": {"data_kind": "target"}}, out)
    before = out.read_bytes()
    fails(train.main, TINY + ["--synthetic-cells", "40", "--out", str(out)], "holds a target checkpoint")
    assert out.read_bytes() == before


# 3. Two runs, one folder ---------------------------------------------------------------------------


def test_a_run_folder_held_by_a_live_run_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(str(other.pid))
        flags = TINY + ["--scratch", "--synthetic-cells", "60", "--max-epochs", "1", "--out", str(run)]
        fails(active.main, flags, f"another run (process {other.pid})", "--out")
        assert not (run / "results.json").exists()
    finally:
        other.kill()
        other.wait()
    results = active.main(flags)  # its process is gone: the lock is stale
    assert results["labeled"] > 0 and not (run / "run.lock").exists()  # released at the end


def test_a_run_folder_belongs_to_one_run(tmp_path):
    flags = TINY + ["--scratch", "--synthetic-cells", "60", "--max-epochs", "1", "--out", str(tmp_path / "run")]
    active.main(flags)
    fails(active.main, flags + ["--seed", "1"], "holds a run made with --seed 0, not with --seed 1")
    active.main(flags + ["--device", "cpu"])  # the same run again: allowed


def test_a_grid_folder_never_reports_another_grids_runs(tmp_path):
    grid = ["--cases", "rs", "--limits", "0.5", "--seeds", "0", "--out", str(tmp_path / "grid")]
    flags = TINY + ["--synthetic-cells", "60", "--max-epochs", "1"]
    experiments.main(grid + flags)
    cells = write_folder(tmp_path / "cells", per_class=10)
    fails(experiments.main, grid + flags + ["--data", str(cells), "--split", "cells"], "rs-limit0.5-seed0", "--data")


# 4. Failing late ---------------------------------------------------------------------------------------


def test_output_paths_are_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(active, "fine_tune", lambda *a, **k: pytest.fail("trained before checking --out"))
    monkeypatch.setattr(train, "train_epoch", lambda *a, **k: pytest.fail("trained before checking --out"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    fails(active.main, TINY + ["--scratch", "--out", str(a_file)], "is a file; expected a folder")
    fails(active.main, TINY + ["--scratch", "--out", str(a_file / "run")], "cannot write there")
    fails(train.main, TINY + ["--out", str(tmp_path)], "is a folder; expected the path of a file")
    fails(train.main, TINY + ["--out", str(a_file / "p.pt")], "cannot write there")


def test_a_write_that_fails_is_one_line_naming_the_path_and_an_unwritable_cache_costs_only_speed(
    tmp_path, monkeypatch
):
    def refused(obj, path):
        raise RuntimeError(f"File {path} cannot be opened.")

    monkeypatch.setattr(torch, "save", refused)
    with pytest.raises(DataError, match="state.pt: cannot write"):
        runs.save_atomic({"a": 1}, tmp_path / "state.pt")
    cells = write_folder(tmp_path / "cells")
    monkeypatch.setenv("HEP2_CACHE", str(tmp_path / "cells" / "Golgi" / "G0.png"))  # a file: no folder there
    assert len(layouts.load_dataset(cells)) == 16


# 5. Unchecked values -----------------------------------------------------------------------------------


def test_values_out_of_range_are_one_line(tmp_path):
    out = ["--out", str(tmp_path / "run")]
    fails(active.main, TINY + ["--scratch", "--seed", "-1"] + out, "--seed -1")
    fails(train.main, TINY + ["--seed", str(2**32), "--out", str(tmp_path / "p.pt")], f"--seed {2**32}")
    for size in ("17", "4"):
        fails(active.main, ["--scratch", "--image-size", size, "--device", "cpu"] + out, f"--image-size {size}")
    fails(active.main, TINY + ["--scratch", "--data", ""] + out, "--data ''")
    fails(train.main, TINY + ["--classes", "golgi", "Golgi", "--out", str(tmp_path / "p.pt")], "golgi again")


def test_nan_pixels_and_a_class_too_small_for_the_split_are_named(tmp_path):
    image = np.full((20, 20), 0.5, dtype=np.float32)
    image[3, 4] = np.nan
    Image.fromarray(image, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="nan.tif: holds NaN or infinite pixels"):
        read_cell(tmp_path / "nan.tif")
    cells = write_folder(tmp_path / "cells")
    for extra in list((cells / "Golgi").iterdir())[1:]:
        extra.unlink()  # Golgi: one cell
    flags = TINY + ["--scratch", "--data", str(cells), "--split", "cells", "--out", str(tmp_path / "run")]
    fails(active.main, flags, "class 'golgi' has 1 cell(s)", "test side")


# 6. Files read back ----------------------------------------------------------------------------------------


def test_every_file_read_back_is_checked_and_never_unpickled(tmp_path, pretrained):
    folder = tmp_path / "campaign"
    folder.mkdir()
    (folder / "campaign.json").write_text(json.dumps({"pool": "x", "classes": ["golgi"]}))
    fails(campaign.main, ["status", str(folder)], "campaign.json", "no 'checkpoint'")
    state = {"pool": "x", "classes": [], "checkpoint": "c", "n": "5", "seed": 0, "holdout": 0.2}
    (folder / "campaign.json").write_text(json.dumps(state))
    fails(campaign.main, ["status", str(folder)], "'n' is a str")
    run = tmp_path / "run"
    flags = TINY + ["--scratch", "--synthetic-cells", "60", "--max-epochs", "1", "--out", str(run)]
    active.main(flags)
    results = json.loads((run / "results.json").read_text())
    results["rounds"][0].pop("epochs")
    (run / "results.json").write_text(json.dumps(results))
    fails(bench.main, ["--curve", str(run)], "results.json", "no 'epochs'")
    fails(active.main, flags, "results.json", "no 'epochs'")
    (run / "results.json").unlink()
    state = torch.load(run / "state.pt", weights_only=True)
    state["rounds"] = "none"
    torch.save(state, run / "state.pt")
    fails(active.main, flags + ["--resume"], "state.pt", "'rounds' is a str")
    torch.save({"model": {}, "class_names": [], "rounds": [], "code": os.system}, run / "state.pt")  # pickled code
    fails(bench.main, ["--curve", str(run)], "not a readable checkpoint")


# 7. specimens.csv read strictly ----------------------------------------------------------------------------


def test_specimens_csv_twice_listed_windows_separators_and_no_match(tmp_path):
    cells = write_folder(tmp_path / "cells", per_class=3)
    names = sorted(path.relative_to(cells).as_posix() for path in cells.rglob("*.png"))
    rows = [f"{name.replace('/', chr(92))},s{index % 2}{name[0]}" for index, name in enumerate(names)]
    (cells / "specimens.csv").write_text("file,specimen\n" + "\n".join(rows) + "\n")
    dataset = layouts.load_dataset(cells, cache=False)  # Windows separators match
    assert all(specimen is not None for specimen in dataset.specimens)
    (cells / "specimens.csv").write_text("file,specimen\n" + "\n".join(rows + [rows[0][:-2] + "zz"]) + "\n")
    with pytest.raises(DataError, match=rf"specimens.csv:{len(rows) + 2}: .* is listed again \(first on line 2\)"):
        layouts.load_dataset(cells, cache=False)
    (cells / "specimens.csv").write_text("file,specimen\nother/x.png,s1\n")
    with pytest.raises(DataError, match="none of its 1 files is one of the 6 cells"):
        layouts.load_dataset(cells, cache=False)


# 8. Small things ---------------------------------------------------------------------------------------------


def test_ctrl_c_says_how_to_resume_and_pictures_are_named_after_out(tmp_path, monkeypatch):
    monkeypatch.setattr(active, "fine_tune", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit) as exit_info:
        active.main(TINY + ["--scratch", "--synthetic-cells", "60", "--out", str(tmp_path / "run")])
    assert str(exit_info.value).startswith("interrupted") and "--resume" in str(exit_info.value)
    flags = TINY + ["--synthetic-cells", "40", "--rotations", "1", "--max-epochs", "1"]
    for name in ("a", "b"):
        train.main(flags + ["--out", str(tmp_path / f"{name}.pt")])
    assert (tmp_path / "a-confusion.png").exists() and (tmp_path / "b-confusion.png").exists()


def test_a_killed_process_leaves_a_lock_the_next_run_takes_over(tmp_path):
    """A real kill (SIGKILL) of a train.py run mid-epoch; the same command with --resume finishes it."""
    out = tmp_path / "p.pt"
    command = [sys.executable, "train.py", "--image-size", "32", "--device", "cpu", "--synthetic-cells", "60"]
    command += ["--rotations", "8", "--max-epochs", "3", "--out", str(out)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "p.pt.state").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.kill()
    process.wait()
    assert (tmp_path / "p.pt.lock").exists() or process.returncode == 0
    result = train.main(command[2:] + ["--resume"])
    assert result["history"][-1]["epoch"] == 3 and not (tmp_path / "p.pt.lock").exists()
