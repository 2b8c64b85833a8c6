"""Labeling campaigns: a person plays the oracle of the paper's active learning loop (Sec. 2.2, Table 1).

The paper simulates the annotator with stored labels; a lab has unlabeled cells and one expert:

    python -m lab.campaign query --pool DIR --checkpoint runs/pretrained.pt --n 50 --out CAMPAIGN
    (fill the label column of CAMPAIGN/round-000.csv, looking at CAMPAIGN/round-000.png)
    python -m lab.campaign ingest CAMPAIGN      # validates, adds the labels, fine-tunes, writes the next query
    python -m lab.campaign status CAMPAIGN
    python -m lab.labeling CAMPAIGN             # the same steps on a local web page

Round 0 is a random sample (the seed set); later rounds ask the most uncertain
cells (entropy, Eq. 3) after fine-tuning on every label so far (Sec. 3.1), with
the loop's own functions from active.py. CAMPAIGN/campaign.json is the whole
state (settings, ledger of every label, the pending query, the current model's
file). A step writes its new files under new names first and replaces
campaign.json last, so a step killed at any point leaves the campaign as it
was, and running it again is safe. ledger.csv and export/ (labels.csv for
`train.py --data`, model.pt for evaluate.py) are rewritten after every step.
"""

import argparse
import csv
import hashlib
import io
import json
import re
import time
from pathlib import Path

import torch

from active import TRAINING, entropy, fine_tune, select_most_uncertain
from data import SHORT_NAMES, TARGET_CLASSES, DataError, read_cell
from evaluate import predict_probabilities, summarize
from lab.commands import check_flags, run_command
from lab.devices import add_device_flag, pick_device, seed_everything
from lab.layouts import canonical_class, load_unlabeled, parse_class_list, read_csv_rows, specimens_in, spreadsheet_cell
from lab.pictures import draw_contact_sheet
from lab.recipe import MAX_EPOCHS, early_feature_cache, forward_fn
from lab.runs import (
    CHECKPOINT_FORMAT,
    NUMBER,
    check_fields,
    check_output_folder,
    load_checkpoint,
    network_from_checkpoint,
    preprocessing,
    read_json,
    write_all_atomic,
)
from model import ParallelResNet, freeze_early_layers, transfer

