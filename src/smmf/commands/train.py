"""``smmf train``: the paper's training recipe as a resumable training tool.

Defaults reproduce the reference recipe (ALGORITHM.md): ResNet-50 from scratch on CIFAR-100 resized to
224 with random flip and 15° rotation, batch 128, 200 epochs, cosine-with-hard-restarts schedule with
100 warm-up steps stepped per iteration, SMMF lr 1e-3, weight decay 5e-4, decay_rate -0.8, growth_rate
0.999, seed 0. GPT-2 models train on byte-level text files.

Resumability: the data order is a pure function of (seed, epoch) and every sample's augmentation has its
own seed (:class:`smmf.commands.data.EpochBatches`, :class:`smmf.commands.data.SeededDataset`); a checkpoint
holds model, optimizer, scheduler, grad-scaler and RNG states plus the epoch and the batches consumed in
it, and is written to a temporary file then renamed. So a run killed at any point and continued with ``--resume``
takes exactly the path of an uninterrupted one (bit-identical parameters on CPU). Checkpoints hold plain
data only, load with ``weights_only=True``, are checksummed, and the previous one is kept as a fallback;
a lock keeps a second run out of the same ``--out`` (:mod:`smmf.commands.checkpoint`). A non-finite training loss
stops the run before anything more is saved.

Distributed (``--distributed ddp|fsdp`` under torchrun): ``--batch-size`` is the global batch, split
evenly across ranks (:class:`smmf.commands.data.EpochBatches` with ``rank``/``world``); only rank 0 prints and
logs, and logged losses and evaluation results are all-reduced over the ranks. DDP keeps the single-file
checkpoint (written by rank 0); FSDP2 writes a ``torch.distributed.checkpoint`` folder, swapped in
atomically by rank 0 once every rank has written its shard. Both resume exactly.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed, registry, training
from .checkpointer import CHECKPOINT_DIR, FINAL_MODEL, Checkpointer, for_run
from .common import (
    UsageError,
    check_names,
    check_number,
    check_seed,
    non_negative_int,
    positive_int,
    writable_dir,
)
from .distributed import Dist
from .models import IMAGE_MODELS, TEXT_MODELS, TRAIN_MODELS
from .training import LOG_FIELDS, MetricLog, Run

__all__ = ["register", "run", "CHECKPOINT_DIR", "FINAL_MODEL", "LOG_FIELDS"]

# Arguments that define a run: a resumed run must use the same values.
_RUN_DEFINING = (
    "model",
    "dataset",
    "text",
    "optimizer",
    "lr",
    "weight_decay",
    "decay_rate",
    "growth_rate",
    "batch_size",
    "epochs",
    "warmup_steps",
    "num_cycles",
    "seed",
    "image_size",
    "seq_len",
    "max_steps",
    "limit_batches",
    "distributed",
    "world_size",
)


def _validate(args: argparse.Namespace) -> None:
    check_names([args.model], TRAIN_MODELS, "model")
    check_names([args.optimizer], registry.MAIN_NAMES, "optimizer")
    if args.model in TEXT_MODELS and not args.text:
        raise UsageError(f"--model {args.model} needs --text FILE [FILE ...] (byte-level training text)")
    if args.model in IMAGE_MODELS and args.text:
        raise UsageError(f"--text is for the GPT-2 models ({', '.join(TEXT_MODELS)}), not --model {args.model}")
    registry.check_weight_decay(args.optimizer, args.weight_decay)
    check_number("--lr", args.lr, 0.0, above=True)
    check_number("--weight-decay", args.weight_decay, 0.0)
    check_number("--decay-rate", args.decay_rate, -1.0, 0.0)
    check_number("--growth-rate", args.growth_rate, 0.0, 1.0)
    check_seed(args.seed)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) one run; writes metrics.jsonl/csv, checkpoint(s) and summary.json into --out."""
    _validate(args)
    ctx, device = distributed.init_distributed(args)
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


def _seed(args: argparse.Namespace) -> None:
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)  # the same on every rank: FSDP2 does not broadcast the initial weights


