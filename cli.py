"""Command-line plumbing shared by every script: flags, environment defaults and one-line errors.

Not a script: `train.py`, `inference.py` and the others import it so that every one of them spells its
flags both ways (`--batch_size`, `--batch-size`), takes paths from the competition's SM_* variables, and
turns bad input into a single line on stderr with exit code 2 instead of a traceback.
"""
import argparse
import contextlib
import math
import os
import sys
from pathlib import Path

import torch


class UserError(Exception):
    """Bad input from the user (a path, a file, a flag): reported as one line, exit code 2."""


def add_flag(group, name, **kwargs):
    """Adds `--name_with_underscores` and its hyphenated spelling as one flag."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    return group.add_argument(*spellings, dest=name, **kwargs)


def env_default(variable, fallback):
    """The value of the competition's environment variable, or `fallback` when it is unset."""
    return os.environ.get(variable) or fallback


class Parser(argparse.ArgumentParser):
    """argparse with its errors (unknown flag, a value out of range) as the toolkit's one `error:` line, exit 2."""

    def error(self, message):
        print(f"error: {message} (--help lists the flags)", file=sys.stderr)
        sys.exit(2)


def new_parser(description):
    return Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def int_at_least(low):
    """An argparse type: an integer >= low."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is out of range: at least {low}")
        return value
    return parse


positive_int, non_negative_int = int_at_least(1), int_at_least(0)


def float_in(low, high=math.inf, low_open=False):
    """An argparse type: a finite float in [low, high] (low excluded when `low_open`): nan and inf are refused."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            bounds = f"{'over' if low_open else 'at least'} {low}" + (f" and at most {high}" if high < math.inf else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range: a finite number {bounds}")
        return value
    return parse


positive_float, non_negative_float, fraction = float_in(0, low_open=True), float_in(0), float_in(0, 1)


def device(text):
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps), as its string."""
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available() and (parsed.index or 0) < torch.cuda.device_count(),
                 "mps": torch.backends.mps.is_available()}
    if not available.get(parsed.type, False):
        raise argparse.ArgumentTypeError(f"device {text!r} is not available on this machine")
    return text


def plain_name(text):
    """An argparse type: a file or folder name, not a path (no separator, not `.` or `..`)."""
    if not text or text in (".", "..") or "/" in text or "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain name (no '/', not '.' or '..')")
    return text


def inside(folder, relative, what):
    """folder/relative, refused unless it stays inside `folder` once resolved (no `..`, no absolute path, no link
    out). The one message does not say whether the path outside exists."""
    folder, relative = Path(folder).resolve(), str(relative)
    path = None if "\0" in relative else (folder / relative).resolve()  # a NUL byte names no file
    if path is None or path == folder or not path.is_relative_to(folder):
        raise UserError(f"{what} names {relative!r}, which is not a path inside {folder}")
    return path


def check_values(parser, values, source):
    """Checks saved flag values (a run's config.json) as the command line's are: a switch's is true or false, any
    other's items (one per nargs) must be what the flag's type and choices make of their text. One line naming
    `source` and the key otherwise."""
    for action in parser._actions:
        value = values.get(action.dest)
        if value is None:
            continue
        if action.nargs == 0:
            if type(value) is not bool:
                raise UserError(f"{source}: {action.dest} is {value!r}, not true or false")
            continue
        items = value if isinstance(value, list) else [value]
        count_fits = (len(items) == action.nargs if isinstance(action.nargs, int)
                      else bool(items) if action.nargs == "+" else True)
        if isinstance(value, list) != (action.nargs is not None) or not count_fits:
            raise UserError(f"{source}: {action.dest} is {value!r}, which is not what --{action.dest} takes")
        for item in items:
            try:
                parsed = (action.type or str)(str(item))
            except (argparse.ArgumentTypeError, ValueError) as error:
                raise UserError(f"{source}: {action.dest}: {error}") from None
            if parsed != item:  # "1e-3" for --lr is text, not a number; 3.5 for --epochs is no integer
                raise UserError(f"{source}: {action.dest} is {item!r}, which is not what --{action.dest} takes")
            if action.choices is not None and item not in action.choices:
                raise UserError(f"{source}: {action.dest} is {item!r}, not one of {', '.join(action.choices)}")


@contextlib.contextmanager
def torch_threads(count):
    """torch's intra-op threads set to `count` inside the block (0: left as they are) and restored after it, so
    that a script run inside another process (the tests run them so) leaves that process's thread count alone."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def first_line(error):
    """The first line of an exception's message, or its type's name when the message is empty."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def one_line(error):
    """A UserError's message. One raised in a DataLoader worker comes back wrapped by torch, its message the worker's
    traceback: the original message is that traceback's last line."""
    message = str(error)
    if message.startswith("Caught UserError in DataLoader worker"):
        message = message.strip().splitlines()[-1].split("UserError: ", 1)[-1]
    return message


def run(main, argv=None):
    """Runs `main(argv)` (None: the command line) and returns its exit code: 0, or 2 with UserError reported as
    `error: ...` on stderr, 130 when interrupted (argparse's --help and flag errors exit through SystemExit, as
    ever). Scripts end with `sys.exit(cli.run(main))`; tests call it in-process with an argv."""
    try:
        main(argv)
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
