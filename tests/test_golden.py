"""Float64 replay of the reference implementation's recorded trajectories (../shared/golden)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from golden_replay import CASES, max_relative_error, replay
from smmf import SMMF
from smmf.signpack import unpack_signs

TOL = 1e-9


def _make(backend: str):
    def make(params, **hyperparameters):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # beta=None with the default growth_rate warns by design
            return SMMF(params, backend=backend, **hyperparameters)

    return make


def _case(manifest, name):
    return next(c for c in manifest["cases"] if c["name"] == name)


def test_manifest_has_the_seven_cases(golden):
    _, manifest = golden
    assert sorted(c["name"] for c in manifest["cases"]) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("backend", ["eager", "inductor", "cpp"])
def test_final_parameters_match_reference(golden, name, backend):
    data, manifest = golden
    case = _case(manifest, name)
    params, _ = replay(data, manifest, case, _make(backend))
    errors = [max_relative_error(p, data[f"{name}/p{i}/final"]) for i, p in enumerate(params)]
    assert max(errors) <= TOL, errors


@pytest.mark.parametrize("name", CASES)
def test_factors_and_signs_match_reference(golden, name):
    data, manifest = golden
    case = _case(manifest, name)
    params, optimizer = replay(data, manifest, case, _make("eager"))
    checked = 0
    for i, p in enumerate(params):
        prefix = f"{name}/p{i}/"
        state = optimizer.state[p]
        if prefix + "effective_shape" not in data:
            assert "exp_avg_sq" in state  # dense path: the reference keeps no factors for it
            continue
        n, m = (int(x) for x in data[prefix + "effective_shape"])
        assert tuple(state["row_v"].shape) == (n,) and tuple(state["col_v"].shape) == (m,)
        for ours, theirs in (("row_v", "v_row"), ("col_v", "v_col"), ("row_m", "m_row"), ("col_m", "m_col")):
            if prefix + theirs in data:
                np.testing.assert_allclose(state[ours].numpy(), data[prefix + theirs], rtol=TOL, atol=1e-12)
                checked += 1
        if prefix + "sign" in data:
            signs = unpack_signs(state["sign"], n, m).numpy()
            np.testing.assert_array_equal(signs, data[prefix + "sign"].reshape(n, m))
    assert checked > 0
