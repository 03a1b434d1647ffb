"""Checks of SMMF's hyperparameters, shared by the optimizer (construction, ``add_param_group``) and
the state-dict check (a loaded group), so that both refuse the same values with the same words."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import compilers, functional

__all__ = ["validate_group"]

_WEIGHT_DECAY_MODES = ("adamw", "adam")


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite int or float (not a bool) in [low, high]."""
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    ):
        return
    bounds = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
    raise ValueError(f"Invalid {name}: {value!r} (expected a finite number {bounds})")


def validate_group(group: dict[str, Any]) -> None:
    """Raise ValueError naming the argument for any hyperparameter of the wrong type or outside its
    domain (inf and NaN included). A tensor lr on the CPU is checked for shape, dtype and value; on
    another device (CUDA) for shape and dtype only, since reading its value would synchronize."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid lr: Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
        if lr.is_complex() or lr.dtype == torch.bool:
            raise ValueError(f"Invalid lr: Tensor lr must be real, got dtype {lr.dtype}")
        if lr.device.type == "cpu" and not (math.isfinite(lr.item()) and lr.item() >= 0):
            raise ValueError(f"Invalid lr: {lr.item()} (expected a finite number >= 0.0)")
    else:
        _check_range("lr", lr, 0.0, math.inf)
    _check_range("eps", group["eps"], 0.0, math.inf)
    _check_range("weight_decay", group["weight_decay"], 0.0, math.inf)
    _check_range("decay_rate", group["decay_rate"], -1.0, 0.0)
    beta, growth = group["beta"], group["growth_rate"]
    if beta is not None:
        _check_range("beta", beta, 0.0, 1.0)
        if growth is None:
            raise ValueError("Invalid growth_rate: None (growth_rate is required when beta is set)")
    if growth is not None:
        _check_range("growth_rate", growth, 0.0, 1.0)
    if group["weight_decay_mode"] not in _WEIGHT_DECAY_MODES:
        raise ValueError(
            f"Invalid weight_decay_mode: {group['weight_decay_mode']!r} (expected one of {_WEIGHT_DECAY_MODES})"
        )
    sign_bits = group["sign_bits"]
    if not isinstance(sign_bits, int) or isinstance(sign_bits, bool) or sign_bits not in (1, 8):
        raise ValueError(f"Invalid sign_bits: {sign_bits!r} (expected the int 1 or 8)")
    for flag in ("maximize", "vector_reshape", "stochastic_rounding"):
        if not isinstance(group[flag], bool):
            raise ValueError(f"Invalid {flag}: {group[flag]!r} (expected a bool)")
    block_size = group["block_size"]
    if block_size is not None and (not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 8):
        raise ValueError(f"Invalid block_size: {block_size!r} (expected None or an int >= 8)")
    if group["fused"] is not None and not isinstance(group["fused"], bool):
        raise ValueError(f"Invalid fused: {group['fused']!r} (expected None, True or False)")
    backend = group["backend"]
    if backend not in functional.BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r} (expected one of {functional.BACKENDS})")
    if group["fused"] is False and backend not in ("auto", "eager"):
        raise ValueError(f"Invalid backend: {backend!r} with fused=False (fused=False means backend='eager')")
    if backend == "triton" and not compilers.triton_installed():
        raise ValueError("Invalid backend: 'triton' needs the triton package (pip install triton)")
