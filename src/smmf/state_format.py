"""SMMF's per-parameter state: what it holds, how it is created, and how older formats are read.

A factorized tensor viewed as (n, m) keeps ``row_v`` (n) and ``col_v`` (m), and with a first moment
``row_m``, ``col_m`` and ``sign``: 1-bit signs packed as uint8, ``n * ceil(m/8)`` bytes in the layout of
:mod:`smmf.signpack`, or 8-bit signs as one bool per element. A 1-D tensor with vector_reshape=False
keeps dense ``exp_avg_sq`` (and ``exp_avg``). Every state has float32 counters: ``step``, the steps
taken, and ``skipped``, the steps skipped because the gradient held a non-finite element (or one
whose square overflows), which leave the parameter and the rest of its state unchanged. A bf16
parameter stepped with stochastic rounding also keeps ``seed``, an int64 keying its random bits. Factors are float64
for float64 parameters and float32 for all others. Each param group records the format of its
states as ``state_format``: format 1 (before the Triton backend; a group saved without the key)
packed widths m % 8 != 0 flat across rows, and is converted before the next step. The update rule,
in :mod:`smmf.functional`, reads only what this module defines.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import rounding, sharding
from .matricization import is_factored, square_matricize
from .signpack import from_flat_layout, pack_signs, unpack_signs

__all__ = [
    "STATE_FORMAT", "factor_dtype", "sign_dtype", "sign_as_bytes", "init_state", "ensure_momentum",
    "ensure_skipped", "ensure_seed", "upgrade",
]  # fmt: skip

STATE_FORMAT = 2


def factor_dtype(param: Tensor) -> torch.dtype:
    """float64 factors for float64 parameters, float32 for everything else (bf16/fp16 math runs in fp32)."""
    return torch.float64 if param.dtype in (torch.float64, torch.complex128) else torch.float32


def sign_dtype(sign_bits: int) -> torch.dtype:
    """uint8 for packed 1-bit signs, bool for one 8-bit sign per element."""
    return torch.uint8 if sign_bits == 1 else torch.bool


def sign_as_bytes(sign: Tensor | None) -> tuple[Tensor | None, bool]:
    """The sign state as the kernels take it, uint8, and whether it holds packed bits: 8-bit (bool)
    signs are viewed as their 0/1 bytes (inductor's bool loads and stores are slow, and some versions
    cannot lower a bool dtype view inside a graph)."""
    if sign is None or sign.dtype == torch.uint8:
        return sign, True
    return sign.view(torch.uint8), False


def init_state(p: Tensor, vector_reshape: bool, sign_bits: int) -> dict[str, Any]:
    """A new state for ``p`` (the real view of a complex parameter): step and second moment."""
    fd = factor_dtype(p)
    device = sharding.local(p).device
    state: dict[str, Any] = {
        "step": torch.zeros((), dtype=torch.float32, device=device),
        "skipped": torch.zeros((), dtype=torch.float32, device=device),
    }
    if is_factored(p.shape, vector_reshape):
        lengths = sharding.state_lengths(p, sign_bits)
        state["row_v"] = sharding.zeros_like_state(p, lengths["row_v"], fd)
        state["col_v"] = sharding.zeros_like_state(p, lengths["col_v"], fd)
    else:
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=fd)
    return state


def ensure_skipped(p: Tensor, state: dict[str, Any]) -> bool:
    """Give a state the skipped-step counter as the kernels keep it, a float32 0-d tensor on the
    parameter's device: added where it was saved before it existed, converted where a checkpoint holds
    another number (the C++ kernel advances it through its address). Returns whether it changed."""
    skipped = state.get("skipped", 0.0)
    device = sharding.local(p).device
    if isinstance(skipped, Tensor) and (skipped.dtype, skipped.dim(), skipped.device) == (torch.float32, 0, device):
        return False
    state["skipped"] = torch.as_tensor(skipped, dtype=torch.float32, device=device).reshape(())
    return True


def ensure_seed(p: Tensor, state: dict[str, Any], index: int) -> bool:
    """Give a bf16 parameter's state the seed of its stochastic rounding (a 0-d int64 tensor): derived
    from torch's initial seed and the parameter's index, so runs are reproducible and the global random
    stream is not consumed. Returns whether it was added."""
    if "seed" in state or p.dtype != torch.bfloat16:
        return False
    value = (torch.initial_seed() * 1_000_003 + index * 7_919) & rounding.MASK31
    state["seed"] = torch.tensor(value, dtype=torch.int64, device=sharding.local(p).device)
    return True


def ensure_momentum(p: Tensor, state: dict[str, Any], beta: float | None, sign_bits: int) -> bool:
    """Create or convert the first-moment state to match the group (beta or sign_bits may have been
    changed since the state was made). Returns whether any state tensor was created or replaced."""
    if beta is None:
        return False
    if "row_v" not in state:
        if "exp_avg" in state:
            return False
        state["exp_avg"] = torch.zeros_like(p, dtype=factor_dtype(p))
        return True
    wanted = sign_dtype(sign_bits)
    if "sign" not in state:
        lengths = sharding.state_lengths(p, sign_bits)
        state["row_m"] = sharding.zeros_like_state(p, lengths["row_m"], factor_dtype(p))
        state["col_m"] = sharding.zeros_like_state(p, lengths["col_m"], factor_dtype(p))
        state["sign"] = sharding.zeros_like_state(p, lengths["sign"], wanted)
        return True
    sign = state["sign"]
    if sign.dtype == wanted:
        return False
    if sharding.is_dtensor(sign):
        raise ValueError("SMMF cannot change sign_bits of a sharded (DTensor) parameter's existing state")
    n, m = square_matricize(p.numel())
    state["sign"] = pack_signs(sign.view(n, m)) if wanted == torch.uint8 else unpack_signs(sign, n, m).view(-1)
    return True


def upgrade(p: Tensor, state: dict[str, Any], state_format: int) -> bool:
    """Bring a state of an older ``state_format`` to the current one: format-1 packed signs are
    repacked (only widths m % 8 != 0 differ; a sharded parameter's shard by shard). Returns whether a
    state tensor was replaced."""
    sign = state.get("sign")
    if state_format >= STATE_FORMAT or sign is None or sign.dtype != torch.uint8:
        return False
    n, m = square_matricize(sharding.local(p).numel())
    converted = from_flat_layout(sharding.local(sign), n, m)
    if sharding.is_dtensor(sign):
        new = sharding.zeros_like_state(p, sharding.state_lengths(p, 1)["sign"], torch.uint8)
        sharding.local(new)[: converted.numel()].copy_(converted)
        state["sign"] = new
    else:
        state["sign"] = converted
    return True
