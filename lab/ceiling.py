"""Diagnostics of the ceiling (issue #48): what limits every-label accuracy on specimens never seen. Not the paper.

They report and choose nothing. Each is RS at 100% (the network from scratch on every cell of the pool side) on the
specimen folds of `python -m lab.experiments --cv 5`, the same test sides, varied one way:

    python -m lab.ceiling --data ../shared/data/i3a --shares 0.25 0.5 0.75 --out runs/ceiling
        # specimens: trained on a share of each fold's training specimens (whole specimens drawn at random,
        # every class kept); the curve of pooled MCA against the number of training specimens
    python -m lab.ceiling --data ../shared/data/i3a --ensemble runs/ceiling-seeds --out runs/ceiling
        # variance: the average of the probabilities of the networks of a grid's seeds, fold by fold
        # (the grid: python -m lab.experiments ... --cases rs --limits 1 --seeds 0 1 2 --out runs/ceiling-seeds)

The capacity diagnostic (--width 128, each branch's channels doubled) and the regularisation one (--label-smoothing
0.1, --mixup 0.2 of the two Haar inputs) gave no gain and left the code: cdbc8db is the last commit with all three
(docs/results-i3a.md, "Where the ceiling is").

Writes OUT/specimens.csv (one row a share and fold, and the pooled rows; with each run's seconds),
OUT/specimens.png, OUT/ensemble.csv.
--folds runs part of the folds (two processes, or two sessions, into one OUT); a later call with every fold reads
the finished runs back and writes the pooled rows, which need all five.
"""

import argparse
import csv
import io
import re
from pathlib import Path

import torch

import active
from data import DataError
from evaluate import confusion_matrix, mca_aca_of, predict_probabilities
from lab import records
from lab.commands import parse_typed, refuse_unused, run_command
from lab.devices import add_device_flag, pick_device
from lab.layouts import say_left_out
from lab.pictures import draw_line_chart
from lab.runs import load_checkpoint, network_from_checkpoint, write_text_atomic
from lab.splits import labeled_data_for, specimens_by_class

FOLDS = 5


def specimens_share(dataset, pool: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """The pool cells of a seeded draw of `share` of the pool's specimens of each class (at least one a class)."""
    if dataset.specimens is None:
        raise DataError(f"--data {dataset.source}: the specimens diagnostic needs each cell's specimen")
    pool_specimens = [dataset.specimens[i] for i in pool.tolist()]
    members, by_class = specimens_by_class(dataset.labels[pool], pool_specimens)
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for label in sorted(by_class):
        names = sorted(by_class[label])
        order = torch.randperm(len(names), generator=generator).tolist()
        for position in order[: max(1, round(share * len(names)))]:
            kept += members[names[position]]
    return pool[torch.tensor(sorted(kept), dtype=torch.int64)]


def rs_every_label(args, fold: int, share: float, out: Path) -> dict:
    """One RS at 100% run on `fold` with `share` of its training specimens (its results, read back if finished)."""
    if (out / "results.json").exists():
        return records.read_results(out / "results.json")
    flags = ["--data", args.data, "--scratch", "--strategy", "random", "--limit", "1", "--fold", str(fold)]
    flags += ["--seed", str(args.seed), "--out", str(out), "--device", args.device]
    parser = active.build_parser()
    job = records.open_run(parser.parse_args(flags), parser)
    if share < 1:  # Step 1 as active.run makes it, then only a share of the pool's specimens
        by, parts, pool, test = active.split_target(job["dataset"], job["settings"])
        job["sides"] = by, parts, specimens_share(job["dataset"], pool, share, args.seed), test
        job["derived"]["pool_specimens_share"] = share  # in results.json: this run saw only part of its pool
        print(f"ceiling: {share:g} of the training specimens: {len(job['sides'][2])} cells")
    return active.run(job)


def specimen_curve(args, out: Path) -> list[dict]:
    """The specimens diagnostic: every share on every fold, then the pooled rows, CSV and picture."""
    rows = []
    for share in args.shares:
        for fold in args.folds:
            run = out / f"rs-limit1-seed{args.seed}-fold{fold}-share{share:g}"
            results = rs_every_label(args, fold, share, run)
            print(f"ceiling: fold {fold}: MCA {100 * results['mca']:.2f}% in {results['seconds']:.0f} s")
            rows.append({"share": share, "fold": fold, "results": results})
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["share", "fold", "pool_cells", "mca", "aca", "seconds"])
    curve = []
    for share in args.shares:
        group = [row for row in rows if row["share"] == share]
        for row in group:
            results = row["results"]
            scores = [f"{results['mca']:.4f}", f"{results['aca']:.4f}", f"{results['seconds']:.0f}"]
            writer.writerow([share, row["fold"], results["pool"], *scores])
        if sorted(row["fold"] for row in group) != list(range(FOLDS)):
            print(f"ceiling: {share:g}: folds {args.folds} only; the pooled row needs all {FOLDS}")
            continue
        summed = sum(torch.tensor(row["results"]["confusion"]) for row in group)
        mca, aca = mca_aca_of(summed)
        seconds = sum(row["results"]["seconds"] for row in group)
        cells = sum(row["results"]["pool"] for row in group)
        writer.writerow([share, "pooled", cells, f"{mca:.4f}", f"{aca:.4f}", f"{seconds:.0f}"])
        curve.append((share, mca, 0.0))
        print(f"ceiling: {share:g} of the training specimens: pooled MCA {100 * mca:.2f}% ACA {100 * aca:.2f}%")
    write_text_atomic(table.getvalue(), out / "specimens.csv")
    title = "RS at 100%: pooled MCA against the share of training specimens"
    if curve:
        series = [("pooled MCA", {"RS 100%": curve})]
        draw_line_chart(out / "specimens.png", title, series, "share of training specimens")
    return rows


