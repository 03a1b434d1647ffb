"""Tests of the Triton backend under Triton's interpreter, on CPU tensors (how CI tests GPU kernels).

They run in their own pytest process with TRITON_INTERPRET=1 (``scripts/test.sh`` does this), since
the variable decides at import whether Triton kernels compile or interpret; the main run skips them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run with TRITON_INTERPRET=1 (see scripts/test.sh)", allow_module_level=True)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


triton = pytest.importorskip("triton")
if _version(triton.__version__) < (3, 7) and _version(np.__version__) >= (2, 4):
    # Triton 3.6's interpreter turns a loop bound into an int with int() of a 1-element array, which
    # numpy 2.4 refuses; compiled kernels are unaffected (tests/test_triton_compile.py).
    pytest.skip(
        f"Triton {triton.__version__}'s interpreter cannot run loops with tensor bounds under numpy "
        f"{np.__version__}: use triton>=3.7 or numpy<2.4",
        allow_module_level=True,
    )

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers in tests/


def _skip_nested_language_patches() -> None:
    """Speed the interpreter up without changing what it computes. On every call of a @triton.jit function
    inside a kernel (this project's helpers, and tl.sum, tl.cdiv, ...), Triton's interpreter patches the
    language modules it sees again (``_patch_lang``: ``inspect.getmembers`` over each), though they stay
    patched until the kernel ends (the launch's patch is restored then, a nested one never): a third of
    this suite's time (cProfile: 25 s of a 70 s golden replay, in 33,730 such calls). Within a launch, a
    function whose language modules were all patched already in it runs without the repeated patch;
    every other call goes through Triton's own. Where Triton's internals differ from these (another
    version), nothing is changed."""
    from triton.runtime import interpreter

    names = ("_patch_lang", "_LangPatchScope", "GridExecutor")
    if not all(hasattr(interpreter, name) for name in names):
        return
    original_patch, scope, executor = (getattr(interpreter, name) for name in names)
    original_launch = executor.__call__
    language = triton.language
    patched: set[int] | None = None  # the modules patched so far in the running kernel; None outside one

    def modules_of(fn: object) -> frozenset[int]:
        values = getattr(fn, "__globals__", {}).values()
        return frozenset(id(value) for value in values if value is language or value is language.core)

    def patch_lang(fn: object) -> object:
        modules = modules_of(fn)
        if patched is None or not modules:  # outside a launch, or Triton's own error for no language
            return original_patch(fn)
        if modules <= patched:
            return scope()  # still patched from earlier in this launch
        patched.update(modules)
        return original_patch(fn)

    def run_kernel(self: object, *args: object, **kwargs: object) -> object:
        nonlocal patched
        patched = set()
        try:
            return original_launch(self, *args, **kwargs)
        finally:
            patched = None

    interpreter._patch_lang = patch_lang
    executor.__call__ = run_kernel


_skip_nested_language_patches()
