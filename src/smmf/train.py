"""``smmf train``: the paper's training recipe as a resumable training tool.

Defaults reproduce the reference recipe (ALGORITHM.md): ResNet-50 from scratch on CIFAR-100 resized to
224 with random flip and 15° rotation, batch 128, 200 epochs, cosine-with-hard-restarts schedule with
100 warm-up steps stepped per iteration, SMMF lr 1e-3, weight decay 5e-4, decay_rate -0.8, growth_rate
0.999, seed 0. GPT-2 models train on byte-level text files.

Resumability: the data order is a pure function of (seed, epoch) and every sample's augmentation has its
own seed (:class:`smmf.data.EpochBatches`, :class:`smmf.data.SeededDataset`); a checkpoint holds model,
optimizer, scheduler, grad-scaler and RNG states plus the epoch and the batches consumed in it, and is
written to a temporary file then renamed. So a run killed at any point and continued with ``--resume``
takes exactly the path of an uninterrupted one (bit-identical parameters on CPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import resource
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
from .cli import UsageError, non_negative_int, positive_int, resolve_device, writable_dir
from .data import EpochBatches, SeededDataset, TextWindows, cifar_datasets, read_text_files
from .memory import optimizer_state_bytes
from .models import IMAGE_MODELS, TEXT_MODELS, TRAIN_MODELS, build_gpt2, build_image_model

__all__ = ["register", "run", "save_checkpoint", "CHECKPOINT", "LOG_FIELDS"]

CHECKPOINT = "checkpoint.pt"
LOG_FIELDS = ("kind", "step", "epoch", "batch", "loss", "lr", "accuracy", "perplexity", "seconds")
# Arguments that define a run: a resumed run must use the same values.
_RUN_DEFINING = (
    "model", "dataset", "text", "optimizer", "lr", "weight_decay", "decay_rate", "growth_rate", "batch_size",
    "epochs", "warmup_steps", "num_cycles", "seed", "image_size", "seq_len", "max_steps", "limit_batches",
)


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    A reader (or a resumed run) sees either the previous complete checkpoint or the new one, even if the
    process is killed mid-write.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _peak_memory(device: torch.device) -> dict[str, int]:
    """Peak CPU resident set size of this process and, on CUDA, peak allocated GPU memory (bytes)."""
    peak = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        peak["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return peak


class MetricLog:
    """Per-step and per-epoch metrics as JSON lines and CSV, truncatable to a checkpoint's row count."""

    def __init__(self, out: Path, keep_rows: int | None) -> None:
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        if keep_rows is None:
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
        row = {k: row.get(k) for k in LOG_FIELDS}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)
        self.rows += 1


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


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, text: bool, amp: torch.dtype | None) -> dict[str, float]:
    """Held-out loss plus accuracy (images, %) or perplexity (text) over ``loader``."""
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
    if not -1.0 <= args.decay_rate <= 0.0:
        raise UsageError(f"--decay-rate: expected a value in [-1, 0], got {args.decay_rate}")
    if args.lr <= 0:
        raise UsageError(f"--lr: expected a positive learning rate, got {args.lr}")