def _setup(
    args: argparse.Namespace, ctx: Dist, device: torch.device, out: Path, checkpointer: Checkpointer
) -> tuple[Run, dict[str, Any] | None]:
    """Lock --out, read the checkpoint to resume from, and build data, model, optimizer and schedule."""
    from transformers import get_cosine_with_hard_restarts_schedule_with_warmup

    checkpointer.lock()
    config = {k: (list(map(str, v)) if k == "text" and v else v) for k, v in vars(args).items() if k in _RUN_DEFINING}
    if ctx.mode is not None:
        config["world_size"] = ctx.world
    checkpoint = checkpointer.resume_point(args, config)
    _seed(args)
    train_set, test_set = training.datasets(args)
    module = training.build_model(args).to(device)
    if checkpoint is not None:
        checkpointer.load_module(module, checkpoint)
    model = distributed.wrap(module, ctx, device)
    opt = registry.build(
        args.optimizer,
        model.parameters(),
        lr=args.lr,
        weight_decay=args.weight_decay,
        decay_rate=args.decay_rate,
        growth_rate=args.growth_rate,
        fused=False if args.eager else None,
    )
    epoch_steps = training.epoch_steps(args, len(train_set), ctx)
    total = args.epochs * epoch_steps if args.max_steps is None else min(args.max_steps, args.epochs * epoch_steps)
    stop_at = total if args.stop_at_step is None else min(args.stop_at_step, total)
    sched = get_cosine_with_hard_restarts_schedule_with_warmup(opt, args.warmup_steps, total, args.num_cycles)
    amp = training.amp_dtype(args, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    run = Run(
        args, ctx, device, out, config, train_set, test_set, module, model, opt, sched, scaler, amp, total, stop_at
    )
    return run, checkpoint


def _train(args: argparse.Namespace, ctx: Dist, device: torch.device) -> int:
    target = args.dataset if args.model in IMAGE_MODELS else "text"
    out = writable_dir(args.out or Path("runs") / f"{args.model}-{target}-{args.optimizer}", "--out")
    checkpointer = for_run(out, ctx, device)
    run, checkpoint = _setup(args, ctx, device, out, checkpointer)
    if checkpoint is not None:
        checkpointer.restore(run, checkpoint)
    run.log = MetricLog(out, None if checkpoint is None else int(checkpoint["log_rows"]), active=ctx.main)
    if ctx.main:
        ranks = f"{ctx.world} rank{'s' if ctx.world > 1 else ''}"
        where = f"{device}" if ctx.mode is None else f"{ctx.mode} on {ranks} ({device.type})"
        print(
            f"smmf train: {args.model} on {target}, {args.optimizer}, {where}"
            f"{f' ({run.amp})' if run.amp else ''}; {training.epoch_steps(args, len(run.train_set), ctx)} "
            f"steps/epoch, {run.total_steps} steps; "
            f"{'resuming at step ' + str(run.progress.step) if checkpoint else 'output'} in {out}",
            flush=True,
        )
    run.model.train()
    while run.progress.step < run.stop_at:
        training.epoch(run, lambda: checkpointer.save(run))
    result = training.summary(run)
    checkpointer.save_final_model(run)
    if ctx.main:
        training.report(run, result)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    _model_arguments(p.add_argument_group("model and data"))
    _optimization_arguments(p.add_argument_group("optimization"))
    _run_arguments(p.add_argument_group("run"))
    p.set_defaults(func=run)


def _model_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model", default="resnet50", help="one of: " + ", ".join(TRAIN_MODELS) + " (default: %(default)s)")
    g.add_argument(
        "--dataset", choices=("cifar100", "cifar10"), default="cifar100", help="image dataset (default: %(default)s)"
    )
    g.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="folder holding (or to receive) the dataset (default: %(default)s)",
    )
    g.add_argument("--no-download", action="store_true", help="never download; fail if --data-dir lacks the dataset")
    g.add_argument(
        "--text", nargs="+", type=Path, metavar="FILE", help="training text for GPT-2 models (last 5%% held out)"
    )
    g.add_argument(
        "--image-size", type=positive_int, default=224, help="resize CIFAR images to this size (default: %(default)s)"
    )
    g.add_argument(
        "--seq-len", type=positive_int, default=256, help="GPT-2 context length in bytes (default: %(default)s)"
    )


def _optimization_arguments(o: argparse._ArgumentGroup) -> None:
    o.add_argument(
        "--optimizer", default="smmf", help="one of: " + ", ".join(registry.MAIN_NAMES) + " (default: %(default)s)"
    )
    o.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    o.add_argument("--weight-decay", type=float, default=5e-4, help="(default: %(default)s)")
    o.add_argument("--decay-rate", type=float, default=-0.8, help="SMMF second-moment exponent (default: %(default)s)")
    o.add_argument(
        "--growth-rate", type=float, default=0.999, help="SMMF first-moment schedule base (default: %(default)s)"
    )
    o.add_argument("--batch-size", type=positive_int, default=128, help="(default: %(default)s)")
    o.add_argument("--epochs", type=positive_int, default=200, help="(default: %(default)s)")
    o.add_argument("--warmup-steps", type=non_negative_int, default=100, help="(default: %(default)s)")
    o.add_argument("--num-cycles", type=positive_int, default=1, help="cosine hard restarts (default: %(default)s)")
    o.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    o.add_argument("--eager", action="store_true", help="run SMMF's eager step instead of compiling it")


def _run_arguments(r: argparse._ArgumentGroup) -> None:
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    r.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision on CUDA; auto: bf16 where supported, else fp16 (default: %(default)s)",
    )
    r.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=min(8, os.cpu_count() or 1),
        help="data loader workers (default: %(default)s)",
    )
    r.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<model>-<data>-<optimizer>)")
    r.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=500,
        help="steps between checkpoints, besides each epoch's end (default: %(default)s)",
    )
    r.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    r.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps")
    r.add_argument(
        "--stop-at-step",
        type=positive_int,
        default=None,
        help="checkpoint and exit after this many steps in all, without shortening the schedule (--max-steps "
        "does); continue with --resume, e.g. across job time limits",
    )
    r.add_argument(
        "--distributed",
        choices=("ddp", "fsdp"),
        default=None,
        help="under torchrun: DistributedDataParallel or FSDP2 fully_shard; --batch-size is the global "
        "batch, split across ranks; rank 0 logs; fsdp checkpoints are a DCP folder",
    )
    r.add_argument("--limit-batches", type=positive_int, default=None, help="train batches per epoch at most")
    r.add_argument("--eval-batches", type=positive_int, default=None, help="evaluation batches at most")
    r.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
