"""The structure check behind ``SMMF.load_state_dict``: refuse a state dict that ``step()`` could not use.

A loaded state dict is checked before anything is changed: its param groups against the optimizer's
(count, sizes, hyperparameter types and ranges), and each parameter's state against the parameter and
its group (keys, shapes, dtypes). A state dict of another optimizer, such as torch's Adam with dense
``exp_avg`` moments, is refused with a message that names it. Every error is a ``ValueError`` naming
the parameter index and state key.

Valid SMMF state per parameter: ``step`` (a 0-d tensor, or a number in old checkpoints) and either the
factorized ``row_v``, ``col_v`` (plus ``row_m``, ``col_m``, ``sign`` with a first moment), 1-D with the
lengths of :func:`smmf.sharding.factored_lengths`, or, for 1-D tensors with ``vector_reshape=False``,
dense ``exp_avg_sq`` (and ``exp_avg``) of the parameter's shape. Factors are float64 for float64 and
complex128 parameters, float32 otherwise; signs are uint8 (1-bit, packed) or bool (8-bit). Other keys
may hold ints or single-element tensors (counters such as ``skipped``); moments holding NaN or inf are
refused; sharded (DTensor) state is checked for keys and
dtypes only, since its local lengths depend on the rank. A group saved without ``state_format`` (format
1) may hold 1-bit signs packed flat, ``ceil(numel/8)`` bytes, which loading converts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import sharding
from .matricization import is_factored
from .validation import validate_group

__all__ = ["check_state_dict"]

_FACTORS = ("row_v", "col_v", "row_m", "col_m")
_MOMENTUM = ("row_m", "col_m", "sign")
_DENSE = ("exp_avg", "exp_avg_sq")
_KNOWN = frozenset(("step", "skipped", "sign", *_FACTORS, *_DENSE))
# Param group keys that SMMF has always written (the reference's positional arguments).
_CORE_GROUP_KEYS = ("beta", "decay_rate", "growth_rate")
# (group or state keys that mark another optimizer, its name)
_FOREIGN = (
    (("betas", "amsgrad"), "torch.optim.Adam/AdamW"),
    (("betas",), "an Adam variant (torch.optim.Adam, AdamW, NAdam, RAdam, Adamax)"),
    (("momentum", "dampening"), "torch.optim.SGD"),
    (("beta2_decay",), "torch.optim.Adafactor"),
    (("alpha", "centered"), "torch.optim.RMSprop"),
    (("lr_decay",), "torch.optim.Adagrad"),
    (("rho",), "torch.optim.Adadelta"),
    (("max_exp_avg_sq",), "torch.optim.Adam/AdamW (amsgrad)"),
    (("momentum_buffer",), "torch.optim.SGD"),
    (("row_var", "col_var"), "torch.optim.Adafactor"),
    (("exp_avg_sq_row",), "transformers' Adafactor"),
    (("square_avg",), "torch.optim.RMSprop or Adadelta"),
)


def _foreign(keys: set[Any]) -> tuple[str, tuple[str, ...]] | None:
    """The optimizer whose signature keys all appear in ``keys``, and those keys, if any."""
    for signature, name in _FOREIGN:
        if all(k in keys for k in signature):
            return name, signature
    return None


def _refuse_foreign(name: str | None, keys: Sequence[str], where: str) -> None:
    raise ValueError(
        f"SMMF.load_state_dict: this state dict comes from another optimizer{', ' + name if name else ''} ({where} "
        f"{', '.join(map(repr, sorted(keys)))}); SMMF keeps factorized moments and cannot take "
        "over its state. Load only the model's weights and let SMMF start with fresh state."
    )


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:80]


def _check_groups(optimizer: torch.optim.Optimizer, groups: Any) -> list[dict[str, Any]]:
    """The saved groups merged over the optimizer's defaults (as loading makes them), each validated."""

    if not isinstance(groups, Sequence) or not all(isinstance(g, Mapping) and "params" in g for g in groups):
        raise ValueError("SMMF.load_state_dict: 'param_groups' must be a list of dicts, each with a 'params' list")
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"SMMF.load_state_dict: loaded state dict has {len(groups)} parameter groups, the optimizer "
            f"{len(optimizer.param_groups)}"
        )
    merged = []
    for gi, (saved, own) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        missing = [k for k in _CORE_GROUP_KEYS if k not in saved]
        if missing:
            found = _foreign(set(saved))
            if found is not None:
                _refuse_foreign(found[0], found[1], "param group keys")
            _refuse_foreign(None, missing, "its param groups lack")
        if len(saved["params"]) != len(own["params"]):
            raise ValueError(
                f"SMMF.load_state_dict: param group {gi} holds {len(saved['params'])} parameters, the "
                f"optimizer's {len(own['params'])}"
            )
        group = {**optimizer.defaults, **{k: v for k, v in saved.items() if k != "params"}}
        try:
            validate_group(group)
        except ValueError as exc:
            raise ValueError(f"SMMF.load_state_dict: param group {gi}: {exc}") from None
        group["state_format"] = _state_format(gi, saved)
        merged.append(group)
    return merged


