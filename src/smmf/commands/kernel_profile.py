"""What the GPU does for a piece of work, from ``torch.profiler``: how many kernels, and how long it is busy.

A step's wall time on the host says nothing about where it goes. Beside it, the GPU's busy time (the
sum of the durations of the kernels, copies and fills the work launched; they run one after another on
one stream) tells a step that waits on the host (busy much less than wall) from one that waits on the
GPU, and the longest kernels say which to look at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["profile_kernels", "summarize"]

TOP_KERNELS = 8


def summarize(activities: Iterable[tuple[str, float]], top: int = TOP_KERNELS) -> dict[str, Any]:
    """``launches``, ``gpu_ms`` and the ``top`` longest kernels by name (``name``, ``count``, ``ms``) of
    (name, duration in microseconds) pairs, one per kernel, copy or fill the GPU ran."""
    by_name: dict[str, list[float]] = {}
    launches = 0
    for name, duration_us in activities:
        launches += 1
        by_name.setdefault(name, []).append(duration_us)
    longest = sorted(by_name.items(), key=lambda item: -sum(item[1]))
    kernels = [{"name": name, "count": len(us), "ms": sum(us) / 1e3} for name, us in longest[:top]]
    return {"launches": launches, "gpu_ms": sum(map(sum, by_name.values())) / 1e3, "kernels": kernels}


def profile_kernels(work: Callable[[], object], device: torch.device) -> dict[str, Any] | None:
    """Run ``work`` once under the profiler and :func:`summarize` what it ran on the GPU; None off CUDA,
    or where the profiler saw no GPU activity at all (CUPTI unavailable: not a step of zero kernels)."""
    if device.type != "cuda":
        return None
    from torch.profiler import DeviceType, ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        work()
        torch.cuda.synchronize(device)
    activities = [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == DeviceType.CUDA]
    return summarize(activities) if activities else None
