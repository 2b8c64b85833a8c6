"""What a run records, prints, saves for a resume and leaves behind: active.py's and train.py's, the same way.

Not the paper (the workshop): both scripts' loops call these by name. train.py writes its best
checkpoint OUT and, after every epoch, OUT.state (the section at the end). After every round an
active.py run folder holds state.pt (what `--resume` needs to go on exactly); it ends with
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
import math
import time
from pathlib import Path

import torch

from data import SHORT_NAMES, DataError
from lab.commands import check_flags, check_image_size, refuse_unused, was_typed
from lab.devices import check_same_precision, pick_device, pick_precision, precision_line, seed_everything
from lab.layouts import get_dataset, spreadsheet_cell
from lab.pictures import draw_confusion, made_here
from lab.recipe import PRETRAINING, paper_settings
from lab.runs import (
    CHECKPOINT_FORMAT,
    NUMBER,
    check_fields,
    check_output_file,
    check_output_folder,
    check_outputs,
    check_resume,
    check_same_data,
    data_fingerprint,
    fingerprint_digest,
    load_checkpoint,
    load_state,
    network_from_checkpoint,
    other_settings,
    preprocessing,
    read_json,
    release_lock,
    remove_stale_temporaries,
    save_atomic,
    take_lock,
    write_text_atomic,
)
from lab.splits import source_split, specimens_of


def unused_flags(args) -> list:
    """(flag, applies, why not) of every flag that only some runs use (commands.refuse_unused)."""
    at_once = "--strategy random labels the whole budget at once"
    return [
        ("checkpoint", not args.scratch, "--scratch trains from random weights, without a checkpoint"),
        ("fractions", args.strategy != "random", at_once),
        ("folds", args.fold is not None, "it counts the folds of --fold; add --fold F"),
        ("synthetic_cells", args.data is None, "--data reads the cells; the synthetic default is not made"),
    ]


def check_run_flags(args, parser) -> None:
    """One line for a flag out of range, or one this run cannot use (commands.refuse_unused, unused_flags)."""
    if not 0 < args.limit <= 1:
        raise DataError(f"--limit {args.limit}: expected a fraction in (0, 1]")
    if args.folds < 2:
        raise DataError(f"--folds {args.folds}: expected at least 2")
    if args.fold is not None and not 0 <= args.fold < args.folds:
        raise DataError(f"--fold {args.fold}: expected a fold from 0 to {args.folds - 1} (--folds {args.folds})")
    for name, fraction in zip("KM", args.fractions):
        if not 0 < fraction <= 1:
            given = " ".join(f"{value:g}" for value in args.fractions)
            raise DataError(f"--fractions {given}: expected {name}, a fraction of the budget in (0, 1]")
    if args.min_decrease < 0:
        raise DataError(f"--min-decrease {args.min_decrease}: expected 0 or more")
    check_flags(args, ("max_epochs", "batch_size", "synthetic_cells"))
    if args.scratch:  # else the cells are prepared as the checkpoint's were
        check_image_size(args.image_size)
    refuse_unused(args, parser, unused_flags(args))


def case_name(args) -> str:
    strategy = {"entropy": "al", "random": "rs", "random-rounds": "rs-rounds"}.get(args.strategy, args.strategy)
    return strategy if args.scratch else f"in-{strategy}"


def run_folder(args) -> str:
    return args.out or f"runs/{case_name(args)}-limit{args.limit:g}-seed{args.seed}"


def epoch_line(record: dict, seen: int) -> str:
    """An epoch's progress line, train.py's and a long fine-tuning's: its losses (and the validation metrics where
    there are), the time and the throughput."""
    line = f"epoch {record['epoch']:3d}" + (f"/{record['max_epochs']}" if "max_epochs" in record else "")
    line += f" | train loss {record['train_loss']:.4f}"
    if "train_acc" in record:
        line += f" acc {100 * record['train_acc']:5.1f}%"
    if "val_loss" in record:
        line += f" | val loss {record['val_loss']:.4f} MCA {100 * record['val_mca']:5.1f}%"
        line += f" ACA {100 * record['val_aca']:5.1f}%"
    rate = seen / max(record["seconds"], 1e-9)  # a coarse clock can read 0 s
    return line + f" | {record['seconds']:5.1f}s {rate:6.0f} img/s"


PROGRESS_SECONDS = 30  # a long fine-tuning prints an epoch line at most this often (a round line ends every round)


def epoch_progress(last_line: float, started: float, epoch: int, max_epochs: int, train_loss: float, seen: int):
    """A long fine-tuning's epoch line, at most every PROGRESS_SECONDS; returns when the last one was printed."""
    if time.time() - last_line < PROGRESS_SECONDS:
        return last_line
    line = {"epoch": epoch, "max_epochs": max_epochs, "train_loss": train_loss, "seconds": time.time() - started}
    print("  " + epoch_line(line, seen))
    return time.time()


