"""The Triton backend: every tensor of a bucket stepped in four kernel launches (three with pass 0 in
pass 1's queue, :mod:`smmf.triton_queue`).

A bucket is one param group's tensors of one device, parameter dtype and gradient dtype. Its
:class:`Plan` (the device table of addresses and shapes, the tile map, the tiling) is built once and
reused while the same tensors have gradients at the same addresses, so a step costs the launches of
:mod:`smmf.triton_kernels` and :mod:`smmf.triton_tile`, plus one small fill when a hyperparameter
changed, with no host sync and no host-to-device copy: ``optimizer.step()`` can be captured in a CUDA
graph.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .matricization import square_matricize
from .placement import placement_columns, row_major_placement
from .signpack import row_bytes
from .triton_launch import BLOCK_J, BLOCK_R, Pass0Launch, Pass1Launch, pass0_launch, pass1_launch, queue_items

__all__ = [
    "Plan", "scratch_budget", "strided_ready", "vector_ready", "build_plan", "with_gradients",
    "with_pass0", "step",
]  # fmt: skip

# Passes 0 and 1's blocks, warps, register caps and loads in flight: smmf.triton_launch.
_VECTOR_BYTES = 16
_REDUCE_BLOCK = 1024
# The extra memory of a step (scratch and tile map) stays within this fraction of the largest
# parameter, or _MIN_SCRATCH_BYTES for models of tiny tensors.
SCRATCH_FRACTION = 0.25
_MIN_SCRATCH_BYTES = 1 << 20
# Pass 2 adds up, for every row (column) factor element, one partial per tile along that row
# (column), each program a block of elements, four partials loaded at a time. At most MAX_SLOTS tiles
# along a line keep that chain short: the budget alone would cut a lone 11008 x 4096 tensor (8192 x
# 5504, as step_in_backward steps it) into 32-row tiles, 256 partials for each column sum. A launch of
# one tensor (step_in_backward) may have twice as many: with 32, that tensor had 704 tiles, barely more
# than the 660 programs an H100 or H200 holds at once (5 an SM), and the second wave left most SMs
# idle; with 64 it has 2,752. Many tensors fill a launch anyway, and more, smaller tiles cost more
# starts (benchmarks/tile_waves.py: a model of the waves, not a timing).
MAX_SLOTS = 32
LONE_TENSOR_MAX_SLOTS = 64

Item = tuple[Tensor, Tensor, dict[str, Any]]
Shape = tuple[int, int, int, bool]  # (n, m, bytes per sign row, dense): _tensor_shape


@dataclass(frozen=True)
class Plan:
    """What the kernels need beyond the hyperparameters: built once per set of tensors, and only its
    gradient column rewritten when gradients move (``zero_grad(set_to_none=True)`` may reallocate)."""

    layout: tuple[Any, ...]
    gradients: tuple[int, ...]
    aligned: tuple[bool, ...]  # per tensor: vector_ready but for the gradient's address
    table: Tensor  # (tensors, TABLE_COLS) int64 on the device
    tile_map: Tensor  # (tiles,) int32: the tensor each tile belongs to
    # (2 * tensors + 1,) int32: 1 where pass 0 found a non-finite gradient, then pass 1's queue's counters
    # (smmf.triton_queue); cleared by the step
    flags: Tensor
    work: Tensor | None  # pass 0 folded into pass 1 (pass0.queue): the queue's work items, int32
    pass0: Pass0Launch  # by the gradients' element size
    pass1: Pass1Launch  # tile_rows and tile_bytes are multiples of its block's
    tile_rows: int
    tile_bytes: int
    scratch_numel: int
    row_chunks: int  # the most _REDUCE_BLOCK blocks of rows of any tensor
    column_chunks: int  # and of columns
    has_m: bool
    packed: bool
    stochastic: bool  # every tensor's state has a seed: stochastic rounding to bf16
    # per kernel: (its launch: key, constexprs and options; the compiled kernel's launcher); shared by the
    # plans with_gradients makes
    launches: dict[Any, tuple[tuple[Any, ...], Any]] = field(default_factory=dict, compare=False, repr=False)


def strided_ready(p: Tensor, g: Tensor, state: dict[str, Any]) -> bool:
    """Whether pass 1 steps in place a parameter not in row-major order (a channels-last conv weight, a
    transposed matrix): factored, its gradient laid out alike, under 2**31 elements (its offsets are
    int32) and dense in at most three merged dimensions (:func:`smmf.placement.row_major_placement`)."""
    stride = p.stride()
    return (
        stride == g.stride()
        and "row_v" in state
        and p.numel() < 2**31
        and row_major_placement(tuple(p.shape), stride) is not None
    )


def with_gradients(plan: Plan, gradients: tuple[int, ...]) -> Plan:
    """The plan with its gradient and alignment columns rewritten: one small host-to-device copy, from
    pinned memory on CUDA, as a copy from pageable memory may wait for the stream (and the host would
    then wait for the backward pass it could be running ahead of)."""
    from . import triton_kernels as tk

    aligned = _aligned_column(plan.aligned, gradients)
    columns = torch.tensor(list(zip(gradients, aligned, strict=True)), dtype=torch.int64)
    if plan.table.is_cuda:
        columns = columns.pin_memory()  # freed safely: torch's pinned allocator waits for the copy
    first = int(tk.COL_G)  # and COL_ALIGNED next to it: a slice, as indexing with a list of columns would
    # copy the list to the device and wait for it
    plan.table[:, first : first + 2].copy_(columns.to(plan.table.device, non_blocking=True))
    return dataclasses.replace(plan, gradients=gradients)


def with_pass0(plan: Plan, launch: Pass0Launch) -> Plan:
    """The plan with pass 0 launched as ``launch`` says (benchmarks/pass1_sweep.py times settings so)."""
    from . import triton_kernels as tk

    tile_counts = (plan.table[:, int(tk.COL_ROW_TILES)] * plan.table[:, int(tk.COL_COL_TILES)]).tolist()
    work = queue_items(tile_counts, launch, plan.table.device)
    return dataclasses.replace(plan, pass0=launch, work=work, launches={})


def vector_ready(addresses: list[int], m: int, dense: bool) -> bool:
    """Whether pass 1 may move a factored tensor in 16-byte vectors, as far as ``addresses`` go (the
    gradient's joins them in :func:`_aligned_column`): every address a multiple of 16 bytes and m a
    multiple of 64 (a sign row then holds whole 8-byte words, and each of a row's 8 planes of width
    m / 8 starts on a 16-byte boundary in any dtype of 2 bytes or more)."""
    return not dense and m % 64 == 0 and all(a % _VECTOR_BYTES == 0 for a in addresses)


def _aligned_column(aligned: tuple[bool, ...], gradients: tuple[int, ...]) -> list[int]:
    """The table's ``aligned`` column: :func:`vector_ready` of the other addresses and the gradient's."""
    return [int(ok and g % _VECTOR_BYTES == 0) for ok, g in zip(aligned, gradients, strict=True)]


def _tensor_shape(p: Tensor, state: dict[str, Any]) -> Shape:
    """(n, m, bytes per sign row, dense) of a tensor as the kernels see it."""
    n, m = square_matricize(p.numel())
    return n, m, row_bytes(m), "row_v" not in state


def _counts(shape: Shape, tile_rows: int, tile_bytes: int) -> tuple[int, int]:
    n, _, width, _ = shape
    return math.ceil(n / tile_rows), math.ceil(width / tile_bytes)


def _partial_numel(shape: Shape, counts: tuple[int, int], moments: int) -> tuple[int, int]:
    """(row, column) partial sums of a tensor in ``counts`` (row, column) tiles, for each moment; dense: none."""
    n, m, _, dense = shape
    row_tiles, col_tiles = counts
    return (0, 0) if dense else (moments * n * col_tiles, moments * m * row_tiles)


def _extra_numel(shapes: list[Shape], tile_rows: int, tile_bytes: int, moments: int) -> tuple[int, int]:
    """(scratch elements, tiles) of a tiling."""
    scratch = tiles = 0
    for shape in shapes:
        counts = _counts(shape, tile_rows, tile_bytes)
        tiles += counts[0] * counts[1]
        scratch += sum(_partial_numel(shape, counts, moments))
    return scratch, tiles


def scratch_budget(largest_bytes: int) -> int:
    """Bytes of scratch and tile map a step may use, given its largest parameter's size in bytes."""
    return max(int(SCRATCH_FRACTION * largest_bytes), _MIN_SCRATCH_BYTES)


def _tiling(
    shapes: list[Shape],
    moments: int,
    acc_bytes: int,
    budget: int,
    rows_per_block: int = BLOCK_R,
    bytes_per_block: int = BLOCK_J,
    map_bytes: int = 4,
) -> tuple[int, int]:
    """The smallest tiles (most parallelism) with at most MAX_SLOTS (a lone tensor:
    LONE_TENSOR_MAX_SLOTS) tiles along any tensor's rows and columns whose scratch and tile map (and
    queue: ``map_bytes`` a tile) fit ``budget`` bytes: tiles grow, rows first (column sums cost m per
    row tile, row sums n per column tile of 8 columns a byte), until they fit or cover every tensor whole."""
    tile_rows, tile_bytes = rows_per_block, bytes_per_block
    max_rows = max((s[0] for s in shapes), default=1)
    max_bytes = max((s[2] for s in shapes), default=1)
    max_slots = LONE_TENSOR_MAX_SLOTS if len(shapes) == 1 else MAX_SLOTS
    while True:
        scratch, tiles = _extra_numel(shapes, tile_rows, tile_bytes, moments)
        rows_capped = math.ceil(max_rows / tile_rows) <= max_slots
        bytes_capped = math.ceil(max_bytes / tile_bytes) <= max_slots
        if rows_capped and bytes_capped and scratch * acc_bytes + map_bytes * tiles <= budget:
            return tile_rows, tile_bytes
        if not rows_capped:
            grow_rows = True
        elif not bytes_capped:
            grow_rows = False
        else:
            grow_rows = tile_rows < max_rows and (tile_rows <= 8 * tile_bytes or tile_bytes >= max_bytes)
        if grow_rows:
            tile_rows *= 2
        elif tile_bytes < max_bytes:
            tile_bytes *= 2
        else:
            return tile_rows, tile_bytes


def _table_rows(
    items: list[Item], shapes: list[Shape], gradients: tuple[int, ...], tile: tuple[int, int], moments: int
) -> tuple[list[list[int]], list[bool], list[int], int]:
    """Each tensor's table row, whether it is aligned for vector loads, its tile count, and the scratch
    elements of all partial sums: the row and column partials of each tensor laid out one after another."""
    from . import triton_kernels as tk

    rows: list[list[int]] = []
    aligned: list[bool] = []
    tile_counts: list[int] = []
    scratch = 0
    vector_columns = (tk.COL_P, tk.COL_SIGN, tk.COL_ROW_M, tk.COL_COL_M, tk.COL_ROW_V, tk.COL_COL_V)
    for (p, _, state), shape, gradient in zip(items, shapes, gradients, strict=True):
        _, m, _, dense = shape
        counts = _counts(shape, *tile)
        entry = _table_entry(p, state, shape, gradient, counts)
        entry[tk.COL_TILE0] = sum(tile_counts)
        tile_counts.append(counts[0] * counts[1])
        aligned.append(vector_ready([entry[c] for c in vector_columns], m, dense) and not entry[tk.COL_PLACE_K])
        row_partials, column_partials = _partial_numel(shape, counts, moments)
        if not dense:
            entry[tk.COL_ROW_PART] = scratch
            entry[tk.COL_COL_PART] = scratch + row_partials
        scratch += row_partials + column_partials
        rows.append(entry)
    for entry, flag in zip(rows, _aligned_column(tuple(aligned), gradients), strict=True):
        entry[tk.COL_ALIGNED] = flag
    return rows, aligned, tile_counts, scratch


def build_plan(
    items: list[Item],
    layout: tuple[Any, ...],
    gradients: tuple[int, ...],
    acc_dtype: torch.dtype,
    has_m: bool,
    packed: bool,
) -> Plan:
    """The table, tile map and tiling for ``items`` (all on one device), whose gradients are at
    ``gradients``."""
    device = items[0][0].device
    shapes = [_tensor_shape(p, state) for p, _, state in items]
    acc_bytes = torch.finfo(acc_dtype).bits // 8
    budget = scratch_budget(max(p.numel() * p.element_size() for p, _, _ in items))
    moments = 2 if has_m else 1
    pass1 = pass1_launch(items[0][0].element_size(), device.type == "cuda")
    pass0 = pass0_launch(items[0][1].element_size())
    tiling = (pass1.block_rows, pass1.block_bytes, pass0.map_bytes())
    tile_rows, tile_bytes = _tiling(shapes, moments, acc_bytes, budget, *tiling)
    rows, aligned, tile_counts, scratch = _table_rows(items, shapes, gradients, (tile_rows, tile_bytes), moments)
    owners = torch.repeat_interleave(torch.arange(len(items), dtype=torch.int32), torch.tensor(tile_counts))
    return Plan(
        layout=layout,
        gradients=gradients,
        aligned=tuple(aligned),
        table=torch.tensor(rows, dtype=torch.int64).to(device),
        tile_map=owners.to(device),
        flags=torch.zeros(2 * len(items) + 1, dtype=torch.int32, device=device),
        work=queue_items(tile_counts, pass0, device),
        pass0=pass0,
        pass1=pass1,
        tile_rows=tile_rows,
        tile_bytes=tile_bytes,
        scratch_numel=scratch,
        row_chunks=max((math.ceil(n / _REDUCE_BLOCK) for n, _, _, _ in shapes), default=0),
        column_chunks=max((math.ceil(m / _REDUCE_BLOCK) for _, m, _, _ in shapes), default=0),
        has_m=has_m,
        packed=packed,
        stochastic=all("seed" in state for _, _, state in items),
    )


def _table_entry(p: Tensor, state: dict[str, Any], shape: Shape, gradient: int, tiles: tuple[int, int]) -> list[int]:
    """A tensor's table row, but for what depends on the tensors before it (its first tile, its scratch
    slots) and on every address's alignment; ``tiles``: (row tiles, column tiles)."""
    from . import triton_kernels as tk

    n, m, width, dense = shape
    entry = [0] * int(tk.TABLE_COLS)
    entry[tk.COL_P], entry[tk.COL_G] = p.data_ptr(), gradient
    entry[tk.COL_STEP], entry[tk.COL_SKIPPED] = state["step"].data_ptr(), state["skipped"].data_ptr()
    entry[tk.COL_N], entry[tk.COL_M], entry[tk.COL_B] = n, m, width
    entry[tk.COL_ROW_TILES], entry[tk.COL_COL_TILES], entry[tk.COL_DENSE] = *tiles, int(dense)
    if not p.is_contiguous():  # strided_ready: pass 1 reads it through its placement
        placement = row_major_placement(tuple(p.shape), p.stride())
        assert placement is not None, "strided_ready admits only placeable tensors"
        columns = (tk.COL_PLACE_K, tk.COL_PLACE_Q, tk.COL_PLACE_R, tk.COL_DIVIDE_Q, tk.COL_DIVIDE_R)
        for col, value in zip(columns, placement_columns(*placement), strict=True):
            entry[col] = value
    _state_addresses(entry, state, fallback=p.data_ptr())
    return entry


def _state_addresses(entry: list[int], state: dict[str, Any], fallback: int) -> None:
    """Fill the state columns; a column a tensor does not use gets a valid address its loads never touch."""
    from . import triton_kernels as tk

    columns = {
        "sign": tk.COL_SIGN,
        "row_m": tk.COL_ROW_M,
        "col_m": tk.COL_COL_M,
        "row_v": tk.COL_ROW_V,
        "col_v": tk.COL_COL_V,
        "exp_avg": tk.COL_EXP_AVG,
        "exp_avg_sq": tk.COL_EXP_AVG_SQ,
        "seed": tk.COL_SEED,
    }
    for key, col in columns.items():
        value = state.get(key)
        entry[col] = fallback if value is None or value.numel() == 0 else value.data_ptr()


@functools.cache  # asked four times a step, per bucket
def _triton_dtype(dtype: torch.dtype) -> Any:
    import triton.language as tl

    return {
        torch.float32: tl.float32,
        torch.float64: tl.float64,
        torch.bfloat16: tl.bfloat16,
        torch.float16: tl.float16,
    }[dtype]


def step(plan: Plan, p_dtype: torch.dtype, g_dtype: torch.dtype, hp: Tensor, lr: Tensor) -> None:
    """The four passes for a bucket: ``hp`` is the hyperparameter tensor (factor dtype, on the device)
    and ``lr`` a one-element device tensor (the group's own tensor lr, or a slot of ``hp``). Triton
    launches on the current CUDA device, so a bucket on another GPU (a model split over GPUs) is stepped
    with that GPU made current, as torch's own ops do."""
    if hp.is_cuda and hp.get_device() != torch.cuda.current_device():
        with torch.cuda.device(hp.device):
            _passes(plan, p_dtype, g_dtype, hp, lr)
    else:
        _passes(plan, p_dtype, g_dtype, hp, lr)


def _passes(plan: Plan, p_dtype: torch.dtype, g_dtype: torch.dtype, hp: Tensor, lr: Tensor) -> None:
    """:func:`step` on the current device."""
    from . import triton_kernels as tk
    from . import triton_queue as tq
    from . import triton_tile as tt

    acc = _triton_dtype(hp.dtype)
    tensors = plan.table.shape[0]
    scratch = torch.empty(plan.scratch_numel + tensors, dtype=hp.dtype, device=hp.device)
    flag_copies = scratch[plan.scratch_numel :].view(-1)[:tensors]
    # what Triton specializes a compiled kernel on, beyond the plan's own tensors and integers
    key = (hp.device, p_dtype, g_dtype, hp.dtype, hp.data_ptr(), lr.dtype, lr.data_ptr(), scratch.data_ptr() % 16)
    tiles = plan.tile_map.numel()
    table, flags, tiling = plan.table, plan.flags, (plan.tile_rows, plan.tile_bytes)
    if tiles:
        g_dt = _triton_dtype(g_dtype)
        kinds = {"P_DT": _triton_dtype(p_dtype), "G_DT": g_dt, "ACC": acc, "HAS_M": plan.has_m, "PACKED": plan.packed}
        constexprs = {**kinds, "STOCHASTIC": plan.stochastic, **plan.pass1.constexprs()}
        pass1 = (hp, lr, scratch, flag_copies, *tiling)
        if plan.work is not None:
            queued = (table, plan.work, plan.tile_map, flags, tensors, *pass1)
            constexprs |= plan.pass0.queued_constexprs()
            _launch(plan, tq.step_queue, (plan.work.numel(),), key, queued, constexprs, plan.pass1.options())
        else:
            check = {"G_DT": g_dt, "ACC": acc, **plan.pass0.constexprs()}
            pass0 = (table, plan.tile_map, flags)
            _launch(plan, tk.check_gradients, (tiles, plan.pass0.split), key, pass0, check, plan.pass0.options())
            _launch(plan, tt.step_tiles, (tiles,), key, (*pass0, *pass1), constexprs, plan.pass1.options())
    reduce = {"ACC": acc, "HAS_M": plan.has_m, "BLOCK": _REDUCE_BLOCK}
    grid = (tensors, 1 + plan.row_chunks + plan.column_chunks)
    _launch(plan, tk.reduce_factors, grid, key, (table, scratch, flags, flag_copies), reduce)
    if plan.column_chunks:
        _launch(plan, tk.normalize_columns, (tensors, plan.column_chunks), key, (table, scratch, flag_copies), reduce)


def _launch(
    plan: Plan,
    kernel: Any,
    grid: tuple[int, ...],
    key: tuple[Any, ...],
    args: tuple[Any, ...],
    constexprs: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> None:
    """``kernel[grid](*args, **constexprs, **options)``. Triton's dispatch (binding, specialization, cache
    lookup) costs some 8 µs of host time a launch on a 2-core Xeon (benchmarks/triton_dispatch.py), more
    than the rest of a step's Python, and step_in_backward steps many times a backward pass. So only a
    plan's first launch of ``kernel`` under ``key`` goes through it; later ones call the compiled kernel's
    launcher directly. The plan's own tensors and integers are the same at every launch; ``key`` holds
    what Triton specializes on among the rest, and the constexprs and options join it. Under the
    interpreter nothing is compiled: every launch dispatches."""
    values = tuple(constexprs.values())
    launch = (key, values, tuple((options or {}).items()))
    hit = plan.launches.get(kernel)
    if hit is not None and hit[0] == launch:
        hit[1](*args, *values)
        return
    compiled = kernel[grid](*args, **constexprs, **(options or {}))
    if _is_compiled(compiled) and kernel.arg_names[len(args) :] == list(constexprs):
        plan.launches[kernel] = (launch, compiled[(*grid, 1, 1)[:3]])  # its launcher takes three dimensions


def _is_compiled(launched: Any) -> bool:
    from triton.compiler import CompiledKernel

    return isinstance(launched, CompiledKernel)
