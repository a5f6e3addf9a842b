"""Command-line plumbing shared by every script: flags, environment defaults and one-line errors.

Not a script: `train.py`, `inference.py` and the others import it so that every one of them spells its
flags both ways (`--batch_size`, `--batch-size`), takes paths from the competition's SM_* variables, and
turns bad input into a single line on stderr with exit code 2 instead of a traceback.
"""
import argparse
import os
import sys


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


def new_parser(description):
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def run(main):
    """Runs `main()`, reporting UserError as `error: ...` on stderr with exit code 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
