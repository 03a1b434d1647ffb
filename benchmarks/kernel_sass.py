"""Static SASS analysis of SMMF's Triton step kernels for an H100 (sm_90), without a GPU.

For ``step_tiles`` (pass 1: bf16, fp32, and bf16 with stochastic rounding; fp32 moments, a first
moment, packed signs) and ``check_gradients`` (pass 0, bf16 and fp32) this prints a markdown table of:

* registers per thread and spill bytes (stores/loads), from ``ptxas -v`` rerun on the kernel's PTX
  with Triton's own flags (the rerun must reproduce Triton's machine code instruction for instruction;
  the bytes may differ, as the line table records the source files' modification times);
* resident warps per SM as registers allow (64K registers per SM, allocated per warp in units of 256,
  at most 64 warps and 32 blocks per SM; shared memory, a few KB here, is not considered);
* for every innermost loop (a backward branch in ``nvdisasm`` output that encloses no other): the
  function it belongs to, the static instruction count of its body, thread-instructions per element
  (instructions x num_warps x 32 / (BLOCK_R * 8 * BLOCK_J), the elements one iteration covers; for
  ``check_gradients``, whose loops the compiler may unroll, the elements its loads cover) and
  its global loads and stores by width (``LDGSTS``: a load copied asynchronously into shared memory, as
  Triton pipelines a loop of ``STAGES`` > 1) and its local ones (``LDL``/``STL``: spilled registers; "none":
  e.g. a loop the compiler made to step over iterations whose inner loop is empty), and its barriers
  (``BAR.SYNC``: a layout conversion through shared memory, which stops the program's warps until all
  of them reach it).

These are static counts of the compiled code, not timings: predicated-off and out-of-line code
(slow paths of division or square root) is not told apart, and nothing is said about latency.
A loop is named after the function called from the kernel that owns most of its instructions
(``nvdisasm -gi`` gives each instruction's inlining chain), or ``_factored_tile`` if that is one of
pass 1's helpers for a factored tensor's rows; of the two ``_factored_tile`` loops the aligned one is
the one with 64- or 128-bit LDG or LDGSTS,
and the table also gives the line of the call in ``step_tiles`` each loop was inlined from.
Kernels are compiled as tests/test_triton_compile.py compiles them (``triton.compile`` for
``GPUTarget("cuda", 90, 32)``), with the launch options of :mod:`smmf.triton_launch` (pass 1's
register cap: ``.maxnreg`` in the PTX, so ptxas's rerun keeps it).

    python benchmarks/kernel_sass.py [--block-r 4] [--block-j 32] [--num-warps 4] [--maxnreg 0] [--prefetch]
                                     [--row-chunk 16] [--stages 3] [--pass0 WARPS:MAXNREG:BLOCK[:STAGES[:SPLIT]]]
"""

from __future__ import annotations

import argparse
import ast
import collections
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

try:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as exc:
    raise SystemExit(f"kernel_sass.py needs Triton with its NVIDIA backend: {exc}") from None

from smmf import triton_kernels, triton_launch, triton_tile

TARGET = GPUTarget("cuda", 90, 32)
REGS_PER_SM, REG_GRANULE, MAX_WARPS, MAX_BLOCKS = 65536, 256, 64, 32
TYPES = {
    "table": "*i64", "work": "*i32", "tile_map": "*i32", "tensors": "i32", "flags": "*i32", "tile_rows": "i32",
    "tile_bytes": "i32",
    "hp": "*fp32", "lr_ptr": "*fp32", "scratch": "*fp32", "flag_copies": "*fp32",
}  # fmt: skip
STEP_VARIANTS = {"bf16": (tl.bfloat16, False), "fp32": (tl.float32, False), "bf16 + SR": (tl.bfloat16, True)}
# Functions that pass 1's loops over a factored tensor's rows call (store_param and what it calls: the
# dense tile's loop too, which is told apart by its own name).
FACTORED_HELPERS = {"_column_blocks", "_rows_in", "_rows_out", "_signed_moment", "_add_columns",
                    "store_param", "_mix", "random_bits", "stochastic_bf16", "quotient", "to_param_dtype",
                    "_column_accumulators"}  # fmt: skip
INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z0-9_.]+)([^;]*);")
LABEL = re.compile(r"^\s*(\.L_x_\d+):")
FRAME = re.compile(r'"([^"]+)", line (\d+)')
BRANCH_TARGET = re.compile(r"\((\.L_x_\d+)\)")


@dataclass(frozen=True)
class Instr:
    addr: int
    opcode: str
    operands: str
    owner: str  # the function called from the kernel that this instruction was inlined from (or the kernel)
    call_line: int | None  # the kernel's line of that call


def tool_paths() -> tuple[str, str]:
    """The ptxas and nvdisasm that Triton uses (bundled in triton/backends/nvidia/bin unless overridden)."""
    try:
        return triton.knobs.nvidia.ptxas.path, triton.knobs.nvidia.nvdisasm.path
    except RuntimeError as exc:  # the knob cannot find the binary
        raise SystemExit(f"kernel_sass.py needs Triton's NVIDIA tools (ptxas, nvdisasm): {exc}") from None


def compile_kernel(fn: Any, constexprs: dict[str, Any], options: dict[str, Any]) -> Any:
    """``fn`` compiled for sm_90 with every pointer argument 16-byte aligned, as Triton specializes a
    launch whose tensors are (those of torch's CUDA allocator are)."""
    signature = {name: TYPES.get(name, "constexpr") for name in fn.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if signature[name][0] == "*"}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(source, target=TARGET, options=options)


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=True)


def registers_and_spills(kernel: Any, ptxas: str, nvdisasm: str) -> tuple[int, int, int]:
    """(registers per thread, spill store bytes, spill load bytes) from ptxas -v with Triton's flags."""
    ptx = kernel.asm["ptx"]
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "kernel.ptx"), Path(tmp, "kernel.cubin")
        src.write_text(ptx)
        flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch.group(1) if arch else 'sm_90a'}"]
        log = run([ptxas, *flags, str(src), "-o", str(out)]).stderr
        if disassemble(out.read_bytes(), nvdisasm) != disassemble(kernel.asm["cubin"], nvdisasm):
            raise SystemExit(f"ptxas -v did not reproduce the code of {kernel.name}: its counts would not apply")
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not (regs and spills):
        raise SystemExit(f"unexpected ptxas -v output:\n{log}")
    return int(regs.group(1)), int(spills.group(1)), int(spills.group(2))


def disassemble(cubin: bytes, nvdisasm: str, *flags: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernel.cubin")
        path.write_bytes(cubin)
        return run([nvdisasm, *flags, "-c", str(path)]).stdout


@cache
def functions_by_line(path: str) -> dict[int, str]:
    """{line: name of the innermost function defining it} for a source file."""
    table: dict[int, tuple[int, str]] = {}
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.FunctionDef):
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                if line not in table or table[line][0] < node.lineno:
                    table[line] = (node.lineno, node.name)
    return {line: name for line, (_, name) in table.items()}


def owner(chain: list[tuple[str, int]]) -> tuple[str, int | None]:
    """The function called from the kernel that a chain of frames (innermost first) runs in, and the line of
    that call; the kernel itself (no call line) for the kernel's own code."""
    path, line = chain[-2] if len(chain) > 1 else chain[-1]
    return functions_by_line(path).get(line, "?"), chain[-1][1] if len(chain) > 1 else None


def parse_sass(text: str) -> tuple[list[Instr], dict[str, int]]:
    """The instructions, each with its owner, and {label: address}. Before an instruction whose source
    position changed, nvdisasm -gi writes one line per inlined frame ("X inlined at Y", ..., then the kernel's
    line); joined in order, they are the instruction's chain of frames."""
    instrs: list[Instr] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    frames: list[tuple[str, int]] = []
    where: tuple[str, int | None] = ("?", None)
    for line in text.splitlines():
        if "//##" in line:
            frames += [(path, int(number)) for path, number in FRAME.findall(line)]
        elif match := LABEL.match(line):
            pending.append(match.group(1))
        elif match := INSTR.search(line):
            addr = int(match.group(1), 16)
            labels.update(dict.fromkeys(pending, addr))
            pending = []
            if frames:
                where, frames = owner(list(dict.fromkeys(frames))), []
            instrs.append(Instr(addr, match.group(2), match.group(3), *where))
    return instrs, labels


