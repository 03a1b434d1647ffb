"""``smmf bench --mode memory``: the largest Llama-shaped model each way of training fits on one GPU.

For each model (Llama shapes from ``transformers.LlamaConfig``, random weights made directly on the
device, nothing downloaded; batch 1, sequence 512, gradient checkpointing) and each way of training,
in a fresh process: the peak memory the allocator held over five whole training steps (forward,
backward, step; the first creates the optimizer state) and the mean time of the last three; on CUDA,
the GPU's busy time in one more step, profiled (:mod:`smmf.commands.kernel_profile`). A model that
runs out of memory is reported as "does not fit", not as a crash.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bench_worker import command_prefix, machine, run_worker
from .common import UsageError, check_names, markdown_table, resolve_device, split_names, writable_dir, write_report
from .kernel_profile import profile_kernels
from .models import build_transformer

__all__ = ["MODELS", "CONFIGS", "measure", "run"]

# name -> (transformers architecture for build_transformer, tokens per sequence)
MODELS = {
    "llama-1b": ("llama-1b", 512),
    "llama-3b": ("llama-3b", 512),
    "llama-7b": ("llama-7b", 512),
    "llama-tiny": ("llama-h128-l1", 32),
}
CUDA_MODELS = ("llama-1b", "llama-3b", "llama-7b")
CPU_MODELS = ("llama-tiny",)
# name -> (label, bf16 weights)
CONFIGS = {
    "adamw-fp32": ("AdamW(fused), fp32 weights, bf16 autocast", False),
    "adamw-bf16": ("AdamW(fused), bf16 weights and states", True),
    "smmf": ("SMMF, bf16 weights, step() after backward", True),
    "smmf-backward": ("SMMF, bf16 weights, stochastic rounding, step inside backward", True),
}
CARDS_GIB = (16, 24, 80)
WARMUP_STEPS = 2  # the first creates the optimizer state; in the second, gradients may land at new addresses
TIMED_STEPS = 3
_LR = 1e-5


def _trainer(config: str, model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], None]:
    """One whole training step of ``model`` on a batch of token ids, the way ``config`` trains."""
    from smmf import SMMF, step_in_backward

    params = list(model.parameters())
    opt: torch.optim.Optimizer | None = None
    if config.startswith("adamw"):
        opt = torch.optim.AdamW(params, lr=_LR, fused=True)
    elif config == "smmf":
        opt = SMMF(params, lr=_LR, decay_rate=-0.8)
    else:
        step_in_backward(model, lr=_LR, decay_rate=-0.8, stochastic_rounding=True)

    def train_step(ids: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return train_step


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: the peak memory of the first training steps (the optimizer state made in
    the first, tables rebuilt in the second as gradients land at new addresses) and the mean time of
    the steady steps after them."""
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    architecture, tokens = MODELS[spec["model"]]
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = build_transformer(architecture)
        if CONFIGS[spec["config"]][1]:
            model = model.to(torch.bfloat16)
        hf_model: Any = model  # a transformers PreTrainedModel
        hf_model.gradient_checkpointing_enable()
        model.train()
        train_step = _trainer(spec["config"], model, device)
        ids = torch.randint(0, int(hf_model.config.vocab_size), (1, tokens), device=device)
        sync()
        if cuda:  # from here: what training holds, not the fp32 weights a bf16 model was built from
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(WARMUP_STEPS):
            train_step(ids)
        sync()
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            train_step(ids)
        sync()
        step_ms = (time.perf_counter() - start) * 1e3 / TIMED_STEPS
        peak = torch.cuda.max_memory_allocated(device) if cuda else None
        gpu = profile_kernels(lambda: train_step(ids), device) or {}  # one more step, profiled
    except torch.OutOfMemoryError:
        return {"fits": False, "error": "does not fit"}
    return {
        "fits": True,
        "step_ms": step_ms,
        "peak_bytes": peak,
        "gpu_ms": gpu.get("gpu_ms"),
        "kernels": gpu.get("kernels"),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    if "error" in row:
        return row["error"]
    peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 1024**3:.1f} GiB"
    busy = f" (GPU {row['gpu_ms']:,.0f})" if row.get("gpu_ms") is not None else ""
    return f"{peak}, {row['step_ms']:,.0f} ms{busy}"


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], models: list[str], configs: list[str]) -> str:
    """Models as rows, ways of training as columns (peak allocated, step time), then the largest model
    each way fits under each card size (allocated memory; the CUDA context takes some more). Models are
    listed smallest first whatever order they ran in (a GPU run measures the largest first)."""
    models = sorted(models, key=list(MODELS).index)
    by = {(r["model"], r["config"]): r for r in rows}
    table = markdown_table(
        ["model", *(CONFIGS[c][0] for c in configs)], [[m, *(_cell(by.get((m, c))) for c in configs)] for m in models]
    )
    lines = [
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}. Command: `{meta['command']}`",
        "",
        table,
    ]
    for gib in CARDS_GIB if any(r.get("peak_bytes") for r in rows) else ():  # GPU runs only
        fits = []
        for c in configs:
            peaks = [(m, by.get((m, c), {}).get("peak_bytes")) for m in models]
            ok = [m for m, peak in peaks if peak is not None and peak <= gib * 1024**3]
            fits.append(f"{CONFIGS[c][0]}: {ok[-1] if ok else 'none'}")
        lines.append(f"\nLargest that fits {gib} GiB: " + "; ".join(fits))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Every model with every way of training, each in a fresh process; writes bench-memory.md and .json."""
    device = resolve_device(args.device)
    models = split_names(args.set) if args.set else list(CUDA_MODELS if device.type == "cuda" else CPU_MODELS)
    configs = split_names(args.optimizers) if args.optimizers else list(CONFIGS)
    check_names(models, tuple(MODELS), "model")
    check_names(configs, tuple(CONFIGS), "configuration")
    if not models or not configs:
        raise UsageError("--set and --optimizers must name at least one model and configuration")
    out = writable_dir(Path(args.out or f"runs/bench-memory-{device.type}"), "--out")
    command = f"smmf bench --mode memory --device {device} --set {','.join(models)} --optimizers {','.join(configs)}"
    meta = {"machine": machine(str(device), None), "torch": torch.__version__, "date": dt.date.today().isoformat()}
    meta["command"] = command_prefix() + command
    rows = []
    for model in models:
        for config in configs:
            result = run_worker(
                {"model": model, "config": config, "device": str(device)}, module=__name__, function="measure"
            )
            rows.append({"model": model, "config": config, **result})
            print(f"[{model}] {config}: {_cell(rows[-1])}", file=sys.stderr, flush=True)
            # rewritten after every row: a run cut short keeps what it measured
            write_report(out, "bench-memory", markdown(meta, rows, models, configs), meta, rows)
    print(markdown(meta, rows, models, configs))
    return 0
