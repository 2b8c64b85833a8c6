"""Issue #40's kinds of failure, each fixed at its shared mechanism and tested as a kind: the campaign's state,
file names as users make them, every checkpoint read back checked, outputs that are inputs, the grid's trust,
flags that do nothing, locks, the cache, small silences."""

import os
import subprocess
import sys

import pytest
from conftest import TINY, fails

import active
from lab import runs

# 8. A stale lock whose process id is alive again -------------------------------------------------------------------


def test_a_lock_tells_its_own_process_from_another_under_the_same_id(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    flags = TINY + ["--scratch", "--synthetic-cells", "60", "--max-epochs", "1", "--out", str(run)]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = run / "run.lock"
        # written by the live process itself: held, and the line names the lock and how to remove it
        lock.write_text(f"{other.pid} {runs._identity(other.pid) or ''}".strip())
        fails(active.main, flags, f"process {other.pid}", str(lock), "remove")
        if runs._identity(other.pid) is not None:
            # the same id, alive, but another boot or start time: a run before a reboot, or pid 1 in a container
            lock.write_text(f"{other.pid} another-boot:12345")
            assert active.main(flags)["labeled"] > 0 and not lock.exists()
    finally:
        other.kill()
        other.wait()


# 9. The cache ----------------------------------------------------------------------------------------------------


def test_the_cache_is_keyed_on_contents_checks_its_entries_and_cleans_killed_writes(tmp_path, monkeypatch):
    import numpy as np
    import torch
    from PIL import Image

    from lab import layouts
    root = tmp_path / "cells"
    for folder, value in (("Homogeneous", 40), ("Golgi", 200)):
        (root / folder).mkdir(parents=True)
        for number in range(3):
            Image.fromarray(np.full((20, 20), value + number, dtype=np.uint8)).save(root / folder / f"{number}.png")
    cache = tmp_path / "cache"
    monkeypatch.setenv("HEP2_CACHE", str(cache))
    first = layouts.load_dataset(root, image_size=16)
    # swap two same-size files' bytes, keeping their times: the cache must not serve the old images
    a, b = root / "Homogeneous" / "0.png", root / "Golgi" / "0.png"
    times_a, times_b = a.stat(), b.stat()
    bytes_a, bytes_b = a.read_bytes(), b.read_bytes()
    assert len(bytes_a) == len(bytes_b)
    a.write_bytes(bytes_b), b.write_bytes(bytes_a)
    os.utime(a, ns=(times_a.st_atime_ns, times_a.st_mtime_ns))
    os.utime(b, ns=(times_b.st_atime_ns, times_b.st_mtime_ns))
    swapped = layouts.load_dataset(root, image_size=16)
    index_a, index_b = swapped.files.index(str(a)), swapped.files.index(str(b))
    assert torch.equal(swapped.images[index_a], first.images[first.files.index(str(b))])
    assert torch.equal(swapped.images[index_b], first.images[first.files.index(str(a))])
    # an entry of the right shape but another dtype is rebuilt, not used
    entry = next(cache.glob("*.pt"))
    for stale in cache.glob("*.pt"):
        torch.save(torch.load(stale, weights_only=True).float() + 0.5, stale)
    again = layouts.load_dataset(root, image_size=16)
    assert again.images.dtype == torch.uint8 and torch.equal(again.images, swapped.images)
    # a killed save's temporary (its process gone) is removed at the next start; a live one's is kept
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = cache / f".{entry.name}.tmp{int(dead.stdout)}"
    live = cache / f".other.pt.tmp{os.getppid()}"
    killed.write_bytes(b"half"), live.write_bytes(b"busy")
    layouts.load_dataset(root, image_size=16)
    assert not killed.exists() and live.exists()
    # `~` in HEP2_CACHE is the home folder, not a folder named ~
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HEP2_CACHE", "~/x")
    monkeypatch.chdir(tmp_path)
    layouts.load_dataset(root, image_size=16)
    assert list((tmp_path / "home" / "x").glob("*.pt")) and not (tmp_path / "~").exists()


# 1, 2, 3. A campaign's labeled cells, its steps, and file names as users make them ----------------------------------


def _pool_of(folder, names, tmp_path):
    """Synthetic cells saved under these names, and their true classes."""
    import numpy as np
    from PIL import Image

    import data
    from lab import synthetic
    folder.mkdir()
    rng, truth = np.random.default_rng(7), {}
    for index, name in enumerate(names):
        cell = synthetic.synthetic_cell(data.TARGET_CLASSES[index % 6], rng)
        Image.fromarray((cell * 255).astype(np.uint8)).save(folder / name, format="PNG")
        truth[name] = data.TARGET_CLASSES[index % 6]
    return truth


def _fill(csv_path, truth, encoding="utf-8", delimiter=","):
    """Fill the label column as a person in a spreadsheet would: the cells as shown (a leading ' kept)."""
    import csv

    from lab.layouts import read_csv_rows

    rows, _ = read_csv_rows(csv_path)  # the file names as the campaign meant them
    with open(csv_path, newline="") as handle:
        raw = list(csv.reader(handle))
    header = raw[0]
    for row, meant in zip(raw[1:], rows[1:]):
        row[header.index("label")] = truth[meant[header.index("file")]]
    with open(csv_path, "w", newline="", encoding=encoding) as handle:
        csv.writer(handle, delimiter=delimiter).writerows(raw)


def _campaign(pool, pretrained, folder, n=6):
    from lab import campaign
    flags = ["query", "--pool", str(pool), "--checkpoint", str(pretrained), "--n", str(n), "--out", str(folder)]
    return campaign.main(flags + ["--max-epochs", "1", "--device", "cpu", "--holdout", "0"])


def test_every_labeled_cell_is_checked_at_each_step_and_can_be_dropped(tmp_path, pretrained):
    from lab import campaign
    truth = _pool_of(tmp_path / "pool", [f"cell{i:02d}.png" for i in range(12)], tmp_path)
    folder = tmp_path / "campaign"
    _campaign(tmp_path / "pool", pretrained, folder)
    _fill(folder / "round-000.csv", truth)
    campaign.main(["ingest", str(folder), "--device", "cpu"])
    labeled = [entry["file"] for entry in campaign.load_campaign(folder)["ledger"]]
    _fill(folder / "round-001.csv", truth)
    other = next(name for name in truth if name not in labeled and truth[name] != truth[labeled[0]])
    (tmp_path / "pool" / labeled[0]).write_bytes((tmp_path / "pool" / other).read_bytes())  # another class's cell
    fails(campaign.main, ["ingest", str(folder), "--device", "cpu"], labeled[0], "changed", "python -m lab.campaign drop")
    (tmp_path / "pool" / labeled[1]).unlink()
    fails(campaign.main, ["drop", str(folder), "nothing.png"], "nothing.png", "not in the ledger")
    campaign.main(["drop", str(folder), labeled[0]])
    fails(campaign.main, ["ingest", str(folder), "--device", "cpu"], labeled[1], "is gone", "python -m lab.campaign drop")
    campaign.main(["drop", str(folder), labeled[1]])
    state = campaign.main(["ingest", str(folder), "--device", "cpu"])
    exported = (folder / "export" / "labels.csv").read_text()
    assert labeled[0] not in exported and labeled[1] not in exported
    assert len(exported.splitlines()) - 1 == len(state["ledger"])  # the export is the ledger


def test_a_campaign_step_happens_whole_or_not_at_all_and_removes_only_its_own_files(tmp_path, pretrained):
    from lab import campaign
    truth = _pool_of(tmp_path / "pool", [f"cell{i:02d}.png" for i in range(12)], tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model-final.pt").write_bytes(b"a user's model")
    fails(campaign.main, ["query", "--pool", str(tmp_path / "pool"), "--out", str(mine), "--checkpoint",
                          str(pretrained)], "model-final.pt", "new folder")
    assert (mine / "model-final.pt").read_bytes() == b"a user's model"
    folder = tmp_path / "campaign"
    _campaign(tmp_path / "pool", pretrained, folder)
    _fill(folder / "round-000.csv", truth)
    (folder / "export" / "labels.csv").unlink()
    (folder / "export" / "labels.csv").mkdir()  # an export that cannot be written (root writes read-only folders)
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    fails(campaign.main, ["ingest", str(folder), "--device", "cpu"], "labels.csv", "nothing of this step")
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before
    (folder / "export" / "labels.csv").rmdir()
    state = campaign.main(["ingest", str(folder), "--device", "cpu"])
    assert sorted(path.name for path in folder.glob("model-*.pt")) == [state["model"]]


def test_file_names_as_users_make_them(tmp_path, pretrained):
    from lab import campaign
    names = [" lead.png", "new\nline.png", "=cmd.png", "+plus.png", "-minus.png", "@at.png", "plain.png", "é.png"]
    truth = _pool_of(tmp_path / "pool", names, tmp_path)
    folder = tmp_path / "campaign"
    _campaign(tmp_path / "pool", pretrained, folder, n=8)
    text = (folder / "round-000.csv").read_text()
    assert "\n=cmd" not in text and ",=cmd" not in text and "'=cmd.png" in text  # no formula for a spreadsheet
    # filled and saved as Excel's "Unicode Text": UTF-16, tab-separated
    _fill(folder / "round-000.csv", truth, encoding="utf-16", delimiter="\t")
    state = campaign.main(["ingest", str(folder), "--device", "cpu"])
    assert sorted(entry["file"] for entry in state["ledger"]) == sorted(names)
    assert all(truth[entry["file"]] == entry["label"] for entry in state["ledger"])
    # a name that is not UTF-8: one line naming it
    odd = tmp_path / "odd"
    _pool_of(odd, ["a.png", "b.png"], tmp_path)
    os.rename(odd / "b.png", os.path.join(os.fsencode(odd), b"\xff.png"))
    fails(lambda folders: _campaign(*folders), [odd, pretrained, tmp_path / "c2"], "\\xff.png", "UTF-8", "rename")
    # a console that cannot show a folder's name: the work is done and said, escaped (exit 0)
    shown = tmp_path / "é-campaign"
    folder.rename(shown)
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    done = subprocess.run([sys.executable, "-m", "lab.campaign", "status", str(shown)], env=env, capture_output=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0 and b"\\xe9-campaign" in done.stdout


def test_a_dangling_link_in_a_predict_folder_is_listed_as_unreadable(tmp_path, pretrained):
    import csv

    import evaluate

    _pool_of(tmp_path / "cells", ["a.png", "b.png"], tmp_path)
    (tmp_path / "cells" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "predictions.csv"
    evaluate.main(["--checkpoint", str(pretrained), "--predict", str(tmp_path / "cells"), "--out", str(out),
                   "--device", "cpu"])
    rows = {row["file"]: row for row in csv.DictReader(out.open())}
    assert rows[str(tmp_path / "cells" / "gone.png")]["error"] and rows[str(tmp_path / "cells" / "a.png")]["predicted"]


# 4. Checkpoints read back by key and by type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, words",
    [
        ({"derived": ["a", "list"]}, ["'derived' is a list"]),
        ({"class_names": 6}, ["'class_names' is a int"]),
        ({"class_names": ["homogeneous"]}, ["two or more distinct"]),
        ({"derived": {"image_size": "112"}}, ["image_size '112'"]),
        ({"derived": {"image_size": 32, "normalize": "zscore"}}, ["normalize 'zscore'", "percentile"]),
        ({"format": 99}, ["format 99", "up to 1"]),
    ],
)
def test_every_checkpoint_is_checked_for_its_format_keys_and_types(tmp_path, pretrained, change, words):
    import torch

    import evaluate

    checkpoint = torch.load(pretrained, weights_only=True)
    checkpoint.update(change)
    path = tmp_path / "odd.pt"
    torch.save(checkpoint, path)
    for main, flags in (
        (evaluate.main, ["--checkpoint", str(path), "--device", "cpu", "--png", str(tmp_path / "c.png")]),
        (active.main, TINY + ["--checkpoint", str(path), "--synthetic-cells", "60", "--out", str(tmp_path / "r")]),
    ):
        fails(main, flags, str(path), *words)


def test_a_campaigns_model_without_data_is_one_line(tmp_path, pretrained):
    import torch

    import evaluate

    checkpoint = torch.load(pretrained, weights_only=True)
    checkpoint["derived"] = dict(checkpoint["derived"], data_kind="campaign")
    torch.save(checkpoint, tmp_path / "model.pt")
    fails(evaluate.main, ["--checkpoint", str(tmp_path / "model.pt"), "--device", "cpu"], "campaign", "--data")


# 5. An output that is an input -------------------------------------------------------------------------------------


def test_no_command_writes_over_a_file_it_reads_or_another_runs_records(tmp_path, pretrained):
    import shutil

    import evaluate

    _pool_of(tmp_path / "cells", ["a.png", "b.png"], tmp_path)
    checkpoint = tmp_path / "run" / "model.pt"
    checkpoint.parent.mkdir()
    shutil.copy(pretrained, checkpoint)
    before = checkpoint.read_bytes()
    flags = ["--checkpoint", str(checkpoint), "--device", "cpu"]
    fails(evaluate.main, flags + ["--predict", str(tmp_path / "cells"), "--out", str(checkpoint)], "--out", "--checkpoint")
    assert checkpoint.read_bytes() == before
    (checkpoint.parent / "confusion.png").write_bytes(b"the run's own picture")
    metrics = evaluate.main(flags + ["--json"])
    assert (checkpoint.parent / "confusion.png").read_bytes() == b"the run's own picture"
    assert metrics["png"].endswith("model-evaluated.png")


# 6. The grid trusts what it finds ----------------------------------------------------------------------------------


def test_a_grid_takes_a_finished_run_only_on_the_same_data_and_names_each_value_once(tmp_path, pretrained):
    from test_specimens import write_cells, write_specimens_csv

    from lab import experiments

    root = tmp_path / "cells"
    root.mkdir()
    layout = {"Homogeneous": {f"h{i}": 4 for i in range(3)}, "Golgi": {f"g{i}": 4 for i in range(3)}}
    write_specimens_csv(root / "specimens.csv", write_cells(root, layout))
    flags = ["--cases", "in-al", "--limits", "0.5", "--seeds", "0", "--out", str(tmp_path / "grid"), "--data", str(root)]
    flags += ["--checkpoint", str(pretrained), "--device", "cpu", "--max-epochs", "1"]
    experiments.main(flags)
    fails(experiments.main, flags[:5] + ["0", "0"] + flags[6:], "--seeds", "0 given twice")
    fails(experiments.main, flags[:3] + ["0.5", "0.5"] + flags[4:], "--limits", "0.5 given twice")
    write_cells(root, {"Homogeneous": {"h0": 4}}, size=(36, 41))  # the same files, other cells in them
    fails(experiments.main, flags + ["--summarize-only"], "in-al-limit0.5-seed0", "other data")


# 7. Flags that do nothing ------------------------------------------------------------------------------------------


def test_a_flag_that_cannot_apply_is_refused(tmp_path, pretrained):
    import evaluate

    base = TINY + ["--synthetic-cells", "60", "--out", str(tmp_path / "r")]
    with_checkpoint = ["--checkpoint", str(pretrained)]
    fails(active.main, base + with_checkpoint + ["--image-size", "64"], "--image-size 64", "--checkpoint", "--scratch")
    fails(active.main, base + with_checkpoint + ["--normalize", "none"], "--normalize none", "--scratch")
    fails(active.main, base + ["--scratch", "--checkpoint", "x.pt"], "--checkpoint x.pt", "--scratch")
    fails(active.main, base + with_checkpoint + ["--strategy", "random", "--fractions", "0.3", "0.1"], "--fractions")
    fails(active.main, base + with_checkpoint + ["--folds", "4"], "--folds 4", "--fold")
    fails(active.main, ["--data", str(tmp_path), "--synthetic-cells", "50", "--out", str(tmp_path / "r")],
          "--synthetic-cells 50", "--data")
    fails(evaluate.main, ["--checkpoint", str(pretrained), "--out", "p.csv"], "--out p.csv", "--predict")
    fails(evaluate.main, ["--checkpoint", str(pretrained), "--predict", str(tmp_path), "--png", "c.png"], "--png")
