"""What an active learning run records, prints, saves for a resume and leaves behind.

Not the paper (the workshop): active.py's loop calls these by name. After every
round a run folder holds state.pt (what `--resume` needs to go on exactly); it
ends with
  * results.json: the final test metrics (MCA, ACA, per class, confusion, by
    specimen), each round's record, the run's `args` (as given) and `derived`
    (what it worked out: preprocessing, split, folder);
  * labeled.csv: every labeled cell in labeling order, its round and why it was chosen;
  * model.pt: the final network, a checkpoint evaluate.py reads;
  * confusion.png: the final confusion matrix.
"""

import csv
import io
import json
import time
from pathlib import Path

import torch

from data import SHORT_NAMES, DataError
from evaluate import draw_confusion, predict_probabilities, summarize
from runs import (
    refuse_unused,
    fingerprint_digest,
    CHECKPOINT_FORMAT,
    NUMBER,
    check_fields,
    check_flags,
    check_image_size,
    check_output_folder,
    check_resume,
    check_same_data,
    check_same_precision,
    load_state,
    other_settings,
    read_json,
    release_lock,
    remove_stale_temporaries,
    save_atomic,
    take_lock,
    write_text_atomic,
)
from layouts import spreadsheet_cell
from splits import specimens_of


def unused_flags(args) -> list:
    """(flag, applies, why not) of every flag that only some runs use (runs.refuse_unused)."""
    at_once = "--strategy random labels the whole budget at once"
    return [
        ("checkpoint", not args.scratch, "--scratch trains from random weights, without a checkpoint"),
        ("k_fraction", args.strategy != "random", at_once),
        ("m_fraction", args.strategy != "random", at_once),
        ("folds", args.fold is not None, "it counts the folds of --fold; add --fold F"),
        ("synthetic_cells", args.data is None, "--data reads the cells; the synthetic default is not made"),
    ]


def check_run_flags(args, parser) -> None:
    """One line for a flag out of range, or one this run cannot use (runs.refuse_unused, unused_flags)."""
    if not 0 < args.limit <= 1:
        raise DataError(f"--limit {args.limit}: expected a fraction in (0, 1]")
    if args.folds < 2:
        raise DataError(f"--folds {args.folds}: expected at least 2")
    if args.fold is not None and not 0 <= args.fold < args.folds:
        raise DataError(f"--fold {args.fold}: expected a fold from 0 to {args.folds - 1} (--folds {args.folds})")
    if args.fold is not None and args.test_fraction != 0.2:
        raise DataError(f"--test-fraction {args.test_fraction}: --fold {args.fold} tests one fold of --folds instead")
    if not 0 < args.test_fraction < 1:
        raise DataError(f"--test-fraction {args.test_fraction}: expected a fraction in (0, 1)")
    for flag in ("k_fraction", "m_fraction"):
        if not 0 < getattr(args, flag) <= 1:
            name = flag.replace("_", "-")
            raise DataError(f"--{name} {getattr(args, flag)}: expected a fraction of the budget in (0, 1]")
    check_flags(args, ("max_epochs", "patience", "batch_size", "synthetic_cells"))
    if args.scratch:  # else the cells are prepared as the checkpoint's were
        check_image_size(args.image_size)
    refuse_unused(args, parser, unused_flags(args))


def case_name(args) -> str:
    strategy = {"entropy": "al", "random": "rs"}.get(args.strategy, args.strategy)
    return strategy if args.scratch else f"in-{strategy}"


def run_folder(args) -> str:
    return args.out or f"runs/{case_name(args)}-limit{args.limit:g}-seed{args.seed}"


def epoch_line(epoch: int, max_epochs: int, loss: float, seen: int, started: float) -> float:
    """Print an epoch's progress line: its loss, the throughput and the time so far; returns when it printed."""
    elapsed = time.time() - started
    rate = seen / max(elapsed, 1e-9)  # a coarse clock can read 0 s
    print(f"  epoch {epoch:3d}/{max_epochs} | loss {loss:.4f} | {rate:5.0f} img/s | {elapsed:6.1f}s")
    return time.time()


def plan_line(case: str, pool_size: int, test_size: int, sizes: list[int]) -> str:
    plan = " + ".join(map(str, sizes)) if len(sizes) < 8 else f"{sizes[0]} + {len(sizes) - 1} rounds of <= {sizes[1]}"
    return f"{case.upper()}: pool {pool_size}, test {test_size}, budget {sum(sizes)} = {plan}"


