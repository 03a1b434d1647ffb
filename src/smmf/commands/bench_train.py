"""``smmf bench --mode train``: whole training steps (forward, backward, step) of real models, side by side.

For each workload and optimizer, in a fresh process of its own: the model is built from a config with
random weights directly on the device (nothing downloaded), trained for warm-up steps, then timed two
ways: full steps back to back (one sync at the end, as training runs) and ``step()`` alone (synced
before and after; with the time until it returns, its host part on CUDA, and on CUDA the span between
events recorded around it on the GPU's clock). Peak memory is the allocator's high-water mark over the
timed steps, state memory counts the optimizer's tensors, and on CUDA ``torch.profiler`` counts the
kernels one ``step()`` launches and adds up the GPU's busy time in one ``step()`` and in one full step.
On an H100 (2026-11-27) every optimizer's ``step()`` took 0.8-2.7 ms longer than its GPU was busy; the time
until it returns and the events' span tell how much of that is host work and how much the synchronize.
A workload that runs out of memory is reported as "does not fit", not as a crash.

``--rounds N`` repeats the whole grid N times, each pair again in a fresh process, the optimizers'
order reversed every other round: a process's wall times can differ from the next one's by more than
the gap under test (an H100's fused AdamW ``step()`` took 2.64 ms in one process and 2.99 ms in
another), so the pooled medians and the per-round ratios, paired within a round, say how far a ratio
is to be trusted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..memory import optimizer_state_bytes
from . import registry
from .bench_worker import command_prefix, machine, run_worker
from .common import UsageError, check_names, markdown_table, resolve_device, split_names, writable_dir, write_report
from .kernel_profile import profile_kernels
from .models import DigitsCNN, build_image_model, build_transformer

__all__ = ["WORKLOADS", "CUDA_WORKLOADS", "CPU_WORKLOADS", "TRAIN_OPTIMIZERS", "measure", "markdown", "run"]


@dataclass(frozen=True)
class Workload:
    """A model built on the current default device and one batch's loss; ``bf16_weights`` casts the
    model to bfloat16 (else fp32 weights under bf16 autocast); ``channels_last`` lays out its weights
    (and the loss its images) channels-last, as NVIDIA's mixed-precision recipes for CNNs do."""

    label: str
    build: Callable[[], nn.Module]
    loss: Callable[[nn.Module, torch.device], torch.Tensor]
    bf16_weights: bool = False
    checkpointing: bool = False
    channels_last: bool = False


def _image_loss(
    batch: int, classes: int, size: int, channels: int = 3, memory_format: torch.memory_format = torch.contiguous_format
) -> Callable[[nn.Module, torch.device], torch.Tensor]:
    def loss(model: nn.Module, device: torch.device) -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, channels, size, size, device=device, generator=gen)
        x = x.contiguous(memory_format=memory_format)
        y = torch.randint(0, classes, (batch,), device=device, generator=gen)
        return nn.functional.cross_entropy(model(x).float(), y)

    return loss


def _lm_loss(batch: int, tokens: int, vocab: int) -> Callable[[nn.Module, torch.device], torch.Tensor]:
    def loss(model: nn.Module, device: torch.device) -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(0)
        ids = torch.randint(0, vocab, (batch, tokens), device=device, generator=gen)
        return model(input_ids=ids, labels=ids).loss

    return loss


def _resnet50() -> nn.Module:
    return build_image_model("resnet50", num_classes=100)


def _transformer(name: str) -> Callable[[], nn.Module]:
    return lambda: build_transformer(name)


def _tiny_cnn() -> nn.Module:
    return DigitsCNN(num_classes=10, width=8)


