"""Per-rank SMMF state bytes for a GPT-2-style model (5.2M parameters) under FSDP2, world sizes 1 and 2.

Run: python benchmarks/fsdp_memory.py   (CPU, gloo; about a minute)
"""

import json
import tempfile
import warnings

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.multiprocessing.spawn import start_processes


def worker(rank: int, world: int, rdzv: str, out: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    from torch.distributed.fsdp import fully_shard
    from transformers import GPT2Config, GPT2LMHeadModel

    from smmf import SMMF, optimizer_state_bytes

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=8000, n_positions=128))
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    opt = SMMF(model.parameters(), fused=False)
    ids = torch.randint(0, 8000, (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    local = sum(p.to_local().numel() for p in model.parameters() if isinstance(p, DTensor))
    with open(f"{out}.{world}.{rank}", "w") as f:
        json.dump({"rank": rank, "state_bytes": optimizer_state_bytes(opt), "local_params": local}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    d = tempfile.mkdtemp()
    for world in (1, 2):
        start_processes(worker, args=(world, f"{d}/rdzv{world}", f"{d}/out"), nprocs=world, start_method="spawn")
        for r in range(world):
            with open(f"{d}/out.{world}.{r}") as f:
                print(f"world {world}:", f.read())