def innermost_loops(instrs: list[Instr], labels: dict[str, int]) -> list[list[Instr]]:
    """The bodies of the loops (head to last backward branch to it) that enclose no other loop."""
    tails: dict[int, int] = {}
    for ins in instrs:
        target = BRANCH_TARGET.search(ins.operands) if ins.opcode.startswith("BRA") else None
        if target and labels[target.group(1)] < ins.addr:
            head = labels[target.group(1)]
            tails[head] = max(tails.get(head, 0), ins.addr)
    spans = sorted(tails.items())
    inner = [(h, t) for h, t in spans if not any(h <= h2 and t2 <= t and (h2, t2) != (h, t) for h2, t2 in spans)]
    return [[ins for ins in instrs if head <= ins.addr <= tail] for head, tail in inner]


def describe_loop(body: list[Instr]) -> tuple[str, str, str]:
    """(name, call line, global accesses by opcode) of a loop body."""
    name, _ = collections.Counter(ins.owner for ins in body).most_common(1)[0]
    calls = collections.Counter(ins.call_line for ins in body if ins.owner == name)
    call_line = calls.most_common(1)[0][0]
    accesses = collections.Counter(
        ins.opcode for ins in body if ins.opcode.split(".")[0] in ("LDG", "LDGSTS", "STG", "LDL", "STL")
    )
    wide = any(op.startswith("LDG") and {"64", "128"} & set(op.split(".")) for op in accesses)
    if name in FACTORED_HELPERS:
        name = "_factored_tile"  # Triton 3.6's line table names a loop's code after the helpers it inlined
    if name == "_factored_tile":
        name += ", aligned" if wide else ", unaligned"
    widths = ", ".join(f"{op} x{count}" for op, count in sorted(accesses.items())) or "none"
    return f"`{name}`", str(call_line or "-"), widths


