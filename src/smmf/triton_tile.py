"""Pass 1 of the Triton step (:func:`step_tiles`): one program per tile of one tensor of a bucket.

The table and the other passes are in :mod:`smmf.triton_kernels`. A program reads everything that
does not change within its tile once (its table row, the hyperparameters, the moment schedules, a
column block's old column factors): the compiler cannot hoist loads out of the loops itself, since it
cannot rule out that the loop's stores alias them. Offsets inside a block of rows are int32 from that
block's first row (an int64 base), and a tensor's kind is a branch per program, not a mask per element:

* a factored tensor whose rows and addresses are whole 16-byte units (``aligned``, see
  :func:`smmf.triton_backend.vector_ready`) runs the same code with alignment hints, so that its
  parameter and gradient loads and stores are vectors (8 bytes a thread in bf16, 16 in fp32 with
  blocks of 4 rows) and its column sums are added up element-wise over a tile's rows and reduced
  once per column block;
* any other factored tensor runs it without hints, a strided one (a channels-last weight: its parameter
  and gradient not in row-major order, :mod:`smmf.placement`) reading and writing each element where
  it lies;
* a tensor with dense moments (``vector_reshape=False``) runs the plain element-wise update.

A factored tensor's block is two-dimensional, rows by 8 planes of sign bytes, so that each row is one
warp's: its sums and sign bytes are reduced within the warp, and the loop's only exchange between
warps is the store of the rows' sums (two barriers a block, where a 3-D block took 6 to 11 as Triton
3.8 and 3.6 broke a tie in its layout; benchmarks/kernel_sass.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_arithmetic import divided, store_param, stream_key
from .triton_dense import dense_tile
from .triton_kernels import (
    _HP_EPS,
    _HP_SIGN,
    _HP_WD_COUPLED,
    _HP_WD_DECOUPLED,
    COL_ALIGNED,
    COL_COL_M,
    COL_COL_PART,
    COL_COL_TILES,
    COL_COL_V,
    COL_DENSE,
    COL_DIVIDE_Q,
    COL_DIVIDE_R,
    COL_G,
    COL_N,
    COL_P,
    COL_PLACE_K,
    COL_PLACE_Q,
    COL_PLACE_R,
    COL_ROW_M,
    COL_ROW_PART,
    COL_ROW_TILES,
    COL_ROW_V,
    COL_SEED,
    COL_SIGN,
    COL_STEP,
    COL_TILE0,
    TABLE_COLS,
    _geometry,
    _pointer,
    _ptr,
    _schedules,
)


@triton.jit
def step_tiles(
    table, tile_map, flags, hp, lr_ptr, scratch, flag_copies, tile_rows, tile_bytes,
    P_DT: tl.constexpr, G_DT: tl.constexpr, ACC: tl.constexpr, HAS_M: tl.constexpr, PACKED: tl.constexpr,
    STOCHASTIC: tl.constexpr, PREFETCH: tl.constexpr, ROW_CHUNK: tl.constexpr, STAGES: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    """Pass 1 for one tile: reads the old factors and signs (or dense moments) once, computes the
    moments and the update, writes the parameter and the new signs, and writes the tile's row and
    column sums of |M| and V into its own scratch slots. ``hp`` holds the hyperparameters in the layout
    of :mod:`smmf.kernels`. A tensor flagged by pass 0 is neither read nor written; its first tile
    copies the flag to ``flag_copies`` for pass 2's column programs. With PREFETCH, a factored tile
    issues the loads of its next block of rows before it computes on the current one; with ROW_CHUNK,
    it steps that many rows through all its column blocks before the next rows (0: all its rows); with
    STAGES > 1, the loop over a column block's rows is pipelined (smmf.triton_launch.Pass1Launch)."""
    tile = tl.program_id(0)
    tensor = tl.load(tile_map + tile).to(tl.int64)
    one_tile(
        table, tile, tensor, tl.load(flags + tensor), hp, lr_ptr, scratch, flag_copies, tile_rows, tile_bytes,
        P_DT, G_DT, ACC, HAS_M, PACKED, STOCHASTIC, PREFETCH, ROW_CHUNK, STAGES, BLOCK_R, BLOCK_J,
    )  # fmt: skip


