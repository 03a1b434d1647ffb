"""``smmf train``: the paper's training recipe as a resumable training tool.

Defaults reproduce the reference recipe (ALGORITHM.md): ResNet-50 from scratch on CIFAR-100 resized to
224 with random flip and 15° rotation, batch 128, 200 epochs, cosine-with-hard-restarts schedule with
100 warm-up steps stepped per iteration, SMMF lr 1e-3, weight decay 5e-4, decay_rate -0.8, growth_rate
0.999, seed 0. GPT-2 models train on byte-level text files.

Resumability: the data order is a pure function of (seed, epoch) and every sample's augmentation has its
own seed (:class:`smmf.data.EpochBatches`, :class:`smmf.data.SeededDataset`); a checkpoint holds model,
optimizer, scheduler, grad-scaler and RNG states plus the epoch and the batches consumed in it, and is
written to a temporary file then renamed. So a run killed at any point and continued with ``--resume``
takes exactly the path of an uninterrupted one (bit-identical parameters on CPU). Checkpoints hold plain
data only, load with ``weights_only=True``, are checksummed, and the previous one is kept as a fallback;
a lock keeps a second run out of the same ``--out`` (:mod:`smmf.checkpoint`). A non-finite training loss
stops the run before anything more is saved.

Distributed (``--distributed ddp|fsdp`` under torchrun): ``--batch-size`` is the global batch, split
evenly across ranks (:class:`smmf.data.EpochBatches` with ``rank``/``world``); only rank 0 prints and
logs, and logged losses and evaluation results are all-reduced over the ranks. DDP keeps the single-file
checkpoint (written by rank 0); FSDP2 writes a ``torch.distributed.checkpoint`` folder, swapped in
atomically by rank 0 once every rank has written its shard. Both resume exactly.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from . import optimizers
from .checkpoint import (
    CHECKPOINT, Checkpoints, load_plain, lock_run_folder, remove_stale_temporaries, rng_state, save_checkpoint,
    set_rng_state, swap_in_folder,
)
from .cli import RunError, UsageError, check_number, check_seed, non_negative_int, positive_int, resolve_device, writable_dir
from .data import EpochBatches, SeededDataset, TextWindows, cifar_datasets, read_text_files
from .memory import optimizer_state_bytes
from .models import IMAGE_MODELS, TEXT_MODELS, TRAIN_MODELS, build_gpt2, build_image_model

__all__ = ["register", "run", "save_checkpoint", "CHECKPOINT", "CHECKPOINT_DIR", "FINAL_MODEL", "LOG_FIELDS"]

CHECKPOINT_DIR = "checkpoint"  # --distributed fsdp: a torch.distributed.checkpoint folder
TRAIN_STATE = "train_state.pt"  # inside CHECKPOINT_DIR: everything but model and optimizer tensors
FINAL_MODEL = "model_final.pt"  # --distributed: the full (unsharded) model state dict at the end
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LOG_FIELDS = ("kind", "step", "epoch", "batch", "loss", "lr", "accuracy", "perplexity", "seconds")
# Arguments that define a run: a resumed run must use the same values.
_RUN_DEFINING = (
    "model", "dataset", "text", "optimizer", "lr", "weight_decay", "decay_rate", "growth_rate", "batch_size",
    "epochs", "warmup_steps", "num_cycles", "seed", "image_size", "seq_len", "max_steps", "limit_batches",
    "distributed", "world_size",
)


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job; ``mode`` None (world 1) for a single-process run."""

    mode: str | None = None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _peak_memory(device: torch.device) -> dict[str, int]:
    """Peak CPU resident set size of this process and, on CUDA, peak allocated GPU memory (bytes)."""
    peak = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        peak["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return peak


class MetricLog:
    """Per-step and per-epoch metrics as JSON lines and CSV, truncatable to a checkpoint's row count."""

    def __init__(self, out: Path, keep_rows: int | None, active: bool = True) -> None:
        """``active`` False (ranks other than 0): count rows, so checkpoints agree, but write nothing."""
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        self.active = active
        if not active:
            self.rows = keep_rows or 0
        elif keep_rows is None:
            self.jsonl.write_text("")
            self.csv.write_text(",".join(LOG_FIELDS) + "\n")
            self.rows = 0
        else:  # drop what a killed run logged after its last checkpoint
            lines = self.jsonl.read_text().splitlines(keepends=True)[:keep_rows] if self.jsonl.exists() else []
            self.jsonl.write_text("".join(lines))
            with open(self.csv, "w", newline="") as f:
                writer = csv.DictWriter(f, LOG_FIELDS)
                writer.writeheader()
                writer.writerows(json.loads(line) for line in lines)
            self.rows = len(lines)

    def write(self, row: dict[str, Any]) -> None:
        self.rows += 1
        if not self.active:
            return
        row = {k: row.get(k) for k in LOG_FIELDS}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)


