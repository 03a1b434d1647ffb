"""Where a strided parameter's elements lie: the row-major placement a kernel reads a channels-last
weight or a transposed matrix through (``smmf.placement.row_major_placement``), and the table columns
of the Triton step (``smmf.placement.placement_columns``) that compute it in wrapping int32 arithmetic
with divisions by multiplication."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smmf.placement import divisor_magic, placement_columns, row_major_placement


def _memory_offsets(t: torch.Tensor) -> torch.Tensor:
    """The offset from its first element of each element of ``t``, in row-major order."""
    offsets = torch.zeros((), dtype=torch.int64)
    for dim, (size, step) in enumerate(zip(t.shape, t.stride(), strict=True)):
        shape = [1] * t.dim()
        shape[dim] = size
        offsets = offsets + torch.arange(size).view(shape) * step
    return offsets.reshape(-1)


def _placed(placement: tuple[int, int, int, int, int], k: torch.Tensor) -> torch.Tensor:
    d1, d2, s0, s1, s2 = placement
    return (k // (d1 * d2)) * s0 + (k // d2 % d1) * s1 + (k % d2) * s2


def _as_kernel_places(columns: tuple[int, ...], k: np.ndarray) -> np.ndarray:
    """What pass 1 computes from the table columns, in its 32-bit arithmetic (numpy's wraps too)."""
    place_k, place_q, place_r, divide_q, divide_r = columns

    def divided(x: np.ndarray, packed: int) -> np.ndarray:
        magic, shift = np.uint64(packed & 0xFFFFFFFF), np.uint64(packed >> 32)
        return (((x.astype(np.uint64) << np.uint64(1)) * magic >> np.uint64(32)) >> shift).astype(np.int32)

    q = divided(k, divide_q)
    r = divided(q, divide_r)
    return k * np.int32(place_k) + q * np.int32(place_q) + r * np.int32(place_r)


LAYOUTS = {
    "channels-last": lambda: torch.empty(8, 6, 3, 3).to(memory_format=torch.channels_last),
    "channels-last-3d": lambda: torch.empty(4, 3, 2, 3, 2).to(memory_format=torch.channels_last_3d),
    "transposed": lambda: torch.empty(7, 5).t(),
    "permuted": lambda: torch.empty(4, 5, 6).permute(2, 0, 1),
    "contiguous": lambda: torch.empty(3, 4, 5),
    "size-one dims": lambda: torch.empty(1, 5, 1, 3).to(memory_format=torch.channels_last),
}


@pytest.mark.parametrize("make", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_placement_finds_every_element_of_a_dense_tensor(make: object) -> None:
    t = make()  # type: ignore[operator]
    placement = row_major_placement(tuple(t.shape), t.stride())
    assert placement is not None
    k = torch.arange(t.numel())
    assert torch.equal(_placed(placement, k), _memory_offsets(t))
    assert torch.equal(
        torch.from_numpy(_as_kernel_places(placement_columns(*placement), k.int().numpy())).long(), _memory_offsets(t)
    )


@pytest.mark.parametrize(
    "t",
    [torch.empty(10, 10)[:, :5], torch.empty(4, 5, 6, 7).permute(3, 1, 0, 2), torch.empty(6)[::2], torch.empty(0, 3)],
    ids=["gaps", "four-dims-apart", "every-other", "empty"],
)
def test_no_placement_for_tensors_with_gaps_or_more_than_three_merged_dimensions(t: torch.Tensor) -> None:
    assert row_major_placement(tuple(t.shape), t.stride()) is None


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    order=st.randoms(use_true_random=False),
)
def test_placement_of_any_permuted_dense_tensor_is_exact_or_refused(sizes: list[int], order: object) -> None:
    """Any dense layout (a permutation of a contiguous tensor's dimensions): placed exactly, as pass 1
    computes it from the table, or refused (more than three dimensions apart in memory)."""
    perm = list(range(len(sizes)))
    order.shuffle(perm)  # type: ignore[attr-defined]
    t = torch.empty([sizes[i] for i in perm]).permute(*np.argsort(perm).tolist())
    assert list(t.shape) == sizes
    placement = row_major_placement(tuple(t.shape), t.stride())
    if placement is not None:
        k = torch.arange(t.numel())
        assert torch.equal(_placed(placement, k), _memory_offsets(t))
        kernel = _as_kernel_places(placement_columns(*placement), k.int().numpy())
        assert torch.equal(torch.from_numpy(kernel).long(), _memory_offsets(t))


@pytest.mark.parametrize("d", [1, 2, 3, 7, 9, 64, 255, 1536, 50257, 2**20 + 1, 2**30, 2**31 - 1])
def test_division_by_multiplication_is_exact_below_2_to_the_31(d: int) -> None:
    rng = np.random.default_rng(d)
    x = np.concatenate([
        np.arange(2000), 2**31 - 1 - np.arange(2000), rng.integers(0, 2**31, 10_000),
        d * np.arange(1, 200), d * np.arange(1, 200) - 1,
    ])  # fmt: skip
    x = x[x < 2**31].astype(np.uint64)
    packed = divisor_magic(d)
    magic, shift = packed & 0xFFFFFFFF, packed >> 32
    assert magic < 2**32
    quotient = (((x << np.uint64(1)) * np.uint64(magic)) >> np.uint64(32)) >> np.uint64(shift)
    assert np.array_equal(quotient, x // np.uint64(d))


def test_pass1s_wrapping_arithmetic_places_a_large_tensors_elements_exactly() -> None:
    """A channels-last (200000, 1024, 3, 3) weight (1.8e9 elements, not allocated): k * place_k overflows
    int32 for most k, and the wrapped sum is still the exact offset."""
    shape, stride = (200_000, 1024, 3, 3), (1024 * 9, 1, 3 * 1024, 1024)
    placement = row_major_placement(shape, stride)
    assert placement is not None
    rng = np.random.default_rng(0)
    k = np.concatenate([np.arange(5000), 1_843_200_000 - 1 - np.arange(5000), rng.integers(0, 1_843_200_000, 50_000)])
    exact = _placed(placement, torch.from_numpy(k))
    assert int(exact.max()) < 2**31 and (k.astype(np.int64) * placement[4] >= 2**31).any()
    kernel = _as_kernel_places(placement_columns(*placement), k.astype(np.int32))
    assert torch.equal(torch.from_numpy(kernel).long(), exact)
