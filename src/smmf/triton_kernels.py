"""Triton kernels of the multi-tensor SMMF step: four launches update every tensor of a bucket.

A bucket's tensors are described by a device table (:mod:`smmf.triton_backend` builds it), one int64
row per tensor holding the addresses of its parameter, gradient, sign, factors and step counter, its
(n, m) view and where its tiles and scratch slots start. Launches never depend on the tensor count:

* :func:`check_gradients` (pass 0), one program per tile, reading a contiguous share of its tensor's
  gradient: flags a tensor whose gradient holds a non-finite element or one whose square overflows;
  such a tensor keeps its parameter and state for this step and counts it in ``skipped`` (the flag is
  the maximum of 0/1 values, so the order in which tiles set it cannot change the result).
* :func:`smmf.triton_tile.step_tiles` (pass 1), one program per tile of ``tile_rows`` rows by
  ``tile_bytes`` sign bytes (8 columns each) of some tensor: reads the old factors and signs once,
  computes the moments and the update, writes the parameter and the new signs, and writes this tile's
  row and column sums of |M| and V into its own scratch slots.
* :func:`reduce_factors` (pass 2), one program per tensor for its step counter and one per block of
  its rows or columns: sums the slots in a fixed order into the new row factors, and into the column
  sums (kept in the first column slot).
* :func:`normalize_columns` (pass 3), one program per block of a tensor's columns: the new column
  factors, column sums divided by their total.

No atomics, so runs are bitwise reproducible; factors change only in passes 2 and 3, after every tile
has read the old ones. Tiles follow the sign layout of :mod:`smmf.signpack`: a tile of whole sign bytes covers
columns ``k*B + j`` for planes k = 0..7 (pass 1 lays them out as a block of rows by 8 planes of
bytes), so packing a sign byte is a sum over the planes and no two tiles share a byte.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import kernels

# Columns of the tensor table (int64), as constexprs so that kernels can read them as globals.
# "g" and "aligned" side by side: they are the columns rewritten when gradients move, in one slice.
TABLE_COLUMNS = (
    "p", "g", "aligned", "sign", "row_m", "col_m", "row_v", "col_v", "exp_avg", "exp_avg_sq", "step",
    "n", "m", "row_bytes", "first_tile", "col_tiles", "row_tiles", "row_part", "col_part", "dense", "skipped", "seed",
    "place_k", "place_q", "place_r", "divide_q", "divide_r",
)  # fmt: skip
(
    COL_P, COL_G, COL_ALIGNED, COL_SIGN, COL_ROW_M, COL_COL_M, COL_ROW_V, COL_COL_V, COL_EXP_AVG, COL_EXP_AVG_SQ,
    COL_STEP, COL_N, COL_M, COL_B, COL_TILE0, COL_COL_TILES, COL_ROW_TILES, COL_ROW_PART, COL_COL_PART, COL_DENSE,
    COL_SKIPPED, COL_SEED, COL_PLACE_K, COL_PLACE_Q, COL_PLACE_R, COL_DIVIDE_Q, COL_DIVIDE_R,
) = (tl.constexpr(i) for i in range(len(TABLE_COLUMNS)))  # fmt: skip
# The last five place a parameter and gradient not in row-major order (a channels-last weight, say):
# the element at row-major index k lies k * place_k + q * place_q + r * place_r from the first, for
# q = k // d2 and r = q // d1 (smmf.placement.placement_columns; place_k 0: row-major order).
# Pass 0 reads their memory as one run, as it holds the same elements.
TABLE_COLS = tl.constexpr(len(TABLE_COLUMNS))
_INF = tl.constexpr(float("inf"))
# Slots of the hyperparameter tensor (the layout of smmf.kernels).
_HP_BETA, _HP_GROWTH, _HP_DECAY, _HP_EPS, _HP_WD_DECOUPLED, _HP_WD_COUPLED, _HP_SIGN = (
    tl.constexpr(i)
    for i in (kernels.HP_BETA, kernels.HP_GROWTH, kernels.HP_DECAY, kernels.HP_EPS,
              kernels.HP_WD_DECOUPLED, kernels.HP_WD_COUPLED, kernels.HP_SIGN)
)  # fmt: skip


@triton.jit
def _ptr(row, col: tl.constexpr, dtype: tl.constexpr):
    return tl.load(row + col).to(tl.pointer_type(dtype))


@triton.jit
def _schedules(step_ptr, hp, ACC: tl.constexpr):
    """beta1_t = beta * growth^(t-1) and beta2_t = 1 - t^decay for t = stored step + 1, in float64."""
    t = tl.load(step_ptr).to(tl.float64) + 1.0
    beta = tl.load(hp + _HP_BETA).to(tl.float64)
    growth = tl.load(hp + _HP_GROWTH).to(tl.float64)
    decay = tl.load(hp + _HP_DECAY).to(tl.float64)
    log_growth = tl.log(tl.where(growth > 0, growth, 1.0))
    growth_pow = tl.where(t == 1.0, 1.0, tl.where(growth > 0, tl.exp((t - 1.0) * log_growth), 0.0))
    beta2 = 1.0 - tl.exp(decay * tl.log(t))
    return (beta * growth_pow).to(ACC), beta2.to(ACC)


@triton.jit
def _geometry(row, tile, tile_rows, tile_bytes, ALIGNED: tl.constexpr):
    """(m as int64, m, bytes per sign row, row tile, column tile, first row, end row, first byte, end
    byte) of this tile; int32 but for the first."""
    m64 = tl.load(row + COL_M)
    m = m64.to(tl.int32)
    width = tl.load(row + COL_B).to(tl.int32)
    local = tile - tl.load(row + COL_TILE0).to(tl.int32)
    col_tiles = tl.load(row + COL_COL_TILES).to(tl.int32)
    row_tile = local // col_tiles
    col_tile = local % col_tiles
    r_start = row_tile * tile_rows
    r_end = tl.minimum(tl.load(row + COL_N).to(tl.int32), r_start + tile_rows)
    j_start = col_tile * tile_bytes
    j_end = tl.minimum(width, j_start + tile_bytes)
    if ALIGNED:  # m a multiple of 64, so sign rows are whole 8-byte words; tiles start at 16-byte columns
        m64 = tl.multiple_of(m64, 64)
        m = tl.multiple_of(m, 64)
        width = tl.multiple_of(width, 8)
        j_start = tl.multiple_of(j_start, 16)
        j_end = tl.multiple_of(j_end, 8)
    return m64, m, width, row_tile, col_tile, r_start, r_end, j_start, j_end


@triton.jit
def _pointer(row, col: tl.constexpr, dtype: tl.constexpr, ALIGNED: tl.constexpr):
    """A table column as a typed pointer, declared 16-byte aligned where the tensor is (the hint must
    sit on the pointer itself: on the integer it is lost)."""
    ptr = tl.load(row + col).to(tl.pointer_type(dtype))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def check_gradients(
    table,
    tile_map,
    flags,
    G_DT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    STAGES: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Pass 0 for one share of its tensor's gradient, program (tile, part) the part-th of the tile's
    SPLIT: set flags[tensor] to 1 if any element g of it has a non-finite g * g (NaN, inf, or |g| past
    the square root of the largest float). A share is a contiguous run of whole BLOCKs of the gradient's
    memory (a strided one's too: it holds the same elements), not the tile's rows and planes: long runs
    read at the memory's pace. A tensor pass 1 moves in vectors (the table's aligned column) is read in
    vectors here too. With STAGES > 1 the loop's loads run STAGES - 1 blocks ahead, copied into shared
    memory; SPLIT > 1 makes more, shorter programs, so that the last wave of them leaves less of the GPU
    idle (smmf.triton_launch.Pass0Launch)."""
    check_share(table, tile_map, flags, tl.program_id(0), tl.program_id(1), G_DT, ACC, BLOCK, STAGES, SPLIT)


