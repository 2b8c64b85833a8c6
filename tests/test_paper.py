"""--paper: the paper's settings in one flag (lab/recipe.PAPER), the same as its flags typed out."""

import shlex

import pytest
import torch
from conftest import TINY, fails

import active
import train
from lab import recipe

TYPED_OUT = shlex.split(recipe.paper_flags())  # --normalize none --float32 --max-epochs 1000 ... --batchnorm running


def parsed(script, argv):
    parser = script.build_parser()
    args = parser.parse_args(argv)
    recipe.paper_settings(args, parser, recipe.PRETRAINING if script is train else tuple(recipe.PAPER))
    return {key: value for key, value in vars(args).items() if key != "paper"}


def test_paper_sets_every_departure_to_the_papers_value():
    assert parsed(active, ["--paper"]) == parsed(active, TYPED_OUT)
    assert parsed(active, ["--paper"]) != parsed(active, [])  # the defaults depart from the paper
    assert set(recipe.PAPER) <= set(vars(active.build_parser().parse_args([])))
    assert parsed(train, ["--paper"]) == parsed(train, shlex.split(recipe.paper_flags(recipe.PRETRAINING)))
    for word in TYPED_OUT:  # --help says what --paper sets
        assert word in " ".join(active.build_parser().format_help().split())


def test_paper_refuses_a_flag_that_contradicts_it(tmp_path):
    fails(active.main, TINY + ["--paper", "--max-epochs", "5", "--out", str(tmp_path / "a")],
          "--max-epochs 5", "--paper sets --max-epochs 1000")
    fails(train.main, TINY + ["--paper", "--normalize", "max", "--out", str(tmp_path / "p.pt")], "--paper")


def test_paper_needs_the_papers_pretraining(pretrained, tmp_path):
    """A pretrained run prepares its cells as its checkpoint's were: --paper on a stretched checkpoint is refused."""
    fails(active.main, TINY + ["--paper", "--checkpoint", str(pretrained), "--out", str(tmp_path / "a")],
          "--paper", "python train.py --paper")


@pytest.mark.parametrize("case", [["--scratch"], []])
def test_a_paper_run_is_the_run_of_its_flags_typed_out(case, tmp_path, monkeypatch):
    """End to end: the same labeled cells in the same order, the same metrics, the same weights. The paper's rule
    has no cap on epochs; on tiny cells whose loss keeps falling it would run to NO_CAP, so the test lowers it."""
    monkeypatch.setitem(recipe.PAPER, "max_epochs", 4)
    typed_out = shlex.split(recipe.paper_flags())
    pretraining = []
    if not case:  # IN-AL: pretrained with train.py --paper
        out = tmp_path / "paper.pt"
        train.main(TINY + ["--paper", "--synthetic-cells", "60", "--rotations", "2", "--out", str(out)])
        pretraining = ["--checkpoint", str(out)]
    common = TINY + case + pretraining + ["--synthetic-cells", "120", "--limit", "0.5", "--fractions", "0.17"]
    common += ["0.21"]  # a seed set of 8, then rounds of 10 (tests/test_active.py's SMALL_ROUNDS)
    paper = active.main(common + ["--paper", "--out", str(tmp_path / "paper")])
    assert "--max-epochs" in typed_out
    typed = active.main(common + typed_out + ["--out", str(tmp_path / "typed")])
    assert (tmp_path / "paper" / "labeled.csv").read_bytes() == (tmp_path / "typed" / "labeled.csv").read_bytes()
    assert paper["mca"] == typed["mca"] and paper["confusion"] == typed["confusion"]
    assert paper["derived"]["precision"] == "float32" and paper["derived"]["normalize"] == "none"
    weights = [torch.load(tmp_path / name / "model.pt", weights_only=True)["model"] for name in ("paper", "typed")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
