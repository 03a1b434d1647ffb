"""``smmf bench``: optimizer step time and memory, side by side, on real model shapes.

Every optimizer of the registry (:mod:`smmf.commands.registry`, including the SMMF variants with a fixed
backend and the reference) runs in fresh subprocesses of its own (:mod:`smmf.commands.bench_worker`); the
parent collects their JSON and renders a markdown table, a JSON file and a PNG chart. Parameter sets are
built from shapes alone (models on the meta device, :mod:`smmf.commands.models`), so nothing is
downloaded. ``--mode train`` times whole training steps instead (:mod:`smmf.commands.bench_train`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import bench_chart, bench_memory, bench_train, registry
from .bench_worker import command_prefix, machine, measure_memory, run_worker
from .common import UsageError, check_names, markdown_table, resolve_device, split_names, writable_dir, write_report
from .models import build_meta_model, meta_shapes

__all__ = ["PARAM_SETS", "DEFAULT_OPTIMIZERS", "register", "run"]

Shape = tuple[int, ...]


def _tiny() -> list[Shape]:
    """A few small tensors covering the kernel paths (square, wide, prime, 1-D); for smoke tests."""
    return [(64, 32), (32,), (16, 3, 3, 3), (16,), (10, 64), (10,), (97,)]


PARAM_SETS: dict[str, Callable[[], list[Shape]]] = {
    "tiny": _tiny,
    "resnet50": lambda: meta_shapes(build_meta_model("resnet50", 100)),
    "mobilenet_v2": lambda: meta_shapes(build_meta_model("mobilenet_v2", 100)),
    "gpt2": lambda: meta_shapes(build_meta_model("gpt2")),
}
DEFAULT_OPTIMIZERS = ("smmf", "smmf8", "smmf-eager", "reference", "adam", "adamw", "adafactor", "came", "sm3")
_BASELINE = "adam"


# ----------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    mib = 1024**2
    header = (
        "optimizer", "step ms (median)", "p25-p75 ms", "x Adam", "state B/param", "state MiB", "peak extra MiB",
        "peak extra / largest param", "warm-up s",
    )  # fmt: skip
    body: list[Sequence[str]] = []
    for r in rows:
        if "error" in r:
            body.append((r["label"], f"failed: {r['error']}"))
            continue
        low, high = r["step_ms_iqr"]
        body.append(
            (
                r["label"],
                _fmt(r["step_ms"], 1),
                f"{low:.1f}-{high:.1f}",
                _fmt(r["ratio_to_adam"], 2),
                _fmt(r["state_bytes_per_param"], 3),
                _fmt(r["state_bytes"] / mib, 1),
                _fmt(r["peak_extra_bytes"] / mib, 1),
                _fmt(r["peak_extra_over_largest"], 3),
                _fmt(sum(r["warmup_s"]), 1),
            )
        )
    lines = [
        f"### `{meta['set']}` on {meta['device']}",
        "",
        f"{meta['tensors']} tensors, {meta['params'] / 1e6:.1f}M parameters, largest {meta['largest_shape']} "
        f"= {meta['largest_bytes'] / mib:.1f} MiB. Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}.",
        f"Step time: median of {meta['rounds']} x {meta['steps']} steps after {meta['warmup']} warm-up steps "
        f"(per process, compilation included), each optimizer in fresh processes; torch's optimizers with "
        f"foreach=True. Load average at start / end: "
        f"{meta['load_average_start'][0]:.2f} / {meta['load_average_end'][0]:.2f}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        markdown_table(header, body),
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


_TIMING_DEFAULTS = {"steps": 15, "warmup": 3, "rounds": 1}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=("step", "train", "memory"),
        default="step",
        help="step: optimizer step() alone on a model's parameter shapes; train: whole training steps of real "
        "models (forward, backward, step), with peak memory and kernel launches; memory: the peak memory of a "
        "training step of Llama-shaped models, per way of training (--set models, --optimizers ways; "
        "default step)",
    )
    parser.add_argument(
        "--set",
        default=None,
        help=f"step mode: a parameter set, {', '.join(PARAM_SETS)} (default resnet50); train mode: comma-separated "
        "workloads, resnet50, resnet50-cl (channels-last), gpt2, llama-7b, tiny-cnn, tiny-llama (default: resnet50, "
        "gpt2 and llama-7b on CUDA, the tiny ones on CPU)",
    )
    parser.add_argument(
        "--optimizers",
        default=None,
        help=f"comma-separated names from: {', '.join(registry.NAMES)} "
        f"(default: {','.join(DEFAULT_OPTIMIZERS)}, plus adamw-fused on CUDA)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"step and train modes: timed steps; the median is reported (default {_TIMING_DEFAULTS['steps']})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="step and train modes: untimed steps first, which include compilation "
        f"(default {_TIMING_DEFAULTS['warmup']})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="step and train modes: repeat the timing runs round-robin over the optimizers, each in a fresh process, "
        f"and pool the steps (default {_TIMING_DEFAULTS['rounds']})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="step and train modes: torch CPU threads in each worker (default: torch's choice)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--out", default=None, help="output folder (default runs/bench-<set>-<device>)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "bench",
        help="optimizer step time and memory side by side on a model's parameter shapes",
        description="Optimizer step time and memory, side by side, on real model shapes.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _check(args: argparse.Namespace) -> tuple[torch.device, list[str], Path]:
    """The device, optimizer names and output folder of a step-mode run; UsageError for bad arguments."""
    args.set = args.set or "resnet50"
    check_names([args.set], PARAM_SETS, "parameter set")
    device = resolve_device(args.device)
    if args.optimizers is None:
        names = list(DEFAULT_OPTIMIZERS) + (["adamw-fused"] if device.type == "cuda" else [])
    else:
        names = check_names(split_names(args.optimizers), registry.NAMES, "optimizer")
    if min(args.steps, args.rounds) < 1 or (args.threads is not None and args.threads < 1) or args.warmup < 0:
        raise UsageError("--steps, --rounds and --threads must be >= 1, --warmup >= 0")
    out = writable_dir(Path(args.out or f"runs/bench-{args.set}-{device.type}"), "--out")
    return device, names, out


def _meta(args: argparse.Namespace, shapes: list[Shape], names: Sequence[str], device: str) -> dict[str, Any]:
    numels = [math.prod(s) for s in shapes]
    largest = max(range(len(shapes)), key=lambda i: numels[i])
    return {
        "set": args.set,
        "device": device,
        "machine": machine(device, args.threads),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
        "command": command_prefix() + " ".join(["smmf bench", *_argv_for(args, names, device)]),
        "tensors": len(shapes),
        "params": sum(numels),
        "largest_shape": list(shapes[largest]),
        "largest_bytes": numels[largest] * 4,  # float32 parameters
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "load_average_start": list(os.getloadavg()),
    }


def _measure_all(args: argparse.Namespace, shapes: list[Shape], names: Sequence[str], device: str) -> dict[str, Any]:
    """Every optimizer's worker results, pooled over the rounds (or its error)."""
    results: dict[str, dict[str, Any]] = {}
    if "reference" in names and registry.reference_path() is None:
        results["reference"] = {"error": registry.NO_REFERENCE}
    # Round-robin over optimizers, so that a burst of load from elsewhere hits all of them alike.
    for round_ in range(args.rounds):
        for i, name in enumerate(names, 1):
            if "error" in results.get(name, {}):
                continue
            spec = {"name": name, "shapes": shapes, "device": device, "steps": args.steps, "warmup": args.warmup}
            spec.update(threads=args.threads, mode="time")
            t0 = time.perf_counter()
            result = run_worker(spec)
            if "error" not in result and round_ == 0 and not device.startswith("cuda"):
                result.update(measure_memory(spec))
            wall = time.perf_counter() - t0
            if "error" in result:
                results[name] = result
                status = f"failed: {result['error']}"
            else:
                row = results.setdefault(name, {**result, "step_s": [], "wall_s": 0.0})
                row["step_s"] += result["step_s"]
                row["wall_s"] += wall
                status = f"{statistics.median(result['step_s']) * 1e3:.1f} ms/step ({wall:.0f} s)"
            print(f"[round {round_ + 1}/{args.rounds}, {i}/{len(names)}] {name}: {status}", file=sys.stderr, flush=True)
    return results


