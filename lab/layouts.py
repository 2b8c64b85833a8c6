"""Where a run's cells come from: real datasets on disk in their file layouts, or the synthetic default.

Not the paper (the workshop): the paper reads SNPHEp-2 and LSHEp-2 in their
own formats; this file reads the layouts real HEp-2 data is shared in, with the
specimen of each cell where it is known, and keeps a cache of prepared cells.

Layouts read by `load_dataset(root)`:
  * class folders  ROOT/<class>/<image>         e.g. ../shared/data/i3a
  * a CSV of image and class beside the images  e.g. ICPR2012: gt_training.csv
    with `ID;pattern` rows and images NNN.png (`,` or `;` separated, header
    optional, ids matched to file stems with or without leading zeros); an
    image may also be a path, absolute or relative to the CSV (as in the
    labels.csv that a labeling campaign exports).
Segmentation masks (`*_mask.*`, `*_Mask.*`) are never read as cells. Specimens
come from a specimen column of the labels CSV, a `specimens.csv` at the data
root, or `--specimens FILE` (docs/data.md).

Every cell becomes one 112x112 uint8 image in a single (N, 1, 112, 112)
tensor: about 12 KB a cell, so the 13,596 cells of I3A take 170 MB.
"""

import csv
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import torch

from data import IMAGE_SIZE, CellDataset, DataError, prepare_cell, read_cell
from lab.runs import remove_stale_temporaries, save_atomic
from lab.synthetic import synthetic_dataset

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"}

# Canonical class names, and the spellings real datasets use for them. Matching
# ignores case and every character that is not a letter or digit.
CLASS_ALIASES = {
    "homogeneous": ["homogeneous", "homogenous", "homo", "h"],
    "speckled": ["speckled", "speck", "sp"],
    "fine_speckled": ["finespeckled", "fine", "fs"],
    "coarse_speckled": ["coarsespeckled", "coarse", "cs"],
    "nucleolar": ["nucleolar", "nucl", "nu"],
    "centromere": ["centromere", "centro", "ce"],
    "nuclear_membrane": ["nuclearmembrane", "numem", "nucmem", "nucme", "nm", "membrane"],
    "golgi": ["golgi", "go"],
    "cytoplasmatic": ["cytoplasmatic", "cytoplasmic", "cyto"],
    "mitotic_spindle": ["mitoticspindle", "mitsp", "ms"],
}
_ALIAS_TO_CLASS = {alias: name for name, aliases in CLASS_ALIASES.items() for alias in aliases}


def squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_class(name: str) -> str | None:
    """'NuMem', 'nuclear membrane', 'Nuclear_Membrane' -> 'nuclear_membrane'; None if unknown."""
    squashed = squash(name)
    if squashed in _ALIAS_TO_CLASS:
        return _ALIAS_TO_CLASS[squashed]
    return next((canonical for canonical in CLASS_ALIASES if squash(canonical) == squashed), None)


def parse_class_list(names: list[str] | None, flag: str = "--classes") -> list[str] | None:
    if not names:
        return None
    parsed = []
    for name in (part for item in names for part in item.split(",") if part):
        canonical = canonical_class(name)
        if canonical is None:
            raise DataError(f"{flag}: unknown class '{name}'; expected one of {', '.join(CLASS_ALIASES)}")
        if canonical in parsed:  # 'golgi Golgi' would make two heads for one class
            raise DataError(f"{flag}: '{name}' names {canonical} again; give each class once")
        parsed.append(canonical)
    return parsed


SKIPPED_FOLDERS = {"__MACOSX", ".ipynb_checkpoints"}  # what zip tools and notebooks leave beside data


def _is_hidden(path: Path) -> bool:
    """Hidden files and folders (.x.png, macOS's ._x.png) and the folders of SKIPPED_FOLDERS are never data."""
    return path.name.startswith(".") or path.name in SKIPPED_FOLDERS


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.lower().endswith("_mask") and not _is_hidden(path)


