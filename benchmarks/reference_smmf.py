"""The authors' reference SMMF step (eai-lab/SMMF v1.1.0, SMMF/SMMF.py), re-implemented eagerly as a baseline.

This is the code path the fused optimizer has to beat, kept with its costs on purpose: per tensor it
decompresses full M and V, allocates full-size temporaries (-M, G^2, |M|, sqrt(V), the update), stores
the sign as torch.bool, and synchronises with the host twice (``if scale != 0``). Its arithmetic and
operation order are the reference's, so that a float64 replay matches the recorded trajectories
(tests/test_reference_baseline.py). Its defects are kept too: weight_decay_mode='adam' is a no-op on
factorized tensors, and factors use the default dtype. Do not use it for training; use ``smmf.SMMF``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def effective_shape(numel: int) -> tuple[int, int]:
    """(n, m) with n >= m: the square root if numel is a perfect square, else the largest divisor <= sqrt."""
    root = math.isqrt(numel)
    if root * root == numel:  # also numel == 0 -> (0, 0)
        return root, root
    for i in range(root, 0, -1):
        if numel % i == 0:
            return numel // i, i
    return numel, 1


class ReferenceSMMF(torch.optim.Optimizer):
    """Reference SMMF with its positional arguments, defaults and per-tensor eager step."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        beta: float | None = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay_rate: float = -0.5,
        growth_rate: float | None = 0.999,
        vector_reshape: bool = True,
        weight_decay_mode: str = "adamw",
    ) -> None:
        defaults = {
            "lr": lr,
            "beta": beta,
            "eps": eps,
            "weight_decay": weight_decay,
            "decay_rate": decay_rate,
            "growth_rate": growth_rate,
            "vector_reshape": vector_reshape,
        }
        super().__init__(params, defaults)
        self.weight_decay_mode = weight_decay_mode  # not a group entry, as in the reference

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["weight_decay"] != 0.0 and self.weight_decay_mode == "adamw":
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                # weight_decay_mode='adam' changes a local copy of the gradient that the moment code
                # never reads (it re-reads p.grad): a no-op, kept as in the reference.
                factorized = not (p.grad.squeeze().dim() == 1 and not group["vector_reshape"])
                update = self._factorized(p, group) if factorized else self._dense(p, group)
                p.add_(update, alpha=-group["lr"])
        return loss

    def _factorized(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        beta, eps = group["beta"], group["eps"]
        grad = p.grad
        assert grad is not None
        state = self.state[p]
        if not state:
            state["step"] = 1
            n, m = state["effective_shape"] = effective_shape(p.numel())
            if beta is not None:
                state["momentum_m"] = (torch.zeros(n, device=p.device), torch.zeros(m, device=p.device))
                state["sign"] = torch.zeros((n, m), dtype=torch.bool, device=p.device)
            state["momentum_v"] = (torch.zeros(n, device=p.device), torch.zeros(m, device=p.device))
        g = grad.contiguous().view(state["effective_shape"])

        if beta is not None:
            m_hat = torch.outer(*state["momentum_m"])
            torch.where(state["sign"], m_hat, -m_hat, out=m_hat)
        v_hat = torch.outer(*state["momentum_v"])

        if beta is not None:
            beta_m = beta * group["growth_rate"] ** (state["step"] - 1.0)
            m_hat.mul_(beta_m).add_(g, alpha=1.0 - beta_m)
        beta_v = 1.0 - state["step"] ** group["decay_rate"]
        v_hat.mul_(beta_v).add_(g**2, alpha=1.0 - beta_v)

        if beta is not None:
            state["sign"] = m_hat > 0
            self._compress(torch.abs(m_hat), state["momentum_m"])
        self._compress(v_hat, state["momentum_v"])

        update = (m_hat if beta is not None else g) / (v_hat.sqrt() + eps)
        state["step"] += 1.0
        return update.contiguous().view(grad.shape)

    def _dense(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        beta, eps = group["beta"], group["eps"]
        grad = p.grad
        assert grad is not None
        state = self.state[p]
        if not state:
            state["step"] = 1
            if beta is not None:
                state["momentum_m"] = torch.zeros_like(p)
            state["momentum_v"] = torch.zeros_like(p)
        if beta is not None:
            beta_m = beta * group["growth_rate"] ** (state["step"] - 1.0)
            state["momentum_m"].mul_(beta_m).add_(grad, alpha=1.0 - beta_m)
        beta_v = 1.0 - state["step"] ** group["decay_rate"]
        state["momentum_v"].mul_(beta_v).add_(grad**2, alpha=1.0 - beta_v)
        update = (state["momentum_m"] if beta is not None else grad) / (state["momentum_v"].sqrt() + eps)
        state["step"] += 1.0
        return update

    @staticmethod
    def _compress(matrix: Tensor, out: tuple[Tensor, Tensor]) -> None:
        """Rank-1 non-negative factorization by row and column sums; normalises the shorter side."""
        torch.sum(matrix, dim=1, out=out[0])
        torch.sum(matrix, dim=0, out=out[1])
        small = out[0] if matrix.shape[0] < matrix.shape[1] else out[1]
        scale = small.sum()
        if scale != 0:  # a host synchronisation per moment per tensor, as in the reference
            torch.div(small, scale, out=small)
