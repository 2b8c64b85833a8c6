"""The paper's experiment grid (Sec. 3.2, 3.3, Figs. 11-17): cases x limits x seeds through active.py's run.

    python -m lab.experiments --data ../shared/data/i3a --cases rs al in-rs in-al --limits 0.1 0.2 0.4 1 \\
        --seeds 0 1 2 --out runs/grid-i3a [any active.py flag, e.g. --max-epochs 10]

Runs every (case, limit, seed) into OUT/<case>-limit<limit>-seed<seed> with
the same code as `python active.py` (at limit 1, AL's cell is RS's run and
IN-AL's is IN-RS's: Sec. 3.3); a run with results.json is finished and read
back, a run with only state.pt is resumed, so rerunning the command completes a
half-finished grid. Writes OUT/results.csv (one row per run), OUT/summary.md
(mean and std over seeds), mca_aca.png, hardest_classes.png and confusion
matrices summed over seeds. --summarize-only runs nothing and tabulates the
runs finished so far.
"""

import argparse
import csv
import io
import sys
from pathlib import Path

import torch

import active
from data import SHORT_NAMES, DataError
from evaluate import mca_aca_of, per_class_accuracy
from lab import records
from lab.commands import parse_typed, run_command
from lab.pictures import draw_bar_chart, draw_confusion, draw_line_chart
from lab.recipe import paper_settings
from lab.records import read_results
from lab.runs import data_fingerprint, fingerprint_digest, other_settings, write_text_atomic

CASES = {
    "rs": ["--scratch", "--strategy", "random"],
    "al": ["--scratch"],
    "in-rs": ["--strategy", "random"],
    "in-al": [],
    # Random sampling in the same loop as AL's (issue #61): not the paper's RS, which trains once (Table 2's rows).
    "rs-rounds": ["--scratch", "--strategy", "random-rounds"],
    "in-rs-rounds": ["--strategy", "random-rounds"],
}
PAPER_CASES = ["rs", "al", "in-rs", "in-al"]  # Table 2's four, the grid's default
HARDEST = ["golgi", "nuclear_membrane", "speckled"]  # Fig. 15
# Sec. 3.3: "the 100% case ... There was no active learning process in this case since all the data were
# supposed to be labeled", so AL and RS coincide there. round_sizes() makes both one round of the whole pool
# with the same random order and the same training, so the grid runs that cell once and reports it for both.
SAME_RUN_AT_FULL_BUDGET = {"al": "rs", "in-al": "in-rs", "rs-rounds": "rs", "in-rs-rounds": "in-rs"}


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    cases = "(default: the paper's four, rs al in-rs in-al; rs-rounds and in-rs-rounds are random sampling in AL's loop)"
    parser.add_argument("--cases", nargs="+", default=PAPER_CASES, choices=list(CASES), help=cases)
    parser.add_argument(
        "--limits", nargs="+", type=float, default=[0.1, 0.2, 0.4, 1.0], help="(default: 0.1 0.2 0.4 1)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="(default: 0 1 2)")
    cv = "cross-validation by specimen: run every fold of K (active.py --fold F --folds K) and report the pooled "
    cv += "MCA and ACA over all K test sides (default: off, the seeded 80/20 split of each --seed)"
    parser.add_argument("--cv", type=int, default=None, metavar="K", help=cv)
    only = "with --cv: run only these folds (default: all K; the pooled metrics need all K)"
    parser.add_argument("--only-folds", nargs="+", type=int, default=None, metavar="F", help=only)
    parser.add_argument("--out", default="runs/grid", help="grid directory (default: runs/grid)")
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="run nothing: write the tables and plots from the runs finished so far (default: off)",
    )
    return parser


def main(argv=None):
    grid_args, run_flags = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    instead = {"--limit": "--limits", "--seed": "--seeds", "--scratch": "--cases", "--strategy": "--cases"}
    instead.update({"--fold": "--cv K (--only-folds)", "--folds": "--cv K"})
    for flag in list(instead) + ["--resume"]:
        if any(given == flag or given.startswith(flag + "=") for given in run_flags):
            use = f"use {instead[flag]}" if flag in instead else "rerun the grid command to resume its runs"
            sys.exit(f"error: {flag} is set by the grid itself; {use}")
    active.build_parser().parse_args(run_flags)  # rejects unknown flags with argparse's message
    return run_command(lambda grid: run_grid(grid, run_flags), grid_args)


