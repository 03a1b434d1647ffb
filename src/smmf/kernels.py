"""The step kernels: pure tensor functions that update one parameter and its SMMF state in place.

They hold every piece of arithmetic of a step, with no host synchronisation and no Python branch on
a tensor's value, so that ``torch.compile(fullgraph=True)`` can fuse a whole row block into a few
passes over memory. Hyperparameters arrive as a tensor (``hp``), never as Python floats, so a changing
learning rate or step count does not recompile. The optimizer class only slices blocks and calls these.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import rounding
from .signpack import pack_signs, unpack_bits

__all__ = [
    "Hyperparameters",
    "HP_LR",
    "HP_BETA",
    "HP_GROWTH",
    "HP_DECAY",
    "HP_EPS",
    "HP_WD_DECOUPLED",
    "HP_WD_COUPLED",
    "HP_SIGN",
    "HP_SIZE",
    "schedules",
    "step_allowed",
    "step_inputs",
    "count_steps",
    "factored_block_step",
    "factored_step",
    "factored_rows_step",
    "normalize_columns",
    "dense_step",
    "compiled",
    "mark_block",
]


class Hyperparameters(NamedTuple):
    """The hyperparameter tensor ``hp`` (factor dtype, on the parameter's device), slot by slot: one
    weight-decay coefficient is 0 (the mode not chosen); ``direction`` is -1 for maximize, else +1; a
    tensor lr's slot is filled on the device."""

    lr: float
    beta: float
    growth_rate: float
    decay_rate: float
    eps: float
    wd_decoupled: float
    wd_coupled: float
    direction: float


# Slot indices of ``hp``, for the kernels (which index a tensor, not the tuple).
HP_LR, HP_BETA, HP_GROWTH, HP_DECAY, HP_EPS, HP_WD_DECOUPLED, HP_WD_COUPLED, HP_SIGN = range(
    len(Hyperparameters._fields)
)
HP_SIZE = len(Hyperparameters._fields)


def schedules(hp: Tensor, steps: Tensor) -> Tensor:
    """(k, 3) tensor of [beta1_t, beta2_t, t] for k step counts t: beta * growth^(t-1) and 1 - t^decay
    (t itself feeds stochastic rounding's random bits).

    Computed once per step for all tensors of a group, outside the elementwise kernels, so that the
    two pow() calls are not evaluated per element.
    """
    t = steps.to(hp.dtype)
    beta1 = hp[HP_BETA] * torch.pow(hp[HP_GROWTH], t - 1)
    beta2 = 1 - torch.pow(t, hp[HP_DECAY])
    return torch.stack([beta1, beta2, t], dim=-1)


def step_allowed(grads: list[Tensor], dtype: torch.dtype) -> Tensor:
    """(k,) bool: whether each of k tensors may step: its gradient's sum of squares finite in ``dtype``,
    so no element is NaN or inf and neither the second moment nor its row and column sums overflow
    (|g| >= ~1.8e19 in fp32). A tensor that may not step keeps its parameter and state.

    CPU gradients already in ``dtype`` take one BLAS dot product each, about twice as fast there as the
    multi-tensor 2-norm (and than the max-norm). CPU bf16 gradients of fp32 factors take their own
    2-norm, which torch accumulates in fp32 and which bf16, having fp32's range, holds whenever that sum
    is finite: 20x faster there than a norm asked for in fp32, which first copies the gradient to fp32.
    Others take the multi-tensor norm, NaN propagating, in ``dtype`` (an fp16 norm would overflow, and
    skip, at 65504 for finite gradients).
    """
    if all(g.device.type == "cpu" and g.dtype == dtype for g in grads):
        flats = [g.reshape(-1) for g in grads]
        return torch.isfinite(torch.stack([torch.dot(flat, flat) for flat in flats]))
    if dtype == torch.float32 and all(g.device.type == "cpu" and g.dtype == torch.bfloat16 for g in grads):
        return torch.isfinite(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    limit = math.sqrt(torch.finfo(dtype).max)
    return torch.stack(torch._foreach_norm(grads, 2, dtype=dtype)) < limit


def step_inputs(hp: Tensor, states: list[dict[str, Any]], grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """What the torch backends' step reads besides the tensors: :func:`schedules` (k, 3) of the step k
    tensors take next, from their states' step counters, and :func:`step_allowed` (k,) (detached: their
    rows are aliases without a view base, so that dynamo does not guard on the base's shape). The C++
    backend computes both itself."""
    scheds = schedules(hp, torch.stack([state["step"] for state in states]) + 1)
    return scheds.detach(), step_allowed(grads, hp.dtype).detach()


def count_steps(states: list[dict[str, Any]], allowed: Tensor) -> None:
    """Advance each state's step counter where its tensor stepped (``allowed``), else its skipped-step
    counter, all at once."""
    stepped = allowed.to(torch.float32)
    torch._foreach_add_([state["step"] for state in states], list(stepped.unbind()))
    torch._foreach_add_([state["skipped"] for state in states], list((1 - stepped).unbind()))


def _bcast(t: Tensor | None) -> Tensor | None:
    """A per-tensor value (...,) as (..., 1, 1), int64, to broadcast over a (..., R, m) block."""
    return None if t is None else t.to(torch.int64)[..., None, None]


def _ratio(numerator: Tensor, denom: Tensor) -> Tensor:
    """numerator / denom, with 0 where denom is 0 (only possible with eps=0 and an all-zero history,
    where the numerator is 0 too), so that eps=0 gives 0 rather than NaN for zero gradients."""
    return torch.where(denom > 0, numerator / denom, torch.zeros_like(numerator))


def _prepare(p: Tensor, g: Tensor, hp: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient and parameter in the factor dtype, with maximize and both weight-decay modes applied.

    Both modes are arithmetic (one of the two coefficients is zero), so neither branches.
    """
    g32 = g.to(hp.dtype) * hp[HP_SIGN]
    p32 = p.to(hp.dtype)
    g32 = g32 + hp[HP_WD_COUPLED] * p32
    p32 = p32 * (1 - hp[HP_LR] * hp[HP_WD_DECOUPLED])
    return g32, p32


def _signs(sign: Tensor, packed: bool, rows: int, cols: int, dtype: torch.dtype) -> Tensor:
    """The block's stored signs as +1/-1 in ``dtype``, from packed bits or from one byte per sign."""
    positive = unpack_bits(sign, rows, cols) if packed else sign.view(*sign.shape[:-1], rows, cols)
    return positive.to(dtype) * 2 - 1


def factored_block_step(
    p: Tensor,
    g: Tensor,
    sign: Tensor | None,
    row_m: Tensor | None,
    col_m: Tensor | None,
    row_v: Tensor,
    col_v: Tensor,
    hp: Tensor,
    sched: Tensor,
    packed: bool,
    allowed: Tensor,
    seed: Tensor | None = None,
    row0: int = 0,
) -> tuple[Tensor | None, Tensor]:
    """One SMMF step on a row block of a square-matricized parameter.

    Shapes: ``p``, ``g`` (..., R, m); ``row_*`` (..., R); ``col_*`` (..., m) (the whole tensor's column
    factors). ``sign`` is uint8: the block's packed bits, (..., R*ceil(m/8)), or with ``packed=False``
    one 0/1 byte per sign, (..., R*m) (8-bit bool state viewed as bytes by the caller: inductor's bool
    loads and stores are ~20x slower, and some versions cannot lower a bool dtype view in a graph);
    ``None`` together with the first-moment factors when beta is None. ``sched`` (..., 2) is this
    tensor's row of :func:`schedules`. Leading dimensions batch same-shaped tensors, so that many small
    tensors cost one kernel call. ``allowed`` (...) is :func:`step_allowed` of each whole tensor: where
    False, nothing changes. ``seed`` (...) turns on stochastic rounding of bf16 parameters (``row0``: the
    block's first row, for the random bits' element index). Updates ``p``, ``sign``, ``row_m`` and
    ``row_v`` in place and returns this block's column sums of |M| and V, which the caller adds up over
    blocks and hands to :func:`normalize_columns` (column factors are shared by all blocks, so they can
    only be replaced once every block has read the old ones).
    """
    rows, cols = p.shape[-2:]
    g32, p32 = _prepare(p, g, hp)
    beta1, beta2 = sched[..., 0, None, None], sched[..., 1, None, None]
    v = beta2 * (row_v[..., :, None] * col_v[..., None, :]) + (1 - beta2) * (g32 * g32)
    denom = torch.sqrt(v) + hp[HP_EPS]
    col_sum_m = None
    per_row = allowed[..., None]
    if sign is None or row_m is None or col_m is None:
        update = _ratio(g32, denom)
    else:
        m_hat = _signs(sign, packed, rows, cols, hp.dtype) * (row_m[..., :, None] * col_m[..., None, :])
        m = beta1 * m_hat + (1 - beta1) * g32
        update = _ratio(m, denom)
        # exact zeros count as negative, as in the reference; 0/1 bytes store far faster than bools
        new_sign = pack_signs(m) if packed else torch.where(m > 0, 1, 0).to(torch.uint8).view(sign.shape)
        sign.copy_(torch.where(per_row, new_sign, sign))
        m_abs = m.abs()
        row_m.copy_(torch.where(per_row, m_abs.sum(dim=-1), row_m))
        col_sum_m = m_abs.sum(dim=-2)
    new_p = p32 - hp[HP_LR] * update
    if seed is None:
        new_p = new_p.to(p.dtype)
    else:  # stochastic rounding (bf16 parameters): random bits per element
        index = rounding.element_index(rows, cols, row0, p.device)
        step = sched[..., 2].to(torch.int64)[..., None, None]
        new_p = rounding.to_param_dtype(new_p, p.dtype, _bcast(seed), step, index)
    p.copy_(torch.where(allowed[..., None, None], new_p, p))
    row_v.copy_(torch.where(per_row, v.sum(dim=-1), row_v))
    return col_sum_m, v.sum(dim=-2)


def factored_step(
    p: Tensor,
    g: Tensor,
    sign: Tensor | None,
    row_m: Tensor | None,
    col_m: Tensor | None,
    row_v: Tensor,
    col_v: Tensor,
    hp: Tensor,
    sched: Tensor,
    packed: bool,
    allowed: Tensor,
    seed: Tensor | None = None,
) -> None:
    """A whole (..., n, m) tensor in one block: :func:`factored_block_step` then both column
    normalizations."""
    sum_m, sum_v = factored_block_step(p, g, sign, row_m, col_m, row_v, col_v, hp, sched, packed, allowed, seed)
    normalize_columns(col_v, sum_v, allowed)
    if sum_m is not None and col_m is not None:
        normalize_columns(col_m, sum_m, allowed)


def factored_rows_step(sum_m: Tensor | None, sum_v: Tensor, finish: Tensor, *block: Any) -> None:
    """One row block of a tensor too large for one call: :func:`factored_block_step` on ``block`` (its
    arguments, in its order, ``row0`` included), its column sums added into the running ``sum_m`` and
    ``sum_v``, and where ``finish`` (``allowed`` on the last block, else False) both column
    normalizations, so a tensor of k blocks costs k calls. The block reads the old column factors
    before the graph writes them."""
    part_m, part_v = factored_block_step(*block)
    _, _, _, _, col_m, _, col_v, *_ = block
    sum_v.add_(part_v)
    normalize_columns(col_v, sum_v, finish)
    if part_m is not None and sum_m is not None and col_m is not None:
        sum_m.add_(part_m)
        normalize_columns(col_m, sum_m, finish)


def normalize_columns(col: Tensor, col_sum: Tensor, allowed: Tensor) -> None:
    """col <- col_sum / sum(col_sum), so that outer(row_sums, col) = rowsum * colsum / total (where
    ``allowed``; elsewhere col is left as it is).

    A zero total (an all-zero moment) leaves the sums as they are instead of dividing by zero, which is
    the reference's ``if sum != 0`` written as arithmetic.
    """
    total = col_sum.sum(dim=-1, keepdim=True)
    normalized = col_sum / torch.where(total == 0, torch.ones_like(total), total)
    col.copy_(torch.where(allowed[..., None], normalized, col))


def dense_step(
    p: Tensor,
    g: Tensor,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    hp: Tensor,
    sched: Tensor,
    allowed: Tensor,
    seed: Tensor | None = None,
) -> None:
    """Uncompressed step for 1-D tensors when vector_reshape=False: full moments, same schedules
    (nothing changes where ``allowed`` is False)."""
    g32, p32 = _prepare(p, g, hp)
    beta1, beta2 = sched[0], sched[1]
    v = beta2 * exp_avg_sq + (1 - beta2) * (g32 * g32)
    exp_avg_sq.copy_(torch.where(allowed, v, exp_avg_sq))
    denom = torch.sqrt(v) + hp[HP_EPS]
    if exp_avg is None:
        update = _ratio(g32, denom)
    else:
        m = beta1 * exp_avg + (1 - beta1) * g32
        exp_avg.copy_(torch.where(allowed, m, exp_avg))
        update = _ratio(m, denom)
    new_p = p32 - hp[HP_LR] * update
    if seed is None:
        new_p = new_p.to(p.dtype)
    else:  # stochastic rounding (bf16 parameters): random bits per element
        index = torch.arange(p.shape[-1], device=p.device, dtype=torch.int64)
        new_p = rounding.to_param_dtype(new_p, p.dtype, seed, sched[2].to(torch.int64), index)
    p.copy_(torch.where(allowed, new_p, p))


# Graph variants per kernel: sizes 0 and 1 (m = 1 for prime numel), partial sign bytes and dtypes
# specialise, and wide tensors get one graph per column count, so a model needs tens, not hundreds.
_RECOMPILE_LIMIT = 64


@functools.cache
def compiled(fn: Callable[..., Any], cols: int = 0) -> Callable[..., Any]:
    """``fn`` compiled once per process with ``fullgraph=True``.

    ``cols=0``: every size symbolic, one graph for all small tensors. ``cols > 0``: rows symbolic but
    the column count this constant, which lets inductor vectorize the row loop with constant strides
    (about 5x faster on CPU for large tensors). Each width gets its own code object, hence its own
    dynamo cache holding one graph: a lookup then checks one entry's guards instead of walking every
    width's. The caller marks the dimensions with :func:`mark_block`.
    """
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, _RECOMPILE_LIMIT)
    if not cols:
        return torch.compile(fn, fullgraph=True, dynamic=True)

    def wide(*args: Any) -> Any:
        return fn(*args)

    wide.__code__ = wide.__code__.replace(co_name=f"{fn.__name__}_cols{cols}")
    functools.update_wrapper(wide, fn)
    return torch.compile(wide, fullgraph=True, dynamic=None)


def mark_block(dynamic: Iterable[Tensor | None], static_last: Iterable[Tensor | None]) -> None:
    """Mark dimensions for a ``static_cols`` graph: every dim dynamic (rows, batch), except the last dim
    of the ``static_last`` tensors, whose last dim is the column count (p, g and the column factors)."""
    for t in dynamic:
        if t is not None:
            for dim in range(t.dim()):
                torch._dynamo.maybe_mark_dynamic(t, dim)
    for t in static_last:
        if t is not None:
            for dim in range(t.dim() - 1):
                torch._dynamo.maybe_mark_dynamic(t, dim)
            torch._dynamo.mark_static(t, t.dim() - 1)
