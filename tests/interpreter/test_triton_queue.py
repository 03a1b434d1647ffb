"""Pass 0 folded into pass 1's launch (smmf.triton_queue, a pass-0 setting's QUEUE >= 1) equals the eager
step under the interpreter, skips what eager skips, and makes a step three launches. The interpreter runs
programs one after another in ticket order, so no tile waits here: that a tile waits for its tensor's
checks on a GPU is the CUDA tests' (tests/test_cuda.py, the swept pass-0 settings)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from golden_replay import max_relative_error, replay
from smmf import SMMF, triton_launch
from smmf import triton_kernels as tk
from smmf import triton_queue as tq
from smmf import triton_tile as tt
from step_helpers import CountingKernel, assert_bad_step_is_skipped, assert_same, run

# zero-size, prime, (n, 1), widths with and without whole sign bytes, a tensor of several tiles
SHAPES = [(), (7,), (97,), (0,), (6, 5), (33, 12), (4, 1, 3), (64, 128), (250, 240)]


def _queued(monkeypatch: pytest.MonkeyPatch, split: int, queue: int) -> None:
    """Pass 0 in blocks of 256 elements, each tile's share in ``split`` programs, in pass 1's queue."""
    monkeypatch.setenv(triton_launch.PASS0_ENV, f"4:0:256:1:{split}:{queue}")


@pytest.mark.parametrize(
    ("kwargs", "split", "queue"),
    [({}, 2, 1), ({"sign_bits": 8}, 1, 3), ({"vector_reshape": False, "weight_decay": 0.1}, 3, 2)],
    ids=["1-bit-own-tensor-first", "8-bit-two-ahead", "dense-one-ahead"],
)
def test_pass0_in_pass1s_queue_matches_eager(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], split: int, queue: int
) -> None:
    _queued(monkeypatch, split, queue)
    triton_run = run(SHAPES, steps=3, backend="triton", **kwargs)
    (plan,) = triton_run[1]._caches[0].plans.values()
    assert plan.pass0.queue == queue and plan.work is not None
    assert plan.work.numel() == (1 + split) * plan.tile_map.numel()
    assert not plan.flags.any()  # flags, checked shares and tickets all cleared for the next step
    assert_same(triton_run, run(SHAPES, steps=3, backend="eager", **kwargs))


@pytest.mark.parametrize("at", [(0, 0), (63, 47)], ids=["first-share", "last-share"])
def test_a_bad_gradient_in_pass1s_queue_skips_only_its_tensor(
    monkeypatch: pytest.MonkeyPatch, at: tuple[int, int]
) -> None:
    _queued(monkeypatch, split=4, queue=1)
    assert_bad_step_is_skipped("triton", torch.float32, float("inf"), at=at, steps=5)


def test_pass0_in_pass1s_queue_makes_a_step_three_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    _queued(monkeypatch, split=1, queue=2)
    launched: list[str] = []
    for module, name in ((tk, "check_gradients"), (tt, "step_tiles"), (tq, "step_queue"),
                         (tk, "reduce_factors"), (tk, "normalize_columns")):  # fmt: skip
        monkeypatch.setattr(module, name, CountingKernel(getattr(module, name), launched))
    params = [nn.Parameter(torch.randn(s)) for s in [(6, 5), (33, 12), (7,)]]
    opt = SMMF(params, lr=0.01, backend="triton")
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        launched.clear()
        opt.step()
        assert launched == ["step_queue", "reduce_factors", "normalize_columns"]


def test_golden_replay_through_pass1s_queue_in_float64(monkeypatch: pytest.MonkeyPatch, golden: Any) -> None:
    """The authors' float64 trajectory (the defaults case) replayed through the queue, to 1e-9."""
    _queued(monkeypatch, split=2, queue=2)
    data, manifest = golden
    spec = next(c for c in manifest["cases"] if c["name"] == "defaults")
    params, opt = replay(data, manifest, spec, lambda ps, **hp: SMMF(ps, backend="triton", **hp))
    assert all(plan.work is not None for cache in opt._caches for plan in cache.plans.values())
    for i, p in enumerate(params):
        assert max_relative_error(p, data[f"defaults/p{i}/final"]) <= 1e-9
