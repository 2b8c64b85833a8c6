"""Benchmark: how fast is a labeling round and a whole active learning run (paper Sec. 3.3, last paragraphs).

The paper names its own limit: every labeling round fine-tunes the network
again. This script measures, in one run and on the same data:

  * loading: decoding and resizing every cell the first time, and reading the cache;
  * one labeling round (fine-tune on L labeled cells for E epochs, then score the
    rest of the pool) done two ways:
      straightforward: cells decoded from their files and resized every epoch, the
        Haar split recomputed per batch, the whole network run forward (frozen
        layers included) and backward every step, small (32) inference batches;
      optimised (what active.py does): the frozen layers' output computed once per
        run (float16, on the CPU), then only the upper layers trained and scored,
        in large inference batches;
  * a whole IN-AL run of active.py end to end: wall time, peak memory, MCA.

    python -m lab.bench --data ../shared/data/i3a --checkpoint runs/pretrained.pt
    python -m lab.bench --quick                       # about a minute, synthetic cells

It ends with `speedup: N.Nx`, the labeling round optimised over straightforward.
Two more jobs of the same kind, each on its own:

    python -m lab.bench --levers                      # the upper layers' img/s under each speed lever
    python -m lab.bench --curve runs/scale            # a run's round time against its labeled cells, as a PNG
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import active
from data import DataError, model_inputs, prepare_cell, read_cell
from evaluate import predict_probabilities
from lab import recipe
from lab.commands import check_flags, run_command
from lab.devices import add_device_flag, computes_bfloat16, pick_device, seed_everything
from lab.layouts import get_dataset, load_dataset
from lab.pictures import draw_round_times
from lab.records import ROUND_FIELDS, STATE_FIELDS, read_results
from lab.runs import check_fields, load_checkpoint, network_from_checkpoint, preprocessing
from lab.splits import stratified_split
from model import ParallelResNet, freeze_early_layers, trainable_parameters, transfer


def straightforward_round(model, dataset, labeled, unlabeled, epochs, batch_size, device, from_files):
    """Fine-tune and score the way a first implementation would: everything recomputed, every time."""
    image_size = dataset.images.shape[-1]

    def cells(indices):
        if from_files:  # decode and resize from disk, every time the cell is needed
            return torch.from_numpy(
                np.stack([prepare_cell(read_cell(dataset.files[i]), image_size) for i in indices])
            ).unsqueeze(1)
        return dataset.images[indices]

    optimizer = torch.optim.Adam(trainable_parameters(model), lr=1e-3)
    started = time.time()
    for _ in range(epochs):
        model.train()
        order = labeled[torch.randperm(len(labeled))]
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            approximation, details = model_inputs(cells(index.tolist()), device)  # Haar split per batch
            loss = F.cross_entropy(model(approximation, details), dataset.labels[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    train_seconds = time.time() - started
    started = time.time()
    model.eval()
    with torch.no_grad():
        for start in range(0, len(unlabeled), 32):
            index = unlabeled[start : start + 32].tolist()
            active.entropy(torch.softmax(model(*model_inputs(cells(index), device)), dim=1))
    return train_seconds, time.time() - started


def optimised_round(model, dataset, labeled, unlabeled, epochs, batch_size, device, cache):
    """The same round the way active.py runs it: from the cached output of the frozen layers."""
    forward = recipe.forward_fn(model, dataset.images, cache, device)
    # The same work as straightforward_round: no BatchNorm recalibration pass (both would add one).
    started = time.time()
    generator = torch.Generator().manual_seed(0)
    fixed = dict(max_epochs=epochs, patience=epochs + 1, batch_size=batch_size, stop_weights="last")
    fixed["batchnorm"] = "running"
    cells = torch.as_tensor(labeled, dtype=torch.int64)
    active.fine_tune(model, forward, cells, dataset.labels[cells], generator, {**active.TRAINING, **fixed})
    train_seconds = time.time() - started
    started = time.time()
    active.entropy(predict_probabilities(model, unlabeled, device, 64, forward=forward))
    return train_seconds, time.time() - started


def bfloat16_support(device) -> str | None:
    """Why bfloat16 autocast would not pay, or None where the hardware computes in it (devices.computes_bfloat16)."""
    if computes_bfloat16(device):
        return None
    if device.type == "cpu":
        return "this CPU has neither AVX512-BF16 nor AMX (emulated bfloat16 is slower than float32)"
    return f"this {device.type} does not compute in bfloat16"


def lever_throughput(device, lever: str, labeled: int, score_cells: int) -> tuple[float, float, float]:
    """(fine-tune img/s, score img/s, one-time seconds) of the layers above the frozen ones under one lever.

    The same work as every round of active.py: Adam steps on cached-shaped inputs (two (N, 64, 14, 14)
    tensors), then eval-mode scoring. Random inputs: the speed does not depend on the values.
    """
    train_batch = {"train batch 32": 32, "train batch 128": 128}.get(lever, 64)
    score_batch = {"score batch 256": 256, "score batch 1024": 1024}.get(lever, 64)
    threads = torch.get_num_threads()
    if lever == "1 thread":
        torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    model = freeze_early_layers(ParallelResNet(6)).to(device)
    cells = max(labeled, score_cells)
    approximation = torch.randn(cells, 64, 14, 14, generator=generator).to(device)
    details = torch.randn(cells, 64, 14, 14, generator=generator).to(device)
    labels = torch.randint(0, 6, (cells,), generator=generator).to(device)
    if lever == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        approximation = approximation.contiguous(memory_format=torch.channels_last)
        details = details.contiguous(memory_format=torch.channels_last)

    def forward(first, last):
        return model.head(model.late_features(approximation[first:last], details[first:last]))

    if lever == "torch.compile":
        forward = torch.compile(forward)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=lever == "bfloat16 autocast")
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=1e-3)

    def epoch():
        model.train()
        for start in range(0, labeled, train_batch):
            with autocast:
                loss = F.cross_entropy(forward(start, start + train_batch), labels[start : start + train_batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)

    def score():
        model.eval()
        with torch.inference_mode(), autocast:
            for start in range(0, score_cells, score_batch):
                torch.softmax(forward(start, start + score_batch).float(), dim=1)
        synchronize(device)

    started = time.time()
    epoch(), score()  # warm-up: allocation, kernel choice, compilation
    warm_up = time.time() - started
    started = time.time()
    epoch(), epoch()
    train_rate = 2 * labeled / (time.time() - started)
    started = time.time()
    score()
    score_rate = score_cells / (time.time() - started)
    torch.set_num_threads(threads)
    return train_rate, score_rate, warm_up


LEVERS = (
    "float32 (--float32)",
    "channels_last",
    "bfloat16 autocast",
    "torch.compile",
    "1 thread",
    "train batch 32",
    "train batch 128",
    "score batch 256",
    "score batch 1024",
    "float32 (again)",  # the first row measured again: the spread between the two is the noise
)


def cache_throughput(device, cells: int, channels_last: bool) -> float:
    """Cells a second through the frozen layers in eval mode (what early_feature_cache runs once per run)."""
    model = freeze_early_layers(ParallelResNet(6)).to(device).eval()
    images = torch.randint(0, 256, (cells, 1, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for warm_up in (True, False):
            started = time.time()
            for start in range(0, cells, 16):  # early_feature_cache's batch
                inputs = model_inputs(images[start : start + 16], device)  # channels-last (data.model_inputs)
                standard = [band.clone(memory_format=torch.contiguous_format) for band in inputs]
                model.early_features(*(inputs if channels_last else standard))
            synchronize(device)
    return cells / (time.time() - started)


def lever_rows(device, labeled: int, score_cells: int, compile_too: bool = True) -> list[tuple[str, str]]:
    """One row per lever of docs/speed.md, each against float32 on the same inputs."""
    print("bench: the frozen layers' cache, both memory layouts...")
    cache_cells = max(64, score_cells // 4)
    standard, channels_last = (cache_throughput(device, cache_cells, layout) for layout in (False, True))
    rows = [
        ("cache of the frozen layers: NCHW", f"{standard:5.0f} img/s (1.00x)"),
        ("cache: channels_last (today)", f"{channels_last:5.0f} img/s ({channels_last / standard:.2f}x)"),
        ("upper layers (every round):", f"{labeled} cells trained, {score_cells} scored"),
    ]
    today = None
    for lever in LEVERS:
        if lever == "bfloat16 autocast" and bfloat16_support(device):
            rows.append((lever, f"skipped: {bfloat16_support(device)}"))
            continue
        if lever == "torch.compile" and not compile_too:
            rows.append((lever, "skipped under --quick (compiling takes a minute)"))
            continue
        print(f"bench: lever {lever}...")
        train_rate, score_rate, warm_up = lever_throughput(device, lever, labeled, score_cells)
        today = today or (train_rate, score_rate)
        rows.append(
            (
                lever,
                f"fine-tune {train_rate:5.0f} img/s ({train_rate / today[0]:.2f}x) | "
                f"score {score_rate:5.0f} img/s ({score_rate / today[1]:.2f}x) | warm-up {warm_up:.1f} s",
            )
        )
    return rows


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_rounds(run_dir: Path) -> tuple[list[dict], int | None]:
    """A run's rounds and pool size from results.json, or its rounds from state.pt while it is unfinished."""
    results = run_dir / "results.json"
    if results.exists():
        finished = read_results(results)
        rounds, pool = finished["rounds"], finished["pool"]
    elif (run_dir / "state.pt").exists():  # data, never code; checked as a resume checks it
        state = check_fields(load_checkpoint(run_dir / "state.pt", "--curve"), STATE_FIELDS, run_dir, "a run")
        rounds, pool = [check_fields(r, ROUND_FIELDS, run_dir / "state.pt", "a run") for r in state["rounds"]], None
    else:
        raise DataError(f"--curve {run_dir}: expected a run folder with results.json or state.pt")
    if not rounds:
        raise DataError(f"--curve {run_dir}: the run has no finished round yet")
    return rounds, pool


