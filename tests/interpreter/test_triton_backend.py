"""The Triton backend equals the eager step, on CPU tensors under Triton's interpreter (small shapes)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import triton
import triton.language as tl
from torch import nn

from golden_replay import CASES, max_relative_error, replay
from smmf import SMMF, compilers, rounding, triton_backend, triton_launch
from smmf import triton_arithmetic as ta
from smmf import triton_kernels as tk
from smmf import triton_tile as tt
from step_helpers import (
    NON_FINITE_CASES,
    CountingKernel,
    assert_bad_step_is_skipped,
    assert_format1_resume_is_exact,
    assert_same,
    run,
)

# prime (97,) -> (97, 1), zero-size, widths with and without whole sign bytes, one tensor of several tiles
SHAPES = [(), (1,), (7,), (97,), (0,), (0, 3), (6, 5), (33, 12), (4, 1, 3), (24, 16), (250, 240)]

CONFIGS = {
    "defaults": {},
    "8-bit": {"sign_bits": 8},
    "no-momentum": {"beta": None, "growth_rate": None},
    "coupled-wd-maximize": {"weight_decay": 0.1, "weight_decay_mode": "adam", "maximize": True},
    "decoupled-wd-transformer": {"weight_decay": 0.1, "decay_rate": -0.8, "growth_rate": 0.9},
    "dense-vectors": {"vector_reshape": False},
    "dense-vectors-no-momentum": {"vector_reshape": False, "beta": None, "growth_rate": None},
}


@pytest.mark.parametrize("kwargs", CONFIGS.values(), ids=CONFIGS.keys())
def test_triton_matches_eager(kwargs: dict[str, Any]) -> None:
    assert_same(run(SHAPES, backend="triton", **kwargs), run(SHAPES, backend="eager", **kwargs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_parameters_use_float32_math(dtype: torch.dtype) -> None:
    shapes = [(64, 48), (10,), (33, 12)]
    triton_run, eager_run = run(shapes, dtype=dtype, backend="triton"), run(shapes, dtype=dtype, backend="eager")
    assert triton_run[1].state[triton_run[0][0]]["row_v"].dtype == torch.float32
    assert_same(triton_run, eager_run, rtol=1e-2, atol=1e-2)


def test_float64_parameters_use_float64_math() -> None:
    triton_run, eager_run = (
        run(SHAPES, dtype=torch.float64, backend="triton"),
        run(SHAPES, dtype=torch.float64, backend="eager"),
    )
    assert triton_run[1].state[triton_run[0][-1]]["row_v"].dtype == torch.float64
    assert_same(triton_run, eager_run, rtol=1e-12, atol=1e-14)


def test_mixed_dtypes_in_one_group_each_get_their_bucket() -> None:
    runs = []
    for backend in ("triton", "eager"):
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(20, 12)), nn.Parameter(torch.randn(9, 8).bfloat16())]
        opt = SMMF(params, lr=0.01, backend=backend)
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.1 * (step + 1)) + torch.linspace(-1, 1, p.numel()).view(p.shape).to(
                    p.dtype
                )
            opt.step()
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("case", CASES)
def test_golden_replay_through_triton_in_float64(golden: Any, case: str) -> None:
    data, manifest = golden
    spec = next(c for c in manifest["cases"] if c["name"] == case)
    params, _ = replay(data, manifest, spec, lambda ps, **hp: SMMF(ps, backend="triton", **hp))
    for i, p in enumerate(params):
        assert max_relative_error(p, data[f"{case}/p{i}/final"]) <= 1e-9


def test_large_tiles_loop_over_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tight scratch budget, tiles grow past one block: both in-tile loops and the row sums
    accumulated across column blocks run."""
    monkeypatch.setattr(triton_backend, "_MIN_SCRATCH_BYTES", 0)
    monkeypatch.setattr(triton_backend, "SCRATCH_FRACTION", 0.002)
    shapes = [(250, 240), (300, 301), (7,)]
    triton_run = run(shapes, steps=3, backend="triton")
    plan = next(iter(triton_run[1]._caches[0].plans.values()))
    assert plan.tile_rows > plan.pass1.block_rows and plan.tile_bytes > plan.pass1.block_bytes
    assert_same(triton_run, run(shapes, steps=3, backend="eager"))


