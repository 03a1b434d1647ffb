"""Triton kernels of the multi-tensor SMMF step: four launches update every tensor of a bucket.

A bucket's tensors are described by a device table (:mod:`smmf.triton_backend` builds it), one int64
row per tensor holding the addresses of its parameter, gradient, sign, factors and step counter, its
(n, m) view and where its tiles and scratch slots start. Launches never depend on the tensor count:

* :func:`check_gradients` (pass 0), one program per tile: flags a tensor whose gradient holds a
  non-finite element or one whose square overflows; such a tensor keeps its parameter and state for
  this step and counts it in ``skipped`` (the flag is the maximum of 0/1 values, so the order in which
  tiles set it cannot change the result).
* :func:`step_tiles` (pass 1), one program per tile of ``tile_rows`` rows by ``tile_bytes`` sign bytes
  (8 columns each) of some tensor: reads the old factors and signs once, computes the moments and the
  update, writes the parameter and the new signs, and writes this tile's row and column sums of |M|
  and V into its own scratch slots.
* :func:`reduce_factors` (pass 2), one program per tensor for its step counter and one per block of
  its rows or columns: sums the slots in a fixed order into the new row factors, and into the column
  sums (kept in the first column slot).
* :func:`normalize_columns` (pass 3), one program per block of a tensor's columns: the new column
  factors, column sums divided by their total.

No atomics, so runs are bitwise reproducible; factors change only in passes 2 and 3, after every tile
has read the old ones. Tiles follow the sign layout of :mod:`smmf.signpack`: a tile of whole sign bytes covers
columns ``k*B + j`` for planes k = 0..7, loaded as a (rows, 8, bytes) block, so packing a sign byte is
a sum over the plane axis and no two tiles share a byte.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import kernels

# Columns of the tensor table (int64), as constexprs so that kernels can read them as globals.
TABLE_COLUMNS = (
    "p", "g", "sign", "row_m", "col_m", "row_v", "col_v", "exp_avg", "exp_avg_sq", "step",
    "n", "m", "row_bytes", "first_tile", "col_tiles", "row_tiles", "row_part", "col_part", "dense", "skipped", "seed",
)  # fmt: skip
(
    COL_P, COL_G, COL_SIGN, COL_ROW_M, COL_COL_M, COL_ROW_V, COL_COL_V, COL_EXP_AVG, COL_EXP_AVG_SQ, COL_STEP,
    COL_N, COL_M, COL_B, COL_TILE0, COL_COL_TILES, COL_ROW_TILES, COL_ROW_PART, COL_COL_PART, COL_DENSE,
    COL_SKIPPED, COL_SEED,
) = (tl.constexpr(i) for i in range(len(TABLE_COLUMNS)))  # fmt: skip
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
def _tile_bounds(row, tile, tile_rows, tile_bytes):
    """(first row, end row, first byte, end byte) of this tile of its tensor."""
    col_tiles = tl.load(row + COL_COL_TILES)
    local = tile - tl.load(row + COL_TILE0)
    r_start = (local // col_tiles) * tile_rows
    j_start = (local % col_tiles) * tile_bytes
    return (
        r_start,
        tl.minimum(tl.load(row + COL_N), r_start + tile_rows),
        j_start,
        tl.minimum(tl.load(row + COL_B), j_start + tile_bytes),
    )


@triton.jit
def check_gradients(
    table, tile_map, flags, tile_rows, tile_bytes,
    G_DT: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    """Pass 0 for one tile: set flags[tensor] to 1 if any gradient element g of the tile has a
    non-finite g * g (NaN, inf, or |g| past the square root of the largest float)."""
    tile = tl.program_id(0)
    tensor = tl.load(tile_map + tile).to(tl.int64)
    row = table + tensor * TABLE_COLS
    r_start, r_end, j_start, j_end = _tile_bounds(row, tile, tile_rows, tile_bytes)
    m = tl.load(row + COL_M)
    width = tl.load(row + COL_B)
    g_ptr = _ptr(row, COL_G, G_DT)
    plane = tl.arange(0, 8)[None, :, None]
    bad = tl.zeros((BLOCK_R, 8, BLOCK_J), dtype=tl.int32)
    for j0 in range(j_start, j_end, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)[None, None, :]
        col = plane * width + j
        for r0 in range(r_start, r_end, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)[:, None, None]
            ok = (r < r_end) & (j < j_end) & (col < m)
            g = tl.load(g_ptr + r * m + col, mask=ok, other=0.0).to(ACC)
            bad = tl.maximum(bad, (~(g * g < _INF)).to(tl.int32))
    any_bad = tl.max(tl.max(tl.max(bad, axis=2), axis=1), axis=0)
    if any_bad > 0:
        tl.atomic_max(flags + tensor, any_bad)


@triton.jit
def step_tiles(
    table, tile_map, flags, hp, lr_ptr, scratch, flag_copies, tile_rows, tile_bytes,
    P_DT: tl.constexpr, G_DT: tl.constexpr, ACC: tl.constexpr, HAS_M: tl.constexpr, PACKED: tl.constexpr,
    STOCHASTIC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    """Pass 1 for one tile; ``hp`` holds the hyperparameters in the layout of :mod:`smmf.kernels`.
    A tensor flagged by pass 0 is neither read nor written; its first tile copies the flag to
    ``flag_copies`` for pass 2's column programs (pass 2's row program clears the flag itself)."""
    tile = tl.program_id(0)
    tensor = tl.load(tile_map + tile).to(tl.int64)
    row = table + tensor * TABLE_COLS
    n = tl.load(row + COL_N)
    m = tl.load(row + COL_M)
    width = tl.load(row + COL_B)
    col_tiles = tl.load(row + COL_COL_TILES)
    flag = tl.load(flags + tensor)
    dense = tl.load(row + COL_DENSE) != 0
    if tile == tl.load(row + COL_TILE0):
        tl.store(flag_copies + tensor, flag)
    row_tile = (tile - tl.load(row + COL_TILE0)) // col_tiles
    col_tile = (tile - tl.load(row + COL_TILE0)) % col_tiles
    r_start, r_end, j_start, j_end = _tile_bounds(row, tile, tile_rows, tile_bytes)
    r_end = tl.where(flag != 0, r_start, r_end)  # a skipped tensor: no rows, nothing read or written
    row_part = scratch + tl.load(row + COL_ROW_PART)
    col_part = scratch + tl.load(row + COL_COL_PART)
    rr = tl.arange(0, BLOCK_R)
    kk = tl.arange(0, 8)
    jj = tl.arange(0, BLOCK_J)
    for j0 in range(j_start, j_end, BLOCK_J):
        tl.debug_barrier()  # this program's row sums of the previous column block are in scratch
        j = j0 + jj[None, None, :]
        col = kk[None, :, None] * width + j
        col_ok = (j < j_end) & (col < m)
        sum_col_v = tl.zeros((8, BLOCK_J), dtype=ACC)
        sum_col_m = tl.zeros((8, BLOCK_J), dtype=ACC)
        for r0 in range(r_start, r_end, BLOCK_R):
            v, mom = _update_rows(
                row, hp, lr_ptr, r0, r_end, j, col, col_ok, dense,
                P_DT, G_DT, ACC, HAS_M, PACKED, STOCHASTIC, BLOCK_R,
            )  # fmt: skip
            rows_ok = (rr + r0 < r_end) & ~dense
            later = j0 > j_start  # later column blocks add to the row sums the first one wrote
            _add_row_sums(row_part, n, col_tile, r0 + rr, rows_ok, tl.sum(tl.sum(v, axis=2), axis=1), later)
            sum_col_v += tl.sum(v, axis=0)
            if HAS_M:
                mom_abs = tl.abs(mom)
                row_part_m = row_part + n * col_tiles
                _add_row_sums(row_part_m, n, col_tile, r0 + rr, rows_ok, tl.sum(tl.sum(mom_abs, axis=2), axis=1), later)
                sum_col_m += tl.sum(mom_abs, axis=0)
        col2 = kk[:, None] * width + j0 + jj[None, :]
        col2_ok = (j0 + jj[None, :] < j_end) & (col2 < m) & ~dense
        tl.store(col_part + row_tile * m + col2, sum_col_v, mask=col2_ok)
        if HAS_M:
            rows_total = tl.load(row + COL_ROW_TILES)
            tl.store(col_part + rows_total * m + row_tile * m + col2, sum_col_m, mask=col2_ok)


@triton.jit
def _update_rows(
    row, hp, lr_ptr, r0, r_end, j, col, col_ok, dense,
    P_DT: tl.constexpr, G_DT: tl.constexpr, ACC: tl.constexpr, HAS_M: tl.constexpr, PACKED: tl.constexpr,
    STOCHASTIC: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """One (BLOCK_R, 8, BLOCK_J) block of a tile: moments, update, the parameter and the new signs
    written; returns the block's V and M for the tile's partial sums."""
    m = tl.load(row + COL_M)
    r = r0 + tl.arange(0, BLOCK_R)[:, None, None]
    row_ok = r < r_end
    ok = row_ok & col_ok
    offs = r * m + col
    step_ptr = _ptr(row, COL_STEP, tl.float32)
    beta1, beta2 = _schedules(step_ptr, hp, ACC)
    lr = tl.load(lr_ptr).to(ACC)
    p_ptr = _ptr(row, COL_P, P_DT)
    p = tl.load(p_ptr + offs, mask=ok, other=0.0).to(ACC)
    g = tl.load(_ptr(row, COL_G, G_DT) + offs, mask=ok, other=0.0).to(ACC)
    g = g * tl.load(hp + _HP_SIGN) + tl.load(hp + _HP_WD_COUPLED) * p
    p = p * (1.0 - lr * tl.load(hp + _HP_WD_DECOUPLED))
    col_v_old = tl.load(_ptr(row, COL_COL_V, ACC) + col, mask=col_ok & ~dense, other=0.0)
    v_factored = tl.load(_ptr(row, COL_ROW_V, ACC) + r, mask=row_ok & ~dense, other=0.0) * col_v_old
    exp_avg_sq = _ptr(row, COL_EXP_AVG_SQ, ACC)
    v_old = tl.where(dense, tl.load(exp_avg_sq + offs, mask=ok & dense, other=0.0), v_factored)
    v = beta2 * v_old + (1.0 - beta2) * (g * g)
    tl.store(exp_avg_sq + offs, v, mask=ok & dense)
    denom = tl.sqrt(v) + tl.load(hp + _HP_EPS)
    if HAS_M:
        col_m_old = tl.load(_ptr(row, COL_COL_M, ACC) + col, mask=col_ok & ~dense, other=0.0)
        width = tl.load(row + COL_B)
        mom = _first_moment(row, r, j, offs, ok, row_ok, col_m_old, g, beta1, dense, width, ACC, PACKED)
    else:
        mom = g
    new_p = p - lr * tl.where(denom > 0, mom / tl.where(denom > 0, denom, 1.0), 0.0)
    if STOCHASTIC:
        step = tl.load(step_ptr).to(tl.int64) + 1
        bits = _random_bits(tl.load(_ptr(row, COL_SEED, tl.int64)), step, offs.to(tl.int64))
        tl.store(p_ptr + offs, _stochastic_bf16(new_p.to(tl.float32), bits), mask=ok)
    else:
        tl.store(p_ptr + offs, _to_param_dtype(new_p, P_DT), mask=ok)
    return v, mom


@triton.jit
def _mix(x):
    """The 31-bit integer hash of smmf.rounding, on int64 values."""
    x = x & 0x7FFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0x7FFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0x7FFFFFFF
    return x ^ (x >> 16)


@triton.jit
def _random_bits(seed, step, index):
    return _mix(index ^ _mix(seed ^ _mix(step)))


@triton.jit
def _stochastic_bf16(x, bits):
    """float32 x to bfloat16, rounded away from zero with probability (dropped bits) / 2^16, as
    smmf.rounding.stochastic_round_bf16 does; the cast at the end is exact."""
    raw = x.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    kept = (raw + (bits & 0xFFFF)) & 0xFFFF0000
    signed = tl.where(kept >= 2147483648, kept - 4294967296, kept).to(tl.int32)
    return tl.where(x != x, x, signed.to(tl.float32, bitcast=True)).to(tl.bfloat16)


@triton.jit
def _to_param_dtype(x, P_DT: tl.constexpr):
    """x in the parameter's dtype, rounded to nearest even. bf16 is rounded by hand: Triton's
    interpreter truncates on that cast, and the result is then exact in every mode."""
    if P_DT == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))
    return x.to(P_DT)


@triton.jit
def _first_moment(
    row, r, j, offs, ok, row_ok, col_m_old, g, beta1, dense, width, ACC: tl.constexpr, PACKED: tl.constexpr
):
    """The new first moment of a block: from the old signs and factors (or the dense exp_avg), and the
    new signs stored (exact zeros count as negative, as in the reference)."""
    sign = _ptr(row, COL_SIGN, tl.uint8)
    exp_avg = _ptr(row, COL_EXP_AVG, ACC)
    factored = ok & ~dense
    if PACKED:
        byte_off = r * width + j
        byte_ok = row_ok & (j < width) & ~dense
        bits = (tl.load(sign + byte_off, mask=byte_ok, other=0).to(tl.int32) >> tl.arange(0, 8)[None, :, None]) & 1
    else:
        bits = tl.load(sign + offs, mask=factored, other=0).to(tl.int32)
    m_hat = (bits * 2 - 1).to(ACC) * tl.load(_ptr(row, COL_ROW_M, ACC) + r, mask=row_ok & ~dense, other=0.0) * col_m_old
    m_old = tl.where(dense, tl.load(exp_avg + offs, mask=ok & dense, other=0.0), m_hat)
    mom = beta1 * m_old + (1.0 - beta1) * g
    positive = (mom > 0).to(tl.int32)
    if PACKED:
        packed = tl.sum(positive << tl.arange(0, 8)[None, :, None], axis=1)
        tl.store(sign + byte_off, tl.expand_dims(packed, 1).to(tl.uint8), mask=byte_ok)
    else:
        tl.store(sign + offs, positive.to(tl.uint8), mask=factored)
    tl.store(exp_avg + offs, mom, mask=ok & dense)
    return mom


@triton.jit
def _add_row_sums(part, n, slot, rows, ok, sums, accumulate):
    """Write (first column block of a tile) or add (later ones) row sums into this tile's slot."""
    addr = part + slot * n + rows
    previous = tl.load(addr, mask=ok & accumulate, other=0.0)
    tl.store(addr, previous + sums, mask=ok)