WORKLOADS: dict[str, Workload] = {
    "resnet50": Workload("ResNet-50 / CIFAR-100, 256 x 3x32x32", _resnet50, _image_loss(256, 100, 32)),
    "resnet50-cl": Workload(
        "ResNet-50 / CIFAR-100, 256 x 3x32x32, channels-last",
        _resnet50,
        _image_loss(256, 100, 32, memory_format=torch.channels_last),
        channels_last=True,
    ),
    "gpt2": Workload("GPT-2 124M, 8 x 1024 tokens", _transformer("gpt2"), _lm_loss(8, 1024, 50257)),
    "llama-7b": Workload(
        "Llama-2-7B shape, bf16 weights, 1 x 512 tokens, checkpointing",
        _transformer("llama-7b"),
        _lm_loss(1, 512, 32000),
        bf16_weights=True,
        checkpointing=True,
    ),
    "tiny-cnn": Workload("digits CNN (width 8), 16 x 1x8x8", _tiny_cnn, _image_loss(16, 10, 8, channels=1)),
    "tiny-llama": Workload(
        "Llama shape, hidden 128, 1 layer, bf16 weights, 1 x 32 tokens, checkpointing",
        _transformer("llama-h128-l1"),
        _lm_loss(1, 32, 32000),
        bf16_weights=True,
        checkpointing=True,
    ),
}
CUDA_WORKLOADS = ("resnet50", "gpt2", "llama-7b")
CPU_WORKLOADS = ("tiny-cnn", "tiny-llama")
TRAIN_OPTIMIZERS = ("adamw-fused", "adamw", "smmf", "smmf8")


def _build(spec: dict[str, Any], device: torch.device) -> tuple[nn.Module, Workload]:
    workload = WORKLOADS[spec["workload"]]
    torch.manual_seed(0)
    with torch.device(device):
        model = workload.build()
    if workload.bf16_weights:
        model = model.to(torch.bfloat16)
    if workload.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if workload.checkpointing:
        from transformers import PreTrainedModel

        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"{spec['workload']}: gradient checkpointing needs a transformers model")
        model.gradient_checkpointing_enable()
    model.train()
    return model, workload


def _train_step(forward_backward: Callable[[], None], opt: torch.optim.Optimizer) -> None:
    """One whole training step, as the timed loop runs it."""
    forward_backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: time full steps and ``step()`` of one workload with one optimizer."""
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    try:
        model, workload = _build(spec, device)
        opt = registry.build(spec["name"], list(model.parameters()), lr=1e-3, foreach=True)

        def forward_backward() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = workload.loss(model, device)
            loss.backward()

        for _ in range(spec["warmup"]):
            _train_step(forward_backward, opt)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(spec["steps"]):
            _train_step(forward_backward, opt)
        sync()
        full_s = (time.perf_counter() - start) / spec["steps"]
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        step_times = _time_steps(forward_backward, opt, spec["steps"], sync, device.type == "cuda")
        full_profile = profile_kernels(lambda: _train_step(forward_backward, opt), device)
        forward_backward()
        step_profile = profile_kernels(opt.step, device)
    except torch.OutOfMemoryError:
        return {"error": "does not fit", "fits": False}
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise RuntimeError("non-finite parameters after the benchmark steps")
    return {
        "full_step_ms": full_s * 1e3,
        **step_times,
        "peak_bytes": peak,
        "state_bytes": optimizer_state_bytes(opt),
        **_gpu_fields(step_profile, full_profile),
        "params": sum(p.numel() for p in model.parameters()),
        "fits": True,
    }


def _time_steps(
    forward_backward: Callable[[], None], opt: torch.optim.Optimizer, steps: int, sync: Callable[[], None], cuda: bool
) -> dict[str, Any]:
    """``step()`` alone, ``steps`` times, each after a forward and backward pass and a sync: the median
    time until the device is done (synced again), the time until ``step()`` returns (on CUDA its host
    part: the kernels run on), and on CUDA the span on the GPU's clock between events recorded just
    before and just after the call: the same work, without the time the synchronize takes to return."""
    step_s, host_s, event_ms = [], [], []
    for _ in range(steps):
        forward_backward()
        sync()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else []
        start = time.perf_counter()
        if events:
            events[0].record()  # after ``start``: the span lies inside the wall time
        opt.step()
        host_s.append(time.perf_counter() - start)
        if events:
            events[1].record()
        sync()
        step_s.append(time.perf_counter() - start)
        if events:
            event_ms.append(events[0].elapsed_time(events[1]))
        opt.zero_grad(set_to_none=True)
    return {
        "step_ms": statistics.median(step_s) * 1e3,
        "step_samples_ms": [s * 1e3 for s in step_s],
        "step_host_ms": statistics.median(host_s) * 1e3,
        "step_event_ms": statistics.median(event_ms) if event_ms else None,
    }


def _gpu_fields(step: dict[str, Any] | None, full_step: dict[str, Any] | None) -> dict[str, Any]:
    """A row's GPU columns from the profiles of one ``step()`` and one full step (None on CPU)."""
    if step is None or full_step is None:
        return dict.fromkeys(("launches_per_step", "step_gpu_ms", "full_step_gpu_ms", "step_kernels"))
    return {
        "launches_per_step": step["launches"],
        "step_gpu_ms": step["gpu_ms"],
        "full_step_gpu_ms": full_step["gpu_ms"],
        "step_kernels": step["kernels"],
    }


