"""The Triton kernels compile to GPU machine code (PTX and cubin) for an H100 and an A100, and for the
oldest GPUs backend="auto" runs them on (a T4, a V100), without a GPU: what the interpreter tests cannot
see (the compiler's type rules, constexpr branches, register use)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import benchmark_modules  # noqa: E402
from smmf import triton_kernels as tk  # noqa: E402
from smmf import triton_launch  # noqa: E402
from smmf import triton_queue as tq  # noqa: E402
from smmf import triton_tile as tt  # noqa: E402

TARGETS = {"sm90": GPUTarget("cuda", 90, 32), "sm80": GPUTarget("cuda", 80, 32)}
# the oldest GPUs backend="auto" gives Triton (compute capability 7.0: a T4 is 7.5, a V100 7.0), with
# no cp.async: their loops are not pipelined. A few cases there, bf16 among them (no bf16 instructions).
OLDEST_TARGETS = {"sm75": GPUTarget("cuda", 75, 32), "sm70": GPUTarget("cuda", 70, 32)}
SASS = benchmark_modules.load("kernel_sass")  # machine code read for sm_90 without a GPU
TODAY = triton_launch.PASS1[4]
KERNELS = {
    "fp32-1bit": (tl.float32, tl.float32, True, True, False),
    "bf16-sr": (tl.bfloat16, tl.float32, True, True, True),
    "fp16-8bit": (tl.float16, tl.float32, True, False, False),
    "bf16-no-momentum": (tl.bfloat16, tl.float32, False, True, True),
    "fp64": (tl.float64, tl.float64, True, True, False),
}
KERNEL_CASES = [
    pytest.param(target, *KERNELS[kernel], id=f"{arch}-{kernel}")
    for targets, kernels in ((TARGETS, KERNELS), (OLDEST_TARGETS, ("fp32-1bit", "bf16-sr", "fp64")))
    for arch, target in targets.items()
    for kernel in kernels
]


def _compile(
    fn: Any,
    signature: dict[str, str],
    constexprs: dict[str, Any],
    target: GPUTarget,
    options: dict[str, Any] | None = None,
) -> Any:
    kernel = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target, options=options
    )
    if target.backend == "hip":
        assert kernel.asm["hsaco"] and re.search(r"\b(global|buffer|flat)_load", kernel.asm["amdgcn"])
    else:
        assert kernel.asm["cubin"] and "ld.global" in kernel.asm["ptx"]
    return kernel


def _signature(names: list[str], types: dict[str, str]) -> dict[str, str]:
    return {name: types.get(name, "constexpr") for name in names}


def _four_kernels(target: GPUTarget, kernel: tuple[Any, ...], launch: triton_launch.Pass1Launch) -> tuple[Any, Any]:
    """The four kernels compiled for ``target`` (``kernel``: a KERNELS value; ``launch``: pass 1's);
    returns passes 0 and 1."""
    p_dt, acc, has_m, packed, stochastic = kernel
    accs = "fp64" if acc == tl.float64 else "fp32"
    check = ["table", "tile_map", "flags", "G_DT", "ACC", "BLOCK", "STAGES", "SPLIT"]
    types = {"table": "*i64", "tile_map": "*i32", "flags": "*i32", "tile_rows": "i32", "tile_bytes": "i32"}
    pass0 = triton_launch.PASS0[p_dt.primitive_bitwidth // 8]
    check_kernel = _compile(
        tk.check_gradients, _signature(check, types), {"G_DT": p_dt, "ACC": acc, **pass0.constexprs()}, target
    )
    step = ["table", "tile_map", "flags", "hp", "lr_ptr", "scratch", "flag_copies", "tile_rows", "tile_bytes",
            "P_DT", "G_DT", "ACC", "HAS_M", "PACKED", "STOCHASTIC", "PREFETCH", "ROW_CHUNK", "STAGES",
            "BLOCK_R", "BLOCK_J"]  # fmt: skip
    types |= {"hp": f"*{accs}", "lr_ptr": "*fp32", "scratch": f"*{accs}", "flag_copies": f"*{accs}"}
    constexprs = {"P_DT": p_dt, "G_DT": p_dt, "ACC": acc, "HAS_M": has_m, "PACKED": packed, "STOCHASTIC": stochastic}
    constexprs |= launch.constexprs()
    step_kernel = _compile(tt.step_tiles, _signature(step, types), constexprs, target, launch.options())
    reduce = ["table", "scratch", "flags", "flag_copies", "ACC", "HAS_M", "BLOCK"]
    _compile(tk.reduce_factors, _signature(reduce, types), {"ACC": acc, "HAS_M": has_m, "BLOCK": 1024}, target)
    normalize = ["table", "scratch", "flag_copies", "ACC", "HAS_M", "BLOCK"]
    _compile(tk.normalize_columns, _signature(normalize, types), {"ACC": acc, "HAS_M": has_m, "BLOCK": 1024}, target)
    return check_kernel, step_kernel


def _both_loops(kernel: tuple[Any, ...]) -> triton_launch.Pass1Launch:
    """Pass 1's launch for a KERNELS case: the cases between them take every way of its loops."""
    _, _, has_m, packed, stochastic = kernel
    return triton_launch.Pass1Launch(
        prefetch=stochastic,  # both ways of pass 1's loop, on different kernels
        row_chunk=16 if packed else 0,  # and of its loop over a tile's rows
        stages=3 if has_m and not stochastic else 1,  # and pipelined
    )


@pytest.mark.parametrize(("target", "p_dt", "acc", "has_m", "packed", "stochastic"), KERNEL_CASES)
def test_the_four_kernels_compile(
    target: GPUTarget, p_dt: Any, acc: Any, has_m: bool, packed: bool, stochastic: bool
) -> None:
    kernel = (p_dt, acc, has_m, packed, stochastic)
    launch = _both_loops(kernel)
    check_kernel, step_kernel = _four_kernels(target, kernel, launch)
    assert "ld.global.v" in check_kernel.asm["ptx"]  # pass 0 reads an aligned tensor's gradient in vectors too
    ptx = step_kernel.asm["ptx"]
    # the alignment hints of pass 1's vector path held: parameter and gradient move in vectors (pipelined:
    # copied to shared memory 8 or 16 bytes at a time)
    vector_copy = re.search(r"cp\.async\.c[ag]\.shared\.global \[[^]]*\], \[[^]]*\], 0x(8|10)\b", ptx)
    assert ("ld.global.v" in ptx or vector_copy) and "st.global.v" in ptx
    assert ("cp.async" in ptx) == (launch.stages > 1 and target.arch >= 80)
    # compiled, the update divides with one approximate instruction in float32 (IEEE in float64), and
    # ptxas is given the register cap
    assert ("div.approx.ftz.f32" in ptx and "div.full" not in ptx) if acc == tl.float32 else "div.rn.f64" in ptx
    assert f".maxnreg {launch.maxnreg}" in ptx


@pytest.mark.parametrize("kernel", ["fp32-1bit", "bf16-sr", "fp16-8bit", "fp64"])
@pytest.mark.parametrize("arch", ["gfx942", "gfx90a"], ids=["mi300", "mi200"])
def test_the_four_kernels_compile_for_amd_gpus(arch: str, kernel: str) -> None:
    """On ROCm, torch's "cuda" tensors are AMD GPUs' and 'auto' gives them Triton, launched without a
    register cap, which AMD's Triton has no option for (tests/test_triton_launch.py)."""
    launch = dataclasses.replace(_both_loops(KERNELS[kernel]), maxnreg=0)
    _, step_kernel = _four_kernels(GPUTarget("hip", arch, 64), KERNELS[kernel], launch)
    assert re.search(r"\b(global|buffer|flat)_store", step_kernel.asm["amdgcn"])


QUEUED_CASES = {
    "sm90-fp32-1bit": (TARGETS["sm90"], "fp32-1bit"),
    "sm90-bf16-sr": (TARGETS["sm90"], "bf16-sr"),
    "sm80-fp64": (TARGETS["sm80"], "fp64"),
    "sm70-fp16-8bit": (OLDEST_TARGETS["sm70"], "fp16-8bit"),
    "mi300-bf16-sr": (GPUTarget("hip", "gfx942", 64), "bf16-sr"),
}


@pytest.mark.parametrize(("target", "kernel"), QUEUED_CASES.values(), ids=QUEUED_CASES.keys())
def test_pass0_folded_into_pass1s_queue_compiles(target: GPUTarget, kernel: str) -> None:
    """smmf.triton_queue's one launch of passes 0 and 1: each program takes a ticket (an atomic add), a
    share adds to its tensor's count with release order, and a tile reads it with acquire order (on
    sm_90, an acquire load in a loop) before it reads the flag. Under today's pass-1 launch on sm_90, its
    hot loops (pass 1's over an aligned tile's rows, the check's over an aligned gradient) keep to
    registers, the check's beside the tile's under one register cap."""
    p_dt, acc, has_m, packed, stochastic = KERNELS[kernel]
    accs = "fp64" if acc == tl.float64 else "fp32"
    types = {"table": "*i64", "work": "*i32", "tile_map": "*i32", "flags": "*i32", "tensors": "i32",
             "tile_rows": "i32", "tile_bytes": "i32", "lr_ptr": "*fp32"}  # fmt: skip
    types |= {"hp": f"*{accs}", "scratch": f"*{accs}", "flag_copies": f"*{accs}"}
    # today's pass-1 launch on sm_90 (its pipelined settings spill in step_tiles too), both loops elsewhere
    launch = TODAY if target == TARGETS["sm90"] else _both_loops(KERNELS[kernel])
    launch = dataclasses.replace(launch, maxnreg=0) if target.backend == "hip" else launch
    constexprs = {"P_DT": p_dt, "G_DT": p_dt, "ACC": acc, "HAS_M": has_m, "PACKED": packed, "STOCHASTIC": stochastic}
    constexprs |= launch.constexprs() | triton_launch.Pass0Launch(split=2, queue=1).queued_constexprs()
    compiled = _compile(tq.step_queue, _signature(tq.step_queue.arg_names, types), constexprs, target, launch.options())
    if target.backend == "hip":
        return
    ptx = compiled.asm["ptx"]
    assert re.search(r"atom\.global\.gpu\.(relaxed\.)?add", ptx)  # the ticket
    assert re.search(r"(atom|red)\.global\.gpu\.release\.add", ptx)  # a share done
    assert re.search(r"(ld|atom)\.global\.gpu\.acquire", ptx)  # a tile waiting
    if target == TARGETS["sm90"]:
        instrs, labels = SASS.parse_sass(SASS.disassemble(compiled.asm["cubin"], SASS.tool_paths()[1]))
        loops = SASS.innermost_loops(instrs, labels)
        aligned = [body for body in loops if _moves_vectors(body, "LDG") and _moves_vectors(body, "STG")]
        checks = [body for body in loops if _moves_vectors(body, "LDG") and not _moves_vectors(body, "STG", set())]
        assert len(aligned) == 1 and checks  # pass 1's vector loop, and the check's
        spills = [ins.opcode for body in aligned + checks for ins in body if ins.opcode.split(".")[0] in ("LDL", "STL")]
        assert not spills


H100_SHARED_BYTES = 232_448  # an H100 block's most shared memory (227 KB)


@pytest.mark.parametrize("config", benchmark_modules.swept_pass1_launches())
@pytest.mark.parametrize("p_dt", [tl.float32, tl.bfloat16], ids=["fp32", "bf16"])
def test_the_queue_compiles_beside_every_swept_pass1_setting(config: str, p_dt: Any) -> None:
    """The sweep times pass 0's settings beside pass 1's default launch and pass 1's beside pass 0's; the
    tuned stage then runs the two fastest together. If the fastest pass 0 is the queue, it compiles into
    pass 1's kernel under that pass 1's setting: every such pair compiles for sm_90 within an H100's
    shared memory (the sweep also checks and times the pair on the GPU)."""
    launch = triton_launch.Pass1Launch.parse(config)
    constexprs = {"P_DT": p_dt, "G_DT": p_dt, "ACC": tl.float32, "HAS_M": True, "PACKED": True, "STOCHASTIC": False}
    constexprs |= launch.constexprs() | triton_launch.Pass0Launch(queue=1).queued_constexprs()
    compiled = SASS.compile_kernel(tq.step_queue, constexprs, launch.options())
    assert compiled.asm["cubin"] and 0 < compiled.metadata.shared <= H100_SHARED_BYTES


def _moves_vectors(body: list[Any], opcode: str, bits: set[str] | None = None) -> bool:
    """Whether a loop's machine code holds an ``opcode`` (LDG, STG) of ``bits`` (default: 64 or 128; empty:
    any width)."""
    widths = {"64", "128"} if bits is None else bits
    return any(
        ins.opcode.split(".")[0] == opcode and (not widths or widths & set(ins.opcode.split("."))) for ins in body
    )


PIPELINED = triton_launch.Pass1Launch(maxnreg=128, stages=3)
LOOPS = {
    "bf16": (tl.bfloat16, TODAY),
    "fp32": (tl.float32, TODAY),
    "bf16-wide": (tl.bfloat16, triton_launch.WIDE),
    "bf16-pipelined": (tl.bfloat16, PIPELINED),
    "fp32-pipelined": (tl.float32, PIPELINED),
    "fp32-64-registers": (tl.float32, triton_launch.Pass1Launch(maxnreg=64)),  # 32 warps an SM
}


@pytest.mark.parametrize(("p_dt", "launch"), LOOPS.values(), ids=LOOPS.keys())
def test_pass1s_loop_over_an_aligned_tiles_rows_crosses_warps_once_per_block(
    p_dt: Any, launch: triton_launch.Pass1Launch
) -> None:
    """Each row of pass 1's block is one warp's, so a block's row sums and sign bytes are reduced
    within warps: the loop's only exchange through shared memory is the rows' sums (two barriers).
    A layout with warps across the sign planes took 6 (Triton 3.8) to 11 (3.6) barriers a block.
    Under its register cap the loop keeps its values in registers (no local memory). Pipelined, its
    parameter and gradient are copied into shared memory asynchronously (LDGSTS), in vectors."""
    constexprs = {"P_DT": p_dt, "G_DT": p_dt, "ACC": tl.float32, "HAS_M": True, "PACKED": True, "STOCHASTIC": False}
    aligned, _ = _the_vector_loop(tt.step_tiles, constexprs | launch.constexprs(), launch, {"64", "128"})
    assert sum(ins.opcode.startswith("BAR.SYNC") for ins in aligned) <= 2


@pytest.mark.parametrize("config", benchmark_modules.swept_pass0_launches())
@pytest.mark.parametrize(("g_dt", "bits"), [(tl.bfloat16, 16), (tl.float32, 32)], ids=["bf16", "fp32"])
def test_pass0s_loop_over_an_aligned_gradient_keeps_to_registers_and_vectors(config: str, g_dt: Any, bits: int) -> None:
    """Every pass-0 launch the sweep times reads an aligned gradient in 16-byte vectors, into registers
    (LDG) or, pipelined, copied asynchronously into shared memory (LDGSTS), and its loop spills nothing
    under its register cap (no local memory)."""
    launch = triton_launch.Pass0Launch.parse(config)
    constexprs = {"G_DT": g_dt, "ACC": tl.float32, **launch.constexprs()}
    vectors, load = _the_vector_loop(tk.check_gradients, constexprs, launch, {"128"})
    loaded = sum(SASS.load_bits(ins.opcode) for ins in vectors if ins.opcode.split(".")[0] == load)
    assert loaded * launch.num_warps * 32 // bits == launch.block  # one block an iteration, all in vectors


def _the_vector_loop(
    kernel: Any,
    constexprs: dict[str, Any],
    launch: triton_launch.Pass0Launch | triton_launch.Pass1Launch,
    bits: set[str],
) -> tuple[list[Any], str]:
    """The one innermost loop of ``kernel`` compiled for sm_90 that loads vectors of ``bits`` (LDG, or
    LDGSTS where ``launch`` pipelines it), checked to keep to registers; and that load's opcode."""
    compiled = SASS.compile_kernel(kernel, constexprs, launch.options())
    instrs, labels = SASS.parse_sass(SASS.disassemble(compiled.asm["cubin"], SASS.tool_paths()[1]))
    load = "LDGSTS" if launch.stages > 1 else "LDG"
    loops = [
        body
        for body in SASS.innermost_loops(instrs, labels)
        if any(ins.opcode.split(".")[0] == load and bits & set(ins.opcode.split(".")) for ins in body)
    ]
    assert len(loops) == 1, launch.text()
    assert not [ins.opcode for ins in loops[0] if ins.opcode.split(".")[0] in ("LDL", "STL")]
    return loops[0], load
