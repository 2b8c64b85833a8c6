"""Splits of a dataset into sides (train/validation/test, pool/test): whole specimens on one side, or cells.

Not the paper (the workshop). The paper splits LSHEp-2's cells 80/20 at random
(Sec. 3.1); cells of one specimen share exposure, intensity and staining, so a
split that puts one specimen on both sides flatters every number. When the
specimen of every cell is known, each specimen goes whole to one side, so the
test cells come from specimens the model never saw (docs/paper-notes.md).
`development_split` splits the pool side again by the same rule: settings are
chosen there, never on the test specimens.
"""

from pathlib import Path

import torch

from data import CellDataset, DataError
from lab.commands import was_typed
from lab.given import given_split, labels_with_split, sides_digest
from lab.layouts import get_dataset, parse_class_list
from lab.runs import preprocessing


def stratified_split(labels: torch.Tensor, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """Split indices class by class into len(fractions) parts of those fractions (seeded).

    Each class is shuffled and cut at the rounded cumulative fractions, so every
    part gets its share of every class, and a class with few cells gives at
    least one to each part when it has enough cells to do so.
    """
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    total = sum(fractions)
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        cuts, running = [0], 0.0
        for fraction in fractions[:-1]:
            running += fraction / total
            cuts.append(round(running * len(members)))
        cuts.append(len(members))
        for part, (start, stop) in enumerate(zip(cuts, cuts[1:])):
            parts[part].extend(members[start:stop])
    return [torch.tensor(sorted(part), dtype=torch.int64) for part in parts]


# A side of a specimen split may miss its share of a class by this fraction of the class's cells; when no
# order of whole specimens does better, the closest one found is kept.
SPLIT_TOLERANCE = 0.05


def _cut_specimens(sizes: list[int], shares: list[float]) -> list[int]:
    """Cut specimens (in the given order) into sides at the cumulative shares; returns the side of each.

    Each boundary goes where the running cell count comes closest to the running target,
    leaving at least one specimen for every side with a share and none for a side without.
    """
    cumulative = [0]
    for size in sizes:
        cumulative.append(cumulative[-1] + size)
    total, sides, boundary, target = cumulative[-1], [], 0, 0.0
    for side, share in enumerate(shares[:-1]):
        target += share * total
        low = boundary + (1 if share > 0 else 0)
        high = len(sizes) - sum(1 for later in shares[side + 1 :] if later > 0)
        stop = boundary if share == 0 else min(range(low, high + 1), key=lambda b: abs(cumulative[b] - target))
        sides += [side] * (stop - boundary)
        boundary = stop
    return sides + [len(shares) - 1] * (len(sizes) - boundary)


def specimens_by_class(labels: torch.Tensor, specimens: list[str]) -> tuple[dict, dict]:
    """({specimen: its cells' indices}, {class: its specimens}): a specimen counts for the class most of its
    cells have."""
    members: dict[str, list[int]] = {}
    for index, specimen in enumerate(specimens):
        members.setdefault(specimen, []).append(index)
    label_list = labels.tolist()
    by_class: dict[int, list[str]] = {}
    for specimen, cells in members.items():
        counts = torch.bincount(torch.tensor([label_list[i] for i in cells]))
        by_class.setdefault(int(counts.argmax()), []).append(specimen)
    return members, by_class


def specimen_split(
    labels: torch.Tensor,
    specimens: list[str],
    fractions: list[float],
    seed: int,
    class_names: list[str],
    names: list[str],
) -> list[torch.Tensor]:
    """Split indices into len(fractions) sides, each specimen whole on one side, stratified by class (seeded).

    A specimen counts for the class most of its cells have. Within each class the
    specimens are dealt in a seeded random order and cut at the cumulative shares
    (`_cut_specimens`), so every side with a share gets at least one specimen of
    every class; of up to 64 orders the first whose sides all come within
    SPLIT_TOLERANCE of their share of the class's cells is kept (else the
    closest), so that another seed gives other test specimens.
    """
    generator = torch.Generator().manual_seed(seed)
    members, by_class = specimens_by_class(labels, specimens)
    total = sum(fractions)
    shares = [fraction / total for fraction in fractions]
    sides_needed = [name for name, share in zip(names, shares) if share > 0]
    parts: list[list[int]] = [[] for _ in fractions]
    for label in sorted(by_class):
        group = sorted(by_class[label])
        if len(group) < len(sides_needed):
            advice = (  # train.py can leave its test side out or drop a class; active.py's 80/20 split has two sides
                "drop it with --classes, use --test-fraction 0 or --split-file when the data comes with its own test "
                "set"
                if "train" in names else "drop its cells from the data"
            )
            raise DataError(
                f"--split specimen: class '{class_names[label]}' has {len(group)} specimen(s), too few to put a whole "
                f"one on each of the {len(sides_needed)} sides ({', '.join(sides_needed)}); add specimens of it, "
                f"{advice}, or pass --split cells (which lets one specimen's cells sit on both sides and flatters "
                "every result)"
            )
        sizes = [len(members[specimen]) for specimen in group]
        class_total, best = sum(sizes), None
        for _ in range(64):
            order = torch.randperm(len(group), generator=generator).tolist()
            sides = _cut_specimens([sizes[i] for i in order], shares)
            counts = [0] * len(shares)
            for position, side in zip(order, sides):
                counts[side] += sizes[position]
            miss = max(abs(count - share * class_total) for count, share in zip(counts, shares)) / class_total
            if best is None or miss < best[0]:
                best = (miss, order, sides)
            if miss <= SPLIT_TOLERANCE:
                break
        _, order, sides = best
        for position, side in zip(order, sides):
            parts[side].extend(members[group[position]])
    return [torch.tensor(sorted(part), dtype=torch.int64) for part in parts]


def add_split_flags(parser, sides: str, folds: bool = False) -> None:
    """--specimens and --split, the same in every script that splits data; with folds (active.py) --fold, --folds
    and --development too."""
    parser.add_argument(
        "--specimens",
        default=None,
        help="CSV of file,specimen for --data (default: specimens.csv at the data root, or a specimen column)",
    )
    parser.add_argument(
        "--split",
        default=None,
        choices=["specimen", "cells"],
        help=f"keep each specimen whole on one side of {sides}, or split cells (default: specimen when every "
        "cell's specimen is known, else cells)",
    )
    if not folds:
        return
    fold = "test on this fold of --folds (cross-validation by specimen: each specimen tested in one fold; the "
    fold += "folds fixed by the data, whatever --seed) instead of the seeded 80/20 split (default: off)"
    parser.add_argument("--fold", type=int, default=None, help=fold)
    parser.add_argument("--folds", type=int, default=FOLDS, help=f"how many folds --fold counts (default: {FOLDS})")
    development = "leave the test specimens out, split the pool again into a development pool and test (default: off)"
    parser.add_argument("--development", action="store_true", help=development)


def source_split(args, parser) -> tuple:
    """train.py's source cells, and train, validation and test: the data's own split where it comes with one
    (--split-file, or a split column of its labels CSV), else seeded, on different specimens when they are known.

    Sec. 3.1 trains on SNPHEp-2's training images and selects on "the five different validation folds of the
    SNPHEp-2 dataset"; the validation loss picks the epoch, so it must measure what generalises to unseen
    specimens, not what recognises the training ones. Returns (dataset, what the run derived, the three sides)."""
    classes = parse_class_list(args.classes)
    dataset = get_dataset(
        args.data, "source", classes, args.image_size, args.normalize, args.seed, args.synthetic_cells, args.specimens
    )
    names = ["train", "val", "test"]
    given = args.split_file or labels_with_split(args.data)
    if given is not None:
        parts = given_split(dataset, given)
        digest = sides_digest(parts)
        val_from = args.val_from if len(parts[1]) == 0 else None  # only a split without a val side needs one
        usable = {None: (), "test": ("val_from",), "train": ("val_from", "split", "val_fraction")}[val_from]
        for flag in ("split", "val_fraction", "test_fraction", "val_from"):  # one this split cannot use: one line
            if flag not in usable and was_typed(args, parser, flag):
                name = f"--{flag.replace('_', '-')} {getattr(args, flag)}"
                raise DataError(f"{name}: the data comes with its own split ({given}), which sets every side")
        how = {"val_from": val_from, "fraction": args.val_fraction, "seed": args.seed}
        how["by"] = resolve_split(args.split, dataset) if val_from == "train" else None
        parts = with_validation_side(dataset, parts, how, given)
        split, fractions = "given", [len(part) / len(dataset) for part in parts]
    else:
        if was_typed(args, parser, "val_from"):
            raise DataError(f"--val-from {args.val_from}: applies only to a given split that lists no val side")
        fractions = [1 - args.val_fraction - args.test_fraction, args.val_fraction, args.test_fraction]
        split = resolve_split(args.split, dataset)
        parts = split_dataset(dataset, split, fractions, args.seed, names)
        if len(parts[0]) == 0 or len(parts[1]) == 0:
            raise DataError(f"--data: {len(dataset)} cells are too few to split into train and validation sets")
    print(f"data: {dataset.source}, {len(dataset)} cells, classes {', '.join(dataset.class_names)}")
    print(f"split: the data's own, from {given}: " + ", ".join(f"{n} {len(p)}" for n, p in zip(names, parts))
          if given is not None else describe_split(dataset, split, parts, names, args.seed))  # fmt: skip
    print(f"training on {len(parts[0])} cells x {args.rotations} rotations")
    derived = {"data_kind": "source", "image_size": args.image_size, "normalize": args.normalize, "split": split}
    derived.update(split_parts={"names": names, "fractions": fractions, "seed": args.seed})
    if given is not None:  # evaluate.py reads the sides from it again, and makes a validation side as this did
        derived["split_parts"].update(file=str(Path(given).resolve()), validation=how, digest=digest)
    derived["test_specimens"] = specimens_of(dataset, parts[2])
    return dataset, derived, [dataset.subset(part) for part in parts]


def with_validation_side(dataset: CellDataset, parts: list, how: dict, given) -> list[torch.Tensor]:
    """A given split's (train, val, test), with a validation side made where it lists none (SNPHEp-2's folds come
    as training and test lists only): how["val_from"] "train" splits how["fraction"] of the training side off, by
    how["by"] (specimen where known) and how["seed"]; "test" takes the test side, as Sec. 3.3's "the testing set was
    just used for validation" reads (docs/paper-notes.md). One line names what is missing when neither can be made."""
    train, val, test = parts
    if len(train) == 0:
        raise DataError(f"{given}: lists no train cells; expected rows whose split is train")
    if how.get("val_from") is None:
        return parts
    if how["val_from"] == "test":
        if len(test) == 0:
            raise DataError(f"--val-from test: {given} lists no val and no test cells to validate on")
        print(f"validation: the test side's {len(test)} cells (--val-from test): the test split picks the epoch")
        return [train, test, test]
    try:
        inner = split_dataset(dataset.subset(train), how["by"], [1 - how["fraction"], how["fraction"]], how["seed"],
                              ["train", "val"])  # fmt: skip
    except DataError as error:
        raise DataError(f"{given}: lists no val cells and its {len(train)} train cells cannot give "
                        f"one ({error}); add val rows, or validate on its test side with --val-from test") from None
    if min(len(side) for side in inner) == 0:
        raise DataError(f"{given}: lists no val cells and its {len(train)} train cells are too few to "
                        "split one off; add val rows, or validate on its test side with --val-from test")
    print(f"validation: {how['fraction']:g} of the given train side, by {how['by']} (seed {how['seed']})")
    return [train[inner[0]], train[inner[1]], test]


def describe_pool_and_test(dataset: CellDataset, by: str, parts: dict, pool, test) -> str:
    """The line active.py's Step 1 prints: the pool and test sides (--development's, its own) and how they were cut."""
    sides = ["dev pool", "dev test"] if parts["development"] else ["pool", "test"]
    return describe_split(dataset, by, [pool, test], sides, parts["seed"], parts["fold"], parts["folds"])


def resolve_split(requested: str | None, dataset: CellDataset) -> str:
    """--split: 'specimen' or 'cells'; by default 'specimen' whenever every cell's specimen is known."""
    specimens = dataset.specimens
    unknown = (
        [] if specimens is None else [file for file, specimen in zip(dataset.files, specimens) if specimen is None]
    )
    if requested == "cells":
        return "cells"
    if specimens is None:
        if requested == "specimen":
            raise DataError(
                f"--split specimen: no specimens are known for {dataset.source}; put a specimens.csv (file,specimen) "
                "at the data root, name one with --specimens, or add a specimen column to the labels CSV"
            )
        return "cells"
    if unknown:
        raise DataError(
            f"--specimens: {len(unknown)} of {len(specimens)} cells have no specimen listed (e.g. {unknown[0]}); "
            "list them, or pass --split cells"
        )
    check_one_pattern(dataset)
    return "specimen"


def check_one_pattern(dataset: CellDataset) -> None:
    """A specimen counts for the class most of its cells have; a class whose every cell sits in specimens of
    another class has none of its own, and no split by specimen can test it: one line that says where its cells
    are (a specimen is one patient's serum, one pattern: the specimens file is likely wrong)."""
    members, by_class = specimens_by_class(dataset.labels, dataset.specimens)
    for label in sorted(set(dataset.labels.tolist()) - set(by_class)):
        hosts = sorted({dataset.specimens[i] for i in torch.nonzero(dataset.labels == label).squeeze(1).tolist()})
        host = hosts[0]
        mine = sum(int(dataset.labels[i]) == label for i in members[host])
        raise DataError(
            f"--specimens: class '{dataset.class_names[label]}' has no specimen of its own: its "
            f"{int((dataset.labels == label).sum())} cells sit in {len(hosts)} specimen(s) where another class has "
            f"most cells (e.g. {host}: {mine} of {len(members[host])} cells); a specimen holds one pattern, so check "
            "the specimens file, or pass --split cells"
        )


def split_dataset(dataset: CellDataset, by: str, fractions: list[float], seed: int, names: list[str]):
    """Indices of each side: whole specimens per side (by='specimen') or cells stratified by class ('cells')."""
    if by == "specimen":
        return specimen_split(dataset.labels, dataset.specimens, fractions, seed, dataset.class_names, names)
    parts = stratified_split(dataset.labels, fractions, seed)
    for name, fraction, part in zip(names, fractions, parts):
        missing = set(range(len(dataset.class_names))) - set(dataset.labels[part].tolist())
        if fraction > 0 and missing:  # MCA would be averaged over the other classes without a word
            label = min(missing)
            count = int((dataset.labels == label).sum())
            raise DataError(
                f"--split cells: class '{dataset.class_names[label]}' has {count} cell(s), too few to put one on the "
                f"{name} side too; add cells of it, or drop it with --classes"
            )
    return parts


def development_split(dataset: CellDataset, by: str, pool: torch.Tensor, fractions: list[float], seed: int):
    """The pool split again by the same rule into a development pool and test (the real test side is left out).

    Settings are chosen on these, never on the test specimens (docs/paper-notes.md)."""
    inner = split_dataset(dataset.subset(pool), by, fractions, seed, ["dev pool", "dev test"])
    return pool[inner[0]], pool[inner[1]]


# ---------------------------------------------------------------------------------------------
# Cross-validation by specimen (issue #38): k folds, every specimen on the test side of exactly one


FOLDS = 5  # --folds: Golgi, the rarest class, has 5 pseudo-specimens in I3A, so each fold tests one


def specimen_folds(labels: torch.Tensor, specimens: list[str], folds: int, class_names: list[str]) -> list[torch.Tensor]:
    """The test side of each of `folds` folds: every specimen in exactly one, every class in every one.

    Fixed by the data alone (no seed), so every run of a fold, whatever its --seed, tests the same cells.
    A specimen counts for the class most of its cells have; within a class the specimens go, largest first
    (ties by name), to the fold that holds the fewest cells of that class so far (ties: the fewest cells
    of all classes, then the lowest fold), so the first `folds` of them give each fold one.
    """
    members, by_class = specimens_by_class(labels, specimens)
    fewest = min(range(len(class_names)), key=lambda label: len(by_class.get(label, [])))
    if len(by_class.get(fewest, [])) < folds:
        count = len(by_class.get(fewest, []))
        fewer = f"use --folds {count} or fewer, or drop its cells" if count >= 2 else "drop its cells"
        raise DataError(
            f"--folds {folds}: class '{class_names[fewest]}' has {count} specimen(s), too few to put one on the test "
            f"side of each of {folds} folds; {fewer} from the data"
        )
    parts: list[list[int]] = [[] for _ in range(folds)]
    for label in range(len(class_names)):
        group = sorted(by_class.get(label, []), key=lambda specimen: (-len(members[specimen]), specimen))
        of_class = [0] * folds
        for specimen in group:
            fold = min(range(folds), key=lambda f: (of_class[f], len(parts[f]), f))
            of_class[fold] += len(members[specimen])
            parts[fold].extend(members[specimen])
    return [torch.tensor(sorted(part), dtype=torch.int64) for part in parts]


def fold_split(dataset: CellDataset, by: str, folds: int, fold: int, what: str = "--fold") -> tuple:
    """(pool, test) of fold `fold` of `folds`: the fold's test side, and every other cell as the pool.

    By specimen, `specimen_folds`; by cells, each class's cells dealt into `folds` parts with a fixed seed."""
    if folds < 2:
        raise DataError(f"--folds {folds}: expected at least 2")
    if not 0 <= fold < folds:
        raise DataError(f"{what} {fold}: expected a fold from 0 to {folds - 1} (--folds {folds})")
    if by == "specimen":
        tests = specimen_folds(dataset.labels, dataset.specimens, folds, dataset.class_names)
    else:
        tests = split_dataset(dataset, "cells", [1.0] * folds, 0, [f"fold {f}" for f in range(folds)])
    test = tests[fold]
    return torch.cat([part for f, part in enumerate(tests) if f != fold]).sort().values, test


def pool_and_test(dataset: CellDataset, by: str, parts: dict) -> tuple:
    """Step 1's two sides as a run records them in `parts` (fractions and seed, or fold and folds), and
    with parts["development"] the development split of the pool side instead (the test side left out).

    With folds, the development split is the pool side's own folds, one fewer (each still tests every
    class), of which the first is the development test side: fixed by the data, as the folds are."""
    if parts.get("fold") is None:
        pool, test = split_dataset(dataset, by, parts["fractions"], parts["seed"], ["pool", "test"])
        if parts.get("development"):
            pool, test = development_split(dataset, by, pool, parts["fractions"], parts["seed"])
        return pool, test
    pool, test = fold_split(dataset, by, parts["folds"], parts["fold"])
    if parts.get("development"):
        if parts["folds"] < 3:
            raise DataError(f"--development with --folds {parts['folds']}: expected --folds 3 or more")
        inner_pool, inner_test = fold_split(dataset.subset(pool), by, parts["folds"] - 1, 0, "--development")
        pool, test = pool[inner_pool], pool[inner_test]
    return pool, test


def specimens_of(dataset: CellDataset, indices: torch.Tensor) -> list[str]:
    """The distinct specimens of these cells, sorted; [] where specimens are unknown."""
    if dataset.specimens is None:
        return []
    return sorted({dataset.specimens[i] for i in indices.tolist() if dataset.specimens[i] is not None})


def describe_split(dataset: CellDataset, by: str, parts: list[torch.Tensor], names: list[str], seed: int,
                   fold: int | None = None, folds: int | None = None) -> str:
    """What the start of every run prints: the split, and each class's cells and specimens on each side."""
    sizes = ", ".join(f"{name} {len(part)}" for name, part in zip(names, parts))
    which = f"seed {seed}" if fold is None else f"fold {fold} of {folds}"
    if by == "cells":
        why = "no specimens known" if dataset.specimens is None else "--split cells"
        return f"split: by cells ({why}; cells of one specimen may sit on both sides), {which}: {sizes}"
    lines = [f"split: by specimen (each specimen whole on one side), {which}: {sizes} cells"]
    width = max(len(name) for name in dataset.class_names)
    lines.append(f"  {'class':<{width}}  specimens  " + "  ".join(f"{name:>12}" for name in names))
    for label, class_name in enumerate(dataset.class_names):
        per_side = []
        for part in parts:
            cells = part[dataset.labels[part] == label]
            per_side.append(f"{len(specimens_of(dataset, cells)):>3} ({len(cells):>5})")
        total = len(specimens_of(dataset, torch.cat([part[dataset.labels[part] == label] for part in parts])))
        lines.append(f"  {class_name:<{width}}  {total:>9}  " + "  ".join(f"{side:>12}" for side in per_side))
    lines.append(
        f"  (specimens (cells) per side; {names[-1]} specimens: {', '.join(specimens_of(dataset, parts[-1]))})"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The cells a checkpoint is evaluated on: its run's split made again (evaluate.py)


def split_of_checkpoint(checkpoint: dict, dataset, split: str, name="--checkpoint"):
    """Recreate the split the checkpoint's run made (same sides, fractions, seed and unit) and return one side."""
    by, info = checkpoint["derived"].get("split") or "cells", checkpoint["derived"].get("split_parts")
    if not info:
        raise DataError("--split: this checkpoint records no split; use --split all")
    if split not in info["names"]:
        raise DataError(f"--split {split}: this checkpoint's run made the splits {', '.join(info['names'])}")
    if by == "given":  # the data's own split (train.py --split-file), read again from its file, checked unchanged
        file, again = info["file"], "restore it, or evaluate every cell with --split all"
        if not Path(file).is_file():
            raise DataError(f"{name}: was trained on the split file {file}, which is gone; {again}")
        parts = given_split(dataset, file)
        if info.get("digest") is not None and sides_digest(parts) != info["digest"]:
            raise DataError(f"{name}: the split file {file} has changed since it was trained (other cells on its "
                            f"sides); {again}")
        parts = with_validation_side(dataset, parts, info.get("validation", {}), "")
        return dataset.subset(parts[info["names"].index(split)])
    by = resolve_split(by, dataset)
    if info["names"] == ["pool", "test"]:  # active.py's Step 1: 80/20 or a fold, --development's split
        parts = pool_and_test(dataset, by, info)
    else:
        parts = split_dataset(dataset, by, info["fractions"], info["seed"], info["names"])
    return dataset.subset(parts[info["names"].index(split)])


def labeled_data_for(checkpoint: dict, data: str | None, split: str, classes=None, specimens=None, name="--checkpoint"):
    """The cells to evaluate (only `classes` if given), with labels in the checkpoint's class order.

    On the checkpoint's own data the run's classes are loaded and its split made again first, so
    that `--split test` is the run's test side whatever `--classes` keeps of it."""
    run_args = checkpoint.get("args", {})
    class_names = checkpoint["class_names"]
    own_data = data is None
    if own_data and checkpoint["derived"].get("data_kind") == "campaign":
        raise DataError("--checkpoint: a campaign's model has no labeled data of its own; pass --data or --predict")
    if classes is not None:
        unknown = [name for name in classes if name not in class_names]
        if unknown:
            raise DataError(
                f"--classes: the model does not know {', '.join(unknown)}; it knows {', '.join(class_names)}"
            )
    dataset = get_dataset(
        run_args.get("data") if own_data else data,
        checkpoint["derived"].get("data_kind", "source"),
        parse_class_list(run_args.get("classes")) if own_data else classes,
        *preprocessing(checkpoint),
        run_args.get("seed", 0),
        run_args.get("synthetic_cells"),
        specimens if specimens is not None else (run_args.get("specimens") if own_data else None),
    )
    unknown = [name for name in dataset.class_names if name not in class_names]
    if unknown:
        where = data or "the checkpoint's data"
        raise DataError(
            f"--checkpoint: the model knows {', '.join(class_names)}, but {where} also has {', '.join(unknown)}; "
            "evaluate the classes it knows with --classes"
        )
    dataset.labels = torch.tensor([class_names.index(dataset.class_names[label]) for label in dataset.labels.tolist()])
    dataset.class_names = list(class_names)
    if split == "auto":
        split = "test" if own_data and checkpoint["derived"].get("split") else "all"
    if split != "all":
        dataset = split_of_checkpoint(checkpoint, dataset, split, name)
    if classes is not None and own_data:
        keep = torch.tensor([class_names[label] in classes for label in dataset.labels.tolist()], dtype=torch.bool)
        dataset = dataset.subset(torch.nonzero(keep).squeeze(1))
    return dataset, split


def known_specimens(dataset) -> list[str] | None:
    """Each cell's specimen when every cell has one, else None (no specimen-level result)."""
    specimens = dataset.specimens
    return specimens if specimens is not None and all(s is not None for s in specimens) else None
