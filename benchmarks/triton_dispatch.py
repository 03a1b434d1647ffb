"""Host cost of Triton's dispatch per kernel launch, measured without a GPU.

``kernel[grid](*args)`` binds the arguments, computes their specialization and a cache key, and looks
the compiled kernel up, in Python, before the launcher's driver call. This times that part for
``smmf.triton_tile.step_tiles`` with the driver replaced by a stand-in (a fixed sm_90 target, stream 0)
and the compiled kernel by one whose launch does nothing, after a first call has filled the cache, so
what remains is exactly the dispatch a cached launch pays. Beside it, the same stand-in launched the
way ``smmf.triton_backend`` launches after a plan's first step: its launcher called directly.

    python benchmarks/triton_dispatch.py      # with the Triton to measure (3.6 is the GPU machine's)
"""

from __future__ import annotations

import time
from typing import Any

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.runtime import driver

from smmf import triton_tile


class StandInDriver:
    """Stands in for the CUDA driver: the one thing dispatch asks of it is where and for what to run
    (tests/test_triton_launch_path.py adds loading and launching)."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


class _Compiled:
    """Stands in for the compiled kernel: its launch does nothing."""

    function = 0
    packed_metadata = None

    def launch_metadata(self, *args: Any) -> None:
        return None

    def run(self, *args: Any) -> None:
        return None


def _per_call_us(call: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    driver.set_active(StandInDriver())
    kernel = triton_tile.step_tiles
    compiled = _Compiled()

    def compile_into_cache(key: Any, *args: Any, **kwargs: Any) -> _Compiled:
        kernel.device_caches[0][0][key] = compiled  # where a real compilation leaves it
        return compiled

    kernel._do_compile = compile_into_cache
    tensors = [torch.zeros(64, dtype=torch.int64) for _ in range(7)]
    constexprs = {
        "P_DT": tl.bfloat16, "G_DT": tl.bfloat16, "ACC": tl.float32, "HAS_M": True, "PACKED": True,
        "STOCHASTIC": False, "PREFETCH": False, "ROW_CHUNK": 0, "STAGES": 1, "BLOCK_R": 4,
        "BLOCK_J": 16,
    }  # fmt: skip
    options = {"num_warps": 4, "maxnreg": 96}

    def dispatched() -> None:
        kernel[(1000,)](*tensors, 32, 64, **constexprs, **options)

    def direct() -> None:
        compiled.run(1000, 1, 1, 0, compiled.function, compiled.packed_metadata, None, None, None,
                     *tensors, 32, 64, *constexprs.values())  # fmt: skip

    dispatched()  # fills the cache
    calls = 20_000
    print(f"Triton {triton.__version__}, torch {torch.__version__}, step_tiles (9 arguments, 10 constexprs)\n")
    print("| launch | µs of host time per launch, before the driver call |\n| --- | ---: |")
    print(f"| `kernel[grid](...)`, cached | {_per_call_us(dispatched, calls):.2f} |")
    print(f"| compiled kernel's launcher, called directly | {_per_call_us(direct, calls):.2f} |")


if __name__ == "__main__":
    main()
