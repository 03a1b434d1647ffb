"""SMMF trains a small real model: scikit-learn's bundled handwritten digits, next to Adam."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from smmf import SMMF


def _train(make_optimizer: Callable[..., torch.optim.Optimizer]) -> tuple[float, float, float]:
    """(first loss, last loss, held-out accuracy) of an MLP after 15 epochs on 1400 digits."""
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = (torch.tensor(x, dtype=torch.float32) / 16.0)[perm], torch.tensor(y)[perm]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = make_optimizer(model.parameters())
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(15):
        for idx in torch.randperm(1400, generator=gen).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[:1400][idx]), y[:1400][idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x[1400:]).argmax(1) == y[1400:]).float().mean().item()
    return losses[0], losses[-1], accuracy


def test_digits_mlp_trains_about_as_well_as_adam():
    first, last, accuracy = _train(lambda ps: SMMF(ps, lr=1e-2, decay_rate=-0.5, fused=False))
    _, _, adam_accuracy = _train(lambda ps: torch.optim.Adam(ps, lr=1e-2))
    assert last < 0.05 * first
    assert accuracy > 0.93 and accuracy >= adam_accuracy - 0.03, (accuracy, adam_accuracy)
