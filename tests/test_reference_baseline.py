"""The benchmark's baseline (benchmarks/reference_smmf.py) replays the recorded reference trajectories.

A baseline that computed something else would make the speed comparison meaningless, so it is held
to the same float64 golden data as the optimizer itself: final parameters within 1e-9 and the same
state (factors and bool signs) after every case.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import benchmark_modules
from golden_replay import CASES, replay


def _load_reference() -> ModuleType:
    return benchmark_modules.load("reference_smmf")


@pytest.mark.parametrize("name", CASES)
def test_reference_baseline_replays_golden(golden: tuple[Any, dict[str, Any]], name: str) -> None:
    data, manifest = golden
    case = next(c for c in manifest["cases"] if c["name"] == name)
    reference = _load_reference()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the reference allocates factors in the default dtype
    try:
        params, opt = replay(data, manifest, case, reference.ReferenceSMMF)
    finally:
        torch.set_default_dtype(previous)

    for i, p in enumerate(params):
        key = f"{name}/p{i}"
        np.testing.assert_allclose(p.detach().numpy(), data[f"{key}/final"], rtol=0, atol=1e-9, err_msg=key)
        if f"{key}/v_row" not in data.files:
            continue
        state = opt.state[p]
        assert tuple(state["effective_shape"]) == tuple(data[f"{key}/effective_shape"])
        np.testing.assert_allclose(state["momentum_v"][0].numpy(), data[f"{key}/v_row"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(state["momentum_v"][1].numpy(), data[f"{key}/v_col"], rtol=1e-9, atol=1e-12)
        if f"{key}/sign" in data.files:
            np.testing.assert_allclose(state["momentum_m"][0].numpy(), data[f"{key}/m_row"], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(state["momentum_m"][1].numpy(), data[f"{key}/m_col"], rtol=1e-9, atol=1e-12)
            np.testing.assert_array_equal(state["sign"].numpy(), data[f"{key}/sign"])
