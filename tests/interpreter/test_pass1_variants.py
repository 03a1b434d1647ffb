"""Pass 1's launch variants equal the eager step under the interpreter: the GPU's blocks of rows, and
the settings a GPU run times before one becomes a default (prefetch, wide blocks, row chunks, pipeline
stages; the interpreter runs a pipelined loop as a plain one, which the CUDA tests check on a GPU)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from smmf import SMMF, triton_backend, triton_launch
from step_helpers import assert_same, run


def _plan(opt: SMMF) -> triton_backend.Plan:
    """The optimizer's one Triton plan."""
    (plan,) = opt._caches[0].plans.values()
    return plan


def _launch_with(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    """Pass 1's launch for every dtype with ``fields`` changed, until the test ends."""
    for size, launch in triton_launch.PASS1.items():
        monkeypatch.setitem(triton_launch.PASS1, size, dataclasses.replace(launch, **fields))


def _tight_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU's BLOCK_R rows a block, and tiles of several blocks each way."""
    monkeypatch.setattr(triton_launch, "INTERPRETER_BLOCK_R", triton_launch.BLOCK_R)
    monkeypatch.setattr(triton_backend, "_MIN_SCRATCH_BYTES", 0)
    monkeypatch.setattr(triton_backend, "SCRATCH_FRACTION", 0.002)


@pytest.mark.parametrize("kwargs", [{}, {"sign_bits": 8}, {"vector_reshape": False}], ids=["1-bit", "8-bit", "dense"])
def test_the_gpus_blocks_of_rows_match_eager(monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]) -> None:
    """The interpreter runs blocks of INTERPRETER_BLOCK_R rows for speed; a GPU runs BLOCK_R."""
    monkeypatch.setattr(triton_launch, "INTERPRETER_BLOCK_R", triton_launch.BLOCK_R)
    shapes = [(33, 12), (64, 128), (7,), (0,)]
    triton_run = run(shapes, steps=3, backend="triton", **kwargs)
    assert _plan(triton_run[1]).pass1.block_rows == triton_launch.BLOCK_R
    assert_same(triton_run, run(shapes, steps=3, backend="eager", **kwargs))


@pytest.mark.parametrize(
    "kwargs", [{}, {"sign_bits": 8}, {"beta": None, "growth_rate": None}], ids=["1-bit", "8-bit", "no-momentum"]
)
def test_prefetching_the_next_rows_matches_eager(monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]) -> None:
    """Prefetch: pass 1 loads a tile's next block of rows while it computes on the current one (the
    loads past a tile's last row are masked off), over tiles of several blocks of the GPU's BLOCK_R
    rows and of several column blocks."""
    _launch_with(monkeypatch, prefetch=True)
    _tight_scratch(monkeypatch)
    shapes = [(250, 240), (64, 128), (33, 12), (7,)]
    triton_run = run(shapes, steps=3, backend="triton", **kwargs)
    plan = _plan(triton_run[1])
    assert plan.pass1.prefetch and plan.tile_rows > plan.pass1.block_rows and plan.tile_bytes > plan.pass1.block_bytes
    assert_same(triton_run, run(shapes, steps=3, backend="eager", **kwargs))


WIDE = {
    "1-bit": ({}, torch.float32),
    "8-bit": ({"sign_bits": 8}, torch.float32),
    "dense": ({"vector_reshape": False}, torch.float32),
    "bf16": ({}, torch.bfloat16),
}


@pytest.mark.parametrize(("kwargs", "dtype"), WIDE.values(), ids=WIDE.keys())
def test_wide_blocks_match_eager(monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], dtype: torch.dtype) -> None:
    """Wide blocks (``triton_launch.WIDE``): the GPU's BLOCK_R rows by 32 sign bytes (256 columns),
    whole and cut short, in tiles of several blocks each way, over an aligned tensor (m = 320: two
    column blocks) and unaligned ones."""
    monkeypatch.setitem(triton_launch.PASS1, dtype.itemsize, triton_launch.WIDE)
    _tight_scratch(monkeypatch)
    shapes = [(320, 320), (250, 240), (33, 12), (7,)]
    triton_run = run(shapes, steps=2, dtype=dtype, backend="triton", **kwargs)
    launch = (plan := _plan(triton_run[1])).pass1
    assert launch.block_bytes == triton_launch.WIDE.block_bytes and plan.tile_bytes % launch.block_bytes == 0
    assert plan.tile_bytes > launch.block_bytes and plan.tile_rows > launch.block_rows
    tolerance = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    assert_same(triton_run, run(shapes, steps=2, dtype=dtype, backend="eager", **kwargs), **tolerance)


CHUNKED = {
    "1-bit": ({}, torch.float32, False),
    "8-bit": ({"sign_bits": 8}, torch.float32, False),
    "no-momentum": ({"beta": None, "growth_rate": None}, torch.float32, False),
    "bf16-stochastic-prefetch": ({"stochastic_rounding": True}, torch.bfloat16, True),
}


@pytest.mark.parametrize(("kwargs", "dtype", "prefetch"), CHUNKED.values(), ids=CHUNKED.keys())
def test_row_chunks_match_eager(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], dtype: torch.dtype, prefetch: bool
) -> None:
    """Row chunks: a tile's rows in chunks of 12 (the last one cut short), each chunk through all the
    tile's column blocks; the column sums of later chunks added to those stored before."""
    _launch_with(monkeypatch, row_chunk=3 * triton_launch.BLOCK_R, prefetch=prefetch)
    _tight_scratch(monkeypatch)
    shapes = [(250, 240), (64, 128), (33, 12), (7,)]
    triton_run = run(shapes, steps=3, dtype=dtype, backend="triton", **kwargs)
    plan = _plan(triton_run[1])
    assert plan.pass1.row_chunk == 12 and plan.tile_rows % 12 and plan.tile_rows > 12
    assert plan.tile_bytes > plan.pass1.block_bytes
    tolerance = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    assert_same(triton_run, run(shapes, steps=3, dtype=dtype, backend="eager", **kwargs), **tolerance)


@pytest.mark.parametrize(
    ("kwargs", "dtype"), [({}, torch.float32), ({"stochastic_rounding": True}, torch.bfloat16)], ids=["fp32", "bf16-sr"]
)
def test_pipeline_stages_match_eager(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], dtype: torch.dtype
) -> None:
    """Three pipeline stages at 128 registers, the setting the GPU sweep times: the interpreter runs the
    loop as written (Triton's pipelining is a compiled transformation), so this checks that the setting
    reaches the kernel and steps as eager; tests/test_cuda.py checks the pipelined code on a GPU."""
    _launch_with(monkeypatch, stages=3, maxnreg=128)
    _tight_scratch(monkeypatch)
    shapes = [(250, 240), (64, 128), (33, 12), (7,)]
    triton_run = run(shapes, steps=2, dtype=dtype, backend="triton", **kwargs)
    assert _plan(triton_run[1]).pass1.stages == 3
    tolerance = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    assert_same(triton_run, run(shapes, steps=2, dtype=dtype, backend="eager", **kwargs), **tolerance)