SKIP = "skip"


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_held_out(key: str, seed: int, holdout: float) -> bool:
    """A fixed share of the campaign's labels, chosen by a hash of the key, is kept for validation.

    The key is the cell's specimen when the campaign knows it, so a specimen's cells are all held
    out or all trained on and the held-out accuracy is one on unseen specimens; else the file name."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 2**32 < holdout


# What campaign.json must hold, each of its type: the one reader of the file checks it before any step.
CAMPAIGN_FIELDS = {"pool": str, "classes": list, "checkpoint": str, "n": int, "seed": int, "holdout": NUMBER}
CAMPAIGN_FIELDS.update(image_size=int, normalize=str, max_epochs=int, round=int, model=str)
CAMPAIGN_FIELDS.update(ledger=list, history=list, pending=list)
ENTRY_FIELDS = {"ledger": {"file": str, "label": str, "round": int}, "pending": {"file": str, "sha256": str}}
ENTRY_FIELDS["history"] = {"round": int, "new_labels": int, "labels": int, "trained_on": int, "epochs": int}
ENTRY_FIELDS["history"].update(validation=(dict, type(None)))


def load_campaign(folder: Path) -> dict:
    path = folder / "campaign.json"
    if not path.is_file():
        raise DataError(f"{folder}: not a campaign folder (no campaign.json); start one with `python -m lab.campaign query`")
    state = check_fields(read_json(path), CAMPAIGN_FIELDS, path, "a campaign's state")
    for key, fields in ENTRY_FIELDS.items():
        for entry in state[key]:
            check_fields(entry, fields, path, f"a campaign's state (an entry of '{key}')")
    check_fields(state, {"specimens": dict} if "specimens" in state else {}, path, "a campaign's state")
    return state


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True)
    query = commands.add_parser("query", help="start a campaign: the first cells to label", allow_abbrev=False)
    query.add_argument("--pool", required=True, help="folder of unlabeled cell images")
    query.add_argument(
        "--checkpoint", default="runs/pretrained.pt", help="pretrained network (default: runs/pretrained.pt)"
    )
    query.add_argument("--n", type=int, default=50, help="cells asked per round (default: 50)")
    query.add_argument("--out", required=True, help="campaign folder to create")
    query.add_argument(
        "--classes", nargs="+", default=None, help="the campaign's classes (default: the six target classes)"
    )
    query.add_argument("--holdout", type=float, default=0.2, help="share of labels kept for validation (default: 0.2)")
    query.add_argument("--seed", type=int, default=0, help="seed for the first random round and training (default: 0)")
    query.add_argument(
        "--max-epochs",
        type=int,
        default=MAX_EPOCHS,
        help=f"most epochs per fine-tuning (default: {MAX_EPOCHS}, as active.py)",
    )
    query.add_argument(
        "--specimens",
        default=None,
        help="CSV of file,specimen for the pool's images: the hold-out keeps specimens whole "
        "(default: specimens.csv in the pool folder, if any)",
    )
    ingest_parser = commands.add_parser(
        "ingest", help="add the filled labels, fine-tune, ask again", allow_abbrev=False
    )
    status = commands.add_parser("status", help="rounds, labels per class, held-out accuracy", allow_abbrev=False)
    drop_parser = commands.add_parser(
        "drop", help="take labels out of the ledger (a changed or deleted file)", allow_abbrev=False
    )
    for command in (ingest_parser, status, drop_parser):
        command.add_argument("campaign", help="campaign folder")
    drop_parser.add_argument("files", nargs="+", help="file names as the ledger has them")
    for command in (query, ingest_parser, status):
        add_device_flag(command)
    return parser


def main(argv=None) -> dict:
    return run_command(run, build_parser().parse_args(argv))


def run(args) -> dict:
    if args.command == "query":
        return start_campaign(args)
    folder = Path(args.campaign)
    if args.command == "ingest":
        return ingest(folder, pick_device(args.device))
    if args.command == "drop":
        return drop(folder, args.files)
    state = load_campaign(folder)
    print_status(folder, state)
    return state


def drop(folder: Path, files: list[str]) -> dict:
    """Take these files' labels out of the ledger, as one step: the next ingest trains without them."""
    state = load_campaign(folder)
    unknown = [name for name in files if name not in {entry["file"] for entry in state["ledger"]}]
    if unknown:
        raise DataError(f"{unknown[0]}: not in the ledger of {folder}; name files as ledger.csv has them")
    state["ledger"] = [entry for entry in state["ledger"] if entry["file"] not in files]
    commit(folder, state, [], load_checkpoint(folder / state["model"], "campaign model"), previous_model=None)
    print(f"dropped the labels of {len(files)} file(s); {len(state['ledger'])} labels left in {folder / 'ledger.csv'}")
    return state


def campaign_model(state: dict, folder: Path, device) -> ParallelResNet:
    checkpoint = load_checkpoint(folder / state["model"], "campaign model")
    return freeze_early_layers(network_from_checkpoint(checkpoint, f"campaign model {state['model']}")).to(device)