def check_grid_flags(grid_args) -> list:
    """Each list flag names each value once (a seed twice would count one run as two); the folds to run."""
    for flag in ("cases", "limits", "seeds", "only_folds"):
        values = getattr(grid_args, flag) or []
        twice = sorted({value for value in values if values.count(value) > 1})
        if twice:
            raise DataError(f"--{flag.replace('_', '-')}: {twice[0]} given twice; name each once")
    if grid_args.cv is None:
        if grid_args.only_folds is not None:
            raise DataError("--only-folds: applies only with --cv K")
        return [None]
    if grid_args.cv < 2:
        raise DataError(f"--cv {grid_args.cv}: expected at least 2 folds")
    folds = grid_args.only_folds if grid_args.only_folds is not None else list(range(grid_args.cv))
    outside = [fold for fold in folds if not 0 <= fold < grid_args.cv]
    if outside:
        expected = f"expected a fold from 0 to {grid_args.cv - 1} (--cv {grid_args.cv})"
        raise DataError(f"--only-folds {outside[0]}: {expected}")
    return folds


def run_grid(grid_args, run_flags: list[str]) -> list[dict]:
    """Every (case, limit, seed, fold) of the grid: a finished run is read back, a killed one resumed, the rest run."""
    out, rows, digests = Path(grid_args.out), [], {}
    runs = [
        (case, limit, seed, fold)
        for case in grid_args.cases
        for limit in grid_args.limits
        for seed in grid_args.seeds
        for fold in check_grid_flags(grid_args)
    ]
    for case, limit, seed, fold in runs:
        run_case = SAME_RUN_AT_FULL_BUDGET.get(case, case) if limit >= 1 else case
        in_fold = "" if fold is None else f"-fold{fold}"
        run_dir = out / f"{run_case}-limit{limit:g}-seed{seed}{in_fold}"
        if run_case != case:
            name = f"{case}-limit{limit:g}-seed{seed}{in_fold}"
            print(f"grid: {name} is {run_dir.name} (Sec. 3.3: no selection at 100%)")
        flags = CASES[run_case] + ["--limit", str(limit), "--seed", str(seed), "--out", str(run_dir)]
        if fold is not None:
            flags += ["--fold", str(fold), "--folds", str(grid_args.cv)]
        parser = active.build_parser()
        args = parse_typed(parser, run_flags + flags)
        for dest, applies, _ in records.unused_flags(args):  # the grid's flags go to every case; not those it can't use
            if not applies:
                setattr(args, dest, parser.get_default(dest))
                parser.typed_dests.discard(dest)
        paper_settings(args, parser)  # --paper's values, as its runs record them
        if (run_dir / "results.json").exists():
            results = read_results(run_dir / "results.json")
            differs = other_settings(results["args"], args, may_change=("device",))
            if differs is None and results.get("data_digest") != data_digest(args, digests):
                differs = "on other data than the data now"
            if differs is not None:  # a grid folder holds the runs of one grid: never another's as its own
                raise DataError(f"--out {out}: {run_dir.name} was made {differs}; use another --out")
            print(f"grid: {run_dir.name} finished earlier")
        elif grid_args.summarize_only:
            print(f"grid: {run_dir.name} not finished, left out")
            continue
        else:  # the same command resumes a run killed half-way (and refuses other flags than its own)
            args.resume = (run_dir / "state.pt").exists()
            print(f"grid: {'resuming' if args.resume else 'running'} {run_dir.name}")
            results = active.run(records.open_run(args, parser))
        rows.append({"case": case, "limit": limit, "seed": seed, "fold": fold, "results": results})
        if list(results["per_class"]) != list(rows[0]["results"]["per_class"]):  # one table holds one set of classes
            raise DataError(f"--out {out}: {run_dir.name} has other classes than the grid's first run; did the data change?")
        write_grid_results(rows, out, grid_args.cv)
        write_round_results(rows, out)
    if not rows:
        raise DataError(f"--out {out}: no finished run of this grid to summarize")
    write_grid_summary(rows, out, grid_args.cv)
    return rows


def pooled_runs(rows, folds: int | None) -> list[dict]:
    """One pooled row per (case, limit, seed) whose k folds have all finished: the k test sides' confusion
    matrices summed, so every cell is predicted once, and its MCA, ACA and per-class accuracies."""
    if folds is None:
        return []
    pooled = []
    for key in dict.fromkeys((row["case"], row["limit"], row["seed"]) for row in rows):
        group = [row["results"] for row in rows if (row["case"], row["limit"], row["seed"]) == key]
        if sorted(result.get("fold") for result in group) != list(range(folds)):
            continue
        confusion = torch.tensor([result["confusion"] for result in group]).sum(dim=0)
        mca, aca = mca_aca_of(confusion)
        class_names = list(group[0]["per_class"])
        results = {"mca": mca, "aca": aca, "per_class": dict(zip(class_names, per_class_accuracy(confusion)))}
        results.update(confusion=confusion.tolist(), split=group[0].get("split", "cells"), fold="pooled")
        results.update(labeled=sum(r["labeled"] for r in group), seconds=sum(r.get("seconds", 0) for r in group))
        pooled.append({"case": key[0], "limit": key[1], "seed": key[2], "fold": "pooled", "results": results})
    return pooled


