"""What every subcommand shares: its errors, argument types and checks, and the markdown table renderer.

Errors a user can fix (an unknown name, a missing dataset, an unwritable folder) are raised as
``UsageError`` (exit status 2) or ``RunError`` (status 1); :func:`smmf.commands.main.main` prints them on
one line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "UsageError",
    "UnknownNameError",
    "RunError",
    "positive_int",
    "non_negative_int",
    "check_number",
    "check_seed",
    "split_names",
    "check_names",
    "resolve_device",
    "writable_dir",
    "markdown_table",
    "write_report",
]


class UsageError(ValueError):
    """A bad argument found after parsing; ``main`` prints it on one line and exits with status 2."""


class UnknownNameError(UsageError):
    """A name (optimizer, task, model) that is not in its registry; the message lists the valid ones."""


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


def split_names(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: a comma-separated option value."""
    return [s.strip() for s in text.split(",") if s.strip()]


def check_names(names: Iterable[str], valid: Iterable[str], what: str) -> list[str]:
    """Return ``names`` as a list, or raise UnknownNameError with a one-line message listing the valid names."""
    valid = list(valid)
    names = list(names)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise UnknownNameError(f"unknown {what} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    if not names:
        raise UnknownNameError(f"no {what} given; valid: {', '.join(valid)}")
    return names


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


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], *, left: int = 1) -> str:
    """A markdown table: the first ``left`` columns aligned left (names), the others right (numbers).
    A row shorter than the header is padded with empty cells (a failed run's row)."""
    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for row in rows:
        cells = [str(c) for c in row] + [""] * (len(header) - len(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, stem: str, report: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``<stem>.md`` (the tables) and ``<stem>.json`` (meta and every row) in ``out``."""
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