def start_campaign(args) -> dict:
    folder, pool = Path(args.out), Path(args.pool)
    if (folder / "campaign.json").exists():
        raise DataError(f"--out {folder}: a campaign is already there; continue it with `python -m lab.campaign ingest {folder}`")
    foreign = sorted(path.name for path in folder.iterdir() if not MADE.match(path.name)) if folder.is_dir() else []
    if foreign:  # a campaign writes and removes only files of its own
        raise DataError(f"--out {folder}: holds files of its own (e.g. {foreign[0]}); start the campaign in a new folder")
    check_flags(args, ("n", "max_epochs"))
    if not 0 <= args.holdout < 1:
        raise DataError(f"--holdout {args.holdout}: expected a fraction in [0, 1)")
    classes = parse_class_list(args.classes) or list(TARGET_CLASSES)
    if len(set(classes)) < 2:
        raise DataError(f"--classes {' '.join(classes)}: expected at least two classes")
    if folder.resolve() == pool.resolve() or pool.resolve() in folder.resolve().parents:
        raise DataError(f"--out {folder}: inside the pool {pool}; its query sheets would become cells to label")
    check_output_folder(folder)
    check_output_folder(folder / "export")
    device = pick_device(args.device)
    seed_everything(args.seed)
    pretrained = load_checkpoint(args.checkpoint)
    model = transfer(network_from_checkpoint(pretrained), len(classes)).to(device)  # Sec. 3.1
    image_size, normalize = preprocessing(pretrained)
    images, files = load_unlabeled(pool, image_size, normalize, "--pool")
    names = [Path(file).name for file in files]
    specimens = specimens_in(pool, [Path(file) for file in files], args.specimens) or []
    state = {
        "pool": str(pool.resolve()),
        "specimens": {name: specimen for name, specimen in zip(names, specimens) if specimen is not None},
        "classes": classes,
        "checkpoint": str(args.checkpoint),
        "n": args.n,
        "seed": args.seed,
        "holdout": args.holdout,
        "image_size": image_size,
        "normalize": normalize,
        "max_epochs": args.max_epochs,
        "round": 0,
        "model": "model-000.pt",
        "ledger": [],
        "history": [],
    }
    # The first round has no labels to learn from: the seed set is random, as in the paper (Table 1).
    generator = torch.Generator().manual_seed(args.seed)
    chosen = torch.randperm(len(names), generator=generator)[: args.n].tolist()
    probabilities = predict_probabilities(model, images[chosen], device, 64)
    state["pending"], writes = query_files(folder, state, 0, [names[i] for i in chosen], probabilities)
    commit(folder, state, writes, campaign_checkpoint(model, state, None), previous_model=None)
    print(f"round 0: {len(chosen)} cells picked at random from {len(names)} in {pool}")
    print(
        f"label them in {folder / 'round-000.csv'} (see {folder / 'round-000.png'}), then `python -m lab.campaign ingest {folder}`"
    )
    return state


def query_files(folder: Path, state: dict, round_index: int, names: list[str], probabilities):
    """(the pending entries, the writes of round-NNN.csv, for the annotator to fill, and round-NNN.png, the cells
    numbered as in the CSV): commit writes them with the step's other files."""
    classes, pool = state["classes"], Path(state["pool"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "file", "round", "entropy", "first", "p_first", "second", "p_second", "label"])
    captions, cells = [], []
    uncertainty = entropy(probabilities)
    for number, (name, row, value) in enumerate(zip(names, probabilities, uncertainty.tolist()), start=1):
        top = row.topk(min(2, len(classes)))
        first, second = [classes[i] for i in top.indices.tolist()] + [""] * (2 - len(top.indices))
        p_first, p_second = (top.values.tolist() + [0.0])[:2]
        writer.writerow(
            [number, spreadsheet_cell(name), round_index, f"{value:.4f}", first, f"{p_first:.3f}", second,
             f"{p_second:.3f}", ""]
        )
        captions.append(
            f"{SHORT_NAMES.get(first, first)} {p_first:.2f} / {SHORT_NAMES.get(second, second)} {p_second:.2f}"
        )
        cells.append(read_cell(pool / name))
    sheet = draw_contact_sheet(
        cells, captions, f"round {round_index}: label these cells in round-{round_index:03d}.csv (number = row)"
    )
    text = buffer.getvalue().encode()
    writes = [
        (folder / f"round-{round_index:03d}.csv", lambda temporary: temporary.write_bytes(text)),
        (folder / f"round-{round_index:03d}.png", lambda temporary: sheet.save(temporary, format="PNG")),
    ]
    return [{"file": name, "sha256": file_digest(pool / name)} for name in names], writes


def campaign_checkpoint(model, state: dict, validation) -> dict:
    return {
        "model": model.state_dict(),
        "class_names": state["classes"],
        "format": CHECKPOINT_FORMAT,
        "args": {k: v for k, v in state.items() if k in ("pool", "checkpoint", "n", "seed", "holdout")},
        "round": state["round"],
        "metrics": {"validation": validation},
        "derived": {"image_size": state["image_size"], "normalize": state["normalize"], "data_kind": "campaign"},
    }


