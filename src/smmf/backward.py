"""``step_in_backward``: each parameter stepped, and its gradient freed, as soon as backward makes it.

With ``optimizer.step()`` after ``loss.backward()``, every gradient of the model is alive at once (a
7B model's bf16 gradients alone are 12.6 GiB). Stepping each parameter from a post-accumulate-grad hook
(PyTorch's recipe with ``Tensor.register_post_accumulate_grad_hook``) frees each gradient as soon as it
is used, so at most a few gradients exist at any time. The state is an ordinary :class:`~smmf.SMMF`'s,
so checkpoints move between the two ways of stepping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .functional import StepCache
from .optimizer import SMMF

__all__ = ["StepInBackward", "step_in_backward"]


def _is_ddp(model: Any) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


class StepInBackward:
    """The handle :func:`step_in_backward` returns: hooks installed, the optimizer that owns the state.

    ``optimizer`` is an :class:`~smmf.SMMF` (give it to an LR scheduler); ``state_dict()`` and
    ``load_state_dict()`` are its own, so a checkpoint moves between this and ``optimizer.step()``
    training. Inside ``with handle.accumulate():`` backward only accumulates gradients (micro-batches
    that must not step); the next backward outside it steps on the sum. ``remove()`` uninstalls.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], **smmf_kwargs: Any) -> None:
        self.optimizer = SMMF(params, **smmf_kwargs)
        self._accumulating = False
        self._caches: dict[int, StepCache] = {}
        self._group_of: dict[int, dict[str, Any]] = {}
        self._hooks = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    self._group_of[id(p)] = group
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._step))

    def _step(self, p: Tensor) -> None:
        if self._accumulating or p.grad is None:
            return
        cache = self._caches.setdefault(id(p), StepCache())
        self.optimizer.step_group(self._group_of[id(p)], cache, only=[p])
        p.grad = None  # freed now, not at zero_grad()
        # what a wrapped optimizer.step() records for LR schedulers, which otherwise warn that
        # scheduler.step() came before any optimizer step
        self.optimizer._opt_called = True  # type: ignore[attr-defined]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @contextlib.contextmanager
    def accumulate(self) -> Iterator[None]:
        """Backward passes inside this block accumulate gradients without stepping."""
        previous, self._accumulating = self._accumulating, True
        try:
            yield
        finally:
            self._accumulating = previous

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)
        self._caches.clear()  # launch tables hold the replaced state tensors' addresses

    def remove(self) -> None:
        """Uninstall the hooks; gradients then stay until something else uses them."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def step_in_backward(
    params_or_model: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]], **smmf_kwargs: Any
) -> StepInBackward:
    """Step every parameter with SMMF inside backward, freeing its gradient at once.

    ``params_or_model`` is a module (its parameters) or what :class:`~smmf.SMMF` takes; ``smmf_kwargs``
    are SMMF's arguments (``lr``, ``stochastic_rounding=True`` for bf16 weights, ...). Call
    ``loss.backward()`` and nothing else: no ``step()``, no ``zero_grad()``. Refuses
    ``DistributedDataParallel``, whose all-reduce runs after the hooks would have stepped on local
    gradients.
    """
    if _is_ddp(params_or_model):
        raise ValueError(
            "step_in_backward: DistributedDataParallel all-reduces gradients after they are accumulated, so "
            "stepping inside backward would use each rank's unreduced gradient; use SMMF with optimizer.step() "
            "under DDP"
        )
    params = params_or_model.parameters() if isinstance(params_or_model, nn.Module) else params_or_model
    with torch.no_grad():
        return StepInBackward(params, **smmf_kwargs)
