"""Square-matricization: view any tensor of N elements as the most nearly square (n, m) matrix.

A rank-one factorization stores n + m numbers for n * m elements, which is smallest when the matrix is
as square as possible; this is what lets SMMF compress tensors of any rank (biases, conv kernels, ...).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

__all__ = ["square_matricize", "effective_shape", "is_factored"]


@functools.lru_cache(maxsize=4096)
def square_matricize(numel: int) -> tuple[int, int]:
    """Return (n, m) with n * m == numel, n >= m, and m the largest divisor of numel <= sqrt(numel).

    A prime numel gives (numel, 1) and 0 gives (0, 0), as in the reference implementation.
    """
    if not isinstance(numel, int) or isinstance(numel, bool):
        raise TypeError(f"numel must be an int, got {type(numel).__name__}")
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    if numel == 0:
        return (0, 0)
    root = math.isqrt(numel)
    for m in range(root, 0, -1):
        if numel % m == 0:
            return (numel // m, m)
    raise AssertionError("unreachable: 1 divides every integer")


def is_factored(shape: Sequence[int], vector_reshape: bool = True) -> bool:
    """Whether a tensor of this shape gets factorized momenta (False: dense, Adam-like moments).

    Only tensors whose squeezed shape is 1-D stay dense, and only when vector_reshape is False;
    0-d scalars, (1,) and (1, 1, 768) are factorized like every other tensor.
    """
    squeezed = [d for d in shape if d != 1]
    return vector_reshape or len(squeezed) != 1


def effective_shape(shape: Sequence[int]) -> tuple[int, int]:
    """(n, m) of the matrix that a tensor of ``shape`` is viewed as (row-major)."""
    return square_matricize(math.prod(shape))