def list_images(folder: Path) -> list[Path]:
    """The cell images directly in folder (no masks, nothing hidden); a link to nothing is listed too, so that
    reading it says what is wrong instead of leaving it out without a word."""
    return sorted(path for path in folder.iterdir() if (path.is_file() or path.is_symlink()) and _is_image(path))


def shown(path) -> str:
    """A path as text that any file or terminal can hold: bytes of a name that is not UTF-8 as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_name(path: Path) -> None:
    """A file name must be UTF-8: the CSVs a person reads and fills name the files, and must name them exactly."""
    if shown(path) != str(path):
        raise DataError(f"{shown(path)}: its name is not valid UTF-8; rename the file")


def list_images_under(folder: Path) -> list[Path]:
    """The cell images in folder and its subfolders (a class folder may hold one subfolder per specimen)."""
    images = []
    for path in folder.rglob("*"):
        between = path.relative_to(folder).parts[:-1]  # the subfolders between folder and the file
        if path.is_file() and _is_image(path) and not any(_is_hidden(Path(part)) for part in between):
            images.append(path)
    return sorted(images)


def say_left_out(paths: list, one: str, many: str) -> None:
    """One line for what a command passes over or reads otherwise than the plain way: the count and an example."""
    if paths:
        print(f"{len(paths)} {one if len(paths) == 1 else many} (e.g. {shown(paths[0])})")


def read_text(path: Path) -> str:
    """A text file as spreadsheet programs save it: UTF-8 (with or without BOM), UTF-16, else cp1252."""
    raw = Path(path).read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


# Column names a CSV header may use (compared lower-case, letters and digits only). A first row is a header
# only when it names a class column: a misspelt class in a header-less file is an error, not a header.
CLASS_COLUMNS = ("class", "classname", "label", "pattern", "category", "staining")
FILE_COLUMNS = ("file", "filename", "path", "id", "cell", "cellid")
SPECIMEN_COLUMNS = ("specimen", "slide", "patient", "group", "image")  # "image": the specimen image of ICPR 2012


def read_csv_rows(csv_path: Path) -> tuple[list[list[str]], str]:
    """Non-empty rows of a `,`, `;` or tab separated file (rows of empty cells, `,,,,`, dropped), and the separator.

    As spreadsheets save it: `;` in European locales, tabs in Excel's "Unicode Text" (UTF-16); a quoted cell may
    hold a line break; a cell this project escaped against formulas (spreadsheet_cell) is read back as written."""
    text = read_text(csv_path)
    first = text.split("\n", 1)[0]
    delimiter = max([",", ";", "\t"], key=lambda separator: (first.count(separator), separator == ","))
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = [[unescaped(cell) for cell in row] for row in rows if any(cell.strip() for cell in row)]
    return rows, delimiter


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet runs as a formula at the start of a cell


def spreadsheet_cell(text: str) -> str:
    """A text cell that a spreadsheet shows as text: one starting as a formula gets a leading ' (CSV injection),
    and read_csv_rows takes it off again."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def unescaped(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def _csv_columns(rows: list[list[str]]) -> tuple[int, int, int | None, bool]:
    """(file column, class column, specimen column or None, has header) of a labels CSV.

    With a header, columns are found by name: the class column by CLASS_COLUMNS, the
    file column by FILE_COLUMNS (else the first column), the specimen column by
    SPECIMEN_COLUMNS. Without one, the file is the first column and the class the second.
    """
    header = [squash(cell) for cell in rows[0]] if rows else []
    class_column = next((i for i, name in enumerate(header) if name in CLASS_COLUMNS), None)
    if class_column is None:
        return 0, 1, None, False
    file_column = next((i for i, name in enumerate(header) if name in FILE_COLUMNS), 0 if class_column else 1)
    specimen_column = next(
        (i for i, name in enumerate(header) if name in SPECIMEN_COLUMNS and i not in (file_column, class_column)), None
    )
    return file_column, class_column, specimen_column, True


