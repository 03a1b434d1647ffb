"""The compiled steps (inductor, and the C++ kernel) against the eager one, row blocking, and graph capture."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from smmf import SMMF, kernels
from smmf.matricization import square_matricize
from smmf.signpack import packed_numel
from step_helpers import assert_same as _assert_same
from step_helpers import run as _run

SHAPES = [(), (1,), (7,), (97,), (6, 5), (33, 12), (4, 1, 3), (256, 300), (512, 2, 64)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"weight_decay": 0.1, "weight_decay_mode": "adam"},
        {"weight_decay": 0.1, "maximize": True, "decay_rate": -0.8},
        {"beta": None, "growth_rate": None},
        {"vector_reshape": False},
        {"sign_bits": 8},
    ],
    ids=["defaults", "coupled-wd", "maximize", "no-momentum", "dense-vectors", "8-bit"],
)
@pytest.mark.parametrize("backend", ["inductor", "cpp"])
def test_compiled_matches_eager(backend, kwargs):
    _assert_same(_run(SHAPES, backend=backend, **kwargs), _run(SHAPES, backend="eager", **kwargs))


@pytest.mark.parametrize("backend", ["inductor", "cpp"])
def test_compiled_matches_eager_bf16(backend):
    _assert_same(
        _run([(64, 48), (10,)], dtype=torch.bfloat16, backend=backend),
        _run([(64, 48), (10,)], dtype=torch.bfloat16, backend="eager"),
        rtol=1e-2,
        atol=1e-2,
    )


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("shape", [(400, 300), (97, 13), (1021,)], ids=str)
def test_row_blocks_equal_one_block(shape, backend):
    whole = _run([shape], backend=backend)
    blocked = _run([shape], backend=backend, block_size=8 * square_matricize(torch.Size(shape).numel())[1])
    _assert_same(blocked, whole)


def test_fullgraph_compile_accepts_the_update_functions():
    n, m = 16, 24
    p, g = torch.randn(n, m), torch.randn(n, m)
    sign = torch.zeros(packed_numel(n, m), dtype=torch.uint8)
    row_m, col_m, row_v, col_v = torch.zeros(n), torch.zeros(m), torch.zeros(n), torch.zeros(m)
    hp = torch.tensor([1e-3, 0.9, 0.999, -0.5, 1e-8, 0.0, 0.0, 1.0])
    sched = kernels.schedules(hp, torch.tensor([1.0]))[0]
    graph = torch.compile(kernels.factored_step, fullgraph=True, backend="eager")
    ref = [t.clone() for t in (p, sign, row_m, col_m, row_v, col_v)]
    allowed = torch.tensor(True)
    graph(p, g, sign, row_m, col_m, row_v, col_v, hp, sched, True, allowed)
    kernels.factored_step(ref[0], g, ref[1], ref[2], ref[3], ref[4], ref[5], hp, sched, True, allowed)
    for a, b in zip((p, sign, row_m, col_m, row_v, col_v), ref, strict=True):
        torch.testing.assert_close(a, b)
    dense = torch.compile(kernels.dense_step, fullgraph=True, backend="eager")
    dense(torch.randn(5), torch.randn(5), torch.zeros(5), torch.zeros(5), hp, sched, allowed)


def test_changing_lr_does_not_recompile():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(300, 400))
    opt = SMMF([p], backend="inductor")
    p.grad = torch.randn_like(p)
    opt.step()
    torch._dynamo.utils.counters.clear()
    for lr in (1e-3, 5e-4, 1e-4):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.randn_like(p)
        opt.step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0


# Same matricized shapes repeat, as in a network's layers: (6,5)/(30,)/(5,6) -> (6, 5);
# (64,)/(8,8)/(4,16) -> (8, 8); with 2^20-element blocks the two 256x300 tensors are batched too, in
# the wide (column-specialised) graph.
BATCHED_SHAPES = [(6, 5), (30,), (5, 6), (64,), (8, 8), (4, 16), (256, 300), (300, 256), (7,)]


@pytest.mark.parametrize("backend", ["eager", "inductor", "cpp"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"sign_bits": 8}, {"beta": None, "growth_rate": None}, {"maximize": True, "weight_decay": 0.1}],
    ids=["defaults", "8-bit", "no-momentum", "maximize-wd"],
)
def test_batched_same_shapes_equal_one_by_one(backend, kwargs):
    kwargs = {**kwargs, "block_size": 1 << 20, "backend": backend}
    batched = _run(BATCHED_SHAPES, **kwargs)
    torch.manual_seed(0)  # _run seeds per call, so draw the same values tensor by tensor
    params = [nn.Parameter(torch.randn(s)) for s in BATCHED_SHAPES]
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(4)]
    alone = []
    for i, p in enumerate(params):
        opt = SMMF([p], lr=0.01, **kwargs)
        for step in range(4):
            p.grad = grads[step][i]
            opt.step()
        alone.append(opt)
    state = {p: opt.state[p] for p, opt in zip(params, alone, strict=True)}
    _assert_same(batched, (params, SimpleNamespace(state=state)), rtol=1e-6, atol=1e-7)


def test_same_shapes_take_one_kernel_call(monkeypatch):
    calls = []
    real = kernels.factored_step
    monkeypatch.setattr(kernels, "factored_step", lambda p, *rest: calls.append(tuple(p.shape)) or real(p, *rest))
    _run([(6, 5), (30,), (5, 6), (64,), (8, 8), (11, 13)], steps=1, fused=False)
    assert sorted(calls) == [(2, 8, 8), (3, 6, 5), (13, 11)]  # two batches and the odd one out


def test_automatic_block_size_grows_with_the_largest_tensor_on_gpus_only():
    from smmf.torch_backend import _block_size

    items = [(torch.empty(s, device="meta"), None, {}) for s in [(50257, 768), (768,)]]
    assert _block_size(None, torch.device("cpu"), items) == 1 << 19
    assert _block_size(None, torch.device("cuda"), items) == 50257 * 768 // 16
    assert _block_size(None, torch.device("cuda"), items[1:]) == 1 << 19
    assert _block_size(4096, torch.device("cuda"), items) == 4096


@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (5, 13), (2, 4, 17), (7, 64)])
def test_kernel_sign_packing_matches_signpack(shape):
    """The kernels pack new signs straight from the float moment, compiled; the bytes are those of the
    bools m > 0, padding bits zero, and NaN and exact zeros count as negative."""
    from smmf.signpack import pack_signs

    m = torch.randn(shape)
    m.view(-1)[:: max(1, m.numel() // 3)] = 0.0
    m.view(-1)[1 :: max(2, m.numel() // 2)] = float("nan")
    for fn in (pack_signs, torch.compile(pack_signs, fullgraph=True)):
        assert torch.equal(fn(m), pack_signs(m > 0))
