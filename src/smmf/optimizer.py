"""``SMMF``: the torch.optim.Optimizer around the functional step kernels in :mod:`smmf.kernels`."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import kernels, sharding
from .matricization import is_factored, square_matricize
from .signpack import pack_signs, unpack_signs

__all__ = ["SMMF"]

_WEIGHT_DECAY_MODES = ("adamw", "adam")
_CPU_BLOCK_SIZE = 1 << 19
# On GPUs a block is also at least this fraction of the bucket's largest tensor (see _block_size).
_GPU_BLOCK_FRACTION = 16
# A batch of small tensors holds at most block_size / this many elements: its stacked copies are extra
# memory, and past ~10^5 elements a kernel call's overhead is already small next to its work.
_BATCH_FRACTION = 4
# Tensors at least this large get a kernel specialised to their column count (see kernels.compiled).
_WIDE_NUMEL = 1 << 16
# A factorized tensor's state, in the order the batched step stacks it.
_FACTOR_KEYS = ("sign", "row_m", "col_m", "row_v", "col_v")


def _sign_bytes(sign: Tensor | None) -> tuple[Tensor | None, bool]:
    """The sign state as the kernels take it, uint8, and whether it holds packed bits: 8-bit (bool)
    signs are viewed as their 0/1 bytes here, outside the compiled graph."""
    if sign is None or sign.dtype == torch.uint8:
        return sign, True
    return sign.view(torch.uint8), False


def _whole_step(p: Tensor, g: Tensor, state: dict[str, Any], hp: Tensor, sched: Tensor, fused: bool) -> None:
    """One kernel call for a whole (n, m) tensor, or a (B, n, m) batch with its state stacked the same
    way: ``state`` maps the factorized state keys to tensors shaped to match ``p``."""
    sign, packed = _sign_bytes(state.get("sign"))
    row_m, col_m, row_v, col_v = state.get("row_m"), state.get("col_m"), state["row_v"], state["col_v"]
    wide = fused and p.shape[-2] * p.shape[-1] >= _WIDE_NUMEL
    if wide:
        kernels.mark_block((sign, row_m, row_v), (p, g, col_m, col_v))
    fn = kernels.compiled(kernels.factored_step, wide) if fused else kernels.factored_step
    fn(p, g, sign, row_m, col_m, row_v, col_v, hp, sched, packed)


def _block_size(requested: int | None, device: torch.device, items: list[tuple[Tensor, Tensor, dict[str, Any]]]) -> int:
    """The group's ``block_size``, or the automatic one: 2^19 elements (the fused kernel's passes stay
    in a CPU's cache), and on GPUs at least 1/16 of the largest tensor, since there each block costs
    kernel launches while a block's temporaries (about two fp32 copies of it) stay at 1/8 of that
    tensor, under the quarter that the memory bound allows."""
    if requested is not None:
        return requested
    if device.type == "cpu" or not items:
        return _CPU_BLOCK_SIZE
    return max(_CPU_BLOCK_SIZE, max(p.numel() for p, _, _ in items) // _GPU_BLOCK_FRACTION)


def _plan(items: list[tuple[Tensor, Tensor, dict[str, Any]]], block_size: int) -> tuple[list[list[int]], list[int]]:
    """Split a bucket into batches (indices of same-shaped factorized tensors, two or more, with at
    most ``block_size / _BATCH_FRACTION`` elements together) and singles (everything else, stepped
    one tensor at a time)."""
    budget = block_size // _BATCH_FRACTION
    groups: dict[tuple[Any, ...], list[int]] = {}
    singles = []
    for i, (p, grad, state) in enumerate(items):
        numel = p.numel()
        if "row_v" not in state or numel == 0 or 2 * numel > budget or not p.is_contiguous():
            singles.append(i)
            continue
        sign = state.get("sign")
        key = (square_matricize(numel), p.dtype, grad.dtype, None if sign is None else sign.dtype)
        groups.setdefault(key, []).append(i)
    batches = []
    for key, members in groups.items():
        n, m = key[0]
        per_batch = budget // (n * m)
        for start in range(0, len(members), per_batch):
            chunk = members[start : start + per_batch]
            if len(chunk) > 1:
                batches.append(chunk)
            else:
                singles.extend(chunk)
    return batches, singles


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"Invalid {name}: {value!r} (expected a number in [{low}, {high}])")


def _validate_group(group: dict[str, Any]) -> None:
    """Raise ValueError naming the argument for any hyperparameter outside its domain."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid lr: Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
        if lr.device.type == "cpu" and lr.item() < 0:
            raise ValueError(f"Invalid lr: {lr.item()} (expected >= 0)")
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
    if group["sign_bits"] not in (1, 8) or isinstance(group["sign_bits"], bool):
        raise ValueError(f"Invalid sign_bits: {group['sign_bits']!r} (expected 1 or 8)")
    if not isinstance(group["vector_reshape"], bool):
        raise ValueError(f"Invalid vector_reshape: {group['vector_reshape']!r} (expected a bool)")
    block_size = group["block_size"]
    if block_size is not None and (not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 8):
        raise ValueError(f"Invalid block_size: {block_size!r} (expected None or an int >= 8)")
    if group["fused"] not in (None, True, False):
        raise ValueError(f"Invalid fused: {group['fused']!r} (expected None, True or False)")