def _rows(names: Sequence[str], results: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per optimizer: medians, quartiles, ratios to Adam, memory per parameter."""
    rows: list[dict[str, Any]] = []
    for name in names:
        row = {"name": name, "label": registry.OPTIMIZERS[name].label, **results[name]}
        if "error" not in row:
            quartiles = statistics.quantiles(row["step_s"], n=4) if len(row["step_s"]) > 1 else row["step_s"] * 3
            row["step_ms"] = statistics.median(row["step_s"]) * 1e3
            row["step_ms_iqr"] = [quartiles[0] * 1e3, quartiles[2] * 1e3]
            row["state_bytes_per_param"] = row["state_bytes"] / meta["params"]
            row["peak_extra_over_largest"] = row["peak_extra_bytes"] / meta["largest_bytes"]
        rows.append(row)
    adam_ms = next((r["step_ms"] for r in rows if r["name"] == _BASELINE and "error" not in r), None)
    for r in rows:
        if "error" not in r:
            r["ratio_to_adam"] = r["step_ms"] / adam_ms if adam_ms else None
    return rows


def _timing_options(args: argparse.Namespace) -> None:
    """Fill in the timing options' defaults; memory mode times its own fixed steps and takes none of them."""
    given = [f"--{name}" for name in (*_TIMING_DEFAULTS, "threads") if getattr(args, name) is not None]
    if args.mode == "memory" and given:
        raise UsageError(f"{', '.join(given)}: not an option of --mode memory (it times a fixed number of steps)")
    for name, default in _TIMING_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def run(args: argparse.Namespace) -> int:
    """Benchmark the chosen optimizers on the chosen set; writes bench.md, bench.json and bench.png."""
    _timing_options(args)
    if args.mode == "train":
        return bench_train.run(args)
    if args.mode == "memory":
        return bench_memory.run(args)
    dev, names, out = _check(args)
    device = args.device if args.device != "auto" else dev.type
    shapes = PARAM_SETS[args.set]()
    meta = _meta(args, shapes, names, device)
    results = _measure_all(args, shapes, names, device)
    meta["load_average_end"] = list(os.getloadavg())
    rows = _rows(names, results, meta)
    report = _markdown(meta, rows)
    write_report(out, "bench", report, meta, rows)
    bench_chart.chart(meta, rows, out / "bench.png")
    print(report)
    print(f"wrote {out}/bench.md, bench.json, bench.png", file=sys.stderr)
    return 0


def _argv_for(args: argparse.Namespace, names: Sequence[str], device: str) -> list[str]:
    """The arguments that reproduce this run, defaults spelled out."""
    argv = ["--set", args.set, "--device", device, "--optimizers", ",".join(names)]
    argv += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    return argv + (["--out", str(args.out)] if args.out else [])
