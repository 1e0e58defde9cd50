"""What every geotm command line shares: --version from the package metadata, and a quiet exit when
whoever reads our output goes away (`dnsd audit | head`)."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable

PACKAGE = "geotm"
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)


def package_version() -> str:
    from importlib import metadata  # here, not at the top: only --version needs it (start-up time)
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown (the geotm package is not installed)"


class _VersionAction(argparse.Action):
    """Like argparse's "version" action, but reads the package metadata only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "print the program's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--version", action=_VersionAction)
    return parser


def quiet_broken_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """Run a command's main; if the reader of stdout has gone (a closed pipe), stop without a traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            try:
                return main(*args, **kwargs)
            finally:  # also on SystemExit (--help, --version): buffered output fails here, not at exit
                sys.stdout.flush()
        except BrokenPipeError:
            # the interpreter flushes stdout once more at exit: point it at /dev/null so that cannot fail
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_BROKEN_PIPE
    return wrapper