def run(args: argparse.Namespace) -> int:
    """Train (or resume) one run; writes metrics.jsonl/csv, checkpoint.pt and summary.json into --out."""
    from tqdm.auto import tqdm
    from transformers import get_cosine_with_hard_restarts_schedule_with_warmup

    _validate(args)
    device = resolve_device(args.device)
    target = args.dataset if args.model in IMAGE_MODELS else "text"
    out = writable_dir(args.out or Path("runs") / f"{args.model}-{target}-{args.optimizer}", "--out")
    ckpt_path = out / CHECKPOINT
    config = {k: (list(map(str, v)) if k == "text" and v else v) for k, v in vars(args).items() if k in _RUN_DEFINING}
    checkpoint = None
    if args.resume:
        if not ckpt_path.exists():
            raise UsageError(f"--resume: no checkpoint in {out}")
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file: RNG states
        changed = {k: (checkpoint["config"].get(k), v) for k, v in config.items() if checkpoint["config"].get(k) != v}
        if changed:
            diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise UsageError(f"--resume: arguments differ from the checkpoint's ({diff})")
    elif ckpt_path.exists():
        raise UsageError(f"--out: {out} already holds a checkpoint; pass --resume to continue it, or another --out")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    text = args.model in TEXT_MODELS
    train_set, test_set = _datasets(args)
    model = _model(args).to(device)
    opt = optimizers.build(
        args.optimizer, model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
        decay_rate=args.decay_rate, growth_rate=args.growth_rate, fused=False if args.eager else None,
    )
    probe = EpochBatches(len(train_set), args.batch_size, seed=args.seed, epoch=0, limit=args.limit_batches)
    steps_per_epoch = probe.total
    total_steps = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    sched = get_cosine_with_hard_restarts_schedule_with_warmup(opt, args.warmup_steps, total_steps, args.num_cycles)
    amp = _amp(args, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    progress = Progress()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])
        sched.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"])
        progress = Progress(**checkpoint["progress"])
    log = MetricLog(out, None if checkpoint is None else checkpoint["log_rows"])

    def save() -> None:
        save_checkpoint(
            {
                "config": config,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
                "progress": vars(progress).copy(),
                "log_rows": log.rows,
            },
            ckpt_path,
        )

    loader_args: dict[str, Any] = {
        "num_workers": args.num_workers,
        "pin_memory": device.type == "cuda",
        # its own generator: creating a loader iterator must not draw from the global RNG
        "generator": torch.Generator().manual_seed(args.seed),
    }
    test_batches = EpochBatches(len(test_set), args.batch_size, seed=args.seed, epoch=0, shuffle=False, limit=args.eval_batches)
    print(
        f"smmf train: {args.model} on {target}, {args.optimizer}, {device}"
        f"{f' ({amp})' if amp else ''}; {steps_per_epoch} steps/epoch, {total_steps} steps; "
        f"{'resuming at step ' + str(progress.step) if checkpoint else 'output'} in {out}",
        flush=True,
    )
    model.train()
    last_eval: dict[str, float] = {}
    while progress.step < total_steps:
        batches = EpochBatches(
            len(train_set), args.batch_size, seed=args.seed, epoch=progress.epoch, skip=progress.batch, limit=args.limit_batches
        )
        bar = tqdm(
            _batches(loader_args, train_set, batches), total=batches.total, initial=progress.batch,
            desc=f"epoch {progress.epoch + 1}/{args.epochs}", disable=True if args.no_progress else None, dynamic_ncols=True,
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
            lr = sched.get_last_lr()[0]
            sched.step()
            progress.step += 1
            progress.batch += 1
            row = {"kind": "train", "step": progress.step, "epoch": progress.epoch, "batch": progress.batch,
                   "loss": loss.item(), "lr": lr, "seconds": time.perf_counter() - start}
            if not text:
                row["accuracy"] = 100.0 * hits.item() / y.numel()
            log.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            if progress.step % args.checkpoint_every == 0:
                save()
            if progress.step >= total_steps:
                break
        bar.close()
        epoch_done = progress.batch >= batches.total
        if epoch_done or progress.step >= total_steps:
            last_eval = evaluate(model, DataLoader(SeededDataset(test_set), batch_sampler=test_batches, **loader_args), device, text, amp)
            log.write({"kind": "eval", "step": progress.step, "epoch": progress.epoch, **last_eval})
            metric = f"accuracy {last_eval['accuracy']:.2f}%" if not text else f"perplexity {last_eval['perplexity']:.3f}"
            print(f"epoch {progress.epoch + 1}: step {progress.step}, eval loss {last_eval['loss']:.4f}, {metric}", flush=True)
        if epoch_done:
            progress.epoch += 1
            progress.batch = 0
        save()

    summary = {
        "config": config,
        "steps": progress.step,
        "epochs_completed": progress.epoch,
        "final_eval": last_eval,
        "optimizer_state_bytes": optimizer_state_bytes(opt),
        **_peak_memory(device),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    mem = ", ".join(f"{k.replace('_bytes', '')} {v / 2**20:.1f} MiB" for k, v in summary.items() if k.endswith("_bytes"))
    print(f"done: {progress.step} steps; {mem}; summary in {out / 'summary.json'}", flush=True)
    return 0


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
    r.add_argument("--limit-batches", type=positive_int, default=None, help="train batches per epoch at most")
    r.add_argument("--eval-batches", type=positive_int, default=None, help="evaluation batches at most")
    r.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
