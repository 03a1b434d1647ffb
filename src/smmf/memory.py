"""Memory accounting: bytes an optimizer keeps between steps, measured or computed from shapes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .matricization import is_factored, square_matricize
from .signpack import packed_numel

__all__ = ["optimizer_state_bytes", "smmf_state_bytes", "adam_state_bytes"]


def _local(t: Tensor) -> Tensor:
    """The tensor this process holds: a DTensor's local shard, else the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _tensors(value: Any) -> Iterable[Tensor]:
    if isinstance(value, Tensor):
        yield _local(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state``, each counted once, for any torch optimizer.

    Tensors that share memory (views of one buffer) are counted once, by storage; for DTensor state
    only this rank's shard counts.
    """
    seen: dict[tuple[str, int], int] = {}
    for t in _tensors(list(optimizer.state.values())):
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr()) if storage.data_ptr() else (str(t.device), id(t))
        nbytes = storage.nbytes() if storage.data_ptr() else t.numel() * t.element_size()
        seen[key] = max(seen.get(key, 0), nbytes)
    return sum(seen.values())


def smmf_state_bytes(
    shapes: Iterable[Sequence[int]],
    *,
    sign_bits: int = 1,
    vector_reshape: bool = True,
    beta: float | None = 0.9,
    factor_bytes: int = 4,
    include_step: bool = True,
) -> int:
    """SMMF state for parameters of these shapes, without allocating them.

    Per factorized tensor of N elements viewed as (n, m): N/8 (1-bit) or N (8-bit) bytes of sign and
    (n + m) factor entries per moment; dense 1-D tensors (vector_reshape=False) keep full moments.
    """
    moments = 1 if beta is None else 2
    total = 0
    for shape in shapes:
        numel = math.prod(shape)
        if include_step:
            total += 4
        if is_factored(shape, vector_reshape):
            n, m = square_matricize(numel)
            total += moments * (n + m) * factor_bytes
            if beta is not None:
                total += packed_numel(numel) if sign_bits == 1 else numel
        else:
            total += moments * numel * factor_bytes
    return total


def adam_state_bytes(shapes: Iterable[Sequence[int]], *, state_bytes: int = 4, include_step: bool = True) -> int:
    """Adam/AdamW state (exp_avg and exp_avg_sq) for parameters of these shapes."""
    return sum(2 * math.prod(s) * state_bytes + (4 if include_step else 0) for s in shapes)