def test_factor_sums_split_over_many_programs_and_capped_tiles_match_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass 2 and 3 in blocks of 16 rows or columns (many programs per tensor, every total still added
    in one order), and tiles grown until at most 2 lie along any line."""
    monkeypatch.setattr(triton_backend, "_REDUCE_BLOCK", 16)
    monkeypatch.setattr(triton_backend, "MAX_SLOTS", 2)
    shapes = [(250, 240), (64, 48), (33, 12), (7,)]
    triton_run = run(shapes, steps=3, backend="triton")
    plan = next(iter(triton_run[1]._caches[0].plans.values()))
    assert plan.row_chunks > 1 and plan.column_chunks > 1
    assert_same(triton_run, run(shapes, steps=3, backend="eager"))


def _offset_gradient_run(backend: str, steps: int = 3) -> tuple[list[nn.Parameter], SMMF]:
    """Tensors viewed as (n, 64) and (64, 48); the second (128, 64) one gets gradients one element
    past a 16-byte boundary."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(s)) for s in [(64, 128), (128, 64), (4096,), (64, 48)]]
    opt = SMMF(params, lr=0.01, backend=backend)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for i, p in enumerate(params):
            g = torch.randn(p.numel() + 1, generator=gen)
            p.grad = (g[1:] if i == 1 else g[:-1]).view(p.shape)
        opt.step()
    return params, opt


def test_tensors_of_whole_16_byte_rows_take_the_vector_path_and_match_eager() -> None:
    """m a multiple of 64 and every address 16-byte aligned: flagged for pass 1's vector path (whose
    alignment hints the interpreter ignores, so this checks the flag and the code path's arithmetic)."""
    triton_run = _offset_gradient_run("triton")
    plan = next(iter(triton_run[1]._caches[0].plans.values()))
    assert plan.table[:, int(tk.COL_ALIGNED)].tolist() == [1, 0, 1, 0]
    assert list(plan.aligned) == [True, True, True, False]
    assert_same(triton_run, _offset_gradient_run("eager"))


def test_scratch_stays_within_a_quarter_of_the_largest_parameter() -> None:
    _, opt = run([(250, 240), (64, 48), (33, 12)], steps=1, backend="triton")
    plan = next(iter(opt._caches[0].plans.values()))
    largest = 250 * 240 * 4
    assert plan.scratch_numel * 4 + 4 * plan.tile_map.numel() <= max(0.25 * largest, triton_backend._MIN_SCRATCH_BYTES)


def test_two_runs_are_bitwise_equal() -> None:
    first, second = run(SHAPES, backend="triton"), run(SHAPES, backend="triton")
    for a, b in zip(first[0], second[0], strict=True):
        assert torch.equal(a, b)
        for key, value in first[1].state[a].items():
            assert torch.equal(value, second[1].state[b][key]) if isinstance(value, torch.Tensor) else True


def test_four_launches_per_step_and_the_table_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    launches: list[str] = []
    monkeypatch.setattr(tk, "check_gradients", CountingKernel(tk.check_gradients, launches))
    monkeypatch.setattr(tt, "step_tiles", CountingKernel(tt.step_tiles, launches))
    monkeypatch.setattr(tk, "reduce_factors", CountingKernel(tk.reduce_factors, launches))
    monkeypatch.setattr(tk, "normalize_columns", CountingKernel(tk.normalize_columns, launches))
    params = [nn.Parameter(torch.randn(s)) for s in [(6, 5), (33, 12), (7,), (24, 16)]]
    opt = SMMF(params, lr=0.01, backend="triton")
    plans = []
    for step in range(5):
        for p in params:  # gradients written in place keep their addresses, as the caching allocator's reuse does
            if step == 2 and p is params[0]:
                p.grad = None
            elif p.grad is None or step == 4:
                p.grad = torch.randn_like(p)
            else:
                p.grad.copy_(torch.randn_like(p))
        launches.clear()
        opt.step()
        assert len(launches) == 4
        plans.append(next(iter(opt._caches[0].plans.values())))
    assert plans[0] is plans[1]  # same tensors with gradients: the table is not rebuilt
    assert plans[2] is not plans[1]  # one parameter without a gradient: a new table
    assert plans[3].layout != plans[2].layout  # it has a gradient again: a new table
    assert plans[4].table is plans[3].table  # new gradients, same tensors: only the gradient column is rewritten
    assert plans[4].gradients != plans[3].gradients
    assert opt.state[params[0]]["step"].item() == 4 and opt.state[params[1]]["step"].item() == 5


