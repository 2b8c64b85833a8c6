"""Cross-validation by specimen (issue #38): the folds, a fold's run and its development split, the pooled grid."""

import csv

import numpy as np
import pytest
import torch
from conftest import TINY, fails
from test_specimens import random_layout, sides_of, write_cells, write_specimens_csv

import active
import evaluate
from data import DataError
from lab import experiments
from lab.layouts import load_dataset
from lab.splits import fold_split, pool_and_test, specimen_folds


def test_folds_partition_the_specimens_and_test_every_class_on_every_fold():
    """Every specimen on the test side of exactly one fold, whole; every class on each test side; sizes balanced."""
    rng = np.random.default_rng(38)
    checked = 0
    for _ in range(40):
        labels, specimens = random_layout(rng)
        class_names = [f"class{label}" for label in range(int(labels.max()) + 1)]
        fewest = min(len({s for s, l in zip(specimens, labels.tolist()) if l == c}) for c in range(len(class_names)))
        folds = int(rng.integers(2, 6))
        if fewest < folds:
            with pytest.raises(DataError, match=rf"--folds {folds}: class 'class\d' has {fewest} specimen\(s\)"):
                specimen_folds(labels, specimens, folds, class_names)
            continue
        tests = specimen_folds(labels, specimens, folds, class_names)
        assert sorted(torch.cat(tests).tolist()) == list(range(len(labels)))  # each cell tested exactly once
        assert all(len(where) == 1 for where in sides_of(tests, specimens).values())  # specimens whole
        for test in tests:
            assert set(labels[test].tolist()) == set(range(len(class_names)))
        checked += 1
    assert checked >= 10


def test_the_folds_are_fixed_by_the_data_whatever_the_seed(tmp_path, pretrained):
    layout = {"Homogeneous": {f"h{i}": 3 + i % 2 for i in range(4)}, "Golgi": {f"g{i}": 2 + i % 3 for i in range(4)}}
    root = tmp_path / "cells"
    root.mkdir()
    write_specimens_csv(root / "specimens.csv", write_cells(root, layout))
    flags = ["--data", str(root), "--checkpoint", str(pretrained), "--device", "cpu", "--limit", "0.5"]
    flags += ["--fold", "1", "--folds", "3", "--max-epochs", "1"]
    runs = [active.main(flags + ["--seed", str(seed), "--out", str(tmp_path / f"s{seed}")]) for seed in (0, 1)]
    assert runs[0]["test_specimens"] == runs[1]["test_specimens"] and runs[0]["fold"] == 1
    dataset = load_dataset(root, cache=False)
    pool, test = fold_split(dataset, "specimen", 3, 1)
    assert runs[0]["test"] == len(test) and runs[0]["pool"] == len(pool)
    labeled = {row["specimen"] for row in csv.DictReader((tmp_path / "s0" / "labeled.csv").open())}
    assert not labeled & set(runs[0]["test_specimens"])
    # evaluate.py remakes the fold's test side from the checkpoint
    metrics = evaluate.main(["--checkpoint", str(tmp_path / "s0" / "model.pt"), "--device", "cpu", "--json"])
    assert metrics["count"] == len(test) and metrics["mca"] == pytest.approx(runs[0]["mca"])
    # the development split of a fold: the pool side's own folds, the test side never touched
    development = active.main(flags + ["--development", "--out", str(tmp_path / "dev")])
    dev_pool, dev_test = pool_and_test(dataset, "specimen", {"fold": 1, "folds": 3, "development": True})
    assert development["test"] == len(dev_test) and development["pool"] == len(dev_pool)
    assert set(torch.cat([dev_pool, dev_test]).tolist()) == set(pool.tolist())
    assert not set(development["test_specimens"]) & set(runs[0]["test_specimens"])


def test_fold_flags_out_of_range_are_one_line(tmp_path, pretrained):
    base = ["--checkpoint", str(pretrained), "--device", "cpu", "--out", str(tmp_path / "run")]
    fails(active.main, base + ["--fold", "5"], "--fold 5", "0 to 4")
    fails(active.main, base + ["--fold", "0", "--folds", "1"], "--folds 1", "at least 2")
    layout = {"Homogeneous": {f"h{i}": 3 for i in range(4)}, "Golgi": {"g0": 3, "g1": 3}}
    root = tmp_path / "cells"
    root.mkdir()
    write_specimens_csv(root / "specimens.csv", write_cells(root, layout))
    fails(active.main, base + ["--data", str(root), "--fold", "0", "--folds", "3"], "class 'golgi' has 2 specimen")


def test_pooled_metrics_are_those_of_the_folds_predictions_put_together():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=generator)
    predictions = torch.where(torch.rand(300, generator=generator) < 0.7, labels, torch.randint(0, 4, (300,), generator=generator))
    folds = torch.randperm(300, generator=generator).chunk(3)
    summed = sum(evaluate.confusion_matrix(labels[fold], predictions[fold], 4) for fold in folds)
    assert evaluate.mca_aca_of(summed) == pytest.approx(evaluate.mca_aca(labels, predictions, 4))
    per_fold_mean = np.mean([evaluate.mca_aca(labels[fold], predictions[fold], 4)[0] for fold in folds])
    assert evaluate.mca_aca_of(summed)[0] != pytest.approx(per_fold_mean)  # pooled is not the mean of the folds


def test_cross_validation_grid_tests_every_cell_once_and_pools_the_folds(pretrained, tmp_path):
    out = tmp_path / "grid"
    flags = ["--cases", "in-al", "--limits", "0.3", "--seeds", "0", "--cv", "3", "--out", str(out)]
    flags += TINY + ["--synthetic-cells", "90", "--max-epochs", "1", "--checkpoint", str(pretrained)]
    rows = experiments.main(flags)
    assert [row["fold"] for row in rows] == [0, 1, 2]
    cells = rows[0]["results"]["test"] + rows[0]["results"]["pool"]
    assert sum(row["results"]["test"] for row in rows) == cells  # every cell on one test side
    table = list(csv.DictReader((out / "results.csv").open()))
    assert [row["fold"] for row in table] == ["0", "1", "2", "pooled"]
    summed = torch.tensor([row["results"]["confusion"] for row in rows]).sum(dim=0)
    assert float(table[-1]["mca"]) == pytest.approx(evaluate.mca_aca_of(summed)[0], abs=1e-4)
    assert "3-fold cross-validation by cells" in (out / "summary.md").read_text()  # synthetic: no specimens
    # a subset of the folds runs, reads back, and has no pooled row
    part = experiments.main(flags[:-2] + ["--only-folds", "2", "--summarize-only"] + flags[-2:])
    assert [row["fold"] for row in part] == [2]
    fails(experiments.main, flags + ["--only-folds", "3"], "--only-folds 3", "0 to 2")
    fails(experiments.main, flags[:6] + ["0", "0"] + flags[8:], "--seeds", "twice")
