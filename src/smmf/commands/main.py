"""The ``smmf`` command: ``compare``, ``train``, ``memory`` and ``bench`` subcommands.

Each subcommand lives in its own module with ``register(subparsers)`` and ``run(args) -> int``. Errors a
user can fix (an unknown name, a missing dataset, an unwritable folder) print one line to stderr and
exit non-zero, never a traceback; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import bench, compare, extras, memory, train
from .common import RunError, UsageError
from .data import DataError
from .interrupts import interruptible

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full ``smmf`` parser."""
    parser = argparse.ArgumentParser(
        prog="smmf",
        description="SMMF optimizer tools: compare optimizers, train with the paper's recipe, report memory.",
    )
    parser.add_argument("--version", action="version", version=f"smmf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (compare, train, memory, bench):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smmf`` console script and of ``python -m smmf``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        extras.check(args)  # a missing optional dependency is named before any work
        with interruptible():
            return int(args.func(args))
    except KeyboardInterrupt:
        print("\nsmmf: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"smmf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (DataError, RunError) as exc:
        print(f"smmf {args.command}: error: {exc}", file=sys.stderr)
        return 1
