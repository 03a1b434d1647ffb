"""``smmf bench`` / ``python -m smmf.bench``: optimizer step time and memory, side by side, on real model shapes.

Every optimizer runs in fresh subprocesses of its own (one for timing and, on CPU, one for memory), so
that one optimizer's compile caches, allocator pools and RSS high-water mark cannot leak into another's
numbers; the parent only collects the JSON each worker writes and renders a markdown table, a JSON file
and a PNG chart. Parameter sets are
built from shapes alone (models on the meta device), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import extras
from .cli import UsageError, writable_dir

__all__ = ["PARAM_SETS", "OPTIMIZERS", "register", "run_worker", "run", "main"]

Shape = tuple[int, ...]


# ----------------------------------------------------------------------------- parameter sets


def _tiny() -> list[Shape]:
    """A few small tensors covering the kernel paths (square, wide, prime, 1-D); for smoke tests."""
    return [(64, 32), (32,), (16, 3, 3, 3), (16,), (10, 64), (10,), (97,)]


def _torchvision(name: str) -> Callable[[], list[Shape]]:
    def shapes() -> list[Shape]:
        import torchvision.models

        with torch.device("meta"):
            model = getattr(torchvision.models, name)(num_classes=100)
        return [tuple(p.shape) for p in model.parameters()]

    return shapes


def _gpt2() -> list[Shape]:
    import transformers

    transformers.logging.set_verbosity_error()
    with torch.device("meta"):
        model = transformers.GPT2Model(transformers.GPT2Config())
    return [tuple(p.shape) for p in model.parameters()]


PARAM_SETS: dict[str, Callable[[], list[Shape]]] = {
    "tiny": _tiny,
    "resnet50": _torchvision("resnet50"),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "gpt2": _gpt2,
}


# ----------------------------------------------------------------------------- optimizers

_LR = 1e-3


_NO_REFERENCE = "benchmarks/reference_smmf.py not found in this package's own checkout (run from an smmf checkout)"


def _reference_path() -> Path | None:
    """benchmarks/reference_smmf.py of the checkout this package runs from, or None.

    Only the package's own checkout counts: the folder two levels above this file (``src/smmf/``) must
    hold a pyproject.toml naming the project ``smmf``, and the baseline must be a regular file inside
    it. Never the working directory: a file planted there must not run.
    """
    root = Path(__file__).resolve().parents[2]
    path = root / "benchmarks" / "reference_smmf.py"
    try:
        pyproject = (root / "pyproject.toml").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    ours = re.search(r'^\[project\][^\[]*^name\s*=\s*"smmf"\s*$', pyproject, re.MULTILINE)
    if ours is None or path.is_symlink() or not path.is_file():
        return None
    return path if path.resolve().is_relative_to(root) else None


def _reference(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    path = _reference_path()
    if path is None:
        raise RuntimeError(_NO_REFERENCE)
    spec = importlib.util.spec_from_file_location("reference_smmf", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReferenceSMMF(params, lr=_LR)


def _smmf(**kwargs: Any) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    def build(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        from smmf import SMMF

        return SMMF(params, lr=_LR, **kwargs)

    return build


def _pytorch_optimizer(name: str) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    def build(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        import pytorch_optimizer

        return getattr(pytorch_optimizer, name)(params, lr=_LR)

    return build


# name -> (label, builder). Labels say what runs; names are what --optimizers takes.
OPTIMIZERS: dict[str, tuple[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]] = {
    "smmf": ("SMMF 1-bit (auto: Triton on CUDA, inductor on CPU)", _smmf()),
    "smmf8": ("SMMF 8-bit (auto)", _smmf(sign_bits=8)),
    "smmf-triton": ("SMMF 1-bit (Triton)", _smmf(backend="triton")),
    "smmf-inductor": ("SMMF 1-bit (inductor)", _smmf(backend="inductor")),
    "smmf-eager": ("SMMF 1-bit (eager)", _smmf(backend="eager")),
    "reference": ("reference SMMF (eager)", _reference),
    "adam": ("torch Adam (foreach)", lambda ps: torch.optim.Adam(ps, lr=_LR, foreach=True)),
    "adamw": ("torch AdamW (foreach)", lambda ps: torch.optim.AdamW(ps, lr=_LR, foreach=True)),
    "adamw-fused": ("torch AdamW (fused)", lambda ps: torch.optim.AdamW(ps, lr=_LR, fused=True)),
    "adafactor": ("torch Adafactor (foreach)", lambda ps: torch.optim.Adafactor(ps, lr=_LR, foreach=True)),
    "came": ("CAME (pytorch-optimizer)", _pytorch_optimizer("CAME")),
    "sm3": ("SM3 (pytorch-optimizer)", _pytorch_optimizer("SM3")),
}

DEFAULT_OPTIMIZERS = ("smmf", "smmf8", "smmf-eager", "reference", "adam", "adamw", "adafactor", "came", "sm3")
_BASELINE = "adam"


# ----------------------------------------------------------------------------- CPU memory probes


def _proc_status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return int(match.group(1))


def _reset_rss_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


# Set in the memory worker's environment before it starts: glibc then serves every block over 64 KiB
# with its own mmap and unmaps it on free. With the default adaptive threshold (up to 32 MiB) freed
# temporaries stay in the heap, and whether a step's temporaries raise the RSS depends on the holes
# earlier steps left there; measured here, the same reference step read anywhere from 20 to 190 MiB.
# Timing runs in a separate process with the default allocator, so that no optimizer pays for page
# faults it would not see in training.
_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
_MEMORY_STEPS = 3  # the median of a few steps, against page-reclaim noise


# ----------------------------------------------------------------------------- worker (one optimizer, fresh process)


def _setup(name: str, shapes: Sequence[Sequence[int]], device: torch.device) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    torch.manual_seed(0)
    params = [torch.randn(tuple(s), device=device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params, OPTIMIZERS[name][1](params)


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: step times after warm-up (mode "time") or one step's extra memory ("memory").

    On CUDA both come from the timing process: max_memory_allocated is exact whatever ran before.
    """
    from smmf import optimizer_state_bytes

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    params, opt = _setup(spec["name"], spec["shapes"], dev)

    def timed_steps(count: int) -> list[float]:
        seconds = []
        for _ in range(count):
            t0 = time.perf_counter()
            opt.step()
            sync()
            seconds.append(time.perf_counter() - t0)
        return seconds

    result: dict[str, Any] = {"warmup_s": timed_steps(spec["warmup"])}
    if spec["mode"] == "time":
        result["step_s"] = timed_steps(spec["steps"])
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        opt.step()
        sync()
        result["peak_extra_bytes"] = torch.cuda.max_memory_allocated(dev) - before
    elif spec["mode"] == "memory":
        peaks = []
        for _ in range(_MEMORY_STEPS):
            gc.collect()
            _reset_rss_peak()
            before = _proc_status_kib("VmRSS")
            opt.step()
            peaks.append(max(0, _proc_status_kib("VmHWM") - before) * 1024)
        result["peak_extra_bytes_all"] = peaks
        result["peak_extra_bytes"] = statistics.median(peaks)
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise RuntimeError("non-finite parameters after the benchmark steps")
    result["state_bytes"] = optimizer_state_bytes(opt)
    return result