def resident_warps(regs: int, num_warps: int) -> int:
    per_warp = -(-regs * 32 // REG_GRANULE) * REG_GRANULE
    blocks = min(REGS_PER_SM // (per_warp * num_warps), MAX_BLOCKS, MAX_WARPS // num_warps)
    return blocks * num_warps


def load_bits(opcode: str) -> int:
    """Bits a thread loads with one LDG opcode (LDG.E: 32)."""
    parts = opcode.split(".")
    for bits, names in ((128, ("128",)), (64, ("64",)), (16, ("U16", "S16")), (8, ("U8", "S8"))):
        if any(name in parts for name in names):
            return bits
    return 32


def table_rows(
    label: str, kernel: Any, tools: tuple[str, str], elements: int, element_bits: int | None = None
) -> list[str]:
    """One markdown row per innermost loop of a compiled kernel. With ``element_bits`` (a kernel whose
    loops load nothing but the elements they cover, as pass 0), a loop's elements are counted from its
    loads, so that a loop the compiler unrolled is not taken for one block of ``elements``."""
    regs, spill_stores, spill_loads = registers_and_spills(kernel, *tools)
    num_warps = kernel.metadata.num_warps
    head = f"| {label} | {regs} | {spill_stores}/{spill_loads} | {resident_warps(regs, num_warps)} |"
    rows = []
    for body in innermost_loops(*parse_sass(disassemble(kernel.asm["cubin"], tools[1], "--print-line-info-inline"))):
        name, call_line, widths = describe_loop(body)
        loaded = sum(load_bits(ins.opcode) for ins in body if ins.opcode.startswith("LDG"))
        covered = loaded // element_bits * num_warps * 32 if element_bits and loaded else elements
        per_element = len(body) * num_warps * 32 / covered
        barriers = sum(ins.opcode.startswith("BAR.SYNC") for ins in body)
        rows.append(f"{head} {name} | {call_line} | {len(body)} | {per_element:.1f} | {widths} | {barriers} |")
    return rows or [f"{head} (no loop) | | | | | |"]


def launch_settings() -> tuple[triton_launch.Pass1Launch, triton_launch.Pass0Launch | None]:
    """Pass 1's launch from the command line: smmf's default for fp32 parameters, or the wide block's
    with --block-j 32, each field overridden by its flag; and pass 0's (None: smmf's for each dtype)."""
    today = triton_launch.PASS1[4]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-r", type=int, default=today.block_rows)
    parser.add_argument("--block-j", type=int, default=today.block_bytes)
    parser.add_argument("--num-warps", type=int, help="pass 1's warps (default: smmf's for the BLOCK_J)")
    parser.add_argument("--maxnreg", type=int, help="pass 1's register cap (0: none; default: smmf's for the BLOCK_J)")
    parser.add_argument(
        "--prefetch",
        action=argparse.BooleanOptionalAction,
        default=today.prefetch,
        help="pass 1 loads the next block of rows before computing on the current one",
    )
    parser.add_argument(
        "--row-chunk",
        type=int,
        default=today.row_chunk,
        help="rows pass 1 steps through all a tile's column blocks before its next rows (0: all)",
    )
    parser.add_argument("--stages", type=int, default=today.stages, help="pipeline stages of the loop over rows")
    pass0_help = "pass 0's launch, WARPS:MAXNREG:BLOCK[:STAGES[:SPLIT]] (default: smmf's for each dtype)"
    parser.add_argument("--pass0", type=triton_launch.Pass0Launch.parse, help=pass0_help)
    args = parser.parse_args()
    default = triton_launch.WIDE if args.block_j == triton_launch.WIDE.block_bytes else today
    pass1 = triton_launch.Pass1Launch(
        num_warps=args.num_warps or default.num_warps,
        maxnreg=default.maxnreg if args.maxnreg is None else args.maxnreg,
        block_rows=args.block_r,
        block_bytes=args.block_j,
        prefetch=args.prefetch,
        row_chunk=args.row_chunk,
        stages=args.stages,
    )
    return pass1, args.pass0


def main() -> None:
    launch, pass0 = launch_settings()
    tools = tool_paths()
    start = time.perf_counter()
    elements = launch.block_rows * 8 * launch.block_bytes
    print(f"sm_90, Triton {triton.__version__}, pass 1's launch {launch.text()} (WARPS:MAXNREG:BLOCK_R:PREFETCH:"
          f"BLOCK_J:ROW_CHUNK:STAGES): {elements} elements per loop iteration\n")  # fmt: skip
    print("| kernel | regs/thread | spill B st/ld | warps/SM | loop | called at line | instrs | thread-instr/elem "
          "| global loads/stores | barriers |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant, (dtype, stochastic) in STEP_VARIANTS.items():
        constexprs = {"P_DT": dtype, "G_DT": dtype, "ACC": tl.float32, "HAS_M": True, "PACKED": True}
        constexprs |= {"STOCHASTIC": stochastic, **launch.constexprs()}
        kernel = compile_kernel(triton_tile.step_tiles, constexprs, launch.options())
        print("\n".join(table_rows(f"step_tiles {variant}", kernel, tools, elements)))
    for name, (dtype, bits) in {"bf16": (tl.bfloat16, 16), "fp32": (tl.float32, 32)}.items():
        check = pass0 or triton_launch.PASS0[bits // 8]
        constexprs = {"G_DT": dtype, "ACC": tl.float32, **check.constexprs()}
        kernel = compile_kernel(triton_kernels.check_gradients, constexprs, check.options())
        label = f"check_gradients {name} ({check.text()})"
        print("\n".join(table_rows(label, kernel, tools, check.block, element_bits=bits)))
    print(f"\nStatic counts, not timings; compiled and analysed in {time.perf_counter() - start:.1f} s.")


if __name__ == "__main__":
    main()
