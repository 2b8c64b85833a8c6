import csv
import json
import math

import pytest
import torch
from conftest import TINY, fails

import active
import data
import evaluate
from active import entropy, least_confidence, margin, round_sizes, select_most_uncertain
from evaluate import predict_probabilities
from lab import devices, recipe, records, splits, synthetic
from lab.runs import network_from_checkpoint
from model import ParallelResNet, transfer

# With 120 synthetic cells at --limit 0.5 the budget is 48: a seed set of 8, then rounds of 10.
SMALL_ROUNDS = ["--fractions", "0.17", "0.21"]

UNIFORM = torch.full((1, 4), 0.25)
ONE_HOT = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
WITH_ZEROS = torch.tensor([[0.5, 0.5, 0.0, 0.0]])


def test_entropy_on_hand_made_probabilities():
    scores = entropy(torch.cat([UNIFORM, ONE_HOT, WITH_ZEROS]))
    assert torch.isfinite(scores).all()
    assert scores.tolist() == pytest.approx([math.log(4), 0.0, math.log(2)])


def test_least_confidence_and_margin():
    probabilities = torch.cat([UNIFORM, ONE_HOT, WITH_ZEROS, torch.tensor([[0.7, 0.2, 0.1, 0.0]])])
    assert least_confidence(probabilities).tolist() == pytest.approx([0.75, 0.0, 0.5, 0.3])
    assert margin(probabilities).tolist() == pytest.approx([1.0, 0.0, 1.0, 0.5])


def test_select_most_uncertain_takes_the_top_m():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0])
    assert select_most_uncertain(scores, 3).tolist() == [1, 3, 2]


def test_round_sizes_follow_the_paper():
    sizes = round_sizes(50758, 0.2)  # Sec. 3.1: budget 10,152, k = 1500 (15%), m = 1000 (10%)
    assert sum(sizes) == 10152 and sizes[0] == round(0.15 * 10152) and sizes[1] == round(0.10 * 10152)
    assert sizes[-1] <= sizes[1] and all(size > 0 for size in sizes)
    assert round_sizes(1000, 0.2, k_fraction=0.15, m_fraction=0.25) == [30, 50, 50, 50, 20]
    assert round_sizes(1000, 0.2, k_fraction=0.5) == [100, 20, 20, 20, 20, 20]  # k = half the budget of 200
    assert round_sizes(1000, 0.2, m_fraction=0.05) == [30] + [10] * 17  # m = 5% of the budget of 200
    assert round_sizes(1000, 0.2, strategy="random") == [200]
    assert sum(round_sizes(7, 1.0)) == 7


def run_active(tmp_path, name, extra, pretrained=None):
    out = tmp_path / name
    args = TINY + ["--synthetic-cells", "120", "--limit", "0.5", "--max-epochs", "2", "--out", str(out)] + extra
    if pretrained is not None:
        args += ["--checkpoint", str(pretrained)]
    return active.main(args), out


@pytest.mark.parametrize(
    "extra, case",
    [
        (["--scratch", "--strategy", "random"], "rs"),
        (["--scratch"], "al"),
        (["--strategy", "random"], "in-rs"),
        ([], "in-al"),
    ],
)
def test_four_cases_end_to_end(pretrained, tmp_path, extra, case):
    results, out = run_active(tmp_path, case, extra, None if "--scratch" in extra else pretrained)
    assert results["case"] == case
    written = json.loads((out / "results.json").read_text())
    pool, budget = written["pool"], written["budget"]
    assert budget == round(0.5 * pool) == written["labeled"]
    rows = list(csv.DictReader((out / "labeled.csv").open()))
    indices = [int(row["index"]) for row in rows]
    assert len(indices) == len(set(indices)) == budget  # the budget exactly, nobody twice
    assert (out / "model.pt").exists() and (out / "confusion.png").exists()
    # the test split is never labeled
    dataset = synthetic.synthetic_dataset("target", 120, seed=0, image_size=32)
    _, test = splits.stratified_split(dataset.labels, [0.8, 0.2], 0)
    assert not set(indices) & set(test.tolist())
    rounds = written["rounds"]
    if "random" in extra:
        assert len(rounds) == 1 and {row["reason"] for row in rows} == {"random"}
    else:
        assert [r["labeled"] for r in rounds] == list(torch.tensor(round_sizes(pool, 0.5)).cumsum(0).tolist())
        assert rows[-1]["reason"].startswith("entropy=") and rows[0]["reason"] == "random"
    assert all(0 <= r["mca"] <= 1 and sum(r["queried"].values()) > 0 for r in rounds)
    assert all(1 <= r["epochs"] <= 10 for r in rounds)  # --max-epochs 10 at most, by default
    # evaluate.py on the run's model, by default on the run's own test split, gives the same numbers
    metrics = evaluate.main(["--checkpoint", str(out / "model.pt"), "--json", "--png", str(tmp_path / "e.png")])
    assert metrics["split"] == "test" and metrics["mca"] == pytest.approx(results["mca"])


