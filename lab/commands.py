"""What every command shares: the checks of its flags, and the main that turns bad input into one line.

Not the paper (the workshop).
"""

import sys

from data import DataError


def check_flags(args, positive_integers=()) -> None:
    """One line per bad flag: these must be positive integers (None: not given); a --seed, one numpy and torch
    both take (0 to 2**32 - 1)."""
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2**32:
        raise DataError(f"--seed {seed}: expected a whole number from 0 to {2**32 - 1}")
    for name in positive_integers:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DataError(f"--{name.replace('_', '-')} {value}: expected a positive integer")


def refuse_unused(args, parser, rules: list) -> None:
    """A flag that cannot apply to this run is refused in one line, never ignored without a word: rules are
    (flag's dest, whether it applies, why not); a flag left at its default is never refused."""
    for dest, applies, why in rules:
        if not applies and getattr(args, dest) != parser.get_default(dest):
            raise DataError(f"--{dest.replace('_', '-')} {getattr(args, dest)}: {why}")


def check_image_size(size: int) -> None:
    """The network pools a Haar band (half the cell) twice: a side of at least 16 that 4 divides."""
    if size < 16 or size % 4:
        raise DataError(f"--image-size {size}: expected a multiple of 4, at least 16")


def run_command(run, args):
    """Run a script's `run(args)`: bad input or a failed write ends in one `error:` line, Ctrl-C in how to resume."""
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once, even in a log file
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show a file's name gets it escaped, not a crash
        stream.reconfigure(errors="backslashreplace")
    try:
        return run(args)
    except DataError as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # a write or read the checks before the work could not foresee (disk full, ...)
        where = f"{error.filename}: " if error.filename else ""
        sys.exit(f"error: {where}{error.strerror or error}")
    except KeyboardInterrupt:
        resume = " with --resume" if hasattr(args, "resume") else ""
        sys.exit(f"interrupted: what was saved is kept; run the same command{resume} to continue")
