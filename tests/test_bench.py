import json

import pytest
from conftest import TINY

import active
from lab import bench


def test_bench_quick_prints_a_table_and_a_speedup(pretrained, capsys):
    result = bench.main(["--quick", "--checkpoint", str(pretrained), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] == f"speedup: {result['speedup']:.1f}x"
    assert "fine-tune img/s" in printed and "score img/s" in printed
    assert result["speedup"] > 0


def test_bench_levers_time_every_lever_against_float32(capsys):
    result = bench.main(["--levers", "--quick", "--device", "cpu"])
    rows = dict(result["rows"])
    assert set(bench.LEVERS) <= set(rows)
    assert "(1.00x)" in rows["float32 (--float32)"]  # every other row is a ratio to this one
    assert rows["torch.compile"].startswith("skipped")  # compiling takes a minute: not under --quick
    assert (
        float(rows["cache: channels_last (today)"].split()[0]) > 0
        and "(1.00x)" in rows["cache of the frozen layers: NCHW"]
    )
    measured = [value for name, value in result["rows"] if value.startswith("fine-tune")]
    assert len(measured) >= len(bench.LEVERS) - 2
    assert all(float(value.split()[1]) > 0 for value in measured)  # "fine-tune N img/s ..."
    assert "float32 (again)" in capsys.readouterr().out


def test_bench_curve_plots_a_run_and_gives_its_rates(pretrained, tmp_path):
    out = tmp_path / "run"
    rounds = ["--fractions", "0.2", "0.3"]
    active.main(TINY + ["--checkpoint", str(pretrained), "--synthetic-cells", "120", "--limit", "0.5", *rounds,
                        "--max-epochs", "2", "--out", str(out)])  # fmt: skip
    rounds = json.loads((out / "results.json").read_text())["rounds"]
    rows = dict(bench.main(["--curve", str(out)])["rows"])
    seen = sum(r["epochs"] * r["labeled"] for r in rounds)
    rate = float(rows["fine-tuning rate (epochs x labeled / s)"].split()[0])
    assert rate == pytest.approx(seen / sum(r["train_seconds"] for r in rounds), abs=0.5)
    assert rows["rounds"].startswith(f"{len(rounds)},") and (out / "round_times.png").stat().st_size > 1000
    assert [r["scored"] for r in rounds] == [0] + [json.loads((out / "results.json").read_text())["pool"] - r["labeled"]
                                                   for r in rounds[:-1]]  # fmt: skip
    rate = float(rows["scoring rate (unlabeled pool / s)"].split()[0])
    assert rate == pytest.approx(sum(r["scored"] for r in rounds) / sum(r["score_seconds"] for r in rounds), rel=0.01)
    (out / "results.json").unlink()  # an unfinished run: the rounds come from state.pt
    assert dict(bench.main(["--curve", str(out)])["rows"])["rounds"] == rows["rounds"]
    with pytest.raises(SystemExit, match="--curve"):
        bench.main(["--curve", str(tmp_path / "nothing")])
