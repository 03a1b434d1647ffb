"""The ``smmf`` command: ``compare``, ``train``, ``memory`` and ``bench`` subcommands.

Each subcommand lives in its own module with ``register(subparsers)`` and ``run(args) -> int``. Errors a
user can fix (an unknown name, a missing dataset, an unwritable folder) print one line to stderr and
exit non-zero, never a traceback; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .data import DataError
from .optimizers import UnknownNameError

__all__ = ["UsageError", "RunError", "positive_int", "non_negative_int", "check_number", "check_seed", "resolve_device", "writable_dir", "build_parser", "main"]


class UsageError(ValueError):
    """A bad argument found after parsing; ``main`` prints it on one line and exits with status 2."""


class RunError(RuntimeError):
    """A run that cannot start or go on (a damaged checkpoint, a non-finite loss, a missing optional
    dependency); ``main`` prints it on one line and exits with status 1."""


def _int_at_least(text: str, minimum: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "non-negative")


def check_number(option: str, value: float, low: float, high: float = math.inf, *, above: bool = False) -> None:
    """UsageError unless ``value`` is finite and in [low, high] (``above``: strictly greater than low)."""
    if math.isfinite(value) and (value > low if above else value >= low) and value <= high:
        return
    bounds = f"> {low:g}" if above else f">= {low:g}"
    bounds += "" if high == math.inf else f" and <= {high:g}"
    raise UsageError(f"{option}: expected a finite number {bounds}, got {value}")


SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit unsigned


def check_seed(value: int, option: str = "--seed") -> None:
    """UsageError unless ``value`` is a seed every library here accepts: 0 <= seed <= 2**32 - 1."""
    if not 0 <= value <= SEED_MAX:
        raise UsageError(f"{option}: expected an integer from 0 to {SEED_MAX}, got {value}")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; UsageError for anything torch cannot use here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {name!r}; valid: cpu, cuda, cuda:N, auto") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: unsupported device {name!r}; valid: cpu, cuda, cuda:N, auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device: {name!r} requested but CUDA is not available on this machine")
    return device


def writable_dir(path: Path, option: str) -> Path:
    """Create ``path`` if needed and check that files can be written into it, before any long work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".smmf-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{option}: cannot write to {path}: {exc.strerror or exc}") from None
    return path


def build_parser() -> argparse.ArgumentParser:
    """The full ``smmf`` parser; subcommand modules are imported here so that helpers above load first."""
    from . import __version__, bench, compare, memory, train

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
    from . import extras

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        extras.check(args)  # a missing optional dependency is named before any work
        return int(args.func(args))
    except KeyboardInterrupt:
        print("\nsmmf: interrupted", file=sys.stderr)
        return 130
    except (UsageError, UnknownNameError) as exc:
        print(f"smmf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (DataError, RunError) as exc:
        print(f"smmf {args.command}: error: {exc}", file=sys.stderr)
        return 1