def round_record(round_index, labeled, chosen, metrics, epochs, kept_epoch, train_loss, dataset) -> dict:
    """What results.json keeps of a round (the times are added once the round ends)."""
    queried = torch.bincount(dataset.labels[chosen], minlength=len(dataset.class_names)).tolist()
    return {
        "round": round_index,
        "labeled": len(labeled),
        "queried": dict(zip(dataset.class_names, queried)),
        "mca": metrics["mca"],
        "aca": metrics["aca"],
        "per_class": metrics["per_class"],
        "epochs": epochs,
        "kept_epoch": kept_epoch,  # the weights the round keeps; the epochs after it only decided to stop
        "train_loss": train_loss,
    }


def round_line(record: dict, budget: int, seen: int) -> str:
    """The progress line of a round: what it labeled, the test metrics, the time and the throughput."""
    histogram = " ".join(f"{SHORT_NAMES.get(name, name[:6])}:{count}" for name, count in record["queried"].items())
    throughput = seen / max(record["train_seconds"], 1e-9)
    return (
        f"round {record['round']:2d} | labeled {record['labeled']:5d}/{budget} | queried {histogram} | "
        f"MCA {100 * record['mca']:5.1f}% ACA {100 * record['aca']:5.1f}% | train {record['train_seconds']:5.1f}s "
        f"({record['epochs']} ep, kept {record['kept_epoch']}, {throughput:5.0f} img/s) "
        f"score {record['score_seconds']:4.1f}s | {record['seconds']:5.1f}s"
    )


def finish(args, made, dataset, pool, test, labeled, rounds, model, setup_seconds) -> dict:
    """The final test with the full network, then results.json, labeled.csv, model.pt and confusion.png."""
    out, device = Path(made["out"]), next(model.parameters()).device
    # The final test metrics with the full network, in float32 whatever the run trained in: the published numbers
    # are exact, and evaluate.py on model.pt gives them again.
    cell_specimens = [dataset.specimens[i] for i in test.tolist()] if made["split"] == "specimen" else None
    probabilities = predict_probabilities(model, dataset.images[test], device, 64)
    metrics = summarize(dataset.labels[test], probabilities, dataset.class_names, cell_specimens)
    saved = {key: value for key, value in made.items() if key != "fingerprint"}
    # evaluate.py remakes the split from split_parts (splits.pool_and_test)
    saved.update(data_kind="target", split_parts=made["split_parts"], test_specimens=specimens_of(dataset, test))
    checkpoint = {"model": model.state_dict(), "class_names": dataset.class_names, "args": vars(args)}
    checkpoint["format"] = CHECKPOINT_FORMAT
    checkpoint.update(derived=saved, round=len(rounds) - 1, metrics={"test": metrics})
    save_atomic(checkpoint, out / "model.pt")
    title = f"{made['case'].upper()} at limit {args.limit:g}, test split"
    draw_confusion(metrics["confusion"], dataset.class_names, out / "confusion.png", title)
    write_text_atomic(labeled_csv(dataset, labeled), out / "labeled.csv")
    results = {"args": vars(args), "derived": saved, "case": made["case"], **final_metrics(metrics)}
    results["data_digest"] = fingerprint_digest(made["fingerprint"])  # a grid reads a run back only on its data
    results.update(split=made["split"], development=args.development, test_specimens=saved["test_specimens"])
    results.update(fold=args.fold, folds=args.folds if args.fold is not None else None)
    results.update(specimen_accuracy=metrics.get("specimen_accuracy"), specimen_results=metrics.get("specimens"))
    results.update(budget=len(labeled), labeled=len(labeled))  # the loop spends the budget exactly (round_sizes)
    results.update(seconds=setup_seconds + sum(r["seconds"] for r in rounds), pool=len(pool), test=len(test))
    results["rounds"] = rounds
    write_text_atomic(json.dumps(results, indent=2), out / "results.json")
    release_lock(out / "run.lock")
    vote = metrics.get("specimen_accuracy")
    by_specimen = f", specimens {100 * vote:.1f}% by majority vote" if vote is not None else ""
    print(
        f"final ({made['split']} split): MCA {100 * metrics['mca']:.2f}% ACA {100 * metrics['aca']:.2f}%{by_specimen} "
        f"with {len(labeled)} labels ({len(labeled) / len(pool):.1%} of the pool); run written to {out}"
    )
    return results