def data_digest(args, digests: dict) -> str:
    """The fingerprint digest of the data this run would read now (runs.fingerprint_digest), once per kind of data."""
    key = (args.data, args.specimens, args.scratch, args.checkpoint, args.image_size, args.normalize)
    key += (args.synthetic_cells, args.seed if args.data is None else None)  # the synthetic cells depend on the seed
    if key not in digests:
        digests[key] = fingerprint_digest(data_fingerprint(records.target_data(args, active.build_parser())[0]))
    return digests[key]


def write_grid_results(rows, out: Path, folds: int | None = None) -> None:
    """results.csv: one row per finished run, then (with --cv) one pooled row per finished cross-validation,
    rewritten (atomically) after every run."""
    class_names = list(rows[0]["results"]["per_class"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["case", "limit", "seed", "fold", "split", "labeled", "mca", "aca", "specimen_accuracy"]
    writer.writerow(header + [*class_names, "seconds", "stopped_on"])
    for row in rows + pooled_runs(rows, folds):
        results = row["results"]
        per_class = [
            ("" if results["per_class"][name] is None else f"{results['per_class'][name]:.4f}") for name in class_names
        ]
        writer.writerow(
            [
                row["case"],
                row["limit"],
                row["seed"],
                "" if row["fold"] is None else row["fold"],
                results.get("split", "cells"),  # runs from before specimen splits split cells
                results["labeled"],
                f"{results['mca']:.4f}",
                f"{results['aca']:.4f}",
                "" if results.get("specimen_accuracy") is None else f"{results['specimen_accuracy']:.4f}",
                *per_class,
                f"{results.get('seconds', 0):.0f}",
                stopped_on(results),
            ]
        )
    write_text_atomic(buffer.getvalue(), out / "results.csv")


def stopped_on(results: dict) -> str:
    """What stopped each fine-tuning: 'the test split' with --stop-on test (labelled wherever its numbers show)."""
    return results.get("stopped_on", "the training loss")  # runs from before #61 stopped on the training loss


def write_round_results(rows, out: Path) -> None:
    """rounds.csv: every round of every finished run (its labels, test MCA and ACA, epochs and last training loss),
    the numbers a per-round sentence of the docs quotes; rewritten (atomically) after every run."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "limit", "seed", "fold", "round", "labeled", "mca", "aca", "epochs", "train_loss",
                     "stop_loss", "stopped_on"])  # fmt: skip
    for row in rows:
        for record in row["results"]["rounds"]:
            stop = "" if record.get("stop_loss") is None else f"{record['stop_loss']:.4f}"
            fold = "" if row["fold"] is None else row["fold"]
            loss = "" if record.get("train_loss") is None else f"{record['train_loss']:.4f}"
            numbers = [f"{record['mca']:.4f}", f"{record['aca']:.4f}", record["epochs"], loss]
            writer.writerow([row["case"], row["limit"], row["seed"], fold, record["round"], record["labeled"],
                             *numbers, stop, stopped_on(row["results"])])  # fmt: skip
    write_text_atomic(buffer.getvalue(), out / "rounds.csv")


def _mean_std(values):
    values = torch.tensor(values, dtype=torch.float64)
    return float(values.mean()), float(values.std(unbiased=True)) if len(values) > 1 else 0.0


def _percent(mean, std, seeds) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if seeds > 1 else f"{100 * mean:.2f} (one seed)"


def summary_line(case: str, limit: float, group: list[dict], mca: tuple, aca: tuple) -> str:
    """One row of summary.md's table of runs: mean ± std of MCA and ACA, labeled counts, the specimen vote."""
    # A specimen split gives each seed its own pool, so the labeled counts differ a little between seeds.
    labeled = sorted({r["labeled"] for r in group})
    splits = "/".join(sorted({r.get("split", "cells") for r in group}))
    votes = [r["specimen_accuracy"] for r in group if r.get("specimen_accuracy") is not None]
    vote = _percent(*_mean_std(votes), len(votes)) if votes else "n/a"
    return (
        f"| {case.upper()} | {limit:g} | {splits} | {len(group)} | "
        f"{labeled[0] if len(labeled) == 1 else f'{labeled[0]}-{labeled[-1]}'} | "
        f"{_percent(*mca, len(group))} | {_percent(*aca, len(group))} | {vote} |"
    )


def confusion_runs(runs: int, folds: int | None) -> str:
    """What a summed confusion matrix holds: seeds, or with --cv every fold of each seed (each cell once a seed)."""
    if folds and runs % folds == 0:
        return f"{runs // folds} seed(s) x {folds} folds"
    return f"{runs} run(s)" if folds else f"{runs} seed(s)"  # a grid of some folds only (--only-folds)


def write_grid_summary(rows, out: Path, folds: int | None = None) -> None:
    """summary.md (with --cv first the pooled table, then mean and std over runs), mca_aca.png,
    hardest_classes.png, and summed confusion matrices."""
    cases = list(dict.fromkeys(row["case"] for row in rows))
    limits = sorted({row["limit"] for row in rows})
    class_names = list(rows[0]["results"]["per_class"])
    lines = [
        "| case | limit | split | runs | labeled | MCA % (mean ± std) | ACA % (mean ± std) | specimens % (vote) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    curves = {"MCA": {}, "ACA": {}}
    for case in cases:
        for limit in limits:
            group = [row["results"] for row in rows if row["case"] == case and row["limit"] == limit]
            if not group:
                continue
            mca, mca_std = _mean_std([r["mca"] for r in group])
            aca, aca_std = _mean_std([r["aca"] for r in group])
            lines.append(summary_line(case, limit, group, (mca, mca_std), (aca, aca_std)))
            curves["MCA"].setdefault(case.upper(), []).append((limit, mca, mca_std))
            curves["ACA"].setdefault(case.upper(), []).append((limit, aca, aca_std))
            summed = torch.tensor([r["confusion"] for r in group]).sum(dim=0)
            draw_confusion(
                summed,
                class_names,
                out / f"confusion-{case}-limit{limit:g}.png",
                f"{case.upper()} at limit {limit:g}, {confusion_runs(len(group), folds)} summed",
            )
    lines = cross_validation_table(rows, folds, class_names) + lines
    if any(stopped_on(row["results"]) == "the test split" for row in rows):  # --stop-on test: said above every number
        mark = "**Stopped on the test split** (--stop-on test): the test split chose when each fine-tuning stopped."
        lines = [mark, ""] + lines
    write_text_atomic("\n".join(lines) + "\n", out / "summary.md")
    draw_line_chart(
        out / "mca_aca.png",
        "MCA and ACA versus the labeling limit (mean, band = ±1 std over seeds)",
        [("MCA", curves["MCA"]), ("ACA", curves["ACA"])],
    )
    focus = 0.2 if 0.2 in limits else limits[0]
    hardest = [name for name in HARDEST if name in class_names] or class_names[:3]
    bars = {}
    for case in cases:
        group = [row["results"] for row in rows if row["case"] == case and row["limit"] == focus]
        if group:
            bars[case.upper()] = [
                _mean_std([r["per_class"][name] for r in group if r["per_class"][name] is not None])[0]
                for name in hardest
            ]
    draw_bar_chart(
        out / "hardest_classes.png",
        f"Per-class accuracy of the hardest classes at limit {focus:g} (%)",
        [SHORT_NAMES.get(name, name) for name in hardest],
        bars,
    )
    print("\n".join(lines))
    print(f"grid written to {out}: results.csv, summary.md, mca_aca.png, hardest_classes.png, confusion-*.png")


def cross_validation_table(rows, folds: int | None, class_names: list[str]) -> list[str]:
    """With --cv: per case and limit, the pooled MCA and ACA (mean ± std over seeds when there are several),
    the per-fold MCA's mean ± std, and each class's pooled accuracy; [] without --cv."""
    pooled = pooled_runs(rows, folds)
    if not pooled:
        return []
    short = [SHORT_NAMES.get(name, name) for name in class_names]
    unit = "specimen" if pooled[0]["results"]["split"] == "specimen" else "cells"
    lines = [
        f"{folds}-fold cross-validation by {unit}: pooled over the {folds} test sides (every cell predicted once)",
        "",
        "| case | limit | seeds | pooled MCA % | pooled ACA % | MCA % per fold (mean ± std) | " + " | ".join(short) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(short),
    ]
    for key in dict.fromkeys((row["case"], row["limit"]) for row in pooled):
        group = [row["results"] for row in pooled if (row["case"], row["limit"]) == key]
        runs = [row["results"] for row in rows if (row["case"], row["limit"]) == key and row["fold"] is not None]
        mca, aca = _mean_std([r["mca"] for r in group]), _mean_std([r["aca"] for r in group])
        per_fold = _mean_std([r["mca"] for r in runs])
        per_class = [_mean_std([r["per_class"][name] for r in group])[0] for name in class_names]
        lines.append(
            f"| {key[0].upper()} | {key[1]:g} | {len(group)} | {_percent(*mca, len(group))} | {_percent(*aca, len(group))} "
            f"| {_percent(*per_fold, len(runs))} | " + " | ".join(f"{100 * value:.1f}" for value in per_class) + " |"
        )
    return lines + ["", "Every run (mean ± std over its seeds and folds):", ""]


if __name__ == "__main__":
    main()
