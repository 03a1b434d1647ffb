"""Choosing a backend, the public functional step, and state-format conversion (no Triton kernels run
here: those are tested under the interpreter, in tests/interpreter)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from smmf import SMMF, compilers, functional, state_format, triton_backend
from smmf.matricization import square_matricize
from smmf.signpack import row_bytes
from step_helpers import assert_format1_resume_is_exact, run

needs_triton = pytest.mark.skipif(not compilers.triton_installed(), reason="needs the triton package")


def test_unknown_backend_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="backend"):
        SMMF([nn.Parameter(torch.zeros(3))], backend="cuda")


def test_fused_false_with_a_compiled_backend_is_refused() -> None:
    with pytest.raises(ValueError, match=r"backend.*fused=False"):
        SMMF([nn.Parameter(torch.zeros(3))], backend="inductor", fused=False)


@needs_triton
def test_triton_on_cpu_tensors_without_the_interpreter_names_the_backend() -> None:
    p = nn.Parameter(torch.zeros(3))
    opt = SMMF([p], backend="triton")
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"backend.*TRITON_INTERPRET"):
        opt.step()
    assert torch.equal(p, torch.zeros(3))


def test_auto_and_fused_resolve_as_documented() -> None:
    cpu = torch.device("cpu")
    assert functional.resolve_backend("auto", False, cpu) == "eager"
    assert functional.resolve_backend("eager", None, cpu) == "eager"
    expected = "cpp" if functional.cpp_backend.available() else "eager"
    assert functional.resolve_backend("auto", None, cpu) == expected


@pytest.fixture
def gpu_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[tuple[int, int], str], torch.device]]:
    """A CUDA device of a given compute capability and name, as the backend choice sees one: only
    torch.cuda's answers are faked, so no GPU is needed (nor is any kernel compiled)."""

    def make(capability: tuple[int, int], name: str) -> torch.device:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
        monkeypatch.setattr(torch.version, "hip", None)
        compilers._gpu_too_old.cache_clear()
        return torch.device("cuda", 0)

    yield make
    compilers._gpu_too_old.cache_clear()


@needs_triton
def test_a_gpu_older_than_tritons_oldest_steps_eagerly_or_names_why_not(gpu_of: Any) -> None:
    """A Pascal card (Kaggle's P100) compiles neither Triton's kernels nor inductor's: 'auto' steps
    eagerly, and a compiled step asked for by name is refused before anything changes."""
    p100 = gpu_of((6, 0), "Tesla P100-PCIE-16GB")
    assert functional.resolve_backend("auto", None, p100) == "eager"
    assert functional.resolve_backend("auto", False, p100) == "eager"
    why = r"Tesla P100-PCIE-16GB has compute capability 6\.0; Triton needs 7\.0 or newer"
    for backend in ("triton", "inductor"):
        with pytest.raises(ValueError, match=rf"Invalid backend: '{backend}' cannot run on cuda tensors here: {why}"):
            functional.resolve_backend(backend, None, p100)
    with pytest.raises(ValueError, match=rf"Invalid fused: True asks for a compiled step.*{why}"):
        functional.resolve_backend("auto", True, p100)


@needs_triton
@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (8, 0), (9, 0), (12, 0)])
def test_gpus_triton_compiles_for_get_the_triton_backend(gpu_of: Any, capability: tuple[int, int]) -> None:
    gpu = gpu_of(capability, "a GPU")
    assert functional.resolve_backend("auto", None, gpu) == "triton"
    assert functional.resolve_backend("auto", True, gpu) == "triton"
    assert functional.resolve_backend("inductor", None, gpu) == "inductor"


def test_without_the_triton_package_a_gpu_steps_eagerly_or_names_the_package(
    gpu_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No triton (torch's CUDA wheels for Windows come without it): inductor cannot compile for CUDA either."""
    monkeypatch.setattr(compilers, "triton_installed", lambda: False)
    gpu = gpu_of((9, 0), "a GPU")
    assert functional.resolve_backend("auto", None, gpu) == "eager"
    for backend in ("triton", "inductor"):
        with pytest.raises(ValueError, match=rf"backend: '{backend}'.*pip install triton"):
            functional.resolve_backend(backend, None, gpu)
    with pytest.raises(ValueError, match=r"fused: True.*pip install triton"):
        functional.resolve_backend("auto", True, gpu)


def test_a_cpu_without_a_compiler_steps_eagerly_or_names_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(functional.cpp_backend, "_build", lambda: (None, "g++ not found"))
    monkeypatch.setattr(compilers, "_cpu_compiler_missing", lambda: "no C++ compiler for inductor")
    cpu = torch.device("cpu")
    assert functional.resolve_backend("auto", None, cpu) == "eager"
    with pytest.raises(ValueError, match=r"backend: 'inductor' cannot run on cpu tensors here: no C\+\+ compiler"):
        functional.resolve_backend("inductor", None, cpu)
    with pytest.raises(ValueError, match=r"fused: True.*no C\+\+ compiler"):
        functional.resolve_backend("auto", True, cpu)
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="fused"):
        SMMF([p], fused=True).step()
    assert torch.equal(p.detach(), torch.ones(3))


def test_functional_step_equals_the_class() -> None:
    shapes = [(33, 12), (7,), (4, 1, 3)]
    params, opt = run(shapes, steps=3, backend="eager")
    torch.manual_seed(0)
    mine = [torch.randn(s) for s in shapes]
    states = [state_format.init_state(p, vector_reshape=True, sign_bits=1) for p in mine]
    for p, state in zip(mine, states, strict=True):
        state_format.ensure_momentum(p, state, beta=0.9, sign_bits=1)
    gen = torch.Generator().manual_seed(1)
    cache = functional.StepCache()
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in mine]
        functional.smmf(
            mine, grads, states, lr=0.01, beta=0.9, eps=1e-8, weight_decay=0.0, decay_rate=-0.5,
            growth_rate=0.999, backend="eager", cache=cache,
        )  # fmt: skip
    for a, b, state in zip(mine, params, states, strict=True):
        assert torch.equal(a, b.detach())
        assert torch.equal(state["sign"], opt.state[b]["sign"])