def final_metrics(metrics: dict) -> dict:
    return {key: metrics[key] for key in ("mca", "aca", "per_class", "confusion")}


def labeled_csv(dataset, labeled: list[dict]) -> str:
    """labeled.csv: index, file, label, specimen, round and reason of every labeled cell, in labeling order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "file", "label", "specimen", "round", "reason"])
    for entry in labeled:
        index = entry["index"]
        specimen = dataset.specimens[index] if dataset.specimens is not None else None
        label = dataset.class_names[dataset.labels[index]]
        file = spreadsheet_cell(dataset.files[index])
        writer.writerow([index, file, label, spreadsheet_cell(specimen or ""), entry["round"], entry["reason"]])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The run's state: what --resume reads (the one resume design: runs.py)


STATE_FIELDS = {"args": dict, "derived": dict, "fingerprint": dict, "labeled": list, "rounds": list, "model": dict}
STATE_FIELDS.update(generator=torch.Tensor, torch_rng=torch.Tensor, round=int, setup_seconds=NUMBER)
ROUND_FIELDS = {"round": int, "labeled": int, "mca": NUMBER, "aca": NUMBER, "per_class": dict, "epochs": int}
ROUND_FIELDS.update(scored=int, train_seconds=NUMBER, score_seconds=NUMBER, seconds=NUMBER)
RESULTS_FIELDS = {"args": dict, "case": str, "mca": NUMBER, "aca": NUMBER, "per_class": dict, "confusion": list}
RESULTS_FIELDS.update(labeled=int, pool=int, test=int, rounds=list)


def read_results(path) -> dict:
    """A run's results.json, checked: every key the project reads back, of its type, else one line naming it."""
    results = check_fields(read_json(path), RESULTS_FIELDS, path, "an active.py run's results.json")
    for record in results["rounds"]:
        check_fields(record, ROUND_FIELDS, path, "an active.py run's results.json (a round)")
    return results


def open_run(args, out: Path) -> dict | None:
    """Check --out and hold its lock before any work; the killed run's state.pt when resuming, else None.

    A run folder belongs to one run: a new run is refused where one of other settings was made."""
    check_output_folder(out)
    take_lock(out / "run.lock", f"--out {out}")
    for name in ("state.pt", "model.pt", "results.json", "labeled.csv", "confusion.png"):
        remove_stale_temporaries(out / name)  # what a save killed half-way left behind
    if args.resume:
        state = load_state(out / "state.pt", STATE_FIELDS, "an active.py run")
        check_resume(state["args"], args, out / "state.pt", may_change=("device",))
        return state
    for made in (out / "results.json", out / "state.pt"):
        if made.exists():
            saved = read_results(made) if made.suffix == ".json" else load_state(made, STATE_FIELDS, "an active.py run")
            differs = other_settings(saved["args"], args, may_change=("device",))
            if differs is not None:
                raise DataError(f"--out {out}: holds a run made {differs}; use another --out (or --resume it)")
    return None


def save_state(args, made, dataset, pool, rounds, model, generator, setup_seconds) -> None:
    """state.pt after every round, written atomically: what `--resume` needs to go on exactly."""
    state = {
        "args": vars(args),
        "derived": {key: value for key, value in made.items() if key != "fingerprint"},
        "fingerprint": made["fingerprint"],
        "round": len(rounds) - 1,
        "labeled": pool.labeled,
        "rounds": rounds,
        "model": model.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "class_names": dataset.class_names,
        "format": CHECKPOINT_FORMAT,
        "setup_seconds": setup_seconds,
    }
    save_atomic(state, Path(made["out"]) / "state.pt")


def restore(state: dict, made: dict, dataset, model, generator, pool, setup_seconds: float):
    """Put a killed run's labels, weights and random states back; (its rounds, its setup time and this one's)."""
    path = Path(state["derived"]["out"]) / "state.pt"
    check_same_data(state["fingerprint"], made["fingerprint"], path)
    check_same_precision(state["derived"], made, path)
    model.load_state_dict(state["model"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    pool.labeled = state["labeled"]
    print(f"resumed {state['derived']['out']} after round {state['round']} ({len(pool.labeled)} labeled)")
    return state["rounds"], setup_seconds + state["setup_seconds"]
