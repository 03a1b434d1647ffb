"""Replays a recorded reference case through an SMMF-like optimizer (shared by the golden tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

CASES = [
    "defaults",
    "transformer_decay",
    "decoupled_wd",
    "no_first_moment",
    "no_vector_reshape",
    "fast_growth",
    "sparse_rows",
]


def replay(
    data: Any,
    manifest: dict[str, Any],
    case: dict[str, Any],
    make_optimizer: Callable[..., Any],
    device: str = "cpu",
) -> tuple[list[torch.nn.Parameter], Any]:
    """Run ``case`` for all recorded steps in float64 on ``device``; returns the parameters and the optimizer."""
    name = case["name"]
    params = [
        torch.nn.Parameter(torch.from_numpy(data[f"{name}/p{i}/init"]).to(device, copy=True))
        for i in range(len(case["shapes"]))
    ]
    optimizer = make_optimizer(params, **case["hyperparameters"])
    for t in range(manifest["steps"]):
        for i, p in enumerate(params):
            grad = data[f"{name}/p{i}/grad{t}"]
            skipped = grad.size == 0 and p.numel() != 0
            p.grad = None if skipped else torch.from_numpy(np.array(grad)).reshape(p.shape).to(device, copy=True)
        for group in optimizer.param_groups:
            group["lr"] = case["lr_per_step"][t]
        optimizer.step()
    return params, optimizer


def max_relative_error(actual: torch.Tensor, expected: np.ndarray) -> float:
    if expected.size == 0:
        return 0.0
    diff = np.abs(actual.detach().cpu().numpy() - expected)
    return float(np.max(diff / np.maximum(np.abs(expected), 1e-12)))
