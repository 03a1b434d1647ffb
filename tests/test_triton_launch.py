"""The launch settings of passes 1 and 0 (smmf.triton_launch): the text form the sweep,
``SMMF_TRITON_PASS1`` and ``SMMF_TRITON_PASS0`` use, clear errors for a bad one, and which setting a
plan gets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smmf import triton_launch
from smmf.triton_launch import Pass0Launch, Pass1Launch, pass0_launch, pass1_launch, queue_order


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4:96:4", Pass1Launch()),
        ("4:128:4:0:32", triton_launch.WIDE),
        ("8:0:8:1:16:16:3", Pass1Launch(8, 0, 8, 16, True, 16, 3)),
        ("4:128:4:0:0", Pass1Launch(maxnreg=128)),  # BLOCK_J 0: the default
    ],
)
def test_a_setting_reads_from_its_text_and_writes_back(text: str, expected: Pass1Launch) -> None:
    assert Pass1Launch.parse(text) == expected
    assert Pass1Launch.parse(expected.text()) == expected


def test_options_leave_out_a_register_cap_of_0() -> None:
    assert Pass1Launch().options() == {"num_warps": 4, "maxnreg": 96}
    assert Pass1Launch(8, 0, 8).options() == {"num_warps": 8}


def test_on_rocm_no_launch_asks_for_a_register_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """AMD's Triton refuses ``maxnreg`` as an unknown keyword at launch: every setting, default or from
    the environment, drops it there and keeps the rest (tests/test_triton_compile.py compiles them)."""
    monkeypatch.setattr(torch.version, "hip", "6.4")
    monkeypatch.setenv(triton_launch.PASS0_ENV, "4=8:40:4096:3")
    for launch in (pass1_launch(2, True), pass1_launch(4, True), pass0_launch(2), pass0_launch(4)):
        assert launch.maxnreg == 0 and "maxnreg" not in launch.options()
    assert pass1_launch(4, True) == dataclasses.replace(triton_launch.PASS1[4], maxnreg=0)
    assert pass0_launch(4) == Pass0Launch(8, 0, 4096, 3)
    monkeypatch.setattr(torch.version, "hip", None)
    assert pass1_launch(4, True) == triton_launch.PASS1[4] and pass0_launch(4).maxnreg == 40


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("4:96", "expected WARPS:MAXNREG:BLOCK_R"),
        ("4:96:4:0:16:0:3:1", "expected WARPS:MAXNREG:BLOCK_R"),
        ("4:-96:4", "non-negative integers"),
        ("four:96:4", "non-negative integers"),
        ("3:96:4", "WARPS a power of two"),
        ("4:16:4", "MAXNREG 0 (no cap) or from 32 to 255"),
        ("4:96:3", "BLOCK_R a power of two"),
        ("4:96:4:2", "PREFETCH is 0 or 1"),
        ("4:96:4:0:24", "BLOCK_J 16 or 32"),
        ("4:96:4:0:16:6", "ROW_CHUNK 0 or a multiple of BLOCK_R"),
        ("4:96:4:0:16:0:9", "STAGES from 1 to 8"),
        ("4:96:4:0:16:0:0", "STAGES from 1 to 8"),
    ],
)
def test_a_bad_setting_names_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match="pass 1 launch") as error:
        Pass1Launch.parse(text)
    assert needle in str(error.value)


def test_the_environment_overrides_the_defaults_by_element_size(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pass1_launch(2, on_gpu=True) == triton_launch.PASS1[2]
    monkeypatch.setenv(triton_launch.PASS1_ENV, "2=4:128:4:0:32, 4=4:128:4:0:16:0:3")
    assert pass1_launch(2, on_gpu=True) == triton_launch.WIDE
    assert pass1_launch(4, on_gpu=True) == Pass1Launch(maxnreg=128, stages=3)
    assert pass1_launch(8, on_gpu=True) == triton_launch.PASS1[8]  # not named: the default
    monkeypatch.setenv(triton_launch.PASS1_ENV, "4:128:4:0:16:0:3")  # one setting for every dtype
    assert {pass1_launch(size, on_gpu=True).stages for size in (2, 4, 8)} == {3}


@pytest.mark.parametrize(
    ("value", "needle"), [("3=4:96:4", "BYTES 2, 4 or 8"), ("4:96", "expected"), ("2=4:96:4:0:24", "BLOCK_J")]
)
def test_a_bad_environment_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str, needle: str) -> None:
    monkeypatch.setenv(triton_launch.PASS1_ENV, value)
    with pytest.raises(ValueError, match=triton_launch.PASS1_ENV) as error:
        pass1_launch(4, on_gpu=True)
    assert needle in str(error.value)


def test_off_a_gpu_blocks_are_the_interpreters_and_chunks_whole_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(triton_launch.PASS1_ENV, "4:96:4:0:16:20:3")
    launch = pass1_launch(4, on_gpu=False)
    assert launch.block_rows == triton_launch.INTERPRETER_BLOCK_R == 16
    assert (launch.row_chunk, launch.stages) == (32, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4:0:2048", Pass0Launch()),
        ("8:40:4096:3", Pass0Launch(8, 40, 4096, 3)),
        ("4:32:256:1:4", Pass0Launch(4, 32, 256, split=4)),
        ("4:0:2048:1:2:3", Pass0Launch(split=2, queue=3)),
    ],
)
def test_a_pass0_setting_reads_from_its_text_and_writes_back(text: str, expected: Pass0Launch) -> None:
    assert Pass0Launch.parse(text) == expected
    assert Pass0Launch.parse(expected.text()) == expected
    assert expected.constexprs() == {"BLOCK": expected.block, "STAGES": expected.stages, "SPLIT": expected.split}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("4:0", "expected WARPS:MAXNREG:BLOCK[:STAGES[:SPLIT[:QUEUE]]]"),
        ("4:0:2048:1:1:1:1", "expected WARPS:MAXNREG:BLOCK[:STAGES[:SPLIT[:QUEUE]]]"),
        ("4:0:-2048", "non-negative integers"),
        ("6:0:2048", "WARPS a power of two"),
        ("4:300:2048", "MAXNREG 0 (no cap) or from 32 to 255"),
        ("4:0:3000", "BLOCK a power of two from 256 to 16384"),
        ("4:0:128", "BLOCK a power of two from 256 to 16384"),
        ("4:0:2048:0", "STAGES from 1 to 8"),
        ("4:0:2048:1:0", "SPLIT from 1 to 16"),
        ("4:0:2048:1:32", "SPLIT from 1 to 16"),
        ("4:0:2048:1:1:9", "QUEUE from 0 to 8"),
    ],
)
def test_a_bad_pass0_setting_names_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match="pass 0 launch") as error:
        Pass0Launch.parse(text)
    assert needle in str(error.value)


def test_pass0s_environment_overrides_its_defaults_by_the_gradients_element_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert pass0_launch(4) == triton_launch.PASS0[4] == Pass0Launch()
    monkeypatch.setenv(triton_launch.PASS0_ENV, "2=8:40:4096:3,4=4:40:2048:3")
    monkeypatch.setenv(triton_launch.PASS1_ENV, "4:64:4")  # each pass reads its own variable
    assert pass0_launch(2) == Pass0Launch(8, 40, 4096, 3)
    assert pass0_launch(4) == Pass0Launch(4, 40, 2048, 3)
    assert pass0_launch(8) == triton_launch.PASS0[8]
    assert pass1_launch(4, on_gpu=True) == Pass1Launch(maxnreg=64)
    monkeypatch.setenv(triton_launch.PASS0_ENV, "8:32:2048:3:2")
    assert {pass0_launch(size).text() for size in (2, 4, 8)} == {"8:32:2048:3:2:0"}


@pytest.mark.parametrize(("value", "needle"), [("5=4:0:2048", "BYTES 2, 4 or 8"), ("4:0:1000", "BLOCK a power")])
def test_a_bad_pass0_environment_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, needle: str
) -> None:
    monkeypatch.setenv(triton_launch.PASS0_ENV, value)
    with pytest.raises(ValueError, match=triton_launch.PASS0_ENV) as error:
        pass0_launch(4)
    assert needle in str(error.value)


@settings(max_examples=200, deadline=None)
@given(
    tile_counts=st.lists(st.integers(0, 6), max_size=8),
    split=st.integers(1, 4),
    ahead=st.integers(0, 3),
)
def test_pass1s_queue_holds_every_item_once_and_each_tensors_checks_before_its_tiles(
    tile_counts: list[int], split: int, ahead: int
) -> None:
    """The queue's order (smmf.triton_queue): a tile waits for its tensor's shares, so they must all have
    earlier tickets; and each tensor's shares sit ``ahead`` tensors before its tiles."""
    order = queue_order(tile_counts, split, ahead)
    tiles = sum(tile_counts)
    assert sorted(order) == list(range(-tiles * split, tiles))
    owner = [t for t, count in enumerate(tile_counts) for _ in range(count)]
    ticket = {item: k for k, item in enumerate(order)}
    for tile, tensor in enumerate(owner):
        shares = [-1 - (t * split + part) for t, o in enumerate(owner) if o == tensor for part in range(split)]
        assert max(ticket[s] for s in shares) < ticket[tile]
    firsts = [sum(tile_counts[:t]) for t in range(len(tile_counts))]
    for tensor, ahead_of_it in zip(range(len(tile_counts)), range(ahead, len(tile_counts)), strict=False):
        if tile_counts[tensor] and tile_counts[ahead_of_it]:  # its shares come just before tensor's tiles
            assert (
                ticket[-1 - (firsts[ahead_of_it] + tile_counts[ahead_of_it]) * split + 1] + 1 == ticket[firsts[tensor]]
            )
