"""The same code on CUDA: the Triton and inductor backends equal eager, the float64 golden replay holds,
a CUDA graph of ``step()`` replays like eager steps, and the bench runs there.

Skipped where CUDA is not available (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import benchmark_modules
from golden_replay import CASES, max_relative_error, replay
from smmf import SMMF, triton_backend, triton_launch
from smmf.commands.main import main
from smmf.triton_launch import Pass0Launch, Pass1Launch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# Covers 0-d, prime and (n, 1) tensors, a square matrix, tensors big enough for row blocks and for
# the per-width ("wide") kernels, and same-shaped tensors that are stepped as a batch.
SHAPES = [(), (1,), (97,), (33, 12), (4, 1, 3), (256, 300), (512, 2, 64), (1031, 768), (396,), (12, 33), (300, 256)]
_LR = 0.01
QUEUED = "4:0:2048:1:2:2"  # pass 0 in pass 1's queue, each tensor's checks a tensor ahead of its tiles


def _run(
    backend: str,
    dtype: torch.dtype = torch.float32,
    steps: int = 4,
    shapes: list[tuple[int, ...]] = SHAPES,
    last_grads: dict[int, float] | None = None,
    device: str = "cuda",
    memory_format: torch.memory_format = torch.contiguous_format,
    **kwargs: Any,
) -> tuple[list[torch.Tensor], SMMF]:
    """``steps`` steps from seeded parameters and gradients (laid out in ``memory_format``); in the
    second, the gradient of tensor i ends in ``last_grads[i]`` (an inf, say)."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = [
        torch.randn(s, device=device, dtype=dtype, generator=gen)
        .contiguous(memory_format=memory_format)
        .requires_grad_()
        for s in shapes
    ]
    opt = SMMF(params, lr=_LR, backend=backend, **kwargs)
    for step in range(steps):
        for p in params:
            grad = torch.randn(p.shape, device=device, dtype=dtype, generator=gen)
            p.grad = grad.contiguous(memory_format=memory_format)
        for index, value in (last_grads or {}).items() if step == 1 else ():
            params[index].grad.view(-1)[-1] = value  # type: ignore[union-attr]
        opt.step()
    return params, opt


def _assert_close_runs(
    first: tuple[list[torch.Tensor], SMMF], second: tuple[list[torch.Tensor], SMMF], tol: float = 1e-5
) -> None:
    (pf, of), (pe, oe) = first, second
    for a, b in zip(pf, pe, strict=True):
        assert a.is_cuda and of.state[a]["step"].is_cuda
        _assert_close_but_for_flipped_signs(a, b, tol, steps=int(of.state[a]["step"].item()))
        for key, value in of.state[a].items():
            if key == "sign":  # a sign may flip where M is within rounding of 0
                assert (value != oe.state[b][key]).float().mean().item() < 0.01
            elif key in ("row_m", "col_m"):  # and then |M| rebuilt with the other sign next step
                _assert_close_but_for_a_few(value, oe.state[b][key], tol)
            elif isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, oe.state[b][key], rtol=tol, atol=tol / 10)


