"""``smmf train``'s parts: data and model, the run's state, the epoch loop, the summary.

:mod:`smmf.commands.train` puts them together; :mod:`smmf.commands.checkpointer` saves and restores a run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..memory import optimizer_state_bytes
from .common import RunError, UsageError
from .data import CifarDataset, EpochBatches, SeededDataset, TextWindows, cifar_datasets, read_text_files
from .distributed import Dist, all_sum, sync_buffers
from .interrupts import raise_if_interrupted
from .models import IMAGE_MODELS, build_gpt2, build_image_model

__all__ = [
    "LOG_FIELDS", "MetricLog", "Progress", "Run", "datasets", "build_model", "amp_dtype", "epoch_steps", "evaluate",
    "epoch", "summary", "report",
]  # fmt: skip

_Data: TypeAlias = "TextWindows | CifarDataset"
LOG_FIELDS = ("kind", "step", "epoch", "batch", "loss", "lr", "accuracy", "perplexity", "seconds", "skipped_steps")


# ---------------------------------------------------------------------------------------- model and data


def _split_text(data: Tensor, seq_len: int) -> tuple[TextWindows, TextWindows]:
    """The last 5% of the bytes (at least one window) are held out for perplexity."""
    n_val = max(seq_len + 1, data.numel() // 20)
    if data.numel() - n_val < seq_len + 1:
        raise UsageError(f"--text: {data.numel()} bytes are too few for --seq-len {seq_len} (need {2 * (seq_len + 1)})")
    return TextWindows(data[:-n_val], seq_len), TextWindows(data[-n_val:], seq_len)


def datasets(args: argparse.Namespace) -> tuple[_Data, _Data]:
    """The train and held-out sets of the run: CIFAR for the image models, text windows for GPT-2."""
    if args.model in IMAGE_MODELS:
        return cifar_datasets(args.dataset, args.data_dir, args.image_size, download=not args.no_download)
    return _split_text(read_text_files(args.text), args.seq_len)


def build_model(args: argparse.Namespace) -> nn.Module:
    """The run's model from its seed (the same on every rank: FSDP2 does not broadcast initial weights)."""
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


def amp_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: on CUDA bf16 where supported, else fp16 (with a grad scaler); none on CPU."""
    if args.amp == "off" or device.type != "cuda":
        return None
    if args.amp == "fp16" or not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def epoch_steps(args: argparse.Namespace, size: int, ctx: Dist) -> int:
    """Optimizer steps in one epoch of this rank (--limit-batches counted)."""
    batches = EpochBatches(
        size, args.batch_size, seed=args.seed, epoch=0, limit=args.limit_batches, rank=ctx.rank, world=ctx.world
    )
    return batches.total


# ---------------------------------------------------------------------------------------- progress and log


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


@dataclass
class Run:
    """Everything one training run holds between steps; the checkpointer saves and restores it."""

    args: argparse.Namespace
    ctx: Dist
    device: torch.device
    out: Path
    config: dict[str, Any]
    train_set: _Data
    test_set: _Data
    module: nn.Module  # the model itself; ``model`` is it wrapped for DDP/FSDP2
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    total_steps: int
    stop_at: int
    progress: Progress = field(default_factory=Progress)
    log: MetricLog | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    # one generator for every loader of the run: creating a loader iterator must not draw from the global RNG
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.args.seed)

    @property
    def text(self) -> bool:
        return self.args.model not in IMAGE_MODELS

    def batches(self, *, test: bool = False) -> EpochBatches:
        """This rank's batches of the current epoch from where it stopped (test: the whole held-out set)."""
        size = len(self.test_set if test else self.train_set)
        where = {"epoch": 0, "shuffle": False, "limit": self.args.eval_batches} if test else {
            "epoch": self.progress.epoch, "skip": self.progress.batch, "limit": self.args.limit_batches,
        }  # fmt: skip
        return EpochBatches(
            size, self.args.batch_size, seed=self.args.seed, rank=self.ctx.rank, world=self.ctx.world, **where
        )

    def loader(self, dataset: Dataset[Any], batches: EpochBatches) -> DataLoader[Any]:
        return DataLoader(
            SeededDataset(dataset),
            batch_sampler=batches,
            num_workers=self.args.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=self.generator,
        )