def _cell(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


_PER_ROUND = ("step_ms", "full_step_ms", "step_host_ms", "step_event_ms", "step_gpu_ms")  # kept for each round of a row


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One workload and optimizer's row from its rounds (fresh processes): ``step()`` the median of every
    round's steps, the full step and the host part the median of the rounds', the highest peak; each
    round's own figures kept under ``rounds``. A round that failed makes the row its error."""
    failed = next((r for r in rounds if "error" in r), None)
    if failed is not None:
        return failed
    row = {**rounds[-1], "step_samples_ms": [ms for r in rounds for ms in r["step_samples_ms"]]}
    row["step_ms"] = statistics.median(row["step_samples_ms"])
    for key in ("full_step_ms", "step_host_ms", "step_event_ms"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        row[key] = statistics.median(values) if len(values) == len(rounds) else None
    if row["peak_bytes"] is not None:
        row["peak_bytes"] = max(r["peak_bytes"] for r in rounds)
    row["rounds"] = [{k: r.get(k) for k in _PER_ROUND} for r in rounds]
    return row


def _ratio(row: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    """``row[key]`` over the baseline's; with rounds, the range of the ratios paired within a round."""
    if base is None:
        return "-"
    text = _cell(row[key] / base[key], 2)
    paired = [r[key] / b[key] for r, b in zip(row["rounds"], base["rounds"], strict=False)]
    return f"{text} ({min(paired):.2f}-{max(paired):.2f})" if len(paired) > 1 else text


def _table(group: list[dict[str, Any]]) -> str:
    """One workload's rows; ratios against AdamW(fused) measured in the same run."""
    base = next((r for r in group if r["name"] == "adamw-fused" and "error" not in r), None)
    header = (
        "optimizer", "`step()` ms", "x AdamW(fused)", "full step ms", "x AdamW(fused)", "peak GiB", "state MiB",
        "launches / step", "`step()` returns, ms", "`step()` by CUDA events, ms", "`step()` GPU ms", "full step GPU ms",
    )  # fmt: skip
    body: list[tuple[str, ...]] = []
    for r in group:
        if "error" in r:
            body.append((r["label"], r["error"]))
            continue
        launches = r["launches_per_step"]
        body.append(
            (
                r["label"],
                _cell(r["step_ms"], 2),
                _ratio(r, base, "step_ms"),
                _cell(r["full_step_ms"]),
                _ratio(r, base, "full_step_ms"),
                _cell(r["peak_bytes"], 2, 1024**3),
                _cell(r["state_bytes"], 1, 1024**2),
                str(launches) if launches is not None else "-",
                _cell(r.get("step_host_ms"), 2),
                _cell(r.get("step_event_ms"), 2),
                _cell(r.get("step_gpu_ms"), 2),
                _cell(r.get("full_step_gpu_ms")),
            )
        )
    return markdown_table(header, body)


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One table per workload; ratios against AdamW(fused) measured in the same run."""
    lines = [
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}. Command: `{meta['command']}`",
        f"Full step: mean of {meta['steps']} back-to-back steps after {meta['warmup']} warm-up steps (bf16 autocast); "
        "`step()`: median of as many, synced before and after; `step()` returns: the median time until it returns "
        "(on CUDA, its host part: the kernels run on); by CUDA events: the median span on the GPU's clock between "
        "events recorded just before and after `step()` (its host part and its kernels, not the synchronize's return). "
        "Each row in a fresh process. GPU ms: the kernels' busy time in one profiled step (torch.profiler).",
    ]
    if meta["rounds"] > 1:
        lines[-1] += (
            f" {meta['rounds']} rounds, each a fresh process per row, the optimizers' order reversed every other "
            "round: `step()` is the median of all rounds' steps, the full step the median of the rounds' means, and "
            "(in brackets) the lowest and highest of the ratios paired within a round."
        )
    for workload in dict.fromkeys(r["workload"] for r in rows):
        group = [r for r in rows if r["workload"] == workload]
        lines += ["", f"#### {WORKLOADS[workload].label}", "", _table(group)]
    return "\n".join(lines) + "\n"


def _choices(text: str | None, default: tuple[str, ...], valid: Any, what: str) -> list[str]:
    return check_names(split_names(text) if text else list(default), valid, what)


def run(args: argparse.Namespace) -> int:
    """Every workload with every optimizer, each in a fresh process, ``--rounds`` times over; writes
    bench-train.md and .json."""
    device = resolve_device(args.device)
    workloads = _choices(args.set, CUDA_WORKLOADS if device.type == "cuda" else CPU_WORKLOADS, WORKLOADS, "workload")
    names = _choices(args.optimizers, TRAIN_OPTIMIZERS, registry.NAMES, "optimizer")
    if min(args.steps, args.warmup, args.rounds, args.threads or 1) < 1:
        raise UsageError("--steps, --warmup, --rounds and --threads must be >= 1 in train mode")
    out = writable_dir(Path(args.out or f"runs/bench-train-{device.type}"), "--out")
    meta = {
        "machine": machine(str(device), args.threads),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "command": f"{command_prefix()}smmf bench --mode train --device {device} --set {','.join(workloads)} "
        f"--optimizers {','.join(names)} --steps {args.steps} --warmup {args.warmup} --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads else ""),
    }
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    rows: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        order = names if round_ % 2 == 0 else names[::-1]  # ABBA: a drift over the run hits both alike
        for workload, name in ((w, n) for w in workloads for n in order):
            done = results.setdefault((workload, name), [])
            if done and "error" in done[-1]:
                continue
            spec = {"workload": workload, "name": name, "device": str(device), "steps": args.steps}
            spec.update(warmup=args.warmup, threads=args.threads)
            done.append(run_worker(spec, module="smmf.commands.bench_train", function="measure"))
            print(
                f"[round {round_ + 1}/{args.rounds}] [{workload}] {name}: {_status(done[-1])}",
                file=sys.stderr,
                flush=True,
            )
            rows = _rows(workloads, names, results)
            # rewritten after every process: a run cut short keeps what it measured
            write_report(out, "bench-train", markdown(meta, rows), meta, rows)
    print(markdown(meta, rows))
    return 0


def _status(result: dict[str, Any]) -> str:
    return result.get("error") or f"step {result['step_ms']:.2f} ms, full step {result['full_step_ms']:.1f} ms"


def _rows(
    workloads: list[str], names: list[str], results: dict[tuple[str, str], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The pooled rows measured so far, workload by workload in the optimizers' given order."""
    return [
        {"workload": w, "name": n, "label": registry.OPTIMIZERS[n].label, **pooled(results[w, n])}
        for w in workloads
        for n in names
        if (w, n) in results
    ]
