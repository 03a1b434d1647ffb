"""Shared fixtures: the reference trajectories live in ../shared/golden beside the checkout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The Triton-interpreter tests run in a pytest process of their own (see tests/interpreter/conftest.py).
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["interpreter"]

# SMMF_GOLDEN names another copy (the GPU machine receives the repository only: benchmarks/gpu_check.sh).
GOLDEN = Path(
    os.environ.get("SMMF_GOLDEN")
    or Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "official_trajectories.npz"
)


@pytest.fixture(scope="session")
def golden() -> tuple[Any, dict[str, Any]]:
    """(npz archive, manifest) of the float64 reference trajectories."""
    if not GOLDEN.exists():
        pytest.skip(f"reference trajectories not found at {GOLDEN} (shared/ must sit beside the checkout)")
    data = np.load(GOLDEN)
    return data, json.loads(str(data["manifest"]))
