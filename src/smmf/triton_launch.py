"""How pass 1 of the Triton step is compiled and launched, by the parameter's bytes an element.

Pass 1 (:func:`smmf.triton_tile.step_tiles`) moves almost all of a step's bytes; its block shape, warps,
register cap and the depth of its loads in flight set how close it comes to the memory's speed. The
defaults were chosen from machine code compiled for sm_90 (benchmarks/kernel_sass.py), then from GPU
timings where a GPU was lent (docs/benchmarks.md). ``SMMF_TRITON_PASS1`` overrides them, for tuning on
a new GPU without editing code (benchmarks/pass1_sweep.py times candidates):

    SMMF_TRITON_PASS1=4:128:4:0:16:0:3          # every dtype
    SMMF_TRITON_PASS1=2=4:128:4:0:32,4=4:96:4   # by the parameter's bytes an element

A setting is written WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK[:STAGES]]]], fields as in
:class:`Pass1Launch`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Pass1Launch", "PASS1", "WIDE", "ENV", "BLOCK_R", "BLOCK_J", "pass1_launch"]

ENV = "SMMF_TRITON_PASS1"
# Today's block: 4 rows by 16 sign bytes (8 planes of 16 columns), 512 elements.
BLOCK_R = 4
BLOCK_J = 16
# Rows of a block under Triton's interpreter (CPU tensors, the tests), which pays Python overhead per
# block rather than per element: the same kernels on blocks of 16 rows.
INTERPRETER_BLOCK_R = 16
_FIELDS = "WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK[:STAGES]]]]"


@dataclass(frozen=True)
class Pass1Launch:
    """Pass 1's launch for one parameter dtype.

    ``block_rows`` x 8 * ``block_bytes`` elements make a block, the loop's unit (512 at 4 x 16: 4 a
    thread of 4 warps); a tile is a whole number of blocks. ``maxnreg`` caps registers a thread (0: no
    cap): at 96, 20 warps are resident on an SM. ``prefetch`` loads the next block of rows into
    registers before computing on the current one. ``row_chunk`` rows go through all a tile's column
    blocks before its next rows (0: all of them), so that a row's neighbouring runs are read close
    together. ``stages`` > 1 has Triton pipeline the loop over rows: the loads of ``stages`` - 1 blocks
    ahead are in flight, copied asynchronously into shared memory (``cp.async``), not registers."""

    num_warps: int = 4
    maxnreg: int = 96
    block_rows: int = BLOCK_R
    block_bytes: int = BLOCK_J
    prefetch: bool = False
    row_chunk: int = 0
    stages: int = 1

    def __post_init__(self) -> None:
        checks = {
            "WARPS a power of two from 1 to 16": self.num_warps in (1, 2, 4, 8, 16),
            "MAXNREG 0 (no cap) or from 32 to 255": self.maxnreg == 0 or 32 <= self.maxnreg <= 255,
            "BLOCK_R a power of two from 1 to 64": self.block_rows in (1, 2, 4, 8, 16, 32, 64),
            "BLOCK_J 16 or 32": self.block_bytes in (16, 32),
            "ROW_CHUNK 0 or a multiple of BLOCK_R": self.row_chunk >= 0 and self.row_chunk % self.block_rows == 0,
            "STAGES from 1 to 8": 1 <= self.stages <= 8,
        }
        wrong = [rule for rule, ok in checks.items() if not ok]
        if wrong:
            raise ValueError(f"pass 1 launch {self.text()}: needs {'; '.join(wrong)}")

    @classmethod
    def parse(cls, text: str) -> Pass1Launch:
        """A setting from WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK[:STAGES]]]] (BLOCK_J 0 or
        left out: 16; PREFETCH 0 or 1)."""
        fields = text.strip().split(":")
        if not 3 <= len(fields) <= 7 or not all(f.isdigit() for f in fields):
            raise ValueError(f"pass 1 launch {text!r}: expected {_FIELDS}, non-negative integers")
        left_out = ["0", "0", "0", "1"][len(fields) - 3 :]  # PREFETCH, BLOCK_J, ROW_CHUNK, STAGES
        warps, maxnreg, rows, prefetch, block_j, chunk, stages = (int(f) for f in fields + left_out)
        if prefetch not in (0, 1):
            raise ValueError(f"pass 1 launch {text!r}: PREFETCH is 0 or 1")
        return cls(warps, maxnreg, rows, block_j or cls.block_bytes, bool(prefetch), chunk, stages)

    def text(self) -> str:
        """The setting as :meth:`parse` reads it."""
        fields = (self.num_warps, self.maxnreg, self.block_rows, int(self.prefetch), self.block_bytes)
        return ":".join(str(f) for f in (*fields, self.row_chunk, self.stages))

    def options(self) -> dict[str, Any]:
        """Triton's compile options: warps and the register cap."""
        return {"num_warps": self.num_warps, **({"maxnreg": self.maxnreg} if self.maxnreg else {})}

    def constexprs(self) -> dict[str, Any]:
        """``step_tiles``' launch constants, in its argument order."""
        return {
            "PREFETCH": self.prefetch,
            "ROW_CHUNK": self.row_chunk,
            "STAGES": self.stages,
            "BLOCK_R": self.block_rows,
            "BLOCK_J": self.block_bytes,
        }


