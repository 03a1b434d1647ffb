"""Pass 1's launch settings swept on a GPU: the time of a Triton step's kernels for real shapes.

``smmf.triton_backend`` fixes pass 1's launch (``PASS1_OPTIONS``: warps, register cap) and its block of
rows (``BLOCK_R``) from machine code read without a GPU (benchmarks/kernel_sass.py). This times the
four kernels of one step (``triton_backend.step``, CUDA events, median of ``triton.testing.do_bench``)
for each setting given, on the same tensors: four decoder layers of a Llama-2-7B (bf16 weights,
fp32 factors) or GPT-2 124M's tensors (fp32), gradients drawn once. The step's effective bandwidth
counts the bytes it must move: gradient and parameter read, parameter written, signs read and written.

    python benchmarks/pass1_sweep.py --workload llama-layers --configs 4:96:4,4:0:4,4:128:8,8:96:8
    python benchmarks/pass1_sweep.py --workload gpt2 --configs 4:96:4

A setting is WARPS:MAXNREG:BLOCK_R[:PREFETCH] (MAXNREG 0: no cap; PREFETCH 1: pass 1 loads a tile's next
block of rows before computing on the current one, 0 or left out: it does not). Each new setting
compiles pass 1 again (seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import torch

import smmf
from smmf import triton_backend
from smmf.commands.models import build_meta_model, meta_shapes

LLAMA_LAYER = [(4096, 4096)] * 4 + [(11008, 4096), (11008, 4096), (4096, 11008), (4096,), (4096,)]


def _shapes(workload: str) -> tuple[list[tuple[int, ...]], torch.dtype]:
    if workload == "llama-layers":
        return LLAMA_LAYER * 4, torch.bfloat16
    return meta_shapes(build_meta_model(workload)), torch.float32


def _captured_step(params: list[torch.Tensor]) -> tuple[smmf.SMMF, tuple[Any, ...]]:
    """Step twice through SMMF (state, plan, direct launches); return the optimizer (its state must
    outlive the plan, whose table holds the state's addresses) and the last arguments it gave
    ``triton_backend.step``."""
    seen: list[tuple[Any, ...]] = []
    step = triton_backend.step

    def record(*args: Any) -> None:
        seen.append(args)
        step(*args)

    triton_backend.step = record
    try:
        opt = smmf.SMMF(params, lr=1e-4, backend="triton")
        for _ in range(2):
            opt.step()
    finally:
        triton_backend.step = step
    return opt, seen[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="llama-layers", help="llama-layers, or a model of smmf's (gpt2, ...)")
    parser.add_argument("--configs", default="4:96:4", help="comma-separated WARPS:MAXNREG:BLOCK_R[:PREFETCH]")
    args = parser.parse_args()
    import triton.testing

    shapes, dtype = _shapes(args.workload)
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.randn(s, device="cuda", generator=gen).to(dtype).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device="cuda", generator=gen).to(dtype)
    opt, (plan, p_dtype, g_dtype, hp, lr) = _captured_step(params)
    numel = sum(p.numel() for p in params)
    moved = numel * (3 * params[0].element_size()) + 2 * numel / 8
    print(
        f"{args.workload}: {len(params)} tensors, {numel / 1e6:.1f} M elements, {dtype}; {torch.cuda.get_device_name()}"
    )
    print(f"tiles {plan.tile_map.numel()}, tile {plan.tile_rows} rows x {plan.tile_bytes * 8} columns\n")
    print("| warps | maxnreg | BLOCK_R | prefetch | step's kernels, ms | GB/s moved |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for config in args.configs.split(","):
        warps, maxnreg, block_r, prefetch = (int(x) for x in (config + ":0").split(":")[:4])
        setting = f"| {warps} | {maxnreg or '-'} | {block_r} | {'yes' if prefetch else 'no'} |"
        if plan.tile_rows % block_r:
            print(f"{setting} tiles of {plan.tile_rows} rows: not a multiple | - |")
            continue
        options = {"num_warps": warps, **({"maxnreg": maxnreg} if maxnreg else {})}
        variant = dataclasses.replace(plan, block_rows=block_r, launches={})
        triton_backend.PASS1_OPTIONS = options
        triton_backend.PASS1_PREFETCH = bool(prefetch)
        ms = triton.testing.do_bench(
            lambda v=variant: triton_backend.step(v, p_dtype, g_dtype, hp, lr), warmup=50, rep=200, return_mode="median"
        )
        print(f"{setting} {ms:.3f} | {moved / ms / 1e6:,.0f} |", flush=True)
    assert opt.state and all(math.isfinite(float(p.detach().float().abs().max())) for p in params)


if __name__ == "__main__":
    main()
