"""``smmf bench``'s measurements, each in a fresh interpreter: one optimizer's step time and memory.

Every optimizer runs in fresh subprocesses of its own (one for timing and, on CPU, one for memory), so
that one optimizer's compile caches, allocator pools and RSS high-water mark cannot leak into another's
numbers; the parent only collects the JSON each worker writes.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import triton_launch
from ..memory import optimizer_state_bytes
from . import registry

__all__ = ["LR", "machine", "run_worker", "measure_memory"]

LR = 1e-3  # every optimizer's lr in a benchmark: the steps are timed, not trained


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str, threads: int | None) -> str:
    """The machine a benchmark ran on, in words: GPU and host CPU, or CPU and threads."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, host {_cpu_model()} ({os.cpu_count()} CPUs)"
    return f"{_cpu_model()}, {os.cpu_count()} CPUs, {threads or torch.get_num_threads()} torch threads"


def command_prefix() -> str:
    """The environment settings a benchmark's figures depend on, as a command line's prefix (the Triton
    backend's launches of passes 0 and 1, where overridden), so that a report's command reproduces them."""
    names = (triton_launch.PASS0_ENV, triton_launch.PASS1_ENV)
    return "".join(f"{name}={os.environ[name]} " for name in names if os.environ.get(name))


# ----------------------------------------------------------------------------- CPU memory probes


def _proc_status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return int(match.group(1))


def _reset_rss_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


# Set in the memory worker's environment before it starts: glibc then serves every block over 64 KiB
# with its own mmap and unmaps it on free. With the default adaptive threshold (up to 32 MiB) freed
# temporaries stay in the heap, and whether a step's temporaries raise the RSS depends on the holes
# earlier steps left there; measured here, the same reference step read anywhere from 20 to 190 MiB.
# Timing runs in a separate process with the default allocator, so that no optimizer pays for page
# faults it would not see in training.
_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
_MEMORY_STEPS = 3  # the median of a few steps, against page-reclaim noise


# ----------------------------------------------------------------------------- worker (one optimizer, fresh process)


def _setup(
    name: str, shapes: Sequence[Sequence[int]], device: torch.device
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    torch.manual_seed(0)
    params = [torch.randn(tuple(s), device=device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params, registry.build(name, params, lr=LR, foreach=True)


def _cpu_peaks(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Extra RSS of a few steps (median), each from a reset high-water mark."""
    peaks = []
    for _ in range(_MEMORY_STEPS):
        gc.collect()
        _reset_rss_peak()
        before = _proc_status_kib("VmRSS")
        opt.step()
        peaks.append(max(0, _proc_status_kib("VmHWM") - before) * 1024)
    return {"peak_extra_bytes_all": peaks, "peak_extra_bytes": statistics.median(peaks)}


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: step times after warm-up (mode "time") or one step's extra memory ("memory").

    On CUDA both come from the timing process: max_memory_allocated is exact whatever ran before.
    """
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    cuda = dev.type == "cuda"
    params, opt = _setup(spec["name"], spec["shapes"], dev)

    def timed_steps(count: int) -> list[float]:
        seconds = []
        for _ in range(count):
            t0 = time.perf_counter()
            opt.step()
            if cuda:
                torch.cuda.synchronize(dev)
            seconds.append(time.perf_counter() - t0)
        return seconds

    result: dict[str, Any] = {"warmup_s": timed_steps(spec["warmup"])}
    if spec["mode"] == "time":
        result["step_s"] = timed_steps(spec["steps"])
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        opt.step()
        torch.cuda.synchronize(dev)
        result["peak_extra_bytes"] = torch.cuda.max_memory_allocated(dev) - before
    elif spec["mode"] == "memory":
        result.update(_cpu_peaks(opt))
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise RuntimeError("non-finite parameters after the benchmark steps")
    result["state_bytes"] = optimizer_state_bytes(opt)
    return result


def run_worker(
    spec: dict[str, Any],
    extra_env: dict[str, str] | None = None,
    module: str = "smmf.commands.bench_worker",
    function: str = "_measure",
) -> dict[str, Any]:
    """Run ``module.function(spec)`` (a dict of plain values in, one out) in a fresh interpreter;
    returns its result or ``{"error": ...}``."""
    env = {**os.environ, **(extra_env or {})}
    src = str(Path(__file__).resolve().parents[2])  # the import root of this smmf, so the child imports the same one
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        code = (
            f"import json, sys; from {module} import {function} as measure; "
            "open(sys.argv[2], 'w').write(json.dumps(measure(json.loads(sys.argv[1]))))"
        )
        proc = subprocess.run(  # cwd: ``-c`` puts the working directory first on sys.path
            [sys.executable, "-c", code, json.dumps(spec), str(out)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
            return {"error": lines[-1] if lines else f"worker exited with {proc.returncode}"}
        return json.loads(out.read_text())


def measure_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak extra RSS of one step, in a fresh process of its own with mmap-backed allocations (CPU)."""
    memory = run_worker({**spec, "mode": "memory", "warmup": min(2, max(1, spec["warmup"]))}, _MEMORY_ENV)
    if "error" in memory:
        return {"error": f"memory run: {memory['error']}"}
    return {k: memory[k] for k in ("peak_extra_bytes", "peak_extra_bytes_all")}
