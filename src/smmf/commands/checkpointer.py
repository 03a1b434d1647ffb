"""``smmf train``'s checkpointer: one strategy per run mode, owning save, load, atomic swap and final model.

- single process and DDP (:class:`FileCheckpointer`): one checksummed file written by rank 0
  (:class:`smmf.commands.checkpoint.Checkpoints`), the previous one kept as a fallback;
- FSDP2 (:class:`ShardedCheckpointer`): a ``torch.distributed.checkpoint`` folder to which every rank
  writes its shard, swapped in atomically by rank 0 once all are written.

Every rank calls every method; the strategy decides who writes. The same point is never written twice,
so that the previous checkpoint kept as a fallback is an earlier one.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    Checkpoints,
    load_plain,
    lock_run_folder,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
    swap_in_folder,
)
from .common import UsageError
from .distributed import Dist, all_sum
from .training import Progress, Run

__all__ = ["CHECKPOINT_DIR", "TRAIN_STATE", "FINAL_MODEL", "Checkpointer", "for_run"]

CHECKPOINT_DIR = "checkpoint"  # --distributed fsdp: a torch.distributed.checkpoint folder
TRAIN_STATE = "train_state.pt"  # inside CHECKPOINT_DIR: everything but model and optimizer tensors
FINAL_MODEL = "model_final.pt"  # --distributed: the full (unsharded) model state dict at the end


def _check_config(checkpoint: dict[str, Any], config: dict[str, Any]) -> None:
    changed = {k: (checkpoint["config"].get(k), v) for k, v in config.items() if checkpoint["config"].get(k) != v}
    if changed:
        diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise UsageError(f"--resume: arguments differ from the checkpoint's ({diff})")


class Checkpointer:
    """The checkpoints of one run folder, as every rank of the run sees them."""

    def __init__(self, out: Path, ctx: Dist, device: torch.device) -> None:
        self.out, self.ctx, self.device = out, ctx, device
        self.store = Checkpoints(out)
        self._saved_at: tuple[int, ...] | None = None
        self._lock: Any = None

    def lock(self) -> None:
        """Rank 0 locks the folder for the checkpointer's lifetime and removes the temporary files a
        killed run left; every rank stops with a UsageError if another run holds the folder."""
        error = None
        if self.ctx.main:
            try:
                self._lock = lock_run_folder(self.out)
                remove_stale_temporaries(self.out)
            except UsageError as exc:
                error = exc
        if self.ctx.mode is not None and all_sum([float(error is not None)], self.ctx, self.device)[0]:
            error = error or UsageError(f"--out: {self.out} is in use by another smmf train run")
        if error is not None:
            raise error

    def exists(self) -> bool:
        return self.store.exists() or (self.out / CHECKPOINT_DIR).exists()

    def resume_point(self, args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any] | None:
        """The verified checkpoint to continue from, or None for a fresh run; UsageError for a resume
        without a checkpoint, a fresh run over an existing one, or a resume with other arguments."""
        if not args.resume:
            if self.exists():
                raise UsageError(
                    f"--out: {self.out} already holds a checkpoint; pass --resume to continue it, or another --out"
                )
            return None
        checkpoint = self._read()
        _check_config(checkpoint, config)
        return checkpoint

    def _read(self) -> dict[str, Any]:
        if not self.store.exists():
            raise UsageError(f"--resume: no checkpoint in {self.out}")
        return self.store.load(announce=self.ctx.main)

    def load_module(self, module: nn.Module, checkpoint: dict[str, Any]) -> None:
        """Before wrapping: the model's weights (a file checkpoint holds them whole)."""
        module.load_state_dict(checkpoint["model"])

    def _load_tensors(self, run: Run, checkpoint: dict[str, Any]) -> None:
        run.opt.load_state_dict(checkpoint["optimizer"])

    def restore(self, run: Run, checkpoint: dict[str, Any]) -> None:
        """After wrapping: optimizer, scheduler, grad scaler, RNG states and progress."""
        self._load_tensors(run, checkpoint)
        run.sched.load_state_dict(checkpoint["scheduler"])
        run.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"], self.ctx, self.device)
        run.progress = Progress(**checkpoint["progress"])

    def _state(self, run: Run) -> dict[str, Any]:
        assert run.log is not None
        return {
            "config": run.config,
            "scheduler": run.sched.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": rng_state(self.ctx, self.device),  # gathered from every rank
            "progress": vars(run.progress).copy(),
            "log_rows": run.log.rows,
        }

    def save(self, run: Run) -> None:
        """Checkpoint the run where it is (all ranks call this), unless this point is already saved."""
        assert run.log is not None
        point = (run.progress.epoch, run.progress.batch, run.progress.step, run.log.rows)
        if point == self._saved_at:
            return
        self._saved_at = point
        self._write(run, self._state(run))

    def _write(self, run: Run, state: dict[str, Any]) -> None:
        if self.ctx.main:
            tensors = {"model": run.module.state_dict(), "optimizer": run.opt.state_dict()}
            self.store.save({**state, **tensors}, run.progress.step)

    def _full_model(self, run: Run) -> dict[str, Any]:
        return {k: v.cpu() for k, v in run.module.state_dict().items()}

    def save_final_model(self, run: Run) -> None:
        """--distributed: rank 0 writes the full, unsharded model state dict, loadable without
        torch.distributed (a single process keeps only its checkpoint)."""
        if self.ctx.mode is None:
            return
        full = self._full_model(run)
        if self.ctx.main:
            save_checkpoint(full, self.out / FINAL_MODEL)