# Every name a campaign writes in its folder; a campaign removes only files it made and recorded.
MADE = re.compile(r"(campaign\.json|ledger\.csv|export|round-\d{3}\.(csv|png)|model-\d{3}\.pt|\..+\.tmp\d+)")


def commit(folder: Path, state: dict, writes: list, checkpoint: dict, previous_model: str | None) -> None:
    """The step, whole or not at all: the query's files, the model, ledger.csv, export/ and campaign.json (the
    commit point, last) written as one (runs.write_all_atomic); then the previous round's model, which the
    campaign made and recorded, is removed."""
    pool = Path(state["pool"])
    ledger = io.StringIO()
    writer = csv.writer(ledger)
    writer.writerow(["file", "label", "round"])
    labels = io.StringIO()
    labels_writer = csv.writer(labels)
    labels_writer.writerow(["image", "class"])
    for entry in state["ledger"]:
        writer.writerow([spreadsheet_cell(entry["file"]), entry["label"], entry["round"]])
        if entry["label"] != SKIP:
            labels_writer.writerow([spreadsheet_cell(str(pool / entry["file"])), entry["label"]])
    texts = {
        folder / "ledger.csv": ledger.getvalue().encode(),
        folder / "export" / "labels.csv": labels.getvalue().encode(),
        folder / "campaign.json": json.dumps(state, indent=1).encode(),
    }
    write_all_atomic(
        writes
        + [(folder / state["model"], lambda temporary: torch.save(checkpoint, temporary))]
        + [(folder / "export" / "model.pt", lambda temporary: torch.save(checkpoint, temporary))]
        + [(path, lambda temporary, text=text: temporary.write_bytes(text)) for path, text in texts.items()]
    )
    if previous_model is not None and previous_model != state["model"]:
        (folder / previous_model).unlink(missing_ok=True)


def read_filled_query(folder: Path, state: dict) -> tuple[list[dict], list[str]]:
    """Validate round-NNN.csv; return (new ledger entries, files left unfilled). Any problem: DataError."""
    round_index, classes, pool = state["round"], state["classes"], Path(state["pool"])
    path = folder / f"round-{round_index:03d}.csv"
    if not path.is_file():
        raise DataError(f"{path}: the pending query is missing")
    pending = {entry["file"]: entry["sha256"] for entry in state["pending"]}
    # As a spreadsheet program saves it: any of its encodings, `;` in European locales, trailing empty rows.
    lines, _ = read_csv_rows(path)
    header = [cell.strip() for cell in lines[0]] if lines else []
    rows = [dict(zip(header, line)) for line in lines[1:]]
    if rows and ("file" not in header or "label" not in header):
        raise DataError(f"{path}: expected the columns 'file' and 'label'")
    entries, unfilled, seen = [], [], set()
    valid = ", ".join(classes + [SKIP])
    for line, row in enumerate(rows, start=2):
        name, label = row.get("file") or "", (row.get("label") or "").strip()
        name = name if name in pending else name.strip()  # a name may begin with a space; a spreadsheet may add one
        if name not in pending:
            raise DataError(f"{path}:{line}: '{name}' was not asked in round {round_index}")
        if name in seen:
            raise DataError(f"{path}:{line}: '{name}' appears twice")
        seen.add(name)
        if not label:
            unfilled.append(name)
            continue
        canonical = SKIP if label.lower() == SKIP else canonical_class(label)
        if canonical is None or (canonical != SKIP and canonical not in classes):
            raise DataError(f"{path}:{line}: unknown class '{label}'; expected one of {valid}")
        if not (pool / name).is_file():
            raise DataError(f"{path}:{line}: {pool / name} no longer exists")
        if file_digest(pool / name) != pending[name]:
            raise DataError(f"{path}:{line}: {pool / name} changed since it was queried; label it again next round")
        entries.append({"file": name, "label": canonical, "round": round_index, "sha256": pending[name]})
    missing = [name for name in pending if name not in seen]
    if missing:
        raise DataError(f"{path}: {len(missing)} queried file(s) are missing from the CSV, e.g. '{missing[0]}'")
    if not entries:
        raise DataError(f"{path}: no label filled in; write a class name (or 'skip') in the label column")
    return entries, unfilled


