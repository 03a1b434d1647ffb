"""Issue 12, the optimizer's side: SMMF's constructor, param groups and load_state_dict refuse bad values
and foreign state, each naming what is wrong, and a refused load changes nothing.

The command's side (untrusted files, damaged checkpoints, locked run folders, missing extras) is in
test_safety.py.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from smmf import SMMF

# ---------------------------------------------------------------- SMMF validation (item 4)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": math.inf}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": torch.tensor(math.nan)}, "lr"),
        ({"lr": torch.tensor(math.inf)}, "lr"),
        ({"lr": torch.tensor(-1.0)}, "lr"),
        ({"lr": torch.tensor(1e-3, dtype=torch.complex64)}, "lr"),
        ({"weight_decay": math.inf}, "weight_decay"),
        ({"eps": math.nan}, "eps"),
        ({"eps": math.inf}, "eps"),
        ({"beta": math.nan}, "beta"),
        ({"growth_rate": math.inf}, "growth_rate"),
        ({"decay_rate": math.nan}, "decay_rate"),
        ({"maximize": "yes"}, "maximize"),
        ({"maximize": 1}, "maximize"),
        ({"sign_bits": 8.0}, "sign_bits"),
        ({"sign_bits": True}, "sign_bits"),
        ({"fused": 1}, "fused"),
        ({"vector_reshape": 0}, "vector_reshape"),
        ({"block_size": math.inf}, "block_size"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, dict) else "-".join(f"{k}={v[k]!r}" for k in v),
)
def test_constructor_refuses_bad_values_naming_them(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        SMMF([nn.Parameter(torch.zeros(3))], **kwargs)


def test_added_group_values_are_checked_too() -> None:
    opt = SMMF([nn.Parameter(torch.zeros(3))])
    for bad in ({"lr": math.inf}, {"weight_decay": math.nan}, {"maximize": "no"}, {"sign_bits": 8.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], **bad})


def test_good_values_still_pass() -> None:
    p = nn.Parameter(torch.zeros(4, 4))
    SMMF([p], lr=torch.tensor(1e-3), sign_bits=8, maximize=True, fused=False, block_size=64, weight_decay=0.1)
    SMMF([p], lr=0, beta=None, growth_rate=None, eps=0.0, decay_rate=-1.0)


# ---------------------------------------------------------------- load_state_dict structure (item 4)


def _trained(seed: int = 0, **kwargs: Any) -> tuple[nn.Module, SMMF]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, 12), nn.Tanh(), nn.Linear(12, 3))
    opt = SMMF(model.parameters(), fused=False, **kwargs)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(5, 7)).square().mean().backward()
        opt.step()
    return model, opt


def _refused(opt: SMMF, state_dict: dict[str, Any], *needles: str) -> str:
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(state_dict)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    after = opt.state_dict()  # a refused load changes nothing
    assert after["param_groups"] == before["param_groups"]
    for pid, state in before["state"].items():
        for key, value in state.items():
            other = after["state"][pid][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    return message


@pytest.mark.parametrize(
    "kwargs", [{}, {"sign_bits": 8}, {"vector_reshape": False}, {"beta": None, "growth_rate": None}]
)
def test_valid_state_dicts_load(kwargs: dict[str, Any]) -> None:
    model, opt = _trained(**kwargs)
    fresh = SMMF(model.parameters(), fused=False, **kwargs)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    model64 = nn.Linear(5, 3).double()
    opt64 = SMMF(model64.parameters(), fused=False, **kwargs)
    model64(torch.randn(2, 5, dtype=torch.float64)).sum().backward()
    opt64.step()
    SMMF(model64.parameters(), fused=False, **kwargs).load_state_dict(opt64.state_dict())


def test_complex_parameter_state_loads() -> None:
    p = nn.Parameter(torch.randn(6, 5, dtype=torch.complex64))
    opt = SMMF([p], fused=False)
    p.grad = torch.randn_like(p)
    opt.step()
    SMMF([p], fused=False).load_state_dict(opt.state_dict())


def test_torch_adam_state_dict_is_refused_by_name() -> None:
    model, opt = _trained()
    adam = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 7)).sum().backward()
    adam.step()
    _refused(opt, adam.state_dict(), "another optimizer, torch.optim.Adam/AdamW", "'betas'")
    # Adam's moments under SMMF's param groups: named by parameter index and key
    mixed = copy.deepcopy(opt.state_dict())
    mixed["state"][0] = copy.deepcopy(adam.state_dict()["state"][0])
    _refused(opt, mixed, "parameter 0 (group 0), state key 'exp_avg'", "full shape", "another optimizer")


@pytest.mark.parametrize(
    "other", [torch.optim.SGD, torch.optim.Adafactor, torch.optim.RMSprop], ids=lambda c: c.__name__
)
def test_other_torch_optimizers_are_refused_by_name(other: type) -> None:
    model, opt = _trained()
    foreign = other(model.parameters(), lr=0.1)
    model(torch.randn(5, 7)).sum().backward()
    foreign.step()
    _refused(opt, foreign.state_dict(), f"torch.optim.{other.__name__}")


def _edit(opt: SMMF, fn: Any) -> dict[str, Any]:
    sd = copy.deepcopy(opt.state_dict())
    fn(sd)
    return sd


@pytest.mark.parametrize(
    "edit, needles",
    [
        (lambda sd: sd["state"][0].pop("row_v"), ("parameter 0", "'row_v'", "missing")),
        (lambda sd: sd["state"][2].pop("sign"), ("parameter 2", "'sign'", "missing")),
        (lambda sd: sd["state"][2].pop("step"), ("parameter 2", "'step'", "missing")),
        (lambda sd: sd["state"][0].update(sign=sd["state"][0]["sign"][:-1]), ("parameter 0", "'sign'", "length")),
        (lambda sd: sd["state"][0].update(col_v=torch.zeros(5)), ("parameter 0", "'col_v'", "length 7")),
        (
            lambda sd: sd["state"][1].update(row_m=sd["state"][1]["row_m"].double()),
            ("parameter 1", "'row_m'", "float32"),
        ),
        (lambda sd: sd["state"][1].update(sign=sd["state"][1]["sign"].float()), ("parameter 1", "'sign'", "uint8")),
        (lambda sd: sd["state"][3].update(step=math.nan), ("parameter 3", "'step'")),
        (lambda sd: sd["state"][3].update(row_v=torch.zeros(3, 1)), ("parameter 3", "'row_v'", "1-D")),
        (lambda sd: sd["state"][3].update(extra=torch.zeros(9)), ("parameter 3", "'extra'", "not an SMMF state")),
        (lambda sd: sd["state"].update({7: {}}), ("parameter id 7",)),
        (lambda sd: sd["state"].update({0: [1, 2]}), ("parameter 0", "must be a dict")),
        (lambda sd: sd["param_groups"][0].update(lr=math.inf), ("param group 0", "Invalid lr: inf")),
        (lambda sd: sd["param_groups"][0].update(sign_bits=8.0), ("param group 0", "sign_bits")),
        (lambda sd: sd["param_groups"][0]["params"].pop(), ("param group 0 holds 3 parameters",)),
        (lambda sd: sd.pop("param_groups"), ("'param_groups'",)),
    ],
)
def test_malformed_state_dict_names_parameter_and_key(edit: Any, needles: tuple[str, ...]) -> None:
    _, opt = _trained()
    _refused(opt, _edit(opt, edit), *needles)


def test_state_for_other_shapes_is_refused_before_step() -> None:
    _, opt = _trained()
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 3))
    target = SMMF(other.parameters(), fused=False)
    with pytest.raises(
        ValueError,
        match=r"parameter 0 \(group 0\), state key 'row_v': expected a 1-D torch.float32 tensor of length 13",
    ):
        target.load_state_dict(opt.state_dict())


def _as_format_1(sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` as an older release saved it: no ``state_format`` in the groups, 1-bit signs packed flat
    (ceil(numel/8) bytes), a number ``step`` (older torch), and none of the newer group keys."""
    sd = copy.deepcopy(sd)
    for state in sd["state"].values():
        state["step"] = state["step"].item()
        numel = state["row_v"].numel() * state["col_v"].numel()
        state["sign"] = torch.zeros((numel + 7) // 8, dtype=torch.uint8)
    for group in sd["param_groups"]:
        for key in ("state_format", "block_size", "fused", "maximize", "backend"):
            group.pop(key, None)
    return sd


def test_old_formats_still_load() -> None:
    model, opt = _trained()
    old = _as_format_1(opt.state_dict())
    assert old["state"][0]["sign"].numel() == 11  # (12, 7): 84 bits flat, not 12 rows of one byte
    SMMF(model.parameters(), fused=False).load_state_dict(old)


def test_flat_signs_are_refused_in_the_current_format_and_newer_formats_are_refused() -> None:
    _, opt = _trained()
    flat = _as_format_1(opt.state_dict())
    for group, own in zip(flat["param_groups"], opt.state_dict()["param_groups"], strict=True):
        group["state_format"] = own["state_format"]
    _refused(opt, flat, "parameter 0 (group 0), state key 'sign'", "length 12")
    newer = copy.deepcopy(opt.state_dict())
    newer["param_groups"][0]["state_format"] = 99
    _refused(opt, newer, "param group 0: state_format 99")
