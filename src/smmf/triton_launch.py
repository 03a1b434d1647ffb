"""How passes 0 and 1 of the Triton step are compiled and launched, by bytes an element.

Pass 1 (:func:`smmf.triton_tile.step_tiles`) moves almost all of a step's bytes, and pass 0
(:func:`smmf.triton_kernels.check_gradients`) reads every gradient once more before it; their block
shapes, warps, register caps and depths of loads in flight set how close they come to the memory's
speed. The defaults were chosen from machine code compiled for sm_90 (benchmarks/kernel_sass.py), then
from GPU timings where a GPU was lent (docs/benchmarks.md). Two environment variables override them,
for tuning on a new GPU without editing code (benchmarks/pass1_sweep.py times candidates):

    SMMF_TRITON_PASS1=4:128:4:0:16:0:3          # pass 1, every parameter dtype
    SMMF_TRITON_PASS1=2=4:128:4:0:32,4=4:96:4   # pass 1, by the parameter's bytes an element
    SMMF_TRITON_PASS0=4:40:2048:3:4             # pass 0, the same two forms, by the gradient's

A pass-1 setting is written WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK[:STAGES]]]], fields as in
:class:`Pass1Launch`; a pass-0 setting WARPS:MAXNREG:BLOCK[:STAGES[:SPLIT[:QUEUE]]], as in :class:`Pass0Launch`
(QUEUE >= 1 folds pass 0 into pass 1's launch, :mod:`smmf.triton_queue`, in the order :func:`queue_order` gives).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = [
    "Pass0Launch", "Pass1Launch", "PASS0", "PASS1", "WIDE", "PASS0_ENV", "PASS1_ENV", "BLOCK_R", "BLOCK_J",
    "pass0_launch", "pass1_launch", "queue_order", "queue_items",
]  # fmt: skip

PASS1_ENV = "SMMF_TRITON_PASS1"
PASS0_ENV = "SMMF_TRITON_PASS0"
# Today's block: 4 rows by 16 sign bytes (8 planes of 16 columns), 512 elements.
BLOCK_R = 4
BLOCK_J = 16
# Rows of a block under Triton's interpreter (CPU tensors, the tests), which pays Python overhead per
# block rather than per element: the same kernels on blocks of 16 rows.
INTERPRETER_BLOCK_R = 16
_PASS1_FIELDS = "WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK[:STAGES]]]]"
_PASS0_FIELDS = "WARPS:MAXNREG:BLOCK[:STAGES[:SPLIT[:QUEUE]]]"


def _shared_rules(num_warps: int, maxnreg: int, stages: int) -> dict[str, bool]:
    """The rules both passes' launches keep, by the words an error names them with."""
    return {
        "WARPS a power of two from 1 to 16": num_warps in (1, 2, 4, 8, 16),
        "MAXNREG 0 (no cap) or from 32 to 255": maxnreg == 0 or 32 <= maxnreg <= 255,
        "STAGES from 1 to 8": 1 <= stages <= 8,
    }


def _require(what: str, rules: dict[str, bool]) -> None:
    wrong = [rule for rule, ok in rules.items() if not ok]
    if wrong:
        raise ValueError(f"{what}: needs {'; '.join(wrong)}")


def _integers(what: str, text: str, fields: str, least: int, most: int) -> list[int]:
    """The colon-separated non-negative integers of a setting, ``least`` to ``most`` of them."""
    values = text.strip().split(":")
    if not least <= len(values) <= most or not all(v.isdigit() for v in values):
        raise ValueError(f"{what} {text!r}: expected {fields}, non-negative integers")
    return [int(v) for v in values]