def plan_line(case: str, pool_size: int, test_size: int, sizes: list[int]) -> str:
    plan = " + ".join(map(str, sizes)) if len(sizes) < 8 else f"{sizes[0]} + {len(sizes) - 1} rounds of <= {sizes[1]}"
    return f"{case.upper()}: pool {pool_size}, test {test_size}, budget {sum(sizes)} = {plan}"


def round_line(record: dict, budget: int, seen: int) -> str:
    """The progress line of a round: what it labeled, the test metrics, the time and the throughput."""
    histogram = " ".join(f"{SHORT_NAMES.get(name, name[:6])}:{count}" for name, count in record["queried"].items())
    throughput = seen / max(record["train_seconds"], 1e-9)
    return (
        f"round {record['round']:2d} | labeled {record['labeled']:5d}/{budget} | queried {histogram} | "
        f"MCA {100 * record['mca']:5.1f}% ACA {100 * record['aca']:5.1f}% | train {record['train_seconds']:5.1f}s "
        f"({record['epochs']} ep, {throughput:5.0f} img/s) score {record['score_seconds']:4.1f}s | "
        f"{record['seconds']:5.1f}s"
    )


def open_run(args, parser) -> dict:
    """active.py's edge, before Table 1's first step: the flags checked (--paper applied), the device and seeds,
    --out checked and locked, the target cells prepared as the checkpoint's source cells were, and with --resume
    the killed run's state.pt, refused where its data or precision differ from this command's.

    Returns the job that active.run reads: settings (the flags, plain values), device, precision, dataset,
    pretrained (the checkpoint's network, or None with --scratch), state; and for this file's books args, derived
    (what the run worked out; args stay as given), fingerprint, started."""
    started = time.time()
    check_run_flags(args, parser)
    paper_settings(args, parser)  # lab/recipe.py: the paper's value of each flag where the defaults depart
    device = pick_device(args.device)
    seed_everything(args.seed)
    out, state = open_folder(args)
    precision = pick_precision(device, args.float32)  # bfloat16 where the device computes in it
    print(precision_line(device, precision))
    dataset, checkpoint, preparation = target_data(args, parser)
    derived = {"case": case_name(args), "out": str(out), "precision": precision, **preparation}
    fingerprint = data_fingerprint(dataset)  # what state.pt records, so that a resume reads the same data
    if state is not None:  # a resume goes on only with the data and the precision it ran with
        check_resumable(state, fingerprint, derived, out / "state.pt")
    pretrained = None if checkpoint is None else network_from_checkpoint(checkpoint)
    job = {"settings": dict(vars(args)), "device": device, "precision": precision, "dataset": dataset}
    job.update(pretrained=pretrained, state=state)
    return {**job, "args": args, "derived": derived, "fingerprint": fingerprint, "started": started}


