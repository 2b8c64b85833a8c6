"""Smoke test on a few hundred real HEp-2 cells from ../shared/data/i3a (skipped when the folder is absent)."""

import pytest
import torch
from conftest import I3A

import active
import evaluate
import train

pytestmark = pytest.mark.skipif(not I3A.is_dir(), reason="../shared/data/i3a is not here")


@pytest.fixture(scope="module")
def few_real_cells(tmp_path_factory):
    """40 cells of each of the six classes, spread over the class's specimens, linked (not copied) into a
    class-folder tree with the matching rows of the real specimens.csv."""
    root = tmp_path_factory.mktemp("i3a-subset")
    listed = (I3A / "specimens.csv").read_text().splitlines()
    kept = []
    for folder in sorted(p for p in I3A.iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        cells = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_Mask"))
        cells = cells[:: len(cells) // 40][:40]
        kept += [f"{folder.name}/{cell.name}" for cell in cells]
        for cell in cells:
            (root / folder.name / cell.name).symlink_to(cell)
            mask = cell.with_name(cell.stem + "_Mask.png")
            if mask.exists():
                (root / folder.name / mask.name).symlink_to(mask)
    wanted = set(kept)
    (root / "specimens.csv").write_text("\n".join([listed[0]] + [r for r in listed[1:] if r.split(",")[0] in wanted]))
    return root


def test_train_evaluate_and_active_on_real_cells(few_real_cells, tmp_path, monkeypatch):
    monkeypatch.setenv("HEP2_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "real.pt"
    result = train.main(
        [
            "--data",
            str(few_real_cells),
            "--max-epochs",
            "2",
            "--rotations",
            "1",
            "--device",
            "cpu",
            "--out",
            str(checkpoint),
        ]
    )
    made = torch.load(checkpoint, weights_only=True)["derived"]  # what the run derived from its data
    assert made["split"] == "specimen" and made["test_specimens"]
    assert result["metrics"]["test"]["specimen_count"] == len(made["test_specimens"])
    metrics = evaluate.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(few_real_cells),
            "--json",
            "--device",
            "cpu",
            "--png",
            str(tmp_path / "c.png"),
        ]
    )
    assert (
        metrics["count"] == 240
        and metrics["specimen_count"] >= 30
        and set(metrics["per_class"])
        == {
            "homogeneous",
            "speckled",
            "nucleolar",
            "centromere",
            "nuclear_membrane",
            "golgi",
        }
    )
    # The same real cells as an active-learning target, fine-tuning the checkpoint just made.
    results = active.main(
        [
            "--data",
            str(few_real_cells),
            "--checkpoint",
            str(checkpoint),
            "--limit",
            "0.5",
            "--max-epochs",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert results["labeled"] == results["budget"] == 96


def test_a_new_slide_folder_by_specimen_gets_the_calls_its_evaluation_votes(few_real_cells, tmp_path, monkeypatch):
    """#51: the test side's cells laid out by specimen (DIR/<specimen>/<cells>) and classified with --predict: each
    specimen's call is the vote that evaluating the same checkpoint on its labeled test side reports."""
    monkeypatch.setenv("HEP2_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "real.pt"
    common = ["--device", "cpu"]
    flags = ["--data", str(few_real_cells), "--max-epochs", "2", "--rotations", "1", "--out", str(checkpoint)]
    train.main(flags + common)
    metrics = evaluate.main(["--checkpoint", str(checkpoint), "--json", "--png", str(tmp_path / "c.png")] + common)
    voted = {row["specimen"]: row["predicted"] for row in metrics["specimens"]}
    of_file = dict(line.split(",") for line in (few_real_cells / "specimens.csv").read_text().splitlines()[1:])
    slide = tmp_path / "slide"
    for file, specimen in of_file.items():
        if specimen in voted:  # the test side's specimens only, each a subfolder
            (slide / specimen).mkdir(parents=True, exist_ok=True)
            (slide / specimen / file.replace("/", "-")).symlink_to(few_real_cells / file)
    calls = evaluate.main(["--checkpoint", str(checkpoint), "--predict", str(slide), "--out", str(tmp_path / "p.csv")]
                          + common)  # fmt: skip
    assert {row["specimen"]: row["call"] for row in calls} == voted and len(voted) >= 5
    assert sum(row["cells"] for row in calls) == metrics["count"]
    assert (tmp_path / "p-specimens.csv").read_text().count("\n") == len(voted) + 1
