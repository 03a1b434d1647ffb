"""Memory accounting: bytes an optimizer keeps between steps, measured or computed from shapes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .matricization import is_factored
from .sharding import factored_lengths

__all__ = [
    "optimizer_state_bytes",
    "smmf_state_bytes",
    "smmf_tensor_bytes",
    "SMMF_STATE_KINDS",
    "adam_state_bytes",
    "adafactor_state_bytes",
    "sm3_state_bytes",
    "came_state_bytes",
    "state_tensor_bytes",
    "allocator_bytes",
]


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


# What each SMMF state tensor is, for SMMF.state_bytes's breakdown.
SMMF_STATE_KINDS: dict[str, str] = {
    "sign": "sign",
    "row_m": "factors",
    "col_m": "factors",
    "row_v": "factors",
    "col_v": "factors",
    "exp_avg": "dense",
    "exp_avg_sq": "dense",
    "step": "step",
    "skipped": "step",
}


def smmf_tensor_bytes(
    numel: int,
    *,
    factored: bool = True,
    sign_bits: int = 1,
    momentum: bool = True,
    factor_bytes: int = 4,
    include_step: bool = True,
    lengths: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Bytes of each state tensor SMMF keeps for one tensor of ``numel`` elements, keyed as in its state.

    The one formula for SMMF's state: :func:`smmf_state_bytes`, :func:`state_tensor_bytes` and
    ``SMMF.state_bytes()`` all read it. A factorized tensor viewed as (n, m) keeps (n + m) factor
    entries per moment (``row_v``, ``col_v``; with ``momentum`` also ``row_m``, ``col_m``) and a sign
    of n * ceil(m/8) bytes (1-bit, rows padded to whole bytes) or numel bytes (8-bit); a dense one
    (1-D with vector_reshape=False) keeps full moments. ``include_step`` adds the two 4-byte counters.
    ``lengths``: the state vectors' lengths where they are not this numel's own (a sharded parameter's
    vectors are padded to its longest shard's, :func:`smmf.sharding.state_lengths`).
    """
    sizes = {"step": 4, "skipped": 4} if include_step else {}
    if not factored:
        sizes["exp_avg_sq"] = numel * factor_bytes
        if momentum:
            sizes["exp_avg"] = numel * factor_bytes
        return sizes
    lengths = factored_lengths(numel, sign_bits) if lengths is None else lengths
    for key in ("row_v", "col_v", *(("row_m", "col_m") if momentum else ())):
        sizes[key] = lengths[key] * factor_bytes
    if momentum:
        sizes["sign"] = lengths["sign"]  # uint8 bytes of packed bits, or one bool per element
    return sizes


def smmf_state_bytes(
    shapes: Iterable[Sequence[int]],
    *,
    sign_bits: int = 1,
    vector_reshape: bool = True,
    beta: float | None = 0.9,
    factor_bytes: int = 4,
    include_step: bool = True,
) -> int:
    """SMMF state for parameters of these shapes, without allocating them (:func:`smmf_tensor_bytes`
    summed: 1-bit or 8-bit signs and rank-1 factors per factorized tensor, full moments for dense 1-D
    tensors with vector_reshape=False, and the two 4-byte counters unless ``include_step`` is False)."""
    return sum(
        sum(
            smmf_tensor_bytes(
                math.prod(shape),
                factored=is_factored(shape, vector_reshape),
                sign_bits=sign_bits,
                momentum=beta is not None,
                factor_bytes=factor_bytes,
                include_step=include_step,
            ).values()
        )
        for shape in shapes
    )


def adam_state_bytes(shapes: Iterable[Sequence[int]], *, state_bytes: int = 4, include_step: bool = True) -> int:
    """Adam/AdamW state (exp_avg and exp_avg_sq) for parameters of these shapes."""
    return sum(2 * math.prod(s) * state_bytes + (4 if include_step else 0) for s in shapes)