# ---------------------------------------------------------------------------------------- loop


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Held-out loss plus accuracy (images, %) or perplexity (text), summed over ranks."""
    model, device = run.model, run.device
    model.eval()
    total = correct = count = 0.0
    for x, y in run.loader(run.test_set, run.batches(test=True)):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=run.amp) if run.amp else nullcontext():
            loss, hits = _loss(model, x, y, run.text)
        n = y.numel()
        total += loss.item() * n
        correct += hits.item()
        count += n
    model.train()
    total, correct, count = all_sum([total, correct, count], run.ctx, device)
    mean = total / max(count, 1)
    if run.text:
        return {"loss": mean, "perplexity": math.exp(mean)}
    return {"loss": mean, "accuracy": 100.0 * correct / max(count, 1)}


def _step(run: Run, x: Tensor, y: Tensor) -> dict[str, Any]:
    """One optimizer step on one batch; the row it logs. RunError on a non-finite loss (nothing saved)."""
    start, device, ctx, progress = time.perf_counter(), run.device, run.ctx, run.progress
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=run.amp) if run.amp else nullcontext():
        loss, hits = _loss(run.model, x, y, run.text)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    sync_buffers(run.model, ctx)
    lr = run.sched.get_last_lr()[0]
    run.sched.step()
    progress.step += 1
    progress.batch += 1
    # every rank holds as many samples, so the mean over ranks of their means is the batch mean
    loss_sum, hits_sum = all_sum([loss.item(), float(hits.item())], ctx, device)
    if not math.isfinite(loss_sum):
        raise RunError(
            f"non-finite training loss ({loss_sum / ctx.world}) at step {progress.step}; stopped without "
            f"saving anything new (the last checkpoint in {run.out} is unchanged); lower --lr or check the data"
        )
    row = {"kind": "train", "step": progress.step, "epoch": progress.epoch, "batch": progress.batch}
    row.update(loss=loss_sum / ctx.world, lr=lr, seconds=time.perf_counter() - start)
    if not run.text:
        row["accuracy"] = 100.0 * hits_sum / (y.numel() * ctx.world)
    return row


def _end_of_epoch_eval(run: Run) -> None:
    """Evaluate, log the result (with SMMF's skipped steps) and print it on rank 0."""
    run.last_eval = evaluate(run)
    skipped: dict[int, int] = getattr(run.opt, "skipped_steps", dict)()  # SMMF: steps skipped (non-finite grads)
    assert run.log is not None
    progress, last = run.progress, run.last_eval
    run.log.write({"kind": "eval", "step": progress.step, "epoch": progress.epoch, **last,
                   "skipped_steps": sum(skipped.values())})  # fmt: skip
    metric = f"perplexity {last['perplexity']:.3f}" if run.text else f"accuracy {last['accuracy']:.2f}%"
    if run.ctx.main:
        print(f"epoch {progress.epoch + 1}: step {progress.step}, eval loss {last['loss']:.4f}, {metric}", flush=True)


def epoch(run: Run, save: Any) -> None:
    """Train through the rest of the current epoch (or to the stop step), checkpointing with ``save()``
    every --checkpoint-every steps and at the end; evaluate when the epoch or the schedule is done."""
    from tqdm.auto import tqdm

    args, progress = run.args, run.progress
    assert run.log is not None
    batches = run.batches()
    bar = tqdm(
        iter(run.loader(run.train_set, batches)),
        total=batches.total,
        initial=progress.batch,
        desc=f"epoch {progress.epoch + 1}/{args.epochs}",
        disable=True if args.no_progress or not run.ctx.main else None,
        dynamic_ncols=True,
    )
    for x, y in bar:
        raise_if_interrupted()
        row = _step(run, x, y)
        run.log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", refresh=False)
        if progress.step % args.checkpoint_every == 0:
            save()
        if progress.step >= run.stop_at:
            break
    bar.close()
    epoch_done = progress.batch >= batches.total
    if epoch_done or progress.step >= run.total_steps:
        _end_of_epoch_eval(run)
    if epoch_done:
        progress.epoch += 1
        progress.batch = 0
    save()


def _peak_memory(device: torch.device) -> dict[str, int]:
    """Peak CPU resident set size of this process and, on CUDA, peak allocated GPU memory (bytes)."""
    peak = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        peak["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return peak


def summary(run: Run) -> dict[str, Any]:
    """What the run reached: steps, epochs, last evaluation, optimizer state (per rank) and peak memory."""
    out: dict[str, Any] = {
        "config": run.config,
        "steps": run.progress.step,
        "epochs_completed": run.progress.epoch,
        "final_eval": run.last_eval,
        "optimizer_state_bytes": optimizer_state_bytes(run.opt),
        **_peak_memory(run.device),
    }
    if run.ctx.mode is not None:
        per_rank: list[Any] = [None] * run.ctx.world
        torch.distributed.all_gather_object(per_rank, out["optimizer_state_bytes"])
        out["optimizer_state_bytes_per_rank"] = per_rank
    return out


def report(run: Run, result: dict[str, Any]) -> None:
    """Rank 0: write summary.json and print the last lines."""
    (run.out / "summary.json").write_text(json.dumps(result, indent=1))
    mem = ", ".join(f"{k.replace('_bytes', '')} {v / 2**20:.1f} MiB" for k, v in result.items() if k.endswith("_bytes"))
    if run.progress.step < run.total_steps:
        print(
            f"stopped at step {run.progress.step} of {run.total_steps} (--stop-at-step); continue with --resume",
            flush=True,
        )
    print(f"done: {run.progress.step} steps; {mem}; summary in {run.out / 'summary.json'}", flush=True)
