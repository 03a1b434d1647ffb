"""The torch backends: the step as torch tensor code, compiled by inductor or run eagerly.

A bucket's step counters and schedules advance together; then same-shaped small tensors are stacked
and stepped a batch per kernel call, and large ones row block by row block (``block_size`` bounds a
step's temporary memory). Each call is one function of :mod:`smmf.kernels`, compiled with
``torch.compile(fullgraph=True)`` (backend "inductor") or run as is ("eager").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import kernels
from .matricization import square_matricize
from .signpack import row_bytes
from .state_format import sign_as_bytes

__all__ = ["step"]

Item = tuple[Tensor, Tensor, dict[str, Any]]

_CPU_BLOCK_SIZE = 1 << 19
# On GPUs a block is also at least this fraction of the bucket's largest tensor (see _block_size).
_GPU_BLOCK_FRACTION = 16
# A batch of small tensors holds at most block_size / this many elements: its stacked copies are extra
# memory, and past ~10^5 elements a kernel call's overhead is already small next to its work.
_BATCH_FRACTION = 4
# Tensors at least this large get a kernel specialised to their column count (see kernels.compiled).
_WIDE_NUMEL = 1 << 16
# A factorized tensor's state, in the order the batched step stacks it.
_FACTOR_KEYS = ("sign", "row_m", "col_m", "row_v", "col_v")


@dataclass
class _Run:
    """What every kernel call of one bucket's step shares: the hyperparameter tensor, whether the
    kernels are compiled, and the block size."""

    hp: Tensor
    compiled: bool
    block_size: int

    def kernel(self, fn: Callable[..., Any], cols: int = 0) -> Callable[..., Any]:
        """``fn`` compiled (for this column count where ``cols`` > 0), or as is for eager."""
        return kernels.compiled(fn, cols) if self.compiled else fn


def _whole_step(run: _Run, p: Tensor, g: Tensor, state: dict[str, Any], sched: Tensor, allowed: Tensor) -> None:
    """One kernel call for a whole (n, m) tensor, or a (B, n, m) batch with its state stacked the same
    way: ``state`` maps the factorized state keys to tensors shaped to match ``p``; ``allowed``: whether
    each tensor steps (:func:`smmf.kernels.step_allowed`)."""
    sign, packed = sign_as_bytes(state.get("sign"))
    row_m, col_m, row_v, col_v = state.get("row_m"), state.get("col_m"), state["row_v"], state["col_v"]
    wide = run.compiled and p.shape[-2] * p.shape[-1] >= _WIDE_NUMEL
    if wide:
        kernels.mark_block((sign, row_m, row_v), (p, g, col_m, col_v))
    fn = run.kernel(kernels.factored_step, p.shape[-1] if wide else 0)
    fn(p, g, sign, row_m, col_m, row_v, col_v, run.hp, sched, packed, allowed, state.get("seed"))


def _block_size(requested: int | None, device: torch.device, items: list[Item]) -> int:
    """The group's ``block_size``, or the automatic one: 2^19 elements (the fused kernel's passes stay
    in a CPU's cache), and on GPUs at least 1/16 of the largest tensor, since there each block costs
    kernel launches while a block's temporaries (about two fp32 copies of it) stay at 1/8 of that
    tensor, under the quarter that the memory bound allows."""
    if requested is not None:
        return requested
    if device.type == "cpu" or not items:
        return _CPU_BLOCK_SIZE
    return max(_CPU_BLOCK_SIZE, max(p.numel() for p, _, _ in items) // _GPU_BLOCK_FRACTION)


def _plan(items: list[Item], block_size: int) -> tuple[list[list[int]], list[int]]:
    """Split a bucket into batches (indices of same-shaped factorized tensors, two or more, with at
    most ``block_size / _BATCH_FRACTION`` elements together) and singles (everything else, stepped
    one tensor at a time)."""
    budget = block_size // _BATCH_FRACTION
    groups: dict[tuple[Any, ...], list[int]] = {}
    singles = []
    for i, (p, grad, state) in enumerate(items):
        numel = p.numel()
        if "row_v" not in state or numel == 0 or 2 * numel > budget or not p.is_contiguous():
            singles.append(i)
            continue
        sign = state.get("sign")
        key = (square_matricize(numel), p.dtype, grad.dtype, None if sign is None else sign.dtype, "seed" in state)
        groups.setdefault(key, []).append(i)
    batches = []
    for key, members in groups.items():
        n, m = key[0]
        per_batch = budget // (n * m)
        for start in range(0, len(members), per_batch):
            chunk = members[start : start + per_batch]
            if len(chunk) > 1:
                batches.append(chunk)
            else:
                singles.extend(chunk)
    return batches, singles


def step(items: list[Item], hp: Tensor, block_size: int | None, compiled: bool) -> None:
    """Update same-shaped small tensors a batch per kernel call and the rest one by one, then advance
    each tensor's step counter, or its skipped-step counter where its gradient was not finite, all at
    once; ``hp`` holds the hyperparameters (:mod:`smmf.kernels` layout) and ``compiled`` picks inductor
    over eager."""
    run = _Run(hp, compiled, _block_size(block_size, items[0][0].device, items))
    batches, singles = _plan(items, run.block_size)
    items = [items[i] for batch in batches for i in batch] + [items[i] for i in singles]
    states = [state for _, _, state in items]
    scheds, allowed = kernels.step_inputs(hp, states, [g for _, g, _ in items])
    start = 0
    for batch in batches:
        stop = start + len(batch)
        _factored_batch(run, items[start:stop], scheds[start:stop], allowed[start:stop].detach())
        start = stop
    for i in range(start, len(items)):
        p, grad, state = items[i]
        if p.numel() == 0:
            continue
        work = p if p.is_contiguous() else p.contiguous()
        step_one = _factored_step if "row_v" in state else _dense_step
        step_one(run, work, grad.contiguous(), state, scheds[i], allowed[i].detach())
        if work is not p:
            p.copy_(work)
    kernels.count_steps(states, allowed)


def _dense_step(run: _Run, p: Tensor, grad: Tensor, state: dict[str, Any], sched: Tensor, allowed: Tensor) -> None:
    exp_avg = state.get("exp_avg")
    flat_avg = None if exp_avg is None else exp_avg.view(-1).detach()
    moments = (flat_avg, state["exp_avg_sq"].view(-1).detach())
    fn = run.kernel(kernels.dense_step)
    fn(p.view(-1).detach(), grad.view(-1).detach(), *moments, run.hp, sched, allowed, state.get("seed"))


def _factored_batch(run: _Run, items: list[Item], sched: Tensor, allowed: Tensor) -> None:
    """Update B same-shaped factorized tensors in one kernel call: stack them, step the (B, n, m)
    batch, and copy every result back with one foreach call. Small tensors are where per-call
    overhead (Python, guards, kernel launches) outweighs the arithmetic, on GPUs most of all."""
    n, m = square_matricize(items[0][0].numel())
    keys = [key for key in _FACTOR_KEYS if key in items[0][2]]
    views = [p.view(n, m) for p, _, _ in items]
    p_b = torch.stack(views)
    g_b = torch.stack([g.reshape(n, m) for _, g, _ in items])
    state_b = {key: torch.stack([state[key] for _, _, state in items]) for key in keys}
    seeds = [state["seed"] for _, _, state in items if "seed" in state]
    stepped = {**state_b, "seed": torch.stack(seeds)} if seeds else state_b  # read, not written back
    _whole_step(run, p_b, g_b, stepped, sched, allowed)
    targets = views + [state[key] for key in keys for _, _, state in items]
    results = list(p_b.unbind()) + [row for key in keys for row in state_b[key].unbind()]
    torch._foreach_copy_(targets, results)


def _factored_step(run: _Run, p: Tensor, grad: Tensor, state: dict[str, Any], sched: Tensor, allowed: Tensor) -> None:
    """Update one factorized tensor: in one kernel call if it fits a block, else row block by row block,
    one call per block, the last also normalizing the column factors (``allowed``, decided over the
    whole tensor beforehand, holds in every block)."""
    n, m = square_matricize(p.numel())
    pv, gv = p.view(n, m).detach(), grad.view(n, m).detach()
    if n * m <= run.block_size:
        _whole_step(run, pv, gv, state, sched, allowed)
        return
    sign, packed = sign_as_bytes(state.get("sign"))
    row_m, col_m, row_v, col_v = state.get("row_m"), state.get("col_m"), state["row_v"], state["col_v"]
    wide = run.compiled and n * m >= _WIDE_NUMEL
    rows = max(8, run.block_size // m // 8 * 8)  # a multiple of 8 rows, as wide graphs were compiled for
    width = row_bytes(m)
    block_fn = run.kernel(kernels.factored_rows_step, m if wide else 0)
    sum_v = torch.zeros_like(col_v)
    sum_m = None if col_m is None else torch.zeros_like(col_m)
    not_last, seed = torch.zeros_like(allowed), state.get("seed")
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        # detach(): aliases without a view base, so that dynamo does not guard on the base's shape
        p_blk, g_blk, row_v_blk = pv[start:stop].detach(), gv[start:stop].detach(), row_v[start:stop].detach()
        row_m_blk = None if row_m is None else row_m[start:stop].detach()
        sign_blk = None
        if sign is not None:
            sign_blk = (sign[start * width : stop * width] if packed else sign[start * m : stop * m]).detach()
        if wide:
            kernels.mark_block((sign_blk, row_m_blk, row_v_blk), (p_blk, g_blk, col_m, col_v, sum_m, sum_v))
        finish = allowed if stop == n else not_last
        block = (p_blk, g_blk, sign_blk, row_m_blk, col_m, row_v_blk, col_v, run.hp, sched, packed, allowed, seed)
        block_fn(sum_m, sum_v, finish, *block, start)
