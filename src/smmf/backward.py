"""``step_in_backward``: each parameter stepped, and its gradient freed, as soon as backward makes it.

With ``optimizer.step()`` after ``loss.backward()``, every gradient of the model is alive at once (a
7B model's bf16 gradients alone are 12.6 GiB). Stepping each parameter from a post-accumulate-grad hook
(PyTorch's recipe with ``Tensor.register_post_accumulate_grad_hook``) frees each gradient as soon as it
is used, so at most a few gradients exist at any time. The state is an ordinary :class:`~smmf.SMMF`'s,
so checkpoints move between the two ways of stepping.

Each step costs a few kernel launches and some host work, and a backward pass runs on the host ahead
of the GPU only while its host work stays small. So a gradient smaller than ``bucket_bytes`` waits,
and the waiting ones are stepped together (one step, one set of launches) once they add up to
``bucket_bytes`` or backward ends: a 7B Llama's 291 tensors take about 160 steps instead of 291, and
at most ``bucket_bytes`` of gradients live longer than they would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .functional import StepCache
from .optimizer import SMMF

__all__ = ["BUCKET_BYTES", "StepInBackward", "step_in_backward"]

# The default bucket_bytes: 64 MiB (two of a 7B Llama's 4096 x 4096 attention projections, or one MLP
# weight, stepped together), 0.4% of the 16 GiB card this is for.
BUCKET_BYTES = 64 << 20


def _is_ddp(model: Any) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


class StepInBackward:
    """The handle :func:`step_in_backward` returns: hooks installed, the optimizer that owns the state.

    ``optimizer`` is an :class:`~smmf.SMMF` (give it to an LR scheduler); ``state_dict()`` and
    ``load_state_dict()`` are its own, so a checkpoint moves between this and ``optimizer.step()``
    training. Inside ``with handle.accumulate():`` backward only accumulates gradients (micro-batches
    that must not step); the next backward outside it steps on the sum. ``remove()`` uninstalls.
    """

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict[str, Any]], bucket_bytes: int = BUCKET_BYTES, **smmf_kwargs: Any
    ) -> None:
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 0:
            raise ValueError(f"step_in_backward: bucket_bytes must be an int >= 0, got {bucket_bytes!r}")
        self.optimizer = SMMF(params, **smmf_kwargs)
        self.bucket_bytes = bucket_bytes
        self._accumulating = False
        self._caches: dict[tuple[int, ...], StepCache] = {}
        # a parameter's group by index: load_state_dict replaces the group dicts
        self._group_of: dict[int, int] = {}
        self._waiting: dict[int, tuple[list[Tensor], int]] = {}  # per group index: parameters, their bytes
        self._hooks = []
        for index, group in enumerate(self.optimizer.param_groups):
            for p in group["params"]:
                if p.requires_grad:
                    self._group_of[id(p)] = index
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._step))

    def _step(self, p: Tensor) -> None:
        """The hook: ``p``'s gradient joins its group's waiting ones, which are stepped once they add up
        to ``bucket_bytes``; while any wait, a callback autograd runs when backward ends steps them."""
        if self._accumulating or p.grad is None:
            return
        group = self._group_of[id(p)]
        params, size = self._waiting.pop(group, ([], 0))
        callback_queued = bool(params or self._waiting)
        params.append(p)
        size += p.grad.numel() * p.grad.element_size()
        if size >= self.bucket_bytes:
            self._step_now(group, params)
            return
        if not callback_queued:
            torch.autograd.Variable._execution_engine.queue_callback(self._step_waiting)
        self._waiting[group] = (params, size)

    def _step_waiting(self) -> None:
        for group, (params, _) in sorted(self._waiting.items()):
            self._step_now(group, params)
        self._waiting.clear()

    def _step_now(self, group: int, params: list[Tensor]) -> None:
        cache = self._caches.setdefault(tuple(id(p) for p in params), StepCache())
        self.optimizer.step_group(self.optimizer.param_groups[group], cache, only=params)
        for p in params:
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
    params_or_model: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
    *,
    bucket_bytes: int = BUCKET_BYTES,
    **smmf_kwargs: Any,
) -> StepInBackward:
    """Step every parameter with SMMF inside backward, freeing its gradient as soon as it is used.

    ``params_or_model`` is a module (its parameters) or what :class:`~smmf.SMMF` takes; ``smmf_kwargs``
    are SMMF's arguments (``lr``, ``stochastic_rounding=True`` for bf16 weights, ...). Gradients smaller
    than ``bucket_bytes`` wait to be stepped together with the next ones (0: each parameter alone; the
    result is the same, only the number of launches changes). Call
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
        return StepInBackward(params, bucket_bytes, **smmf_kwargs)