# By the parameter's bytes an element. Today's: blocks of 4 rows by 16 sign bytes (16 rows took 254
# registers a thread, 8 resident warps an SM); at most 96 registers, so that 20 warps are resident
# whatever the dtype and Triton version, where uncapped Triton 3.6 (the GPU machine's) takes 125-128;
# capped, the loop over an aligned tile's rows spills nothing, takes 237-317 instructions for 512
# elements and 2 barriers (sm_90 machine code, benchmarks/kernel_sass.py; static counts). The other
# fields' settings are timed by benchmarks/pass1_sweep.py before one becomes a default.
PASS1 = {2: Pass1Launch(), 4: Pass1Launch(), 8: Pass1Launch()}
# A wide block, 32 sign bytes: a row's run of each plane is 64 bytes of bf16 (the unit an H100 fetches
# from its memory, where 32-byte runs may bring in bytes a tile reads only thousands of rows later),
# moved in 16-byte vectors; 8 elements a thread need 128 registers (16 warps an SM).
WIDE = Pass1Launch(maxnreg=128, block_bytes=32)


def _overrides(text: str) -> dict[int, Pass1Launch]:
    """{bytes an element: setting} from ``SMMF_TRITON_PASS1``'s value."""
    if "=" not in text:
        setting = _parse_env(text)
        return dict.fromkeys(PASS1, setting)
    chosen: dict[int, Pass1Launch] = {}
    for part in text.split(","):
        size, _, value = part.partition("=")
        if size.strip() not in ("2", "4", "8"):
            raise ValueError(f"{ENV}={text!r}: {part!r} must be BYTES=SETTING, BYTES 2, 4 or 8")
        chosen[int(size)] = _parse_env(value)
    return chosen


def _parse_env(text: str) -> Pass1Launch:
    try:
        return Pass1Launch.parse(text)
    except ValueError as exc:
        raise ValueError(f"{ENV}: {exc}") from None


def pass1_launch(element_size: int, on_gpu: bool) -> Pass1Launch:
    """Pass 1's launch for parameters of ``element_size`` bytes: :data:`PASS1`'s, or ``SMMF_TRITON_PASS1``'s
    where it names one. Off a GPU (the interpreter) blocks are INTERPRETER_BLOCK_R rows, and a row chunk
    that is not a whole number of them is rounded up to one."""
    text = os.environ.get(ENV)
    setting = (_overrides(text).get(element_size) if text else None) or PASS1[element_size]
    if on_gpu:
        return setting
    rows = INTERPRETER_BLOCK_R
    chunk = -(-setting.row_chunk // rows) * rows
    return dataclasses.replace(setting, block_rows=rows, row_chunk=chunk)