def target_data(args, parser):
    """(the target cells, the pretrained checkpoint or None, their preprocessing): the cells prepared as the
    checkpoint's source cells were, so that target cells meet the network as source cells did, or as --image-size
    and --normalize say with --scratch."""
    pretrained = None if args.scratch else load_checkpoint(args.checkpoint)
    image_size, normalize = (args.image_size, args.normalize) if args.scratch else preprocessing(pretrained)
    if args.paper and normalize != "none":
        why = f"--checkpoint {args.checkpoint} prepares its cells with the {normalize} stretch, not the paper's"
        raise DataError(f"--paper: {why}; pretrain with `python train.py --paper` first (or add --scratch)")
    for flag, value in (("image_size", image_size), ("normalize", normalize)):
        given = getattr(args, flag)
        if was_typed(args, parser, flag) and given != value:  # a flag this run cannot use, refused in one line
            why = f"a pretrained run prepares its cells as its --checkpoint's were ({value}; add --scratch to set it)"
            raise DataError(f"--{flag.replace('_', '-')} {given}: {why}")
    made = (args.seed, args.synthetic_cells, args.specimens)
    dataset = get_dataset(args.data, "target", None, image_size, normalize, *made)
    return dataset, pretrained, {"image_size": image_size, "normalize": normalize}


def start_run(job: dict, model, step_one: tuple, generator, sizes: list[int]) -> dict:
    """The run's book: what every round records, saves in state.pt and prints, and the objects it saves; with a
    killed run's state (job["state"]), its labels, weights and random states put back. step_one: active.run's
    (pool, test, by, parts), recorded so that evaluate.py remakes the split."""
    pool, test, by, parts = step_one
    book = {key: job[key] for key in ("args", "derived", "dataset", "fingerprint")}
    book["derived"].update(split=by, split_parts=parts)
    book.update(model=model, generator=generator, pool=pool, test=test, budget=sum(sizes), rounds=[])
    book["setup_seconds"] = time.time() - job["started"]
    state = job["state"]
    if state is not None:
        restore(state, model, generator)
        pool.load_state_dict(state)
        print(f"resumed {state['derived']['out']} after round {state['round']} ({len(pool.ledger)} labeled)")
        book.update(rounds=state["rounds"], setup_seconds=book["setup_seconds"] + state["setup_seconds"])
    print(plan_line(book["derived"]["case"], len(pool), len(test), sizes))
    if job["args"].stop_on == "test":
        print("--stop-on test: the test split's loss stops every fine-tuning, so the test split chooses when to stop")
    return book


def check_resumable(state: dict, fingerprint: dict, derived: dict, path: Path) -> None:
    """The first half of the one resume step of both scripts: refuse other data or another precision than the
    killed run's (this command's fingerprint and derived)."""
    check_same_data(state["fingerprint"], fingerprint, path)
    check_same_precision(state.get("derived", {}), derived, path)


def restore(state: dict, model, generator, optimizer=None) -> None:
    """The second half: put the killed run's weights, optimizer and random states back."""
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])


def end_round(book: dict, round_index: int, chosen, scored: int, fit: dict, metrics: dict, started: float) -> None:
    """A round's record (results.json keeps them all), state.pt written atomically, and its progress line."""
    dataset, pool = book["dataset"], book["pool"]
    queried = torch.bincount(dataset.labels[chosen], minlength=len(dataset.class_names)).tolist()
    record = {"round": round_index, "labeled": len(pool.ledger), "queried": dict(zip(dataset.class_names, queried))}
    record.update(mca=metrics["mca"], aca=metrics["aca"], per_class=metrics["per_class"], epochs=fit["epochs"])
    record.update(train_loss=fit["train_loss"], scored=scored, train_seconds=fit["seconds"])
    if book["args"].stop_on == "test":  # the test split's loss that stopped the round
        record["stop_loss"] = fit["stop_loss"]
    record.update(score_seconds=fit["started"] - started if scored else 0.0, seconds=time.time() - started)
    book["rounds"].append(record)
    line = round_line(record, book["budget"], fit["seen"])
    save_state(book)
    print(line, flush=True)