def round_rates(rounds: list[dict], pool: int | None) -> list[tuple[str, str]]:
    """The two rates a round's time is made of: fine-tuning, epochs x labeled cells at one rate, and scoring,
    the unlabeled pool at another, so that a user can predict a run of another size."""
    seen = sum(r["epochs"] * r["labeled"] for r in rounds)
    train_rate = seen / sum(r["train_seconds"] for r in rounds)
    scored = any(r["score_seconds"] > 0 for r in rounds[1:])
    rows = [
        ("rounds", f"{len(rounds)}, labeled {rounds[0]['labeled']} to {rounds[-1]['labeled']}"),
        ("fine-tuning rate (epochs x labeled / s)", f"{train_rate:.0f} img/s"),
        ("epochs run (sum over rounds)", f"{sum(r['epochs'] for r in rounds)}"),
    ]
    if scored:  # runs before "scored" was recorded: the unlabeled part of the pool at the round's start
        counts = [r.get("scored", pool - previous["labeled"] if pool else 0) for r, previous in zip(rounds[1:], rounds)]
        score_rate = sum(counts) / sum(r["score_seconds"] for r in rounds[1:])
        rows.append(("scoring rate (unlabeled pool / s)", f"{score_rate:.0f} img/s" if all(counts) else "unknown"))
    return rows