@triton.jit
def one_tile(
    table, tile, tensor, flag, hp, lr_ptr, scratch, flag_copies, tile_rows, tile_bytes,
    P_DT: tl.constexpr, G_DT: tl.constexpr, ACC: tl.constexpr, HAS_M: tl.constexpr, PACKED: tl.constexpr,
    STOCHASTIC: tl.constexpr, PREFETCH: tl.constexpr, ROW_CHUNK: tl.constexpr, STAGES: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    """Pass 1's work for tile ``tile`` of ``tensor``, whose pass-0 ``flag`` is known (its own launch,
    :func:`step_tiles`, or the queue of :mod:`smmf.triton_queue`)."""
    row = table + tensor * TABLE_COLS
    if tile == tl.load(row + COL_TILE0):
        tl.store(flag_copies + tensor, flag)
    if flag == 0:
        hyper = _hyperparameters(row, hp, lr_ptr, ACC, STOCHASTIC)
        if tl.load(row + COL_DENSE) != 0:
            dense_tile(row, tile, tile_rows, tile_bytes, hyper, P_DT, G_DT, ACC, HAS_M, STOCHASTIC, BLOCK_R, BLOCK_J)
        elif tl.load(row + COL_ALIGNED) != 0:
            _factored_tile(
                row, tile, scratch, tile_rows, tile_bytes, hyper,
                P_DT, G_DT, ACC, HAS_M, PACKED, STOCHASTIC, True, PREFETCH, ROW_CHUNK, STAGES, BLOCK_R, BLOCK_J,
            )  # fmt: skip
        else:
            _factored_tile(
                row, tile, scratch, tile_rows, tile_bytes, hyper,
                P_DT, G_DT, ACC, HAS_M, PACKED, STOCHASTIC, False, PREFETCH, ROW_CHUNK, STAGES, BLOCK_R, BLOCK_J,
            )  # fmt: skip


@triton.jit
def _hyperparameters(row, hp, lr_ptr, ACC: tl.constexpr, STOCHASTIC: tl.constexpr):
    """What a tile's update takes beyond its elements, the same for the whole tensor this step:
    (lr, p_scale, g_sign, wd_coupled, eps, beta1, beta2, rounding key), for
    g <- g * g_sign + wd_coupled * p and p <- p * p_scale - lr * M / (sqrt(V) + eps)."""
    step_ptr = _ptr(row, COL_STEP, tl.float32)
    beta1, beta2 = _schedules(step_ptr, hp, ACC)
    lr = tl.load(lr_ptr).to(ACC)
    key = 0
    if STOCHASTIC:
        key = stream_key(tl.load(_ptr(row, COL_SEED, tl.int64)), tl.load(step_ptr).to(tl.int64) + 1)
    p_scale = 1.0 - lr * tl.load(hp + _HP_WD_DECOUPLED)
    return lr, p_scale, tl.load(hp + _HP_SIGN), tl.load(hp + _HP_WD_COUPLED), tl.load(hp + _HP_EPS), beta1, beta2, key


@triton.jit
def _factored_tile(
    row, tile, scratch, tile_rows, tile_bytes, hyper,
    P_DT: tl.constexpr, G_DT: tl.constexpr, ACC: tl.constexpr, HAS_M: tl.constexpr, PACKED: tl.constexpr,
    STOCHASTIC: tl.constexpr, ALIGNED: tl.constexpr, PREFETCH: tl.constexpr, ROW_CHUNK: tl.constexpr,
    STAGES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    """A tile of a factored tensor, a chunk of its rows at a time (ROW_CHUNK rows, or all of them), each
    chunk column block by column block, each block of rows by rows: the row sums of a block go to the
    tile's scratch slot (added to those of the column blocks before), the column sums are kept in
    registers and stored once per column block and chunk (added to those of the chunks before). A block
    is BLOCK_R rows by 8 * BLOCK_J lanes, lane c holding column plane * width + j (plane = c // BLOCK_J,
    j = j0 + c % BLOCK_J): two dimensions, so that Triton gives each row to one warp whatever its
    version, and a row's sums and sign bytes are reduced within it (a 3-D block's layout depends on how
    a version breaks ties). Chunks of a few blocks of rows read a row's runs of neighbouring column
    blocks soon after one another, while the first run's memory may still be in L2."""
    m64, m, width, row_tile, col_tile, r_start, r_end, j_start, j_end = _geometry(
        row, tile, tile_rows, tile_bytes, ALIGNED
    )
    row_part, row_part_m, col_part, col_part_m = _scratch_slots(row, scratch, row_tile, col_tile, m64)
    state = (
        _pointer(row, COL_P, P_DT, ALIGNED), _pointer(row, COL_G, G_DT, ALIGNED),
        _pointer(row, COL_SIGN, tl.uint8, ALIGNED), _pointer(row, COL_ROW_V, ACC, ALIGNED),
        _pointer(row, COL_ROW_M, ACC, ALIGNED), row_part, row_part_m, _placement(row, ALIGNED),
    )  # fmt: skip
    factors = (_pointer(row, COL_COL_V, ACC, ALIGNED), _pointer(row, COL_COL_M, ACC, ALIGNED), col_part, col_part_m)
    tile_at = (m64, m, width, j_start, j_end)
    # two calls, not one loop whose step is the tile's rows when ROW_CHUNK is 0: that loop of one chunk
    # cost Triton 3.8 8 bytes of spills with stochastic rounding (benchmarks/kernel_sass.py's counts)
    if ROW_CHUNK > 0:
        for c0 in range(r_start, r_end, ROW_CHUNK):
            _column_blocks(
                state, factors, tile_at, c0, tl.minimum(c0 + ROW_CHUNK, r_end), c0 > r_start, hyper,
                P_DT, ACC, HAS_M, PACKED, STOCHASTIC, ALIGNED, PREFETCH, STAGES, BLOCK_R, BLOCK_J,
            )  # fmt: skip
    else:
        _column_blocks(
            state, factors, tile_at, r_start, r_end, False, hyper,
            P_DT, ACC, HAS_M, PACKED, STOCHASTIC, ALIGNED, PREFETCH, STAGES, BLOCK_R, BLOCK_J,
        )  # fmt: skip


@triton.jit
def _column_blocks(
    state, factors, tile_at, c0, c_end, later_chunk, hyper,
    P_DT: tl.constexpr, ACC: tl.constexpr, HAS_M: tl.constexpr, PACKED: tl.constexpr, STOCHASTIC: tl.constexpr,
    ALIGNED: tl.constexpr, PREFETCH: tl.constexpr, STAGES: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_J: tl.constexpr,
):  # fmt: skip
    """Rows c0 to c_end of a tile, column block by column block, a block of rows at a time (``tile_at``:
    the tensor's m as int64 and int32, its sign bytes a row, and the tile's first and end byte); each
    column block's sums stored to the tile's slots, added to those of the chunks before (``later_chunk``)."""
    col_v, col_m, col_part, col_part_m = factors
    m64, m, width, j_start, j_end = tile_at
    lane = tl.arange(0, 8 * BLOCK_J)
    for j0 in range(j_start, j_end, BLOCK_J):
        if ALIGNED:
            j0 = tl.multiple_of(j0, 16)
        tl.debug_barrier()  # this program's row and column sums of the blocks before are in scratch
        j = j0 + lane % BLOCK_J
        col = lane // BLOCK_J * width + j
        col_ok = (j < j_end) & (col < m)
        # the column block: where its lanes lie, and what every block of its rows shares
        where = (m64, m, width, j, col, col_ok, j0 > j_start)  # later blocks add to the row sums of the first
        col_v_old = tl.load(col_v + col, mask=col_ok, other=0.0)
        col_m_old = col_v_old
        if HAS_M:
            col_m_old = tl.load(col_m + col, mask=col_ok, other=0.0)
        sums_v, sums_m = _column_accumulators(BLOCK_R, BLOCK_J, ACC, ALIGNED)
        if PREFETCH:
            ahead = _rows_in(state, where, c0, c_end, HAS_M, PACKED, ALIGNED, BLOCK_R)
        # STAGES > 1: Triton issues the loads of STAGES - 1 blocks ahead into shared memory (cp.async);
        # safe, as no block of this loop loads what another stores: each reads and writes its own rows
        for r0 in tl.range(c0, c_end, BLOCK_R, num_stages=STAGES):
            if PREFETCH:  # this block's loads went out an iteration ago; the next block's go out now
                rows = ahead
                ahead = _rows_in(state, where, r0 + BLOCK_R, c_end, HAS_M, PACKED, ALIGNED, BLOCK_R)
            else:
                rows = _rows_in(state, where, r0, c_end, HAS_M, PACKED, ALIGNED, BLOCK_R)
            sums_v, sums_m = _rows_out(
                rows, state, where, r0, c_end, col_v_old, col_m_old, sums_v, sums_m, hyper,
                P_DT, ACC, HAS_M, PACKED, STOCHASTIC, ALIGNED, BLOCK_R,
            )  # fmt: skip
        before = col_ok & later_chunk
        sums = tl.load(col_part + col, mask=before, other=0.0) + _column_sums(sums_v, ALIGNED)
        tl.store(col_part + col, sums, mask=col_ok)
        if HAS_M:
            sums = tl.load(col_part_m + col, mask=before, other=0.0) + _column_sums(sums_m, ALIGNED)
            tl.store(col_part_m + col, sums, mask=col_ok)


@triton.jit
def _rows_in(
    state, where, r0, r_end, HAS_M: tl.constexpr, PACKED: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_R: tl.constexpr
):  # fmt: skip
    """Everything pass 1 loads for the BLOCK_R rows from r0 of a column block (nothing at or past
    r_end), as stored: the parameter and gradient, the old sign bits (when packed, each lane loads the
    byte that holds its bit), the rows' factors of V and |M| and the row sums earlier column blocks left
    in scratch. Loaded in one place, so that they can be issued an iteration ahead of the arithmetic."""
    p_ptr, g_ptr, sign, row_v, row_m, row_part, row_part_m, placement = state
    m64, m, width, j, col, col_ok, later = where
    r = r0 + tl.arange(0, BLOCK_R)
    rows_ok = r < r_end
    offs = tl.arange(0, BLOCK_R)[:, None] * m + col[None, :]
    ok = rows_ok[:, None] & col_ok[None, :]
    start, at = _in_memory(m64 * r0, offs, placement, ALIGNED)
    p = tl.load(p_ptr + start + at, mask=ok, other=0.0)
    g = tl.load(g_ptr + start + at, mask=ok, other=0.0)
    row_v_old = tl.load(row_v + r, mask=rows_ok, other=0.0)
    row_sums_v = tl.load(row_part + r, mask=rows_ok & later, other=0.0)
    row_m_old, row_sums_m, old_signs = row_v_old, row_sums_v, row_sums_v
    if HAS_M:
        row_m_old = tl.load(row_m + r, mask=rows_ok, other=0.0)
        row_sums_m = tl.load(row_part_m + r, mask=rows_ok & later, other=0.0)
        if PACKED:
            bytes_off = tl.arange(0, BLOCK_R)[:, None] * width + j[None, :]
            bytes_ok = rows_ok[:, None] & (j < width)[None, :]
            old_signs = tl.load(sign + width.to(tl.int64) * r0 + bytes_off, mask=bytes_ok, other=0)
        else:
            old_signs = tl.load(sign + m64 * r0 + offs, mask=ok, other=0)
    return p, g, old_signs, row_v_old, row_m_old, row_sums_v, row_sums_m


@triton.jit
def _rows_out(
    rows, state, where, r0, r_end, col_v_old, col_m_old, sums_v, sums_m, hyper,
    P_DT: tl.constexpr, ACC: tl.constexpr, HAS_M: tl.constexpr, PACKED: tl.constexpr,
    STOCHASTIC: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The update of the BLOCK_R rows from r0 that :func:`_rows_in` loaded (``rows``): the moments, the
    parameter and new signs written, the rows' sums stored; returns the column sums with theirs added."""
    p_ptr, _, sign, _, _, row_part, row_part_m, placement = state
    m64, m, width, j, col, col_ok, _ = where
    lr, p_scale, g_sign, wd_coupled, eps, beta1, beta2, key = hyper
    p_old, g_old, old_signs, row_v_old, row_m_old, row_sums_v, row_sums_m = rows
    r = r0 + tl.arange(0, BLOCK_R)
    rows_ok = r < r_end
    offs = tl.arange(0, BLOCK_R)[:, None] * m + col[None, :]
    ok = rows_ok[:, None] & col_ok[None, :]
    base = m64 * r0
    p = p_old.to(ACC)
    g = g_old.to(ACC) * g_sign + wd_coupled * p
    v = beta2 * (row_v_old[:, None] * col_v_old[None, :]) + (1.0 - beta2) * (g * g)
    mom = g
    if HAS_M:
        m_abs_old = row_m_old[:, None] * col_m_old[None, :]
        mom = _signed_moment(
            sign, r0, width, rows_ok, j, offs, ok, base, old_signs, m_abs_old, g, beta1, PACKED, BLOCK_R
        )
    start, at = _in_memory(base, offs, placement, ALIGNED)
    store_param(p_ptr + start + at, ok, p * p_scale, mom, v, lr, eps, key, base, offs, P_DT, STOCHASTIC)
    # the rows' sums added to what the tile's slots held (0 in a tile's first column block); |M|'s and
    # V's stored as one tensor, as they leave the block's layout through one exchange between warps
    if HAS_M:
        m_abs = tl.abs(mom)
        both = tl.join(row_sums_v + tl.sum(v, axis=1), row_sums_m + tl.sum(m_abs, axis=1))
        tl.store(tl.join(row_part + r, row_part_m + r), both, mask=tl.join(rows_ok, rows_ok))
        sums_m = _add_columns(sums_m, m_abs, ALIGNED)
    else:
        tl.store(row_part + r, row_sums_v + tl.sum(v, axis=1), mask=rows_ok)
    return _add_columns(sums_v, v, ALIGNED), sums_m


@triton.jit
def _placement(row, ALIGNED: tl.constexpr):
    """(place_k, place_q, place_r, and the magic multiplier and shift of d2 and of d1) from the table
    row (smmf.triton_kernels.TABLE_COLUMNS); aligned tensors are in row-major order."""
    if ALIGNED:
        return 0, 0, 0, 0, 0, 0, 0
    else:
        divide_q = tl.load(row + COL_DIVIDE_Q)
        divide_r = tl.load(row + COL_DIVIDE_R)
        return (
            tl.load(row + COL_PLACE_K).to(tl.int32), tl.load(row + COL_PLACE_Q).to(tl.int32),
            tl.load(row + COL_PLACE_R).to(tl.int32), (divide_q & 0xFFFFFFFF).to(tl.uint32),
            (divide_q >> 32).to(tl.uint32), (divide_r & 0xFFFFFFFF).to(tl.uint32), (divide_r >> 32).to(tl.uint32),
        )  # fmt: skip


@triton.jit
def _in_memory(base, offs, placement, ALIGNED: tl.constexpr):
    """(int64 start, int32 offsets from it) in memory of the parameter and gradient elements at row-major
    index ``base + offs``: the same but for a strided tensor, whose offsets are counted from its first
    element by its placement (:func:`_placement`; int32 arithmetic that wraps, exact as the offsets of
    such a tensor are below 2**31)."""
    if ALIGNED:
        return base, offs
    else:
        place_k, place_q, place_r, magic_q, shift_q, magic_r, shift_r = placement
        start = base
        at = offs
        if place_k != 0:
            k = base.to(tl.int32) + offs
            q = divided(k, magic_q, shift_q)
            at = k * place_k + q * place_q + divided(q, magic_r, shift_r) * place_r
            start = base * 0
        return start, at


@triton.jit
def _column_accumulators(BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr, ALIGNED: tl.constexpr):
    """Aligned tiles add whole blocks and reduce over rows once (rows are spread over warps, so a
    reduction per block would cost a shared-memory round trip); others reduce every block."""
    if ALIGNED:
        return tl.zeros((BLOCK_R, 8 * BLOCK_J), dtype=ACC), tl.zeros((BLOCK_R, 8 * BLOCK_J), dtype=ACC)
    else:
        return tl.zeros((8 * BLOCK_J,), dtype=ACC), tl.zeros((8 * BLOCK_J,), dtype=ACC)


@triton.jit
def _scratch_slots(row, scratch, row_tile, col_tile, m64):
    """This tile's scratch slots: its row sums of V and |M| (one slot per column tile, n long) and its
    column sums of V and |M| (one slot per row tile, m long)."""
    n64 = tl.load(row + COL_N)
    row_part = scratch + tl.load(row + COL_ROW_PART) + col_tile.to(tl.int64) * n64
    col_part = scratch + tl.load(row + COL_COL_PART) + row_tile.to(tl.int64) * m64
    return (
        row_part,
        row_part + n64 * tl.load(row + COL_COL_TILES),
        col_part,
        col_part + tl.load(row + COL_ROW_TILES) * m64,
    )


@triton.jit
def _add_columns(column_sums, block, ALIGNED: tl.constexpr):
    """``column_sums`` with a block added in (summed over its rows unless the tile is aligned)."""
    if ALIGNED:
        return column_sums + block
    else:
        return column_sums + tl.sum(block, axis=0)


@triton.jit
def _column_sums(sums, ALIGNED: tl.constexpr):
    if ALIGNED:
        return tl.sum(sums, axis=0)
    else:
        return sums


@triton.jit
def _signed_moment(
    sign, r0, width, rows_ok, j, offs, ok, base, old_signs, m_abs_old, g, beta1,
    PACKED: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The new first moment of a factored block, from |M| rebuilt from the factors and the old signs
    (``old_signs``: as stored, one byte per lane); the new signs stored (exact zeros count as negative,
    as in the reference). Packed: byte j of a sign row holds columns k * width + j in bit k, so packing
    is a sum over the block's planes of lanes; plane 0's lanes store the bytes."""
    lanes: tl.constexpr = g.shape[1]
    plane = tl.arange(0, lanes) // (lanes // 8)
    if PACKED:
        old = (old_signs.to(tl.int32) >> plane[None, :]) & 1
    else:
        old = old_signs.to(tl.int32)
    mom = beta1 * tl.where(old != 0, m_abs_old, -m_abs_old) + (1.0 - beta1) * g
    positive = (mom > 0).to(tl.int32)
    if PACKED:
        planes = tl.reshape(positive << plane[None, :], (BLOCK_R, 8, lanes // 8))
        packed = tl.broadcast_to(tl.expand_dims(tl.sum(planes, axis=1), 1), (BLOCK_R, 8, lanes // 8))
        tl.store(
            sign + width.to(tl.int64) * r0 + tl.arange(0, BLOCK_R)[:, None] * width + j[None, :],
            tl.reshape(packed, (BLOCK_R, lanes)).to(tl.uint8),
            mask=rows_ok[:, None] & ((j < width) & (plane == 0))[None, :],
        )
    else:
        tl.store(sign + base + offs, positive.to(tl.uint8), mask=ok)
    return mom
