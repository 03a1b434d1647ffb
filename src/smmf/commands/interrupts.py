"""Ctrl-C while a command runs: it stops the run, once, whatever code it lands in.

Python's own handler raises ``KeyboardInterrupt`` wherever the main thread is. Two things then went
wrong, each in some of the runs interrupted in their first seconds (while scipy and sklearn import):
a library's bare ``except:`` swallowed it, and training went on; or it passed through an ``exec`` of
a string (scipy's ``array_api_compat`` runs one on import), which CPython records as an unhandled
interrupt, so ``python -m smmf`` died by SIGINT after printing its message and returning 130. Here
the handler raises :class:`Interrupted`, a ``KeyboardInterrupt`` to every ``except`` that expects one
but not of the exact type CPython records, and remembers it, so that the training loops'
:func:`raise_if_interrupted` stops a run whose interrupt was swallowed at its next step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Interrupted", "interruptible", "raise_if_interrupted"]

_received = threading.Event()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a command."""


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _received.set()
    raise Interrupted


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT raises :class:`Interrupted` and is remembered; the previous handler is
    restored after. Left as it is off the main thread, or where SIGINT has another handler than
    Python's (ignored, as in a background job, or an embedding program's own)."""
    _received.clear()
    ours = threading.current_thread() is threading.main_thread()
    ours = ours and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, _on_sigint) if ours else None
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if Ctrl-C came during this command (called once a training step)."""
    if _received.is_set():
        raise Interrupted
