"""The hand-checkable vectors of ALGORITHM.md (float32, reference code)."""

from __future__ import annotations

import pytest
import torch

from smmf import SMMF
from smmf.matricization import effective_shape, square_matricize
from smmf.signpack import unpack_signs

NUMEL_SHAPES = {
    0: (0, 0),
    1: (1, 1),
    2: (2, 1),
    6: (3, 2),
    7: (7, 1),
    12: (4, 3),
    97: (97, 1),
    128: (16, 8),
    768: (32, 24),
    1000: (40, 25),
    9408: (98, 96),
    768 * 3072: (1536, 1536),
    50257 * 768: (6932, 5568),
    30522 * 768: (5087, 4608),
}
PARAM_SHAPES = {(2, 3): (3, 2), (4, 3, 2, 2): (8, 6), (10,): (5, 2), (1, 5): (5, 1), (): (1, 1), (1,): (1, 1)}


@pytest.mark.parametrize("numel, expected", NUMEL_SHAPES.items())
def test_square_matricize(numel, expected):
    assert square_matricize(numel) == expected


@pytest.mark.parametrize("shape, expected", PARAM_SHAPES.items())
def test_effective_shape(shape, expected):
    assert effective_shape(shape) == expected


@pytest.mark.parametrize("beta, magnitude", [(0.9, 0.1), (None, 1.0)])
def test_first_step_is_scaled_sign(beta, magnitude):
    g = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, -0.5]])
    p = torch.nn.Parameter(torch.zeros(2, 3))
    p.grad = g
    SMMF([p], lr=1.0, eps=0.0, beta=beta, growth_rate=None if beta is None else 0.999, fused=False).step()
    torch.testing.assert_close(p.detach(), -magnitude * torch.sign(g), rtol=1e-6, atol=1e-7)


G1 = [[1, -2, 3], [-4, 0.5, 0.25]]
G2 = [[0.5, 0.5, -1], [1, -1, 2]]


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize(
    "decay, expected",
    [
        (-0.5, [-0.299282, 0.199361, -0.191113, 0.212457, -0.015409, -0.241792]),
        (-0.8, [-0.275825, 0.185378, -0.179579, 0.196021, -0.007656, -0.256042]),
    ],
)
def test_two_steps(decay, expected, fused):
    p = torch.nn.Parameter(torch.zeros(2, 3))
    opt = SMMF([p], lr=1.0, eps=1e-8, decay_rate=decay, fused=fused)
    p.grad = torch.tensor(G1)
    opt.step()
    torch.testing.assert_close(p.detach().flatten(), torch.tensor([-0.1, 0.1, -0.1, 0.1, -0.1, -0.1]))
    state = opt.state[p]
    torch.testing.assert_close(state["row_m"], torch.tensor([0.3, 0.7, 0.075]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(state["col_m"], torch.tensor([0.418605, 0.581395]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(state["row_v"], torch.tensor([5.0, 25.0, 0.3125]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state["col_v"], torch.tensor([0.338144, 0.661856]), atol=1e-6, rtol=1e-5)
    p.grad = torch.tensor(G2)
    opt.step()
    torch.testing.assert_close(p.detach().flatten(), torch.tensor(expected), atol=2e-6, rtol=1e-5)


def test_sign_and_decompression_at_step_one():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    p.grad = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    opt = SMMF([p], fused=False)
    opt.step()
    state = opt.state[p]
    signs = unpack_signs(state["sign"], 2, 2)
    assert signs.tolist() == [[True, False], [True, True]]
    magnitude = torch.outer(state["row_m"], state["col_m"])
    decompressed = torch.where(signs, magnitude, -magnitude)
    torch.testing.assert_close(decompressed, torch.tensor([[0.0667, -0.0333], [0.1333, 0.0667]]), atol=1e-4, rtol=0)