def _assert_close_but_for_a_few(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """Factors of |M| equal to ``tol`` but for a few rows or columns holding an element whose sign
    flipped (seen on an H100: 2 of GPT-2's 6,932 row factors, 2.9e-4 apart after 3 steps)."""
    far = ~torch.isclose(a, b, rtol=tol, atol=tol / 10)
    assert int(far.sum()) <= max(1, a.numel() // 1000), f"{int(far.sum())} of {a.numel()} factors differ"
    torch.testing.assert_close(a, b, rtol=1e-3, atol=tol)


def _assert_close_but_for_flipped_signs(a: torch.Tensor, b: torch.Tensor, tol: float, steps: int) -> None:
    """Parameters equal to ``tol``, but for the rare element whose first moment was within rounding of 0
    in some step: its sign bit may flip in one run and not in the other, and the next steps then move it
    the other way (seen on an H200: 2 of 38.6 M GPT-2 elements, by 2.7e-3 after 3 steps at lr 0.01).
    At most one element in a million may differ, by at most twice the learning rate per step."""
    far = ~torch.isclose(a, b, rtol=tol, atol=tol / 10)
    assert int(far.sum()) <= a.numel() // 1_000_000, f"{int(far.sum())} of {a.numel()} elements differ"
    if a.numel():
        assert float((a.float() - b.float()).abs().max()) <= 2 * _LR * steps


@pytest.mark.parametrize("backend", ["triton", "inductor"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"sign_bits": 8}, {"block_size": 4096}, {"beta": None, "growth_rate": None}, {"weight_decay": 0.1},
     {"vector_reshape": False, "weight_decay": 0.1, "weight_decay_mode": "adam", "maximize": True}],
    ids=["defaults", "8-bit", "row-blocks", "no-momentum", "weight-decay", "dense-coupled-maximize"],
)  # fmt: skip
def test_compiled_backends_match_eager_on_cuda(backend: str, kwargs: dict[str, Any]) -> None:
    _assert_close_runs(_run(backend, **kwargs), _run("eager", **kwargs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_triton_half_precision_matches_eager_on_cuda(dtype: torch.dtype) -> None:
    _assert_close_runs(_run("triton", dtype), _run("eager", dtype), tol=1e-2)


def test_triton_stochastic_rounding_matches_eager_on_cuda() -> None:
    """The same random bits for the same element and step; the float32 value they round may differ in
    its last bits (the compiled division is approximate), so at most a bf16 ulp apart."""
    kwargs = {"stochastic_rounding": True}
    _assert_close_runs(_run("triton", torch.bfloat16, **kwargs), _run("eager", torch.bfloat16, **kwargs), tol=1e-2)


def test_triton_matches_eager_on_gpt2_shapes() -> None:
    shapes = [(50257, 768), (1024, 768), (768, 2304), (2304,), (768, 768), (768,), (768, 3072), (3072, 768)]
    _assert_close_runs(_run("triton", steps=3, shapes=shapes), _run("eager", steps=3, shapes=shapes))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=str)
def test_triton_steps_channels_last_weights_in_place_on_cuda(dtype: torch.dtype, tol: float) -> None:
    """ResNet-50's convolution weights as ``model.to(memory_format=torch.channels_last)`` leaves them: all
    in one Triton step (the 1x1 ones are contiguous too), read where they lie, equal to eager."""
    shapes = [(64, 3, 7, 7), (64, 64, 3, 3), (128, 128, 3, 3), (256, 256, 3, 3), (512, 512, 3, 3), (2048, 512, 1, 1)]
    kwargs: dict[str, Any] = {"shapes": shapes, "steps": 3, "memory_format": torch.channels_last}
    triton_run = _run("triton", dtype, **kwargs)
    _assert_close_runs(triton_run, _run("eager", dtype, **kwargs), tol=tol)
    (plan,) = triton_run[1]._caches[0].plans.values()
    assert plan.table.shape[0] == len(shapes)
    assert not any(p.is_contiguous() for p in triton_run[0][:-1])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_triton_steps_a_gpu_other_than_the_current_one() -> None:
    """A model split over GPUs (``device_map="auto"``, pipeline stages): each bucket's kernels run on its
    tensors' GPU, whatever the current device, and leave the current device as it was."""
    assert torch.cuda.current_device() == 0
    _assert_close_runs(_run("triton", device="cuda:1"), _run("eager", device="cuda:1"))
    assert torch.cuda.current_device() == 0


# pass 0 in its own launch (today's), and folded into pass 1's queue (smmf.triton_queue)
PASS0_WAYS = {"own-launch": "", "queued": QUEUED}


@pytest.mark.parametrize(("pass0", "launches"), [("", 4), (QUEUED, 3)], ids=PASS0_WAYS.keys())
def test_triton_launches_skip_tritons_dispatch_after_the_first_step(
    monkeypatch: pytest.MonkeyPatch, pass0: str, launches: int
) -> None:
    """Every kernel of a step is launched directly after the first step (same results: the tests above)."""
    monkeypatch.setenv(triton_launch.PASS0_ENV, pass0)
    _, opt = _run("triton", steps=2)
    (plan,) = opt._caches[0].plans.values()
    assert len(plan.launches) == launches


@pytest.mark.parametrize("pass0", PASS0_WAYS.values(), ids=PASS0_WAYS.keys())
def test_triton_two_runs_are_bitwise_equal_on_cuda(monkeypatch: pytest.MonkeyPatch, pass0: str) -> None:
    monkeypatch.setenv(triton_launch.PASS0_ENV, pass0)
    (first, _), (second, _) = _run("triton"), _run("triton")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("pass0", PASS0_WAYS.values(), ids=PASS0_WAYS.keys())
def test_triton_step_replays_in_a_cuda_graph_like_eager_steps(monkeypatch: pytest.MonkeyPatch, pass0: str) -> None:
    """Warm up, capture ``opt.step()`` once, replay it with new gradients and a new in-place lr (the
    queue's counters, cleared by each step, start each replay from 0)."""
    monkeypatch.setenv(triton_launch.PASS0_ENV, pass0)
    shapes = [(33, 12), (256, 300), (97,), (768,)]
    gen = torch.Generator(device="cuda").manual_seed(0)
    init = [torch.randn(s, device="cuda", generator=gen) for s in shapes]
    grads = [[torch.randn(s, device="cuda", generator=gen) for s in shapes] for _ in range(6)]
    lrs = [0.01, 0.01, 0.008, 0.006, 0.004, 0.002]
    eager = [p.clone().requires_grad_() for p in init]
    eager_opt = SMMF(eager, lr=0.01, backend="eager")
    for step in range(6):
        eager_opt.param_groups[0]["lr"] = lrs[step]
        for p, g in zip(eager, grads[step], strict=True):
            p.grad = g.clone()
        eager_opt.step()
    params = [p.clone().requires_grad_() for p in init]
    lr = torch.tensor(0.01, device="cuda")
    opt = SMMF(params, lr=lr, backend="triton")
    for p, g in zip(params, grads[0], strict=True):
        p.grad = g.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step()  # step 1, eagerly: creates the state and the table
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()  # captured, not run
    for step in range(1, 6):
        lr.fill_(lrs[step])
        for p, g in zip(params, grads[step], strict=True):
            p.grad.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(params, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert opt.state[params[0]]["step"].item() == 6


def test_triton_steps_make_no_host_sync_when_gradients_move_and_lr_changes() -> None:
    """After the first step (which builds the table), steps with freshly allocated gradients, a scheduler's
    new lr, and the step inside backward, wait for nothing: the host can run ahead of the GPU."""
    from smmf import step_in_backward

    params = [torch.randn(s, device="cuda").requires_grad_() for s in [(256, 300), (97,), (768,)]]
    opt = SMMF(params, lr=0.01, backend="triton")
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model = torch.nn.Linear(64, 64, device="cuda")
    handle = step_in_backward(model, lr=0.01, backend="triton")
    x = torch.randn(8, 64, device="cuda")
    for step in range(3):
        torch.cuda.set_sync_debug_mode("error" if step else "default")
        try:
            for p in params:
                p.grad = torch.randn_like(p) + step  # new tensors: new addresses, the table's column rewritten
            opt.step()
            scheduler.step()
            model(x).square().sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert handle.optimizer.state[model.weight]["step"].item() == 3


@pytest.mark.parametrize("backend", ["triton", "inductor"])
def test_compiled_backends_match_eager_on_cuda_float64(backend: str) -> None:
    (pf, _), (pe, _) = _run(backend, torch.float64), _run("eager", torch.float64)
    for a, b in zip(pf, pe, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["eager", "inductor", "triton"])
@pytest.mark.parametrize("name", CASES)
def test_golden_replay_on_cuda_float64(golden: tuple[Any, dict[str, Any]], name: str, backend: str) -> None:
    data, manifest = golden
    case = next(c for c in manifest["cases"] if c["name"] == name)
    params, _ = replay(data, manifest, case, lambda ps, **hp: SMMF(ps, backend=backend, **hp), device="cuda")
    for i, p in enumerate(params):
        assert p.is_cuda and max_relative_error(p, data[f"{name}/p{i}/final"]) <= 1e-9


def test_bench_runs_on_cuda(tmp_path: Path) -> None:
    argv = ["--set", "tiny", "--device", "cuda", "--optimizers", "smmf,reference,adam,adamw-fused"]
    assert main(["bench", *argv, "--steps", "2", "--warmup", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert all("error" not in r and r["peak_extra_bytes"] >= 0 for r in rows), rows


def test_train_bench_times_step_between_cuda_events_within_its_wall_time(tmp_path: Path) -> None:
    argv = ["--mode", "train", "--set", "tiny-cnn", "--device", "cuda", "--optimizers", "adamw-fused,smmf"]
    assert main(["bench", *argv, "--steps", "3", "--warmup", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench-train.json").read_text())["results"]
    for row in rows:
        assert "error" not in row, row
        assert 0 < row["step_host_ms"] <= row["step_ms"] and 0 < row["step_event_ms"] <= row["step_ms"], row
        assert row["launches_per_step"] > 0 and row["step_gpu_ms"] > 0, row


@pytest.mark.parametrize("backend", ["triton", "inductor"])
def test_step_peak_memory_is_bounded_on_cuda(backend: str) -> None:
    """One step's extra memory stays under a quarter of the largest parameter (GPT-2's embedding
    shape): the Triton backend's scratch, the inductor backend's row blocks."""
    params = [torch.randn(s, device="cuda").requires_grad_() for s in [(50257, 768), (768, 2304), (768,), (768,)]]
    opt = SMMF(params, backend=backend)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    opt.step()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra <= 0.25 * params[0].numel() * params[0].element_size(), extra


# Last, as they compile a kernel each: every launch the sweep times. A CUDA-tests stage cut short by its
# timeout (benchmarks/gpu_check.sh) then loses some of these, not the tests above.
SWEPT = benchmark_modules.swept_pass1_launches()
LAUNCHES = [pytest.param(c, torch.bfloat16, id=f"{c}-bf16-sr") for c in SWEPT] + [
    pytest.param(c, torch.float32, id=f"{c}-fp32") for c in SWEPT if Pass1Launch.parse(c).stages > 1
]


def _swept_run(backend: str, dtype: torch.dtype) -> tuple[list[torch.Tensor], SMMF]:
    """A run of the swept launches' tests: bf16 rounded stochastically, fp32."""
    return _run(backend, dtype, stochastic_rounding=dtype == torch.bfloat16)


@pytest.fixture(scope="module")
def eager_runs() -> dict[torch.dtype, tuple[list[torch.Tensor], SMMF]]:
    """The eager steps the launches are held to."""
    return {dtype: _swept_run("eager", dtype) for dtype in (torch.bfloat16, torch.float32)}


@pytest.mark.parametrize(("config", "dtype"), LAUNCHES)
def test_each_swept_pass1_launch_matches_eager_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
    eager_runs: dict[torch.dtype, tuple[list[torch.Tensor], SMMF]],
    config: str,
    dtype: torch.dtype,
) -> None:
    """Every launch of pass 1 that ``gpu_check.sh sweep`` times, set through ``SMMF_TRITON_PASS1`` as the
    ``tuned`` stage sets the fastest: wide blocks, row chunks, prefetch, pipelined loops (compiled with
    cp.async, which the interpreter tests cannot run), on tiles of several blocks each way."""
    monkeypatch.setenv(triton_launch.PASS1_ENV, config)
    monkeypatch.setattr(triton_backend, "SCRATCH_FRACTION", 0.01)
    monkeypatch.setattr(triton_backend, "_MIN_SCRATCH_BYTES", 0)
    triton_run = _swept_run("triton", dtype)
    (plan,) = triton_run[1]._caches[0].plans.values()
    assert plan.pass1 == Pass1Launch.parse(config) and plan.tile_rows > 16
    _assert_close_runs(triton_run, eager_runs[dtype], tol=1e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("config", benchmark_modules.swept_pass0_launches())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_each_swept_pass0_launch_skips_what_eager_skips_on_cuda(
    monkeypatch: pytest.MonkeyPatch, config: str, dtype: torch.dtype
) -> None:
    """Every launch of pass 0 that ``gpu_check.sh sweep`` times, set through ``SMMF_TRITON_PASS0``:
    pipelined loads (cp.async, which the interpreter tests cannot run) still find an inf or a NaN at the
    very end of a gradient, and the tensors they skip are eager's."""
    monkeypatch.setenv(triton_launch.PASS0_ENV, config)
    bad = {7: float("inf"), 5: float("nan"), 2: 3e38 if dtype == torch.float32 else float("-inf")}
    triton_run, eager_run = (_run(backend, dtype, steps=3, last_grads=bad) for backend in ("triton", "eager"))
    (plan,) = triton_run[1]._caches[0].plans.values()
    assert plan.pass0 == Pass0Launch.parse(config)
    skipped = {i for i, p in enumerate(triton_run[0]) if triton_run[1].state[p]["skipped"].item()}
    assert skipped == set(bad)
    _assert_close_runs(triton_run, eager_run, tol=1e-2 if dtype == torch.bfloat16 else 1e-5)
