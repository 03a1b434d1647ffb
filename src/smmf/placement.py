"""Where a parameter's elements lie in memory when it is not in row-major order (a channels-last
convolution weight, a transposed matrix), and how a kernel finds them.

SMMF's (n, m) view follows a tensor's row-major order whatever its memory order, so a kernel that steps
such a tensor in place, as the Triton step does, maps each row-major index to the element's place:
:func:`row_major_placement` describes that map in three merged dimensions, and :func:`placement_columns`
turns it into what the kernel computes, in 32-bit arithmetic and without integer division.
"""

from __future__ import annotations

import functools
import math

__all__ = ["row_major_placement", "placement_columns", "divisor_magic"]


@functools.lru_cache(maxsize=1024)
def row_major_placement(shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, int, int, int, int] | None:
    """(d1, d2, s0, s1, s2) with which the element at row-major index k of a tensor of this ``shape``
    and ``stride`` lies at ``(k // (d1 * d2)) * s0 + (k // d2 % d1) * s1 + (k % d2) * s2`` elements
    from its first: its dimensions merged where memory allows, padded to three. None where that takes
    more than three, or the tensor is not dense (its elements filling exactly numel consecutive slots,
    as a channels-last weight's or a transposed matrix's do), or empty."""
    if math.prod(shape) == 0:
        return None
    merged: list[tuple[int, int]] = []  # (size, stride), outermost first
    for size, step in zip(shape, stride, strict=True):
        if size == 1:
            continue
        if merged and merged[-1][1] == step * size:
            merged[-1] = (merged[-1][0] * size, step)
        else:
            merged.append((size, step))
    if len(merged) > 3:
        return None
    expected = 1
    for size, step in sorted(merged, key=lambda dim: dim[1]):
        if step != expected:
            return None
        expected *= size
    (_, s0), (d1, s1), (d2, s2) = [(1, 0)] * (3 - len(merged)) + merged
    return d1, d2, s0, s1, s2


def placement_columns(d1: int, d2: int, s0: int, s1: int, s2: int) -> tuple[int, int, int, int, int]:
    """The table's placement of a strided tensor (:func:`row_major_placement`): the
    element at row-major index k is at ``r * s0 + (q - r * d1) * s1 + (k - q * d2) * s2`` for
    q = k // d2 and r = q // d1, that is ``k * s2 + q * (s1 - d2 * s2) + r * (s0 - d1 * s1)``: those
    three factors, then d2's and d1's :func:`divisor_magic`."""
    return s2, s1 - d2 * s2, s0 - d1 * s1, divisor_magic(d2), divisor_magic(d1)


def divisor_magic(d: int) -> int:
    """For 0 <= x < 2**31, x // d == (x * magic) >> (31 + shift), that is, in 32-bit arithmetic,
    ``umulhi(2 * x, magic) >> shift``, for shift = ceil(log2(d)) and magic = ceil(2**(31 + shift) / d),
    below 2**32 (Granlund and Montgomery, PLDI 1994, theorem 4.2); packed as magic | shift << 32."""
    shift = (d - 1).bit_length()
    return -(-(1 << (31 + shift)) // d) | shift << 32