def _holds_classes(csv_path: Path) -> bool:
    """Whether a CSV is a labels file: its header names a class column, or its second column holds class names."""
    try:
        rows, _ = read_csv_rows(csv_path)
    except OSError:
        return False
    _, class_column, _, has_header = _csv_columns(rows)
    return has_header or any(
        len(row) > class_column and canonical_class(row[class_column].strip()) is not None
        for row in rows[int(has_header) : 50]
    )


def find_labels_csv(root: Path) -> Path | None:
    """The labels CSV: --data itself, or the one CSV in the folder whose class column holds class names.

    A folder may hold other CSVs beside it (ICPR 2012: gt_training.csv with `ID;pattern` and
    training.csv with `ID;intensity;width;height`; I3A: specimens.csv): those are not labels.
    """
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return root
        raise DataError(f"--data {root}: expected a folder of class folders, or a CSV of images and classes")
    if root.is_dir():
        csvs = sorted(root.glob("*.csv"))
        labels = [path for path in csvs if _holds_classes(path)]
        if len(labels) > 1:
            raise DataError(
                f"--data {root}: {len(labels)} CSV files hold class labels ({', '.join(p.name for p in labels)}); "
                "pass the one to use as --data"
            )
        return labels[0] if labels else None
    return None


def _labeled_files_from_csv(csv_path: Path) -> list[tuple[Path, str, str | None]]:
    """(image, class, specimen or None) for every row of a labels CSV."""
    folder = csv_path.parent
    images = list_images(folder)
    by_stem: dict[str, Path] = {}
    for path in images:
        by_stem[path.name.lower()] = path
        by_stem[path.stem.lower()] = path
        by_stem.setdefault(path.stem.lower().lstrip("0") or "0", path)
    rows, delimiter = read_csv_rows(csv_path)
    file_column, class_column, specimen_column, has_header = _csv_columns(rows)
    width = max(file_column, class_column, -1 if specimen_column is None else specimen_column) + 1
    triples, first_line = [], {}
    for line_number, row in enumerate(rows, start=1):
        if has_header and line_number == 1:
            continue
        if len(row) < width:
            expected = delimiter.join(rows[0] if has_header else ["image", "class"])
            raise DataError(f"{csv_path}:{line_number}: expected {expected!r}, got {delimiter.join(row)!r}")
        image_id, class_name = row[file_column].strip(), row[class_column].strip()
        canonical = canonical_class(class_name)
        if canonical is None:
            raise DataError(
                f"{csv_path}:{line_number}: unknown class '{class_name}'; expected one of {', '.join(CLASS_ALIASES)}"
            )
        key = image_id.lower()
        if "/" in image_id or "\\" in image_id:  # a path, absolute or relative to the CSV
            path = folder / image_id if (folder / image_id).is_file() else None
        else:
            path = by_stem.get(key) or by_stem.get(Path(key).stem) or by_stem.get(key.lstrip("0") or "0")
        if path is not None and path.stem.lower().endswith("_mask"):
            raise DataError(f"{csv_path}:{line_number}: {image_id} is a segmentation mask, not a cell")
        if path is None or not _is_image(path):
            raise DataError(f"{csv_path}:{line_number}: no image file for id '{image_id}' in {folder}")
        resolved = path.resolve()
        if resolved in first_line:  # one cell twice would put it on both sides of a split
            raise DataError(
                f"{csv_path}:{line_number}: {path.name} is listed again (first on line {first_line[resolved]})"
            )
        first_line[resolved] = line_number
        specimen = row[specimen_column].strip() or None if specimen_column is not None else None
        triples.append((path, canonical, specimen))
    return triples


