"""Ctrl-C during a command (smmf.commands.interrupts): raised once, remembered if a library swallows it,
and not recorded by CPython as unhandled when it passes through an ``exec`` of a string."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading

import pytest

from smmf.commands.interrupts import Interrupted, interruptible, raise_if_interrupted


def _sigint_in(source: str) -> None:
    """SIGINT to this process while ``source`` runs (a loop: its handler runs at the loop's next turn)."""
    exec(f"import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n{source}")


def test_ctrl_c_raises_a_keyboard_interrupt_and_a_swallowed_one_comes_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    with interruptible():
        with pytest.raises(KeyboardInterrupt):
            _sigint_in("for _ in range(10**7): pass")
        with contextlib.suppress(BaseException):  # a library's bare except
            _sigint_in("for _ in range(10**7): pass")
        with pytest.raises(Interrupted):
            raise_if_interrupted()  # the training loop's next step
    assert signal.getsignal(signal.SIGINT) is before
    with interruptible():  # the next command starts clear
        raise_if_interrupted()


def test_an_interrupt_through_exec_of_a_string_is_not_marked_unhandled() -> None:
    """CPython 3.11 marks a KeyboardInterrupt that leaves an exec of a string as unhandled, and ``python
    -m`` then ends by SIGINT whatever it returned; smmf's is of another type, so the mark stays clear."""
    try:
        mark = ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt")
    except ValueError:
        pytest.skip("this Python keeps the mark elsewhere")
    try:
        with interruptible(), pytest.raises(KeyboardInterrupt):
            _sigint_in("for _ in range(10**7): pass")
        assert mark.value == 0
    finally:
        mark.value = 0  # this test process runs as python -m pytest: it must not end by SIGINT


def test_off_the_main_thread_the_handler_is_left_alone() -> None:
    seen = []

    def run() -> None:
        with interruptible():
            seen.append(signal.getsignal(signal.SIGINT))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert seen == [signal.default_int_handler] or os.name == "nt"