def check_ledger(folder: Path, state: dict) -> None:
    """Every labeled cell is still the cell that was labeled: its file is there, with the bytes it had when it was
    asked. A change is one line naming the file, and the way out."""
    pool = Path(state["pool"])
    for entry in state["ledger"]:
        path = pool / entry["file"]
        gone = not path.is_file()
        if gone or ("sha256" in entry and file_digest(path) != entry["sha256"]):
            what = "is gone" if gone else "changed"
            raise DataError(
                f"{path}: labeled '{entry['label']}' in round {entry['round']}, but the file {what} since; put it back "
                f"as it was, or drop its label with `python -m lab.campaign drop {folder} {entry['file']}` (a cell still in the "
                "pool is then asked again)"
            )


def ingest(folder: Path, device) -> dict:
    """Add the annotator's labels, fine-tune (Sec. 3.1), and write the next query (Sec. 2.2, Eq. 3)."""
    started = time.time()
    state = load_campaign(folder)
    check_output_folder(folder, "campaign")
    check_output_folder(folder / "export", "campaign")
    if not state["pending"]:
        raise DataError(f"{folder}: every cell of the pool is labeled; nothing is pending")
    check_ledger(folder, state)
    entries, unfilled = read_filled_query(folder, state)
    ledger = state["ledger"] + entries
    images, files = load_unlabeled(state["pool"], state["image_size"], state["normalize"], "campaign pool")
    names = [Path(file).name for file in files]
    position = {name: index for index, name in enumerate(names)}
    labels, labeled, training, held_out = ledger_labels(ledger, names, position, state)

    model = campaign_model(state, folder, device)
    forward = forward_fn(model, images, early_feature_cache(model, images, device), device)
    record = train_and_check(model, forward, labels, training, held_out, state, device)
    record = dict(round=state["round"], new_labels=len(entries), labels=len(labeled), **record)

    # The next query: cells left unfilled are asked again first, then the most uncertain unlabeled ones.
    done = {entry["file"] for entry in ledger} | set(unfilled)
    unlabeled = torch.tensor([index for index, name in enumerate(names) if name not in done], dtype=torch.int64)
    scores = entropy(predict_probabilities(model, unlabeled, device, 64, forward=forward))
    fresh = unlabeled[select_most_uncertain(scores, max(0, state["n"] - len(unfilled)))].tolist()
    asked = [position[name] for name in unfilled if name in position] + fresh

    next_round, previous_model = state["round"] + 1, state["model"]
    state = dict(state, ledger=ledger, round=next_round, model=f"model-{next_round:03d}.pt")
    state["history"] = state["history"] + [dict(record, seconds=time.time() - started)]
    probabilities = predict_probabilities(model, torch.tensor(asked, dtype=torch.int64), device, 64, forward=forward)
    asked_names = [names[i] for i in asked]
    state["pending"], writes = query_files(folder, state, next_round, asked_names, probabilities) if asked else ([], [])
    checkpoint = campaign_checkpoint(model, state, record["validation"])
    commit(folder, state, writes, checkpoint, previous_model)  # the step, all at once
    print_round(folder, state, record, len(unfilled), len(asked))
    return state


def ledger_labels(ledger: list[dict], names: list[str], position: dict[str, int], state: dict):
    """Every label of the ledger as a tensor over the pool (-1: none), and the labeled cells split into those to
    train on and those held out to check the model (whole specimens, chosen by the campaign's seed); position maps
    a file name to its index in names."""
    classes = state["classes"]
    labels = torch.full((len(names),), -1, dtype=torch.int64)
    for entry in ledger:
        if entry["label"] != SKIP and entry["file"] in position:
            labels[position[entry["file"]]] = classes.index(entry["label"])
    labeled = [position[e["file"]] for e in ledger if e["label"] != SKIP and e["file"] in position]
    specimen_of = state.get("specimens", {})
    held_out = [
        index
        for index in labeled
        if is_held_out(specimen_of.get(names[index], names[index]), state["seed"], state["holdout"])
    ]
    held_out_set = set(held_out)
    training = [index for index in labeled if index not in held_out_set]
    return labels, labeled, training, held_out


