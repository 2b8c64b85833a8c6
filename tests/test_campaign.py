"""A labeling campaign with a person in the loop, the person played by a script that knows the true labels."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import data
from lab import campaign, layouts, synthetic


@pytest.fixture()
def pool(tmp_path):
    """40 synthetic target cells saved as PNG files, and their true classes."""
    folder = tmp_path / "pool"
    folder.mkdir()
    rng = np.random.default_rng(5)
    truth = {}
    for index in range(40):
        name = data.TARGET_CLASSES[index % 6]
        cell = synthetic.synthetic_cell(name, rng)
        Image.fromarray((cell * 255).astype(np.uint8)).save(folder / f"cell{index:03d}.png")
        truth[f"cell{index:03d}.png"] = name
    return folder, truth


def fill(csv_path, truth, leave_empty=0, skip=0, overrides=None):
    rows = list(csv.DictReader(csv_path.open()))
    for number, row in enumerate(rows):
        if number < leave_empty:
            continue
        row["label"] = "skip" if number < leave_empty + skip else truth[row["file"]].upper()  # case-insensitive
    for number, label in (overrides or {}).items():
        rows[number]["label"] = label
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def start_campaign(tmp_path, pool, pretrained, name):
    folder = tmp_path / name
    campaign.main(
        [
            "query",
            "--pool",
            str(pool),
            "--checkpoint",
            str(pretrained),
            "--n",
            "8",
            "--out",
            str(folder),
            "--max-epochs",
            "3",
            "--device",
            "cpu",
        ]
    )
    return folder


def three_rounds(folder, truth):
    for round_index in range(3):
        csv_path = folder / f"round-{round_index:03d}.csv"
        # round 1 is half-filled (2 rows left for later) and has one cell the annotator cannot judge
        fill(csv_path, truth, leave_empty=2 if round_index == 1 else 0, skip=1 if round_index == 1 else 0)
        campaign.main(["ingest", str(folder), "--device", "cpu"])


def test_campaign_round_trip_with_a_kill_mid_ingest(pretrained, pool, tmp_path, monkeypatch, capsys):
    pool_dir, truth = pool
    reference = start_campaign(tmp_path, pool_dir, pretrained, "reference")
    three_rounds(reference, truth)

    folder = start_campaign(tmp_path, pool_dir, pretrained, "killed")
    first = list(csv.DictReader((folder / "round-000.csv").open()))
    assert len(first) == 8 and first[0].keys() >= {"file", "entropy", "first", "p_first", "second", "p_second", "label"}
    assert (folder / "round-000.png").stat().st_size > 5000  # the contact sheet
    fill(folder / "round-000.csv", truth)
    before = (folder / "campaign.json").read_text()
    real_fine_tune = campaign.fine_tune

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(campaign, "fine_tune", killed)
    with pytest.raises(SystemExit, match="^interrupted: .* run the same command to continue"):  # no traceback
        campaign.main(["ingest", str(folder), "--device", "cpu"])
    assert (folder / "campaign.json").read_text() == before  # the killed step left the campaign as it was
    monkeypatch.setattr(campaign, "fine_tune", real_fine_tune)
    campaign.main(["ingest", str(folder), "--device", "cpu"])  # rerun the step
    for round_index in (1, 2):
        fill(
            folder / f"round-{round_index:03d}.csv",
            truth,
            leave_empty=2 if round_index == 1 else 0,
            skip=1 if round_index == 1 else 0,
        )
        campaign.main(["ingest", str(folder), "--device", "cpu"])

    state, expected = (json.loads((f / "campaign.json").read_text()) for f in (folder, reference))
    assert state["ledger"] == expected["ledger"]
    model, expected_model = (
        torch.load(f / "export" / "model.pt", weights_only=True)["model"] for f in (folder, reference)
    )
    assert all(torch.equal(model[key], expected_model[key]) for key in model)
    # the ledger: 8 + 5 (+1 skip) + 8 labels, every one true; round 2 asked the 2 unfilled cells again + 6 new ones
    labels = [entry for entry in state["ledger"] if entry["label"] != "skip"]
    assert len(labels) == 8 + 5 + 8 and all(truth[e["file"]] == e["label"] for e in labels)
    assert len({entry["file"] for entry in state["ledger"]}) == len(state["ledger"])
    round_two = [e["file"] for e in state["ledger"] if e["round"] == 2]
    unfilled = [row["file"] for row in list(csv.DictReader((folder / "round-001.csv").open()))[:2]]
    assert set(unfilled) <= set(round_two)
    # export: a CSV that train.py --data reads, and a checkpoint evaluate.py reads
    exported = layouts.load_dataset(folder / "export", cache=False)
    assert len(exported) == len(labels)
    capsys.readouterr()
    campaign.main(["status", str(folder)])
    printed = capsys.readouterr().out
    assert "round 3" in printed and "skip 1" in printed and "held-out" in printed
    # each round's history says how its training ended: the kept epoch within those run, its loss finite
    for entry in state["history"]:
        assert 1 <= entry["kept_epoch"] <= entry["epochs"] <= 3 and entry["training_loss"] >= 0
        assert f"kept {entry['kept_epoch']} at loss {entry['training_loss']:.4f}" in printed


@pytest.mark.parametrize(
    "problem, message",
    [
        ({0: "banana"}, "unknown class 'banana'; expected one of homogeneous"),
        ("duplicate", "appears twice"),
        ("missing", "missing from the CSV"),
        ("changed", "changed since it was queried"),
        ("empty", "no label filled in"),
    ],
)
def test_bad_filled_csvs_get_clear_errors(pretrained, pool, tmp_path, problem, message):
    pool_dir, truth = pool
    folder = start_campaign(tmp_path, pool_dir, pretrained, "bad")
    csv_path = folder / "round-000.csv"
    rows = fill(csv_path, truth, overrides=problem if isinstance(problem, dict) else None)
    lines = csv_path.read_text().splitlines()
    if problem == "duplicate":
        csv_path.write_text("\n".join(lines + [lines[1]]) + "\n")
    elif problem == "missing":
        csv_path.write_text("\n".join(lines[:-1]) + "\n")
    elif problem == "changed":
        Image.fromarray(np.zeros((70, 70), np.uint8)).save(pool_dir / rows[0]["file"])
    elif problem == "empty":
        fill(csv_path, truth, overrides={number: "" for number in range(8)})
    before = (folder / "campaign.json").read_text()
    with pytest.raises(SystemExit) as exit_info:
        campaign.main(["ingest", str(folder), "--device", "cpu"])
    assert str(exit_info.value).startswith("error: ") and message in str(exit_info.value)
    assert (folder / "campaign.json").read_text() == before


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16", "utf-8-sig"])
def test_a_query_saved_by_a_spreadsheet_program_ingests(pretrained, pool, tmp_path, encoding):
    """Semicolons (European locales), trailing empty rows and the encodings spreadsheet programs write."""
    pool_dir, truth = pool
    folder = start_campaign(tmp_path, pool_dir, pretrained, encoding)
    query = folder / "round-000.csv"
    rows = fill(query, truth)
    lines = [";".join(rows[0])] + [";".join(row.values()) for row in rows] + [";;;;;;;;", ";;;;;;;;"]
    query.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    state = campaign.main(["ingest", str(folder), "--device", "cpu"])
    assert len(state["ledger"]) == 8 and {entry["label"] for entry in state["ledger"]} <= set(truth.values())
