"""Property tests: square-matricization and 1-bit sign packing."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smmf.matricization import square_matricize
from smmf.signpack import pack_signs, packed_numel, unpack_signs


@given(st.integers(min_value=1, max_value=2_000_000))
@settings(max_examples=300, deadline=None)
def test_square_matricize_is_the_most_square_factorization(numel):
    n, m = square_matricize(numel)
    assert n * m == numel and n >= m >= 1
    assert m <= math.isqrt(numel)
    assert not any(numel % d == 0 for d in range(m + 1, math.isqrt(numel) + 1))


@given(
    st.integers(min_value=0, max_value=64), st.integers(min_value=0, max_value=64), st.randoms(use_true_random=False)
)
@settings(max_examples=200, deadline=None)
def test_pack_unpack_is_identity(rows, cols, rng):
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    signs = torch.rand(rows, cols, generator=gen) > 0.5
    packed = pack_signs(signs)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_numel(rows, cols)
    assert torch.equal(unpack_signs(packed, rows, cols), signs)


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=40))
@settings(max_examples=100, deadline=None)
def test_padding_bits_are_zero(rows, cols):
    packed = pack_signs(torch.ones(rows, cols, dtype=torch.bool))
    assert sum(bin(b).count("1") for b in packed.tolist()) == rows * cols