class ShardedCheckpointer(Checkpointer):
    """FSDP2: model and optimizer tensors in a DCP folder (a shard per rank), the rest in its TRAIN_STATE."""

    def _found(self) -> Path | None:
        """The checkpoint a resume reads: the DCP folder (or its moved-aside copy)."""
        for folder in (self.out / CHECKPOINT_DIR, self.out / f".{CHECKPOINT_DIR}.old"):
            if (folder / TRAIN_STATE).exists():
                return folder
        return None

    def exists(self) -> bool:
        return super().exists() or self._found() is not None

    def _read(self) -> dict[str, Any]:
        found = self._found()
        if found is None:
            raise UsageError(f"--resume: no --distributed fsdp checkpoint in {self.out}")
        checkpoint: dict[str, Any] = load_plain(found / TRAIN_STATE)
        self._folder = found
        return checkpoint

    def load_module(self, module: nn.Module, checkpoint: dict[str, Any]) -> None:
        """Nothing before wrapping: the shards are loaded into the wrapped model."""

    def _load_tensors(self, run: Run, checkpoint: dict[str, Any]) -> None:
        from torch.distributed import checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(run.model, run.opt)
        tensors: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        dcp.load(tensors, checkpoint_id=self._folder)
        set_state_dict(run.model, run.opt, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"])

    def _write(self, run: Run, state: dict[str, Any]) -> None:
        from torch.distributed import checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        tmp = self.out / f".{CHECKPOINT_DIR}.tmp"
        if self.ctx.main:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        torch.distributed.barrier()
        model_sd, optim_sd = get_state_dict(run.model, run.opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        if self.ctx.main:
            save_checkpoint(state, tmp / TRAIN_STATE)
        torch.distributed.barrier()  # every shard is on disk before the folder becomes the checkpoint
        if self.ctx.main:
            swap_in_folder(tmp, self.out / CHECKPOINT_DIR)

    def _full_model(self, run: Run) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(run.model, options=options)


def for_run(out: Path, ctx: Dist, device: torch.device) -> Checkpointer:
    """The checkpointer of this run mode: sharded for FSDP2, a single file otherwise."""
    return (ShardedCheckpointer if ctx.mode == "fsdp" else Checkpointer)(out, ctx, device)
