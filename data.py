"""Cell datasets: reading real HEp-2 crops and their specimens, the embedded synthetic default, splits
(whole specimens on one side), augmentation, and the small amount of run plumbing (device, seed, atomic
files, checkpoints) every script shares.

Paper: Sec. 3.1 (112x112 bicubic resize, rotation augmentation in 18 degree
steps, the SNPHEp-2 source and LSHEp-2 target classes).

Layouts read by `load_dataset(root)`:
  * class folders  ROOT/<class>/<image>         e.g. ../shared/data/i3a
  * a CSV of image and class beside the images  e.g. ICPR2012: gt_training.csv
    with `ID;pattern` rows and images NNN.png (`,` or `;` separated, header
    optional, ids matched to file stems with or without leading zeros); an
    image may also be a path, absolute or relative to the CSV (as in the
    labels.csv that a labeling campaign of active.py exports).
Segmentation masks (`*_mask.*`, `*_Mask.*`) are never read as cells.

Every cell becomes one 112x112 uint8 image in a single (N, 1, 112, 112)
tensor: about 12 KB a cell, so the 13,596 cells of I3A take 170 MB.
"""

import csv
import hashlib
import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wavelets import haar_split

IMAGE_SIZE = 112  # Sec. 3.1: "all upsized using bicubic interpolation to 112x112"
MIN_SIDE = 16  # a crop smaller than this is not a cell image
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
SOURCE_CLASSES = ["homogeneous", "coarse_speckled", "fine_speckled", "nucleolar", "centromere"]  # SNPHEp-2
TARGET_CLASSES = ["homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane", "golgi"]  # LSHEp-2, I3A

# Short names for console lines and plots, as in the paper's figures (Sec. 3.2).
SHORT_NAMES = {
    "homogeneous": "Homo",
    "speckled": "Speck",
    "fine_speckled": "Fine",
    "coarse_speckled": "Coarse",
    "nucleolar": "Nucl",
    "centromere": "Centro",
    "nuclear_membrane": "NucMe",
    "golgi": "Golgi",
    "cytoplasmatic": "Cyto",
    "mitotic_spindle": "MitSp",
}

_ALIAS_TO_CLASS = {alias: name for name, aliases in CLASS_ALIASES.items() for alias in aliases}


class DataError(Exception):
    """Bad input: the message names the file or flag and what was expected."""


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_class(name: str) -> str | None:
    """'NuMem', 'nuclear membrane', 'Nuclear_Membrane' -> 'nuclear_membrane'; None if unknown."""
    squashed = _squash(name)
    if squashed in _ALIAS_TO_CLASS:
        return _ALIAS_TO_CLASS[squashed]
    return next((canonical for canonical in CLASS_ALIASES if _squash(canonical) == squashed), None)


def parse_class_list(names: list[str] | None, flag: str = "--classes") -> list[str] | None:
    if not names:
        return None
    parsed = []
    for name in (part for item in names for part in item.split(",") if part):
        canonical = canonical_class(name)
        if canonical is None:
            raise DataError(f"{flag}: unknown class '{name}'; expected one of {', '.join(CLASS_ALIASES)}")
        parsed.append(canonical)
    return parsed


# ---------------------------------------------------------------------------------------------
# Reading and preparing one cell image


