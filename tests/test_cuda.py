"""The same code on CUDA: fused equals eager, the float64 golden replay holds, and the bench runs there.

Skipped where CUDA is not available (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from smmf import SMMF, bench

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "official_trajectories.npz"
# Covers 0-d, prime and (n, 1) tensors, a square matrix, tensors big enough for row blocks and for
# the per-width ("wide") kernels, and same-shaped tensors that are stepped as a batch.
SHAPES = [(), (1,), (97,), (33, 12), (4, 1, 3), (256, 300), (512, 2, 64), (1031, 768), (396,), (12, 33), (300, 256)]


def _run(fused: bool, dtype: torch.dtype = torch.float32, steps: int = 4, **kwargs: Any) -> tuple[list[torch.Tensor], SMMF]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.randn(s, device="cuda", dtype=dtype, generator=gen).requires_grad_() for s in SHAPES]
    opt = SMMF(params, lr=0.01, fused=fused, **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, device="cuda", dtype=dtype, generator=gen)
        opt.step()
    return params, opt


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"sign_bits": 8}, {"block_size": 4096}, {"beta": None, "growth_rate": None}, {"weight_decay": 0.1}],
    ids=["defaults", "8-bit", "row-blocks", "no-momentum", "weight-decay"],
)
def test_fused_matches_eager_on_cuda(kwargs: dict[str, Any]) -> None:
    (pf, of), (pe, oe) = _run(True, **kwargs), _run(False, **kwargs)
    for a, b in zip(pf, pe):
        assert a.is_cuda and of.state[a]["step"].is_cuda
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for key, value in of.state[a].items():
            if key == "sign":  # a sign may flip where M is within rounding of 0
                assert (value != oe.state[b][key]).float().mean().item() < 0.01
            else:
                torch.testing.assert_close(value, oe.state[b][key], rtol=1e-5, atol=1e-6)


def test_fused_matches_eager_on_cuda_float64() -> None:
    (pf, _), (pe, _) = _run(True, torch.float64), _run(False, torch.float64)
    for a, b in zip(pf, pe):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_golden_replay_on_cuda_float64(fused: bool) -> None:
    if not GOLDEN.exists():
        pytest.skip(f"reference trajectories not found at {GOLDEN}")
    data = np.load(GOLDEN)
    manifest = json.loads(str(data["manifest"]))
    for case in manifest["cases"]:
        name = case["name"]
        params = [
            torch.tensor(data[f"{name}/p{i}/init"], device="cuda").requires_grad_() for i in range(len(case["shapes"]))
        ]
        opt = SMMF(params, fused=fused, **case["hyperparameters"])
        for t in range(manifest["steps"]):
            for i, p in enumerate(params):
                grad = data[f"{name}/p{i}/grad{t}"]
                skipped = grad.size == 0 and p.numel() != 0
                p.grad = None if skipped else torch.tensor(grad, device="cuda").reshape(p.shape)
            for group in opt.param_groups:
                group["lr"] = case["lr_per_step"][t]
            opt.step()
        for i, p in enumerate(params):
            np.testing.assert_allclose(
                p.detach().cpu().numpy(), data[f"{name}/p{i}/final"], rtol=0, atol=1e-9, err_msg=f"{name}/p{i}"
            )


def test_bench_runs_on_cuda(tmp_path: Path) -> None:
    argv = ["--set", "tiny", "--device", "cuda", "--optimizers", "smmf,reference,adam,adamw-fused"]
    assert bench.main([*argv, "--steps", "2", "--warmup", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert all("error" not in r and r["peak_extra_bytes"] >= 0 for r in rows), rows


def test_step_peak_memory_is_bounded_on_cuda() -> None:
    """With the automatic GPU block size, one step's extra memory stays under a quarter of the largest
    parameter (GPT-2's embedding shape), as on CPU."""
    params = [torch.randn(s, device="cuda").requires_grad_() for s in [(50257, 768), (768, 2304), (768,), (768,)]]
    opt = SMMF(params, fused=True)
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
