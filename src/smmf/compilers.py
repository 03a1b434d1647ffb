"""Which compilers can build SMMF's step for tensors on a device, and if not, why not.

Triton builds the Triton backend's kernels, and inductor's CUDA kernels too; inductor's CPU kernels
need a C++ compiler. :func:`smmf.functional.resolve_backend` asks at every step, so the answers that
cannot change within a process are cached.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["MIN_CUDA_CAPABILITY", "triton_installed", "triton_unavailable_reason", "inductor_unavailable_reason"]

# The oldest NVIDIA GPUs Triton compiles for: Volta. A Pascal card (Kaggle's P100, 6.0) compiles
# neither Triton's kernels nor inductor's, and its step runs eagerly.
MIN_CUDA_CAPABILITY = (7, 0)


@functools.cache
def triton_installed() -> bool:
    """Whether the triton package imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _gpu_too_old(index: int) -> str:
    """Why Triton cannot compile for CUDA device ``index`` ("" where it can): ROCm GPUs are Triton's
    own targets; an NVIDIA one needs MIN_CUDA_CAPABILITY."""
    if torch.version.hip is not None:
        return ""
    capability = torch.cuda.get_device_capability(index)
    if capability >= MIN_CUDA_CAPABILITY:
        return ""
    name = torch.cuda.get_device_name(index)
    need = ".".join(map(str, MIN_CUDA_CAPABILITY))
    return f"{name} has compute capability {capability[0]}.{capability[1]}; Triton needs {need} or newer"


def triton_unavailable_reason(device: torch.device) -> str:
    """Why Triton cannot run the step for tensors on ``device`` ("" where it can): it runs on CUDA GPUs
    it compiles for, and on CPU tensors under its interpreter (``TRITON_INTERPRET=1``, for tests)."""
    if not triton_installed():
        return "the triton package is not installed (pip install triton)"
    if device.type == "cuda":
        return _gpu_too_old(torch.cuda.current_device() if device.index is None else device.index)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return ""
    return "it needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors"


def inductor_unavailable_reason(device: torch.device) -> str:
    """Why torch.compile cannot fuse the step for tensors on ``device`` ("" where it can or may): on
    CUDA, inductor writes Triton kernels, so it needs what the Triton backend needs; on a CPU, a C++
    compiler; other devices are left to torch (``backend='auto'`` does not pick inductor for them)."""
    if device.type == "cuda":
        return triton_unavailable_reason(device)
    return _cpu_compiler_missing() if device.type == "cpu" else ""


@functools.cache
def _cpu_compiler_missing() -> str:
    """Why inductor finds no C++ compiler here ("" where it does)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - torch raises various types when no C++ compiler is found
        return f"no C++ compiler for inductor ({type(exc).__name__}: {exc})"
    return ""
