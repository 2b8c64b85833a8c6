"""Specimen-disjoint evaluation: how specimens are read, how splits keep them whole, and every CLI that splits."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import active
import evaluate
import train
from data import DataError
from lab import campaign, splits, synthetic
from lab.layouts import load_dataset
from lab.splits import SPLIT_TOLERANCE, resolve_split, specimen_split


def sides_of(parts, specimens):
    """For each specimen, the set of sides its cells landed on."""
    where: dict[str, set[int]] = {}
    for side, part in enumerate(parts):
        for index in part.tolist():
            where.setdefault(specimens[index], set()).add(side)
    return where


def random_layout(rng, max_specimens=12):
    """Labels and specimens of a random dataset: 2 to 6 classes, 1 to max_specimens specimens each, 1 to 150 cells."""
    labels, specimens = [], []
    for label in range(int(rng.integers(2, 7))):
        for number in range(int(rng.integers(1, max_specimens + 1))):
            size = int(rng.integers(1, 151))
            labels += [label] * size
            specimens += [f"c{label}-s{number}"] * size
    order = rng.permutation(len(labels))  # cells of a specimen need not be next to each other
    return torch.tensor(labels)[order], [specimens[i] for i in order]


@pytest.mark.parametrize("fractions", [[0.8, 0.2], [0.7, 0.15, 0.15], [0.85, 0.15, 0.0]])
def test_specimen_split_property_over_many_seeds_and_layouts(fractions):
    """No specimen on two sides; every class on every side when it has a specimen for each; shares within bounds."""
    rng = np.random.default_rng(len(fractions) * 100 + int(10 * fractions[-1]))
    names = [f"side{i}" for i in range(len(fractions))]
    sides_needed = sum(1 for fraction in fractions if fraction > 0)
    checked = 0
    for seed in range(60):
        labels, specimens = random_layout(rng)
        counts = {label: len({s for s, l in zip(specimens, labels.tolist()) if l == label}) for label in range(6)}
        class_names = [f"class{label}" for label in range(6)]
        if min(n for n in counts.values() if n) < sides_needed:
            with pytest.raises(DataError, match=r"class 'class\d' has \d specimen\(s\), too few"):
                specimen_split(labels, specimens, fractions, seed, class_names, names)
            continue
        parts = specimen_split(labels, specimens, fractions, seed, class_names, names)
        checked += 1
        assert sorted(torch.cat(parts).tolist()) == list(range(len(labels)))  # complete and disjoint
        assert all(len(where) == 1 for where in sides_of(parts, specimens).values())  # each specimen whole
        for side, fraction in enumerate(fractions):
            if fraction == 0:
                assert len(parts[side]) == 0
        for label in torch.unique(labels).tolist():
            members = labels == label
            total = int(members.sum())
            largest = max(specimens.count(s) for s in {s for s, m in zip(specimens, members.tolist()) if m})
            for side, fraction in enumerate(fractions):
                on_side = int(members[parts[side]].sum())
                if fraction > 0:
                    assert on_side > 0  # every class on every side with a share
                # The stated tolerance: within SPLIT_TOLERANCE of the share, or two of the largest specimens
                # when whole specimens cannot do better.
                assert abs(on_side - fraction * total) <= max(SPLIT_TOLERANCE * total, 2 * largest)
    assert checked >= 20


def test_with_many_similar_specimens_every_side_is_within_the_tolerance():
    rng = np.random.default_rng(7)
    for seed in range(20):
        labels, specimens = [], []
        for label in range(4):
            for number in range(int(rng.integers(10, 16))):
                size = int(rng.integers(10, 31))
                labels += [label] * size
                specimens += [f"{label}-{number}"] * size
        labels = torch.tensor(labels)
        parts = specimen_split(labels, specimens, [0.8, 0.2], seed, list("abcd"), ["pool", "test"])
        for label in range(4):
            total = int((labels == label).sum())
            assert abs(int((labels[parts[1]] == label).sum()) - 0.2 * total) <= SPLIT_TOLERANCE * total


def test_specimen_split_is_seeded():
    labels = torch.tensor([i // 100 for i in range(300)])
    specimens = [f"{i // 100}-{i // 20}" for i in range(300)]  # 3 classes x 5 specimens of 20 cells
    first = specimen_split(labels, specimens, [0.8, 0.2], 0, list("abc"), ["pool", "test"])
    again = specimen_split(labels, specimens, [0.8, 0.2], 0, list("abc"), ["pool", "test"])
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    others = [specimen_split(labels, specimens, [0.8, 0.2], seed, list("abc"), ["pool", "test"]) for seed in (1, 2, 3)]
    assert any(not torch.equal(first[1], other[1]) for other in others)  # another seed, other test specimens


def test_a_specimen_spanning_classes_counts_for_its_majority_class():
    labels = torch.tensor([0, 0, 1] + [0] * 3 + [1] * 3 + [1] * 3)
    specimens = ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3  # a is mostly class 0
    parts = specimen_split(labels, specimens, [0.5, 0.5], 0, ["x", "y"], ["one", "two"])
    assert all(len(where) == 1 for where in sides_of(parts, specimens).values())


# ---------------------------------------------------------------------------------------------
# Reading specimens


def write_cells(root, layout, size=(36, 40)):
    """layout: {class folder: {specimen: cell count}}; returns the specimens.csv rows (file, specimen)."""
    rng = np.random.default_rng(3)
    rows = []
    for folder, specimens in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for specimen, count in specimens.items():
            for number in range(count):
                name = f"{folder}/{specimen}-{number:02d}.png"
                Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(root / name)
                rows.append((name, specimen))
    return rows


def write_specimens_csv(path, rows):
    path.write_text("file,specimen\n" + "".join(f"{file},{specimen}\n" for file, specimen in rows))


LAYOUT = {
    "Homogeneous": {"h1": 4, "h2": 3, "h3": 5},
    "NuMem": {"n1": 3, "n2": 4, "n3": 3},
    "Golgi": {"g1": 3, "g2": 4, "g3": 2},
}


@pytest.fixture()
def specimen_folder(tmp_path):
    root = tmp_path / "cells"
    root.mkdir()
    write_specimens_csv(root / "specimens.csv", write_cells(root, LAYOUT))
    return root


def test_specimens_csv_at_the_root_is_read_automatically(specimen_folder):
    dataset = load_dataset(specimen_folder, cache=False)
    assert len(dataset) == 31 and dataset.class_names == ["homogeneous", "nuclear_membrane", "golgi"]
    assert {dataset.specimens[i] for i in range(len(dataset)) if dataset.labels[i] == 2} == {"g1", "g2", "g3"}
    assert all(f"/{s}-" in f for f, s in zip(dataset.files, dataset.specimens))
    assert resolve_split(None, dataset) == "specimen" and resolve_split("cells", dataset) == "cells"


def test_specimens_file_named_by_flag_and_unlisted_files(specimen_folder, tmp_path):
    other = tmp_path / "elsewhere.csv"
    (specimen_folder / "specimens.csv").rename(other)
    assert load_dataset(specimen_folder, cache=False).specimens is None  # nothing at the root: unknown
    assert resolve_split(None, load_dataset(specimen_folder, cache=False)) == "cells"
    rows = list(csv.reader(other.open()))[1:]
    write_specimens_csv(other, rows[:-2])  # two files left out
    dataset = load_dataset(specimen_folder, cache=False, specimens_csv=other)
    assert sum(s is None for s in dataset.specimens) == 2
    with pytest.raises(DataError, match=r"--specimens: 2 of 31 cells have no specimen listed .*--split cells"):
        resolve_split(None, dataset)
    assert resolve_split("cells", dataset) == "cells"
    with pytest.raises(DataError, match="--specimens .*missing.csv: no such file"):
        load_dataset(specimen_folder, cache=False, specimens_csv=tmp_path / "missing.csv")


def test_split_specimen_without_specimens_is_an_error():
    dataset = synthetic.synthetic_dataset("target", 60, seed=0, image_size=32)
    assert resolve_split(None, dataset) == "cells"
    with pytest.raises(DataError, match="--split specimen: no specimens are known"):
        resolve_split("specimen", dataset)


def test_csv_layout_with_a_specimen_column(tmp_path):
    rows = write_cells(tmp_path, {"flat": {"s1": 2, "s2": 2, "s3": 2, "s4": 2}})
    classes = ["homogeneous", "golgi"] * 4
    lines = ["ID;Pattern;Slide"] + [f"{file.split('/')[1]};{c};{s}" for (file, s), c in zip(rows, classes)]
    (tmp_path / "flat" / "gt.csv").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(tmp_path / "flat", cache=False)
    assert dataset.specimens == ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"]
    assert dataset.labels.tolist() == [0, 1] * 4
    # the export of a labeling campaign: "image,class" where image is the cell, not a specimen
    (tmp_path / "flat" / "gt.csv").unlink()
    export = ["image,class"] + [f"{file.split('/')[1]},{c}" for (file, _), c in zip(rows, classes)]
    (tmp_path / "flat" / "labels.csv").write_text("\n".join(export) + "\n")
    assert load_dataset(tmp_path / "flat", cache=False).specimens is None


def test_the_labels_csv_is_found_among_several(tmp_path):
    """ICPR 2012: gt_training.csv (ID;pattern) beside training.csv (ID;intensity;width;height)."""
    rng = np.random.default_rng(1)
    for i in range(1, 5):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "gt_training.csv").write_text("ID;pattern\n1;homogeneous\n2;centromere\n3;homogeneous\n4;centromere\n")
    (tmp_path / "training.csv").write_text(
        "ID;intensity;width;height\n" + "".join(f"{i};positive;40;40\n" for i in range(1, 5))
    )
    assert len(load_dataset(tmp_path, cache=False)) == 4
    (tmp_path / "more_labels.csv").write_text("1,golgi\n2,golgi\n")
    with pytest.raises(DataError, match=r"2 CSV files hold class labels \(gt_training.csv, more_labels.csv\)"):
        load_dataset(tmp_path, cache=False)


def test_csv_header_only_by_name_and_no_image_twice(tmp_path):
    rng = np.random.default_rng(2)
    for name in ["07924", "07925", "07926"]:
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("07924.png,Centromre\n07925.png,golgi\n07926.png,golgi\n")  # a misspelt class, no header
    with pytest.raises(DataError, match=r"labels\.csv:1: unknown class 'Centromre'"):
        load_dataset(tmp_path, cache=False)
    labels.write_text("file,class\n07924.png,centromere\n07925.png,golgi\n07924,golgi\n")
    with pytest.raises(DataError, match=r"labels\.csv:4: 07924\.png is listed again \(first on line 2\)"):
        load_dataset(tmp_path, cache=False)


# ---------------------------------------------------------------------------------------------
# The CLIs


def test_train_split_by_specimen_records_it_and_evaluate_reproduces_it(specimen_folder, tmp_path, capsys):
    out = tmp_path / "p.pt"
    flags = ["--data", str(specimen_folder), "--image-size", "32", "--device", "cpu", "--rotations", "1"]
    result = train.main(
        flags + ["--max-epochs", "1", "--val-fraction", "0.3", "--test-fraction", "0.3", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "split: by specimen" in printed and "test specimens: " in printed
    checkpoint = torch.load(out, weights_only=True)
    made = checkpoint["derived"]  # what the run derived, beside the args it was given
    assert made["split"] == "specimen" and len(made["test_specimens"]) == 3  # one per class
    assert result["metrics"]["test"]["specimen_count"] == 3
    dataset = load_dataset(specimen_folder, cache=False)
    parts = splits.split_dataset(dataset, "specimen", [0.4, 0.3, 0.3], 0, ["train", "val", "test"])
    assert splits.specimens_of(dataset, parts[2]) == made["test_specimens"]
    assert not set(splits.specimens_of(dataset, parts[0])) & set(made["test_specimens"])
    metrics = evaluate.main(["--checkpoint", str(out), "--json", "--device", "cpu", "--png", str(tmp_path / "c.png")])
    assert metrics["split"] == "test" and metrics["count"] == result["metrics"]["test"]["count"]
    assert metrics["mca"] == pytest.approx(result["metrics"]["test"]["mca"])
    assert {row["specimen"] for row in metrics["specimens"]} == set(made["test_specimens"])
    assert json.loads(capsys.readouterr().out)["specimen_accuracy"] == metrics["specimen_accuracy"]


def test_train_stops_when_a_class_has_too_few_specimens_and_test_fraction_zero_helps(specimen_folder, tmp_path):
    """Golgi has 3 specimens: enough for train/val/test; with 2 it needs --test-fraction 0."""
    rows = list(csv.reader((specimen_folder / "specimens.csv").open()))[1:]
    rows = [(file, "g1" if specimen == "g3" else specimen) for file, specimen in rows]
    write_specimens_csv(specimen_folder / "specimens.csv", rows)
    flags = ["--data", str(specimen_folder), "--device", "cpu", "--image-size", "32", "--rotations", "1"]
    flags += ["--max-epochs", "1", "--out", str(tmp_path / "p.pt")]
    with pytest.raises(SystemExit) as exit_info:
        train.main(flags)
    text = str(exit_info.value)
    assert text.startswith("error: --split specimen: class 'golgi' has 2 specimen(s)") and "--test-fraction 0" in text
    assert "\n" not in text
    result = train.main(flags + ["--test-fraction", "0", "--val-fraction", "0.3"])
    assert "test" not in result["metrics"]
    assert train.main(flags + ["--split", "cells"])["metrics"]["test"]["count"] > 0


def test_active_run_keeps_test_specimens_unseen(specimen_folder, pretrained, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--data", str(specimen_folder), "--checkpoint", str(pretrained), "--device", "cpu", "--limit", "0.6"]
    flags += ["--fractions", "0.2", "0.15"]
    results = active.main(flags + ["--max-epochs", "1", "--out", str(out)])
    assert "split: by specimen" in capsys.readouterr().out
    written = json.loads((out / "results.json").read_text())
    assert written["split"] == "specimen" == written["derived"]["split"] and written["test_specimens"]
    assert written["specimen_accuracy"] is not None and len(written["specimen_results"]) == len(
        written["test_specimens"]
    )
    rows = list(csv.DictReader((out / "labeled.csv").open()))
    assert len(rows) == results["budget"] and all(row["specimen"] for row in rows)
    assert not {row["specimen"] for row in rows} & set(
        written["test_specimens"]
    )  # nothing labeled from a test specimen
    assert torch.load(out / "model.pt", weights_only=True)["derived"]["test_specimens"] == written["test_specimens"]
    with pytest.raises(SystemExit, match="was made without --split, not with --split cells"):
        active.main(flags + ["--max-epochs", "1", "--out", str(out), "--resume", "--split", "cells"])


def test_evaluate_classes_scores_a_five_class_checkpoint_on_six_class_data(pretrained, tmp_path):
    write_cells(tmp_path / "six", {"Homogeneous": {"a": 3}, "Centromere": {"b": 3}, "Golgi": {"c": 3}})
    flags = ["--checkpoint", str(pretrained), "--data", str(tmp_path / "six"), "--device", "cpu", "--json"]
    with pytest.raises(SystemExit, match="also has golgi; evaluate the classes it knows with --classes"):
        evaluate.main(flags)
    metrics = evaluate.main(flags + ["--classes", "homogeneous", "centromere", "--png", str(tmp_path / "c.png")])
    assert metrics["count"] == 6
    assert {name for name, value in metrics["per_class"].items() if value is not None} == {"homogeneous", "centromere"}
    with pytest.raises(SystemExit, match="--classes: the model does not know golgi"):
        evaluate.main(flags + ["--classes", "golgi"])


def test_specimen_vote_on_hand_made_predictions():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    predictions = torch.tensor([0, 1, 0, 0, 0, 1, 1])  # a: 2 of 3 right -> 0; b: two each way -> tie, lower index 0
    vote = evaluate.specimen_vote(labels, predictions, ["a", "a", "a", "b", "b", "b", "b"], 2)
    assert [row["predicted"] for row in vote["specimens"]] == [0, 0]
    assert vote["specimen_accuracy"] == 0.5 and vote["specimen_count"] == 2
    assert vote["specimens"][0]["vote_share"] == pytest.approx(2 / 3)


def test_campaign_holds_out_whole_specimens(pretrained, tmp_path):
    pool = tmp_path / "pool"
    rows = write_cells(pool, {".": {f"s{i}": 3 for i in range(6)}})
    write_specimens_csv(pool / "specimens.csv", [(file.removeprefix("./"), specimen) for file, specimen in rows])
    folder = tmp_path / "campaign"
    flags = ["--pool", str(pool), "--checkpoint", str(pretrained), "--n", "18", "--out", str(folder)]
    campaign.main(["query"] + flags + ["--holdout", "0.5", "--max-epochs", "1", "--device", "cpu"])
    state = json.loads((folder / "campaign.json").read_text())
    assert len(state["specimens"]) == 18 and set(state["specimens"].values()) == {f"s{i}" for i in range(6)}
    query = folder / "round-000.csv"
    filled = list(csv.DictReader(query.open()))
    for row in filled:
        row["label"] = ["homogeneous", "golgi"][int(state["specimens"][row["file"]][1:]) % 2]
    with query.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(filled[0]))
        writer.writeheader()
        writer.writerows(filled)
    campaign.main(["ingest", str(folder), "--device", "cpu"])
    history = json.loads((folder / "campaign.json").read_text())["history"][0]
    assert history["held_out"] % 3 == 0 and 0 < history["held_out"] < 18  # whole specimens of 3 cells each


def test_development_split_never_touches_the_test_specimens(pretrained, tmp_path, capsys):
    layout = {"Homogeneous": {f"h{i}": 3 for i in range(6)}, "Golgi": {f"g{i}": 3 for i in range(6)}}
    root = tmp_path / "six"
    root.mkdir()
    write_specimens_csv(root / "specimens.csv", write_cells(root, layout))
    flags = ["--data", str(root), "--checkpoint", str(pretrained), "--device", "cpu", "--limit", "0.5"]
    results = active.main(flags + ["--max-epochs", "1", "--development", "--out", str(tmp_path / "dev")])
    assert "dev pool" in capsys.readouterr().out and results["development"]
    dataset = load_dataset(root, cache=False)
    pool, test = splits.split_dataset(dataset, "specimen", [0.8, 0.2], 0, ["pool", "test"])
    real_test = set(splits.specimens_of(dataset, test))
    assert not real_test & set(results["test_specimens"])  # the development test comes from the pool
    rows = list(csv.DictReader((tmp_path / "dev" / "labeled.csv").open()))
    assert not real_test & {row["specimen"] for row in rows}
    assert results["test"] + results["pool"] == len(pool)
    metrics = evaluate.main(["--checkpoint", str(tmp_path / "dev" / "model.pt"), "--device", "cpu", "--json"])
    assert metrics["count"] == results["test"] and metrics["mca"] == pytest.approx(results["mca"])