def state_tensor_bytes(
    optimizer: str, shape: Sequence[int], *, state_bytes: int = 4, include_step: bool = True, beta1: bool = False
) -> list[int]:
    """Bytes of each state tensor ``optimizer`` keeps for one parameter of ``shape``, as it allocates them.

    ``optimizer`` is a registry name (adam, adamw, adafactor, sm3, came, smmf, smmf8). Step counters are
    included when they are tensors (Adam, Adafactor, SMMF) and ``include_step`` is set; SM3 and CAME
    count steps in a Python int (CAME's 4-byte RMS scalar is always counted). ``beta1`` gives Adafactor a
    full first moment (the original algorithm with momentum; torch's Adafactor has none). Per-tensor sizes
    matter because a CUDA allocator rounds each one up (see :func:`allocator_bytes`).
    """
    numel = math.prod(shape)
    step = [4] if include_step else []
    if optimizer in ("adam", "adamw"):
        return step + [numel * state_bytes] * 2
    if optimizer == "adafactor":
        second = (
            [numel // shape[-1] * state_bytes if shape[-1] else 0, numel // shape[-2] * state_bytes if shape[-2] else 0]
            if len(shape) >= 2
            else [numel * state_bytes]
        )
        return step + second + ([numel * state_bytes] if beta1 else [])
    if optimizer == "sm3":
        accumulators = [d * state_bytes for d in shape] if len(shape) else [state_bytes]
        return [numel * state_bytes, *accumulators]
    if optimizer == "came":
        rms = [4]  # a 0-d float32 tensor after the first step
        if len(shape) >= 2:
            row, col = numel // shape[-1] if shape[-1] else 0, numel // shape[-2] if shape[-2] else 0
            return rms + [numel * state_bytes] + [row * state_bytes, col * state_bytes] * 2
        return rms + [numel * state_bytes] * 2
    if optimizer in ("smmf", "smmf8"):
        sign_bits = 1 if optimizer == "smmf" else 8
        sizes = smmf_tensor_bytes(
            numel, factored=is_factored(shape), sign_bits=sign_bits, factor_bytes=state_bytes, include_step=include_step
        )
        return list(sizes.values())
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: adam, adamw, adafactor, sm3, came, smmf, smmf8")


def allocator_bytes(sizes: Iterable[int], granularity: int = 512) -> int:
    """Bytes a caching allocator hands out for tensors of these sizes: each rounded up to ``granularity``.

    torch.cuda.memory_allocated() counts these rounded blocks (512 B), which is how memory measured on
    a GPU, as in the SMMF paper, exceeds the exact tensor bytes for models with many small tensors.
    """
    return sum(-(-size // granularity) * granularity for size in sizes if size)


def adafactor_state_bytes(
    shapes: Iterable[Sequence[int]], *, state_bytes: int = 4, include_step: bool = True, beta1: bool = False
) -> int:
    """torch.optim.Adafactor state: a row and a column factor over the last two dims, else a full moment.

    A tensor of rank >= 2 keeps numel/shape[-1] + numel/shape[-2] second-moment entries (so a 1x1 conv
    kernel keeps 2 x numel); lower ranks keep numel. ``beta1=True`` adds a full first moment, as in the
    original Adafactor with momentum (e.g. transformers' Adafactor), which torch's version lacks.
    """
    return sum(
        sum(state_tensor_bytes("adafactor", s, state_bytes=state_bytes, include_step=include_step, beta1=beta1))
        for s in shapes
    )


def sm3_state_bytes(shapes: Iterable[Sequence[int]], *, state_bytes: int = 4) -> int:
    """pytorch_optimizer.SM3 state: one accumulator per dimension (sum of the dims) plus a full momentum
    buffer, which that implementation allocates even with momentum=0; a 0-d tensor keeps 1 + 1 entries."""
    return sum(sum(state_tensor_bytes("sm3", s, state_bytes=state_bytes)) for s in shapes)


def came_state_bytes(shapes: Iterable[Sequence[int]], *, state_bytes: int = 4) -> int:
    """pytorch_optimizer.CAME state: a full first moment plus, for rank >= 2, row and column factors of
    both the second moment and the confidence (residual) moment over the last two dims; else a full
    second moment, and a 4-byte RMS scalar. Its step counter is a Python int in the param group."""
    return sum(sum(state_tensor_bytes("came", s, state_bytes=state_bytes)) for s in shapes)