def peak_child_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--data", default=None, help="target cells (default: the synthetic target)")
    parser.add_argument(
        "--checkpoint", default="runs/pretrained.pt", help="pretrained network (default: runs/pretrained.pt)"
    )
    parser.add_argument("--labeled", type=int, default=1000, help="labeled cells in the timed round (default: 1000)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs in the timed round (default: 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default: 64)")
    parser.add_argument("--limit", type=float, default=0.2, help="labeling limit of the end-to-end run (default: 0.2)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small synthetic smoke test, about a minute; skips the end-to-end run (default: off)",
    )
    parser.add_argument(
        "--end-to-end", default="on", choices=["on", "off"], help="run active.py end to end (default: on)"
    )
    parser.add_argument(
        "--levers",
        action="store_true",
        help="only time the upper layers under each speed lever (channels_last, bfloat16, torch.compile, threads, "
        "batch sizes), on random inputs; needs no checkpoint (default: off)",
    )
    parser.add_argument(
        "--curve",
        default=None,
        metavar="RUN_DIR",
        help="only plot an active.py run's seconds per round against its labeled cells to RUN_DIR/round_times.png "
        "and print its fine-tuning and scoring rates (default: off)",
    )
    add_device_flag(parser)
    return parser


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv))


def run(args):
    """--curve or --levers alone; else loading, one round both ways and, unless --quick, a whole IN-AL run."""
    check_flags(args, ("labeled", "epochs", "batch_size"))
    device = pick_device(args.device)
    seed_everything(0)
    rows = [("device", describe_device(device))]
    if args.curve:
        run_dir = Path(args.curve)
        rounds, pool = read_rounds(run_dir)
        draw_round_times(rounds, run_dir.name, run_dir / "round_times.png")
        rows = round_rates(rounds, pool) + [("plot", str(run_dir / "round_times.png"))]
    elif args.levers:
        labeled, score_cells = (128, 256) if args.quick else (args.labeled, 4096)
        rows += lever_rows(device, labeled, score_cells, compile_too=not args.quick)
    if args.curve or args.levers:
        print_rows(rows)
        return {"rows": rows}
    checkpoint = load_checkpoint(args.checkpoint)
    dataset = timed_load(args, checkpoint, rows)
    speedup = time_one_round(args, checkpoint, dataset, device, rows)
    if not args.quick and args.end_to_end == "on":
        rows += time_end_to_end(args)
    print_rows(rows)
    print(f"speedup: {speedup:.1f}x")
    return {"rows": rows, "speedup": speedup}


