"""Pass 1's launch settings swept on a GPU: the time of a Triton step's kernels for real shapes.

``smmf.triton_backend`` fixes pass 1's launch (``PASS1_OPTIONS``: warps, register cap) and its block
(``BLOCK_R`` rows by 8 x ``BLOCK_J`` columns) from machine code read without a GPU
(benchmarks/kernel_sass.py). This times the four kernels of one step (``triton_backend.step``, CUDA
events, median of ``triton.testing.do_bench``) for each setting given, on the same tensors: four decoder
layers of a Llama-2-7B (bf16 weights, fp32 factors) or GPT-2 124M's tensors (fp32), gradients drawn
once. The step's effective bandwidth counts the bytes it must move: gradient and parameter read,
parameter written, signs read and written.

    python benchmarks/pass1_sweep.py --workload llama-layers --configs 4:96:4,4:0:4,4:128:4:0:32,4:96:4:0:0:16
    python benchmarks/pass1_sweep.py --workload gpt2 --configs 4:96:4

A setting is WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK]]] (MAXNREG 0: no cap; PREFETCH 1: pass 1
loads a tile's next block of rows before computing on the current one, 0 or left out: it does not;
BLOCK_J: sign bytes a block, 0 or left out: the plan's; ROW_CHUNK: rows stepped through all a tile's
column blocks before the next rows, 0 or left out: all of them). Each new setting compiles pass 1 again
(seconds).
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


def setting(plan: triton_backend.Plan, config: str) -> tuple[str, triton_backend.Plan | None]:
    """A config's table cells and the plan to time it with (None where the plan's tiles are not a
    whole number of its blocks); sets pass 1's module-level launch settings to the config's."""
    warps, maxnreg, block_r, prefetch, block_j, chunk = (int(x) for x in (config + ":0:0:0").split(":")[:6])
    block_j = block_j or plan.block_bytes
    cells = f"| {warps} | {maxnreg or '-'} | {block_r} | {'yes' if prefetch else 'no'} | {block_j} | {chunk or '-'} |"
    if plan.tile_rows % block_r or plan.tile_bytes % block_j or chunk % block_r:
        why = f"tiles of {plan.tile_rows} rows x {plan.tile_bytes} bytes, chunks of {chunk} rows: not a multiple"
        return f"{cells} {why} | - |", None
    triton_backend.PASS1_OPTIONS = {block_j: {"num_warps": warps, **({"maxnreg": maxnreg} if maxnreg else {})}}
    triton_backend.PASS1_PREFETCH = bool(prefetch)
    triton_backend.PASS1_ROW_CHUNK = chunk
    return cells, dataclasses.replace(plan, block_rows=block_r, block_bytes=block_j, launches={})


def parameters(shapes: list[tuple[int, ...]], dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    """Parameters of ``shapes`` with gradients, drawn from a seeded generator."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, device=device, generator=gen).to(dtype).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device=device, generator=gen).to(dtype)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="llama-layers", help="llama-layers, or a model of smmf's (gpt2, ...)")
    parser.add_argument(
        "--configs", default="4:96:4", help="comma-separated WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK]]]"
    )
    args = parser.parse_args()
    import triton.testing

    shapes, dtype = _shapes(args.workload)
    params = parameters(shapes, dtype, "cuda")
    opt, (plan, p_dtype, g_dtype, hp, lr) = _captured_step(params)
    numel = sum(p.numel() for p in params)
    moved = numel * (3 * params[0].element_size()) + 2 * numel / 8
    print(
        f"{args.workload}: {len(params)} tensors, {numel / 1e6:.1f} M elements, {dtype}; {torch.cuda.get_device_name()}"
    )
    print(f"tiles {plan.tile_map.numel()}, tile {plan.tile_rows} rows x {plan.tile_bytes * 8} columns\n")
    print("| warps | maxnreg | BLOCK_R | prefetch | BLOCK_J | row chunk | step's kernels, ms | GB/s moved |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config in args.configs.split(","):
        cells, variant = setting(plan, config)
        if variant is None:
            print(cells)
            continue
        ms = triton.testing.do_bench(
            lambda v=variant: triton_backend.step(v, p_dtype, g_dtype, hp, lr), warmup=50, rep=200, return_mode="median"
        )
        print(f"{cells} {ms:.3f} | {moved / ms / 1e6:,.0f} |", flush=True)
    assert opt.state and all(math.isfinite(float(p.detach().float().abs().max())) for p in params)


if __name__ == "__main__":
    main()
