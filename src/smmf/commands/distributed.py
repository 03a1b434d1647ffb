"""``smmf train`` under torchrun: this process's place in the job, the model wrapped for DDP or FSDP2."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch
from torch import nn

from .common import UsageError, resolve_device

__all__ = ["Dist", "all_sum", "init_distributed", "wrap", "sync_buffers"]

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job; ``mode`` None (world 1) for a single-process run."""

    mode: str | None = None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def all_sum(values: list[float], ctx: Dist, device: torch.device) -> list[float]:
    """The sums of these numbers over all ranks (unchanged in a single process)."""
    if ctx.mode is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def init_distributed(args: argparse.Namespace) -> tuple[Dist, torch.device]:
    """Join the torchrun job named by the environment: nccl on cuda:LOCAL_RANK, gloo on CPU.

    Without --distributed, a process started by torchrun with several ranks is refused: each would
    train the whole model alone and all would write the same --out.
    """
    device = resolve_device(args.device)
    if args.distributed is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError(
                f"started by torchrun with WORLD_SIZE={os.environ['WORLD_SIZE']}; pass --distributed ddp or fsdp"
            )
        return Dist(), device
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise UsageError(
            f"--distributed {args.distributed}: run under torchrun, e.g. 'torchrun --nproc-per-node 2 -m smmf train "
            f"--distributed {args.distributed} ...' ({', '.join(missing)} not set)"
        )
    ctx = Dist(args.distributed, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    if args.batch_size % ctx.world:
        raise UsageError(
            f"--batch-size {args.batch_size} is the global batch; it must be divisible by the {ctx.world} ranks"
        )
    if device.type == "cuda":
        index: int | None = device.index  # None for a bare "cuda" (torch's stub says int)
        if index is not None:
            raise UsageError(
                f"--device {args.device}: with --distributed each rank uses cuda:LOCAL_RANK; pass --device cuda or auto"
            )
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks that FSDP2 shards as units: GPT-2 transformer blocks, ResNet bottlenecks,
    MobileNetV2 feature stages. Each is gathered just before it runs and freed after, so a rank holds
    at most one block's full parameters besides its shards."""
    if hasattr(model, "transformer"):
        return _children(model, "transformer.h")
    if hasattr(model, "layer1"):
        return [block for i in range(1, 5) for block in _children(model, f"layer{i}")]
    return _children(model, "features")


def _children(model: nn.Module, name: str) -> list[nn.Module]:
    """The modules held by the container ``name`` (an nn.ModuleList or nn.Sequential) of ``model``, in order."""
    container = model.get_submodule(name)
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        raise TypeError(f"{type(model).__name__}.{name} is a {type(container).__name__}, not a list of blocks")
    return list(container)


def wrap(model: nn.Module, ctx: Dist, device: torch.device) -> nn.Module:
    """DDP: replicate with averaged gradients. FSDP2: fully_shard each block, then the root (the rest:
    embeddings, tied head, stem, classifier); parameters become DTensors and SMMF updates the shards."""
    if ctx.mode == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if ctx.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
    return model


def sync_buffers(model: nn.Module, ctx: Dist) -> None:
    """FSDP2 leaves buffers (BatchNorm running statistics) per rank; broadcast rank 0's after each step,
    as DDP does, so evaluation and the checkpoint (which stores one copy) agree on every rank."""
    if ctx.mode != "fsdp":
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)
