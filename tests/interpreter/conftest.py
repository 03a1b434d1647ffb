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
