"""Pass 1 of the Triton step for a tile of a tensor with dense moments (``vector_reshape=False``):
Adam's element-wise update without bias correction, called from :func:`smmf.triton_tile.step_tiles`
in the same tile geometry as factored tensors."""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_arithmetic import store_param
from .triton_kernels import COL_EXP_AVG, COL_EXP_AVG_SQ, COL_G, COL_P, _geometry, _ptr


@triton.jit
def dense_tile(
    row, tile, tile_rows, tile_bytes, hyper,
    P_DT: tl.constexpr, G_DT: tl.constexpr, ACC: tl.constexpr, HAS_M: tl.constexpr, STOCHASTIC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    """A tile of a tensor with dense moments (exp_avg_sq, and exp_avg with a first moment): Adam's
    element-wise update without bias correction, in the same tile geometry."""
    lr, p_scale, g_sign, wd_coupled, eps, beta1, beta2, key = hyper
    m64, m, width, _, _, r_start, r_end, j_start, j_end = _geometry(row, tile, tile_rows, tile_bytes, False)
    p_ptr = _ptr(row, COL_P, P_DT)
    g_ptr = _ptr(row, COL_G, G_DT)
    exp_avg_sq = _ptr(row, COL_EXP_AVG_SQ, ACC)
    exp_avg = _ptr(row, COL_EXP_AVG, ACC)
    for j0 in range(j_start, j_end, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)[None, None, :]
        col = tl.arange(0, 8)[None, :, None] * width + j
        col_ok = (j < j_end) & (col < m)
        for r0 in range(r_start, r_end, BLOCK_R):
            rows_ok = r0 + tl.arange(0, BLOCK_R) < r_end
            g, p, ok, offs, base = _load_block(
                p_ptr, g_ptr, r0, m64, m, rows_ok, col, col_ok, g_sign, wd_coupled, ACC, BLOCK_R
            )
            v = beta2 * tl.load(exp_avg_sq + base + offs, mask=ok, other=0.0) + (1.0 - beta2) * (g * g)
            tl.store(exp_avg_sq + base + offs, v, mask=ok)
            mom = g
            if HAS_M:
                mom = beta1 * tl.load(exp_avg + base + offs, mask=ok, other=0.0) + (1.0 - beta1) * g
                tl.store(exp_avg + base + offs, mom, mask=ok)
            store_param(p_ptr + base + offs, ok, p * p_scale, mom, v, lr, eps, key, base, offs, P_DT, STOCHASTIC)


@triton.jit
def _load_block(
    p_ptr, g_ptr, r0, m64, m, rows_ok, col, col_ok, g_sign, wd_coupled, ACC: tl.constexpr, BLOCK_R: tl.constexpr
):
    """The gradient (sign for maximize, coupled weight decay applied) and parameter of a block of
    BLOCK_R rows from row r0, in ACC; its mask, int32 offsets from row r0 and that row's int64 offset."""
    offs = tl.arange(0, BLOCK_R)[:, None, None] * m + col
    ok = rows_ok[:, None, None] & col_ok
    base = m64 * r0
    p = tl.load(p_ptr + base + offs, mask=ok, other=0.0).to(ACC)
    g = tl.load(g_ptr + base + offs, mask=ok, other=0.0).to(ACC)
    return g * g_sign + wd_coupled * p, p, ok, offs, base
