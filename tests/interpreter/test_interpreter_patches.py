"""conftest.py's shortcut through Triton's interpreter: a launch patches the language once, however many
@triton.jit calls it makes, and computes what it computed before."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter


@triton.jit
def _row_sum(x_ptr, row, WIDTH: tl.constexpr):
    return tl.sum(tl.load(x_ptr + row * WIDTH + tl.arange(0, WIDTH)), axis=0)


@triton.jit
def _row_sums(x_ptr, out_ptr, ROWS: tl.constexpr, WIDTH: tl.constexpr):
    for row in tl.static_range(ROWS):  # ROWS calls of a helper, each calling tl.sum
        tl.store(out_ptr + row, _row_sum(x_ptr, row, WIDTH))


def _patches_of_a_launch(rows: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """Triton's patches of a language module in one launch of ``rows`` helper calls; checks its result."""
    patches = []
    original = interpreter._patch_builtin
    monkeypatch.setattr(interpreter, "_patch_builtin", lambda *args: patches.append(1) or original(*args))
    x = torch.arange(rows * 16, dtype=torch.float32).reshape(rows, 16)
    out = torch.empty(rows)
    _row_sums[(1,)](x, out, ROWS=rows, WIDTH=16)
    monkeypatch.undo()
    torch.testing.assert_close(out, x.sum(dim=1))
    return len(patches)


def test_a_launch_patches_the_language_once_however_many_calls_it_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    """2 and 16 helper calls cost the same patches: before the shortcut each call patched every module
    again (inspect.getmembers over each), a third of the interpreter suite's time. (The first launch
    goes first: Triton's first rewrite of tl.sum adds a module to its globals, one more to patch.)"""
    _patches_of_a_launch(1, monkeypatch)
    few, many = _patches_of_a_launch(2, monkeypatch), _patches_of_a_launch(16, monkeypatch)
    assert few == many > 0