def test_tensor_lr_changed_in_place_is_read_on_device() -> None:
    shapes = [(33, 12), (7,)]
    lr = torch.tensor(0.01)
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(s)) for s in shapes]
    reference = [nn.Parameter(p.detach().clone()) for p in params]
    opt, ref_opt = SMMF(params, lr=lr, backend="triton"), SMMF(reference, lr=0.01, backend="eager")
    for step in range(3):
        lr.fill_(0.01 / (step + 1))  # in place, as a scheduler of a captured CUDA graph would
        ref_opt.param_groups[0]["lr"] = 0.01 / (step + 1)
        for p, q in zip(params, reference, strict=True):
            p.grad = torch.full_like(p, 0.5) + torch.arange(p.numel()).view(p.shape) / p.numel()
            q.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(params, reference, strict=True):
        torch.testing.assert_close(p, q)


# parameters not in row-major order, each with its gradient laid out alike: pass 1 steps them in place
# through their placement. (72, 64) in row-major order would take the vector path; strided, it cannot.
STRIDED = {
    "channels-last": lambda: torch.randn(8, 6, 3, 3).to(memory_format=torch.channels_last),
    "channels-last-wide": lambda: torch.randn(64, 8, 3, 3).to(memory_format=torch.channels_last),
    "channels-last-3d": lambda: torch.randn(4, 3, 2, 3, 2).to(memory_format=torch.channels_last_3d),
    "transposed": lambda: torch.randn(40, 24).t(),
    "permuted": lambda: torch.randn(4, 5, 6).permute(2, 0, 1),
}


