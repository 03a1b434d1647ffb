"""The optimizers of the command line: one registry, name -> how to build it, for every subcommand.

``smmf compare``, ``train``, ``bench`` and ``memory`` build optimizers through :func:`build`, so that a
name means the same optimizer, with the same typical hyperparameters, everywhere. Each optimizer gets
the defaults its authors recommend (``OptimizerSpec.lr``); callers may override lr and weight decay, and
pass the options an optimizer takes (``Settings``), but never silently change anything else. The SMMF
variants that ``smmf bench`` compares (a fixed backend, 8-bit signs, the reference implementation) are
entries like any other.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..optimizer import SMMF
from .common import UsageError, check_names

__all__ = [
    "Settings",
    "OptimizerSpec",
    "OPTIMIZERS",
    "NAMES",
    "MAIN_NAMES",
    "check_weight_decay",
    "build",
    "reference_path",
    "NO_REFERENCE",
]


@dataclass(frozen=True)
class Settings:
    """Resolved hyperparameters: lr and weight decay for all; ``decay_rate``, ``growth_rate`` and ``fused``
    for SMMF; ``foreach`` for torch's own optimizers (None: torch's default)."""

    lr: float
    weight_decay: float
    decay_rate: float = -0.5
    growth_rate: float = 0.999
    fused: bool | None = None
    foreach: bool | None = None


Make = Callable[[Any, Settings], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer: its label in tables, typical lr and weight decay, and a constructor."""

    name: str
    label: str
    lr: float
    make: Make
    description: str
    weight_decay: float = 0.0
    has_weight_decay: bool = True


def _torch(cls: Callable[..., torch.optim.Optimizer], **fixed: Any) -> Make:
    def make(params: Any, s: Settings) -> torch.optim.Optimizer:
        options = {**({} if s.foreach is None else {"foreach": s.foreach}), **fixed}
        return cls(params, lr=s.lr, weight_decay=s.weight_decay, **options)

    return make


def _sm3(params: Any, s: Settings) -> torch.optim.Optimizer:
    import pytorch_optimizer

    return pytorch_optimizer.SM3(params, lr=s.lr, momentum=0.9)


def _came(params: Any, s: Settings) -> torch.optim.Optimizer:
    import pytorch_optimizer

    return pytorch_optimizer.CAME(params, lr=s.lr, weight_decay=s.weight_decay)


def _smmf(**fixed: Any) -> Make:
    def make(params: Any, s: Settings) -> torch.optim.Optimizer:
        fused: dict[str, Any] = {} if "backend" in fixed else {"fused": s.fused}  # a fixed backend is the choice
        return SMMF(
            params,
            lr=s.lr,
            weight_decay=s.weight_decay,
            decay_rate=s.decay_rate,
            growth_rate=s.growth_rate,
            **fused,
            **fixed,
        )

    return make


NO_REFERENCE = "benchmarks/reference_smmf.py not found in this package's own checkout (run from an smmf checkout)"


def reference_path() -> Path | None:
    """benchmarks/reference_smmf.py of the checkout this package runs from, or None.

    Only the package's own checkout counts: the folder above the package (``src/smmf/``) must hold a
    pyproject.toml naming the project ``smmf``, and the baseline must be a regular file inside it. Never
    the working directory: a file planted there must not run.
    """
    root = Path(__file__).resolve().parents[3]  # <root>/src/smmf/commands/registry.py
    path = root / "benchmarks" / "reference_smmf.py"
    try:
        pyproject = (root / "pyproject.toml").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    ours = re.search(r'^\[project\][^\[]*^name\s*=\s*"smmf"\s*$', pyproject, re.MULTILINE)
    if ours is None or path.is_symlink() or not path.is_file():
        return None
    return path if path.resolve().is_relative_to(root) else None


