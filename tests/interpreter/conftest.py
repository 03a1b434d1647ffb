"""Tests of the Triton backend under Triton's interpreter, on CPU tensors (how CI tests GPU kernels).

They run in their own pytest process with TRITON_INTERPRET=1 (``scripts/test.sh`` does this), since
the variable decides at import whether Triton kernels compile or interpret; the main run skips them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run with TRITON_INTERPRET=1 (see scripts/test.sh)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers in tests/