def finish(book: dict, metrics: dict) -> dict:
    """active.run's final test metrics written: results.json, labeled.csv, model.pt and confusion.png."""
    args, made, dataset, model = book["args"], book["derived"], book["dataset"], book["model"]
    pool, test = book["pool"], book["test"]
    labeled = pool.ledger
    out, rounds = Path(made["out"]), book["rounds"]
    # evaluate.py remakes the split from split_parts (splits.pool_and_test)
    saved = {**made, "data_kind": "target", "test_specimens": specimens_of(dataset, test)}
    checkpoint = {"model": model.state_dict(), "class_names": dataset.class_names, "args": vars(args)}
    checkpoint["format"] = CHECKPOINT_FORMAT
    checkpoint.update(derived=saved, round=len(rounds) - 1, metrics={"test": metrics})
    save_atomic(checkpoint, out / "model.pt")
    title = f"{made['case'].upper()} at limit {args.limit:g}, test split"
    draw_confusion(metrics["confusion"], dataset.class_names, out / "confusion.png", title)
    write_text_atomic(labeled_csv(dataset, labeled), out / "labeled.csv")
    results = {"args": vars(args), "derived": saved, "case": made["case"], **final_metrics(metrics)}
    results["data_digest"] = fingerprint_digest(book["fingerprint"])  # a grid reads a run back only on its data
    results.update(split=made["split"], development=args.development, test_specimens=saved["test_specimens"])
    results.update(fold=args.fold, folds=args.folds if args.fold is not None else None)
    results["stopped_on"] = STOPPED_ON[args.stop_on]  # --stop-on test lets the test split choose: said with its numbers
    results.update(specimen_accuracy=metrics.get("specimen_accuracy"), specimen_results=metrics.get("specimens"))
    results.update(budget=len(labeled), labeled=len(labeled))  # the loop spends the budget exactly (round_sizes)
    seconds = book["setup_seconds"] + sum(r["seconds"] for r in rounds)
    results.update(seconds=seconds, pool=len(pool), test=len(test))
    results["rounds"] = rounds
    write_text_atomic(json.dumps(results, indent=2), out / "results.json")
    release_lock(out / "run.lock")
    vote = metrics.get("specimen_accuracy")
    by_specimen = f", specimens {100 * vote:.1f}% by majority vote" if vote is not None else ""
    by_specimen += ", STOPPED ON THE TEST SPLIT" if args.stop_on == "test" else ""
    print(
        f"final ({made['split']} split): MCA {100 * metrics['mca']:.2f}% ACA {100 * metrics['aca']:.2f}%{by_specimen} "
        f"with {len(labeled)} labels ({len(labeled) / len(pool):.1%} of the pool); run written to {out}"
    )
    return results


STOPPED_ON = {"train": "the training loss", "test": "the test split"}


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
# The run's state: what --resume reads (the one resume design: lab/runs.py)


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


def open_folder(args) -> tuple[Path, dict | None]:
    """Check --out and hold its lock before any work: (the run folder, the killed run's state.pt when resuming).

    A run folder belongs to one run: a new run is refused where one of other settings was made."""
    out = check_output_folder(run_folder(args))
    inputs = {"--checkpoint": None if args.scratch else args.checkpoint, "--specimens": args.specimens}
    check_outputs([("--out", out / "model.pt", True, None)], inputs, {"--data": args.data})  # not among the cells
    take_lock(out / "run.lock", f"--out {out}")
    for name in ("state.pt", "model.pt", "results.json", "labeled.csv", "confusion.png"):
        remove_stale_temporaries(out / name)  # what a save killed half-way left behind
    if args.resume:
        state = load_state(out / "state.pt", STATE_FIELDS, "an active.py run")
        check_resume(state["args"], args, out / "state.pt", may_change=("device",))
        return out, state
    for made in (out / "results.json", out / "state.pt"):
        if made.exists():
            saved = read_results(made) if made.suffix == ".json" else load_state(made, STATE_FIELDS, "an active.py run")
            differs = other_settings(saved["args"], args, may_change=("device",))
            if differs is not None:
                raise DataError(f"--out {out}: holds a run made {differs}; use another --out (or --resume it)")
    return out, None


