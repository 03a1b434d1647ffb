"""The optimizers the command line can compare and train with: one registry, name -> constructor.

Every command (compare, train, memory, bench) builds optimizers through :func:`build` so that a name
means the same optimizer, with the same typical hyperparameters, everywhere. Each optimizer gets the
defaults its authors recommend (``OptimizerSpec.lr``); callers may override lr, weight decay and SMMF's
decay_rate, but never silently change anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .optimizer import SMMF

__all__ = ["OptimizerSpec", "OPTIMIZERS", "NAMES", "UnknownNameError", "build", "check_names"]


class UnknownNameError(ValueError):
    """A name (optimizer, task, model) that is not in its registry; the message lists the valid ones."""


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer: its typical lr and weight decay, and a constructor taking resolved values."""

    name: str
    label: str
    lr: float
    make: Callable[..., torch.optim.Optimizer]
    description: str
    weight_decay: float = 0.0


def _adam(params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _adamw(params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _adafactor(params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # torch's Adafactor uses a relative step size: lr caps rho_t = min(lr, 1/sqrt(t)), scaled by RMS(p).
    return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay)


def _sm3(params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    import pytorch_optimizer

    if weight_decay:
        raise ValueError("sm3 (pytorch_optimizer.SM3) has no weight decay; use --weight-decay 0")
    return pytorch_optimizer.SM3(params, lr=lr, momentum=0.9)


def _came(params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    import pytorch_optimizer

    return pytorch_optimizer.CAME(params, lr=lr, weight_decay=weight_decay)


def _smmf(sign_bits: int) -> Callable[..., torch.optim.Optimizer]:
    def make(
        params: Any, lr: float, weight_decay: float, decay_rate: float, growth_rate: float, fused: bool | None
    ) -> torch.optim.Optimizer:
        return SMMF(
            params,
            lr=lr,
            weight_decay=weight_decay,
            decay_rate=decay_rate,
            growth_rate=growth_rate,
            sign_bits=sign_bits,
            fused=fused,
        )

    return make


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("adam", "Adam", 1e-3, _adam, "torch.optim.Adam (betas 0.9, 0.999)"),
        OptimizerSpec("adamw", "AdamW", 1e-3, _adamw, "torch.optim.AdamW (decoupled weight decay 0.01)", 0.01),
        OptimizerSpec(
            "adafactor", "Adafactor", 1e-2, _adafactor, "torch.optim.Adafactor (factored 2nd moment, no momentum)"
        ),
        OptimizerSpec("sm3", "SM3", 1e-1, _sm3, "pytorch_optimizer.SM3 (momentum 0.9)"),
        OptimizerSpec("came", "CAME", 1e-3, _came, "pytorch_optimizer.CAME (betas 0.9, 0.999, 0.9999)"),
        OptimizerSpec("smmf", "SMMF (1-bit)", 1e-3, _smmf(1), "smmf.SMMF, 1-bit packed sign"),
        OptimizerSpec("smmf8", "SMMF (8-bit)", 1e-3, _smmf(8), "smmf.SMMF, one byte of sign per element"),
    )
}
NAMES: tuple[str, ...] = tuple(OPTIMIZERS)


def check_names(names: Iterable[str], valid: Iterable[str], what: str) -> list[str]:
    """Return ``names`` as a list, or raise UnknownNameError with a one-line message listing the valid names."""
    valid = list(valid)
    names = list(names)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise UnknownNameError(f"unknown {what} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    if not names:
        raise UnknownNameError(f"no {what} given; valid: {', '.join(valid)}")
    return names


def build(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    decay_rate: float = -0.5,
    growth_rate: float = 0.999,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Construct optimizer ``name`` (see ``NAMES``); ``lr``/``weight_decay`` None take its typical values.

    ``decay_rate``, ``growth_rate`` and ``fused`` only concern SMMF (decay_rate -0.5 for CNNs, -0.8 for
    transformers, as the paper recommends; fused=None compiles the step where supported).
    """
    (name,) = check_names([name], NAMES, "optimizer")
    spec = OPTIMIZERS[name]
    lr = spec.lr if lr is None else lr
    weight_decay = spec.weight_decay if weight_decay is None else weight_decay
    if name.startswith("smmf"):
        return spec.make(params, lr, weight_decay, decay_rate=decay_rate, growth_rate=growth_rate, fused=fused)
    return spec.make(params, lr, weight_decay)
