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

    python bench.py --data ../shared/data/i3a --checkpoint runs/pretrained.pt
    python bench.py --quick                       # about a minute, synthetic cells

It ends with `speedup: N.Nx`, the labeling round optimised over straightforward.
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
from data import (
    DataError,
    add_device_flag,
    check_flags,
    get_dataset,
    load_checkpoint,
    load_dataset,
    model_inputs,
    pick_device,
    prepare_cell,
    preprocessing,
    read_cell,
    seed_everything,
    stratified_split,
)
from evaluate import model_from_checkpoint, predict_probabilities
from model import trainable_parameters


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
    forward = active.forward_fn(model, dataset.images, cache, device)
    # The same work as straightforward_round: no BatchNorm recalibration pass (both would add one).
    started = time.time()
    generator = torch.Generator().manual_seed(0)
    fixed = dict(
        max_epochs=epochs, patience=epochs + 1, batch_size=batch_size, stop_weights="last", batchnorm="running"
    )
    active.fine_tune(model, forward, dataset.labels, labeled, generator, device, **fixed)
    train_seconds = time.time() - started
    started = time.time()
    active.entropy(predict_probabilities(model, unlabeled, device, 64, forward=forward))
    return train_seconds, time.time() - started


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
    add_device_flag(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once, even in a log file
    try:
        return run(args)
    except DataError as error:
        sys.exit(f"error: {error}")


def run(args):
    check_flags(args, ("labeled", "epochs", "batch_size"))
    device = pick_device(args.device)
    seed_everything(0)
    checkpoint = load_checkpoint(args.checkpoint)
    image_size, normalize = preprocessing(checkpoint)
    rows = [
        (
            "device",
            str(device)
            + (
                f" ({torch.cuda.get_device_name(device)})"
                if device.type == "cuda"
                else f" ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
            ),
        )
    ]

    if args.data:
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
    else:
        dataset = get_dataset(None, "target", None, image_size, normalize, 0, 400 if args.quick else None)
    rows.append(("cells", f"{len(dataset)} ({dataset.source})"))

    pool, _ = stratified_split(dataset.labels, [0.8, 0.2], 0)
    labeled_count = min(args.labeled if not args.quick else 100, len(pool) // 2)
    epochs = args.epochs if not args.quick else 1
    shuffled = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))]
    labeled, unlabeled = shuffled[:labeled_count], shuffled[labeled_count:]
    from_files = bool(args.data)

    torch.manual_seed(0)
    model = model_from_checkpoint(checkpoint, device, new_classes=len(dataset.class_names), freeze=True)
    print(f"bench: straightforward round ({labeled_count} labeled x {epochs} epochs, score {len(unlabeled)})...")
    slow_train, slow_score = straightforward_round(
        model, dataset, labeled, unlabeled, epochs, args.batch_size, device, from_files
    )
    torch.manual_seed(0)
    model = model_from_checkpoint(checkpoint, device, new_classes=len(dataset.class_names), freeze=True)
    started = time.time()
    cache = active.early_feature_cache(model, dataset.images, device)
    cache_seconds = time.time() - started
    print(f"bench: straightforward round took {slow_train + slow_score:.1f} s; optimised round...")
    fast_train, fast_score = optimised_round(model, dataset, labeled, unlabeled, epochs, args.batch_size, device, cache)

    seen = labeled_count * epochs
    rows += [
        ("timed round", f"{labeled_count} labeled x {epochs} epochs, score {len(unlabeled)} pool cells"),
        ("fine-tune img/s: straightforward / optimised", f"{seen / slow_train:.0f} / {seen / fast_train:.0f}"),
        (
            "score img/s: straightforward / optimised",
            f"{len(unlabeled) / slow_score:.0f} / {len(unlabeled) / fast_score:.0f}",
        ),
        (
            "round seconds: straightforward / optimised",
            f"{slow_train + slow_score:.1f} / {fast_train + fast_score:.1f}",
        ),
        ("one-time cache of the frozen layers (per run)", f"{cache_seconds:.1f} s for {len(dataset)} cells"),
    ]
    speedup = (slow_train + slow_score) / (fast_train + fast_score)

    if not args.quick and args.end_to_end == "on":
        with tempfile.TemporaryDirectory() as out:
            command = [
                sys.executable,
                str(Path(__file__).with_name("active.py")),
                "--limit",
                str(args.limit),
                "--checkpoint",
                args.checkpoint,
                "--out",
                out,
                "--device",
                args.device,
            ]
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
                sys.exit(f"error: active.py failed with exit code {process.returncode} (its message is above)")
            final = lines[-1].strip()
        rows += [
            (f"IN-AL end to end, --limit {args.limit:g}", f"{wall:.0f} s ({wall / 60:.1f} min)"),
            ("IN-AL peak memory (resident)", f"{peak_child_memory_gib():.2f} GiB"),
            ("IN-AL result", final.split(" with ")[0].removeprefix("final: ")),
        ]

    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"speedup: {speedup:.1f}x")
    return {"rows": rows, "speedup": speedup}


if __name__ == "__main__":
    main()