def read_specimens(specimens_csv: Path, root: Path, paths: list[Path]) -> list[str | None]:
    """The specimen of each path from a `file,specimen` CSV (files relative to root, or absolute); None if unlisted."""
    try:
        rows, _ = read_csv_rows(specimens_csv)
    except OSError as error:
        raise DataError(f"--specimens {specimens_csv}: cannot read ({error.strerror})") from None
    header = bool(rows) and [squash(cell) for cell in rows[0][:2]] == ["file", "specimen"]
    listed: dict[Path, str] = {}
    first_line: dict[Path, int] = {}
    for line_number, row in enumerate(rows[header:], start=1 + header):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{specimens_csv}:{line_number}: expected 'file,specimen', got {','.join(row)!r}")
        file = Path(row[0].strip().replace("\\", "/"))  # a list written on Windows: Golgi\12873.png
        key = (file if file.is_absolute() else root / file).resolve()
        if key in listed:  # two specimens for one cell: neither can be trusted
            again = f"{row[0].strip()} is listed again (first on line {first_line[key]})"
            raise DataError(f"{specimens_csv}:{line_number}: {again}")
        listed[key], first_line[key] = row[1].strip(), line_number
    specimens = [listed.get(path.resolve()) for path in paths]
    missing = [path for path in listed if not path.exists()]
    say_left_out(missing, f"file listed in {shown(specimens_csv)} does not exist", f"files listed in "
                 f"{shown(specimens_csv)} do not exist")  # fmt: skip
    if listed and paths and all(specimen is None for specimen in specimens):
        example = next(iter(first_line))
        raise DataError(
            f"{specimens_csv}: none of its {len(listed)} files is one of the {len(paths)} cells (e.g. {example}); "
            f"expected paths relative to {root}"
        )
    return specimens


def specimens_in(folder: Path, paths: list[Path], specimens_csv: str | Path | None = None) -> list[str | None] | None:
    """Each path's specimen from --specimens FILE, else from folder/specimens.csv; None when neither exists."""
    if specimens_csv is not None and not Path(specimens_csv).is_file():
        raise DataError(f"--specimens {specimens_csv}: no such file")
    if specimens_csv is None and (folder / "specimens.csv").is_file():
        specimens_csv = folder / "specimens.csv"
    return None if specimens_csv is None else read_specimens(Path(specimens_csv), folder, paths)


def find_labeled_images(root: Path, specimens_csv: str | Path | None = None) -> list[tuple[Path, str, str | None]]:
    """(image path, canonical class, specimen or None) for every cell under root, in a stable order.

    Specimens come from a specimen column of the labels CSV, else from `specimens_csv`,
    else from a `specimens.csv` at the data root when there is one.
    """
    if not root.exists():
        raise DataError(f"--data {root}: no such file or folder")
    csv_path = find_labels_csv(root)
    if csv_path is not None:
        triples = _labeled_files_from_csv(csv_path)
    else:
        triples = []
        for folder in sorted(path for path in root.iterdir() if path.is_dir() and not _is_hidden(path)):
            canonical = canonical_class(folder.name)
            if canonical is None:
                raise DataError(
                    f"{folder}: folder name is not a known class; expected one of {', '.join(CLASS_ALIASES)}"
                )
            triples.extend((path, canonical, None) for path in list_images_under(folder))
    if csv_path is not None and not triples:
        raise DataError(f"{csv_path}: no rows of image and class")
    if not triples:
        raise DataError(f"--data {root}: no cell images found; expected class folders or a CSV beside the images")
    if specimens_csv is None and any(specimen is not None for _, _, specimen in triples):
        return triples  # the labels CSV's specimen column
    specimens = specimens_in(root if root.is_dir() else root.parent, [path for path, _, _ in triples], specimens_csv)
    if specimens is not None:
        triples = [(path, name, specimen) for (path, name, _), specimen in zip(triples, specimens)]
    return triples