def _options(num_warps: int, maxnreg: int) -> dict[str, Any]:
    """Triton's compile options: warps and the register cap (left out where 0)."""
    return {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}


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
        _require(
            f"pass 1 launch {self.text()}",
            {
                **_shared_rules(self.num_warps, self.maxnreg, self.stages),
                "BLOCK_R a power of two from 1 to 64": self.block_rows in (1, 2, 4, 8, 16, 32, 64),
                "BLOCK_J 16 or 32": self.block_bytes in (16, 32),
                "ROW_CHUNK 0 or a multiple of BLOCK_R": self.row_chunk >= 0 and self.row_chunk % self.block_rows == 0,
            },
        )

    @classmethod
    def parse(cls, text: str) -> Pass1Launch:
        """A setting from WARPS:MAXNREG:BLOCK_R[:PREFETCH[:BLOCK_J[:ROW_CHUNK[:STAGES]]]] (BLOCK_J 0 or
        left out: 16; PREFETCH 0 or 1)."""
        fields = _integers("pass 1 launch", text, _PASS1_FIELDS, 3, 7)
        left_out = [0, 0, 0, 1][len(fields) - 3 :]  # PREFETCH, BLOCK_J, ROW_CHUNK, STAGES
        warps, maxnreg, rows, prefetch, block_j, chunk, stages = fields + left_out
        if prefetch not in (0, 1):
            raise ValueError(f"pass 1 launch {text!r}: PREFETCH is 0 or 1")
        return cls(warps, maxnreg, rows, block_j or cls.block_bytes, bool(prefetch), chunk, stages)

    def text(self) -> str:
        """The setting as :meth:`parse` reads it."""
        fields = (self.num_warps, self.maxnreg, self.block_rows, int(self.prefetch), self.block_bytes)
        return ":".join(str(f) for f in (*fields, self.row_chunk, self.stages))

    def options(self) -> dict[str, Any]:
        """Triton's compile options: warps and the register cap."""
        return _options(self.num_warps, self.maxnreg)

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


@dataclass(frozen=True)
class Pass0Launch:
    """Pass 0's launch for one gradient dtype: ``block`` elements a loop iteration (2048: 16 a thread of
    4 warps, four 16-byte loads of fp32), ``maxnreg`` registers a thread at most (0: no cap; uncapped,
    Triton 3.6 takes 54-56 for 4 warps, 9 programs an SM), ``stages`` > 1 pipelines the loop's loads
    through shared memory, ``stages`` - 1 iterations ahead, and ``split`` cuts each tile's share of its
    gradient into that many programs' (GPT-2's 2,058 tiles fill an H100 1.7 times over at 9 programs
    an SM, so the second wave leaves SMs idle; shorter programs even the waves out). ``queue`` 0 gives
    pass 0 its own launch; ``queue`` >= 1 folds it into pass 1's (:mod:`smmf.triton_queue`: one launch
    fewer, and a tensor's tiles read its gradient soon after its check did, while it may still be in L2),
    each tensor's shares queued ``queue`` - 1 tensors ahead of its tiles; there pass 1's warps and
    register cap apply, and ``block``, ``stages`` and ``split`` as here."""

    num_warps: int = 4
    maxnreg: int = 0
    block: int = 2048
    stages: int = 1
    split: int = 1
    queue: int = 0

    def __post_init__(self) -> None:
        _require(
            f"pass 0 launch {self.text()}",
            {
                **_shared_rules(self.num_warps, self.maxnreg, self.stages),
                "BLOCK a power of two from 256 to 16384": self.block in {1 << k for k in range(8, 15)},
                "SPLIT from 1 to 16": 1 <= self.split <= 16,
                "QUEUE from 0 to 8": 0 <= self.queue <= 8,
            },
        )

    @classmethod
    def parse(cls, text: str) -> Pass0Launch:
        """A setting from WARPS:MAXNREG:BLOCK[:STAGES[:SPLIT[:QUEUE]]] (STAGES and SPLIT left out: 1,
        QUEUE: 0)."""
        fields = _integers("pass 0 launch", text, _PASS0_FIELDS, 3, 6)
        warps, maxnreg, block, stages, split, queue = fields + [1, 1, 0][len(fields) - 3 :]
        return cls(warps, maxnreg, block, stages, split, queue)

    def text(self) -> str:
        """The setting as :meth:`parse` reads it."""
        return f"{self.num_warps}:{self.maxnreg}:{self.block}:{self.stages}:{self.split}:{self.queue}"

    def options(self) -> dict[str, Any]:
        """Triton's compile options: warps and the register cap."""
        return _options(self.num_warps, self.maxnreg)

    def constexprs(self) -> dict[str, Any]:
        """``check_gradients``' launch constants, in its argument order."""
        return {"BLOCK": self.block, "STAGES": self.stages, "SPLIT": self.split}

    def map_bytes(self) -> int:
        """Bytes a tile takes in the tile map and, where pass 0 is queued, in the queue (:func:`queue_order`:
        the tile and its ``split`` shares), 4 each."""
        return 4 * (2 + self.split) if self.queue else 4

    def queued_constexprs(self) -> dict[str, Any]:
        """``step_queue``'s launch constants of pass 0, in its argument order."""
        return {"CHECK_BLOCK": self.block, "CHECK_STAGES": self.stages, "SPLIT": self.split}


