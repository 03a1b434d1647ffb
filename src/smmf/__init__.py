"""SMMF: Square-Matricized Momentum Factorization, a ~1-bit-per-parameter Adam-like optimizer for PyTorch."""

from . import functional
from .backward import StepInBackward, step_in_backward
from .memory import adam_state_bytes, optimizer_state_bytes, smmf_state_bytes
from .optimizer import SMMF

__version__ = "0.1.0"

__all__ = [
    "SMMF",
    "StepInBackward",
    "step_in_backward",
    "functional",
    "optimizer_state_bytes",
    "smmf_state_bytes",
    "adam_state_bytes",
    "__version__",
]
