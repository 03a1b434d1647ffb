"""Host-side cost of SMMF's Triton step, measured without a GPU.

On a GPU a step whose kernels are memory-bound can still be slowed by the host: the Python that
gathers tensors, checks the launch table and launches. This times exactly that part on CPU tensors,
with the Triton backend selected (``TRITON_INTERPRET=1``) and its four kernels replaced by stand-ins
for compiled kernels whose launches do nothing (so the backend takes its direct-launch path, as on a
GPU after the first step), for a model's real parameter shapes, both as ``optimizer.step()`` and as
:func:`smmf.step_in_backward` does it (one call per parameter). Beside it, for scale, the whole
``step()`` of ``torch.optim.AdamW(fused=True)`` and ``(foreach=True)`` on as many one-element
tensors: their host cost plus almost no arithmetic. What a Triton launch itself costs on the host is
not included (it depends on the GPU machine's Triton).

    python benchmarks/host_overhead.py --model resnet50
    python benchmarks/host_overhead.py --model gpt2
    python benchmarks/host_overhead.py --model resnet50 --channels-last   # strided 3x3 and 7x7 weights
"""

from __future__ import annotations

import argparse
import os

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: selects the backend on CPU tensors

import torch
from torch.utils import benchmark

import smmf
from smmf import triton_backend, triton_kernels, triton_tile
from smmf.commands.models import build_meta_model, meta_shapes
from smmf.functional import StepCache

# the four kernels of a step, where smmf.triton_backend.step looks them up
KERNELS = (
    (triton_kernels, "check_gradients"),
    (triton_tile, "step_tiles"),
    (triton_kernels, "reduce_factors"),
    (triton_kernels, "normalize_columns"),
)


class _Compiled:
    """Stands in for a compiled kernel: its launcher does nothing."""

    def __getitem__(self, grid: object) -> object:
        return lambda *args: None


class _NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` returns a :class:`_Compiled`."""

    def __init__(self, kernel: object) -> None:
        self.arg_names = kernel.arg_names  # type: ignore[attr-defined]

    def __getitem__(self, grid: object) -> object:
        return lambda *args, **kwargs: _Compiled()


def _params(shapes: list[tuple[int, ...]], channels_last: bool) -> list[torch.nn.Parameter]:
    """Parameters with gradients laid out alike; 4-D ones channels-last if asked."""
    params = [torch.nn.Parameter(torch.randn(shape) * 0.01) for shape in shapes]
    if channels_last:
        params = [torch.nn.Parameter(p.to(memory_format=torch.channels_last)) if p.dim() == 4 else p for p in params]
    for p in params:
        p.grad = torch.randn_like(p)  # randn_like keeps a dense tensor's strides
    return params


def _ms(stmt: object) -> float:
    """Median milliseconds of ``stmt()`` (torch.utils.benchmark, after warm-up calls)."""
    for _ in range(5):
        stmt()  # type: ignore[operator]
    return benchmark.Timer("stmt()", globals={"stmt": stmt}).blocked_autorange(min_run_time=2.0).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="resnet50, gpt2, ... (smmf's model names)")
    parser.add_argument("--channels-last", action="store_true", help="4-D weights channels-last, as a CNN trained so")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = meta_shapes(build_meta_model(args.model, num_classes=100 if args.model == "resnet50" else None))
    for module, name in KERNELS:
        setattr(module, name, _NoLaunch(getattr(module, name)))
    triton_backend._is_compiled = lambda launched: isinstance(launched, _Compiled)
    params = _params(shapes, args.channels_last)
    opt = smmf.SMMF(params, lr=1e-3, backend="triton")
    group = opt.param_groups[0]
    opt.step()
    (plan,) = opt._caches[0].plans.values()
    if plan.table.shape[0] != len(params):  # the others would be stepped for real by the torch backend
        raise SystemExit(f"only {plan.table.shape[0]} of {len(params)} tensors took the Triton step")
    caches = {id(p): StepCache() for p in params}  # one per parameter, as step_in_backward keeps them

    def per_parameter() -> None:  # what step_in_backward's hooks do over one backward pass
        for p in params:
            opt.step_group(group, caches[id(p)], only=[p])

    tiny = [torch.nn.Parameter(torch.zeros(1)) for _ in shapes]
    for p in tiny:
        p.grad = torch.zeros(1)
    rows = [
        ("SMMF, Triton backend, launches stubbed: step()", _ms(opt.step)),
        ("SMMF, Triton backend, launches stubbed: one call per parameter", _ms(per_parameter)),
        ("AdamW(fused=True) on one-element tensors: step()", _ms(torch.optim.AdamW(tiny, fused=True).step)),
        ("AdamW(foreach=True) on one-element tensors: step()", _ms(torch.optim.AdamW(tiny, foreach=True).step)),
    ]
    strided = sum(not p.is_contiguous() for p in params)
    print(f"{args.model}: {len(shapes)} tensors ({strided} strided); torch {torch.__version__}, 1 thread\n")
    print("| host-side work | ms |\n| --- | ---: |")
    for label, ms in rows:
        print(f"| {label} | {ms:.3f} |")


if __name__ == "__main__":
    main()