def _state_format(gi: int, saved: Mapping[str, Any]) -> int:
    """The group's ``state_format`` (1 when absent: saved before the key existed), at most the current one."""
    from .state_format import STATE_FORMAT

    value = saved.get("state_format", 1)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= STATE_FORMAT:
        raise ValueError(
            f"SMMF.load_state_dict: param group {gi}: state_format {value!r} is not one this smmf reads "
            f"(1 to {STATE_FORMAT}; a newer release wrote it?)"
        )
    return value


def check_state_dict(optimizer: torch.optim.Optimizer, state_dict: Any) -> None:
    """Raise ValueError if ``state_dict`` is not a valid SMMF state dict for ``optimizer``'s parameters."""
    if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError(
            "SMMF.load_state_dict: expected a dict with 'state' and 'param_groups' (optimizer.state_dict())"
        )
    groups = _check_groups(optimizer, state_dict["param_groups"])
    state = state_dict["state"]
    if not isinstance(state, Mapping):
        raise ValueError(f"SMMF.load_state_dict: 'state' must be a dict, got {type(state).__name__}")
    index: dict[Any, tuple[int, Tensor, dict[str, Any], int]] = {}
    i = 0
    for gi, (saved, own, group) in enumerate(
        zip(state_dict["param_groups"], optimizer.param_groups, groups, strict=True)
    ):
        for saved_id, p in zip(saved["params"], own["params"], strict=True):
            index[saved_id] = (i, p, group, gi)
            i += 1
    for saved_id, entry in state.items():
        if saved_id not in index:
            raise ValueError(f"SMMF.load_state_dict: state for parameter id {saved_id!r}, which no param group lists")
        i, p, group, gi = index[saved_id]
        _check_param_state(f"SMMF.load_state_dict: parameter {i} (group {gi})", p, group, entry)