def test_k_and_m_fractions_set_the_seed_set_and_rounds_as_shares_of_the_budget(pretrained, tmp_path):
    results, out = run_active(tmp_path, "half", ["--fractions", "0.5", "0.25"], pretrained)
    rows = list(csv.DictReader((out / "labeled.csv").open()))
    seed_set = [row for row in rows if row["reason"] == "random"]
    assert len(seed_set) == results["rounds"][0]["labeled"] == round(0.5 * results["budget"])
    assert [r["labeled"] for r in results["rounds"]] == list(
        torch.tensor(round_sizes(results["pool"], 0.5, k_fraction=0.5, m_fraction=0.25)).cumsum(0).tolist()
    )


@pytest.mark.parametrize("strategy", ["least-confidence", "margin"])
def test_other_uncertainty_strategies_end_to_end(pretrained, tmp_path, strategy):
    results, out = run_active(tmp_path, strategy, SMALL_ROUNDS + ["--strategy", strategy], pretrained)
    assert results["case"] == f"in-{strategy}"
    rows = list(csv.DictReader((out / "labeled.csv").open()))
    chosen = [row for row in rows if row["round"] != "0"]
    assert chosen and all(row["reason"].startswith(f"{strategy}=") for row in chosen)
    for round_index in {row["round"] for row in chosen}:  # each round labels its most uncertain first (Eq. 4, 5)
        scores = [float(row["reason"].split("=")[1]) for row in chosen if row["round"] == round_index]
        assert scores == sorted(scores, reverse=True) and all(0 <= score <= 1 for score in scores)


def test_fine_tuning_leaves_the_frozen_layers_alone(pretrained, tmp_path):
    results, out = run_active(tmp_path, "frozen", SMALL_ROUNDS, pretrained)
    before = torch.load(pretrained, weights_only=True)["model"]
    after = torch.load(out / "model.pt", weights_only=True)["model"]
    frozen = [key for key in before if ".early." in key]
    assert frozen and all(torch.equal(before[key], after[key]) for key in frozen)  # running stats included
    assert not torch.equal(before["final_block.conv1.weight"], after["final_block.conv1.weight"])


