"""What every command shares: the checks of its flags, and the main that turns bad input into one line.

Not the paper (the workshop).
"""

import argparse
import sys

from data import DataError


def parse_typed(parser, argv=None):
    """parser.parse_args(argv), noting on the parser which flags the user typed (parser.typed_dests): a flag typed
    at its default value is typed all the same, so --paper and the unused-flag checks judge what the user asked
    for, not values (#63)."""
    args = parser.parse_args(argv)
    unset = object()
    probe = argparse.Namespace(**{action.dest: unset for action in parser._actions if action.dest != "help"})
    parser.parse_args(argv, probe)  # argparse fills in a default only where the namespace has no value yet
    parser.typed_dests = {dest for dest, value in vars(probe).items() if value is not unset}
    return args


def was_typed(args, parser, dest: str) -> bool:
    """Whether the user typed this flag (parse_typed), else, for args made otherwise, whether it left its default."""
    typed = getattr(parser, "typed_dests", None)
    return dest in typed if typed is not None else getattr(args, dest) != parser.get_default(dest)


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
        if not applies and was_typed(args, parser, dest):
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
