import pytest
import torch
from conftest import TINY

import train


def test_train_cli_writes_a_checkpoint_dict(pretrained, capsys):
    checkpoint = torch.load(pretrained, weights_only=True)
    assert {"model", "class_names", "args", "epoch", "metrics"} <= set(checkpoint)
    assert checkpoint["class_names"] == ["homogeneous", "coarse_speckled", "fine_speckled", "nucleolar", "centromere"]
    assert 0 <= checkpoint["metrics"]["val"]["mca"] <= 1 and "test" in checkpoint["metrics"]
    assert (pretrained.parent / "pretrained-confusion.png").exists()  # named after --out


def test_train_resumes_and_stops_early(tmp_path, capsys):
    out = tmp_path / "p.pt"
    args = TINY + ["--synthetic-cells", "40", "--rotations", "1", "--out", str(out)]
    train.main(args + ["--max-epochs", "1"])
    capsys.readouterr()
    result = train.main(args + ["--max-epochs", "3", "--resume"])
    printed = capsys.readouterr().out
    assert "resumed" in printed and "epoch   1" not in printed and "epoch   2" in printed
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    result = train.main(args + ["--max-epochs", "50", "--patience", "1", "--resume"])
    last = result["history"][-1]["epoch"]
    assert last < 50  # stopped by patience: the validation loss did not improve for 1 epoch


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-epochs", "0"], "--max-epochs 0"),
        (["--val-fraction", "0.9", "--test-fraction", "0.2"], "--val-fraction"),
        (["--classes", "banana"], "unknown class 'banana'"),
        (["--data", "/nonexistent/cells"], "no such file or folder"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--max-epochs", "-1"], "--"),
    ],
)
def test_train_bad_flags_exit_with_one_line(flags, message, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        train.main(TINY[:2] + ["--synthetic-cells", "40", "--out", str(tmp_path / "x.pt")] + flags)
    text = str(exit_info.value)
    assert text.startswith("error: ") and message in text and "\n" not in text


def test_default_preprocessing_is_the_percentile_stretch(pretrained):
    """The recipe chosen on unseen specimens' development split; --normalize none is the paper's literal reading."""
    import active

    assert torch.load(pretrained, weights_only=True)["derived"]["normalize"] == "percentile"
    assert active.build_parser().parse_args([]).normalize == "percentile"
    assert train.build_parser().parse_args(["--normalize", "none"]).normalize == "none"
