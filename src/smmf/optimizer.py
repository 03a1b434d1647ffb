"""``SMMF``: the torch.optim.Optimizer around the functional step in :mod:`smmf.functional`.

The class does bookkeeping only: it validates param groups, creates and converts per-parameter state
(:mod:`smmf.state_format`), unwraps sharded and complex tensors, and hands each group's tensors to
:func:`smmf.functional.smmf`, as ``torch.optim.AdamW`` hands them to ``adamw()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import functional, sharding, state_check, state_format
from .validation import validate_group

__all__ = ["SMMF"]


class SMMF(Optimizer):
    """Square-Matricized Momentum Factorization (Park & Lee, AAAI 2025).

    An Adam-like optimizer whose moments are stored, for every tensor shape, as a near-square matrix
    factorized to rank one (a row and a column vector) plus a 1-bit sign matrix for the first moment.
    The positional arguments are those of the reference implementation, in its order and with its
    defaults. ``weight_decay_mode`` is 'adamw' (decoupled) or 'adam' (L2 added to the gradient);
    ``sign_bits`` is 1 (packed) or 8 (a byte per element, as the reference stores it). ``backend``
    picks the step's implementation: 'triton' (every tensor of a group in four kernel launches),
    'cpp' (CPU: every tensor in one native call, one pass each), 'inductor' (torch.compile), 'eager', or
    'auto' (Triton on CUDA, C++ on CPU, eager where nothing compiles, as on a GPU older than Triton's
    oldest, compute capability 7.0); ``fused=False`` is the older spelling of 'eager' and
    ``fused=True`` of a compiled one (ValueError where none can run).
    ``block_size`` bounds the elements the torch backends process at once, hence the temporary memory
    of a step (None: 2^19, and on GPUs at least 1/16 of the largest tensor). ``stochastic_rounding``
    rounds the float32 result of the update to bf16 parameters stochastically (unbiased, reproducible;
    a no-op for other dtypes), so that updates below half a bf16 ulp are not lost.
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
        stochastic_rounding: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "beta": beta,
            "eps": eps,
            "weight_decay": weight_decay,
            "decay_rate": decay_rate,
            "growth_rate": growth_rate,
            "vector_reshape": vector_reshape,
            "weight_decay_mode": weight_decay_mode,
            "sign_bits": sign_bits,
            "maximize": maximize,
            "fused": fused,
            "block_size": block_size,
            "backend": backend,
            "stochastic_rounding": stochastic_rounding,
        }
        validate_group(defaults)
        if beta is None and growth_rate is not None:
            warnings.warn(
                "SMMF: beta=None disables the first moment, so growth_rate is unused "
                "(pass growth_rate=None to silence this warning)",
                UserWarning,
                stacklevel=2,
            )
        self._caches: list[functional.StepCache] = []
        self._warned_skipped = False
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_group(group)
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
        self.__dict__.setdefault("_warned_skipped", False)

    # ------------------------------------------------------------------ step

    @functional.outside_graphs
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, cache in zip(self.param_groups, self._caches, strict=True):
            self.step_group(group, cache)
        return loss

    @functional.outside_graphs
    @torch.no_grad()
    def step_group(self, group: dict[str, Any], cache: functional.StepCache, only: list[Tensor] | None = None) -> None:
        """Step the group's parameters that have gradients (or just those of ``only``), with ``cache``
        carrying device hyperparameters and launch tables between calls; ``step()`` calls this per
        group, :func:`smmf.step_in_backward` per parameter as its gradient arrives."""
        params, grads, states = self._gather(group, cache, only)
        if params:
            functional.smmf(
                params, grads, states,
                lr=group["lr"], beta=group["beta"], eps=group["eps"], weight_decay=group["weight_decay"],
                decay_rate=group["decay_rate"], growth_rate=group["growth_rate"],
                weight_decay_mode=group["weight_decay_mode"], maximize=group["maximize"],
                backend=group["backend"], fused=group["fused"], block_size=group["block_size"],
                stochastic_rounding=group["stochastic_rounding"], cache=cache,
            )  # fmt: skip

    def _gather(
        self, group: dict[str, Any], cache: functional.StepCache, only: list[Tensor] | None = None
    ) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]:
        """This rank's plain (real) parameters, gradients and states of the group's tensors that have a
        gradient, creating or converting state as the group asks (which bumps the cache's state epoch).
        A plain parameter whose state was checked under the group's current settings is taken as it is:
        the checks cost more host time than the rest of a GPU step."""
        if group.get("state_format", 1) < state_format.STATE_FORMAT:
            self._upgrade(group, cache)
        settings = (group["beta"] is None, group["sign_bits"], group["stochastic_rounding"])
        if cache.checked_under != settings:
            cache.checked_states.clear()
            cache.checked_under = settings
        params: list[Tensor] = []
        grads: list[Tensor] = []
        states: list[dict[str, Any]] = []
        for p in group["params"] if only is None else only:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError("SMMF does not support sparse gradients")
            state: dict[str, Any] = self.state[p]
            if cache.checked_states.get(id(p)) is state:
                params.append(p)
                grads.append(grad)
                states.append(state)
                continue
            p_local, grad_local, state_local = self._checked(p, grad, state, group, cache)
            params.append(p_local)
            grads.append(grad_local)
            states.append(state_local)
        return params, grads, states

    def _checked(
        self, p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any], cache: functional.StepCache
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """A parameter's plain local tensors and state, the state created or converted as the group
        asks; a plain (real, unsharded) parameter's state is then marked checked in ``cache``."""
        complex_valued = torch.is_complex(p)
        plain = not (complex_valued or sharding.is_dtensor(p))
        if complex_valued:
            p, grad = torch.view_as_real(p), torch.view_as_real(grad)
        if not state:
            state.update(state_format.init_state(p, group["vector_reshape"], group["sign_bits"]))
            cache.state_epoch += 1
        changed = state_format.ensure_skipped(p, state)
        if group["stochastic_rounding"] and "seed" not in state and p.dtype == torch.bfloat16:
            changed = state_format.ensure_seed(p, state, self._index_of(p)) or changed
        if state_format.ensure_momentum(p, state, group["beta"], group["sign_bits"]) or changed:
            cache.state_epoch += 1
        if plain:
            cache.checked_states[id(p)] = state
        p_local = sharding.local(p)
        return p_local, sharding.local_grad(p, grad), self._local_state(p, p_local, state)

    def _index_of(self, p: Tensor) -> int:
        """The parameter's position over all param groups (it keys its stochastic rounding)."""
        return next(i for i, q in enumerate(q for g in self.param_groups for q in g["params"]) if q is p)

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
        for saved_id, p in zip(saved_ids, params, strict=True):
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

    # ------------------------------------------------------------------ non-finite gradients

    def skipped_steps(self) -> dict[int, int]:
        """Steps each parameter skipped because its gradient held a non-finite element (or one whose
        square overflows), keyed by the parameter's index over all param groups, for parameters that
        skipped any. Reading it waits for the device; the first non-empty answer also warns once."""
        params = (p for g in self.param_groups for p in g["params"])
        indexed = [(i, self.state[p]["skipped"]) for i, p in enumerate(params) if "skipped" in self.state.get(p, {})]
        counts = {}
        for device in {t.device for _, t in indexed}:
            on_device = [(i, t) for i, t in indexed if t.device == device]
            values = torch.stack([t for _, t in on_device]).tolist()
            counts.update({i: int(v) for (i, _), v in zip(on_device, values, strict=True) if v})
        if counts and not self._warned_skipped:
            self._warned_skipped = True
            warnings.warn(
                f"SMMF skipped {sum(counts.values())} step(s) of {len(counts)} parameter(s) whose gradient held "
                "non-finite values; those parameters and their state were left unchanged (see docs/safety.md)",
                RuntimeWarning,
                stacklevel=2,
            )
        return dict(sorted(counts.items()))

    # ------------------------------------------------------------------ memory

    def state_bytes(self) -> dict[str, int]:
        """Bytes of optimizer state by kind: packed/bool signs, rank-1 factors, dense moments, step counters.

        Computed by the formula of :func:`smmf.memory.smmf_tensor_bytes` (the one ``smmf memory`` uses) from
        each state's size, sign format, momentum and factor dtype; for this rank's shard if sharded."""
        from .memory import SMMF_STATE_KINDS, smmf_tensor_bytes

        out = {"sign": 0, "factors": 0, "dense": 0, "step": 0}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                real = torch.view_as_real(p) if torch.is_complex(p) else p
                sign = state.get("sign")
                sign_bits = 8 if sign is not None and sign.dtype == torch.bool else 1
                factored = "row_v" in state
                sizes = smmf_tensor_bytes(
                    sharding.local(real).numel(),
                    factored=factored,
                    sign_bits=sign_bits,
                    momentum=sign is not None or "exp_avg" in state,
                    factor_bytes=state_format.factor_dtype(real).itemsize,
                    lengths=sharding.state_lengths(real, sign_bits) if factored else None,
                )
                for key in state.keys() & sizes.keys():
                    out[SMMF_STATE_KINDS[key]] += sizes[key]
        out["total"] = sum(out.values())
        return out
