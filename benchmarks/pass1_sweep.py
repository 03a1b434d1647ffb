"""Launch settings of passes 1 and 0 swept on a GPU: the time of a Triton step's kernels for real shapes.

``smmf.triton_launch.PASS1`` fixes pass 1's launch (block, warps, register cap, loads in flight) by the
parameter's bytes an element, and ``PASS0`` pass 0's by the gradient's, from machine code read without
a GPU (benchmarks/kernel_sass.py) and the timings of this script. It times the four kernels of one step
(``triton_backend.step``, CUDA events, median of ``triton.testing.do_bench``) for each setting given, on
the same tensors: four decoder layers of a Llama-2-7B (bf16 weights, fp32 factors) or GPT-2 124M's
tensors (fp32), gradients drawn once.
The step's effective bandwidth counts the bytes it must move: gradient and parameter read, parameter
written, signs read and written. Each setting first steps once from the same state as the default
launch and must give the same step (signs but where M is within rounding of 0, bf16 parameters within
an ulp, factors to 1e-5), or it is reported and not timed; a pass-0 setting must also skip a tensor
whose gradient holds an inf.

    python benchmarks/pass1_sweep.py --workload llama-layers --configs 4:96:4,4:128:4:0:32,4:128:4:0:16:0:3
    python benchmarks/pass1_sweep.py --workload gpt2 --configs 4:96:4,4:128:4:0:16:0:3 --best runs/best-fp32.txt

A setting is WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK[:STAGES]]]], as ``SMMF_TRITON_PASS1``
takes it (:class:`smmf.triton_launch.Pass1Launch`: MAXNREG 0, no cap; PREFETCH 1, the next block's loads
in registers; BLOCK_J 16 or 32; ROW_CHUNK 0, all a tile's rows; STAGES > 1, the loop over rows pipelined
through shared memory). Each new setting compiles pass 1 again (seconds). ``--best FILE`` writes the
fastest setting there, for ``SMMF_TRITON_PASS1`` (benchmarks/gpu_check.sh's ``tuned`` stage).

``--pass0-configs`` times pass 0's settings, WARPS:MAXNREG:BLOCK[:STAGES[:SPLIT[:QUEUE]]] as ``SMMF_TRITON_PASS0``
takes them (:class:`smmf.triton_launch.Pass0Launch`; QUEUE >= 1: folded into pass 1's launch), each beside
pass 1's default launch, before pass 1's; ``--best-pass0 FILE`` writes the fastest. The two fastest
are then checked and timed together, as the tuned stage runs them; where that pass 0 makes the fastest
pass 1 step wrong or slower than beside today's pass 0, ``--best-pass0`` falls back to today's. A
setting that cannot run on the GPU is reported with what it raised, and the sweep goes on.

    python benchmarks/pass1_sweep.py --workload gpt2 --configs 4:96:4 --pass0-configs 4:0:2048,4:0:2048:1:1:1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import smmf
from smmf import triton_backend
from smmf.commands.models import build_meta_model, meta_shapes
from smmf.triton_launch import Pass0Launch, Pass1Launch

LLAMA_LAYER = [(4096, 4096)] * 4 + [(11008, 4096), (11008, 4096), (4096, 11008), (4096,), (4096,)]
TINY = [(160, 160), (64, 96), (33, 12), (7,)]  # for the tests, under Triton's interpreter
Check = Callable[[triton_backend.Plan], str | None]  # why a setting cannot be timed (None: it can)


def _shapes(workload: str) -> tuple[list[tuple[int, ...]], torch.dtype]:
    if workload == "llama-layers":
        return LLAMA_LAYER * 4, torch.bfloat16
    if workload == "tiny":
        return TINY, torch.float32
    return meta_shapes(build_meta_model(workload)), torch.float32


def _captured_step(params: list[torch.Tensor]) -> tuple[smmf.SMMF, tuple[Any, ...]]:
    """Step twice through SMMF (state, plan, direct launches); return the optimizer (its state must
    outlive the plan, whose table holds the state's addresses) and the last arguments it gave
    ``triton_backend.step``."""
    seen: list[tuple[Any, ...]] = []
    step = triton_backend.step

    def record(
        plan: triton_backend.Plan, p_dtype: torch.dtype, g_dtype: torch.dtype, hp: torch.Tensor, lr: torch.Tensor
    ) -> None:
        seen.append((plan, p_dtype, g_dtype, hp, lr))
        step(plan, p_dtype, g_dtype, hp, lr)

    triton_backend.step = record
    try:
        opt = smmf.SMMF(params, lr=1e-4, backend="triton")
        for _ in range(2):
            opt.step()
    finally:
        triton_backend.step = step
    return opt, seen[-1]


def pass1_setting(plan: triton_backend.Plan, config: str) -> tuple[str, triton_backend.Plan | None]:
    """A pass-1 config's table cells and the plan to time it with (None where the plan's tiles are not a
    whole number of its blocks)."""
    launch = Pass1Launch.parse(config)
    flags = (launch.maxnreg or "-", launch.block_rows, "yes" if launch.prefetch else "no", launch.block_bytes)
    cells = "| " + " | ".join(str(c) for c in (launch.num_warps, *flags, launch.row_chunk or "-", launch.stages)) + " |"
    if plan.tile_rows % launch.block_rows or plan.tile_bytes % launch.block_bytes:
        why = f"tiles of {plan.tile_rows} rows x {plan.tile_bytes} bytes: not a whole number of blocks"
        return f"{cells} {why} | - |", None
    return cells, dataclasses.replace(plan, pass1=launch, launches={})


def pass0_setting(plan: triton_backend.Plan, config: str) -> tuple[str, triton_backend.Plan]:
    """A pass-0 config's table cells and the plan to time it with."""
    launch = Pass0Launch.parse(config)
    queue = f"{launch.queue - 1} ahead" if launch.queue else "-"
    fields = (launch.num_warps, launch.maxnreg or "-", launch.block, launch.stages, launch.split, queue)
    return "| " + " | ".join(str(f) for f in fields) + " |", triton_backend.with_pass0(plan, launch)


