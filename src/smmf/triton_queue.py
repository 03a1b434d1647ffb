"""Passes 0 and 1 of the Triton step in one launch (:func:`step_queue`): an ordered queue of work items.

Pass 0 (the check for non-finite gradients) must finish a tensor before pass 1 writes any of its
parameter, so with a launch each they read every gradient twice, the second time long after the first
left L2, and the GPU drains between them. Here one launch takes both: each program takes the next
ticket (an atomic counter) and does the work item the host queued there
(:func:`smmf.triton_launch.queue_order`): one share of a tensor's check, or one of its tiles. Every
tensor's shares are queued before its tiles, and a tile waits until they are all done (a counter each
share adds to with release order, read with acquire order). It cannot wait for ever: tickets are taken
in order, so a waiting tile's shares were taken by programs already running, and a share waits for
nothing. Under Triton's interpreter, programs run one after another in ticket order and never wait.
The counters live in the plan's ``flags`` after the flags themselves (t's checked shares at
``flags[T + t]``, cleared by pass 2 with the flags; the tickets taken at ``flags[2T]``, cleared by the
program that takes the last one), so a step needs no host work and can be captured in a CUDA graph.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_kernels import TABLE_COLS, check_share, tensor_shares
from .triton_tile import one_tile


@triton.jit
def step_queue(
    table, work, tile_map, flags, tensors, hp, lr_ptr, scratch, flag_copies, tile_rows, tile_bytes,
    P_DT: tl.constexpr, G_DT: tl.constexpr, ACC: tl.constexpr, HAS_M: tl.constexpr, PACKED: tl.constexpr,
    STOCHASTIC: tl.constexpr, PREFETCH: tl.constexpr, ROW_CHUNK: tl.constexpr, STAGES: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, CHECK_BLOCK: tl.constexpr, CHECK_STAGES: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    """One work item of passes 0 and 1: ``work[ticket]`` >= 0 is that tile of pass 1, -1 - s the s-th
    share of pass 0 (part s % SPLIT of tile s // SPLIT's); ``tensors`` rows in the table. Pass 1's
    constexprs as :func:`smmf.triton_tile.step_tiles`', pass 0's (CHECK_BLOCK, CHECK_STAGES, SPLIT) as
    :func:`smmf.triton_kernels.check_gradients`' BLOCK, STAGES and SPLIT."""
    ticket = tl.atomic_add(flags + 2 * tensors, 1, sem="relaxed")
    if ticket == tl.num_programs(0) - 1:  # the last ticket: every program has taken its own
        tl.store(flags + 2 * tensors, 0)
    item = tl.load(work + ticket)
    if item < 0:
        share = -1 - item
        tensor = check_share(
            table, tile_map, flags, share // SPLIT, share % SPLIT, G_DT, ACC, CHECK_BLOCK, CHECK_STAGES, SPLIT
        )
        tl.atomic_add(flags + tensors + tensor, 1, sem="release")  # after its flag, if it set it
    else:
        tensor = tl.load(tile_map + item).to(tl.int64)
        row = table + tensor * TABLE_COLS
        _wait_for_checks(flags + tensors + tensor, tensor_shares(row, SPLIT))
        one_tile(
            table, item, tensor, tl.load(flags + tensor, volatile=True), hp, lr_ptr, scratch, flag_copies,
            tile_rows, tile_bytes, P_DT, G_DT, ACC, HAS_M, PACKED, STOCHASTIC, PREFETCH, ROW_CHUNK, STAGES,
            BLOCK_R, BLOCK_J,
        )  # fmt: skip


@triton.jit
def _wait_for_checks(checked, shares):
    """Wait until the counter ``checked`` reaches ``shares`` (acquire order: the flag its shares set is
    seen after it)."""
    done = tl.atomic_add(checked, 0, sem="acquire")
    while done < shares:
        done = tl.atomic_add(checked, 0, sem="acquire")
