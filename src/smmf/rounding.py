"""Stochastic rounding of float32 results to bfloat16, with counter-based random bits.

An update smaller than half a bf16 ulp of its parameter is lost to round-to-nearest every step, so
bf16-only weights stop learning; rounding up with probability equal to the discarded fraction keeps
the expected value exact (E[SR(x)] = x). The random bits are a hash of (per-parameter seed, step,
element index), so a run is reproducible and a resumed run continues bitwise, with no generator
state to save. The hash uses 31-bit values in int64 arithmetic (products stay below 2^58), written
the same way here and in the Triton kernels so that every backend draws the same bits.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MASK31", "MIX", "random_bits", "element_index", "stochastic_round_bf16", "to_param_dtype"]

MASK31 = 0x7FFFFFFF
MIX = 0x45D9F3B  # a well-mixing odd multiplier below 2^27


def _mix(x: Tensor) -> Tensor:
    x = x & MASK31
    x = ((x ^ (x >> 16)) * MIX) & MASK31
    x = ((x ^ (x >> 16)) * MIX) & MASK31
    return x ^ (x >> 16)


def random_bits(seed: Tensor, step: Tensor, index: Tensor) -> Tensor:
    """31 random bits (int64) per element ``index`` for a parameter's ``seed`` at ``step``."""
    return _mix(index ^ _mix(seed ^ _mix(step)))


def element_index(rows: int, cols: int, row0: int, device: torch.device) -> Tensor:
    """(rows, cols) int64 flat indices of a row block starting at row ``row0`` of an (n, cols) view."""
    r = torch.arange(rows, device=device, dtype=torch.int64) + row0
    return r[:, None] * cols + torch.arange(cols, device=device, dtype=torch.int64)


def stochastic_round_bf16(x: Tensor, bits: Tensor) -> Tensor:
    """float32 ``x`` to bfloat16, rounding away from zero with probability (dropped 16 bits) / 2^16,
    decided by the low 16 bits of ``bits``; NaN stays NaN, inf stays inf."""
    raw = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    kept = (raw + (bits & 0xFFFF)) & 0xFFFF0000
    signed = torch.where(kept >= 2**31, kept - 2**32, kept).to(torch.int32)
    return torch.where(torch.isnan(x), x, signed.view(torch.float32)).to(torch.bfloat16)


def to_param_dtype(x: Tensor, dtype: torch.dtype, seed: Tensor | None, step: Tensor, index: Tensor) -> Tensor:
    """The float32 update result in the parameter's dtype: stochastically rounded for bf16 parameters
    when ``seed`` is given, rounded to nearest otherwise."""
    if seed is None or dtype != torch.bfloat16:
        return x.to(dtype)
    return stochastic_round_bf16(x.to(torch.float32), random_bits(seed, step, index))
