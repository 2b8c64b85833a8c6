"""What a run leaves on disk and reads back: atomic files, the lock, checkpoints and the one resume design.

Not the paper (the workshop). What a reader of the method can skip:
  * every file a run writes is written beside its place and renamed into it, so a
    run killed at any moment leaves the old file or the new one, never half of one;
  * a checkpoint is one dict: weights, class names, `args` (what the run was given),
    `derived` (what it worked out: preprocessing, split, test specimens), the epoch
    or round, and metrics; it is data, never code (`weights_only=True`);
  * resume, the same for train.py and active.py: the state file holds the run's
    `args`; the same command with --resume goes on where the run stopped, and a
    resume whose flags would change the run is refused in one line.
"""

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch

from data import IMAGE_SIZE, NORMALIZATIONS, DataError
from model import ParallelResNet

# ---------------------------------------------------------------------------------------------
# Files written atomically, and read back with a one-line error


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _write_atomic(write, path: str | Path) -> None:
    """write(temporary) beside path, then rename: a killed run never leaves half a file, a failed one no file
    (write_all_atomic with one file); a failure (a full disk, a read-only folder) is one line naming the path."""
    write_all_atomic([(path, write)])


def write_all_atomic(writes: list) -> None:
    """Several files as one step: every (path, write(temporary)) writes its temporary first, then all are renamed,
    in order, so the last path (a state file) is the step's commit point. A write that fails removes every
    temporary and raises one line naming its path: none of the files changed."""
    staged = []
    try:
        for path, write in writes:
            path = Path(path)
            temporary = _temporary(path)
            staged.append(temporary)
            try:
                if path.is_dir():
                    raise IsADirectoryError(21, "is a folder")
                path.parent.mkdir(parents=True, exist_ok=True)
                write(temporary)
            except (OSError, RuntimeError) as error:
                # torch.save reports an unwritable file as a RuntimeError
                reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
                step = "; nothing of this step was changed" if len(writes) > 1 else ""
                raise DataError(f"{path}: cannot write ({reason}){step}") from None
        for (path, _), temporary in zip(writes, staged):
            os.replace(temporary, path)
    finally:
        for temporary in staged:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


def save_atomic(obj, path: str | Path) -> None:
    """torch.save, atomically (_write_atomic)."""
    _write_atomic(lambda temporary: torch.save(obj, temporary), path)


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    _write_atomic(lambda temporary: temporary.write_bytes(data), path)


def write_text_atomic(text: str, path: str | Path) -> None:
    write_bytes_atomic(text.encode(), path)