RUN_NAME = re.compile(r"rs-limit1-seed(\d+)-fold(\d+)")
SAME = ("data", "image_size", "normalize", "split", "fold", "folds", "test_specimens")  # one grid, one test side a fold


def grid_runs(grid: Path) -> list[int]:
    """The seeds of a grid's RS at 100% runs, every fold of each finished; a stray folder named like a run is said."""
    named = sorted(path for path in grid.glob("rs-limit1-seed*-fold*") if path.is_dir())
    runs = [(path, RUN_NAME.fullmatch(path.name)) for path in named]
    say_left_out([path for path, match in runs if match is None], "folder not named rs-limit1-seedS-foldF is "
                 "ignored", "folders not named rs-limit1-seedS-foldF are ignored")  # fmt: skip
    seeds = sorted({int(match[1]) for _, match in runs if match is not None})
    if not seeds:
        raise DataError(f"--ensemble {grid}: no rs-limit1-seedS-foldF run folders")
    missing = [f"rs-limit1-seed{seed}-fold{fold}" for seed in seeds for fold in range(FOLDS)
               if not (grid / f"rs-limit1-seed{seed}-fold{fold}" / "model.pt").is_file()]  # fmt: skip
    if missing:
        raise DataError(f"--ensemble {grid}: {len(missing)} run(s) unfinished or missing (e.g. {missing[0]}); finish "
                        "the grid with the same python -m lab.experiments command first")
    return seeds


def made_alike(checkpoint: dict, first: dict | None, run: Path) -> dict:
    """What a run was made on (data, preprocessing, fold, test specimens); refused in one line where it differs from
    the first seed's on the same fold: averaging networks makes sense only on one test side, prepared one way."""
    made = {**checkpoint["args"], **checkpoint["derived"]}
    made = {key: str(Path(made[key]).resolve()) if key == "data" and made.get(key) else made.get(key) for key in SAME}
    differs = [key for key in SAME if first is not None and made[key] != first[key]]
    if differs:
        key = differs[0]
        raise DataError(f"--ensemble: {run.name} was made with {key} {made[key]}, its first seed's with "
                        f"{first[key]}; an ensemble needs one data and preprocessing")
    return made


@torch.inference_mode()
def ensemble(args, out: Path) -> dict:
    """The variance diagnostic: each seed's pooled MCA, and that of the mean of the seeds' probabilities."""
    grid, device = Path(args.ensemble), pick_device(args.device)
    seeds = grid_runs(grid)
    confusions: dict[str, torch.Tensor] = {}
    for fold in range(FOLDS):
        probabilities, test, first = {}, None, None
        for seed in seeds:
            run = grid / f"rs-limit1-seed{seed}-fold{fold}"
            checkpoint = load_checkpoint(run / "model.pt", "--ensemble")
            made = made_alike(checkpoint, first, run)  # each seed's against the fold's first
            first = first or made
            if test is None:  # the fold's test side, as evaluate.py makes it again
                test, _ = labeled_data_for(checkpoint, None, "test")
            model = network_from_checkpoint(checkpoint).to(device)
            probabilities[f"seed {seed}"] = predict_probabilities(model, test.images, device, 64)
        probabilities["mean of the seeds"] = torch.stack(list(probabilities.values())).mean(dim=0)
        for name, values in probabilities.items():
            matrix = confusion_matrix(test.labels, values.argmax(dim=1), len(test.class_names))
            confusions[name] = confusions.get(name, 0) + matrix
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["networks", "pooled_mca", "pooled_aca"])
    pooled = {}
    for name, matrix in confusions.items():
        pooled[name] = mca_aca_of(matrix)
        writer.writerow([name, f"{pooled[name][0]:.4f}", f"{pooled[name][1]:.4f}"])
        print(f"ceiling: {name}: pooled MCA {100 * pooled[name][0]:.2f}% ACA {100 * pooled[name][1]:.2f}%")
    write_text_atomic(table.getvalue(), out / "ensemble.csv")
    return pooled


def run(args, parser):
    out = Path(args.out)
    with_ensemble = "--ensemble averages a finished grid's runs; it trains nothing"
    refuse_unused(args, parser, [(flag, not args.ensemble, with_ensemble) for flag in ("shares", "folds")]
                  + [("data", not args.ensemble, with_ensemble + " and reads the data its runs name")])  # fmt: skip
    if args.ensemble:
        return ensemble(args, out)
    if args.data is None:
        raise DataError("--data: required: labeled target cells with specimens (or --ensemble GRID)")
    if not args.shares or not all(0 < share <= 1 for share in args.shares):
        raise DataError("--shares: expected shares of the training specimens in (0, 1]")
    if not args.folds or not set(args.folds) <= set(range(FOLDS)):
        raise DataError(f"--folds: expected fold numbers from 0 to {FOLDS - 1}")
    args.folds = sorted(set(args.folds))
    return specimen_curve(args, out)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    data = "labeled target cells with specimens (required, but with --ensemble)"
    parser.add_argument("--data", default=None, help=data)
    shares = "shares of each fold's training specimens to train on (default: 0.25 0.5 0.75)"
    parser.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75], help=shares)
    folds = f"the folds to run (default: all {FOLDS}; the pooled rows need all)"
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)), help=folds)
    parser.add_argument("--ensemble", default=None, help="a grid folder of RS at 100%% runs of several seeds instead")
    parser.add_argument("--seed", type=int, default=0, help="training seed, and the draw of the specimens (default: 0)")
    parser.add_argument("--out", default="runs/ceiling", help="folder of the runs and tables (default: runs/ceiling)")
    add_device_flag(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    return run_command(lambda args: run(args, parser), parse_typed(parser, argv))


if __name__ == "__main__":
    main()
