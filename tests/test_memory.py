"""Memory accounting: the generic counter, SMMF's breakdown, the analytic formula, and ResNet-50."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smmf import SMMF, adam_state_bytes, optimizer_state_bytes, smmf_state_bytes

MIB = 2**20


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 97), nn.Linear(97, 10)
    )


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()


def test_counts_any_optimizer_once_per_tensor():
    model = _model()
    adam = torch.optim.Adam(model.parameters())
    _step(model, adam)
    params = sum(p.numel() for p in model.parameters())
    assert optimizer_state_bytes(adam) == 8 * params + 4 * len(list(model.parameters()))
    shared = torch.zeros(10)
    adam.state[model[0].weight]["alias"] = shared
    adam.state[model[0].bias]["alias"] = shared
    assert optimizer_state_bytes(adam) == 8 * params + 4 * len(list(model.parameters())) + 40


@pytest.mark.parametrize("sign_bits", [1, 8])
@pytest.mark.parametrize("vector_reshape", [True, False])
def test_analytic_formula_matches_real_state(sign_bits, vector_reshape):
    model = _model()
    opt = SMMF(model.parameters(), sign_bits=sign_bits, vector_reshape=vector_reshape, fused=False)
    _step(model, opt)
    shapes = [p.shape for p in model.parameters()]
    expected = smmf_state_bytes(shapes, sign_bits=sign_bits, vector_reshape=vector_reshape)
    assert optimizer_state_bytes(opt) == expected == opt.state_bytes()["total"]
    assert adam_state_bytes(shapes) == optimizer_state_bytes(_adam_after_step(model))


def _adam_after_step(model: nn.Module) -> torch.optim.Optimizer:
    adam = torch.optim.Adam(model.parameters())
    _step(model, adam)
    return adam


def test_breakdown_separates_signs_factors_and_dense():
    model = _model()
    opt = SMMF(model.parameters(), vector_reshape=False, fused=False)
    _step(model, opt)
    parts = opt.state_bytes()
    assert parts["sign"] > 0 and parts["factors"] > 0 and parts["dense"] > 0
    assert parts["total"] == parts["sign"] + parts["factors"] + parts["dense"] + parts["step"]


def test_resnet50_cifar100_state_is_at_the_one_bit_limit():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        shapes = [p.shape for p in torchvision.models.resnet50(num_classes=100).parameters()]
    params = [nn.Parameter(torch.zeros(s)) for s in shapes]
    assert sum(p.numel() for p in params) == 23_712_932
    sizes = {}
    for bits in (1, 8):
        opt = SMMF(params, sign_bits=bits, fused=False)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        sizes[bits] = optimizer_state_bytes(opt) / MIB
        assert sizes[bits] * MIB == smmf_state_bytes(shapes, sign_bits=bits)
    assert sizes[1] <= 3.5
    assert 22.0 <= sizes[8] <= 23.5
    assert adam_state_bytes(shapes) / MIB == pytest.approx(180.9, abs=0.1)


@pytest.mark.parametrize(
    "options",
    [{}, {"sign_bits": 8}, {"beta": None, "growth_rate": None}, {"vector_reshape": False}],
    ids=["1-bit", "8-bit", "no-momentum", "dense-vectors"],
)
def test_state_bytes_formula_is_the_measured_state(options):
    """SMMF.state_bytes() reads the formula of smmf_tensor_bytes (the one smmf memory uses); each kind and the
    total equal the tensors allocated, for float32, float64 and complex parameters."""
    from smmf.memory import SMMF_STATE_KINDS

    torch.manual_seed(0)
    params = [
        nn.Parameter(torch.randn(13, 7)),
        nn.Parameter(torch.randn(5, dtype=torch.float64)),
        nn.Parameter(torch.randn(3, 4, dtype=torch.complex64)),
        nn.Parameter(torch.randn(())),
    ]
    opt = SMMF(params, fused=False, **options)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    measured = {"sign": 0, "factors": 0, "dense": 0, "step": 0}
    for state in opt.state.values():
        for key, value in state.items():
            measured[SMMF_STATE_KINDS[key]] += value.numel() * value.element_size()
    parts = opt.state_bytes()
    assert parts == {**measured, "total": optimizer_state_bytes(opt)}