class Checker:
    """Whether a setting steps as the plan's own launch does, from the same parameters and state: a
    setting that differs is reported and never chosen, however fast. Each check starts from the state
    the checker was built with, as timing a setting steps the same tensors on from wherever it was."""

    def __init__(self, opt: smmf.SMMF, params: list[torch.Tensor], step_args: tuple[Any, ...]) -> None:
        self.addressed = (opt, params)  # the plan's table holds their tensors' (and gradients') addresses
        self.largest = max(range(len(params)), key=lambda i: params[i].numel())
        state = [v for p in params for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
        self.tensors = [p.detach() for p in params] + state
        self.before = [t.clone() for t in self.tensors]
        self.step_args = step_args[1:]
        triton_backend.step(step_args[0], *self.step_args)
        self.expected = [t.clone() for t in self.tensors]

    def _step_from_the_start(self, variant: triton_backend.Plan) -> None:
        for t, old in zip(self.tensors, self.before, strict=True):
            t.copy_(old)
        triton_backend.step(variant, *self.step_args)

    def mismatch(self, variant: triton_backend.Plan) -> str | None:
        """Why ``variant``'s step differs from the expected one (None: it does not)."""
        self._step_from_the_start(variant)
        try:
            for got, want in zip(self.tensors, self.expected, strict=True):
                if got.dtype == torch.uint8:  # signs: may differ only where M is within rounding of 0
                    if (got != want).float().mean() > 0.01:
                        return "more than 1% of the signs differ"
                else:  # bf16 parameters within an ulp; factors summed in another order
                    tolerance = 1e-2 if got.dtype == torch.bfloat16 else 1e-5
                    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance / 10)
        except AssertionError as exc:
            return str(exc).splitlines()[0]
        return None

    def misses_nonfinite(self, variant: triton_backend.Plan) -> str | None:
        """Why ``variant`` fails to skip the largest tensor when its gradient's last element is inf (None:
        it skips it); the gradient is restored after."""
        param = self.addressed[1][self.largest]
        grad = param.grad.view(-1)  # type: ignore[union-attr]  # parameters() gives every one
        kept = grad[-1].clone()
        grad[-1] = float("inf")
        try:
            self._step_from_the_start(variant)
        finally:
            grad[-1] = kept
        skipped = torch.equal(param.detach(), self.before[self.largest])
        return None if skipped else "stepped a tensor whose gradient holds an inf"