@dataclass
class Progress:
    """Where the run is: epochs completed, batches consumed in the current epoch, optimizer steps."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def _split_text(data: Tensor, seq_len: int) -> tuple[Dataset, Dataset]:
    """The last 5% of the bytes (at least one window) are held out for perplexity."""
    n_val = max(seq_len + 1, data.numel() // 20)
    if data.numel() - n_val < seq_len + 1:
        raise UsageError(f"--text: {data.numel()} bytes are too few for --seq-len {seq_len} (need {2 * (seq_len + 1)})")
    return TextWindows(data[:-n_val], seq_len), TextWindows(data[-n_val:], seq_len)


def _datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    if args.model in IMAGE_MODELS:
        return cifar_datasets(args.dataset, args.data_dir, args.image_size, download=not args.no_download)
    return _split_text(read_text_files(args.text), args.seq_len)


def _model(args: argparse.Namespace) -> nn.Module:
    if args.model in IMAGE_MODELS:
        return build_image_model(args.model, num_classes={"cifar10": 10, "cifar100": 100}[args.dataset])
    return build_gpt2(args.model, n_positions=args.seq_len, dropout=0.1)


def _loss(model: nn.Module, x: Tensor, y: Tensor, text: bool) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and the number of correct predictions (images) or of tokens (text)."""
    if text:
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1)), torch.tensor(y.numel())
    logits = model(x)
    return F.cross_entropy(logits.float(), y), (logits.argmax(1) == y).sum()


def _amp(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: on CUDA bf16 where supported, else fp16 (with a grad scaler); none on CPU."""
    if args.amp == "off" or device.type != "cuda":
        return None
    if args.amp == "fp16" or not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _all_sum(values: list[float], ctx: Dist, device: torch.device) -> list[float]:
    """The sums of these numbers over all ranks (unchanged in a single process)."""
    if ctx.mode is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, text: bool, amp: torch.dtype | None, ctx: Dist = Dist()
) -> dict[str, float]:
    """Held-out loss plus accuracy (images, %) or perplexity (text) over ``loader``, summed over ranks."""
    model.eval()
    total = correct = 0.0
    count = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            loss, hits = _loss(model, x, y, text)
        n = y.numel()
        total += loss.item() * n
        correct += hits.item()
        count += n
    model.train()
    total, correct, count = _all_sum([total, correct, count], ctx, device)
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(mean)} if text else {"loss": mean, "accuracy": 100.0 * correct / max(count, 1)}


def _batches(loader_args: dict[str, Any], dataset: Dataset, batches: EpochBatches) -> Iterator[tuple[Tensor, Tensor]]:
    return iter(DataLoader(SeededDataset(dataset), batch_sampler=batches, **loader_args))


def _validate(args: argparse.Namespace) -> None:
    optimizers.check_names([args.model], TRAIN_MODELS, "model")
    optimizers.check_names([args.optimizer], optimizers.NAMES, "optimizer")
    if args.model in TEXT_MODELS and not args.text:
        raise UsageError(f"--model {args.model} needs --text FILE [FILE ...] (byte-level training text)")
    if args.model in IMAGE_MODELS and args.text:
        raise UsageError(f"--text is for the GPT-2 models ({', '.join(TEXT_MODELS)}), not --model {args.model}")
    if args.optimizer == "sm3" and args.weight_decay:
        raise UsageError("--weight-decay: sm3 has no weight decay; pass --weight-decay 0")
    check_number("--lr", args.lr, 0.0, above=True)
    check_number("--weight-decay", args.weight_decay, 0.0)
    check_number("--decay-rate", args.decay_rate, -1.0, 0.0)
    check_number("--growth-rate", args.growth_rate, 0.0, 1.0)
    check_seed(args.seed)


def _init_distributed(args: argparse.Namespace) -> tuple[Dist, torch.device]:
    """Join the torchrun job named by the environment: nccl on cuda:LOCAL_RANK, gloo on CPU.

    Without --distributed, a process started by torchrun with several ranks is refused: each would
    train the whole model alone and all would write the same --out.
    """
    device = resolve_device(args.device)
    if args.distributed is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError(f"started by torchrun with WORLD_SIZE={os.environ['WORLD_SIZE']}; pass --distributed ddp or fsdp")
        return Dist(), device
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise UsageError(
            f"--distributed {args.distributed}: run under torchrun, e.g. 'torchrun --nproc-per-node 2 -m smmf train "
            f"--distributed {args.distributed} ...' ({', '.join(missing)} not set)"
        )
    ctx = Dist(args.distributed, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    if args.batch_size % ctx.world:
        raise UsageError(f"--batch-size {args.batch_size} is the global batch; it must be divisible by the {ctx.world} ranks")
    if device.type == "cuda":
        if device.index is not None:
            raise UsageError(f"--device {args.device}: with --distributed each rank uses cuda:LOCAL_RANK; pass --device cuda or auto")
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks that FSDP2 shards as units: GPT-2 transformer blocks, ResNet bottlenecks,
    MobileNetV2 feature stages. Each is gathered just before it runs and freed after, so a rank holds
    at most one block's full parameters besides its shards."""
    if hasattr(model, "transformer"):
        return list(model.transformer.h)
    if hasattr(model, "layer1"):
        return [block for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for block in layer]
    return list(model.features)


def _wrap(model: nn.Module, ctx: Dist, device: torch.device) -> nn.Module:
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


def _sync_buffers(model: nn.Module, ctx: Dist) -> None:
    """FSDP2 leaves buffers (BatchNorm running statistics) per rank; broadcast rank 0's after each step,
    as DDP does, so evaluation and the checkpoint (which stores one copy) agree on every rank."""
    if ctx.mode != "fsdp":
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)


