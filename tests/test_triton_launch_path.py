"""The Triton step's launches of compiled kernels, without a GPU. Triton's own dispatch compiles the
kernels for an H100 (sm_90, the GPU's launch settings) and hands them to a stand-in driver whose
launcher records each launch instead of running it. After a plan's first step every launch skips the
dispatch (smmf.triton_backend._launch) and must pass the compiled kernel's launcher exactly what
Triton's dispatch passed it. The interpreter never takes this path; on an H100 a grid of one
dimension there failed every CUDA test (docs/gpu-2026-11-27-h100/run2-42c4d7c.log)."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import benchmark_modules

triton = pytest.importorskip("triton")
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from smmf import SMMF, compilers, triton_backend, triton_launch  # noqa: E402

H100 = {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32}


# every launch the stand-in driver's launchers took: Triton keeps a compiled kernel, with its launcher,
# from one test to the next
LAUNCHES: list[tuple[Any, ...]] = []


class Launcher:
    """Stands in for a compiled kernel's launcher: records its arguments."""

    def __init__(self, src: Any, metadata: Any) -> None:
        pass

    def __call__(self, *args: Any) -> None:
        LAUNCHES.append(args)


class RecordingDriver(benchmark_modules.load("triton_dispatch").StandInDriver):
    """Stands in for Triton's CUDA driver: device 0, stream 0, an sm_90 target (as
    benchmarks/triton_dispatch.py's does); loading a kernel succeeds and its launcher records the launch
    in ``LAUNCHES``."""

    launcher_cls = Launcher

    def __init__(self) -> None:
        self.utils = SimpleNamespace(load_binary=self._load_binary, get_device_properties=lambda device: H100)

    @staticmethod
    def _load_binary(name: str, kernel: bytes, shared: int, device: int) -> tuple[int, int, int, int, int]:
        assert kernel, name  # the cubin ptxas built
        return 1, 2, 0, 0, 1024  # module, function, registers, spills, threads a block at most


# Where a GPU or the interpreter runs Triton's kernels, this process's compiled kernels must keep their
# real launchers (tests/test_cuda.py tests this path on the GPU itself).
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="the stand-in driver would leave its launchers in Triton's caches for the GPU's or interpreter's kernels",
)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> RecordingDriver:
    """The stand-in driver made Triton's active one, the Triton backend taking CPU tensors with the
    GPU's launch settings."""
    monkeypatch.setattr(compilers, "triton_unavailable_reason", lambda device: "")
    monkeypatch.setattr(triton_backend, "pass1_launch", lambda size, on_gpu: triton_launch.pass1_launch(size, True))
    LAUNCHES.clear()
    stand_in = RecordingDriver()
    # set_active's counterpart, reset_active, looks for a real driver, and finds none without a GPU
    monkeypatch.setattr(driver, "_active", stand_in)
    return stand_in


def _comparable(launch: tuple[Any, ...]) -> list[Any]:
    """A launch's arguments with tensors as (dtype, shape, address) and the launch metadata left out."""
    grid_stream_kernel, _metadata, args = launch[:6], launch[6], launch[7:]
    return [*grid_stream_kernel, *((a.dtype, tuple(a.shape), a.data_ptr()) if torch.is_tensor(a) else a for a in args)]


def _params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    shapes = [(64, 48), (100,), (7, 3, 3, 3), (5, 1)]
    params = [torch.nn.Parameter(torch.randn(shape).to(dtype)) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


@pytest.mark.parametrize(
    ("dtype", "kwargs", "pass0", "launches"),
    [
        (torch.float32, {}, "", 4),
        (torch.bfloat16, {"stochastic_rounding": True}, "", 4),
        (torch.float32, {"sign_bits": 8, "beta": None, "growth_rate": None}, "", 4),
        (torch.float32, {}, "4:0:2048:1:1:1", 3),  # pass 0 in pass 1's queue
    ],
    ids=["fp32", "bf16-stochastic", "8-bit-no-momentum", "queued-pass0"],
)
@pytest.mark.usefixtures("recording")
def test_later_steps_launch_compiled_kernels_directly_with_the_dispatchs_arguments(
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
    kwargs: dict[str, Any],
    pass0: str,
    launches: int,
) -> None:
    if pass0:
        monkeypatch.setenv(triton_launch.PASS0_ENV, pass0)
    opt = SMMF(_params(dtype), lr=1e-3, backend="triton", **kwargs)
    opt.step()
    dispatched = list(LAUNCHES)
    (plan,) = opt._caches[0].plans.values()
    assert len(dispatched) == len(plan.launches) == launches  # each kernel compiled and kept for later steps
    LAUNCHES.clear()

    def dispatch(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a later step went through Triton's dispatch")

    monkeypatch.setattr(JITFunction, "run", dispatch)
    tensors = plan.table.shape[0]
    scratch = {(torch.float32, (plan.scratch_numel + tensors,)), (torch.float32, (tensors,))}  # and its flags' view
    for new_gradients in (False, True):  # new gradients rewrite the plan's table, not its launches
        if new_gradients:
            for p in opt.param_groups[0]["params"]:
                p.grad = torch.randn_like(p)
        opt.step()
        direct, LAUNCHES[:] = list(LAUNCHES), []
        assert len(direct) == launches
        for first, later in zip(dispatched, direct, strict=True):
            before, after = _comparable(first), _comparable(later)
            assert len(before) == len(after) and min(before[:3]) >= 1  # a grid of three dimensions
            # the same grid, stream, kernel and arguments; only the step's fresh scratch lies elsewhere
            moved = [b for a, b in zip(before, after, strict=True) if a != b]
            assert all(isinstance(m, tuple) and m[:2] in scratch for m in moved), (before, after)