def factor_dtype(param: Tensor) -> torch.dtype:
    """float64 factors for float64 parameters, float32 for everything else (bf16/fp16 math runs in fp32)."""
    return torch.float64 if param.dtype in (torch.float64, torch.complex128) else torch.float32


@functools.cache
def _fused_supported(device_type: str) -> bool:
    """torch.compile can fuse the step here: CUDA, or a CPU with a C++ compiler for inductor."""
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # no compiler found: inductor cannot build CPU kernels
        return False
    return True


class SMMF(Optimizer):
    """Square-Matricized Momentum Factorization (Park & Lee, AAAI 2025).

    An Adam-like optimizer whose moments are stored, for every tensor shape, as a near-square matrix
    factorized to rank one (a row and a column vector) plus a 1-bit sign matrix for the first moment.
    The positional arguments are those of the reference implementation, in its order and with its
    defaults. ``weight_decay_mode`` is 'adamw' (decoupled) or 'adam' (L2 added to the gradient);
    ``sign_bits`` is 1 (packed) or 8 (a byte per element, as the reference stores it); ``fused``
    compiles the step with torch.compile (None: when the device supports it); ``block_size`` bounds
    the elements processed at once, hence the temporary memory of a step (None: 2^19, and on GPUs at
    least 1/16 of the largest tensor, where fewer, larger blocks save kernel launches).
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
        )
        _validate_group(defaults)
        if beta is None and growth_rate is not None:
            warnings.warn(
                "SMMF: beta=None disables the first moment, so growth_rate is unused "
                "(pass growth_rate=None to silence this warning)",
                UserWarning,
                stacklevel=2,
            )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate_group(group)
        for p in group["params"]:
            if p.is_sparse:
                raise ValueError("SMMF does not support sparse parameters")

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

    # ------------------------------------------------------------------ state

    def _init_state(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        fd = factor_dtype(p)
        state["step"] = torch.zeros((), dtype=torch.float32, device=sharding.local(p).device)
        if is_factored(p.shape, group["vector_reshape"]):
            lengths = sharding.state_lengths(p, group["sign_bits"])
            state["row_v"] = sharding.zeros_like_state(p, lengths["row_v"], fd)
            state["col_v"] = sharding.zeros_like_state(p, lengths["col_v"], fd)
        else:
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=fd)

    def _ensure_momentum(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Create or convert first-moment state to match the group (beta or sign_bits may have changed)."""
        if group["beta"] is None:
            return
        if "row_v" not in state:
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p, dtype=factor_dtype(p))
            return
        if "sign" not in state:
            lengths = sharding.state_lengths(p, group["sign_bits"])
            state["row_m"] = sharding.zeros_like_state(p, lengths["row_m"], factor_dtype(p))
            state["col_m"] = sharding.zeros_like_state(p, lengths["col_m"], factor_dtype(p))
            sign_dtype = torch.uint8 if group["sign_bits"] == 1 else torch.bool
            state["sign"] = sharding.zeros_like_state(p, lengths["sign"], sign_dtype)
        sign = state["sign"]
        wanted = torch.uint8 if group["sign_bits"] == 1 else torch.bool
        if sign.dtype == wanted:
            return
        if sharding.is_dtensor(sign):
            raise ValueError("SMMF cannot change sign_bits of a sharded (DTensor) parameter's existing state")
        n, m = square_matricize(p.numel())
        if wanted == torch.uint8:
            state["sign"] = pack_signs(sign.view(n, m))
        else:
            state["sign"] = unpack_signs(sign, n, m).view(-1)

    # ------------------------------------------------------------------ step

    @staticmethod
    def _hyperparameters(group: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Tensor:
        decoupled = group["weight_decay_mode"] == "adamw"
        values = [0.0] * kernels.HP_SIZE
        lr = group["lr"]
        values[kernels.HP_LR] = 0.0 if isinstance(lr, Tensor) else float(lr)
        values[kernels.HP_BETA] = group["beta"] if group["beta"] is not None else 0.0
        values[kernels.HP_GROWTH] = group["growth_rate"] if group["growth_rate"] is not None else 0.0
        values[kernels.HP_DECAY] = group["decay_rate"]
        values[kernels.HP_EPS] = group["eps"]
        values[kernels.HP_WD_DECOUPLED] = group["weight_decay"] if decoupled else 0.0
        values[kernels.HP_WD_COUPLED] = 0.0 if decoupled else group["weight_decay"]
        values[kernels.HP_SIGN] = -1.0 if group["maximize"] else 1.0
        hp = torch.tensor(values, dtype=dtype, device=device)
        if isinstance(lr, Tensor):
            hp[kernels.HP_LR] = lr.to(device=device, dtype=dtype)
        return hp

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            buckets: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, Tensor, dict[str, Any]]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("SMMF does not support sparse gradients")
                state = self.state[p]
                if torch.is_complex(p):
                    p, grad = torch.view_as_real(p), torch.view_as_real(grad)
                if not state:
                    self._init_state(p, group, state)
                self._ensure_momentum(p, group, state)
                p_local = sharding.local(p)
                items = buckets.setdefault((p_local.device, factor_dtype(p)), [])
                items.append((p_local, sharding.local_grad(p, grad), self._local_state(p_local, state)))
            for (device, dtype), items in buckets.items():
                self._step_bucket(group, device, dtype, items)
        return loss

    @staticmethod
    def _local_state(p_local: Tensor, state: dict[str, Any]) -> dict[str, Any]:
        """The state as this rank's plain tensors: DTensor vectors unwrapped and cut to this shard's length."""
        if not any(sharding.is_dtensor(v) for v in state.values()):
            return state
        sign = state.get("sign")
        lengths = sharding.factored_lengths(p_local.numel(), 1 if sign is None or sign.dtype == torch.uint8 else 8)
        out = {}
        for key, value in state.items():
            value = sharding.local(value)
            out[key] = value[: lengths[key]] if key in lengths else value
        return out

    def _step_bucket(
        self,
        group: dict[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        items: list[tuple[Tensor, Tensor, dict[str, Any]]],
    ) -> None:
        """Advance step counters and schedules for all tensors of one device/dtype at once, then update
        same-shaped small tensors a batch per kernel call and the rest one by one."""
        block_size = _block_size(group["block_size"], device, items)
        batches, singles = _plan(items, block_size)
        items = [items[i] for batch in batches for i in batch] + [items[i] for i in singles]
        steps = [state["step"] for _, _, state in items]
        torch._foreach_add_(steps, 1)
        hp = self._hyperparameters(group, dtype, device)
        # detach(): rows are aliases without a view base, so that dynamo does not guard on the base's shape
        scheds = kernels.schedules(hp, torch.stack(steps)).detach()
        fused = group["fused"]
        if fused is None:
            fused = _fused_supported(device.type)
        start = 0
        for batch in batches:
            stop = start + len(batch)
            self._factored_batch(items[start:stop], hp, scheds[start:stop], fused)
            start = stop
        for i in range(start, len(items)):
            p, grad, state = items[i]
            if p.numel() == 0:
                continue
            sched = scheds[i]
            work = p if p.is_contiguous() else p.contiguous()
            grad = grad.contiguous()
            if "row_v" in state:
                self._factored_step(work, grad, state, block_size, hp, sched, fused)
            else:
                exp_avg = state.get("exp_avg")
                fn = kernels.compiled(kernels.dense_step) if fused else kernels.dense_step
                fn(
                    work.view(-1).detach(),
                    grad.view(-1).detach(),
                    None if exp_avg is None else exp_avg.view(-1).detach(),
                    state["exp_avg_sq"].view(-1).detach(),
                    hp,
                    sched,
                )
            if work is not p:
                p.copy_(work)

    @staticmethod
    def _factored_batch(
        items: list[tuple[Tensor, Tensor, dict[str, Any]]], hp: Tensor, sched: Tensor, fused: bool
    ) -> None:
        """Update B same-shaped factorized tensors in one kernel call: stack them, step the (B, n, m)
        batch, and copy every result back with one foreach call. Small tensors are where per-call
        overhead (Python, guards, kernel launches) outweighs the arithmetic, on GPUs most of all."""
        n, m = square_matricize(items[0][0].numel())
        keys = [key for key in _FACTOR_KEYS if key in items[0][2]]
        views = [p.view(n, m) for p, _, _ in items]
        p_b = torch.stack(views)
        g_b = torch.stack([g.reshape(n, m) for _, g, _ in items])
        state_b = {key: torch.stack([state[key] for _, _, state in items]) for key in keys}
        _whole_step(p_b, g_b, state_b, hp, sched, fused)
        targets = views + [state[key] for key in keys for _, _, state in items]
        results = list(p_b.unbind()) + [row for key in keys for row in state_b[key].unbind()]
        torch._foreach_copy_(targets, results)

    @staticmethod
    def _factored_step(
        p: Tensor, grad: Tensor, state: dict[str, Any], block_size: int, hp: Tensor, sched: Tensor, fused: bool
    ) -> None:
        """Update one factorized tensor: in one kernel call if it fits a block, else row block by row block."""
        n, m = square_matricize(p.numel())
        pv, gv = p.view(n, m).detach(), grad.view(n, m).detach()
        if n * m <= block_size:
            _whole_step(pv, gv, state, hp, sched, fused)
            return
        sign, packed = _sign_bytes(state.get("sign"))
        row_m, col_m = state.get("row_m"), state.get("col_m")
        row_v, col_v = state["row_v"], state["col_v"]
        wide = fused and n * m >= _WIDE_NUMEL
        rows = max(8, block_size // m // 8 * 8)  # a multiple of 8 rows: whole bytes of packed sign
        block_fn = kernels.compiled(kernels.factored_block_step, wide) if fused else kernels.factored_block_step
        sum_m: Tensor | None = None
        sum_v: Tensor | None = None
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            # detach(): aliases without a view base, so that dynamo does not guard on the base's shape
            p_blk, g_blk, row_v_blk = pv[start:stop].detach(), gv[start:stop].detach(), row_v[start:stop].detach()
            row_m_blk = None if row_m is None else row_m[start:stop].detach()
            sign_blk = None
            if sign is not None:
                sign_blk = (sign[start * m // 8 : (stop * m + 7) // 8] if packed else sign[start * m : stop * m]).detach()
            if wide:
                kernels.mark_block((sign_blk, row_m_blk, row_v_blk), (p_blk, g_blk, col_m, col_v))
            part_m, part_v = block_fn(p_blk, g_blk, sign_blk, row_m_blk, col_m, row_v_blk, col_v, hp, sched, packed)
            sum_v = part_v if sum_v is None else sum_v + part_v
            if part_m is not None:
                sum_m = part_m if sum_m is None else sum_m + part_m
        norm = kernels.compiled(kernels.normalize_columns) if fused else kernels.normalize_columns
        if sum_v is not None:
            norm(col_v, sum_v)
        if sum_m is not None and col_m is not None:
            norm(col_m, sum_m)

    # ------------------------------------------------------------------ state dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state without torch.optim's cast of every state tensor to the parameter dtype.

        That cast would turn the packed sign into floats and give bf16 parameters bf16 factors (a defect
        of the reference); here each tensor keeps its saved dtype and only moves to the parameter's device.
        ``step`` becomes a float32 0-d tensor on that device, also when saved as a number (older torch).
        """
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
