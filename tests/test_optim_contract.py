"""The torch.optim contract, as PyTorch checks it for its own optimizers."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from smmf import SMMF
from step_helpers import tiny_model as _model
from step_helpers import train_tiny as _train


def _grad_step(p: torch.Tensor, grad: torch.Tensor, **kwargs) -> torch.Tensor:
    p = p.detach().clone().requires_grad_()
    p.grad = grad.clone()
    SMMF([p], fused=False, **kwargs).step()
    return p.detach()


# ---------------------------------------------------------------- construction and validation


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": -1e-3}, "lr"),
        ({"eps": -1.0}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"beta": 1.5}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"decay_rate": 0.5}, "decay_rate"),
        ({"decay_rate": -1.5}, "decay_rate"),
        ({"growth_rate": 1.1}, "growth_rate"),
        ({"sign_bits": 4}, "sign_bits"),
        ({"weight_decay_mode": "l2"}, "weight_decay_mode"),
        ({"growth_rate": None}, "growth_rate"),
        ({"block_size": 4}, "block_size"),
        ({"block_size": 2.5e5}, "block_size"),
        ({"fused": "yes"}, "fused"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        SMMF([nn.Parameter(torch.zeros(3))], **kwargs)
    value = next(iter(kwargs.values()))
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_bad_hyperparameter_in_added_group_raises():
    opt = SMMF([nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="decay_rate"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "decay_rate": 2.0})


def test_beta_none_with_growth_rate_warns_once_and_none_none_is_silent():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SMMF([nn.Parameter(torch.zeros(3))], beta=None)
    assert len([w for w in caught if "growth_rate" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = SMMF([nn.Parameter(torch.zeros(3))], beta=None, growth_rate=None)
    p = opt.param_groups[0]["params"][0]
    p.grad = torch.ones(3)
    opt.step()
    assert "sign" not in opt.state[p]


def test_reference_positional_signature():
    p = nn.Parameter(torch.zeros(3))
    opt = SMMF([p], 1e-3, 0.9, 1e-8, 0.0005, -0.8, 0.999, True)
    group = opt.param_groups[0]
    assert (group["lr"], group["beta"], group["eps"], group["weight_decay"]) == (1e-3, 0.9, 1e-8, 0.0005)
    assert (group["decay_rate"], group["growth_rate"], group["vector_reshape"]) == (-0.8, 0.999, True)
    assert (group["weight_decay_mode"], group["sign_bits"], group["maximize"]) == ("adamw", 1, False)


def test_repr_lists_hyperparameters():
    text = repr(SMMF([nn.Parameter(torch.zeros(3))], decay_rate=-0.8))
    assert text.startswith("SMMF (") and "decay_rate: -0.8" in text and "sign_bits: 1" in text


# ---------------------------------------------------------------- groups, lr, schedulers, closure


def test_param_groups_with_different_hyperparameters():
    a, b = nn.Parameter(torch.ones(4, 4)), nn.Parameter(torch.ones(4, 4))
    opt = SMMF([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01, "weight_decay": 0.5}], fused=False)
    extra = nn.Parameter(torch.ones(4, 4))
    opt.add_param_group({"params": [extra], "lr": 0.0})
    for p in (a, b, extra):
        p.grad = torch.ones(4, 4)
    opt.step()
    assert torch.equal(extra, torch.ones(4, 4))
    assert torch.allclose(a, _grad_step(torch.ones(4, 4), torch.ones(4, 4), lr=0.1))
    assert torch.allclose(b, _grad_step(torch.ones(4, 4), torch.ones(4, 4), lr=0.01, weight_decay=0.5))
    assert not torch.allclose(a, b)


def test_tensor_lr_equals_float_lr():
    results = []
    for lr in (0.01, torch.tensor(0.01)):
        model = _model()
        _train(model, SMMF(model.parameters(), lr=lr, fused=False), 5)
        results.append(list(model.parameters()))
    for x, y in zip(*results, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t)),
    ],
    ids=["StepLR", "CosineAnnealingLR", "LambdaLR"],
)
def test_lr_schedulers_drive_the_learning_rate(make_scheduler):
    model, reference = _model(), _model()
    opt = SMMF(model.parameters(), lr=0.05, fused=False)
    scheduler = make_scheduler(opt)
    ref_opt = SMMF(reference.parameters(), lr=0.05, fused=False)
    gen, ref_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        ref_opt.param_groups[0]["lr"] = lrs[-1]
        for m, o, g in ((model, opt, gen), (reference, ref_opt, ref_gen)):
            o.zero_grad()
            m(torch.randn(4, 7, generator=g)).sum().backward()
            o.step()
        scheduler.step()
    assert len(set(lrs)) > 1
    for x, y in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(x, y)


def test_step_with_closure_returns_loss():
    model = _model()
    opt = SMMF(model.parameters(), fused=False)
    x = torch.randn(5, 7)

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    before = closure().item()
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() == pytest.approx(before)
    assert opt.step() is None


# ---------------------------------------------------------------- which parameters move


def test_grad_none_and_frozen_parameters_are_untouched():
    live, no_grad, frozen = nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3))
    frozen.requires_grad_(False)
    opt = SMMF([live, no_grad, frozen], fused=False)
    live.grad = torch.ones(3, 3)
    opt.step()
    assert not torch.equal(live, torch.ones(3, 3))
    assert torch.equal(no_grad, torch.ones(3, 3)) and torch.equal(frozen, torch.ones(3))
    assert no_grad not in opt.state and frozen not in opt.state


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_zero_gradients_without_weight_decay_leave_parameters_unchanged(fused):
    p = nn.Parameter(torch.randn(6, 5))
    before = p.detach().clone()
    opt = SMMF([p], fused=fused)
    for _ in range(3):
        p.grad = torch.zeros_like(p)
        opt.step()
    assert torch.equal(p, before)
    assert all(torch.isfinite(t.float()).all() for t in opt.state[p].values())


@pytest.mark.parametrize("shape", [(0,), (3, 0), (), (1,), (97,), (13, 7), (4, 1, 3)], ids=str)
@pytest.mark.parametrize("vector_reshape", [True, False])
def test_odd_shapes(shape, vector_reshape):
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(shape))
    opt = SMMF([p], vector_reshape=vector_reshape, fused=False)
    for _ in range(3):
        p.grad = torch.randn(shape)
        before = p.detach().clone()
        opt.step()
        assert p.shape == torch.Size(shape) and torch.isfinite(p).all()
        if p.numel():
            assert not torch.equal(p, before)
    assert opt.state[p]["step"].item() == 3


def test_non_contiguous_parameter_and_gradient():
    torch.manual_seed(0)
    base = torch.randn(6, 10)
    grad = torch.randn(10, 6)
    p = nn.Parameter(base.t())  # non-contiguous (10, 6)
    p.grad = grad.t().contiguous().t()  # contiguous values in a transposed layout
    p.grad = torch.randn(6, 10).t()
    expected = _grad_step(p.detach().contiguous(), p.grad.contiguous())
    assert not p.is_contiguous() and not p.grad.is_contiguous()
    SMMF([p], fused=False).step()
    assert torch.allclose(p, expected)


def test_maximize_equals_descent_on_negated_gradient():
    torch.manual_seed(0)
    p0, g = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.equal(_grad_step(p0, g, maximize=True), _grad_step(p0, -g))


def test_sparse_gradient_raises_naming_smmf():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = SMMF(emb.parameters(), fused=False)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="SMMF does not support sparse gradients"):
        opt.step()


def test_complex_parameters_step_as_their_real_view():
    torch.manual_seed(0)
    z = torch.randn(4, 3, dtype=torch.complex64)
    gz = torch.randn(4, 3, dtype=torch.complex64)
    pz = nn.Parameter(z.clone())
    pz.grad = gz.clone()
    SMMF([pz], fused=False).step()
    expected = _grad_step(torch.view_as_real(z), torch.view_as_real(gz))
    assert torch.equal(torch.view_as_real(pz.detach()), expected)


# ---------------------------------------------------------------- weight decay, dtypes, sign storage


def test_adam_mode_adds_weight_decay_to_the_gradient():
    torch.manual_seed(0)
    p0, g = torch.randn(6, 6), torch.randn(6, 6)
    coupled = _grad_step(p0, g, weight_decay=0.1, weight_decay_mode="adam")
    assert torch.allclose(coupled, _grad_step(p0, g + 0.1 * p0))
    assert not torch.allclose(coupled, _grad_step(p0, g, weight_decay=0.1))


def test_adamw_mode_decays_before_the_update():
    torch.manual_seed(0)
    p0, g = torch.randn(6, 6), torch.randn(6, 6)
    lr, wd = 0.01, 0.1
    expected = _grad_step(p0 * (1 - lr * wd), g, lr=lr)
    assert torch.allclose(_grad_step(p0, g, lr=lr, weight_decay=wd), expected)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_one_and_eight_bit_signs_give_identical_trajectories(fused):
    runs = []
    for bits in (1, 8):
        model = _model()
        opt = SMMF(model.parameters(), sign_bits=bits, fused=fused)
        _train(model, opt, 6)
        runs.append((model, opt))
    for x, y in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True):
        assert torch.equal(x, y)
    signs = [s["sign"] for s in runs[0][1].state.values()]
    assert all(s.dtype == torch.uint8 for s in signs)
    assert all(s.dtype == torch.bool for s in (s["sign"] for s in runs[1][1].state.values()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_keep_float32_state_and_survive_large_gradients(dtype):
    p = nn.Parameter(torch.randn(8, 8).to(dtype))
    opt = SMMF([p], fused=False)
    for scale in (1.0, 1000.0, 30000.0):  # |g| > 256: g*g overflows fp16 unless the math runs in fp32
        p.grad = (torch.rand(8, 8) * 2 - 1).mul(scale).to(dtype)
        assert torch.isfinite(p.grad).all()
        opt.step()
    state = opt.state[p]
    assert p.dtype == dtype and torch.isfinite(p).all()
    for key in ("row_m", "col_m", "row_v", "col_v"):
        assert state[key].dtype == torch.float32 and torch.isfinite(state[key]).all()


def test_float64_parameters_get_float64_factors():
    p = nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
    p.grad = torch.randn(4, 4, dtype=torch.float64)
    opt = SMMF([p], fused=False)
    opt.step()
    assert opt.state[p]["row_v"].dtype == torch.float64


def test_changing_sign_bits_converts_the_stored_signs():
    model = _model()
    opt = SMMF(model.parameters(), fused=False)
    _train(model, opt, 2)
    reference = copy.deepcopy((model, opt))
    opt.param_groups[0]["sign_bits"] = 8
    _train(model, opt, 2, seed=5)
    _train(reference[0], reference[1], 2, seed=5)
    for x, y in zip(model.parameters(), reference[0].parameters(), strict=True):
        assert torch.equal(x, y)


def test_group_settings_changed_after_steps_reach_the_existing_states():
    """States checked once are not checked every step, but a change of beta or stochastic rounding
    in the group is still applied to them at the next step."""
    p = nn.Parameter(torch.randn(8, 8).bfloat16())
    opt = SMMF([p], beta=None, growth_rate=None, fused=False)
    for _ in range(2):
        p.grad = torch.randn(8, 8).bfloat16()
        opt.step()
    assert "sign" not in opt.state[p] and "seed" not in opt.state[p]
    opt.param_groups[0].update(beta=0.9, stochastic_rounding=True)
    p.grad = torch.randn(8, 8).bfloat16()
    opt.step()
    assert {"sign", "row_m", "col_m", "seed"} <= set(opt.state[p])
    opt.state[p] = {}  # a state replaced by hand is checked (here: made) again
    opt.step()
    assert opt.state[p]["step"].item() == 1


# ---------------------------------------------------------------- state dict, copies, hooks


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("sign_bits", [1, 8])
def test_state_dict_round_trip_continues_bit_for_bit(fused, sign_bits):
    model = _model()
    opt = SMMF(model.parameters(), lr=0.01, weight_decay=0.01, sign_bits=sign_bits, fused=fused)
    _train(model, opt, 10)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    _train(model, opt, 10, seed=2)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(seed=99)
    resumed.load_state_dict(saved["model"])
    resumed_opt = SMMF(resumed.parameters(), lr=0.5, fused=fused)  # hyperparameters come from the state dict
    resumed_opt.load_state_dict(saved["optimizer"])
    assert resumed_opt.param_groups[0]["lr"] == 0.01 and resumed_opt.param_groups[0]["sign_bits"] == sign_bits
    _train(resumed, resumed_opt, 10, seed=2)
    for x, y in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_load_state_dict_keeps_state_dtypes_for_bf16_parameters():
    model = _model().to(torch.bfloat16)
    opt = SMMF(model.parameters(), fused=False)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    fresh = SMMF(model.parameters(), fused=False)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p in model.parameters():
        state = fresh.state[p]
        assert state["sign"].dtype == torch.uint8
        assert state["row_m"].dtype == torch.float32 and state["col_v"].dtype == torch.float32
        assert state["step"].dtype == torch.float32


def test_state_dict_saves_weight_decay_mode_and_sign_bits():
    opt = SMMF([nn.Parameter(torch.zeros(2))], weight_decay_mode="adam", sign_bits=8)
    group = opt.state_dict()["param_groups"][0]
    assert group["weight_decay_mode"] == "adam" and group["sign_bits"] == 8


def test_old_state_dict_without_new_keys_gets_defaults():
    model = _model()
    opt = SMMF(model.parameters(), fused=False)
    _train(model, opt, 1)
    state_dict = opt.state_dict()
    for group in state_dict["param_groups"]:
        del group["weight_decay_mode"], group["sign_bits"]
    fresh = SMMF(model.parameters(), fused=False)
    fresh.load_state_dict(state_dict)
    assert fresh.param_groups[0]["weight_decay_mode"] == "adamw" and fresh.param_groups[0]["sign_bits"] == 1


devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices)
def test_state_dict_moves_across_devices_with_map_location(device):
    model = _model()
    opt = SMMF(model.parameters(), fused=False)
    _train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, map_location=device, weights_only=True)
    moved_model = copy.deepcopy(model).to(device)
    moved = SMMF(moved_model.parameters(), fused=False)
    moved.load_state_dict(loaded)
    for p in moved_model.parameters():
        assert all(t.device.type == device for t in moved.state[p].values())
    for p in moved_model.parameters():
        p.grad = torch.ones_like(p)
    moved.step()


def test_deepcopy_is_independent():
    model = _model()
    opt = SMMF(model.parameters(), fused=False)
    _train(model, opt, 2)
    twin_model, twin_opt = copy.deepcopy((model, opt))
    _train(model, opt, 2, seed=7)
    _train(twin_model, twin_opt, 2, seed=7)
    for x, y in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(x, y) and x.data_ptr() != y.data_ptr()


def test_step_and_state_dict_hooks():
    model = _model()
    opt = SMMF(model.parameters(), fused=False)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd-pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd-post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load-pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    _train(model, opt, 1)
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "sd-pre", "sd-post", "load-pre", "load-post"]


def test_zero_grad_sets_gradients_to_none():
    model = _model()
    opt = SMMF(model.parameters(), fused=False)
    _train(model, opt, 1)
    model(torch.randn(2, 7)).sum().backward()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model(torch.randn(2, 7)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