def remove_stale_temporaries(path: str | Path, name: str | None = None) -> None:
    """Partial files a killed save left beside path (.NAME.tmpPID, NAME path's name or the glob `name`): the rename
    that would commit them never came. A temporary whose process still runs is another save under way: kept."""
    path = Path(path)
    for stale in path.parent.glob(f".{name or path.name}.tmp*"):
        pid = stale.name.rpartition(".tmp")[2]
        if pid.isdigit() and int(pid) != os.getpid() and _process_exists(int(pid)):
            continue
        with contextlib.suppress(OSError):
            stale.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def read_json(path: str | Path) -> dict:
    """A JSON file this project wrote, or a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not readable JSON ({error.__class__.__name__}: {error})") from None


# ---------------------------------------------------------------------------------------------
# Checkpoints


def load_checkpoint(path: str | Path, flag: str = "--checkpoint", fields: dict | None = None, what: str = "") -> dict:
    """A checkpoint is data, never code: weights_only=True refuses pickled objects. With fields (a state file's), each
    of them is checked first (check_fields), so that a file of another kind is named as such."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag} {path}: no such file (run `python train.py` first to create one)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"{flag} {path}: not a readable checkpoint ({error.__class__.__name__})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "class_names" not in checkpoint:
        raise DataError(f"{flag} {path}: expected a checkpoint dict with 'model' and 'class_names'")
    if fields is not None:
        check_fields(checkpoint, fields, path, what)
    return check_checkpoint(checkpoint, f"{flag} {path}")


CHECKPOINT_FORMAT = 1  # written into every checkpoint; a reader refuses a newer one rather than guess at it
CHECKPOINT_TYPES = {"model": dict, "class_names": list, "args": dict, "derived": dict, "metrics": dict}


def check_checkpoint(checkpoint: dict, where: str) -> dict:
    """The one check of every checkpoint a user can hand in: its format version, and each key the project reads,
    of its type and in its range; else one line saying what was found."""
    version = checkpoint.get("format", CHECKPOINT_FORMAT)
    if not isinstance(version, int) or isinstance(version, bool) or version > CHECKPOINT_FORMAT:
        raise DataError(f"{where}: checkpoint format {version!r}; this version reads formats up to {CHECKPOINT_FORMAT}")
    for key, kind in CHECKPOINT_TYPES.items():
        if key in checkpoint and not isinstance(checkpoint[key], kind):
            raise DataError(f"{where}: '{key}' is a {type(checkpoint[key]).__name__}; expected a {kind.__name__}")
    if not isinstance(checkpoint.get("derived"), dict):  # this project has written `derived` since its first format
        raise DataError(f"{where}: written by an older version of this project (no 'derived'); make it again")
    names = checkpoint["class_names"]
    if len(names) < 2 or not all(isinstance(name, str) and name for name in names) or len(set(names)) < len(names):
        raise DataError(f"{where}: 'class_names' is {names!r}; expected two or more distinct class names")
    size, normalize = preprocessing(checkpoint)
    if not isinstance(size, int) or isinstance(size, bool) or size < 16 or size % 4:
        raise DataError(f"{where}: image_size {size!r}; expected a whole number of pixels, a multiple of 4, >= 16")
    if normalize not in NORMALIZATIONS:
        raise DataError(f"{where}: normalize {normalize!r}; this version knows {', '.join(NORMALIZATIONS)}")
    return checkpoint


def preprocessing(checkpoint: dict) -> tuple[int, str]:
    """(image size, normalisation) the checkpoint's cells were prepared with; cells fed to it must match."""
    made = checkpoint["derived"]
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


NUMBER = (int, float)


def check_fields(record, fields: dict, path, what: str) -> dict:
    """A file the project reads back holds what it must: each key of `fields`, of its type; else one line."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: not {what} (expected a dict, found {type(record).__name__})")
    for key, kind in fields.items():
        if key not in record:
            raise DataError(f"{path}: not {what} (no '{key}')")
        if not isinstance(record[key], kind) or isinstance(record[key], bool) and kind is NUMBER:
            raise DataError(f"{path}: not {what} ('{key}' is a {type(record[key]).__name__})")
    return record


def load_state(path: str | Path, fields: dict, what: str) -> dict:
    """The state file of a killed run, or a one-line error: a resume with nothing to resume is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--resume: no {path.name} at {path.parent} to resume (run the command without --resume)")
    return load_checkpoint(path, "--resume", fields, f"the state of {what}")


def _as_given(key: str, value) -> str:
    """How a flag reads on a command line: 'with --seed 3', 'with --scratch', 'without --split'."""
    flag = f"--{key.replace('_', '-')}"
    if value is None or value is False:
        return f"without {flag}"
    if value is True:
        return f"with {flag}"
    return f"with {flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def other_settings(saved_args: dict, args, may_change: tuple[str, ...]) -> str | None:
    """How a run's saved flags differ from these ('with --seed 0, not with --seed 1'), or None if they do not."""
    for key, value in vars(args).items():
        if key in may_change or key in ("resume", "out") or key not in saved_args:
            continue
        if saved_args[key] != value:
            return f"{_as_given(key, saved_args[key])}, not {_as_given(key, value)}"
    return None


def check_resume(saved_args: dict, args, path, may_change: tuple[str, ...]) -> None:
    """Refuse, in one line, a resume whose flags differ from the run's, except those in may_change."""
    differs = other_settings(saved_args, args, may_change)
    if differs is not None:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in may_change)
        raise DataError(
            f"--resume: {path} was made {differs}; a resume may change only {flags} "
            "(start a new run with another --out instead)"
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


def fingerprint_digest(fingerprint: dict) -> str:
    """The fingerprint in one string, for results.json: two runs on the same cells have the same digest."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:32]


def check_same_data(saved: dict, now: dict, path) -> None:
    """Refuse, in one line naming the first difference, a resume on data other than the run's (now: the
    data_fingerprint of this command's data, computed once per run)."""
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


# ---------------------------------------------------------------------------------------------
# Output paths, checked before any work, and the lock that gives a run folder to one run


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """A folder the run may write in: made if missing; refused in one line if it is a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{flag} {path}: is a file; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-check{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise DataError(f"{flag} {path}: cannot write there ({error.strerror or error})") from None
    return path


def check_output_file(path: str | Path, flag: str) -> Path:
    """A file the run may write: refused in one line if it is a folder or its folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{flag} {path}: is a folder; expected the path of a file to write")
    blocking = next((folder for folder in path.parents if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise DataError(f"{flag} {path}: {blocking} is a file, not a folder; cannot write there")
    check_output_folder(path.parent, flag)
    return path


def check_not_an_input(path: str | Path, flag: str, inputs: dict) -> None:
    """No command writes over a file it was given to read: path must not be any of inputs ({flag: path})."""
    path = Path(path)
    for given, source in inputs.items():
        if source is not None and path.exists() and Path(source).exists() and path.samefile(source):
            raise DataError(f"{flag} {path}: is the file {given} reads; write the output elsewhere")


def check_outputs(outputs: list, inputs: dict, folders: dict) -> None:
    """The one check of a command's outputs (#63), before any work: none is a file the command reads (inputs:
    {flag: path}), lies inside a folder it reads (folders: {flag: path}), or replaces a file the command did not make,
    unless the user named it. outputs: (what, path, named, made_here), made_here(path) telling this project's own
    file of that kind (a rerun replaces its own outputs; a named one is replaced as the user asked)."""
    for what, path, named, made_here in outputs:
        path = Path(path)
        check_not_an_input(path, what, inputs)
        for flag, folder in folders.items():
            if folder is not None and Path(folder).is_dir() and Path(folder).resolve() in path.resolve().parents:
                raise DataError(f"{what} {path}: inside the folder {flag} reads ({folder}); write it elsewhere")
        if not named and path.exists() and not made_here(path):
            raise DataError(f"{what} {path}: exists and was not made by this command; move it or choose another --out")


def _identity(pid: int) -> str | None:
    """Who a process is, beyond its id: the boot and the process's start time (in clock ticks since boot), so that
    a process id reused after a reboot, or by another process, never passes for the one that took a lock.
    None where /proc does not tell (not Linux): the id alone then."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime (after the name in brackets)
    except (OSError, IndexError):
        return None


def _holder(lock: Path) -> tuple[int | None, str | None]:
    """(process id, identity) written in a lock file; (None, None) if unreadable."""
    try:
        pid, _, identity = lock.read_text().strip().partition(" ")
        return int(pid or 0) or None, identity or None
    except (OSError, ValueError):
        return None, None


def _held_by_live_process(lock: Path) -> int | None:
    """The id of the live process that holds the lock, or None when the lock is stale: its process is gone, or the
    process now under its id started at another time or boot than the one that took it."""
    pid, identity = _holder(lock)
    if pid is None or pid == os.getpid():
        return None
    if not _process_exists(pid):
        return None
    now = _identity(pid)
    if identity is not None and now is not None and now != identity:
        return None  # the id was reused: the run that took the lock is gone
    return pid


def take_lock(lock: Path, what: str) -> None:
    """Hold `lock` for this process: a file made with O_EXCL that holds its process id and identity.

    A lock whose process is gone (a killed run, a reboot) is stale and taken over; one held by a live process is
    refused in one line, naming the lock, so that two runs never write one folder."""
    for _ in range(3):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _held_by_live_process(lock)
            if holder is not None:
                held = f"another run (process {holder}) is writing there, by its lock {lock}; wait for it, or use"
                held += f" another --out (if no such run is going on, remove {lock})"
                raise DataError(f"{what}: {held}")
            lock.unlink(missing_ok=True)  # stale: its run was killed (or it is this process's own)
            continue
        except OSError as error:
            raise DataError(f"{what}: cannot write there ({error.strerror or error})") from None
        with os.fdopen(descriptor, "w") as file:
            file.write(f"{os.getpid()} {_identity(os.getpid()) or ''}".strip())
        return
    raise DataError(f"{what}: cannot take its lock {lock}")


def release_lock(lock: Path) -> None:
    if _holder(lock)[0] == os.getpid():
        lock.unlink(missing_ok=True)
