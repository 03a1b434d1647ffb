"""``smmf bench``: a run end to end on a tiny set, one-line errors, and the parameter sets' shapes."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import benchmark_modules
from smmf.commands import bench, bench_train
from smmf.commands.main import main


def test_tiny_run_writes_table_json_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--set", "tiny", "--device", "cpu", "--optimizers", "smmf-eager,adam,reference"]
    rc = main(["bench", *argv, "--steps", "2", "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    assert {"bench.md", "bench.json", "bench.png"} <= {p.name for p in tmp_path.iterdir()}
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"smmf-eager", "adam", "reference"}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["adam"]["ratio_to_adam"] == 1.0
    assert all(len(r["step_s"]) == 2 and r["peak_extra_bytes"] >= 0 for r in rows.values())
    # packed 1-bit sign + factors < bool sign + factors < two dense fp32 moments
    per_param = {k: r["state_bytes_per_param"] for k, r in rows.items()}
    assert per_param["smmf-eager"] < per_param["reference"] < per_param["adam"]
    assert "| Adam |" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--set", "resnet5"], "unknown parameter set 'resnet5'; valid: tiny, resnet50"),
        (["--set", "tiny", "--optimizers", "adam,lion"], "unknown optimizer 'lion'; valid: adam,"),
        (["--set", "tiny", "--device", "tpu"], "unknown device 'tpu'"),
        (["--set", "tiny", "--steps", "0"], "--steps, --rounds and --threads must be >= 1"),
    ],
)
def test_bad_arguments_give_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_register_adds_the_bench_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="smmf")
    bench.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--set", "gpt2", "--steps", "12"])
    assert args.func is bench.run and args.set == "gpt2" and args.steps == 12


@pytest.mark.parametrize(
    ("name", "tensors", "params"),
    [("resnet50", 161, 23_712_932), ("mobilenet_v2", 158, 2_351_972), ("gpt2", 148, 124_439_808)],
)
def test_parameter_sets_have_the_models_shapes(name: str, tensors: int, params: int) -> None:
    pytest.importorskip("transformers" if name == "gpt2" else "torchvision")
    shapes = bench.PARAM_SETS[name]()
    assert (len(shapes), sum(math.prod(s) for s in shapes)) == (tensors, params)


def test_train_mode_times_whole_steps_of_a_real_model_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMMF_TRITON_PASS1", "4:128:4:0:16:0:3")  # recorded in the command (no effect on eager)
    monkeypatch.setenv("SMMF_TRITON_PASS0", "8:0:2048:2")
    argv = ["--mode", "train", "--device", "cpu", "--set", "tiny-cnn", "--optimizers", "adamw-fused,smmf-eager"]
    assert main(["bench", *argv, "--steps", "1", "--warmup", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench-train.json").read_text())
    assert report["meta"]["command"].startswith(
        "SMMF_TRITON_PASS0=8:0:2048:2 SMMF_TRITON_PASS1=4:128:4:0:16:0:3 smmf bench --mode train"
    )
    rows = report["results"]
    assert [r["name"] for r in rows] == ["adamw-fused", "smmf-eager"]
    for row in rows:
        assert row["fits"] and row["step_ms"] > 0 and row["full_step_ms"] > 0 and row["params"] > 0
        assert 0 < row["step_host_ms"] <= row["step_ms"]  # on CPU step() returns when done: nearly equal
        assert row["step_event_ms"] is None  # CUDA events only on CUDA
    assert rows[1]["state_bytes"] < rows[0]["state_bytes"] / 4
    assert all(row["step_gpu_ms"] is None and row["launches_per_step"] is None for row in rows)  # no GPU here
    assert "x AdamW(fused)" in (tmp_path / "bench-train.md").read_text()


def _fake_measure(calls: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    """A stand-in for train mode's worker: every process of adamw-fused steps in 2.0 ms in the first
    round and 3.0 in the second (a slower process), smmf's 2.1 then 2.7."""
    ms = {("adamw-fused", 0): 2.0, ("adamw-fused", 1): 3.0, ("smmf", 0): 2.1, ("smmf", 1): 2.7}

    def run_worker(spec: dict, module: str, function: str) -> dict:  # type: ignore[type-arg]
        assert spec["threads"] == 1  # --threads reaches every worker
        round_ = sum(name == spec["name"] and w == spec["workload"] for w, name in calls)
        calls.append((spec["workload"], spec["name"]))
        step = ms[spec["name"], round_]
        return {
            "full_step_ms": 10 * step, "step_ms": step, "step_samples_ms": [step, step + 0.1], "step_host_ms": 0.5,
            "peak_bytes": None, "state_bytes": 8, "launches_per_step": None, "step_gpu_ms": None,
            "full_step_gpu_ms": None, "step_kernels": None, "params": 4, "fits": True,
        }  # fmt: skip

    return run_worker


