"""1-bit sign packing of an (n, m) matrix of first-moment signs: ``ceil(m/8)`` bytes per row.

Layout (state format 2): each row is padded to ``B = ceil(m/8)`` whole bytes, and bit k of byte j of
a row is column ``k*B + j`` ("bit planes" per row; padding bits are zero). A block of whole rows, or of
whole bytes of rows, therefore owns its bytes: row blocks and the Triton backend's tiles never share a
byte, and packing reads and writes contiguous runs that vectorize inside the fused step. For m % 8 == 0
(almost every layer) this is the format-1 layout byte for byte; format 1 packed other widths flat,
eight consecutive row-major elements per byte, which :func:`from_flat_layout` converts.
Bit arithmetic runs in int32 because x86 has no 8-bit vector shifts.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["row_bytes", "packed_numel", "pack_signs", "unpack_bits", "unpack_signs", "from_flat_layout"]


def row_bytes(cols: int) -> int:
    """Bytes that hold one row of ``cols`` sign bits."""
    return (cols + 7) // 8


def packed_numel(rows: int, cols: int) -> int:
    """Bytes that hold the packed signs of a (rows, cols) matrix."""
    return rows * row_bytes(cols)


def _shifts(device: torch.device) -> Tensor:
    return torch.arange(8, dtype=torch.int32, device=device).view(8, 1)


def pack_signs(values: Tensor) -> Tensor:
    """Pack the signs of a (..., rows, cols) tensor, a bit set where a value is > 0 (bools and 0/1
    integers: where true; NaN: unset), into (..., rows * ceil(cols/8)) uint8; leading dimensions batch
    same-shaped matrices. The bit planes are summed as exact small integers in a float dtype: compiled
    into the step's kernels, on the float moment itself, this is cheaper than an integer shift-and-sum."""
    if not values.is_floating_point():
        values = values.to(torch.float32)
    *lead, rows, cols = values.shape
    width = row_bytes(cols)
    if 8 * width != cols:
        values = torch.nn.functional.pad(values, (0, 8 * width - cols))
    planes = values.view(*lead, rows, 8, width) > 0
    weights = torch.exp2(torch.arange(8, dtype=values.dtype, device=values.device)).view(8, 1)
    return torch.where(planes, weights, 0.0).sum(dim=-2).to(torch.uint8).view(*lead, -1)


def unpack_bits(packed: Tensor, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`pack_signs` as a (..., rows, cols) int32 tensor of 0/1."""
    lead = packed.shape[:-1]
    width = row_bytes(cols)
    bytes_ = packed.to(torch.int32).view(*lead, rows, 1, width)
    bits = ((bytes_ >> _shifts(packed.device)) & 1).view(*lead, rows, 8 * width)
    return bits if cols == 8 * width else bits[..., :cols]


def unpack_signs(packed: Tensor, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`pack_signs` as a (..., rows, cols) bool tensor."""
    return unpack_bits(packed, rows, cols).bool()


def from_flat_layout(packed: Tensor, rows: int, cols: int) -> Tensor:
    """Format-1 packed signs (flat row-major, eight consecutive elements per byte, least significant
    bit first) repacked in this module's layout; a no-op copy when cols % 8 == 0."""
    if cols % 8 == 0:
        return packed.clone()
    bits = (packed.to(torch.int32).unsqueeze(-1) >> torch.arange(8, device=packed.device, dtype=torch.int32)) & 1
    return pack_signs(bits.view(-1)[: rows * cols].view(rows, cols))
