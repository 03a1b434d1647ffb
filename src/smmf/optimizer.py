"""``SMMF``: the torch.optim.Optimizer around the functional step in :mod:`smmf.functional`.

The class does bookkeeping only: it validates param groups, creates and converts per-parameter state
(:mod:`smmf.state_format`), unwraps sharded and complex tensors, and hands each group's tensors to
:func:`smmf.functional.smmf`, as ``torch.optim.AdamW`` hands them to ``adamw()``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import functional, sharding, state_check, state_format

__all__ = ["SMMF"]

_WEIGHT_DECAY_MODES = ("adamw", "adam")


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite int or float (not a bool) in [low, high]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high:
        return
    bounds = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
    raise ValueError(f"Invalid {name}: {value!r} (expected a finite number {bounds})")


def _validate_group(group: dict[str, Any]) -> None:
    """Raise ValueError naming the argument for any hyperparameter of the wrong type or outside its
    domain (inf and NaN included). A tensor lr on the CPU is checked for shape, dtype and value; on
    another device (CUDA) for shape and dtype only, since reading its value would synchronize."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid lr: Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
        if lr.is_complex() or lr.dtype == torch.bool:
            raise ValueError(f"Invalid lr: Tensor lr must be real, got dtype {lr.dtype}")
        if lr.device.type == "cpu" and not (math.isfinite(lr.item()) and lr.item() >= 0):
            raise ValueError(f"Invalid lr: {lr.item()} (expected a finite number >= 0.0)")
    else:
        _check_range("lr", lr, 0.0, math.inf)
    _check_range("eps", group["eps"], 0.0, math.inf)
    _check_range("weight_decay", group["weight_decay"], 0.0, math.inf)
    _check_range("decay_rate", group["decay_rate"], -1.0, 0.0)
    beta, growth = group["beta"], group["growth_rate"]
    if beta is not None:
        _check_range("beta", beta, 0.0, 1.0)
        if growth is None:
            raise ValueError("Invalid growth_rate: None (growth_rate is required when beta is set)")
    if growth is not None:
        _check_range("growth_rate", growth, 0.0, 1.0)
    if group["weight_decay_mode"] not in _WEIGHT_DECAY_MODES:
        raise ValueError(
            f"Invalid weight_decay_mode: {group['weight_decay_mode']!r} (expected one of {_WEIGHT_DECAY_MODES})"
        )
    sign_bits = group["sign_bits"]
    if not isinstance(sign_bits, int) or isinstance(sign_bits, bool) or sign_bits not in (1, 8):
        raise ValueError(f"Invalid sign_bits: {sign_bits!r} (expected the int 1 or 8)")
    if not isinstance(group["maximize"], bool):
        raise ValueError(f"Invalid maximize: {group['maximize']!r} (expected a bool)")
    if not isinstance(group["vector_reshape"], bool):
        raise ValueError(f"Invalid vector_reshape: {group['vector_reshape']!r} (expected a bool)")
    block_size = group["block_size"]
    if block_size is not None and (not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 8):
        raise ValueError(f"Invalid block_size: {block_size!r} (expected None or an int >= 8)")
    if group["fused"] is not None and not isinstance(group["fused"], bool):
        raise ValueError(f"Invalid fused: {group['fused']!r} (expected None, True or False)")
    backend = group["backend"]
    if backend not in functional.BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r} (expected one of {functional.BACKENDS})")
    if group["fused"] is False and backend not in ("auto", "eager"):
        raise ValueError(f"Invalid backend: {backend!r} with fused=False (fused=False means backend='eager')")
    if backend == "triton" and not functional.triton_backend.available(torch.device("cuda")):
        raise ValueError("Invalid backend: 'triton' needs the triton package (pip install triton)")