def parameters(shapes: list[tuple[int, ...]], dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    """Parameters of ``shapes`` with gradients, drawn from a seeded generator."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, device=device, generator=gen).to(dtype).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device=device, generator=gen).to(dtype)
    return params


def _or_what_it_raised(wrong: Check) -> Check:
    """``wrong``, with a setting that cannot compile or run on this GPU (out of shared memory, say) reported
    as what it raised, so that one setting does not cost the rest of a sweep its device time."""

    def check(variant: triton_backend.Plan) -> str | None:
        try:
            return wrong(variant)
        except Exception as exc:  # noqa: BLE001  # whatever Triton or the driver raises, it goes in the table
            return f"raised {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"

    return check


def _sweep(
    settings: Iterator[tuple[str, triton_backend.Plan | None]],
    wrong: Check,
    milliseconds: Callable[[triton_backend.Plan], float],
    moved: float,
    best: Path | None,
    text: Callable[[triton_backend.Plan], str],
) -> dict[str, float]:
    """Print a table row for each setting: why it cannot run, why it steps wrong, or its time and the
    bandwidth of ``moved`` bytes in that time; write the fastest setting's ``text`` to ``best``
    (rewritten after every row, so that a sweep cut short still names one). Returns each timed
    setting's milliseconds."""
    times: dict[str, float] = {}
    for cells, variant in settings:
        why = "" if variant is None else wrong(variant)
        if variant is None or why:
            print(cells if variant is None else f"{cells} steps unlike the default launch: {why} | - |", flush=True)
            continue
        ms = times[text(variant)] = milliseconds(variant)
        print(f"{cells} {ms:.3f} | {moved / ms / 1e6:,.0f} |", flush=True)
        if best:
            best.write_text(min(times, key=times.__getitem__) + "\n")
    return times


def _together(
    plan: triton_backend.Plan,
    fastest: tuple[dict[str, float], dict[str, float]],
    wrong: Check,
    milliseconds: Callable[[triton_backend.Plan], float],
    best_pass0: Path | None,
) -> None:
    """The fastest pass-1 and pass-0 settings in one step, as the tuned stage runs them: each sweep
    timed its settings beside the other pass's default launch, and a pass-0 setting folded into pass 1's
    launch compiles into the other's kernel. Where the pair steps wrong, or is slower than the fastest
    pass 1 beside today's pass 0, ``best_pass0`` is rewritten to today's pass 0."""
    pass1_times, pass0_times = fastest
    if not pass1_times or not pass0_times:
        return
    pass1, pass0 = (min(times, key=times.__getitem__) for times in (pass1_times, pass0_times))
    if pass0 == plan.pass0.text():
        return
    both = triton_backend.with_pass0(
        dataclasses.replace(plan, pass1=Pass1Launch.parse(pass1)), Pass0Launch.parse(pass0)
    )
    why = wrong(both)
    ms = math.inf if why else milliseconds(both)
    print(f"\nTogether, pass 1 {pass1} and pass 0 {pass0}: {why or f'{ms:.3f} ms'}", end="", flush=True)
    if ms <= pass1_times[pass1]:
        print(flush=True)
        return
    print(f"; beside today's pass 0, {pass1_times[pass1]:.3f} ms: pass 0 stays {plan.pass0.text()}", flush=True)
    if best_pass0:
        best_pass0.write_text(plan.pass0.text() + "\n")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workload",
        default="llama-layers",
        help="llama-layers, tiny (a few small tensors), or a model of smmf's (gpt2, ...)",
    )
    parser.add_argument(
        "--configs",
        default="4:96:4",
        help="comma-separated WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK[:STAGES]]]]",
    )
    parser.add_argument("--best", type=Path, help="write the fastest setting to this file")
    parser.add_argument(
        "--pass0-configs", default="", help="comma-separated WARPS:MAXNREG:BLOCK[:STAGES[:SPLIT[:QUEUE]]]"
    )
    parser.add_argument("--best-pass0", type=Path, help="write the fastest pass-0 setting to this file")
    parser.add_argument("--device", default="cuda", help="cuda; cpu under TRITON_INTERPRET=1 (the tests)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    import triton.testing

    shapes, dtype = _shapes(args.workload)
    params = parameters(shapes, dtype, args.device)
    opt, step_args = _captured_step(params)
    plan, p_dtype, g_dtype, hp, lr = step_args
    checker = Checker(opt, params, step_args)
    numel = sum(p.numel() for p in params)
    moved = numel * (3 * params[0].element_size()) + 2 * numel / 8

    def milliseconds(variant: triton_backend.Plan) -> float:
        def step() -> None:
            triton_backend.step(variant, p_dtype, g_dtype, hp, lr)

        return float(triton.testing.do_bench(step, warmup=50, rep=200, return_mode="median"))

    @_or_what_it_raised
    def pass0_wrong(variant: triton_backend.Plan) -> str | None:
        return checker.mismatch(variant) or checker.misses_nonfinite(variant)

    gpu = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{args.workload}: {len(params)} tensors, {numel / 1e6:.1f} M elements, {dtype}; {gpu}")
    print(f"tiles {plan.tile_map.numel()}, tile {plan.tile_rows} rows x {plan.tile_bytes * 8} columns\n")
    pass0_times: dict[str, float] = {}
    if args.pass0_configs:  # first: a short sweep (pass 0 compiles in a second or two), kept whole by a timeout
        print("Pass 0's settings, each beside pass 1's default launch:\n")
        print("| warps | maxnreg | BLOCK | stages | split | in pass 1's queue | step's kernels, ms | GB/s moved |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        pass0 = (pass0_setting(plan, config) for config in args.pass0_configs.split(","))
        pass0_times = _sweep(pass0, pass0_wrong, milliseconds, moved, args.best_pass0, lambda v: v.pass0.text())
        print("\nPass 1's settings, beside pass 0's default launch:\n")
    print("| warps | maxnreg | BLOCK_R | prefetch | BLOCK_J | row chunk | stages | step's kernels, ms | GB/s moved |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    pass1 = (pass1_setting(plan, config) for config in args.configs.split(","))
    pass1_wrong = _or_what_it_raised(checker.mismatch)
    pass1_times = _sweep(pass1, pass1_wrong, milliseconds, moved, args.best, lambda v: v.pass1.text())
    _together(plan, (pass1_times, pass0_times), pass0_wrong, milliseconds, args.best_pass0)
    assert opt.state and all(math.isfinite(float(p.detach().float().abs().max())) for p in params)


if __name__ == "__main__":
    main()