def test_batchnorm_recalibration_makes_eval_mode_match_the_batch_statistics():
    torch.manual_seed(0)
    model = ParallelResNet(6)
    images = torch.randint(0, 256, (48, 1, 32, 32), dtype=torch.uint8)
    forward = recipe.forward_fn(model, images, None, torch.device("cpu"))
    for layer in model.modules():  # running statistics far from the truth, as after a lagging average
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.fill_(3.0)
            layer.running_var.fill_(0.01)
    labeled = torch.arange(48)
    model.eval()
    with torch.no_grad():
        stale = forward(labeled)
    model.train()
    with torch.no_grad():
        batch_statistics = forward(labeled)  # one batch: train mode normalises with its own statistics
    recipe.recalibrate_batchnorm(model, forward, labeled, batch_size=64)
    assert not model.training
    with torch.no_grad():
        recalibrated = forward(labeled)
    # eval mode now reproduces the batch-statistics forward (up to the unbiased-variance factor n/(n-1))
    assert torch.allclose(recalibrated, batch_statistics, atol=1e-2)
    assert (stale - batch_statistics).abs().max() > 0.1
    momenta = {layer.momentum for layer in model.modules() if isinstance(layer, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}  # training afterwards uses the usual running average again


def test_batchnorm_recalibration_averages_every_whole_batch():
    torch.manual_seed(0)
    model = ParallelResNet(6)
    images = torch.randint(0, 256, (70, 1, 32, 32), dtype=torch.uint8)
    forward = recipe.forward_fn(model, images, None, torch.device("cpu"))
    first_bn = next(layer for layer in model.modules() if isinstance(layer, torch.nn.BatchNorm2d))
    seen = []
    hook = first_bn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].mean(dim=(0, 2, 3))))
    recipe.recalibrate_batchnorm(model, forward, torch.arange(70), batch_size=16)
    hook.remove()
    assert len(seen) == 4  # 70 cells: four whole batches of 16, the last 6 left out
    assert torch.allclose(first_bn.running_mean, torch.stack(seen).mean(dim=0), atol=1e-5)


def test_resume_after_a_kill_between_rounds_matches_an_uninterrupted_run(pretrained, tmp_path, monkeypatch, capsys):
    whole, whole_dir = run_active(tmp_path, "whole", SMALL_ROUNDS, pretrained)
    real_fine_tune, calls = active.fine_tune, []

    def killed_in_round_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed after round 1's state was written
        return real_fine_tune(*args, **kwargs)

    monkeypatch.setattr(active, "fine_tune", killed_in_round_3)
    with pytest.raises(SystemExit, match="^interrupted: .* with --resume"):  # Ctrl-C: one line, how to go on
        run_active(tmp_path, "killed", SMALL_ROUNDS, pretrained)
    monkeypatch.setattr(active, "fine_tune", real_fine_tune)
    killed_dir = tmp_path / "killed"
    assert torch.load(killed_dir / "state.pt", weights_only=True)["round"] == 1
    for other in (["--limit", "0.3"], ["--max-epochs", "3"], ["--batch-size", "8"], ["--stop-weights", "last"]):
        with pytest.raises(SystemExit) as exit_info:  # a resume that would run otherwise is refused, in one line
            run_active(tmp_path, "killed", SMALL_ROUNDS + ["--resume"] + other, pretrained)
        assert str(exit_info.value).startswith("error: --resume") and other[0] in str(exit_info.value)
    capsys.readouterr()
    resumed, _ = run_active(tmp_path, "killed", SMALL_ROUNDS + ["--resume", "--device", "cpu"], pretrained)
    assert "after round 1 (" in capsys.readouterr().out  # the same numbering as the round lines
    assert (killed_dir / "labeled.csv").read_text() == (whole_dir / "labeled.csv").read_text()
    assert resumed["mca"] == whole["mca"] and resumed["aca"] == whole["aca"]
    assert [r["mca"] for r in resumed["rounds"]] == [r["mca"] for r in whole["rounds"]]


