"""The experiment grid (lab/experiments.py): tables, plots, resuming a half-finished grid, and its flags."""

import csv
import json

import pytest
from conftest import TINY

import active
from lab import experiments, recipe


def test_grid_writes_tables_and_plots_and_completes_a_half_finished_grid(pretrained, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    flags = ["--cases", "rs", "in-al", "--limits", "0.3", "1", "--seeds", "0", "1", "--out", str(out)]
    flags += TINY + ["--synthetic-cells", "100", "--max-epochs", "1", "--checkpoint", str(pretrained)]
    rows = experiments.main(flags)
    assert len(rows) == 8
    lines = (out / "results.csv").read_text().splitlines()
    assert (
        lines[0].startswith("case,limit,seed,fold,split,labeled,mca,aca,specimen_accuracy,homogeneous") and len(lines) == 9
    )
    assert all(line.split(",")[3:5] == ["", "cells"] for line in lines[1:])  # synthetic cells have no specimens
    summary = (out / "summary.md").read_text()
    assert "| IN-AL | 0.3 | cells | 2 |" in summary and "| RS | 1 | cells | 2 |" in summary
    for name in ["mca_aca.png", "hardest_classes.png", "confusion-rs-limit0.3.png", "confusion-in-al-limit1.png"]:
        assert (out / name).stat().st_size > 1000
    # At 100% there is nothing to choose: one round, every pool cell labeled; IN-AL's cell is IN-RS's run.
    full = json.loads((out / "in-rs-limit1-seed0" / "results.json").read_text())
    assert len(full["rounds"]) == 1 and full["labeled"] == full["pool"]
    assert not (out / "in-al-limit1-seed0").exists()

    # Half-finished: one run never wrote its results, another never started. Only those two are run again.
    (out / "in-al-limit0.3-seed1" / "results.json").unlink()
    for path in (out / "rs-limit1-seed1").iterdir():
        path.unlink()
    (out / "rs-limit1-seed1").rmdir()
    resumes, real_run = [], active.run  # each run the grid starts: whether it resumes
    monkeypatch.setattr(active, "run", lambda job: resumes.append(job["settings"]["resume"]) or real_run(job))
    summarized = experiments.main(flags + ["--summarize-only"])  # runs nothing, tabulates the six finished runs
    assert len(summarized) == 6 and not resumes
    assert len((out / "results.csv").read_text().splitlines()) == 7
    assert "| RS | 1 | cells | 1 |" in (out / "summary.md").read_text()
    again = experiments.main(flags)
    assert sorted(resumes) == [False, True]  # rs-limit1-seed1 afresh; in-al-limit0.3-seed1 resumed
    assert [r["results"]["mca"] for r in again] == [r["results"]["mca"] for r in rows]
    assert (out / "results.csv").read_text().splitlines()[1:] != []


def test_at_full_budget_active_learning_and_random_sampling_are_the_same_run(tmp_path, monkeypatch):
    """Sec. 3.3: at 100% there is no selection, so the grid may run the AL cell as the RS run."""
    base = TINY + ["--synthetic-cells", "100", "--max-epochs", "2"]
    common = base + ["--limit", "1", "--scratch"]
    random_run = active.main(common + ["--strategy", "random", "--out", str(tmp_path / "rs")])
    active_run = active.main(common + ["--out", str(tmp_path / "al")])
    assert active_run["labeled"] == random_run["labeled"] == random_run["pool"]
    assert active_run["confusion"] == random_run["confusion"] and active_run["mca"] == random_run["mca"]
    assert (tmp_path / "al" / "labeled.csv").read_text() == (tmp_path / "rs" / "labeled.csv").read_text()
    # so the grid runs it once and reports it under both cases
    started = []
    real_run = active.run
    monkeypatch.setattr(active, "run", lambda *a, **k: started.append(1) or real_run(*a, **k))
    grid_flags = ["--cases", "rs", "al", "--limits", "1", "--seeds", "0", "--out", str(tmp_path / "grid")]
    rows = experiments.main(grid_flags + base)
    assert len(started) == 1 and [row["case"] for row in rows] == ["rs", "al"]
    assert rows[0]["results"]["confusion"] == rows[1]["results"]["confusion"] == random_run["confusion"]
    assert "| AL | 1 | cells | 1 |" in (tmp_path / "grid" / "summary.md").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--limit", "0.2"], "--limit is set by the grid itself; use --limits"),
        (["--seed=1"], "--seed is set by the grid itself; use --seeds"),
        (["--summarize"], "unrecognized arguments: --summarize"),  # no prefix matching of --summarize-only
    ],
)
def test_grid_refuses_singular_and_abbreviated_flags(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        experiments.main(["--out", str(tmp_path / "grid")] + flags)
    assert message in str(exit_info.value) + capsys.readouterr().err
    assert not (tmp_path / "grid").exists()  # nothing ran


def test_a_summed_confusion_says_what_it_sums():
    assert experiments.confusion_runs(3, None) == "3 seed(s)"
    assert experiments.confusion_runs(10, 5) == "2 seed(s) x 5 folds"  # with --cv: every cell once a seed
    assert experiments.confusion_runs(2, 5) == "2 run(s)"  # --only-folds: not every fold of a seed


def test_a_paper_grid_reads_its_finished_runs_back(tmp_path, monkeypatch):
    """A grid with --paper (whose runs record the paper's settings, not the flags' defaults) is summarized and rerun
    without running its finished runs again."""
    monkeypatch.setitem(recipe.PAPER, "max_epochs", 2)  # the paper's rule alone runs 1000 epochs on 15 tiny cells
    flags = ["--cases", "rs", "--limits", "0.3", "--seeds", "0", "--out", str(tmp_path / "grid"), "--paper"]
    flags += TINY + ["--synthetic-cells", "60"]
    rows = experiments.main(flags)
    assert rows[0]["results"]["args"]["max_epochs"] == 2  # the run holds --paper's settings, not the default 10
    started = []
    monkeypatch.setattr(active, "run", lambda job: started.append(job))
    assert [r["results"]["mca"] for r in experiments.main(flags + ["--summarize-only"])] == [rows[0]["results"]["mca"]]
    assert [r["results"]["mca"] for r in experiments.main(flags)] == [rows[0]["results"]["mca"]] and not started


def test_a_grid_writes_every_round_and_marks_a_test_split_stop(pretrained, tmp_path):
    out = tmp_path / "grid"
    flags = ["--cases", "in-rs-rounds", "in-rs", "--limits", "0.5", "--seeds", "0", "--out", str(out)]
    flags += TINY + ["--synthetic-cells", "100", "--max-epochs", "1", "--checkpoint", str(pretrained)]
    rows = experiments.main(flags + ["--stop-on", "test", "--fractions", "0.2", "0.3"])
    table = list(csv.DictReader((out / "results.csv").open()))
    assert [row["case"] for row in table] == ["in-rs-rounds", "in-rs"]
    assert {row["stopped_on"] for row in table} == {"the test split"}
    assert (out / "summary.md").read_text().startswith("**Stopped on the test split**")
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    assert [row["case"] for row in rounds] == ["in-rs-rounds"] * 4 + ["in-rs"]  # k, m, m and the rest; then all at once
    assert [int(row["labeled"]) for row in rounds] == [r["labeled"] for row in rows for r in row["results"]["rounds"]]
    assert [float(row["mca"]) for row in rounds][-1] == pytest.approx(rows[1]["results"]["rounds"][-1]["mca"], abs=1e-4)
    assert all(row["stop_loss"] and row["stopped_on"] == "the test split" for row in rounds)
