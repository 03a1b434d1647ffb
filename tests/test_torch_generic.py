"""Checks from PyTorch's generic optimizer tests (test/test_optim.py) that SMMF once failed (issue 14)."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from torch import nn

from smmf import SMMF
from step_helpers import tiny_model as _model
from step_helpers import train_tiny as _train


def _assert_same(a: Any, b: Any, path: str = "") -> None:
    """Equal nested dicts/lists: the same keys, and tensors equal in value, dtype and shape."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            _assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


CONFIGS = [
    {},
    {"sign_bits": 8, "weight_decay_mode": "adam", "weight_decay": 1e-2},
    {"beta": None, "growth_rate": None, "lr": torch.tensor(1e-2)},
]


# ---------------------------------------------------------------- test_state_dict_deterministic


@pytest.mark.parametrize("kwargs", CONFIGS, ids=["defaults", "8bit-adam", "no-momentum-tensor-lr"])
def test_state_dict_round_trip_is_identical_including_keys(kwargs: dict[str, Any]) -> None:
    model = _model()
    opt = SMMF(model.parameters(), fused=False, **copy.deepcopy(kwargs))
    _train(model, opt, 2)
    saved = opt.state_dict()
    defaults = copy.deepcopy(opt.defaults)
    fresh = SMMF(model.parameters(), fused=False, **copy.deepcopy(kwargs))
    fresh.load_state_dict(copy.deepcopy(saved))
    _assert_same(fresh.state_dict(), saved)
    fresh.load_state_dict(copy.deepcopy(saved))  # a second load changes nothing either
    _assert_same(fresh.state_dict(), saved)
    _assert_same(fresh.defaults, defaults)
    assert "differentiable" not in fresh.param_groups[0]


def test_deepcopy_keeps_defaults_and_groups_unchanged() -> None:
    model = _model()
    opt = SMMF(model.parameters(), fused=False, sign_bits=8)
    _train(model, opt, 1)
    clone = copy.deepcopy(opt)
    _assert_same(clone.defaults, opt.defaults)
    _assert_same(clone.state_dict(), opt.state_dict())


def test_unpickled_group_missing_an_own_key_gets_its_default() -> None:
    opt = SMMF([nn.Parameter(torch.zeros(3, 4))], fused=False, weight_decay_mode="adam")
    state = copy.deepcopy(opt.__getstate__())
    del state["param_groups"][0]["weight_decay_mode"]
    restored = SMMF.__new__(SMMF)
    restored.__setstate__(state)
    assert restored.param_groups[0]["weight_decay_mode"] == "adam"
    assert set(restored.defaults) == set(opt.defaults)


# ---------------------------------------------------------------- test_load_nontensor_step


@pytest.mark.parametrize("sign_bits", [1, 8])
def test_float_step_loads_as_float32_tensor_and_continues_exactly(sign_bits: int) -> None:
    model, reference = _model(), _model()
    ref_opt = SMMF(reference.parameters(), fused=False, sign_bits=sign_bits)
    _train(reference, ref_opt, 5)

    opt = SMMF(model.parameters(), fused=False, sign_bits=sign_bits)
    _train(model, opt, 3)
    saved = opt.state_dict()
    for state in saved["state"].values():
        state["step"] = state["step"].item()  # the pre-1.12 torch format
    fresh = SMMF(model.parameters(), fused=False, sign_bits=sign_bits)
    fresh.load_state_dict(saved)
    for p in model.parameters():
        step = fresh.state[p]["step"]
        assert isinstance(step, torch.Tensor) and step.dtype == torch.float32 and step.dim() == 0
        assert step.device == p.device and step.item() == 3.0
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # replay the data the reference saw, then two more steps
        torch.randn(16, 7, generator=gen)
    for _ in range(2):
        x = torch.randn(16, 7, generator=gen)
        fresh.zero_grad()
        model(x).square().mean().backward()
        fresh.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


# ---------------------------------------------------------------- test_errors


def test_multi_element_tensor_lr_uses_torch_wording() -> None:
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="Tensor lr must be 1-element") as info:
        SMMF([p], lr=torch.tensor([1e-3, 1e-3]))
    assert "lr" in str(info.value).split(":")[0]
    opt = SMMF([p])
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lr": torch.ones(3)})


# torch.testing._internal imports expecttest and, on import, freezes torch.backends flags and patches
# TorchScript: run it in a child process so this test session is unaffected.
_GENERIC_ERRORS = textwrap.dedent(
    """
    import re, sys, warnings
    try:
        from torch.testing._internal.common_optimizers import OptimizerErrorEnum, get_error_inputs_for_all_optims
    except ImportError as exc:
        print(exc); sys.exit(77)
    import torch
    from smmf import SMMF
    failures = []
    for case in get_error_inputs_for_all_optims("cpu", torch.float32):
        inp = case.optimizer_error_input
        if case.error_on != OptimizerErrorEnum.CONSTRUCTION_ERROR:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                SMMF(inp.params, **inp.kwargs)
                error = None
            except Exception as exc:
                error = exc
        if issubclass(case.error_type, Warning):
            ok = any(re.search(case.error_regex, str(w.message)) for w in caught)
        else:
            ok = isinstance(error, case.error_type) and re.search(case.error_regex, str(error)) is not None
        if not ok:
            failures.append(f"{inp.desc}: got {error!r}")
    print("\\n".join(failures))
    sys.exit(1 if failures else 0)
    """
)


def test_torch_generic_error_inputs() -> None:
    """torch's own ``get_error_inputs_for_all_optims`` cases, as its ``test_errors`` runs them."""
    run = subprocess.run(
        [sys.executable, "-c", _GENERIC_ERRORS], capture_output=True, text=True, check=False, timeout=120
    )
    if run.returncode == 77:
        pytest.skip(f"torch.testing._internal.common_optimizers unavailable: {run.stdout.strip()}")
    assert run.returncode == 0, run.stdout + run.stderr
