"""torch.distributed: DDP and FSDP2 (DTensor) with gloo on CPU, two ranks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dist_workers
from smmf import SMMF

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def _spawn(fn, world, *args):
    mp.start_processes(fn, args=(world, *args), nprocs=world, join=True, start_method="spawn")


def test_ddp_parameters_agree_across_ranks_and_match_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    _spawn(dist_workers.ddp_worker, 2, str(tmp_path / "rdzv"), str(out))
    rank0, rank1 = torch.load(out)
    assert torch.equal(rank0, rank1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 3))
    opt = SMMF(model.parameters(), lr=0.01, fused=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(8, 5, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    single = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(rank0, single, rtol=1e-5, atol=1e-6)


def _fsdp_run(tmp_path, world, phase, checkpoint):
    out = tmp_path / f"{phase}-{world}.pt"
    _spawn(dist_workers.fsdp_worker, world, str(tmp_path / f"rdzv-{phase}-{world}"), str(out), str(checkpoint), phase)
    ranks = [json.loads((tmp_path / f"{out.name}.rank{r}.json").read_text()) for r in range(world)]
    return torch.load(out), ranks


def test_fsdp2_dcp_checkpoint_resume_continues_exactly(tmp_path):
    checkpoint = tmp_path / "dcp"
    trained, _ = _fsdp_run(tmp_path, 2, "train", checkpoint)
    resumed, _ = _fsdp_run(tmp_path, 2, "resume", checkpoint)
    assert trained.keys() == resumed.keys()
    for name in trained:
        assert torch.equal(trained[name], resumed[name]), name
    assert all(torch.isfinite(t).all() for t in trained.values())


def test_fsdp2_state_per_rank_falls_with_world_size(tmp_path, capsys):
    _, one = _fsdp_run(tmp_path, 1, "train", tmp_path / "dcp1")
    _, two = _fsdp_run(tmp_path, 2, "train", tmp_path / "dcp2")
    per_rank = [r["state_bytes"] for r in two]
    with capsys.disabled():
        print(f"\nFSDP2 TinyLM optimizer state bytes per rank: world 1 {one[0]['state_bytes']}, world 2 {per_rank}")
    assert max(per_rank) < 0.75 * one[0]["state_bytes"]