def _worker_cli() -> None:
    """Entry of a worker subprocess: argv = [spec JSON, output path]."""
    Path(sys.argv[2]).write_text(json.dumps(_measure(json.loads(sys.argv[1]))))


def run_worker(spec: dict[str, Any], extra_env: dict[str, str] | None = None, module: str = "smmf.bench") -> dict[str, Any]:
    """Run one measurement (``module``'s ``_worker_cli``) in a fresh interpreter; returns its result or
    ``{"error": ...}``."""
    env = {**os.environ, **(extra_env or {})}
    src = str(Path(__file__).resolve().parents[1])  # the import root of this smmf, so the child imports the same one
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        code = f"from {module} import _worker_cli; _worker_cli()"
        proc = subprocess.run(  # cwd: ``-c`` puts the working directory first on sys.path
            [sys.executable, "-c", code, json.dumps(spec), str(out)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
            return {"error": lines[-1] if lines else f"worker exited with {proc.returncode}"}
        return json.loads(out.read_text())


def _memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak extra RSS of one step, in a fresh process of its own with mmap-backed allocations (CPU)."""
    memory = run_worker({**spec, "mode": "memory", "warmup": min(2, max(1, spec["warmup"]))}, _MEMORY_ENV)
    if "error" in memory:
        return {"error": f"memory run: {memory['error']}"}
    return {k: memory[k] for k in ("peak_extra_bytes", "peak_extra_bytes_all")}


# ----------------------------------------------------------------------------- report


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(device: str, threads: int | None) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, host {_cpu_model()} ({os.cpu_count()} CPUs)"
    return f"{_cpu_model()}, {os.cpu_count()} CPUs, {threads or torch.get_num_threads()} torch threads"


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    mib = 1024**2
    lines = [
        f"### `{meta['set']}` on {meta['device']}",
        "",
        f"{meta['tensors']} tensors, {meta['params'] / 1e6:.1f}M parameters, largest {meta['largest_shape']} "
        f"= {meta['largest_bytes'] / mib:.1f} MiB. Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}.",
        f"Step time: median of {meta['rounds']} x {meta['steps']} steps after {meta['warmup']} warm-up steps "
        f"(per process, compilation included), each optimizer in fresh processes. Load average at start / end: "
        f"{meta['load_average_start'][0]:.2f} / {meta['load_average_end'][0]:.2f}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| optimizer | step ms (median) | p25-p75 ms | x Adam | state B/param | state MiB | peak extra MiB "
        "| peak extra / largest param | warm-up s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error']} | | | | | | | |")
            continue
        low, high = r["step_ms_iqr"]
        lines.append(
            f"| {r['label']} | {_fmt(r['step_ms'], 1)} | {low:.1f}-{high:.1f} | {_fmt(r['ratio_to_adam'], 2)} "
            f"| {_fmt(r['state_bytes_per_param'], 3)} | {_fmt(r['state_bytes'] / mib, 1)} "
            f"| {_fmt(r['peak_extra_bytes'] / mib, 1)} | {_fmt(r['peak_extra_over_largest'], 3)} "
            f"| {_fmt(sum(r['warmup_s']), 1)} |"
        )
    return "\n".join(lines) + "\n"


def _chart(meta: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    ok = [r for r in rows if "error" not in r]
    labels = [r["label"] for r in ok]
    panels = [
        ("step time / Adam(foreach)", [r["ratio_to_adam"] for r in ok], 1.0, True),
        ("state bytes / param", [r["state_bytes_per_param"] for r in ok], None, True),
        ("peak extra / largest param", [r["peak_extra_over_largest"] for r in ok], 0.25, False),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(ok) + 1.6), sharey=True)
    for ax, (title, values, line, log) in zip(axes, panels):
        clean = [v if v is not None and not math.isnan(v) else 0.0 for v in values]
        if log:  # a zero bar has no place on a log axis
            clean = [max(v, 1e-3) for v in clean]
        colors = ["tab:blue" if label.startswith("SMMF") else "tab:gray" for label in labels]
        ax.barh(labels, clean, color=colors)
        for y, v in enumerate(clean):
            ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
        if line is not None:
            ax.axvline(line, color="tab:red", linestyle="--", linewidth=1)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
    axes[0].invert_yaxis()
    fig.suptitle(f"{meta['set']} on {meta['device']} ({meta['machine']}), {meta['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=("step", "train"),
        default="step",
        help="step: optimizer step() alone on a model's parameter shapes; train: whole training steps of real "
        "models (forward, backward, step), with peak memory and kernel launches (default step)",
    )
    parser.add_argument(
        "--set",
        default=None,
        help=f"step mode: a parameter set, {', '.join(PARAM_SETS)} (default resnet50); train mode: comma-separated "
        "workloads, resnet50, gpt2, llama-7b, tiny-cnn, tiny-llama (default: the first three on CUDA, the tiny ones on CPU)",
    )
    parser.add_argument(
        "--optimizers",
        default=None,
        help=f"comma-separated names from: {', '.join(OPTIMIZERS)} "
        f"(default: {','.join(DEFAULT_OPTIMIZERS)}, plus adamw-fused on CUDA)",
    )
    parser.add_argument("--steps", type=int, default=15, help="timed steps; the median is reported (default 15)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first, which include compilation (default 3)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the timing runs round-robin over the optimizers and pool the steps (default 1)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads in each worker (default: torch's choice)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--out", default=None, help="output folder (default runs/bench-<set>-<device>)")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "bench",
        help="optimizer step time and memory side by side on a model's parameter shapes",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _fail(message: str) -> int:
    print(f"smmf bench: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Benchmark the chosen optimizers on the chosen set; writes bench.md, bench.json and bench.png."""
    if args.mode == "train":
        from . import bench_train

        return bench_train.run(args)
    args.set = args.set or "resnet50"
    if args.set not in PARAM_SETS:
        return _fail(f"unknown parameter set {args.set!r} (valid: {', '.join(PARAM_SETS)})")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        return _fail(f"unknown device {device!r} (valid: cpu, cuda, cuda:N, auto)")
    if dev.type not in ("cpu", "cuda"):
        return _fail(f"unknown device {device!r} (valid: cpu, cuda, cuda:N, auto)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        return _fail("CUDA is not available here (use --device cpu)")
    if args.optimizers is None:
        names = list(DEFAULT_OPTIMIZERS) + (["adamw-fused"] if dev.type == "cuda" else [])
    else:
        names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown or not names:
        return _fail(f"unknown optimizer {', '.join(map(repr, unknown)) or '(none)'} (valid: {', '.join(OPTIMIZERS)})")
    if min(args.steps, args.rounds) < 1 or (args.threads is not None and args.threads < 1) or args.warmup < 0:
        return _fail("--steps, --rounds and --threads must be >= 1, --warmup >= 0")
    missing = extras.missing(extras.bench_needs(args.set, names))
    if missing:
        return _fail(extras.message("this benchmark", missing))
    out = Path(args.out or f"runs/bench-{args.set}-{dev.type}")
    try:
        writable_dir(out, "--out")
    except UsageError as exc:
        return _fail(str(exc))

    shapes = PARAM_SETS[args.set]()
    numels = [math.prod(s) for s in shapes]
    n_params = sum(numels)
    largest = max(range(len(shapes)), key=lambda i: numels[i])
    largest_bytes = numels[largest] * 4  # float32 parameters
    meta = {
        "set": args.set,
        "device": device,
        "machine": _machine(device, args.threads),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
        "command": " ".join(["smmf bench", *_argv_for(args, names, device)]),
        "tensors": len(shapes),
        "params": n_params,
        "largest_shape": list(shapes[largest]),
        "largest_bytes": largest_bytes,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "load_average_start": list(os.getloadavg()),
    }

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "reference" and _reference_path() is None:
            results[name] = {"error": _NO_REFERENCE}
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
                result.update(_memory(spec))
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

    rows: list[dict[str, Any]] = []
    for name in names:
        row = {"name": name, "label": OPTIMIZERS[name][0], **results[name]}
        if "error" not in row:
            quartiles = statistics.quantiles(row["step_s"], n=4) if len(row["step_s"]) > 1 else row["step_s"] * 3
            row["step_ms"] = statistics.median(row["step_s"]) * 1e3
            row["step_ms_iqr"] = [quartiles[0] * 1e3, quartiles[2] * 1e3]
            row["state_bytes_per_param"] = row["state_bytes"] / n_params
            row["peak_extra_over_largest"] = row["peak_extra_bytes"] / largest_bytes
        rows.append(row)
    meta["load_average_end"] = list(os.getloadavg())
    adam_ms = next((r["step_ms"] for r in rows if r["name"] == _BASELINE and "error" not in r), None)
    for r in rows:
        if "error" not in r:
            r["ratio_to_adam"] = r["step_ms"] / adam_ms if adam_ms else None

    report = _markdown(meta, rows)
    (out / "bench.md").write_text(report)
    (out / "bench.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    _chart(meta, rows, out / "bench.png")
    print(report)
    print(f"wrote {out}/bench.md, bench.json, bench.png", file=sys.stderr)
    return 0


def _argv_for(args: argparse.Namespace, names: Sequence[str], device: str) -> list[str]:
    """The arguments that reproduce this run, defaults spelled out."""
    argv = ["--set", args.set, "--device", device, "--optimizers", ",".join(names)]
    argv += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    return argv + (["--out", str(args.out)] if args.out else [])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smmf.bench``: the same options as ``smmf bench``."""
    parser = argparse.ArgumentParser(prog="python -m smmf.bench", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