@triton.jit
def reduce_factors(table, scratch, flags, flag_copies, ACC: tl.constexpr, HAS_M: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 2: program (t, 0) advances tensor t's step (or, for a tensor flagged by pass 0, its skipped
    count) and clears its flag; program (t, 1 + k) adds up the slots of one BLOCK of t's rows (k below
    its row chunks) into the row factors, or of one BLOCK of its columns (after them) into the first
    column slot, for pass 3 to normalize. Many programs per tensor: no one program sums a large
    tensor's partials alone."""
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
    ok = idx < length
    acc = tl.zeros(idx.shape, dtype=ACC)
    for s in range(slots):
        acc += tl.load(part + s * length + idx, mask=ok, other=0.0)
    return acc


@triton.jit
def _normalized_block(sums, length, idx, out, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out[idx] = sums[idx] / sum(sums[:length]) (or sums[idx] where that total is 0), the total added up
    BLOCK-wise in a fixed order."""
    total = tl.zeros((BLOCK,), dtype=ACC)
    for start in range(0, length, BLOCK):
        block = start + tl.arange(0, BLOCK)
        total += tl.load(sums + block, mask=block < length, other=0.0)
    total_sum = tl.sum(total, axis=0)
    scale = tl.where(total_sum == 0, 1.0, total_sum)
    tl.store(out + idx, tl.load(sums + idx, mask=idx < length, other=0.0) / scale, mask=idx < length)
