"""The public functional SMMF step, as ``torch.optim.adamw.adamw`` is to ``AdamW``.

:func:`smmf` updates parameters and their states in place given gradients and hyperparameters; the
``SMMF`` class only does bookkeeping (param groups, state creation, state dicts) and calls it, so other
trainers can use the step without the class. States come from :func:`smmf.state_format.init_state`
and :func:`smmf.state_format.ensure_momentum`. Tensors are grouped into buckets (device, parameter
dtype, gradient dtype), and each bucket goes to one backend:

* ``"triton"``: :mod:`smmf.triton_backend`, four kernel launches per bucket, any number of tensors.
* ``"cpp"``: :mod:`smmf.cpp_backend`, one native call per bucket of CPU tensors, one pass over each.
* ``"inductor"``: :mod:`smmf.torch_backend` compiled with ``torch.compile``.
* ``"eager"``: the same torch code, uncompiled.
* ``"auto"``: Triton on a CUDA GPU it compiles for (NVIDIA compute capability 7.0 and newer, or
  ROCm), C++ on CPU where a C++ compiler exists, eager elsewhere (a P100, say: inductor's CUDA
  kernels are Triton's too).

Tensors a backend does not take (dense vectors and fp16 ones for C++; for Triton, non-contiguous
ones it cannot read in place, see :func:`smmf.triton_backend.strided_ready`) go to inductor where it
compiles, else eager.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from . import compilers, cpp_backend, kernels, torch_backend, triton_backend
from .state_format import factor_dtype

__all__ = ["BACKENDS", "StepCache", "resolve_backend", "hyperparameter_values", "smmf"]

BACKENDS = ("auto", "triton", "cpp", "inductor", "eager")
Item = tuple[Tensor, Tensor, dict[str, Any]]
Step = TypeVar("Step", bound=Callable[..., Any])


def outside_graphs(step: Step) -> Step:
    """``step`` run outside torch.compile's graphs, a graph break where compiled code calls it: every
    backend is a kernel of its own (C++, Triton, a step compiled by SMMF itself). Traced by dynamo, a
    small MLP's step was recompiled at each of its first 8 steps (3.8 s for the first 10, on 2 CPU
    cores) and then took 1.5x as long as called plainly (benchmarks/compiled_step.py)."""
    reason = "SMMF's step runs kernels of its own, outside compiled graphs (no fullgraph=True around it)"
    return cast(Step, torch.compiler.disable(step, reason=reason))


@dataclass
class StepCache:
    """What a step keeps for the next one (never saved): hyperparameter tensors per (device, dtype),
    Triton and C++ plans per bucket, and ``state_epoch``, which the caller bumps whenever it creates or replaces
    state tensors so that plans holding their addresses are rebuilt."""

    hyperparameters: dict[tuple[Any, ...], tuple[tuple[float, ...], Tensor]] = field(default_factory=dict)
    plans: dict[tuple[Any, ...], triton_backend.Plan] = field(default_factory=dict)
    cpp_plans: dict[tuple[Any, ...], cpp_backend.Plan | None] = field(default_factory=dict)
    state_epoch: int = 0
    # the SMMF class's bookkeeping: states (by id of their parameter) already created or converted
    # under the group settings ``checked_under``, which it need not check again
    checked_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    checked_under: tuple[Any, ...] = ()


def resolve_backend(backend: str, fused: bool | None, device: torch.device) -> str:
    """The backend that runs tensors on ``device``; raises ValueError naming the argument when the
    requested one cannot run there. ``fused=False`` means eager and ``fused=True`` compiled; 'auto'
    falls back to eager where nothing compiles (a GPU older than Triton's oldest, say), unless
    ``fused=True`` asked for a compiled step."""
    if backend not in BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r} (expected one of {BACKENDS})")
    if backend not in ("auto", "eager") and (reason := _cannot_run(backend, device)):
        raise ValueError(f"Invalid backend: {backend!r} cannot run on {device.type} tensors here: {reason}")
    if backend != "auto":
        return backend
    if fused is False:
        return "eager"
    chosen = _automatic(device)
    if fused and chosen == "eager":
        why = _cannot_run("triton" if device.type == "cuda" else "inductor", device)
        raise ValueError(
            f"Invalid fused: True asks for a compiled step, and none runs on {device.type} tensors here: "
            f"{why or 'SMMF compiles its step for CPU and CUDA tensors only'}"
        )
    return chosen


def _automatic(device: torch.device) -> str:
    """'auto''s backend for tensors on ``device``."""
    if device.type == "cuda":  # inductor's CUDA kernels are Triton's: where Triton cannot run, nor can it
        return "eager" if compilers.triton_unavailable_reason(device) else "triton"
    if device.type != "cpu":
        return "eager"
    if cpp_backend.available():
        return "cpp"
    return "eager" if compilers.inductor_unavailable_reason(device) else "inductor"


def _cannot_run(backend: str, device: torch.device) -> str:
    """Why a compiled backend cannot step tensors on ``device`` ("" where it can)."""
    if backend == "triton":
        return compilers.triton_unavailable_reason(device)
    if backend == "inductor":
        return compilers.inductor_unavailable_reason(device)
    if device.type != "cpu":
        return "it steps CPU tensors only"
    return "" if cpp_backend.available() else f"it needs a C++ compiler with OpenMP: {cpp_backend.unavailable_reason()}"


def hyperparameter_values(
    lr: float | Tensor,
    beta: float | None,
    eps: float,
    weight_decay: float,
    decay_rate: float,
    growth_rate: float | None,
    weight_decay_mode: str,
    maximize: bool,
) -> tuple[float, ...]:
    """The hyperparameter tensor's values, named (:class:`smmf.kernels.Hyperparameters`)."""
    decoupled = weight_decay_mode == "adamw"
    return kernels.Hyperparameters(
        lr=0.0 if isinstance(lr, Tensor) else float(lr),
        beta=0.0 if beta is None else float(beta),
        growth_rate=0.0 if growth_rate is None else float(growth_rate),
        decay_rate=float(decay_rate),
        eps=float(eps),
        wd_decoupled=float(weight_decay) if decoupled else 0.0,
        wd_coupled=0.0 if decoupled else float(weight_decay),
        direction=-1.0 if maximize else 1.0,
    )


def _device_hyperparameters(
    cache: StepCache, values: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """The hyperparameter tensor on ``device``, kept between steps: made once, then only the slots
    whose value changed are filled (a scalar fill, no host-to-device copy, nothing when unchanged)."""
    key = (device, dtype)
    cached = cache.hyperparameters.get(key)
    if cached is None:
        hp = torch.tensor(values, dtype=dtype, device=device)
    else:
        old, hp = cached
        for slot, (before, now) in enumerate(zip(old, values, strict=True)):
            if before != now:
                hp[slot].fill_(now)
    cache.hyperparameters[key] = (values, hp)
    return hp


def _lr_reference(lr: float | Tensor, hp: Tensor, backend: str) -> Tensor:
    """Where the kernels read lr: a tensor lr on the parameters' device directly under Triton (so a
    CUDA graph replays with its current value), else the hyperparameter tensor's slot."""
    if isinstance(lr, Tensor):
        if backend == "triton" and lr.device == hp.device:
            return lr.reshape(1)
        hp[kernels.HP_LR].copy_(lr.reshape(()))
    return hp[kernels.HP_LR : kernels.HP_LR + 1]


def _buckets(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
) -> dict[tuple[Any, ...], list[Item]]:
    buckets: dict[tuple[Any, ...], list[Item]] = {}
    for p, g, state in zip(params, grads, states, strict=True):
        buckets.setdefault((p.device, p.dtype, g.dtype), []).append((p, g, state))
    return buckets


def smmf(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float | Tensor,
    beta: float | None,
    eps: float,
    weight_decay: float,
    decay_rate: float,
    growth_rate: float | None,
    weight_decay_mode: str = "adamw",
    maximize: bool = False,
    backend: str = "auto",
    fused: bool | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
    cache: StepCache | None = None,
) -> None:
    """One SMMF step for plain (local, real) tensors: ``params[i]`` is updated with ``grads[i]`` and
    ``states[i]`` in place, and each state's ``step`` advances by one (its ``skipped`` instead where the
    gradient is not finite: docs/safety.md). ``cache`` carries device hyperparameters and the Triton and
    C++ plans from step to step (pass the same one each step, and bump its ``state_epoch`` when state
    tensors are created or replaced). ``stochastic_rounding`` rounds bf16 parameters stochastically where
    their state holds a ``seed`` (:func:`smmf.state_format.ensure_seed`)."""
    if not stochastic_rounding:
        states = [s if "seed" not in s else {k: v for k, v in s.items() if k != "seed"} for s in states]
    cache = StepCache() if cache is None else cache
    values = hyperparameter_values(lr, beta, eps, weight_decay, decay_rate, growth_rate, weight_decay_mode, maximize)
    for bucket, items in _buckets(params, grads, states).items():
        _step_bucket(bucket, items, values, lr, beta is not None, backend, fused, block_size, cache)


@outside_graphs  # here, not on smmf(): torch.compile(f) compiles f itself even where f is disabled
def _step_bucket(
    bucket: tuple[Any, ...],
    items: list[Item],
    values: tuple[float, ...],
    lr: float | Tensor,
    has_m: bool,
    backend: str,
    fused: bool | None,
    block_size: int | None,
    cache: StepCache,
) -> None:
    """Step one bucket's tensors (one device, parameter dtype and gradient dtype) with its backend."""
    device = bucket[0]
    chosen = resolve_backend(backend, fused, device)
    hp = _device_hyperparameters(cache, values, device, factor_dtype(items[0][0]))
    lr_ref = _lr_reference(lr, hp, chosen)
    if chosen == "triton":
        items = _triton_bucket(items, bucket, hp, lr_ref, has_m, cache)
        if items and isinstance(lr, Tensor):
            hp[kernels.HP_LR].copy_(lr.reshape(()))
    elif chosen == "cpp":
        items = _cpp_bucket(items, bucket, hp, cache)
    if items:  # all of them (eager, inductor), or those the Triton or C++ kernel does not take
        compiled = chosen == "inductor" or (chosen != "eager" and not compilers.inductor_unavailable_reason(device))
        torch_backend.step(items, hp, block_size, compiled=compiled)


def _partition(items: list[Item], takes: Callable[[Item], bool]) -> tuple[list[Item], list[Item]]:
    """(the items a backend takes, the others), in one pass, order kept."""
    ready: list[Item] = []
    rest: list[Item] = []
    for item in items:
        (ready if takes(item) else rest).append(item)
    return ready, rest


def layout_key(
    items: list[Item], state_epoch: int, addresses: tuple[int, ...], strides: tuple[Any, ...] = ()
) -> tuple[Any, ...]:
    """What a Triton or C++ plan's layout depends on: the parameters' ``addresses``, the strides of
    those not in row-major order (:func:`smmf.triton_backend.strided_ready`) and the optimizer's state
    epoch (bumped whenever state tensors are created or replaced)."""
    seeded = all("seed" in state for _, _, state in items)  # stochastic rounding can be switched off
    return (state_epoch, seeded, addresses, strides)


def _cpp_bucket(items: list[Item], bucket: tuple[Any, ...], hp: Tensor, cache: StepCache) -> list[Item]:
    """Step the tensors of a bucket that the C++ kernel takes; returns the others."""
    ready, rest = _partition(items, cpp_backend.supports)
    if ready:
        layout = layout_key(ready, cache.state_epoch, tuple(p.data_ptr() for p, _, _ in ready))
        cache.cpp_plans[bucket] = cpp_backend.step(ready, hp, layout, cache.cpp_plans.get(bucket))
    return rest


def _triton_bucket(
    items: list[Item], bucket: tuple[Any, ...], hp: Tensor, lr: Tensor, has_m: bool, cache: StepCache
) -> list[Item]:
    """Step with Triton the tensors of a bucket that are contiguous, or strided alike with their
    gradients (a channels-last weight, say: :func:`smmf.triton_backend.strided_ready`); returns the
    others, which the caller steps with the torch backend."""
    ready: list[Item] = []
    rest: list[Item] = []
    params: list[int] = []
    grads: list[int] = []
    strides: list[tuple[int, ...]] = []
    for item in items:  # one pass over every tensor, every step: host time is what a GPU step waits on
        p, g, state = item
        contiguous = p.is_contiguous() and g.is_contiguous()
        if contiguous or triton_backend.strided_ready(p, g, state):
            ready.append(item)
            params.append(p.data_ptr())
            grads.append(g.data_ptr())
            if not contiguous:
                strides.append(p.stride())
        else:
            rest.append(item)
    if ready:
        layout = layout_key(ready, cache.state_epoch, tuple(params), tuple(strides))
        gradients = tuple(grads)
        plan = cache.plans.get(bucket)
        if plan is None or plan.layout != layout:
            signs = [state["sign"] for _, _, state in ready if "sign" in state]
            packed = not signs or signs[0].dtype == torch.uint8
            plan = cache.plans[bucket] = triton_backend.build_plan(ready, layout, gradients, hp.dtype, has_m, packed)
        elif plan.gradients != gradients:
            plan = cache.plans[bucket] = triton_backend.with_gradients(plan, gradients)
        triton_backend.step(plan, bucket[1], bucket[2], hp, lr)
    return rest