def _reference(params: Any, s: Settings) -> torch.optim.Optimizer:
    path = reference_path()
    if path is None:
        raise RuntimeError(NO_REFERENCE)
    spec = importlib.util.spec_from_file_location("reference_smmf", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReferenceSMMF(params, lr=s.lr)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("adam", "Adam", 1e-3, _torch(torch.optim.Adam), "torch.optim.Adam (betas 0.9, 0.999)"),
        OptimizerSpec(
            "adamw", "AdamW", 1e-3, _torch(torch.optim.AdamW), "torch.optim.AdamW (decoupled weight decay 0.01)", 0.01
        ),
        OptimizerSpec(
            "adafactor",
            "Adafactor",
            1e-2,
            _torch(torch.optim.Adafactor),
            "torch.optim.Adafactor (factored 2nd moment, no momentum)",
        ),
        OptimizerSpec("sm3", "SM3", 1e-1, _sm3, "pytorch_optimizer.SM3 (momentum 0.9)", has_weight_decay=False),
        OptimizerSpec("came", "CAME", 1e-3, _came, "pytorch_optimizer.CAME (betas 0.9, 0.999, 0.9999)"),
        OptimizerSpec("smmf", "SMMF (1-bit)", 1e-3, _smmf(), "smmf.SMMF, 1-bit packed sign"),
        OptimizerSpec("smmf8", "SMMF (8-bit)", 1e-3, _smmf(sign_bits=8), "smmf.SMMF, one byte of sign per element"),
        OptimizerSpec(
            "sgd", "SGD (momentum 0.9)", 1e-1, _torch(torch.optim.SGD, momentum=0.9), "torch.optim.SGD (momentum 0.9)"
        ),
        OptimizerSpec(
            "smmf-sr",
            "SMMF (1-bit, stochastic rounding)",
            1e-3,
            _smmf(stochastic_rounding=True),
            "smmf.SMMF, bf16 parameters rounded stochastically (a no-op for other dtypes)",
        ),
        # variants that smmf bench compares
        OptimizerSpec(
            "smmf-triton", "SMMF 1-bit (Triton)", 1e-3, _smmf(backend="triton"), "smmf.SMMF, Triton backend (CUDA)"
        ),
        OptimizerSpec("smmf-cpp", "SMMF 1-bit (C++)", 1e-3, _smmf(backend="cpp"), "smmf.SMMF, one-pass C++ step (CPU)"),
        OptimizerSpec(
            "smmf-inductor", "SMMF 1-bit (inductor)", 1e-3, _smmf(backend="inductor"), "smmf.SMMF, compiled torch step"
        ),
        OptimizerSpec("smmf-eager", "SMMF 1-bit (eager)", 1e-3, _smmf(backend="eager"), "smmf.SMMF, eager torch step"),
        OptimizerSpec(
            "reference",
            "reference SMMF (eager)",
            1e-3,
            _reference,
            "the paper's reference implementation (benchmarks/reference_smmf.py, a checkout only)",
            has_weight_decay=False,
        ),
        OptimizerSpec(
            "adamw-fused",
            "AdamW (fused)",
            1e-3,
            _torch(torch.optim.AdamW, fused=True, foreach=None),
            "torch.optim.AdamW(fused=True)",
            0.01,
        ),
    )
}
NAMES: tuple[str, ...] = tuple(OPTIMIZERS)
# The optimizers of the paper's comparison, and SGD as the baseline every adaptive method should beat:
# what compare, train and memory offer.
MAIN_NAMES: tuple[str, ...] = ("adam", "adamw", "adafactor", "sm3", "came", "smmf", "smmf8", "sgd")


def check_weight_decay(name: str, weight_decay: float, option: str = "--weight-decay") -> None:
    """UsageError if optimizer ``name`` is given a weight decay it does not have (SM3, the reference)."""
    if weight_decay and not OPTIMIZERS[name].has_weight_decay:
        raise UsageError(f"{option}: {name} has no weight decay; pass {option} 0")


def build(
    name: str,
    params: Iterable[Any],
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    decay_rate: float = -0.5,
    growth_rate: float = 0.999,
    fused: bool | None = None,
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """Construct optimizer ``name`` (see ``NAMES``); ``lr``/``weight_decay`` None take its typical values.

    ``decay_rate``, ``growth_rate`` and ``fused`` only concern SMMF (decay_rate -0.5 for CNNs, -0.8 for
    transformers, as the paper recommends; fused=None compiles the step where supported); ``foreach``
    only torch's optimizers.
    """
    (name,) = check_names([name], NAMES, "optimizer")
    spec = OPTIMIZERS[name]
    settings = Settings(
        lr=spec.lr if lr is None else lr,
        weight_decay=spec.weight_decay if weight_decay is None else weight_decay,
        decay_rate=decay_rate,
        growth_rate=growth_rate,
        fused=fused,
        foreach=foreach,
    )
    check_weight_decay(name, settings.weight_decay)
    return spec.make(params, settings)