def read_cell(path: Path) -> np.ndarray:
    """Read an 8- or 16-bit, grayscale or colour image as float32 in [0, 1].

    Colour fluorescence crops usually carry the signal in one channel (FITC
    green) and little in the others, and grayscale saved as RGB has three equal
    channels: the per-pixel maximum over channels is right for both.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                mode = image.mode
            if mode in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
                array = np.asarray(image.convert("RGB") if mode not in ("1", "L") else image.convert("L"))
                array = array.astype(np.float32) / 255.0
            elif mode.startswith("I;16") or mode == "I":
                array = np.asarray(image).astype(np.float32)
                array /= 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
            elif mode == "F":
                array = np.asarray(image).astype(np.float32)
                peak = float(array.max())
                array = array / peak if peak > 1 else array
            else:
                raise DataError(f"{path}: unsupported image mode {mode}; expected 8/16-bit grayscale or RGB")
    except DataError:
        raise
    except Exception as error:  # PIL raises many types for truncated or foreign files
        raise DataError(f"{path}: cannot read image ({error.__class__.__name__}: {error})") from None
    if array.ndim == 3:
        array = array.max(axis=2)
    if min(array.shape) < MIN_SIDE:
        raise DataError(
            f"{path}: image is {array.shape[1]}x{array.shape[0]} px; expected at least {MIN_SIDE} px a side"
        )
    return np.clip(array, 0.0, 1.0)


NORMALIZATIONS = ("none", "max", "percentile")


def normalize_cell(array: np.ndarray, normalize: str = "none") -> np.ndarray:
    """Per-cell intensity stretch, from this cell's own pixels only (never from other cells).

    'max' divides by the cell's brightest pixel; 'percentile' maps the cell's 1st
    and 99th percentiles to 0 and 1 (clipped), so that a few hot pixels and the
    background level of one specimen's exposure set neither end. Both remove
    the positive/intermediate intensity difference before the network sees the
    cell. The paper does neither: it argues that the wavelet approximation
    homogenises intensity by itself (Sec. 2.1); 'none' is that literal reading. The
    scripts default to 'percentile', chosen on unseen specimens' development split.
    """
    if normalize == "max":
        peak = float(array.max())
        return array / peak if peak > 0 else array
    if normalize == "percentile":
        low, high = np.percentile(array, [1.0, 99.0])
        return np.clip((array - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(array)
    return array


def prepare_cell(array: np.ndarray, image_size: int = IMAGE_SIZE, normalize: str = "none") -> np.ndarray:
    """Per-cell normalisation (normalize_cell), bicubic resize to image_size x image_size (Sec. 3.1), uint8."""
    array = normalize_cell(array, normalize)
    resized = Image.fromarray(array.astype(np.float32), mode="F").resize((image_size, image_size), Image.BICUBIC)
    return (np.clip(np.asarray(resized), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Labeled datasets from disk


@dataclass
class CellDataset:
    images: torch.Tensor  # (N, 1, S, S) uint8
    labels: torch.Tensor  # (N,) int64, indices into class_names
    class_names: list[str]
    files: list[str]  # where each cell came from ("synthetic:..." for generated cells)
    source: str  # the data folder, or "synthetic-source" / "synthetic-target"
    # The specimen (patient slide, specimen image) each cell was cut from, or None where unknown. Cells of
    # one specimen share exposure, intensity and staining, so a split keeps each specimen on one side.
    specimens: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "CellDataset":
        index_list = indices.tolist()
        return CellDataset(
            self.images[indices],
            self.labels[indices],
            self.class_names,
            [self.files[i] for i in index_list],
            self.source,
            None if self.specimens is None else [self.specimens[i] for i in index_list],
        )


SKIPPED_FOLDERS = {"__MACOSX", ".ipynb_checkpoints"}  # what zip tools and notebooks leave beside data


def _is_hidden(path: Path) -> bool:
    """Hidden files and folders (.x.png, macOS's ._x.png) and the folders of SKIPPED_FOLDERS are never data."""
    return path.name.startswith(".") or path.name in SKIPPED_FOLDERS


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.lower().endswith("_mask") and not _is_hidden(path)


def list_images(folder: Path) -> list[Path]:
    """The cell images directly in folder (no masks, nothing hidden)."""
    return sorted(path for path in folder.iterdir() if path.is_file() and _is_image(path))


def list_images_under(folder: Path) -> list[Path]:
    """The cell images in folder and its subfolders (a class folder may hold one subfolder per specimen)."""
    images = []
    for path in folder.rglob("*"):
        between = path.relative_to(folder).parts[:-1]  # the subfolders between folder and the file
        if path.is_file() and _is_image(path) and not any(_is_hidden(Path(part)) for part in between):
            images.append(path)
    return sorted(images)


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
    """Non-empty rows of a `,` or `;` separated file (rows of empty cells, `,,,,`, dropped), and the separator."""
    text = read_text(csv_path)
    delimiter = ";" if text.count(";") > text.count(",") else ","
    rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if any(cell.strip() for cell in row)]
    return rows, delimiter


def _csv_columns(rows: list[list[str]]) -> tuple[int, int, int | None, bool]:
    """(file column, class column, specimen column or None, has header) of a labels CSV.

    With a header, columns are found by name: the class column by CLASS_COLUMNS, the
    file column by FILE_COLUMNS (else the first column), the specimen column by
    SPECIMEN_COLUMNS. Without one, the file is the first column and the class the second.
    """
    header = [_squash(cell) for cell in rows[0]] if rows else []
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


