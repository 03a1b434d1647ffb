"""1-bit sign packing of an (n, m) matrix of first-moment signs into ceil(n*m/8) bytes.

Layout (n*m/8 bytes whenever m % 8 == 0, which is almost every layer): row i takes bytes
[i*m/8, (i+1)*m/8) and bit k of its byte j is column k*(m/8) + j ("bit planes" per row), so that
packing and unpacking read and write contiguous runs and vectorize inside the fused step kernel.
Other widths use the flat row-major order, eight consecutive elements per byte, least significant
bit first. Bit arithmetic runs in int32 because x86 has no 8-bit vector shifts. Padding bits are zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["packed_numel", "pack_signs", "unpack_bits", "unpack_signs"]


def packed_numel(numel: int) -> int:
    """Bytes needed to hold ``numel`` sign bits."""
    return (numel + 7) // 8


def _shifts(device: torch.device) -> Tensor:
    return torch.arange(8, dtype=torch.int32, device=device)


def pack_signs(positive: Tensor) -> Tensor:
    """Pack a (..., rows, cols) tensor of bools (or 0/1 integers) into (..., bytes) uint8, one row of
    bytes per matrix (leading dimensions batch same-shaped matrices)."""
    *lead, rows, cols = positive.shape
    bits = positive.to(torch.int32)
    shifts = _shifts(positive.device)
    if cols % 8 == 0:
        planes = bits.view(*lead, rows, 8, cols // 8) << shifts.view(8, 1)
        return planes.sum(dim=-2).to(torch.uint8).view(*lead, -1)
    flat = bits.reshape(*lead, rows * cols)
    pad = (-flat.shape[-1]) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(*lead, pad)], dim=-1)
    return (flat.view(*lead, -1, 8) << shifts).sum(dim=-1).to(torch.uint8)


def unpack_bits(packed: Tensor, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`pack_signs` as a (..., rows, cols) int32 tensor of 0/1."""
    lead = packed.shape[:-1]
    bytes_ = packed.to(torch.int32)
    shifts = _shifts(packed.device)
    if cols % 8 == 0:
        return ((bytes_.view(*lead, rows, 1, cols // 8) >> shifts.view(8, 1)) & 1).view(*lead, rows, cols)
    bits = (bytes_.unsqueeze(-1) >> shifts) & 1
    return bits.view(*lead, -1)[..., : rows * cols].view(*lead, rows, cols)


def unpack_signs(packed: Tensor, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`pack_signs` as a (..., rows, cols) bool tensor."""
    return unpack_bits(packed, rows, cols).bool()
