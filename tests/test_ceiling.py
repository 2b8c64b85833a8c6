"""The ceiling's diagnostics (python -m lab.ceiling): a share of the training specimens, and the seeds' ensemble."""

import csv

import pytest
import torch
from conftest import TINY, fails
from test_specimens import write_cells, write_specimens_csv

from evaluate import mca_aca_of
from lab import ceiling, experiments
from lab.layouts import load_dataset

LAYOUT = {"Homogeneous": {f"h{n}": 3 for n in range(5)}, "Golgi": {f"g{n}": 2 + n % 2 for n in range(5)}}


def tiny_runs(monkeypatch, max_epochs: int):
    """The tool's runs at the tests' tiny size and a few epochs."""
    real = ceiling.active.build_parser

    def tiny_parser():
        parser = real()
        parser.set_defaults(image_size=32, max_epochs=max_epochs)
        return parser

    monkeypatch.setattr(ceiling.active, "build_parser", tiny_parser)


@pytest.fixture()
def five_specimens(tmp_path):
    root = tmp_path / "cells"
    write_specimens_csv(root / "specimens.csv", write_cells(root, LAYOUT))
    return root


def test_a_share_of_the_specimens_keeps_whole_specimens_of_every_class(five_specimens):
    dataset = load_dataset(five_specimens, cache=False)
    pool = torch.arange(len(dataset))
    kept = ceiling.specimens_share(dataset, pool, 0.4, seed=0)
    specimens = {dataset.specimens[i] for i in kept.tolist()}
    assert len(specimens) == 4 and {name[0] for name in specimens} == {"h", "g"}  # two of five a class
    assert sorted(kept.tolist()) == [i for i in range(len(dataset)) if dataset.specimens[i] in specimens]  # whole
    assert torch.equal(kept, ceiling.specimens_share(dataset, pool, 0.4, seed=0))  # seeded
    assert len(ceiling.specimens_share(dataset, pool, 0.01, seed=0)) > 0  # at least one specimen a class


def test_the_specimen_curve_pools_the_folds(five_specimens, tmp_path, monkeypatch):
    tiny_runs(monkeypatch, max_epochs=2)
    out = tmp_path / "ceiling"
    rows = ceiling.main(["--data", str(five_specimens), "--shares", "0.6", "--out", str(out), "--device", "cpu"])
    assert len(rows) == 5 and all(row["results"]["derived"]["pool_specimens_share"] == 0.6 for row in rows)
    table = list(csv.DictReader((out / "specimens.csv").open()))
    pooled = [row for row in table if row["fold"] == "pooled"]
    mca, _ = mca_aca_of(sum(torch.tensor(row["results"]["confusion"]) for row in rows))
    assert len(table) == 6 and float(pooled[0]["mca"]) == pytest.approx(mca, abs=1e-4)
    assert (out / "specimens.png").exists()


def test_the_ensemble_averages_the_seeds_probabilities(five_specimens, tmp_path):
    grid = tmp_path / "grid"
    flags = ["--data", str(five_specimens), "--cv", "5", "--only-folds", "0", "1", "2", "3", "4", "--cases", "rs"]
    experiments.main(flags + ["--limits", "1", "--seeds", "0", "1", "--out", str(grid), "--max-epochs", "1"] + TINY)
    pooled = ceiling.main(["--ensemble", str(grid), "--out", str(tmp_path / "c"), "--device", "cpu"])
    assert set(pooled) == {"seed 0", "seed 1", "mean of the seeds"}
    summary = list(csv.DictReader((grid / "results.csv").open()))
    for seed in (0, 1):  # each seed's pooled MCA is the grid's own pooled row
        row = next(r for r in summary if r["fold"] == "pooled" and r["seed"] == str(seed))
        assert pooled[f"seed {seed}"][0] == pytest.approx(float(row["mca"]), abs=1e-4)  # results.csv: fractions


def test_the_ceiling_refuses_bad_folds(five_specimens, tmp_path):
    common = ["--data", str(five_specimens), "--out", str(tmp_path / "c")]
    fails(ceiling.main, common + ["--folds", "5"], "--folds", "0 to 4")
    fails(ceiling.main, common + ["--shares", "0"], "--shares", "(0, 1]")


def test_the_pooled_row_waits_for_every_fold(five_specimens, tmp_path, monkeypatch):
    tiny_runs(monkeypatch, max_epochs=1)
    common = ["--data", str(five_specimens), "--shares", "1", "--device", "cpu", "--out", str(tmp_path / "c")]
    ceiling.main(common + ["--folds", "0", "1"])  # one process's folds
    table = list(csv.DictReader((tmp_path / "c" / "specimens.csv").open()))
    assert [row["fold"] for row in table] == ["0", "1"]  # no pooled row from two folds
    ceiling.main(common + ["--folds", "2", "3", "4"])  # the other's
    rows = ceiling.main(common)  # every fold: the five finished runs read back, the pooled row written
    table = list(csv.DictReader((tmp_path / "c" / "specimens.csv").open()))
    assert [row["fold"] for row in table] == ["0", "1", "2", "3", "4", "pooled"] and len(rows) == 5