def _existing_dcp_checkpoint(out: Path) -> Path | None:
    """The --distributed fsdp checkpoint a resume reads: the DCP folder (or its moved-aside copy)."""
    for folder in (out / CHECKPOINT_DIR, out / f".{CHECKPOINT_DIR}.old"):
        if (folder / TRAIN_STATE).exists():
            return folder
    return None


def _lock(out: Path, ctx: Dist, device: torch.device) -> Any:
    """Rank 0 locks --out (keep the result referenced for the run) and removes the temporary files a
    killed run left; every rank stops with a UsageError if another run holds the folder."""
    lock, error = None, None
    if ctx.main:
        try:
            lock = lock_run_folder(out)
            remove_stale_temporaries(out)
        except UsageError as exc:
            error = exc
    if ctx.mode is not None and _all_sum([float(error is not None)], ctx, device)[0] and error is None:
        error = UsageError(f"--out: {out} is in use by another smmf train run")
    if error is not None:
        raise error
    return lock


def _resume_point(
    args: argparse.Namespace, out: Path, ctx: Dist, store: Checkpoints, config: dict[str, Any]
) -> tuple[dict[str, Any] | None, Path | None]:
    """The verified checkpoint to continue from (and for FSDP its DCP folder), or (None, None) for a
    fresh run; UsageError for a resume without a checkpoint, or a fresh run over an existing one."""
    found = _existing_dcp_checkpoint(out) if ctx.mode == "fsdp" else None
    if not args.resume:
        if store.exists() or found is not None or (out / CHECKPOINT_DIR).exists():
            raise UsageError(f"--out: {out} already holds a checkpoint; pass --resume to continue it, or another --out")
        return None, None
    if ctx.mode == "fsdp":
        if found is None:
            raise UsageError(f"--resume: no --distributed fsdp checkpoint in {out}")
        checkpoint = load_plain(found / TRAIN_STATE)
    elif store.exists():
        checkpoint = store.load(announce=ctx.main)
    else:
        raise UsageError(f"--resume: no checkpoint in {out}")
    changed = {k: (checkpoint["config"].get(k), v) for k, v in config.items() if checkpoint["config"].get(k) != v}
    if changed:
        diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise UsageError(f"--resume: arguments differ from the checkpoint's ({diff})")
    return checkpoint, found