def train_and_check(model, forward, labels, training: list[int], held_out: list[int], state: dict, device) -> dict:
    """Fine-tune on the training labels (the simulated loop's settings, Sec. 3.1, with the campaign's cap on epochs),
    then score the held-out labels. The kept epoch and its loss go in the history, so a lab sees whether a round's
    training converged or hit the cap."""
    epochs, kept, training_loss = 0, 0, None
    if training:
        generator = torch.Generator().manual_seed(state["seed"] * 100_003 + state["round"] + 1)
        cells = torch.tensor(training, dtype=torch.int64)
        settings = {**TRAINING, "max_epochs": state["max_epochs"]}
        fit = fine_tune(model, forward, cells, labels[cells], generator, settings)
        epochs, kept, training_loss = fit["epochs"], fit["epochs"], fit["train_loss"]  # the last epoch's weights
    validation = None
    if held_out:
        held = torch.tensor(held_out)
        probabilities = predict_probabilities(model, held, device, 64, forward=forward)
        validation = summarize(labels[held], probabilities, state["classes"])
        validation.pop("confusion")
    return {
        "trained_on": len(training),
        "held_out": len(held_out),
        "epochs": epochs,
        "kept_epoch": kept,
        "training_loss": training_loss,
        "validation": validation,
    }


FEWEST_FOR_A_PERCENTAGE = 10  # fewer held-out labels give no percentage: one cell moves it by ten points or more


def held_out_quality(validation: dict | None) -> str:
    """What a round's held-out labels say, with their count; a percentage only on enough of them."""
    if not validation:
        return "no held-out labels yet"
    count = validation["count"]
    if count < FEWEST_FOR_A_PERCENTAGE:
        right = round(validation["aca"] * count)
        return f"held-out: {right} of {count} labels right (too few for a percentage)"
    return f"held-out MCA {100 * validation['mca']:.1f}% ACA {100 * validation['aca']:.1f}% ({count} labels)"


def print_round(folder: Path, state: dict, record: dict, unfilled: int, asked: int) -> None:
    quality = held_out_quality(record["validation"])
    print(
        f"round {record['round']}: +{record['new_labels']} labels ({unfilled} unfilled, asked again), "
        f"{record['labels']} in all; trained on {record['trained_on']} for {record['epochs']} epochs"
        f"{training_summary(record['kept_epoch'], record['training_loss'])}; {quality}"
    )
    counts = {name: sum(entry["label"] == name for entry in state["ledger"]) for name in state["classes"]}
    print("labels per class: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    if asked:
        query = folder / f"round-{state['round']:03d}.csv"
        print(f"next: label {query} ({asked} cells), then ingest again")
    else:
        print("the whole pool is labeled: the campaign is complete")


def training_summary(kept, training_loss) -> str:
    """The ", kept K at loss L" part of a round's line; empty when the round did not train (or its campaign.json
    predates these fields)."""
    return "" if training_loss is None else f", kept {kept} at loss {training_loss:.4f}"


def print_status(folder: Path, state: dict) -> None:
    counts = {name: sum(entry["label"] == name for entry in state["ledger"]) for name in state["classes"] + [SKIP]}
    print(
        f"campaign {folder}: pool {state['pool']}, round {state['round']}, {len(state['pending'])} cells pending "
        f"in round-{state['round']:03d}.csv"
    )
    print("labels per class: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    for entry in state["history"]:
        quality = held_out_quality(entry["validation"])
        print(
            f"  round {entry['round']}: +{entry['new_labels']} labels, {entry['labels']} in all, trained on "
            f"{entry['trained_on']} ({entry['epochs']} epochs"
            f"{training_summary(entry.get('kept_epoch'), entry.get('training_loss'))}), {quality}"
        )


if __name__ == "__main__":
    main()