def _find_csv(root: Path) -> Path | None:
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
    if rows and [_squash(cell) for cell in rows[0][:2]] == ["file", "specimen"]:
        rows = rows[1:]
    listed: dict[Path, str] = {}
    for line_number, row in enumerate(rows, start=2):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{specimens_csv}:{line_number}: expected 'file,specimen', got {','.join(row)!r}")
        file = Path(row[0].strip())
        listed[(file if file.is_absolute() else root / file).resolve()] = row[1].strip()
    return [listed.get(path.resolve()) for path in paths]


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
    csv_path = _find_csv(root)
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

    The key hashes every file's path, size and modification time together with
    the preprocessing, so editing, adding or removing a file, or changing the
    size or normalisation, builds a new cache. It lives in the user's cache
    folder ($HEP2_CACHE, else $XDG_CACHE_HOME/hep2-al, else ~/.cache/hep2-al),
    never in the data folder.
    """
    digest = hashlib.sha256(f"v1|{image_size}|{normalize}".encode())
    for path, class_name in pairs:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{class_name}\n".encode())
    base = os.environ.get("HEP2_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hep2-al"
    )
    return Path(base) / f"{root.resolve().name}-{digest.hexdigest()[:20]}.pt"


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
    labels = torch.tensor([class_names.index(class_name) for _, class_name, _ in triples], dtype=torch.int64)
    files = [str(path) for path in paths]
    specimens = [specimen for _, _, specimen in triples]
    specimens = None if all(specimen is None for specimen in specimens) else specimens
    cache_file = (
        _cache_path(root, [(path, name) for path, name, _ in triples], image_size, normalize) if cache else None
    )
    if cache_file is not None and cache_file.exists():
        try:
            images = torch.load(cache_file, weights_only=True)
            if images.shape == (len(paths), 1, image_size, image_size):
                return CellDataset(images, labels, class_names, files, str(root), specimens)
        except Exception:
            pass  # a broken cache is rebuilt below
    images = torch.empty((len(paths), 1, image_size, image_size), dtype=torch.uint8)  # filled in place: one copy
    for index, path in enumerate(paths):
        images[index, 0] = torch.from_numpy(prepare_cell(read_cell(path), image_size, normalize))
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            save_atomic(images, cache_file)
        except OSError:
            pass  # a read-only home only costs the next load its speed
    return CellDataset(images, labels, class_names, files, str(root), specimens)


def load_unlabeled(
    folder: str | Path,
    image_size: int = IMAGE_SIZE,
    normalize: str = "none",
    flag: str = "--predict",
    unreadable: list | None = None,
):
    """(images (N,1,S,S) uint8, file paths) for every image directly in folder.

    An unreadable image stops the load, unless a list is given for `unreadable`: then (file, error) is
    appended to it and the rest are read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{flag} {folder}: not a folder")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"{flag} {folder}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    cells, files = [], []
    for path in paths:
        try:
            cells.append(prepare_cell(read_cell(path), image_size, normalize))
            files.append(str(path))
        except DataError as error:
            if unreadable is None:
                raise
            unreadable.append((str(path), str(error).removeprefix(f"{path}: ")))
    if not cells:
        raise DataError(f"{flag} {folder}: none of its {len(paths)} images could be read")
    return torch.from_numpy(np.stack(cells)).unsqueeze(1), files


# ---------------------------------------------------------------------------------------------
# The embedded synthetic default: HEp-2-like cells drawn from a seeded generator


# LSHEp-2's imbalance (Sec. 3.2: 375 Golgi and 814 nuclear membrane among 10,152 random cells).
TARGET_PROPORTIONS = {
    "homogeneous": 0.22,
    "speckled": 0.22,
    "nucleolar": 0.22,
    "centromere": 0.22,
    "nuclear_membrane": 0.08,
    "golgi": 0.04,
}


def _blobs(grid_y, grid_x, centers, sigmas, amplitudes):
    """Sum of isotropic Gaussian spots, the building block of every pattern."""
    image = np.zeros_like(grid_y)
    for (cy, cx), sigma, amplitude in zip(centers, sigmas, amplitudes):
        image += amplitude * np.exp(-((grid_y - cy) ** 2 + (grid_x - cx) ** 2) / (2 * sigma**2))
    return image