@triton.jit
def check_share(
    table, tile_map, flags, tile, part,
    G_DT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """Pass 0's work for the part-th of tile ``tile``'s SPLIT shares of its tensor's gradient (its own
    launch, :func:`check_gradients`, or pass 1's queue, :mod:`smmf.triton_queue`); returns the tensor."""
    tensor = tl.load(tile_map + tile).to(tl.int64)
    row = table + tensor * TABLE_COLS
    share = (tile - tl.load(row + COL_TILE0)).to(tl.int64) * SPLIT + part
    if tl.load(row + COL_ALIGNED) != 0:
        any_bad = _bad_in_share(row, share, G_DT, ACC, True, BLOCK, STAGES, SPLIT)
    else:
        any_bad = _bad_in_share(row, share, G_DT, ACC, False, BLOCK, STAGES, SPLIT)
    if any_bad > 0:
        tl.atomic_max(flags + tensor, any_bad)
    return tensor


@triton.jit
def tensor_shares(row, SPLIT: tl.constexpr):
    """How many shares pass 0 cuts a tensor's gradient into: SPLIT for each of its tiles."""
    return tl.load(row + COL_ROW_TILES) * tl.load(row + COL_COL_TILES) * SPLIT


@triton.jit
def _bad_in_share(
    row,
    share,
    G_DT: tl.constexpr,
    ACC: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
    STAGES: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """1 if the share-th share of the gradient holds an element whose square is not finite, else 0: its
    tensor's n * m elements cut into as many runs of whole BLOCKs as it has tiles times SPLIT."""
    numel = tl.load(row + COL_N) * tl.load(row + COL_M)
    shares = tensor_shares(row, SPLIT)
    blocks = tl.cdiv(tl.cdiv(numel, shares), BLOCK)  # per share
    first = share * blocks
    end = numel
    if ALIGNED:  # m, and so n * m, a multiple of 64
        end = tl.multiple_of(end, 64)
    g_ptr = _pointer(row, COL_G, G_DT, ALIGNED)
    lanes = tl.arange(0, BLOCK)
    bad = tl.zeros((BLOCK,), dtype=tl.int32)
    for b in tl.range(first, tl.minimum(first + blocks, tl.cdiv(numel, BLOCK)), num_stages=STAGES):
        start = b * BLOCK
        g = tl.load(g_ptr + start + lanes, mask=start + lanes < end, other=0.0).to(ACC)
        bad = tl.maximum(bad, (~(g * g < _INF)).to(tl.int32))
    return tl.max(bad, axis=0)


@triton.jit
def reduce_factors(table, scratch, flags, flag_copies, ACC: tl.constexpr, HAS_M: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 2: program (t, 0) advances tensor t's step (or, for a tensor flagged by pass 0, its skipped
    count) and clears its flag, and with it pass 1's queue's count of t's checked shares; program
    (t, 1 + k) adds up the slots of one BLOCK of t's rows (k below its row chunks) into the row
    factors, or of one BLOCK of its columns (after them) into the first column slot, for pass 3 to
    normalize. Many programs per tensor: no one program sums a large tensor's partials alone."""
    tensor = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    row = table + tensor * TABLE_COLS
    if chunk == 0:
        flag = tl.load(flags + tensor)
        step = _ptr(row, COL_STEP, tl.float32)
        skipped = _ptr(row, COL_SKIPPED, tl.float32)
        tl.store(step, tl.load(step) + (flag == 0).to(tl.float32))
        tl.store(skipped, tl.load(skipped) + (flag != 0).to(tl.float32))
        tl.store(flags + tensor, 0)
        tl.store(flags + tl.num_programs(0) + tensor, 0)
    else:
        n = tl.load(row + COL_N)
        m = tl.load(row + COL_M)
        stepped = _writes_factors(row, tensor, n, m, flag_copies)
        row_chunks = tl.cdiv(n, BLOCK)
        if stepped & (chunk <= row_chunks):
            idx = (chunk - 1) * BLOCK + tl.arange(0, BLOCK)
            row_part = scratch + tl.load(row + COL_ROW_PART)
            col_tiles = tl.load(row + COL_COL_TILES)
            tl.store(_ptr(row, COL_ROW_V, ACC) + idx, _slot_sum(row_part, col_tiles, n, idx, ACC), mask=idx < n)
            if HAS_M:
                sums = _slot_sum(row_part + n * col_tiles, col_tiles, n, idx, ACC)
                tl.store(_ptr(row, COL_ROW_M, ACC) + idx, sums, mask=idx < n)
        if stepped & (chunk > row_chunks) & (chunk <= row_chunks + tl.cdiv(m, BLOCK)):
            idx = (chunk - 1 - row_chunks) * BLOCK + tl.arange(0, BLOCK)
            col_part = scratch + tl.load(row + COL_COL_PART)
            row_tiles = tl.load(row + COL_ROW_TILES)
            # each program reads its own columns' slots before writing their sum over slot 0
            tl.store(col_part + idx, _slot_sum(col_part, row_tiles, m, idx, ACC), mask=idx < m)
            if HAS_M:
                col_part_m = col_part + row_tiles * m
                tl.store(col_part_m + idx, _slot_sum(col_part_m, row_tiles, m, idx, ACC), mask=idx < m)


@triton.jit
def normalize_columns(
    table, scratch, flag_copies, ACC: tl.constexpr, HAS_M: tl.constexpr, BLOCK: tl.constexpr
):  # fmt: skip
    """Pass 3: program (t, k) writes one BLOCK of tensor t's column factors, its column sums (pass 2
    left them in the first column slot) divided by their total (left as they are when the total is 0).
    Every program adds up the same total in the same order, so they agree to the bit."""
    tensor = tl.program_id(0).to(tl.int64)
    row = table + tensor * TABLE_COLS
    n = tl.load(row + COL_N)
    m = tl.load(row + COL_M)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if _writes_factors(row, tensor, n, m, flag_copies) & (tl.program_id(1) * BLOCK < m):
        col_part = scratch + tl.load(row + COL_COL_PART)
        _normalized_block(col_part, m, idx, _ptr(row, COL_COL_V, ACC), ACC, BLOCK)
        if HAS_M:
            _normalized_block(
                col_part + tl.load(row + COL_ROW_TILES) * m, m, idx, _ptr(row, COL_COL_M, ACC), ACC, BLOCK
            )


@triton.jit
def _writes_factors(row, tensor, n, m, flag_copies):
    """Whether passes 2 and 3 write the tensor's factors this step: factored, not empty, and not
    skipped (pass 1's first tile of the tensor copied its flag to ``flag_copies``)."""
    writes = (tl.load(row + COL_DENSE) == 0) & (n * m > 0)
    if writes:
        writes = tl.load(flag_copies + tensor) == 0
    return writes


@triton.jit
def _slot_sum(part, slots, length, idx, ACC: tl.constexpr):
    """The sum of ``slots`` slots of ``length`` at ``idx``, added in slot order. Four slots are loaded
    before they are added, so that a program waits for memory a quarter as often; a slot past the last
    loads 0, which leaves the (non-negative) sum bit for bit as it was."""
    ok = idx < length
    acc = tl.zeros(idx.shape, dtype=ACC)
    for s in range(0, slots, 4):
        first = tl.load(part + s * length + idx, mask=ok, other=0.0)
        second = tl.load(part + (s + 1) * length + idx, mask=ok & (s + 1 < slots), other=0.0)
        third = tl.load(part + (s + 2) * length + idx, mask=ok & (s + 2 < slots), other=0.0)
        fourth = tl.load(part + (s + 3) * length + idx, mask=ok & (s + 3 < slots), other=0.0)
        acc = (((acc + first) + second) + third) + fourth
    return acc


@triton.jit
def _normalized_block(sums, length, idx, out, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out[idx] = sums[idx] / sum(sums[:length]) (or sums[idx] where that total is 0), the total added up
    BLOCK-wise in a fixed order."""
    total = tl.zeros((BLOCK,), dtype=ACC)
    lanes = tl.arange(0, BLOCK)
    for start in range(0, length, 4 * BLOCK):  # four blocks loaded, then added in order (as _slot_sum)
        first = tl.load(sums + start + lanes, mask=start + lanes < length, other=0.0)
        second = tl.load(sums + start + BLOCK + lanes, mask=start + BLOCK + lanes < length, other=0.0)
        third = tl.load(sums + start + 2 * BLOCK + lanes, mask=start + 2 * BLOCK + lanes < length, other=0.0)
        fourth = tl.load(sums + start + 3 * BLOCK + lanes, mask=start + 3 * BLOCK + lanes < length, other=0.0)
        total = (((total + first) + second) + third) + fourth
    total_sum = tl.sum(total, axis=0)
    scale = tl.where(total_sum == 0, 1.0, total_sum)
    tl.store(out + idx, tl.load(sums + idx, mask=idx < length, other=0.0) / scale, mask=idx < length)