def _strided_run(
    backend: str, dtype: torch.dtype, grads_alike: bool = True, **kwargs: Any
) -> tuple[list[nn.Parameter], SMMF]:
    """Three steps on the STRIDED parameters, a contiguous one and one with gaps (a slice), whose
    gradients are laid out as their parameters (``grads_alike``) or contiguous."""
    torch.manual_seed(0)
    tensors = [make().to(dtype) for make in STRIDED.values()] + [torch.randn(12, 5).to(dtype)]
    params = [nn.Parameter(t) for t in [*tensors, torch.randn(10, 10).to(dtype)[:, :6]]]
    opt = SMMF(params, lr=0.01, backend=backend, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p in params:
            grad = torch.randn(p.shape, generator=gen).to(dtype)
            p.grad = torch.empty_like(p).copy_(grad) if grads_alike else grad
        opt.step()
    return params, opt


@pytest.mark.parametrize(
    ("dtype", "kwargs"),
    [(torch.float32, {}), (torch.float32, {"sign_bits": 8}), (torch.bfloat16, {"stochastic_rounding": True})],
    ids=["fp32", "fp32-8bit", "bf16-stochastic"],
)
def test_strided_parameters_are_stepped_in_place_and_match_eager(dtype: torch.dtype, kwargs: dict[str, Any]) -> None:
    """Channels-last weights, a transposed matrix and other dense layouts: the Triton step reads and
    writes them where they are (no copy, no fallback), with the eager step's results; bf16 parameters
    to the bit (1e-5 is far below an ulp), as each element draws its rounding bits for its row-major
    index, not its place in memory."""
    triton_run = _strided_run("triton", dtype, **kwargs)
    assert_same(triton_run, _strided_run("eager", dtype, **kwargs))
    params, opt = triton_run
    assert [p.is_contiguous() for p in params] == [False] * len(STRIDED) + [True, False]
    (plan,) = opt._caches[0].plans.values()
    assert plan.table.shape[0] == len(STRIDED) + 1  # the slice with gaps went to the torch backend
    assert plan.table[:, int(tk.COL_PLACE_K)].ne(0).tolist() == [True] * len(STRIDED) + [False]
    assert plan.table[:, int(tk.COL_ALIGNED)].eq(0).all()
    assert [p.grad is not None and p.stride() == p.grad.stride() for p in params] == [True] * (len(STRIDED) + 1) + [
        False
    ]


def test_gradients_laid_out_unlike_their_parameters_fall_back_and_match_eager() -> None:
    triton_run = _strided_run("triton", torch.float32, grads_alike=False)
    assert_same(triton_run, _strided_run("eager", torch.float32, grads_alike=False))
    (plan,) = triton_run[1]._caches[0].plans.values()
    assert plan.table.shape[0] == 1  # only the contiguous parameter


def test_a_bad_gradient_of_a_channels_last_weight_skips_it() -> None:
    """Pass 0 reads a strided gradient's memory as one run: an inf at its last row-major element (not
    its last in memory) skips the tensor."""
    assert_bad_step_is_skipped(
        "triton", torch.float32, float("inf"), shape=(16, 6, 3, 3), at=(15, 5, 2, 2), steps=6,
        memory_format=torch.channels_last,
    )  # fmt: skip


def test_a_weight_made_channels_last_between_steps_gets_a_new_table() -> None:
    """``model.to(memory_format=torch.channels_last)`` between steps: new parameter tensors, so a new
    table with their placement, and the step goes on as eager's."""
    runs = []
    for backend in ("triton", "eager"):
        torch.manual_seed(0)
        conv = nn.Conv2d(6, 8, 3, bias=False)
        opt = SMMF(conv.parameters(), lr=0.01, backend=backend)
        for step in range(4):
            if step == 2:
                conv.to(memory_format=torch.channels_last)
            conv(torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        assert not conv.weight.is_contiguous()
        runs.append(([conv.weight], opt))
    assert_same(*runs)
    (plan,) = runs[0][1]._caches[0].plans.values()
    assert plan.table[0, int(tk.COL_PLACE_K)].item() != 0


def test_a_format1_checkpoint_loads_and_continues_exactly() -> None:
    assert_format1_resume_is_exact("triton")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_fsdp2_local_shards_match_eager(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import dist_workers

    results = {}
    for backend in ("triton", "eager"):
        # eps well above the attention key bias's rounding-noise gradients (~1e-10), whose updates
        # would otherwise differ between any two backends
        monkeypatch.setenv("SMMF_TEST_OPTIONS", json.dumps({"backend": backend, "eps": 1e-6}))
        out = tmp_path / f"{backend}.pt"
        args = (2, str(tmp_path / f"rdzv-{backend}"), str(out), str(tmp_path / f"dcp-{backend}"), "train")
        mp.start_processes(dist_workers.fsdp_worker, args=args, nprocs=2, join=True, start_method="spawn")
        results[backend] = torch.load(out)
    for name, value in results["triton"].items():
        torch.testing.assert_close(value, results["eager"][name], rtol=1e-5, atol=1e-5)


def test_interpreter_is_on() -> None:
    assert os.environ["TRITON_INTERPRET"] == "1" and not compilers.triton_unavailable_reason(torch.device("cpu"))


@pytest.mark.parametrize(("dtype", "bad"), NON_FINITE_CASES, ids=["nan", "inf", "1e20-fp32", "1e20-bf16", "inf-fp16"])
def test_a_bad_gradient_skips_only_its_tensor(dtype: torch.dtype, bad: float) -> None:
    assert_bad_step_is_skipped("triton", dtype, bad)


def test_a_bad_gradient_of_a_tensor_on_the_vector_path_skips_it() -> None:
    """(64, 128) tensors take pass 0's and pass 1's aligned branch (see the vector-path test above)."""
    assert_bad_step_is_skipped("triton", torch.float32, float("nan"), shape=(64, 128))


def test_a_bad_gradient_in_the_last_share_of_a_tensor_of_many_tiles_skips_it() -> None:
    """Pass 0 reads a tensor's gradient in one contiguous share per tile; a bad last element lies in
    the last share of a (250, 240) tensor (8 steps: the interpreter is slow on this size)."""
    assert_bad_step_is_skipped("triton", torch.float32, float("inf"), shape=(250, 240), at=(249, 239), steps=8)


@pytest.mark.parametrize("at", [(40, 7), (63, 47)], ids=["eighth-share", "last-share"])
def test_pass0_split_into_shorter_programs_finds_a_bad_element_in_any_of_them(
    monkeypatch: pytest.MonkeyPatch, at: tuple[int, int]
) -> None:
    """SMMF_TRITON_PASS0's SPLIT cuts each tile's share of a gradient into that many programs' runs of
    BLOCK elements (here each of a (64, 48) tensor's 4 tiles into 4 programs, of one 256-element block
    or none); an inf in any of them skips the tensor: both places lie in a tile's fourth program."""
    monkeypatch.setenv(triton_launch.PASS0_ENV, "4:0:256:1:4")
    assert_bad_step_is_skipped("triton", torch.float32, float("inf"), at=at, steps=5)


def test_8bit_signs_skip_too() -> None:
    assert_bad_step_is_skipped("triton", torch.float32, float("nan"), sign_bits=8)


@triton.jit
def _round_kernel(x_ptr, out_ptr, seed, step, N: tl.constexpr):
    index = tl.arange(0, N).to(tl.int64)
    bits = ta.random_bits(ta.stream_key(seed, step), index.to(tl.uint32))
    tl.store(out_ptr + index, ta.stochastic_bf16(tl.load(x_ptr + index), bits))


def test_triton_draws_the_same_random_bits_and_rounds_like_torch() -> None:
    n = 4096
    x = torch.randn(n) * torch.logspace(-3, 3, n)
    x[:4] = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0])
    out = torch.empty(n, dtype=torch.bfloat16)
    _round_kernel[(1,)](x, out, 987654321, 42, N=n)
    expected = rounding.stochastic_round_bf16(
        x, rounding.random_bits(torch.tensor(987654321), torch.tensor(42), torch.arange(n))
    )
    assert torch.equal(out[3:], expected[3:]) and out[:2].tolist() == [float("inf"), float("-inf")] and out[2].isnan()


def test_small_lr_bf16_learns_with_stochastic_rounding_as_in_eager() -> None:
    results = []
    for backend in ("triton", "eager"):
        p = nn.Parameter(torch.ones(32, 24, dtype=torch.bfloat16))
        opt = SMMF([p], lr=1e-4, backend=backend, stochastic_rounding=True)
        for _ in range(40):
            p.grad = 2 * p.detach()
            opt.step()
        results.append(p.detach().float())
    assert results[0].mean().item() < 1 - 40 * 1e-4 * 0.5
    assert (results[0] != results[1]).float().mean().item() < 0.01  # the same random bits in both backends


@pytest.mark.parametrize("bucket_bytes", [0, 1 << 20], ids=["each-alone", "together"])
def test_step_in_backward_through_triton_matches_the_eager_loop(bucket_bytes: int) -> None:
    """Stepped inside backward by the Triton kernels, alone or together, as the eager loop steps."""
    from smmf import step_in_backward

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 8))
    twin = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 8))
    twin.load_state_dict(model.state_dict())
    step_in_backward(model, bucket_bytes=bucket_bytes, lr=1e-2, backend="triton")
    opt = SMMF(twin.parameters(), lr=1e-2, backend="eager")
    batches = [torch.randn(4, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for x in batches:
        model(x).square().mean().backward()
        opt.zero_grad()
        twin(x).square().mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