def _smooth_noise(rng, shape, sigma):
    """White noise blurred by a Gaussian of the given sigma (pixels), scaled to unit std."""
    noise = rng.standard_normal(shape)
    radius = max(1, int(3 * sigma))
    kernel = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    noise = np.apply_along_axis(np.convolve, 0, noise, kernel, mode="same")
    noise = np.apply_along_axis(np.convolve, 1, noise, kernel, mode="same")
    return noise / (noise.std() + 1e-8)


def _points_in_nucleus(rng, count, cy, cx, ry, rx, angle, max_radius=0.85):
    radius = max_radius * np.sqrt(rng.random(count))
    theta = rng.random(count) * 2 * np.pi
    y, x = radius * ry * np.sin(theta), radius * rx * np.cos(theta)
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([cy + y * cos + x * sin, cx - y * sin + x * cos], axis=1)


def synthetic_cell(class_name: str, rng: np.random.Generator) -> np.ndarray:
    """One HEp-2-like cell crop (float in [0, 1], a random side of 60 to 100 px).

    Each pattern imitates its real class in I3A: homogeneous, a smoothly filled
    nucleus; speckled, fine grains all over with dark nucleoli; coarse or fine
    speckles for SNPHEp-2; nucleolar, a few large bright blobs; centromere,
    tens of discrete bright dots; nuclear membrane, a bright rim; Golgi,
    irregular bright fragments clustered on one side, beside a dim nucleus.
    Cells are positive (bright) or intermediate (dim), of varied size, shape
    and orientation, and each one borrows a little of another pattern, so
    that classes overlap as they do in real data.
    """
    side = int(rng.integers(60, 101))
    grid_y, grid_x = np.mgrid[0:side, 0:side].astype(np.float64)
    cy, cx = side / 2 + rng.normal(0, side * 0.04, 2)
    radius = side * rng.uniform(0.32, 0.44)
    ry, rx = radius * rng.uniform(0.8, 1.05), radius * rng.uniform(0.8, 1.05)
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = grid_y - cy, grid_x - cx
    rho = np.sqrt(((dy * cos - dx * sin) / ry) ** 2 + ((dy * sin + dx * cos) / rx) ** 2)  # 1 on the rim
    nucleus = 1 / (1 + np.exp((rho - 1) / 0.06))

    def pattern(name: str) -> np.ndarray:
        if name == "homogeneous":
            return nucleus * (0.85 + 0.08 * _smooth_noise(rng, (side, side), 3) + 0.15 * (rho > 0.7) * (rho < 1.05))
        if name in ("speckled", "fine_speckled", "coarse_speckled"):
            grain = {
                "speckled": rng.uniform(0.8, 1.6),
                "fine_speckled": rng.uniform(0.7, 1.2),
                "coarse_speckled": rng.uniform(1.6, 2.6),
            }[name]
            texture = np.clip(0.55 + 0.3 * _smooth_noise(rng, (side, side), grain), 0, None)
            holes = _blobs(
                grid_y,
                grid_x,
                _points_in_nucleus(rng, int(rng.integers(0, 4)), cy, cx, ry, rx, angle, 0.5),
                [radius * 0.12] * 4,
                [0.6] * 4,
            )
            return nucleus * np.clip(texture - holes, 0, None)
        if name == "nucleolar":
            count = int(rng.integers(2, 7))
            centers = _points_in_nucleus(rng, count, cy, cx, ry, rx, angle, 0.6)
            spots = _blobs(
                grid_y, grid_x, centers, rng.uniform(0.07, 0.14, count) * radius, rng.uniform(0.7, 1.0, count)
            )
            return nucleus * (0.3 + 0.05 * _smooth_noise(rng, (side, side), 1.5)) + nucleus * spots
        if name == "centromere":
            count = int(rng.integers(25, 60))
            centers = _points_in_nucleus(rng, count, cy, cx, ry, rx, angle, 0.9)
            dots = _blobs(grid_y, grid_x, centers, rng.uniform(0.9, 1.6, count), rng.uniform(0.5, 1.0, count))
            return nucleus * 0.2 + dots
        if name == "nuclear_membrane":
            width = rng.uniform(0.06, 0.12)
            rim = np.exp(-((rho - 0.93) ** 2) / (2 * width**2))
            return nucleus * 0.35 + 0.8 * rim * (1 + 0.25 * _smooth_noise(rng, (side, side), 2))
        if name == "golgi":
            count = int(rng.integers(3, 9))
            side_angle = rng.uniform(0, 2 * np.pi)
            distance = rng.uniform(0.75, 1.05, count)
            spread = side_angle + rng.normal(0, 0.5, count)
            centers = np.stack([cy + distance * ry * np.sin(spread), cx + distance * rx * np.cos(spread)], axis=1)
            fragments = _blobs(
                grid_y, grid_x, centers, rng.uniform(0.06, 0.13, count) * radius, rng.uniform(0.6, 1.0, count)
            )
            return nucleus * 0.22 + fragments
        raise ValueError(f"no synthetic pattern for class {name}")

    image = pattern(class_name)
    # Borrow a little of a random other pattern: real classes overlap (Sec. 2: interclass similarities).
    others = [
        name
        for name in ("homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane")
        if name != class_name
    ]
    image = image + rng.uniform(0.0, 0.35) * pattern(others[int(rng.integers(len(others)))])
    # A neighbouring cell cut by the crop, as in real crops.
    if rng.random() < 0.4:
        ny, nx = rng.choice([-1, 1], 2) * side * rng.uniform(0.85, 1.0)
        neighbour = np.sqrt(((grid_y - cy - ny) / ry) ** 2 + ((grid_x - cx - nx) / rx) ** 2)
        image = image + 0.5 / (1 + np.exp((neighbour - 1) / 0.06))
    # Positive or intermediate fluorescence (Sec. 2, Fig. 1), background, blur, noise.
    gain = rng.uniform(0.55, 1.0) if rng.random() < 0.5 else rng.uniform(0.12, 0.3)
    image = gain * image / max(image.max(), 1e-6) + rng.uniform(0.03, 0.1)
    image = image + 0.01 * _smooth_noise(rng, (side, side), 0.7)
    image = image + rng.normal(0, rng.uniform(0.01, 0.03), image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def synthetic_dataset(
    kind: str = "source",
    num_cells: int | None = None,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    normalize: str = "none",
) -> CellDataset:
    """The embedded default data: 'source' (5 SNPHEp-2 classes, balanced, 300 cells unless num_cells says otherwise) or
    'target' (6 LSHEp-2 classes, LSHEp-2's imbalance, 1500 cells). Same seed, same cells."""
    if kind == "source":
        class_names, proportions = SOURCE_CLASSES, [1 / len(SOURCE_CLASSES)] * len(SOURCE_CLASSES)
        num_cells = num_cells or 300
    elif kind == "target":
        class_names, proportions = TARGET_CLASSES, [TARGET_PROPORTIONS[name] for name in TARGET_CLASSES]
        num_cells = num_cells or 1500
    else:
        raise ValueError(f"kind must be 'source' or 'target', got {kind}")
    counts = [max(2, round(num_cells * share)) for share in proportions]
    # Filled in place, not stacked from a list of cells: one copy in memory, even at LSHEp-2's 63,445 cells.
    images = np.empty((sum(counts), image_size, image_size), dtype=np.uint8)
    labels = []
    # Every class seeds its own generator so a class's cells do not depend on the other classes.
    for label, (class_name, count) in enumerate(zip(class_names, counts)):
        rng = np.random.default_rng([seed, label, 1 if kind == "target" else 0])
        for _ in range(count):
            images[len(labels)] = prepare_cell(synthetic_cell(class_name, rng), image_size, normalize)
            labels.append(label)
    files = [f"synthetic:{kind}:{seed}:{index}" for index in range(len(labels))]
    return CellDataset(
        torch.from_numpy(images).unsqueeze(1),
        torch.tensor(labels),
        list(class_names),
        files,
        f"synthetic-{kind}",
    )


def get_dataset(data, kind, classes, image_size, normalize, seed, synthetic_cells=None, specimens=None):
    """--data DIR if given (with --specimens FILE if given), else the synthetic default of this kind."""
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


# ---------------------------------------------------------------------------------------------
# Splits: whole specimens on one side, or cells stratified by class


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
    members: dict[str, list[int]] = {}
    for index, specimen in enumerate(specimens):
        members.setdefault(specimen, []).append(index)
    label_list = labels.tolist()
    by_class: dict[int, list[str]] = {}
    for specimen, cells in members.items():
        counts = torch.bincount(torch.tensor([label_list[i] for i in cells]))
        by_class.setdefault(int(counts.argmax()), []).append(specimen)
    total = sum(fractions)
    shares = [fraction / total for fraction in fractions]
    sides_needed = [name for name, share in zip(names, shares) if share > 0]
    parts: list[list[int]] = [[] for _ in fractions]
    for label in sorted(by_class):
        group = sorted(by_class[label])
        if len(group) < len(sides_needed):
            raise DataError(
                f"--split specimen: class '{class_names[label]}' has {len(group)} specimen(s), too few to put a whole "
                f"one on each of the {len(sides_needed)} sides ({', '.join(sides_needed)}); add specimens of it, drop "
                "it with --classes, use --test-fraction 0 when the data comes with its own test set, or pass "
                "--split cells (which lets one specimen's cells sit on both sides and flatters every result)"
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


def add_split_flags(parser, sides: str) -> None:
    """--specimens and --split, the same in every script that splits data."""
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
    return "specimen"


def split_dataset(dataset: CellDataset, by: str, fractions: list[float], seed: int, names: list[str]):
    """Indices of each side: whole specimens per side (by='specimen') or cells stratified by class ('cells')."""
    if by == "specimen":
        return specimen_split(dataset.labels, dataset.specimens, fractions, seed, dataset.class_names, names)
    return stratified_split(dataset.labels, fractions, seed)


def development_split(dataset: CellDataset, by: str, pool: torch.Tensor, fractions: list[float], seed: int):
    """The pool split again by the same rule into a development pool and test (the real test side is left out).

    Settings are chosen on these, never on the test specimens (docs/paper-notes.md)."""
    inner = split_dataset(dataset.subset(pool), by, fractions, seed, ["dev pool", "dev test"])
    return pool[inner[0]], pool[inner[1]]


def specimens_of(dataset: CellDataset, indices: torch.Tensor) -> list[str]:
    """The distinct specimens of these cells, sorted; [] where specimens are unknown."""
    if dataset.specimens is None:
        return []
    return sorted({dataset.specimens[i] for i in indices.tolist() if dataset.specimens[i] is not None})


def describe_split(dataset: CellDataset, by: str, parts: list[torch.Tensor], names: list[str], seed: int) -> str:
    """What the start of every run prints: the split, and each class's cells and specimens on each side."""
    sizes = ", ".join(f"{name} {len(part)}" for name, part in zip(names, parts))
    if by == "cells":
        why = "no specimens known" if dataset.specimens is None else "--split cells"
        return f"split: by cells ({why}; cells of one specimen may sit on both sides), seed {seed}: {sizes}"
    lines = [f"split: by specimen (each specimen whole on one side), seed {seed}: {sizes} cells"]
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
# Augmentation and model inputs


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each (N, 1, H, W) float image about its centre (bilinear, borders reflected)."""
    radians = degrees.to(images.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of the square of (N, C, H, W) images: 4 quarter turns, each without and with a mirror.

    Exact (no interpolation): a cell's pattern has no orientation, so each view is as valid as the original."""
    mirrored = torch.flip(images, dims=(3,))
    return [torch.rot90(view, turns, dims=(2, 3)) for view in (images, mirrored) for turns in range(4)]


def rotation_angles(views: int) -> torch.Tensor:
    """Sec. 3.1: rotations "with a step of 18 degrees in a quadrant of 360": 20 views (0, 18, ..., 342)."""
    return torch.arange(views, dtype=torch.float32) * (360.0 / views)


# How far --augment photometric moves a cell: what differs between specimens once the per-cell stretch has
# removed exposure and brightness (an affine change of intensity, which the stretch undoes exactly).
JITTER_GAMMA = 1.5  # intensity ** gamma, gamma log-uniform in [1/1.5, 1.5]: the fluorescence response's curve
JITTER_BLUR = 1.5  # Gaussian blur of sigma uniform in [0, 1.5] pixels at 112x112: focus
JITTER_NOISE = 0.04  # Gaussian noise of standard deviation uniform in [0, 0.04] of the range: the camera


def jitter_intensity(
    images: torch.Tensor, generator: torch.Generator, gamma=JITTER_GAMMA, blur=JITTER_BLUR, noise=JITTER_NOISE
) -> torch.Tensor:
    """Each (N, 1, H, W) uint8 cell with its own random gamma, blur and noise, in that order; uint8 out.

    Not in the paper (issue #15: augmentation that matches what differs between specimens). gamma=1,
    blur=0 and noise=0 give the cells back unchanged.
    """
    count = len(images)
    batch = images.float() / 255.0
    log_gamma = math.log(gamma) * (2 * torch.rand(count, generator=generator) - 1)
    batch = batch.clamp_min(1e-6) ** log_gamma.exp().view(-1, 1, 1, 1)
    sigma = blur * torch.rand(count, generator=generator)
    if blur > 0:  # one separable 7-tap kernel per cell, applied as a grouped convolution (borders reflected)
        taps = torch.arange(-3, 4, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * sigma.clamp_min(1e-3).view(-1, 1) ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).view(count, 1, 1, 7)
        rows = batch.transpose(0, 1)  # (1, N, H, W): each cell its own channel
        rows = F.conv2d(F.pad(rows, (3, 3, 0, 0), mode="reflect"), kernel, groups=count)
        rows = F.conv2d(F.pad(rows, (0, 0, 3, 3), mode="reflect"), kernel.transpose(2, 3), groups=count)
        batch = rows.transpose(0, 1)
    spread = noise * torch.rand(count, generator=generator)
    batch = batch + spread.view(-1, 1, 1, 1) * torch.randn(batch.shape, generator=generator)
    return (batch.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def model_inputs(images: torch.Tensor, device: torch.device, degrees: torch.Tensor | None = None):
    """uint8 cells -> (approximation, details) on device, rotated first if degrees are given (Sec. 2.1).

    Channels-last memory: the convolutions then keep it, and the max-pooling of the 56x56 and 28x28 maps,
    the slowest step of the frozen layers on a CPU in the default layout, runs faster (the frozen layers'
    cache 1.63x, `python bench.py --levers`, docs/speed.md). The values are the same.
    """
    batch = images.to(device, non_blocking=True).float().div_(255.0)
    if degrees is not None:
        batch = rotate(batch, degrees.to(device))
    # torch.empty, not .contiguous(): a one-channel band that is already contiguous would keep its strides.
    layout = dict(dtype=batch.dtype, device=batch.device, memory_format=torch.channels_last)
    return tuple(torch.empty(band.shape, **layout).copy_(band) for band in haar_split(batch))


# ---------------------------------------------------------------------------------------------
# Run plumbing shared by the scripts


def add_device_flag(parser) -> None:
    """The one --device flag of every script."""
    help = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)"
    parser.add_argument("--device", default="auto", help=help)


def pick_device(name: str = "auto") -> torch.device:
    """--device auto: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DataError(f"--device {name}: Apple's mps is not available on this machine")
    return device


def check_flags(args, positive_integers=(), positive_numbers=()) -> None:
    """One line per bad flag: these must be positive integers, those positive finite numbers (None: not given)."""
    for name in positive_integers:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DataError(f"--{name.replace('_', '-')} {value}: expected a positive integer")
    for name in positive_numbers:
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise DataError(f"--{name.replace('_', '-')} {value}: expected a positive number")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside path, then rename: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # a failed write leaves no partial file behind


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | Path) -> None:
    """Partial files a killed save left beside path (.NAME.tmpPID); the rename that would commit them never came."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        stale.unlink(missing_ok=True)


def read_json(path: str | Path) -> dict:
    """A JSON file this project wrote, or a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not readable JSON ({error.__class__.__name__}: {error})") from None


def write_text_atomic(text: str, path: str | Path) -> None:
    write_bytes_atomic(text.encode(), path)


def load_checkpoint(path: str | Path, flag: str = "--checkpoint") -> dict:
    """A checkpoint is data, never code: weights_only=True refuses pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag} {path}: no such file (run `python train.py` first to create one)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"{flag} {path}: not a readable checkpoint ({error.__class__.__name__})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "class_names" not in checkpoint:
        raise DataError(f"{flag} {path}: expected a checkpoint dict with 'model' and 'class_names'")
    return checkpoint


def preprocessing(checkpoint: dict) -> tuple[int, str]:
    """(image size, normalisation) the checkpoint's cells were prepared with; cells fed to it must match."""
    return checkpoint.get("image_size", IMAGE_SIZE), checkpoint.get("normalize", "none")