def _cache_path(root: Path, pairs: list[tuple[Path, str]], image_size: int, normalize: str) -> Path:
    """The preprocessed tensor cache for these exact files and this exact preprocessing.

    The key hashes every file's path and bytes (their digest: under a second for I3A's 13,596 cells) together
    with the preprocessing, so editing, adding, removing or swapping a file, whatever its size and time, or
    changing the size or normalisation, builds a new cache. It lives in the user's cache folder ($HEP2_CACHE,
    else $XDG_CACHE_HOME/hep2-al, else ~/.cache/hep2-al; `~` expanded), never in the data folder.
    """
    digest = hashlib.sha256(f"v2|{image_size}|{normalize}".encode())
    for path, class_name in pairs:
        content = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(os.fsencode(path.resolve()) + f"|{content}|{class_name}\n".encode())
    base = os.environ.get("HEP2_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "hep2-al")
    return Path(os.path.expanduser(base)) / f"{root.resolve().name}-{digest.hexdigest()[:20]}.pt"


def load_dataset(
    root: str | Path,
    classes: list[str] | None = None,
    image_size: int = IMAGE_SIZE,
    normalize: str = "none",
    cache: bool = True,
    specimens_csv: str | Path | None = None,
) -> CellDataset:
    """Read every labeled cell under root, keep `classes` (all found if None), resize, stack."""
    root = Path(root)
    triples = find_labeled_images(root, specimens_csv)
    found = sorted({class_name for _, class_name, _ in triples}, key=list(CLASS_ALIASES).index)
    if classes is not None:
        missing = [name for name in classes if name not in found]
        if missing:
            raise DataError(f"--classes: {', '.join(missing)} not found in {root}; it holds {', '.join(found)}")
        triples = [triple for triple in triples if triple[1] in classes]
        class_names = list(classes)
    else:
        class_names = found
    if len(class_names) < 2:
        raise DataError(f"--data {root}: found only the class {class_names}; expected at least two classes")
    paths = [path for path, _, _ in triples]
    for path in paths:
        check_name(path)
    labels = torch.tensor([class_names.index(class_name) for _, class_name, _ in triples], dtype=torch.int64)
    files = [str(path) for path in paths]
    specimens = [specimen for _, _, specimen in triples]
    specimens = None if all(specimen is None for specimen in specimens) else specimens
    cache_file = (
        _cache_path(root, [(path, name) for path, name, _ in triples], image_size, normalize) if cache else None
    )
    if cache_file is not None:
        remove_stale_temporaries(cache_file, "*")  # what saves killed half-way left in the cache folder
    if cache_file is not None and cache_file.exists():
        try:
            images = torch.load(cache_file, weights_only=True)
            shape = (len(paths), 1, image_size, image_size)
            if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.shape == shape:
                return CellDataset(images, labels, class_names, files, str(root), specimens)
        except Exception:
            pass  # a broken cache is rebuilt below
    images = torch.empty((len(paths), 1, image_size, image_size), dtype=torch.uint8)  # filled in place: one copy
    for index, path in enumerate(paths):
        images[index, 0] = torch.from_numpy(prepare_cell(read_cell(path), image_size, normalize))
    if cache_file is not None:
        try:
            save_atomic(images, cache_file)  # makes the cache folder; any failure is one DataError
        except DataError:
            pass  # a read-only cache folder only costs the next load its speed
    return CellDataset(images, labels, class_names, files, str(root), specimens)


def load_unlabeled(
    folder: str | Path,
    image_size: int = IMAGE_SIZE,
    normalize: str = "none",
    flag: str = "--predict",
    unreadable: list | None = None,
    paths: list[Path] | None = None,
):
    """(images (N,1,S,S) uint8, file paths) for every image directly in folder (or for `paths`, found in it).

    An unreadable image stops the load, unless a list is given for `unreadable`: then (file, error) is
    appended to it and the rest are read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{flag} {folder}: not a folder")
    paths = list_images(folder) if paths is None else paths
    if not paths:
        raise DataError(f"{flag} {folder}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    cells, files = [], []
    for path in paths:
        try:
            check_name(path)
            cells.append(prepare_cell(read_cell(path), image_size, normalize))
            files.append(str(path))
        except DataError as error:
            if unreadable is None:
                raise
            unreadable.append((shown(path), str(error).removeprefix(f"{shown(path)}: ")))
    if not cells:
        raise DataError(f"{flag} {folder}: none of its {len(paths)} images could be read")
    return torch.from_numpy(np.stack(cells)).unsqueeze(1), files


def unlabeled_specimens(folder, specimens_csv=None, one_specimen: str | None = None):
    """(the cells of a folder to classify, each one's specimen or None where unknown) the way --data knows them:
    one subfolder per specimen (DIR/<specimen>/<cells>), a specimens.csv at the root or --specimens FILE (its
    cells directly in DIR or below), or --one-specimen NAME for a flat folder; a flat folder alone has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--predict {folder}: not a folder")
    listed = specimens_csv is not None or (folder / "specimens.csv").is_file()
    direct = list_images(folder)
    subfolders = [path for path in sorted(folder.iterdir()) if path.is_dir() and not _is_hidden(path)]
    if one_specimen is not None and (listed or subfolders):
        why = "already says its specimens (a specimens file or subfolders)"
        raise DataError(f"--one-specimen {one_specimen}: {folder} {why}")
    if listed:
        paths = list_images_under(folder)
        specimens = specimens_in(folder, paths, specimens_csv)
        unlisted = [path for path, specimen in zip(paths, specimens) if specimen is None]
        if unlisted:
            example = shown(unlisted[0])
            raise DataError(f"--specimens: {len(unlisted)} of {len(paths)} cells are not listed (e.g. {example})")
        return paths, specimens
    if subfolders and direct:
        raise DataError(
            f"--predict {folder}: holds both cells ({shown(direct[0])}) and subfolders ({shown(subfolders[0])}); "
            "expected one subfolder per specimen, or the cells of one folder"
        )
    if subfolders:  # a specimen's cells may sit in folders of their own (a day, a well): all are its cells
        pairs = [(path, sub.name) for sub in subfolders for path in list_images_under(sub)]
        named = {specimen for _, specimen in pairs}
        say_left_out([sub for sub in subfolders if sub.name not in named],
                      "specimen folder holds no image and is left out", "specimen folders hold no image and are left out")
        deeper = [path for path, _ in pairs if path.parent.parent != folder]
        say_left_out(deeper, "cell in a subfolder of its specimen's folder is counted as that specimen's",
                     "cells in subfolders of their specimen's folder are counted as that specimen's")
        return [path for path, _ in pairs], [specimen for _, specimen in pairs]
    return direct, None if one_specimen is None else [one_specimen] * len(direct)


def get_dataset(data, kind, classes, image_size, normalize, seed, synthetic_cells=None, specimens=None):
    """--data DIR if given (with --specimens FILE if given), else the synthetic default of this kind."""
    if data is not None and not str(data).strip():
        raise DataError("--data '': expected a folder of class folders or a labels CSV")
    if data:
        return load_dataset(data, classes, image_size, normalize, specimens_csv=specimens)
    if specimens:
        raise DataError("--specimens: only with --data (the synthetic default has no specimens)")
    dataset = synthetic_dataset(kind, synthetic_cells, seed=seed, image_size=image_size, normalize=normalize)
    if classes is not None:
        missing = [name for name in classes if name not in dataset.class_names]
        if missing:
            raise DataError(
                f"--classes: {', '.join(missing)} not in the synthetic {kind} set ({', '.join(dataset.class_names)})"
            )
        keep = torch.tensor([dataset.class_names[label] in classes for label in dataset.labels.tolist()])
        dataset = dataset.subset(torch.nonzero(keep).squeeze(1))
        dataset.labels = torch.tensor([classes.index(dataset.class_names[label]) for label in dataset.labels.tolist()])
        dataset.class_names = list(classes)
    return dataset
