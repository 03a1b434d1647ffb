"""Worker functions for the multi-process tests (spawned, so they live in an importable module)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from smmf import SMMF, optimizer_state_bytes

VOCAB, WIDTH = 11, 16


def _init(rank: int, world: int, rendezvous: str) -> None:
    # TinyLM's head returns a view; nothing modifies it in place, so FSDP2's warning about that is noise.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)


def _finish() -> None:
    """Meet, tear the process group down, and leave without interpreter finalization: torch's C++
    teardown at exit sometimes aborts a gloo rank ("terminate called without an active exception")
    after all its work is done, which would fail a test that passed. Outputs are closed by now."""
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


class TinyLM(nn.Module):
    """A one-block transformer LM; vocabulary 11 makes the embedding and head shard unevenly on 2 ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.block = nn.TransformerEncoderLayer(WIDTH, nhead=2, dim_feedforward=24, dropout=0.0, batch_first=True)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(tokens)))


def _batch(rank: int, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randint(0, VOCAB, (4, 6), generator=gen)


def _lm_step(model: nn.Module, opt: torch.optim.Optimizer, tokens: torch.Tensor) -> None:
    opt.zero_grad()
    logits = model(tokens[:, :-1])
    nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)).backward()
    opt.step()


def ddp_worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    """DDP: each rank trains on half of a global batch; parameters must agree across ranks."""
    _init(rank, world, rendezvous)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 3))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = SMMF(ddp.parameters(), lr=0.01, fused=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(8, 5, generator=gen)
        opt.zero_grad()
        ddp(x.chunk(world)[rank]).square().mean().backward()
        opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(gathered, out)
    _finish()


def fsdp_worker(rank: int, world: int, rendezvous: str, out: str, checkpoint: str, phase: str) -> None:
    """FSDP2: train, checkpoint with DCP, continue; or load the checkpoint and continue the same way."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    _init(rank, world, rendezvous)
    torch.manual_seed(0 if phase == "train" else 123)  # a resumed run must get everything from the checkpoint
    model = TinyLM()
    for module in (model.embed, model.block, model.head):
        fully_shard(module)
    fully_shard(model)
    options = {"lr": 0.01, "weight_decay": 0.01, "decay_rate": -0.8, "backend": "eager"}
    options.update(json.loads(os.environ.get("SMMF_TEST_OPTIONS", "{}")))  # the Triton-interpreter tests' backend
    opt = SMMF(model.parameters(), **options)
    if phase == "train":
        for step in range(3):
            _lm_step(model, opt, _batch(rank, step))
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=checkpoint)
    else:
        model_sd, optim_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=checkpoint)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for step in range(3, 6):
        _lm_step(model, opt, _batch(rank, step))
    full = {name: p.full_tensor() for name, p in model.named_parameters()}
    state_bytes = optimizer_state_bytes(opt)
    local_params = sum(p.to_local().numel() for p in model.parameters())
    if rank == 0:
        torch.save(full, out)
    Path(f"{out}.rank{rank}.json").write_text(json.dumps({"state_bytes": state_bytes, "local_params": local_params}))
    _finish()
