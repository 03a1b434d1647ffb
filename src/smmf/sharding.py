"""DTensor awareness, so SMMF runs on FSDP2 (``fully_shard``) and tensor-parallel parameters.

Each rank factorizes the local shard it holds: the square-matricization is per shard, not of the
whole tensor (see docs/distributed.md). So that ``torch.distributed.checkpoint`` can save and load the
state, every state vector of a sharded parameter is itself a DTensor: a 1-D tensor sharded on dim 0
over the same mesh dimensions as the parameter, whose local piece is padded to the longest that any
rank needs, so all pieces are the same size even when the parameter's shards are not (uneven shards).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, TypeGuard

import torch
from torch import Tensor

from .matricization import square_matricize
from .signpack import packed_numel

__all__ = ["is_dtensor", "local", "local_grad", "factored_lengths", "state_lengths", "zeros_like_state"]

# The public DTensor module (torch>=2.5; smmf supports torch>=2.13). Only a torch built without distributed
# support may lack it: there no parameter can be a DTensor. Anywhere else a failed import is an error, not a
# reason to treat FSDP2 parameters as plain tensors.
if torch.distributed.is_available():
    try:
        from torch.distributed.tensor import DTensor, Replicate, Shard
    except ImportError as e:
        raise ImportError(
            f"smmf needs torch>=2.13 (torch.distributed.tensor); this is torch {torch.__version__}"
        ) from e
else:  # pragma: no cover - builds without distributed
    DTensor = None  # type: ignore[assignment,misc]


def is_dtensor(t: object) -> TypeGuard[DTensor]:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The tensor this rank holds (the DTensor's local shard; under no_grad an alias, so in-place works)."""
    return t.to_local() if is_dtensor(t) else t


def local_grad(param: Tensor, grad: Tensor) -> Tensor:
    """The gradient shard that matches the parameter's local shard (redistributing partial/other layouts)."""
    if not is_dtensor(grad):
        return grad
    if is_dtensor(param) and grad.placements != param.placements:
        grad = grad.redistribute(param.device_mesh, param.placements)
    return grad.to_local()


def factored_lengths(numel: int, sign_bits: int) -> dict[str, int]:
    """Length of each factorized state vector for a tensor of ``numel`` elements."""
    n, m = square_matricize(numel)
    sign = packed_numel(n, m) if sign_bits == 1 else numel
    return {"row_v": n, "row_m": n, "col_v": m, "col_m": m, "sign": sign}


@functools.lru_cache(maxsize=1024)
def _local_shapes(
    shape: tuple[int, ...], mesh_shape: tuple[int, ...], placements: tuple[Any, ...]
) -> frozenset[tuple[int, ...]]:
    """Every local shard shape that some rank holds (torch.chunk semantics, as DTensor shards)."""
    shapes = {shape}
    for size, placement in zip(mesh_shape, placements, strict=True):
        if isinstance(placement, Shard):
            dim = placement.dim
            shapes = {
                (*s[:dim], Shard.local_shard_size_and_offset(s[dim], size, r)[0], *s[dim + 1 :])
                for s in shapes
                for r in range(size)
            }
    return frozenset(shapes)


def state_lengths(param: Tensor, sign_bits: int) -> dict[str, int]:
    """Per-rank length of each state vector: this tensor's own, or for a DTensor the longest over ranks."""
    if not is_dtensor(param):
        return factored_lengths(param.numel(), sign_bits)
    shapes = _local_shapes(tuple(param.shape), tuple(param.device_mesh.shape), tuple(param.placements))
    per_shard = [factored_lengths(math.prod(s), sign_bits) for s in shapes]
    return {key: max(lengths[key] for lengths in per_shard) for key in per_shard[0]}


def zeros_like_state(param: Tensor, length: int, dtype: torch.dtype) -> Tensor:
    """A zero state vector: plain for plain parameters, a dim-0-sharded DTensor for sharded ones."""
    device = local(param).device
    buffer = torch.zeros(length, dtype=dtype, device=device)
    if not is_dtensor(param):
        return buffer
    placements: Sequence[Any] = [Shard(0) if isinstance(p, Shard) else Replicate() for p in param.placements]
    return DTensor.from_local(buffer, param.device_mesh, placements, run_check=False)