def save_state(book: dict) -> None:
    """state.pt after every round, written atomically: what `--resume` needs to go on exactly."""
    state = {"args": vars(book["args"]), "derived": book["derived"], "fingerprint": book["fingerprint"]}
    state.update(round=len(book["rounds"]) - 1, **book["pool"].state_dict(), rounds=book["rounds"])
    state.update(model=book["model"].state_dict(), generator=book["generator"].get_state())
    state.update(torch_rng=torch.get_rng_state(), class_names=book["dataset"].class_names, format=CHECKPOINT_FORMAT)
    state["setup_seconds"] = book["setup_seconds"]
    save_atomic(state, Path(book["derived"]["out"]) / "state.pt")


# ---------------------------------------------------------------------------------------------
# Pretraining (train.py): the same bookkeeping, epoch by epoch; OUT.state beside the checkpoint OUT


PRETRAINING_MAY_CHANGE = ("max_epochs", "patience", "device")
PRETRAINING_FIELDS = {"args": dict, "fingerprint": dict, "model": dict, "optimizer": dict, "history": list}
PRETRAINING_FIELDS.update(generator=torch.Tensor, torch_rng=torch.Tensor, epoch=int, best_loss=NUMBER, bad_epochs=int)


def _beside(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


def open_pretraining(args, parser) -> dict:
    """train.py's edge, before its first epoch: the flags checked (--paper applied), the device and seeds, --out
    checked and locked (the killed run's OUT.state read with --resume), the source cells and their train,
    validation and test sides. Returns the job that train.run reads: settings (the flags, plain values), device,
    precision, dataset, sides, state; and for this file's books args and derived."""
    check_pretraining_flags(args)
    paper_settings(args, parser, PRETRAINING)  # lab/recipe.py: the paper's preprocessing and precision
    device = pick_device(args.device)
    state = open_checkpoint_file(args)
    seed_everything(args.seed)
    dataset, derived, sides = source_split(args, parser)
    derived["precision"] = pick_precision(device, args.float32)  # bfloat16 where the device computes in it
    print(precision_line(device, derived["precision"]))
    job = {"settings": dict(vars(args)), "device": device, "precision": derived["precision"], "dataset": dataset}
    return {**job, "sides": sides, "state": state, "args": args, "derived": derived}


def check_pretraining_flags(args) -> None:
    check_flags(args, ("max_epochs", "batch_size", "rotations", "patience", "synthetic_cells"))
    check_image_size(args.image_size)
    if not (0 < args.val_fraction < 1 and 0 <= args.test_fraction < 1 and args.val_fraction + args.test_fraction < 1):
        raise DataError("--val-fraction/--test-fraction: expected fractions in (0, 1) that sum to less than 1")


def open_checkpoint_file(args) -> dict | None:
    """Check --out and hold its lock before any work; the killed run's OUT.state when resuming, else None.

    A checkpoint of another kind at --out (active.py's model.pt, a campaign's) is never overwritten."""
    out = check_output_file(args.out, "--out")
    picture = out.with_name(out.stem + "-confusion.png")  # derived: never over a picture this project did not draw
    inputs = {"--split-file": args.split_file, "--specimens": args.specimens}
    check_outputs([("--out", out, True, None), ("--out's picture", picture, False, made_here)], inputs,
                  {"--data": args.data})  # fmt: skip
    take_lock(_beside(out, ".lock"), f"--out {out}")
    for path in (out, _beside(out, ".state")):  # what a save killed half-way left behind
        remove_stale_temporaries(path)
    if args.resume:
        state = load_state(_beside(out, ".state"), PRETRAINING_FIELDS, "a train.py run")
        check_resume(state["args"], args, _beside(out, ".state"), PRETRAINING_MAY_CHANGE)
        return state
    if out.exists():
        kind = load_checkpoint(out, "--out")["derived"].get("data_kind", "source")
        if kind != "source":
            raise DataError(f"--out {out}: holds a {kind} checkpoint, not train.py's; choose another --out")
    return None


def start_pretraining(job: dict, model, optimizer, generator) -> dict:
    """The pretraining's book: what every checkpoint holds, the epochs so far, and the objects OUT.state saves;
    with a killed run's state, its weights, optimizer and random states put back."""
    args, derived, dataset, state = job["args"], job["derived"], job["dataset"], job["state"]
    record = {"class_names": dataset.class_names, "args": vars(args), "derived": derived, "format": CHECKPOINT_FORMAT}
    book = {"record": record, "fingerprint": data_fingerprint(dataset), "out": Path(args.out), "dataset": dataset}
    book.update(model=model, optimizer=optimizer, generator=generator, epoch=0, history=[])
    book["resumed"] = {"best_loss": math.inf, "bad_epochs": 0}  # train.run's rule starts from these
    if state is None:
        return book
    path = _beside(book["out"], ".state")
    check_resumable(state, book["fingerprint"], derived, path)
    restore(state, model, generator, optimizer)
    may_change = "a resume may change --max-epochs, --patience, --device"
    print(f"resumed from {path} after epoch {state['epoch']} ({may_change})")
    book.update(epoch=state["epoch"], history=state["history"])
    book["resumed"] = {"best_loss": state["best_loss"], "bad_epochs": state["bad_epochs"]}
    return book


def end_epoch(book: dict, record: dict, val: dict, seen: int, best_loss: float, bad_epochs: int) -> None:
    """An epoch's record in the history; the checkpoint OUT when train.run found the validation loss the lowest so
    far (bad_epochs 0); OUT.state with train.run's best loss and count, written atomically; the progress line."""
    improved = bad_epochs == 0
    if improved:  # the best checkpoint: what active.py fine-tunes
        best = {**book["record"], "model": book["model"].state_dict(), "epoch": record["epoch"]}
        save_atomic({**best, "metrics": {"val": val}}, book["out"])
    book["epoch"] = record["epoch"]
    book["history"].append(record)
    print(epoch_line(record, seen) + (" | saved" if improved else ""), flush=True)
    state = {**book["record"], "epoch": book["epoch"], "history": book["history"], "model": book["model"].state_dict()}
    state.update(best_loss=best_loss, bad_epochs=bad_epochs, optimizer=book["optimizer"].state_dict())
    state.update(fingerprint=book["fingerprint"], generator=book["generator"].get_state())
    state["torch_rng"] = torch.get_rng_state()
    save_atomic(state, _beside(book["out"], ".state"))


def kept_checkpoint(book: dict, best_loss: float) -> dict:
    """The checkpoint OUT that train.run kept (its lowest validation loss), read back; one line where no epoch gave a
    finite validation loss, so that nothing was saved."""
    history, out = book["history"], book["out"]
    if best_loss == math.inf:  # no epoch improved on nothing: every validation loss was NaN
        last = history[-1]["val_loss"] if history else "none"
        kept = f"nothing was saved and {out} was left as it was"
        raise DataError(f"no epoch gave a finite validation loss (last: {last}); {kept}")
    return load_checkpoint(out)


def finish_pretraining(book: dict, best: dict, test: dict | None) -> dict:
    """OUT again with the kept network's test metrics (train.run's one look at the test split) and the history."""
    history, out, dataset = book["history"], book["out"], book["dataset"]
    metrics = dict(best["metrics"])
    if test is not None:
        metrics["test"] = test
        picture = out.with_name(out.stem + "-confusion.png")  # beside --out, named after it
        title = f"pretraining, test split of {dataset.source}"
        draw_confusion(metrics["test"]["confusion"], dataset.class_names, picture, title)
    save_atomic({**best, "metrics": metrics, "history": history}, out)
    val = metrics["val"]
    print(f"best epoch {best['epoch']}: validation MCA {100 * val['mca']:.2f}% ACA {100 * val['aca']:.2f}%")
    release_lock(_beside(out, ".lock"))
    print(f"checkpoint written to {out}")
    return {"checkpoint": str(out), "metrics": metrics, "history": history}