def timed_load(args, checkpoint: dict, rows: list):
    """The target cells; with --data, loaded twice into a cold cache: decoding once, then the cache."""
    image_size, normalize = preprocessing(checkpoint)
    if not args.data:
        dataset = get_dataset(None, "target", None, image_size, normalize, 0, 400 if args.quick else None)
        rows.append(("cells", f"{len(dataset)} ({dataset.source})"))
        return dataset
    with tempfile.TemporaryDirectory() as cold_cache:
        previous = os.environ.get("HEP2_CACHE")
        os.environ["HEP2_CACHE"] = cold_cache
        started = time.time()
        dataset = load_dataset(args.data, None, image_size, normalize)
        rows.append(("load, first time (decode + resize + write cache)", f"{time.time() - started:.1f} s"))
        print(f"bench: {rows[-1][0]}: {rows[-1][1]}")
        started = time.time()
        dataset = load_dataset(args.data, None, image_size, normalize)
        rows.append(("load, cached", f"{time.time() - started:.2f} s"))
        if previous is None:
            del os.environ["HEP2_CACHE"]
        else:
            os.environ["HEP2_CACHE"] = previous
    rows.append(("cells", f"{len(dataset)} ({dataset.source})"))
    return dataset


def time_one_round(args, checkpoint: dict, dataset, device, rows: list) -> float:
    """One labeling round the straightforward way and active.py's way, on the same cells; returns the speedup."""
    pool, _ = stratified_split(dataset.labels, [0.8, 0.2], 0)
    labeled_count = min(args.labeled if not args.quick else 100, len(pool) // 2)
    epochs = args.epochs if not args.quick else 1
    shuffled = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))]
    labeled, unlabeled = shuffled[:labeled_count], shuffled[labeled_count:]
    torch.manual_seed(0)
    model = transfer(network_from_checkpoint(checkpoint), len(dataset.class_names)).to(device)
    print(f"bench: straightforward round ({labeled_count} labeled x {epochs} epochs, score {len(unlabeled)})...")
    slow_train, slow_score = straightforward_round(
        model, dataset, labeled, unlabeled, epochs, args.batch_size, device, bool(args.data)
    )
    torch.manual_seed(0)
    model = transfer(network_from_checkpoint(checkpoint), len(dataset.class_names)).to(device)
    started = time.time()
    cache = recipe.early_feature_cache(model, dataset.images, device)
    cache_seconds = time.time() - started
    print(f"bench: straightforward round took {slow_train + slow_score:.1f} s; optimised round...")
    fast_train, fast_score = optimised_round(model, dataset, labeled, unlabeled, epochs, args.batch_size, device, cache)
    seen, scored = labeled_count * epochs, len(unlabeled)
    rows += [
        ("timed round", f"{labeled_count} labeled x {epochs} epochs, score {scored} pool cells"),
        ("fine-tune img/s: straightforward / optimised", f"{seen / slow_train:.0f} / {seen / fast_train:.0f}"),
        ("score img/s: straightforward / optimised", f"{scored / slow_score:.0f} / {scored / fast_score:.0f}"),
        ("round seconds: straightforward / optimised", f"{slow_train + slow_score:.1f} / "
         f"{fast_train + fast_score:.1f}"),
        ("one-time cache of the frozen layers (per run)", f"{cache_seconds:.1f} s for {len(dataset)} cells"),
    ]
    return (slow_train + slow_score) / (fast_train + fast_score)


def time_end_to_end(args) -> list[tuple[str, str]]:
    """A whole IN-AL run of active.py in a child process, its progress lines streamed: wall time, memory, result."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(Path(__file__).resolve().parent.parent / "active.py"), "--limit", str(args.limit)]
        command += ["--checkpoint", args.checkpoint, "--out", out, "--device", args.device]
        command += ["--data", args.data] if args.data else []
        started = time.time()
        print(f"bench: IN-AL end to end at --limit {args.limit:g} (its round lines follow)")
        lines = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
            for line in process.stdout:  # stream active.py's progress lines as they come
                print(f"  {line}", end="")
                lines.append(line)
        wall = time.time() - started
        if process.returncode != 0:
            raise DataError(f"active.py failed with exit code {process.returncode} (its message is above)")
        final = lines[-1].strip()
    return [
        (f"IN-AL end to end, --limit {args.limit:g}", f"{wall:.0f} s ({wall / 60:.1f} min)"),
        ("IN-AL peak memory (resident)", f"{peak_child_memory_gib():.2f} GiB"),
        ("IN-AL result", final.split(" with ")[0].removeprefix("final: ")),
    ]


def describe_device(device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cores = f"{os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"
    return f"{device} ({cpu_features()}; {cores})"


def cpu_features() -> str:
    """The CPU's model and the features that decide the speed here: AVX2, AVX-512, and bfloat16 (AVX512-BF16, AMX)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # not Linux: the model and features are not read
        pass
    shown = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if name in flags]
    return f"{model}, {' '.join(shown) or 'no AVX2'}"


def print_rows(rows) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