def test_active_bad_flags(tmp_path, pretrained):
    for flags, message in [
        (["--limit", "0"], "--limit 0"),
        (["--limit", "1.5"], "--limit 1.5"),
        (["--fractions", "0", "0.1"], "--fractions 0 0.1: expected K"),
        (["--fractions", "1.5", "0.1"], "--fractions 1.5 0.1: expected K"),
        (["--fractions", "0.15", "0"], "--fractions 0.15 0: expected M"),
        (["--min-decrease", "-1"], "--min-decrease -1"),
        (["--checkpoint", str(tmp_path / "none.pt")], "no such file"),
        (["--resume"], "no state.pt"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            active.main(TINY + ["--out", str(tmp_path / "x")] + flags)
        assert str(exit_info.value).startswith("error: ") and message in str(exit_info.value)


def test_epoch_lines_show_progress_in_a_long_round_and_change_nothing(tmp_path, monkeypatch, capsys):
    """A round at 100% of I3A trains for 23 to 25 minutes on 2 cores: fine_tune prints epoch lines meanwhile."""
    common = TINY + ["--synthetic-cells", "100", "--max-epochs", "3", "--limit", "1", "--scratch"]
    monkeypatch.setattr(records, "PROGRESS_SECONDS", 10**6)  # however loaded the machine, no epoch line is due
    quiet = active.main(common + ["--out", str(tmp_path / "quiet")])
    assert "  epoch " not in capsys.readouterr().out
    monkeypatch.setattr(records, "PROGRESS_SECONDS", 0)
    loud = active.main(common + ["--out", str(tmp_path / "loud")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  epoch ")]
    assert [line.split("|")[0].split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("img/s" in line and "loss" in line for line in lines)
    assert (
        loud["confusion"] == quiet["confusion"] and loud["rounds"][0]["train_loss"] == quiet["rounds"][0]["train_loss"]
    )


def test_cached_loop_matches_the_full_network_loop(pretrained, tmp_path, monkeypatch):
    """The optimised path (cached frozen layers, float16) against the whole network every step.

    Only what must agree on any machine is compared: a tiny run's test metrics and later queries hinge on
    close calls that float16 rounding can flip, and then the two runs drift apart as two seeds do."""
    common = TINY + ["--synthetic-cells", "300", "--limit", "0.3", "--max-epochs", "3", "--checkpoint", str(pretrained)]
    cached = active.main(common + ["--out", str(tmp_path / "cached")])
    def full_network(model, images, device, precision):
        return recipe.in_precision(recipe.forward_fn(model, images, None, device), device, precision)

    monkeypatch.setattr(recipe, "run_forward", full_network)
    full = active.main(common + ["--out", str(tmp_path / "full")])
    cached_rows = list(csv.DictReader((tmp_path / "cached" / "labeled.csv").open()))
    full_rows = list(csv.DictReader((tmp_path / "full" / "labeled.csv").open()))
    seed_set = [row["index"] for row in cached_rows if row["round"] == "0"]
    assert seed_set == [row["index"] for row in full_rows if row["round"] == "0"]  # the same random seed set
    # Round 0 trains the same weights on the same cells in the same order: a continuous quantity, its training
    # loss, agrees closely (float16 features round the inputs of the trainable layers by about 1e-3).
    assert cached["rounds"][0]["train_loss"] == pytest.approx(full["rounds"][0]["train_loss"], rel=0.02)
    # Given the same model, the two paths score the pool alike: what every later round selects from.
    model = network_from_checkpoint(torch.load(tmp_path / "cached" / "model.pt", weights_only=True))
    dataset = synthetic.synthetic_dataset("target", 300, seed=0, image_size=32)
    everything = torch.arange(len(dataset))
    cache = recipe.early_feature_cache(model, dataset.images, "cpu")
    cached_forward = recipe.forward_fn(model, None, cache, "cpu")
    through_cache = predict_probabilities(model, everything, "cpu", forward=cached_forward)
    through_network = predict_probabilities(model, dataset.images, "cpu")
    assert (entropy(through_cache) - entropy(through_network)).abs().max() < 0.01


def test_no_cli_prefix_matches_a_flag(tmp_path, capsys):
    for main, flags in [(active.main, ["--lim", "0.2"]), (evaluate.main, ["--check", "x.pt"])]:
        with pytest.raises(SystemExit):
            main(flags)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_fine_tune_stops_when_the_loss_stops_falling(pretrained):
    """Sec. 3.1's rule: stopped by patience well before the cap, every epoch a pass over the labeled cells."""
    dataset = synthetic.synthetic_dataset("target", 120, seed=0, image_size=32)
    model = transfer(network_from_checkpoint(torch.load(pretrained, weights_only=True)), 6)
    forward = recipe.forward_fn(model, dataset.images, None, "cpu")
    labeled, generator = list(range(0, 120, 4)), torch.Generator().manual_seed(0)
    settings = {**active.TRAINING, "lr": 0.5, "max_epochs": 40, "patience": 2}
    cells = torch.tensor(labeled)
    fit = active.fine_tune(model, forward, cells, dataset.labels[cells], generator, {**settings, "stop_weights": "last"})
    assert fit["seen"] == fit["epochs"] * len(labeled) and math.isfinite(fit["train_loss"])
    assert fit["epochs"] < 40  # a large learning rate on 30 cells: the loss stalls well before 40 epochs


def test_early_feature_cache_holds_every_cell_once_in_float16():
    """Filled batch by batch in place, the last batch short: the same as one pass over every cell."""
    torch.manual_seed(0)
    model = ParallelResNet(6).eval()
    images = torch.randint(0, 256, (37, 1, 32, 32), dtype=torch.uint8)
    approximations, details = recipe.early_feature_cache(model, images, "cpu", batch_size=16)
    with torch.no_grad():
        expected = model.early_features(*data.model_inputs(images, "cpu"))
    assert approximations.dtype == details.dtype == torch.float16 and approximations.shape == (
        37,
        64,
        4,
        4,
    )  # 32 -> Haar 16 -> pools 4
    assert torch.allclose(approximations.float(), expected[0], atol=1e-2, rtol=1e-3)
    assert torch.allclose(details.float(), expected[1], atol=1e-2, rtol=1e-3)


def test_precision_follows_what_the_device_computes_in():
    cpu = torch.device("cpu")
    computes = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert devices.computes_bfloat16(cpu) == computes
    assert devices.pick_precision(cpu, float32=False) == ("bfloat16" if computes else "float32")
    assert devices.pick_precision(cpu, float32=True) == "float32"

    def forward(x):
        return x @ x

    assert recipe.in_precision(forward, cpu, "float32") is forward  # the exact path is today's function itself
    x = torch.randn(8, 8)
    assert recipe.in_precision(forward, cpu, "bfloat16")(x).dtype == torch.float32  # back in float32 for the loss
    assert not torch.equal(recipe.in_precision(forward, cpu, "bfloat16")(x), forward(x))  # computed in bfloat16


def test_a_bfloat16_run_trains_learns_and_says_so(pretrained, tmp_path, monkeypatch, capsys):
    """On any CPU (emulated where the hardware lacks it): the precision is printed, recorded, and the run learns."""
    monkeypatch.setattr(devices, "computes_bfloat16", lambda device: True)
    results, out = run_active(tmp_path, "bf16", SMALL_ROUNDS, pretrained)
    assert "precision: bfloat16 autocast" in capsys.readouterr().out
    assert results["derived"]["precision"] == "bfloat16" == torch.load(out / "model.pt")["derived"]["precision"]
    exact, _ = run_active(tmp_path, "f32", SMALL_ROUNDS + ["--float32"], pretrained)
    assert exact["derived"]["precision"] == "float32"
    assert results["rounds"][0]["train_loss"] != exact["rounds"][0]["train_loss"]  # autocast was on
    assert results["rounds"][-1]["train_loss"] < results["rounds"][0]["train_loss"] * 1.5  # and it trained
    assert results["mca"] > 1 / 6 + 0.1  # better than chance on six classes
    monkeypatch.setattr(devices, "computes_bfloat16", lambda device: False)
    with pytest.raises(SystemExit, match="computed in bfloat16, this command would in float32"):
        run_active(tmp_path, "bf16", SMALL_ROUNDS + ["--resume"], pretrained)


def test_weight_averaging_keeps_the_mean_of_the_later_epochs():
    weights = [{"w": torch.tensor([float(i), 2.0 * i]), "n": torch.tensor(i)} for i in range(1, 5)]
    mean = None
    for count, state in enumerate(weights, start=1):
        mean = recipe.running_mean(mean, state, count)
    assert torch.allclose(mean["w"], torch.tensor([2.5, 5.0])) and mean["n"] == 4  # counters: the latest
    dataset = synthetic.synthetic_dataset("target", 120, seed=0, image_size=32)
    torch.manual_seed(0)
    model = ParallelResNet(6)
    seen = []
    forward = recipe.forward_fn(model, dataset.images, None, "cpu")
    real = recipe.running_mean
    recipe.running_mean = lambda mean, state, count: seen.append(count) or real(mean, state, count)
    try:
        cells, generator = torch.arange(0, 120, 3), torch.Generator().manual_seed(0)
        settings = {**active.TRAINING, "max_epochs": 5}
        fit = active.fine_tune(model, forward, cells, dataset.labels[cells], generator, settings)
    finally:
        recipe.running_mean = real
    assert fit["epochs"] == 5 and seen == [1, 2, 3]  # epochs 3, 4 and 5 averaged


def test_random_in_rounds_labels_at_random_in_the_rounds_of_active_learning(pretrained, tmp_path):
    """--strategy random-rounds: AL's loop (the same k and m, the same fine-tuning each round) with random picks."""
    assert round_sizes(1000, 0.2, "random-rounds") == round_sizes(1000, 0.2) != round_sizes(1000, 0.2, "random")
    results, out = run_active(tmp_path, "rounds", SMALL_ROUNDS + ["--strategy", "random-rounds"], pretrained)
    entropy_run, entropy_out = run_active(tmp_path, "entropy", SMALL_ROUNDS, pretrained)
    assert results["case"] == "in-rs-rounds" and results["stopped_on"] == "the training loss"
    sizes = torch.tensor(round_sizes(results["pool"], 0.5, "entropy", 0.17, 0.21)).cumsum(0).tolist()
    assert [r["labeled"] for r in results["rounds"]] == sizes == [r["labeled"] for r in entropy_run["rounds"]]
    assert len(sizes) > 2 and all(r["epochs"] >= 1 for r in results["rounds"])  # fine-tuned every round
    rows = list(csv.DictReader((out / "labeled.csv").open()))
    entropy_rows = list(csv.DictReader((entropy_out / "labeled.csv").open()))
    assert {row["reason"] for row in rows} == {"random"}  # every round drawn at random, none scored
    assert all(r["scored"] == 0 for r in results["rounds"])
    seed_set = [row["index"] for row in rows if row["round"] == "0"]
    assert seed_set == [row["index"] for row in entropy_rows if row["round"] == "0"]  # the same seed set as AL's
    assert [row["index"] for row in rows] != [row["index"] for row in entropy_rows]  # then other picks


def test_the_test_split_stop_stops_on_the_loss_it_is_given(pretrained):
    """--stop-on test: patience counts the given loss, not the training loss, which keeps falling."""
    dataset = synthetic.synthetic_dataset("target", 120, seed=0, image_size=32)
    cells = torch.arange(0, 120, 4)
    settings = {**active.TRAINING, "max_epochs": 12, "patience": 2, "stop_weights": "last"}

    def fit(stop_loss):
        model = transfer(network_from_checkpoint(torch.load(pretrained, weights_only=True)), 6)
        forward = recipe.forward_fn(model, dataset.images, None, "cpu")
        generator = torch.Generator().manual_seed(0)
        return active.fine_tune(model, forward, cells, dataset.labels[cells], generator, settings, stop_loss)

    rising = iter(range(100))  # the watched loss never decreases after the first epoch: 1 + patience epochs
    stopped = fit(lambda: float(next(rising)))
    assert stopped["epochs"] == 3 and stopped["stop_loss"] == 2.0
    falling = iter(range(100, 0, -1))  # it always decreases: the cap stops it
    assert fit(lambda: float(next(falling)))["epochs"] == 12


def test_a_run_stopped_on_the_test_split_says_so(pretrained, tmp_path, capsys):
    last_weights = ["--stop-weights", "last", "--batchnorm", "running"]  # the weights the last stop loss was taken of
    results, out = run_active(tmp_path, "stopped", SMALL_ROUNDS + last_weights + ["--stop-on", "test"], pretrained)
    assert "STOPPED ON THE TEST SPLIT" in capsys.readouterr().out
    written = json.loads((out / "results.json").read_text())
    assert written["stopped_on"] == "the test split" and written["args"]["stop_on"] == "test"
    assert all(math.isfinite(r["stop_loss"]) for r in written["rounds"])
    test = evaluate.main(["--checkpoint", str(out / "model.pt"), "--json", "--png", str(tmp_path / "e.png")])
    assert written["rounds"][-1]["stop_loss"] == pytest.approx(test["loss"], rel=1e-2)  # the test split's loss
    assert "--stop-on" not in recipe.paper_flags()  # not part of --paper, which keeps the test side out


def test_tensorflow_batchnorm_constants_reach_every_layer_that_trains(pretrained):
    model = active.network(network_from_checkpoint(torch.load(pretrained, weights_only=True)), 6, "tensorflow")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    trained = [m for name, m in layers.items() if ".early." not in name]
    frozen = [m for name, m in layers.items() if ".early." in name]
    assert trained and all((m.momentum, m.eps) == (0.01, 1e-3) for m in trained)
    assert frozen and all((m.momentum, m.eps) == (0.1, 1e-5) for m in frozen)  # as pretrained, never updated
    scratch = active.network(None, 6, "tensorflow")
    assert all(m.eps == 1e-3 for m in scratch.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_batchnorm_statistics_recomputed_are_the_cells_own(pretrained):
    """lab.batchnorm (issue #61's collapse diagnosis): the exact mean over the cells, weights and frozen layers kept."""
    from lab.batchnorm import recalibrated
    from model import freeze_early_layers

    model = freeze_early_layers(transfer(network_from_checkpoint(torch.load(pretrained, weights_only=False)), 6))
    cells = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    whole = recalibrated(model, cells, torch.device("cpu"), batch_size=16)
    halves = recalibrated(model, cells, torch.device("cpu"), batch_size=8)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    trained = [name for name, layer in layers if layer.weight.requires_grad]
    frozen = [name for name, layer in layers if not layer.weight.requires_grad]
    assert trained and frozen
    before, after, after_halves = model.state_dict(), whole.state_dict(), halves.state_dict()
    for name in trained:  # the mean over two equal halves is the mean over the whole (exact where the layer's
        # input does not pass an earlier trained BatchNorm, which normalizes by each batch's own statistics)
        assert not torch.allclose(after[f"{name}.running_mean"], before[f"{name}.running_mean"])
        tolerance = 1e-5 if name == trained[0] else 1e-2
        assert torch.allclose(after[f"{name}.running_mean"], after_halves[f"{name}.running_mean"], atol=tolerance)
    for name in frozen:
        assert torch.equal(after[f"{name}.running_mean"], before[f"{name}.running_mean"])
    assert all(torch.equal(after[key], before[key]) for key in before if "running" not in key and "batches" not in key)


def test_batchnorm_cli_reads_a_run_back(tmp_path, pretrained, capsys):
    results, out = run_active(tmp_path, "in-al", [], pretrained)
    capsys.readouterr()
    from lab import batchnorm

    rows = batchnorm.main(["--run", str(out), "--device", "cpu", "--out", str(tmp_path / "bn.csv")])
    written = list(csv.DictReader((tmp_path / "bn.csv").open()))
    assert [float(row["mca"]) for row in written] == pytest.approx([row["mca"] for row in rows], abs=1e-4)
    assert [row["cells"] for row in rows] == [0, results["labeled"], results["pool"]]
    assert rows[0]["mca"] == pytest.approx(results["mca"])  # as finished: the run's own final report
    printed = capsys.readouterr().out
    assert "recomputed on the labeled cells" in printed and printed.count("\n") == 3 + 1 + len(results["rounds"])
    (out / "labeled.csv").write_text("index,file\n99999,x.png\n")
    fails(batchnorm.main, ["--run", str(out), "--device", "cpu"], "labeled.csv lists 1 cells that are not the run's")