def _check_param_state(where: str, p: Tensor, group: dict[str, Any], entry: Any) -> None:
    """Keys, dtypes and lengths of one parameter's state against the parameter and its group."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: state must be a dict, got {_describe(entry)}")
    unknown = [k for k, v in entry.items() if k not in _KNOWN and isinstance(v, Tensor) and v.numel() > 1]
    found = _foreign(set(entry) - _KNOWN)
    if found is not None:
        _refuse_foreign(found[0], found[1], "state keys")
    if unknown:
        raise ValueError(f"{where}, state key {unknown[0]!r}: not an SMMF state ({_describe(entry[unknown[0]])})")
    if "step" not in entry:
        raise ValueError(f"{where}, state key 'step': missing")
    _check_step(where, entry["step"])
    q = torch.view_as_real(p) if torch.is_complex(p) and not sharding.is_dtensor(p) else p
    fd = torch.float64 if p.dtype in (torch.float64, torch.complex128) else torch.float32
    if is_factored(q.shape, group["vector_reshape"]):
        _check_factored(where, q, fd, group, entry)
    else:
        _check_dense(where, q, fd, group, entry)
    _check_finite(where, entry)


def _check_finite(where: str, entry: Mapping[str, Any]) -> None:
    """Moments that are already NaN or inf (saved by an optimizer without the non-finite rule) would
    freeze their tensor for good: refuse them, naming the key."""
    for key in (*_FACTORS, *_DENSE):
        value = entry.get(key)
        if (
            isinstance(value, Tensor)
            and value.is_floating_point()
            and not bool(torch.isfinite(sharding.local(value)).all())
        ):
            raise ValueError(
                f"{where}, state key {key!r}: holds non-finite values (the run that saved it took a step with "
                "a NaN or inf gradient); resume from an earlier checkpoint or drop this parameter's state"
            )


def _check_step(where: str, step: Any) -> None:
    if isinstance(step, Tensor):
        bad = step.numel() != 1 or step.is_complex() or step.dtype == torch.bool
        if not bad and step.device.type == "cpu":
            bad = not (math.isfinite(step.item()) and step.item() >= 0)
    else:
        bad = not isinstance(step, (int, float)) or isinstance(step, bool) or not (math.isfinite(step) and step >= 0)
    if bad:
        raise ValueError(f"{where}, state key 'step': expected a finite count >= 0, got {_describe(step)}")


def _check_vector(where: str, key: str, value: Any, dtypes: tuple[torch.dtype, ...], lengths: set[int] | None) -> None:
    """A 1-D tensor of one of ``dtypes``; of one of ``lengths`` unless None or the value is sharded."""
    ok = isinstance(value, Tensor) and value.dim() == 1 and value.dtype in dtypes
    if ok and lengths is not None and not sharding.is_dtensor(value):
        ok = value.numel() in lengths
    if not ok:
        kinds = " or ".join(str(d) for d in dtypes)
        size = "" if lengths is None else f" of length {' or '.join(map(str, sorted(lengths)))}"
        raise ValueError(f"{where}, state key {key!r}: expected a 1-D {kinds} tensor{size}, got {_describe(value)}")


def _check_factored(where: str, q: Tensor, fd: torch.dtype, group: dict[str, Any], entry: Mapping[str, Any]) -> None:
    dense = [k for k in _DENSE if k in entry]
    if dense:
        value = entry[dense[0]]
        adam = isinstance(value, Tensor) and tuple(value.shape) == tuple(q.shape)
        hint = (
            " (a dense moment of the parameter's full shape, as torch.optim.Adam keeps: this state dict "
            "comes from another optimizer)"
            if adam
            else ""
        )
        raise ValueError(
            f"{where}, state key {dense[0]!r}: SMMF keeps factorized state for this tensor{hint}, "
            f"got {_describe(value)}"
        )
    present = [k for k in _MOMENTUM if k in entry]
    needed = ["row_v", "col_v"] + (list(_MOMENTUM) if group["beta"] is not None or present else [])
    for key in needed:
        if key not in entry:
            raise ValueError(f"{where}, state key {key!r}: missing")
    sharded = sharding.is_dtensor(q)
    numel = q.numel()
    lengths = None if sharded else sharding.factored_lengths(numel, 1)
    for key in _FACTORS:
        if key in entry:
            _check_vector(where, key, entry[key], (fd,), None if lengths is None else {lengths[key]})
    if "sign" in entry:
        sign = entry["sign"]
        bits = 8 if isinstance(sign, Tensor) and sign.dtype == torch.bool else 1
        allowed = None if sharded else {sharding.factored_lengths(numel, bits)["sign"]}
        if allowed is not None and bits == 1 and group["state_format"] == 1:
            allowed.add((numel + 7) // 8)  # format 1 packed flat; smmf.state_format.upgrade converts it
        dtypes = (
            (sign.dtype,)
            if isinstance(sign, Tensor) and sign.dtype in (torch.uint8, torch.bool)
            else (torch.uint8, torch.bool)
        )
        _check_vector(where, "sign", sign, dtypes, allowed)


def _check_dense(where: str, q: Tensor, fd: torch.dtype, group: dict[str, Any], entry: Mapping[str, Any]) -> None:
    factored = [k for k in (*_FACTORS, "sign") if k in entry]
    if factored:
        raise ValueError(
            f"{where}, state key {factored[0]!r}: this tensor keeps dense moments (vector_reshape=False), "
            "not factorized ones"
        )
    if "exp_avg_sq" not in entry:
        raise ValueError(f"{where}, state key 'exp_avg_sq': missing")
    for key in _DENSE:
        value = entry.get(key)
        if value is None and key == "exp_avg":
            continue
        if not (isinstance(value, Tensor) and tuple(value.shape) == tuple(q.shape) and value.dtype == fd):
            raise ValueError(
                f"{where}, state key {key!r}: expected a {fd} tensor of shape {tuple(q.shape)}, got {_describe(value)}"
            )