def run(args: argparse.Namespace) -> int:
    """Train (or resume) one run; writes metrics.jsonl/csv, checkpoint(s) and summary.json into --out."""
    _validate(args)
    ctx, device = _init_distributed(args)
    try:
        code = _train(args, ctx, device)
        if ctx.mode is not None:
            torch.distributed.barrier()  # every rank's work (rank 0 writes the summary) is done
    finally:
        if ctx.mode is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if ctx.mode is not None:
        # A finished rank leaves without interpreter finalization: torch's C++ teardown at exit sometimes
        # aborts a gloo rank ("terminate called without an active exception") after all its work is
        # written, which torchrun would report as a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _train(args: argparse.Namespace, ctx: Dist, device: torch.device) -> int:
    from tqdm.auto import tqdm
    from transformers import get_cosine_with_hard_restarts_schedule_with_warmup

    target = args.dataset if args.model in IMAGE_MODELS else "text"
    out = writable_dir(args.out or Path("runs") / f"{args.model}-{target}-{args.optimizer}", "--out")
    lock = _lock(out, ctx, device)  # noqa: F841 - held (open) until this function returns
    store = Checkpoints(out)
    config = {k: (list(map(str, v)) if k == "text" and v else v) for k, v in vars(args).items() if k in _RUN_DEFINING}
    if ctx.mode is not None:
        config["world_size"] = ctx.world
    checkpoint, found = _resume_point(args, out, ctx, store, config)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)  # the same on every rank: FSDP2 does not broadcast the initial weights

    text = args.model in TEXT_MODELS
    train_set, test_set = _datasets(args)
    module = _model(args).to(device)
    if ctx.mode == "ddp" and checkpoint is not None:
        module.load_state_dict(checkpoint["model"])
    model = _wrap(module, ctx, device)
    opt = optimizers.build(
        args.optimizer, model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
        decay_rate=args.decay_rate, growth_rate=args.growth_rate, fused=False if args.eager else None,
    )
    shard = {"rank": ctx.rank, "world": ctx.world}
    probe = EpochBatches(len(train_set), args.batch_size, seed=args.seed, epoch=0, limit=args.limit_batches, **shard)
    steps_per_epoch = probe.total
    total_steps = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    stop_at = total_steps if args.stop_at_step is None else min(args.stop_at_step, total_steps)
    sched = get_cosine_with_hard_restarts_schedule_with_warmup(opt, args.warmup_steps, total_steps, args.num_cycles)
    amp = _amp(args, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    progress = Progress()
    if checkpoint is not None:
        if ctx.mode == "fsdp":
            from torch.distributed import checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_sd, optim_sd = get_state_dict(model, opt)
            tensors = {"model": model_sd, "optim": optim_sd}
            dcp.load(tensors, checkpoint_id=found)
            set_state_dict(model, opt, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"])
        elif ctx.mode is None:
            model.load_state_dict(checkpoint["model"])
        if ctx.mode != "fsdp":
            opt.load_state_dict(checkpoint["optimizer"])
        sched.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"], ctx, device)
        progress = Progress(**checkpoint["progress"])
    log = MetricLog(out, None if checkpoint is None else checkpoint["log_rows"], active=ctx.main)

    saved_at: list[Any] = [None]

    def save() -> None:
        """All ranks call this (it gathers RNG states; FSDP ranks each write their shard). The same point
        is not written twice, so that the previous checkpoint kept as a fallback is an earlier one."""
        point = (progress.epoch, progress.batch, progress.step, log.rows)
        if point == saved_at[0]:
            return
        saved_at[0] = point
        state = {
            "config": config,
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(ctx, device),
            "progress": vars(progress).copy(),
            "log_rows": log.rows,
        }
        if ctx.mode == "fsdp":
            from torch.distributed import checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            tmp = out / f".{CHECKPOINT_DIR}.tmp"
            if ctx.main:
                shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
            torch.distributed.barrier()
            model_sd, optim_sd = get_state_dict(model, opt)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
            if ctx.main:
                save_checkpoint(state, tmp / TRAIN_STATE)
            torch.distributed.barrier()  # every shard is on disk before the folder becomes the checkpoint
            if ctx.main:
                swap_in_folder(tmp, out / CHECKPOINT_DIR)
        elif ctx.main:
            store.save({**state, "model": module.state_dict(), "optimizer": opt.state_dict()}, progress.step)

    loader_args: dict[str, Any] = {
        "num_workers": args.num_workers,
        "pin_memory": device.type == "cuda",
        # its own generator: creating a loader iterator must not draw from the global RNG
        "generator": torch.Generator().manual_seed(args.seed),
    }
    test_batches = EpochBatches(
        len(test_set), args.batch_size, seed=args.seed, epoch=0, shuffle=False, limit=args.eval_batches, **shard
    )
    if ctx.main:
        where = f"{device}" if ctx.mode is None else f"{ctx.mode} on {ctx.world} rank{'s' if ctx.world > 1 else ''} ({device.type})"
        print(
            f"smmf train: {args.model} on {target}, {args.optimizer}, {where}"
            f"{f' ({amp})' if amp else ''}; {steps_per_epoch} steps/epoch, {total_steps} steps; "
            f"{'resuming at step ' + str(progress.step) if checkpoint else 'output'} in {out}",
            flush=True,
        )
    model.train()
    last_eval: dict[str, float] = {}
    while progress.step < stop_at:
        batches = EpochBatches(
            len(train_set), args.batch_size, seed=args.seed, epoch=progress.epoch, skip=progress.batch,
            limit=args.limit_batches, **shard,
        )
        bar = tqdm(
            _batches(loader_args, train_set, batches), total=batches.total, initial=progress.batch,
            desc=f"epoch {progress.epoch + 1}/{args.epochs}",
            disable=True if args.no_progress or not ctx.main else None, dynamic_ncols=True,
        )
        for x, y in bar:
            start = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
                loss, hits = _loss(model, x, y, text)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            _sync_buffers(model, ctx)
            lr = sched.get_last_lr()[0]
            sched.step()
            progress.step += 1
            progress.batch += 1
            # every rank holds as many samples, so the mean over ranks of their means is the batch mean
            loss_sum, hits_sum = _all_sum([loss.item(), float(hits.item())], ctx, device)
            if not math.isfinite(loss_sum):
                raise RunError(
                    f"non-finite training loss ({loss_sum / ctx.world}) at step {progress.step}; stopped without "
                    f"saving anything new (the last checkpoint in {out} is unchanged); lower --lr or check the data"
                )
            row = {"kind": "train", "step": progress.step, "epoch": progress.epoch, "batch": progress.batch,
                   "loss": loss_sum / ctx.world, "lr": lr, "seconds": time.perf_counter() - start}
            if not text:
                row["accuracy"] = 100.0 * hits_sum / (y.numel() * ctx.world)
            log.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            if progress.step % args.checkpoint_every == 0:
                save()
            if progress.step >= stop_at:
                break
        bar.close()
        epoch_done = progress.batch >= batches.total
        if epoch_done or progress.step >= total_steps:
            test_loader = DataLoader(SeededDataset(test_set), batch_sampler=test_batches, **loader_args)
            last_eval = evaluate(model, test_loader, device, text, amp, ctx)
            log.write({"kind": "eval", "step": progress.step, "epoch": progress.epoch, **last_eval})
            metric = f"accuracy {last_eval['accuracy']:.2f}%" if not text else f"perplexity {last_eval['perplexity']:.3f}"
            if ctx.main:
                print(f"epoch {progress.epoch + 1}: step {progress.step}, eval loss {last_eval['loss']:.4f}, {metric}", flush=True)
        if epoch_done:
            progress.epoch += 1
            progress.batch = 0
        save()

    summary: dict[str, Any] = {
        "config": config,
        "steps": progress.step,
        "epochs_completed": progress.epoch,
        "final_eval": last_eval,
        "optimizer_state_bytes": optimizer_state_bytes(opt),
        **_peak_memory(device),
    }
    if ctx.mode is not None:
        per_rank: list[Any] = [None] * ctx.world
        torch.distributed.all_gather_object(per_rank, summary["optimizer_state_bytes"])
        summary["optimizer_state_bytes_per_rank"] = per_rank
        _save_final_model(model, module, ctx, out / FINAL_MODEL)
    if not ctx.main:
        return 0
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    mem = ", ".join(f"{k.replace('_bytes', '')} {v / 2**20:.1f} MiB" for k, v in summary.items() if k.endswith("_bytes"))
    if progress.step < total_steps:
        print(f"stopped at step {progress.step} of {total_steps} (--stop-at-step); continue with --resume", flush=True)
    print(f"done: {progress.step} steps; {mem}; summary in {out / 'summary.json'}", flush=True)
    return 0


def _save_final_model(model: nn.Module, module: nn.Module, ctx: Dist, path: Path) -> None:
    """Rank 0 writes the full, unsharded model state dict, loadable without torch.distributed."""
    if ctx.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        full = {k: v.cpu() for k, v in module.state_dict().items()}
    if ctx.main:
        save_checkpoint(full, path)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a torchvision CNN on CIFAR or GPT-2 on text files (the paper's recipe), resumable",
        description=(
            "Train with the paper's recipe (defaults: ResNet-50 on CIFAR-100, 224px, flip + 15° rotation, batch 128, "
            "200 epochs, cosine with hard restarts and 100 warm-up steps, SMMF lr 1e-3, wd 5e-4, decay_rate -0.8, "
            "growth_rate 0.999, seed 0). Logs metrics.jsonl/csv, evaluates every epoch, checkpoints atomically; "
            "--resume continues exactly where a killed run stopped."
        ),
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="resnet50", help="one of: " + ", ".join(TRAIN_MODELS) + " (default: %(default)s)")
    g.add_argument("--dataset", choices=("cifar100", "cifar10"), default="cifar100", help="image dataset (default: %(default)s)")
    g.add_argument("--data-dir", type=Path, default=Path("data"), help="folder holding (or to receive) the dataset (default: %(default)s)")
    g.add_argument("--no-download", action="store_true", help="never download; fail if --data-dir lacks the dataset")
    g.add_argument("--text", nargs="+", type=Path, metavar="FILE", help="training text for GPT-2 models (last 5%% held out)")
    g.add_argument("--image-size", type=positive_int, default=224, help="resize CIFAR images to this size (default: %(default)s)")
    g.add_argument("--seq-len", type=positive_int, default=256, help="GPT-2 context length in bytes (default: %(default)s)")
    o = p.add_argument_group("optimization")
    o.add_argument("--optimizer", default="smmf", help="one of: " + ", ".join(optimizers.NAMES) + " (default: %(default)s)")
    o.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    o.add_argument("--weight-decay", type=float, default=5e-4, help="(default: %(default)s)")
    o.add_argument("--decay-rate", type=float, default=-0.8, help="SMMF second-moment exponent (default: %(default)s)")
    o.add_argument("--growth-rate", type=float, default=0.999, help="SMMF first-moment schedule base (default: %(default)s)")
    o.add_argument("--batch-size", type=positive_int, default=128, help="(default: %(default)s)")
    o.add_argument("--epochs", type=positive_int, default=200, help="(default: %(default)s)")
    o.add_argument("--warmup-steps", type=non_negative_int, default=100, help="(default: %(default)s)")
    o.add_argument("--num-cycles", type=positive_int, default=1, help="cosine hard restarts (default: %(default)s)")
    o.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    o.add_argument("--eager", action="store_true", help="run SMMF's eager step instead of compiling it")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    r.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="mixed precision on CUDA; auto: bf16 where supported, else fp16 (default: %(default)s)")
    r.add_argument("--num-workers", type=non_negative_int, default=min(8, os.cpu_count() or 1), help="data loader workers (default: %(default)s)")
    r.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<model>-<data>-<optimizer>)")
    r.add_argument("--checkpoint-every", type=positive_int, default=500, help="steps between checkpoints, besides each epoch's end (default: %(default)s)")
    r.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    r.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps")
    r.add_argument("--stop-at-step", type=positive_int, default=None,
                   help="checkpoint and exit after this many steps in all, without shortening the schedule (--max-steps "
                        "does); continue with --resume, e.g. across job time limits")
    r.add_argument("--distributed", choices=("ddp", "fsdp"), default=None,
                   help="under torchrun: DistributedDataParallel or FSDP2 fully_shard; --batch-size is the global "
                        "batch, split across ranks; rank 0 logs; fsdp checkpoints are a DCP folder")
    r.add_argument("--limit-batches", type=positive_int, default=None, help="train batches per epoch at most")
    r.add_argument("--eval-batches", type=positive_int, default=None, help="evaluation batches at most")
    r.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