# By the gradient's bytes an element: today's for every dtype until a GPU times the others
# (benchmarks/pass1_sweep.py --pass0-configs).
PASS0 = {2: Pass0Launch(), 4: Pass0Launch(), 8: Pass0Launch()}

Launch = TypeVar("Launch", Pass0Launch, Pass1Launch)


def _overrides(env: str, text: str, parse: Callable[[str], Launch]) -> dict[int, Launch]:
    """{bytes an element: setting} from the value ``text`` of the variable ``env``."""
    try:
        if "=" not in text:
            return dict.fromkeys((2, 4, 8), parse(text))
        chosen: dict[int, Launch] = {}
        for part in text.split(","):
            size, _, value = part.partition("=")
            if size.strip() not in ("2", "4", "8"):
                raise ValueError(f"{part!r} must be BYTES=SETTING, BYTES 2, 4 or 8")
            chosen[int(size)] = parse(value)
        return chosen
    except ValueError as exc:
        raise ValueError(f"{env}={text!r}: {exc}") from None


def _chosen(env: str, defaults: dict[int, Launch], parse: Callable[[str], Launch], element_size: int) -> Launch:
    """``defaults``' setting for ``element_size``, or the environment's where it names one; on ROCm
    without a register cap, which AMD's Triton has no option for (its launch refuses the keyword)."""
    text = os.environ.get(env)
    setting = (_overrides(env, text, parse).get(element_size) if text else None) or defaults[element_size]
    return dataclasses.replace(setting, maxnreg=0) if torch.version.hip else setting


def pass0_launch(element_size: int) -> Pass0Launch:
    """Pass 0's launch for gradients of ``element_size`` bytes: :data:`PASS0`'s, or ``SMMF_TRITON_PASS0``'s
    where it names one (the interpreter ignores warps, registers and stages, so off a GPU it is the same)."""
    return _chosen(PASS0_ENV, PASS0, Pass0Launch.parse, element_size)


def pass1_launch(element_size: int, on_gpu: bool) -> Pass1Launch:
    """Pass 1's launch for parameters of ``element_size`` bytes: :data:`PASS1`'s, or ``SMMF_TRITON_PASS1``'s
    where it names one. Off a GPU (the interpreter) blocks are INTERPRETER_BLOCK_R rows, and a row chunk
    that is not a whole number of them is rounded up to one."""
    setting = _chosen(PASS1_ENV, PASS1, Pass1Launch.parse, element_size)
    if on_gpu:
        return setting
    rows = INTERPRETER_BLOCK_R
    chunk = -(-setting.row_chunk // rows) * rows
    return dataclasses.replace(setting, block_rows=rows, row_chunk=chunk)


def queue_order(tile_counts: list[int], split: int, ahead: int) -> list[int]:
    """The work items of pass 1's queue (:mod:`smmf.triton_queue`) for tensors of ``tile_counts`` tiles,
    in ticket order: tile k as k, share s of pass 0 (part s % ``split`` of tile s // ``split``) as
    -1 - s. Every tensor's shares come before its tiles, those of tensor i + ``ahead`` just before
    tensor i's tiles, so that tiles seldom wait while checks still run ahead of them."""
    firsts = list(itertools.accumulate(tile_counts, initial=0))
    shares = [list(range(-1 - first * split, -1 - end * split, -1)) for first, end in itertools.pairwise(firsts)]
    tiles = [list(range(first, end)) for first, end in itertools.pairwise(firsts)]
    order = [s for checks in shares[:ahead] for s in checks]
    for i, own in enumerate(tiles):
        order += shares[i + ahead] if i + ahead < len(shares) else []
        order += own
    return order


def queue_items(tile_counts: list[int], pass0: Pass0Launch, device: torch.device) -> torch.Tensor | None:
    """Pass 1's queue (:func:`queue_order`) on ``device`` where ``pass0`` folds pass 0 into it, else None."""
    if not pass0.queue:
        return None
    return torch.tensor(queue_order(tile_counts, pass0.split, pass0.queue - 1), dtype=torch.int32).to(device)