@pytest.mark.parametrize("backend", ["eager", "inductor", "cpp"])
def test_a_format1_checkpoint_loads_and_continues_exactly(backend: str) -> None:
    assert_format1_resume_is_exact(backend)


def test_sign_rows_are_padded_to_whole_bytes() -> None:
    _, opt = run([(33, 12)], steps=1, backend="eager")
    n, m = square_matricize(33 * 12)
    assert opt.state[opt.param_groups[0]["params"][0]]["sign"].numel() == n * row_bytes(m)


def _llama7b_shapes() -> list[tuple[int, ...]]:
    layer = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)] + [(4096,)] * 2
    return [(32000, 4096)] * 2 + layer * 32 + [(4096,)]


@pytest.mark.parametrize("bytes_per_param", [2, 4], ids=["bf16", "fp32"])
def test_triton_tiling_keeps_a_7b_models_scratch_within_a_quarter_of_its_largest_tensor(bytes_per_param: int) -> None:
    shapes = []
    for shape in _llama7b_shapes():
        n, m = square_matricize(int(torch.Size(shape).numel()))
        shapes.append((n, m, row_bytes(m), False))
    budget = int(triton_backend.SCRATCH_FRACTION * 32000 * 4096 * bytes_per_param)
    rows, width = triton_backend._tiling(shapes, 2, 4, budget)
    scratch, tiles = triton_backend._extra_numel(shapes, rows, width, 2)
    assert scratch * 4 + 4 * tiles <= budget
    assert tiles >= 1000  # still enough tiles to fill a GPU


@pytest.mark.parametrize("shape", [(11008, 4096), (4096, 4096), (32000, 4096)])
def test_triton_tiling_of_a_lone_tensor_bounds_pass_2s_work(shape: tuple[int, int]) -> None:
    """step_in_backward steps one tensor per bucket: the budget alone would allow 32-row tiles, and
    hundreds of partials per factor element to add up in pass 2; the cap keeps that at
    LONE_TENSOR_MAX_SLOTS while leaving tiles for three waves of 660 programs (an H100 or H200)."""
    n, m = square_matricize(shape[0] * shape[1])
    shapes = [(n, m, row_bytes(m), False)]
    budget = int(triton_backend.SCRATCH_FRACTION * shape[0] * shape[1] * 2)
    rows, width = triton_backend._tiling(shapes, 2, 4, budget)
    scratch, tiles = triton_backend._extra_numel(shapes, rows, width, 2)
    cap = triton_backend.LONE_TENSOR_MAX_SLOTS
    assert math.ceil(n / rows) <= cap and math.ceil(row_bytes(m) / width) <= cap
    assert scratch * 4 + 4 * tiles <= budget and tiles >= 3 * 660


def test_triton_launches_dispatch_once_per_plan_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan's first launch of a kernel goes through Triton's dispatch; later ones under the same key
    call the compiled kernel's launcher with every argument in the kernel's order; a new key (another
    lr tensor, say) dispatches again. A compiled kernel's launcher takes a grid of three dimensions (given
    one, it failed every CUDA test on an H100). Faked here: only a GPU compiles (tests/test_cuda.py)."""
    calls: list[tuple[Any, ...]] = []

    class Compiled:
        def __getitem__(self, grid: tuple[int, ...]) -> Any:
            return lambda *args: calls.append(("direct", grid, args))

    class Kernel:
        def __init__(self) -> None:
            self.arg_names = ["table", "n", "ACC", "BLOCK"]

        def __getitem__(self, grid: tuple[int, ...]) -> Any:
            def dispatch(*args: Any, **kwargs: Any) -> Compiled:
                calls.append(("dispatch", grid, args, kwargs))
                return Compiled()

            return dispatch

    monkeypatch.setattr(triton_backend, "_is_compiled", lambda launched: isinstance(launched, Compiled))
    plan, kernel, constexprs = SimpleNamespace(launches={}), Kernel(), {"ACC": "fp32", "BLOCK": 4}
    for key, n in [("lr0", 1), ("lr0", 2), ("lr1", 3), ("lr1", 4)]:
        triton_backend._launch(plan, kernel, (7,), (key,), ("t", n), constexprs, {"num_warps": 4})  # type: ignore[arg-type]
    assert calls == [
        ("dispatch", (7,), ("t", 1), {"ACC": "fp32", "BLOCK": 4, "num_warps": 4}),
        ("direct", (7, 1, 1), ("t", 2, "fp32", 4)),
        ("dispatch", (7,), ("t", 3), {"ACC": "fp32", "BLOCK": 4, "num_warps": 4}),
        ("direct", (7, 1, 1), ("t", 4, "fp32", 4)),
    ]
    calls.clear()  # a changed constexpr (another launch setting of pass 1) dispatches again
    triton_backend._launch(plan, kernel, (7,), ("lr1",), ("t", 5), {"ACC": "fp32", "BLOCK": 8}, {"num_warps": 4})  # type: ignore[arg-type]
    assert calls == [("dispatch", (7,), ("t", 5), {"ACC": "fp32", "BLOCK": 8, "num_warps": 4})]