def test_train_mode_rounds_alternate_the_order_and_pair_the_ratios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(bench_train, "run_worker", _fake_measure(calls))
    argv = ["--mode", "train", "--device", "cpu", "--set", "tiny-cnn", "--optimizers", "adamw-fused,smmf"]
    assert main(["bench", *argv, "--rounds", "2", "--steps", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert [name for _, name in calls] == ["adamw-fused", "smmf", "smmf", "adamw-fused"]
    report = json.loads((tmp_path / "bench-train.json").read_text())
    assert report["meta"]["rounds"] == 2 and report["meta"]["command"].endswith("--rounds 2 --threads 1")
    fused, smmf = report["results"]
    assert fused["step_samples_ms"] == [2.0, 2.1, 3.0, 3.1] and fused["step_ms"] == pytest.approx(2.55)
    assert smmf["step_ms"] == pytest.approx(2.45) and smmf["full_step_ms"] == pytest.approx(24.0)
    assert [r["step_ms"] for r in smmf["rounds"]] == [2.1, 2.7]
    # pooled 2.45 / 2.55 = 0.96; paired within a round 2.1 / 2.0 = 1.05 and 2.7 / 3.0 = 0.90
    assert (
        "| SMMF (1-bit) | 2.45 | 0.96 (0.90-1.05) | 24.0 | 0.96 (0.90-1.05) |"
        in (tmp_path / "bench-train.md").read_text()
    )


class _Event:
    """Stands in for ``torch.cuda.Event``: each ``record()`` is logged, and a span is 0.25 ms per log entry
    between its two events."""

    log: ClassVar[list[str]] = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at = -1

    def record(self) -> None:
        self.at = len(self.log)
        self.log.append("record")

    def elapsed_time(self, end: _Event) -> float:
        assert 0 <= self.at < end.at
        return 0.25 * (end.at - self.at)


def test_train_mode_times_step_between_cuda_events_recorded_around_it(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(_Event, "log", log)
    monkeypatch.setattr(torch.cuda, "Event", _Event)

    class Opt:
        def step(self) -> None:
            log.append("step")

        def zero_grad(self, set_to_none: bool = True) -> None:
            log.append("zero_grad")

    opt: Any = Opt()
    times = bench_train._time_steps(lambda: log.append("backward"), opt, 3, lambda: log.append("sync"), cuda=True)
    assert log == ["backward", "sync", "record", "step", "record", "sync", "zero_grad"] * 3
    assert times["step_event_ms"] == 0.5 and len(times["step_samples_ms"]) == 3
    assert 0 < times["step_host_ms"] <= times["step_ms"]
    log.clear()
    assert bench_train._time_steps(lambda: None, opt, 1, lambda: None, cuda=False)["step_event_ms"] is None
    assert log == ["step", "zero_grad"]  # no events off CUDA


def test_train_mode_pools_the_event_spans_only_where_every_round_has_one() -> None:
    ok = {"step_ms": 1.0, "step_samples_ms": [1.0], "full_step_ms": 2.0, "step_host_ms": 0.1, "peak_bytes": 10}
    assert bench_train.pooled([{**ok, "step_event_ms": 0.4}, {**ok, "step_event_ms": 0.6}])["step_event_ms"] == 0.5
    assert bench_train.pooled([{**ok, "step_event_ms": 0.4}, {**ok, "step_event_ms": None}])["step_event_ms"] is None
    row = bench_train.pooled([ok, {**ok, "step_event_ms": 0.6}])  # a row measured before the field existed
    assert row["step_event_ms"] is None and [r["step_event_ms"] for r in row["rounds"]] == [None, 0.6]


def test_train_mode_keeps_a_failed_round_as_the_rows_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ok = {"step_ms": 1.0, "step_samples_ms": [1.0], "full_step_ms": 2.0, "step_host_ms": 0.1, "peak_bytes": 10}
    assert bench_train.pooled([ok, {"error": "does not fit", "fits": False}])["error"] == "does not fit"
    row = bench_train.pooled([{**ok, "step_gpu_ms": 0.5}, {**ok, "peak_bytes": 30, "step_gpu_ms": 0.5}])
    assert row["peak_bytes"] == 30 and len(row["rounds"]) == 2


@pytest.mark.parametrize("option", [["--steps", "3"], ["--rounds", "2"], ["--threads", "1"]])
def test_memory_mode_rejects_the_timing_options(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--mode", "memory", "--device", "cpu", "--set", "llama-tiny", *option]) == 2
    err = capsys.readouterr().err
    assert f"{option[0]}: not an option of --mode memory" in err and "Traceback" not in err


def test_kernel_profile_adds_up_launches_and_busy_time_by_kernel() -> None:
    from smmf.commands.kernel_profile import profile_kernels, summarize

    activities = [("step_tiles", 900.0), ("check_gradients", 50.0), ("step_tiles", 700.0), ("Memcpy HtoD", 2.0)]
    summary = summarize(activities, top=2)
    assert summary["launches"] == 4
    assert summary["gpu_ms"] == pytest.approx(1.652)
    assert summary["kernels"] == [
        {"name": "step_tiles", "count": 2, "ms": pytest.approx(1.6)},
        {"name": "check_gradients", "count": 1, "ms": pytest.approx(0.05)},
    ]
    assert profile_kernels(lambda: None, torch.device("cpu")) is None


def test_train_mode_reports_out_of_memory_as_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    def too_big() -> torch.nn.Module:
        raise torch.OutOfMemoryError("CUDA out of memory")

    workload = bench_train.Workload("too big", too_big, bench_train.WORKLOADS["tiny-cnn"].loss)
    monkeypatch.setitem(bench_train.WORKLOADS, "too-big", workload)
    result = bench_train.measure({"workload": "too-big", "name": "adamw", "device": "cpu", "steps": 1, "warmup": 1})
    assert result == {"error": "does not fit", "fits": False}


def test_train_mode_gradient_checkpointing_needs_a_transformers_model(monkeypatch: pytest.MonkeyPatch) -> None:
    cnn = bench_train.WORKLOADS["tiny-cnn"]
    workload = bench_train.Workload("cnn, checkpointing", cnn.build, cnn.loss, checkpointing=True)
    monkeypatch.setitem(bench_train.WORKLOADS, "cnn-checkpointing", workload)
    with pytest.raises(TypeError, match="cnn-checkpointing: gradient checkpointing needs a transformers model"):
        bench_train._build({"workload": "cnn-checkpointing"}, torch.device("cpu"))


def test_train_mode_lays_out_a_channels_last_workload_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet50-cl's way, on the digits CNN: its convolution weights and images channels-last, so that an
    optimizer meets the strided weights such training gives it."""
    cnn = bench_train.WORKLOADS["tiny-cnn"]
    loss = bench_train._image_loss(16, 10, 8, channels=1, memory_format=torch.channels_last)
    monkeypatch.setitem(
        bench_train.WORKLOADS, "cnn-cl", bench_train.Workload("cnn", cnn.build, loss, channels_last=True)
    )
    model, workload = bench_train._build({"workload": "cnn-cl"}, torch.device("cpu"))
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert any(not p.is_contiguous() for p in weights)  # the first, of one input channel, is both
    workload.loss(model, torch.device("cpu")).backward()
    assert all(p.grad is not None and p.grad.stride() == p.stride() for p in weights)
    assert bench_train.WORKLOADS["resnet50-cl"].channels_last


def test_train_mode_rejects_an_unknown_workload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--mode", "train", "--device", "cpu", "--set", "resnet9000"]) == 2
    assert "unknown workload 'resnet9000'; valid: resnet50," in capsys.readouterr().err


def test_memory_mode_runs_every_way_of_training_on_a_tiny_llama(tmp_path: Path) -> None:
    assert main(["bench", "--mode", "memory", "--device", "cpu", "--set", "llama-tiny", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench-memory.json").read_text())["results"]
    assert [r["config"] for r in rows] == ["adamw-fp32", "adamw-bf16", "smmf", "smmf-backward"]
    assert all(r["fits"] and r["step_ms"] > 0 and r["params"] > 0 for r in rows)
    assert "step inside backward" in (tmp_path / "bench-memory.md").read_text()


def test_memory_mode_reports_out_of_memory_as_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from smmf.commands import bench_memory

    def too_big(name: str) -> torch.nn.Module:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(bench_memory, "build_transformer", too_big)
    result = bench_memory.measure({"model": "llama-tiny", "config": "smmf", "device": "cpu"})
    assert result == {"fits": False, "error": "does not fit"}


def test_memory_table_of_a_run_cut_short_marks_what_did_not_run() -> None:
    from smmf.commands import bench_memory

    meta = {"machine": "GPU", "torch": "2.x", "date": "2026-11-26", "command": "smmf bench --mode memory"}
    rows = [{"model": "llama-1b", "config": "smmf", "fits": True, "step_ms": 10.0, "peak_bytes": 12 * 1024**3}]
    report = bench_memory.markdown(meta, rows, ["llama-7b", "llama-1b"], ["smmf", "adamw-bf16"])
    assert report.count("not run") == 3
    assert "12.0 GiB, 10 ms" in report
    assert "Largest that fits 16 GiB: SMMF" in report and "llama-1b" in report
    assert report.index("| llama-1b") < report.index("| llama-7b")  # smallest first, whatever the run order


def test_loop_step_times_each_optimizer_inside_a_training_loop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/loop_step.py: a row per task and optimizer with each round's median, the first
    optimizer's ratio 1.00; an unknown name is refused in one line."""
    loop_step = benchmark_modules.load("loop_step")
    argv = ["loop_step.py", "--tasks", "digits", "--optimizers", "adam,smmf", "--steps", "12", "--rounds", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    loop_step.main()
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| digits")]
    assert [row[1] for row in rows] == ["adam", "smmf"]
    assert all(len(row[2].split()) == 2 and float(row[3]) > 0 for row in rows) and rows[0][4] == "1.00 |"
    monkeypatch.setattr(sys, "argv", ["loop_step.py", "--optimizers", "adamx"])
    with pytest.raises(SystemExit):
        loop_step.main()
    assert "unknown task or optimizer: 'adamx'" in capsys.readouterr().err


def test_compiled_step_times_the_step_plain_and_through_torch_compile(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/compiled_step.py: a row per optimizer and way of calling its step, with the first
    steps' time and the later steps' median; an unknown name is refused in one line naming it."""
    compiled_step = benchmark_modules.load("compiled_step")
    compiled_step.main(["--optimizers", "smmf", "--width", "8", "--warmup", "2", "--steps", "3"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| smmf")]
    assert [row[1] for row in rows] == ["`opt.step()`", "`torch.compile(opt.step)()`"]
    # both times printed to three significant digits: with three decimals, two warm steps once printed 0.000
    assert all(float(row[2]) > 0 and float(row[3].rstrip(" |")) > 0 for row in rows), rows
    with pytest.raises(SystemExit):
        compiled_step.main(["--optimizers", "smmf,adamx"])
    assert "unknown adamx" in capsys.readouterr().err
