"""Run plumbing every script shares: device, seeds, flag checks, atomic files, checkpoints and the one resume design.

Not the paper (the workshop). What a reader of the method can skip:
  * one device helper (cuda, then mps, then cpu) and one seed helper; nothing
    behaves differently by device except speed;
  * every file a run writes is written beside its place and renamed into it, so a
    run killed at any moment leaves the old file or the new one, never half of one;
  * a checkpoint is one dict: weights, class names, `args` (what the run was given),
    `derived` (what it worked out: preprocessing, split, test specimens), the epoch
    or round, and metrics; it is data, never code (`weights_only=True`);
  * resume, the same for train.py and active.py: the state file holds the run's
    `args`; the same command with --resume goes on where the run stopped, and a
    resume whose flags would change the run is refused in one line.
"""

import hashlib
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from data import IMAGE_SIZE, DataError
from model import ParallelResNet

# ---------------------------------------------------------------------------------------------
# Device, seeds, flags


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


# ---------------------------------------------------------------------------------------------
# Files written atomically, and read back with a one-line error


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside path, then rename: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # a failed write leaves no partial file behind


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | Path) -> None:
    write_bytes_atomic(text.encode(), path)


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


# ---------------------------------------------------------------------------------------------
# Checkpoints


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


def derived(checkpoint: dict) -> dict:
    """What the checkpoint's run worked out (preprocessing, split, ...); older checkpoints kept it at the top level."""
    return checkpoint.get("derived", checkpoint)


def preprocessing(checkpoint: dict) -> tuple[int, str]:
    """(image size, normalisation) the checkpoint's cells were prepared with; cells fed to it must match."""
    made = derived(checkpoint)
    return made.get("image_size", IMAGE_SIZE), made.get("normalize", "none")


def network_from_checkpoint(checkpoint: dict, name: str = "--checkpoint") -> ParallelResNet:
    """The network a checkpoint holds, with its weights, in eval mode on the CPU."""
    model = ParallelResNet(len(checkpoint["class_names"]))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:  # another network's weights, or another number of classes
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise DataError(f"{name}: its weights do not fit this project's network ({first})") from None
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Resume: one design for train.py and active.py


def load_state(path: str | Path, required: tuple[str, ...], what: str) -> dict:
    """The state file of a killed run, or a one-line error: a resume with nothing to resume is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--resume: no {path.name} at {path.parent} to resume (run the command without --resume)")
    state = load_checkpoint(path, "--resume")
    missing = [key for key in required if key not in state]
    if missing:
        raise DataError(f"--resume {path}: not the state of {what} (no {', '.join(repr(key) for key in missing)})")
    return state


def _as_given(key: str, value) -> str:
    """How a flag reads on a command line: 'with --seed 3', 'with --scratch', 'without --split'."""
    flag = f"--{key.replace('_', '-')}"
    if value is None or value is False:
        return f"without {flag}"
    if value is True:
        return f"with {flag}"
    return f"with {flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def check_resume(saved_args: dict, args, path, may_change: tuple[str, ...]) -> None:
    """Refuse, in one line, a resume whose flags differ from the run's, except those in may_change."""
    for key, value in vars(args).items():
        if key in may_change or key in ("resume", "out") or key not in saved_args:
            continue
        if saved_args[key] != value:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in may_change)
            raise DataError(
                f"--resume: {path} was made {_as_given(key, saved_args[key])}, not {_as_given(key, value)}; "
                f"a resume may change only {flags} (start a new run with another --out instead)"
            )


# ---------------------------------------------------------------------------------------------
# The one fingerprint of a run's data: what a resume checks


def data_fingerprint(dataset) -> dict:
    """The run's cells by name, label, specimen and content: each cell's prepared image hashed on its own."""
    specimens = dataset.specimens or [None] * len(dataset)
    cells = [
        hashlib.sha256(f"{label}|{specimen}|".encode() + image.numpy().tobytes()).hexdigest()[:16]
        for label, specimen, image in zip(dataset.labels.tolist(), specimens, dataset.images)
    ]
    names = {"source": dataset.source, "class_names": list(dataset.class_names), "files": list(dataset.files)}
    return {**names, "cells": cells}


def check_same_data(saved: dict, dataset, path) -> None:
    """Refuse, in one line naming the first difference, a resume on data other than the run's."""
    now = data_fingerprint(dataset)
    where = f"--resume {path}: the data differs from the run's ({saved.get('source')})"
    if saved.get("class_names") != now["class_names"]:
        raise DataError(f"{where}: classes {saved.get('class_names')}, now {now['class_names']}")
    if len(saved.get("files", [])) != len(now["files"]):
        raise DataError(f"{where}: {len(saved.get('files', []))} cells, now {len(now['files'])}")
    for old, new, old_cell, new_cell in zip(saved["files"], now["files"], saved.get("cells", []), now["cells"]):
        if old != new:
            raise DataError(f"{where}: {old} is now {new}")
        if old_cell != new_cell:
            raise DataError(f"{where}: {new} changed (its image, label or specimen)")
    if saved.get("cells") != now["cells"]:
        raise DataError(f"{where}: the cells' content changed")
