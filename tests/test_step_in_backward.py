"""``step_in_backward``: the same parameters as the ordinary loop, exact resume, accumulation, DDP refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from smmf import SMMF, step_in_backward


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5))


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 12, generator=gen), torch.randn(16, 5, generator=gen)) for _ in range(count)]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


KWARGS = {"lr": 1e-2, "weight_decay": 0.01, "backend": "eager"}


def _ordinary(batches: list, model: nn.Module | None = None) -> nn.Module:
    model = model or _model()
    opt = SMMF(model.parameters(), **KWARGS)
    for batch in batches:
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    return model


@pytest.mark.parametrize("bucket_bytes", [0, 1500, None], ids=["each-alone", "some-together", "default"])
def test_same_parameters_as_the_ordinary_loop_over_20_steps(bucket_bytes: int | None) -> None:
    batches = _batches(20)
    model = _model()
    extra = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
    handle = step_in_backward(model, **extra, **KWARGS)
    for batch in batches:
        _loss(model, batch).backward()
        assert all(p.grad is None for p in model.parameters())  # each freed right after its step
    for a, b in zip(model.parameters(), _ordinary(batches).parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(handle.optimizer.state[p]["step"].item() == 20 for p in model.parameters())


@pytest.mark.parametrize(
    ("bucket_bytes", "expected"),
    # weights of 1,536, 4,096 and 640 bytes, biases of 128, 128 and 20; backward reaches the last layer first
    [(0, [1, 1, 1, 1, 1, 1]), (1500, [4, 2]), (100_000, [6])],
)
def test_small_gradients_wait_and_are_stepped_together(
    monkeypatch: pytest.MonkeyPatch, bucket_bytes: int, expected: list[int]
) -> None:
    """Gradients wait until they add up to ``bucket_bytes`` (the last layer's 660 bytes wait for the middle
    layer's), and what still waits is stepped when backward ends."""
    model = _model()
    handle = step_in_backward(model, bucket_bytes=bucket_bytes, **KWARGS)
    steps: list[int] = []
    step_group = handle.optimizer.step_group
    monkeypatch.setattr(
        handle.optimizer, "step_group", lambda g, c, only: steps.append(len(only)) or step_group(g, c, only)
    )
    _loss(model, _batches(1)[0]).backward()
    assert steps == expected and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bucket_bytes", [-1, 1.5, True])
def test_a_bad_bucket_size_is_a_value_error_naming_it(bucket_bytes: object) -> None:
    with pytest.raises(ValueError, match="bucket_bytes"):
        step_in_backward(_model(), bucket_bytes=bucket_bytes, **KWARGS)


def test_a_loaded_checkpoints_hyperparameters_are_used() -> None:
    """load_state_dict replaces the optimizer's group dicts; the hooks step with the new ones (lr 0 here)."""
    model = _model()
    handle = step_in_backward(model, **KWARGS)
    _loss(model, _batches(1)[0]).backward()
    saved = handle.state_dict()
    saved["param_groups"][0]["lr"] = 0.0
    handle.load_state_dict(saved)
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, _batches(2)[1]).backward()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    assert all(handle.optimizer.state[p]["step"].item() == 2 for p in model.parameters())


def test_checkpoint_resumes_bitwise_and_moves_to_the_ordinary_optimizer(tmp_path: Path) -> None:
    batches = _batches(12)
    whole = _model()
    step_in_backward(whole, **KWARGS)
    for batch in batches:
        _loss(whole, batch).backward()
    half = _model()
    handle = step_in_backward(half, **KWARGS)
    for batch in batches[:6]:
        _loss(half, batch).backward()
    torch.save({"model": half.state_dict(), "optimizer": handle.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = _model()
    resumed.load_state_dict(saved["model"])
    handle2 = step_in_backward(resumed, **KWARGS)
    handle2.load_state_dict(saved["optimizer"])
    for batch in batches[6:]:
        _loss(resumed, batch).backward()
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), whole.parameters(), strict=True))
    ordinary = _model()
    ordinary.load_state_dict(saved["model"])
    opt = SMMF(ordinary.parameters(), **KWARGS)
    opt.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["optimizer"])  # the same format
    for batch in batches[6:]:
        opt.zero_grad()
        _loss(ordinary, batch).backward()
        opt.step()
    for a, b in zip(ordinary.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accumulate_steps_on_the_sum_of_micro_batches() -> None:
    batches = _batches(8)
    model = _model()
    handle = step_in_backward(model, **KWARGS)
    for first, second in zip(batches[::2], batches[1::2], strict=True):
        with handle.accumulate():
            _loss(model, first).backward()
        assert all(p.grad is not None for p in model.parameters())
        _loss(model, second).backward()
    reference = _model()
    opt = SMMF(reference.parameters(), **KWARGS)
    for first, second in zip(batches[::2], batches[1::2], strict=True):
        opt.zero_grad()
        (_loss(reference, first) + _loss(reference, second)).backward()
        opt.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("error::UserWarning")  # no "lr_scheduler.step() before optimizer.step()" warning
def test_lr_scheduler_and_remove() -> None:
    model = _model()
    handle = step_in_backward(model, **KWARGS)
    scheduler = torch.optim.lr_scheduler.StepLR(handle.optimizer, step_size=1, gamma=0.5)
    _loss(model, _batches(1)[0]).backward()
    scheduler.step()
    assert handle.param_groups[0]["lr"] == pytest.approx(5e-3)
    handle.remove()
    _loss(model, _batches(1)[0]).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_ddp_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(_model())
        with pytest.raises(ValueError, match="DistributedDataParallel"):
            step_in_backward(ddp, lr=1e-3)
    finally:
        dist.destroy_process_group()
