"""The C++ backend: every factorized CPU tensor of a bucket stepped in one native call, one pass each.

``cpp_step.cpp`` checks each thread's rows of a gradient for non-finite values, then steps them (one
more read of each row, from cache where they fit) and keeps the column sums per thread, so it needs no
temporaries of a tensor's size and no row blocks, and a step is one call from Python whatever the
number of tensors (the compiled torch path costs tens of calls, each with guards, and re-reads each
block's moments several times). It is compiled with the C++ compiler that inductor would use, at first
use, into a per-user cache (``SMMF_CACHE_DIR``, default ``~/.cache/smmf``), and loaded with ctypes: no
build step at install, no Python headers. Parameters of dtype float32, float64 and bfloat16 (with or
without stochastic rounding) with gradients of the same dtype (a non-contiguous one stepped in a
contiguous copy); everything else (fp16, dense vectors) goes to the torch backends.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .matricization import square_matricize

__all__ = ["Plan", "available", "unavailable_reason", "supports", "step"]

Item = tuple[Tensor, Tensor, dict[str, Any]]

# -fno-math-errno: sqrt without the errno branch, which otherwise keeps the loop 3x slower
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
_ENTRY = {torch.float32: "smmf_step_float32", torch.float64: "smmf_step_float64", torch.bfloat16: "smmf_step_bfloat16"}
# cpp_step.cpp's SignMode: no first moment, packed 1-bit signs, one byte per sign
_NO_MOMENTUM, _PACKED, _BYTES = 0, 1, 8


class _Desc(ctypes.Structure):
    """cpp_step.cpp's ``Desc``: one tensor's addresses (its state's step counters among them), its
    (rows, cols) view and seed."""

    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("p", "g", "sign", "row_m", "col_m", "row_v", "col_v")),
        *((name, ctypes.c_void_p) for name in ("step", "skipped")),
        *((name, ctypes.c_int64) for name in ("rows", "cols", "seed")),
    ]


def _cache_dir() -> Path:
    return Path(os.environ.get("SMMF_CACHE_DIR") or Path.home() / ".cache" / "smmf")


def _compiler() -> str:
    from torch._inductor.cpp_builder import get_cpp_compiler

    return str(get_cpp_compiler())


def _machine() -> bytes:
    """What -march=native depends on: a cache shared by different CPUs keeps one build per CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()} {platform.processor()} {flags}".encode()


@functools.cache
def _build() -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernel, built once per source, compiler, flags and CPU (atomically: concurrent
    processes each write their own temporary file and rename it into place), or None and why not."""
    try:
        source = resources.files("smmf").joinpath("cpp_step.cpp").read_bytes()
        compiler = _compiler()
        key = source + compiler.encode() + " ".join(_FLAGS).encode() + _machine()
        target = _cache_dir() / f"smmf_cpp_step_{hashlib.sha256(key).hexdigest()[:16]}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src, out = Path(tmp) / "cpp_step.cpp", Path(tmp) / target.name
                src.write_bytes(source)
                subprocess.run([compiler, *_FLAGS, str(src), "-o", str(out)], check=True, capture_output=True)
                os.replace(out, target)
        library = ctypes.CDLL(str(target))
    except subprocess.CalledProcessError as error:
        return None, f"{error.cmd[0]} failed: {error.stderr.decode(errors='replace').strip()[-300:]}"
    except (OSError, RuntimeError, ImportError) as error:
        return None, f"{type(error).__name__}: {error}"
    for name in _ENTRY.values():
        fn = getattr(library, name)
        fn.restype = None
        fn.argtypes = [ctypes.POINTER(_Desc), ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    return library, ""


def available() -> bool:
    """Whether the kernel builds and loads here (a C++ compiler with OpenMP)."""
    return _build()[0] is not None


def unavailable_reason() -> str:
    """Why the kernel cannot be built or loaded here ("" where it can)."""
    return _build()[1]


def supports(item: Item) -> bool:
    """Whether the C++ kernel steps this (parameter, gradient, state): a factorized CPU tensor of a
    supported dtype, with a gradient of the same dtype and float32 step counters (as
    :func:`smmf.state_format.init_state` makes them)."""
    p, grad, state = item
    return (
        p.device.type == "cpu" and p.dtype in _ENTRY and grad.dtype == p.dtype and "row_v" in state
        and state["step"].dtype == torch.float32 and state["skipped"].dtype == torch.float32
    )  # fmt: skip


def _sign_mode(items: list[Item]) -> int:
    sign = items[0][2].get("sign")
    if sign is None:
        return _NO_MOMENTUM
    return _PACKED if sign.dtype == torch.uint8 else _BYTES


def _address(state: dict[str, Any], key: str) -> int:
    tensor = state.get(key)
    return 0 if tensor is None else tensor.data_ptr()


def _describe(items: list[Item]) -> ctypes.Array[_Desc]:
    descs = (_Desc * len(items))()
    for i, (p, grad, state) in enumerate(items):
        rows, cols = square_matricize(p.numel())
        seed = state.get("seed")
        descs[i] = _Desc(
            p.data_ptr(), grad.data_ptr(),
            *(_address(state, key) for key in ("sign", "row_m", "col_m", "row_v", "col_v", "step", "skipped")),
            rows, cols, -1 if seed is None else int(seed),
        )  # fmt: skip
    return descs


@dataclass(frozen=True)
class Plan:
    """A bucket's descriptors, kept from step to step as a Triton plan is: valid for one ``layout``
    (:func:`smmf.functional.layout_key`: the parameters' addresses, which states have seeds, the state
    epoch); a step with the same layout rewrites only the gradients' addresses, as describing every
    tensor anew cost a fifth of a small model's step."""

    layout: tuple[Any, ...]
    descs: ctypes.Array[_Desc]


def step(items: list[Item], hp: Tensor, layout: tuple[Any, ...], plan: Plan | None = None) -> Plan | None:
    """Step every item (all :func:`supports`, one parameter dtype, one sign layout) in one call: each
    whose gradient passes :func:`smmf.kernels.step_allowed`'s check (made here, by the same rule, just
    before the tensor steps, while its gradient may still be in cache) steps and advances its state's
    step counter; the others keep their parameter and state and advance their skipped-step counter.
    Returns the plan to pass with the next step's items (None where a tensor was not contiguous)."""
    library, reason = _build()
    if library is None:
        raise RuntimeError(f"the C++ kernel is not available: {reason}")
    fn = getattr(library, _ENTRY[items[0][0].dtype])
    args = (len(items), hp.data_ptr(), _sign_mode(items), torch.get_num_threads())
    if not all(p.is_contiguous() and grad.is_contiguous() for p, grad, _ in items):
        # a channels-last weight, say: stepped in a contiguous copy, copied back
        work = [(p.contiguous(), grad.contiguous(), state) for p, grad, state in items]
        fn(_describe(work), *args)
        for (p, _, _), (done, _, _) in zip(items, work, strict=True):
            if done is not p:
                p.copy_(done)
        return None
    if plan is None or plan.layout != layout:
        plan = Plan(layout, _describe(items))
    else:
        for desc, (_, grad, _) in zip(plan.descs, items, strict=True):
            desc.g = grad.data_ptr()
    fn(plan.descs, *args)
    return plan