class SMMF(Optimizer):
    """Square-Matricized Momentum Factorization (Park & Lee, AAAI 2025).

    An Adam-like optimizer whose moments are stored, for every tensor shape, as a near-square matrix
    factorized to rank one (a row and a column vector) plus a 1-bit sign matrix for the first moment.
    The positional arguments are those of the reference implementation, in its order and with its
    defaults. ``weight_decay_mode`` is 'adamw' (decoupled) or 'adam' (L2 added to the gradient);
    ``sign_bits`` is 1 (packed) or 8 (a byte per element, as the reference stores it). ``backend``
    picks the step's implementation: 'triton' (every tensor of a group in two kernel launches),
    'inductor' (torch.compile), 'eager', or 'auto' (Triton on CUDA, inductor on CPU, eager where nothing
    compiles); ``fused=False`` is the older spelling of 'eager' and ``fused=True`` of a compiled one.
    ``block_size`` bounds the elements the torch backends process at once, hence the temporary memory
    of a step (None: 2^19, and on GPUs at least 1/16 of the largest tensor).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        beta: float | None = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay_rate: float = -0.5,
        growth_rate: float | None = 0.999,
        vector_reshape: bool = True,
        weight_decay_mode: str = "adamw",
        *,
        sign_bits: int = 1,
        maximize: bool = False,
        fused: bool | None = None,
        block_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        defaults = dict(
            lr=lr,
            beta=beta,
            eps=eps,
            weight_decay=weight_decay,
            decay_rate=decay_rate,
            growth_rate=growth_rate,
            vector_reshape=vector_reshape,
            weight_decay_mode=weight_decay_mode,
            sign_bits=sign_bits,
            maximize=maximize,
            fused=fused,
            block_size=block_size,
            backend=backend,
        )
        _validate_group(defaults)
        if beta is None and growth_rate is not None:
            warnings.warn(
                "SMMF: beta=None disables the first moment, so growth_rate is unused "
                "(pass growth_rate=None to silence this warning)",
                UserWarning,
                stacklevel=2,
            )
        self._caches: list[functional.StepCache] = []
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate_group(group)
        for p in group["params"]:
            if p.is_sparse:
                raise ValueError("SMMF does not support sparse parameters")
        group.setdefault("state_format", state_format.STATE_FORMAT)
        self._caches.append(functional.StepCache())

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore state; groups missing one of SMMF's own keys get its default.

        torch's base class adds keys of its own (``differentiable``) to ``defaults``; they are dropped
        again, so defaults, param groups and hence ``state_dict()`` survive a round trip unchanged.
        """
        own = set(state.get("defaults", self.__dict__.get("defaults", {})))
        super().__setstate__(state)
        for key in set(self.defaults) - own:
            del self.defaults[key]
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._caches = [functional.StepCache() for _ in self.param_groups]

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, cache in zip(self.param_groups, self._caches):
            params, grads, states = self._gather(group, cache)
            if params:
                functional.smmf(
                    params, grads, states,
                    lr=group["lr"], beta=group["beta"], eps=group["eps"], weight_decay=group["weight_decay"],
                    decay_rate=group["decay_rate"], growth_rate=group["growth_rate"],
                    weight_decay_mode=group["weight_decay_mode"], maximize=group["maximize"],
                    backend=group["backend"], fused=group["fused"], block_size=group["block_size"], cache=cache,
                )  # fmt: skip
        return loss

    def _gather(self, group: dict[str, Any], cache: functional.StepCache) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]:
        """This rank's plain (real) parameters, gradients and states of the group's tensors that have a
        gradient, creating or converting state as the group asks (which bumps the cache's state epoch)."""
        if group.get("state_format", 1) < state_format.STATE_FORMAT:
            self._upgrade(group, cache)
        params, grads, states = [], [], []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError("SMMF does not support sparse gradients")
            state = self.state[p]
            if torch.is_complex(p):
                p, grad = torch.view_as_real(p), torch.view_as_real(grad)
            if not state:
                state.update(state_format.init_state(p, group["vector_reshape"], group["sign_bits"]))
                cache.state_epoch += 1
            if state_format.ensure_momentum(p, state, group["beta"], group["sign_bits"]):
                cache.state_epoch += 1
            p_local = sharding.local(p)
            params.append(p_local)
            grads.append(sharding.local_grad(p, grad))
            states.append(self._local_state(p, p_local, state))
        return params, grads, states

    def _upgrade(self, group: dict[str, Any], cache: functional.StepCache) -> None:
        """Convert the group's states from the format it was saved in (1: no ``state_format`` key)."""
        for p in group["params"]:
            state = self.state.get(p)
            real = torch.view_as_real(p) if torch.is_complex(p) else p
            if state and state_format.upgrade(real, state, group.get("state_format", 1)):
                cache.state_epoch += 1
        group["state_format"] = state_format.STATE_FORMAT

    @staticmethod
    def _local_state(p: Tensor, p_local: Tensor, state: dict[str, Any]) -> dict[str, Any]:
        """The state as this rank's plain tensors: a sharded parameter's DTensor vectors unwrapped and cut
        to this shard's length (they are padded to the longest shard's)."""
        if not sharding.is_dtensor(p):
            return state
        sign = state.get("sign")
        lengths = sharding.factored_lengths(p_local.numel(), 1 if sign is None or sign.dtype == torch.uint8 else 8)
        out = {}
        for key, value in state.items():
            value = sharding.local(value)
            out[key] = value[: lengths[key]] if key in lengths else value
        return out

    # ------------------------------------------------------------------ state dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state without torch.optim's cast of every state tensor to the parameter dtype.

        That cast would turn the packed sign into floats and give bf16 parameters bf16 factors (a defect
        of the reference); here each tensor keeps its saved dtype and only moves to the parameter's device.
        A group saved by an older release (no ``state_format``) has its states converted before its next
        step (:func:`smmf.state_format.upgrade`).
        ``step`` becomes a float32 0-d tensor on that device, also when saved as a number (older torch).
        """
        state_check.check_state_dict(self, state_dict)  # ValueError if malformed
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            self.state[p] = {
                k: v.to(device=p.device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in saved.items()
            }
            step = self.state[p].get("step")
            if isinstance(step, Tensor):
                self.state[p]["step"] = step.to(dtype=torch.float32)
            elif step is not None:
                self.state[p]["step"] = torch.tensor(float(step), dtype=torch.float32, device=p.device)

    # ------------------------------------------------------------------ memory

    def state_bytes(self) -> dict[str, int]:
        """Bytes of optimizer state by kind: packed/bool signs, rank-1 factors, dense moments, step counters."""
        out = {"sign": 0, "factors": 0, "dense": 0, "step": 0}
        kind = {
            "sign": "sign",
            "row_m": "factors",
            "col_m": "factors",
            "row_v": "factors",
            "col_v": "factors",
            "exp_avg": "dense",
            "exp_avg_sq": "dense",
            "step": "step",
        }
        for state in self.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    value = sharding.local(value)
                    out[kind.get(key, "dense")] += value.numel() * value.element_size()
        out["total"] = sum(out.values())
        return out
