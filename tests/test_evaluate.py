import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import active
import evaluate
from evaluate import confusion_matrix, mca_aca
from lab import synthetic


def test_mca_aca_on_a_hand_built_confusion_matrix():
    # rows true, columns predicted:  class 0: 8 of 10 right; class 1: 1 of 2 right; class 2: 3 of 4 right
    confusion = [[8, 2, 0], [1, 1, 0], [0, 1, 3]]
    y_true = [i for i, row in enumerate(confusion) for j, n in enumerate(row) for _ in range(n)]
    y_pred = [j for i, row in enumerate(confusion) for j, n in enumerate(row) for _ in range(n)]
    assert confusion_matrix(torch.tensor(y_true), torch.tensor(y_pred), 3).tolist() == confusion
    mca, aca = mca_aca(y_true, y_pred, 3)
    assert mca == pytest.approx((0.8 + 0.5 + 0.75) / 3)
    assert aca == pytest.approx(12 / 16)


def test_class_without_test_samples_is_left_out_of_mca():
    y_true, y_pred = [0, 0, 1, 1], [0, 2, 1, 1]  # class 2 is predicted once but has no samples
    mca, aca = mca_aca(y_true, y_pred, 3)
    assert mca == pytest.approx((0.5 + 1.0) / 2)
    assert aca == pytest.approx(0.75)


def test_evaluate_cli_agrees_with_training(pretrained, tmp_path, capsys):
    checkpoint = torch.load(pretrained, weights_only=True)
    png = tmp_path / "confusion.png"
    metrics = evaluate.main(["--checkpoint", str(pretrained), "--json", "--png", str(png), "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"] == "test" and printed["mca"] == pytest.approx(metrics["mca"])
    assert metrics["mca"] == pytest.approx(checkpoint["metrics"]["test"]["mca"])  # same split, same model, same numbers
    assert metrics["aca"] == pytest.approx(checkpoint["metrics"]["test"]["aca"])
    assert Image.open(png).size[0] > 300


def test_predict_folder_writes_probabilities_and_entropy(pretrained, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "cells").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "cells" / f"cell{i}.png")
    out = tmp_path / "predictions.csv"  # beside the folder: never inside one the command reads (#63)
    folder = str(tmp_path / "cells")
    evaluate.main(["--checkpoint", str(pretrained), "--predict", folder, "--out", str(out), "--device", "cpu"])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3
    probabilities = [float(v) for k, v in rows[0].items() if k.startswith("p_")]
    assert len(probabilities) == 5 and sum(probabilities) == pytest.approx(1, abs=1e-4)
    assert 0 <= float(rows[0]["entropy"]) <= np.log(5) + 1e-6


def test_checkpoint_classes_must_cover_the_data(pretrained, tmp_path, capsys):
    for folder in ["Golgi", "Homogeneous"]:
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / folder / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", str(pretrained), "--data", str(tmp_path), "--device", "cpu"])
    assert "also has golgi" in str(exit_info.value)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", str(tmp_path / "nope.pt")])
    assert "no such file" in str(exit_info.value)
    (tmp_path / "evil.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", str(tmp_path / "evil.pt")])
    assert "not a readable checkpoint" in str(exit_info.value)


def test_evaluate_imports_nothing_from_active():
    """evaluate.py is the metrics and inference that active.py builds on: importing it must not import the loop."""
    code = "import sys, evaluate; sys.exit('active' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(evaluate.__file__).parent).returncode == 0


def test_predictions_entropy_is_the_loops_entropy(pretrained, tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    dataset = synthetic.synthetic_dataset("source", 10, seed=3, image_size=32)
    for index, image in enumerate(dataset.images):
        Image.fromarray(image.squeeze(0).numpy()).save(folder / f"cell{index}.png")
    rows = evaluate.main(["--checkpoint", str(pretrained), "--predict", str(folder), "--out", str(tmp_path / "p.csv")])
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    probabilities = torch.tensor([[float(row[key]) for key in row if key.startswith("p_")] for row in table])
    assert torch.allclose(torch.tensor([row["entropy"] for row in rows]), active.entropy(probabilities), atol=1e-4)
