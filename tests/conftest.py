"""Shared fixtures: the reference trajectories live in ../shared/golden beside the checkout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "official_trajectories.npz"


@pytest.fixture(scope="session")
def golden() -> tuple[Any, dict[str, Any]]:
    """(npz archive, manifest) of the float64 reference trajectories."""
    if not GOLDEN.exists():
        pytest.skip(f"reference trajectories not found at {GOLDEN} (shared/ must sit beside the checkout)")
    data = np.load(GOLDEN)
    return data, json.loads(str(data["manifest"]))
