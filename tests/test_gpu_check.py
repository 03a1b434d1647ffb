"""benchmarks/gpu_check.sh's plumbing, run here with stand-ins for python and nvidia-smi.

The GPU machine is lent for minutes a session; a stage that fails on a shell mistake costs them. So the
sweep and tuned stages run here with a ``python3`` that records what it is asked and, for the sweep,
writes the "fastest" settings the way benchmarks/pass1_sweep.py does: the tuned stage must hand them
to the benchmarks through SMMF_TRITON_PASS1 and SMMF_TRITON_PASS0, by bytes an element.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import benchmark_modules

FAKE_PYTHON = """#!/usr/bin/env bash
# records each call: the launch variables, then the arguments
echo "PASS1=${SMMF_TRITON_PASS1-unset} PASS0=${SMMF_TRITON_PASS0-unset} $*" >>"$CALLS"
best="" best0="" workload=""
while [ $# -gt 0 ]; do
    case "$1" in
    --best) best="$2"; shift ;;
    --best-pass0) best0="$2"; shift ;;
    --workload) workload="$2"; shift ;;
    esac
    shift
done
if [ -n "$best" ]; then
    if [ "$workload" = gpt2 ]; then echo 4:64:4:0:16:0:1 >"$best"; else echo 4:128:4:0:32:0:3 >"$best"; fi
fi
if [ -n "$best0" ]; then echo "8:32:2048:3" >"$best0"; fi
"""


def _stand_ins(folder: Path) -> None:
    for name, text in {"python3": FAKE_PYTHON, "nvidia-smi": "#!/bin/sh\necho 'Fake GPU, 0, 0 MiB'\n"}.items():
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _gpu_check(tmp_path: Path, *stages: str) -> tuple[list[str], Path]:
    """Run gpu_check.sh's ``stages`` with the stand-ins; return the recorded calls and $OUT."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    bin_dir, out, calls = tmp_path / "bin", tmp_path / "out", tmp_path / "calls.txt"
    bin_dir.mkdir()
    _stand_ins(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OUT": str(out), "CALLS": str(calls)}
    env.pop("SMMF_TRITON_PASS1", None)
    env.pop("SMMF_TRITON_PASS0", None)
    script = benchmark_modules.BENCHMARKS / "gpu_check.sh"
    argv = ["bash", str(script), *stages]
    done = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return calls.read_text().splitlines(), out


def test_tuned_runs_the_benchmarks_with_the_sweeps_fastest_settings(tmp_path: Path) -> None:
    calls, out = _gpu_check(tmp_path, "sweep", "tuned")
    sweeps = [c for c in calls if "pass1_sweep.py" in c]
    assert [c.split("--workload ")[1].split()[0] for c in sweeps] == ["llama-layers", "gpt2"]
    assert all("--pass0-configs" in c and "--best-pass0" in c for c in sweeps)
    assert (out / "pass1-best-fp32.txt").read_text() == "4:64:4:0:16:0:1\n"
    benches = [c for c in calls if "-m smmf bench" in c]
    assert len(benches) == 2 and all("--optimizers adamw-fused,smmf" in c for c in benches)
    for call in benches:  # bf16 (2 bytes) from the 7B layers, fp32 (4 bytes) from GPT-2
        assert call.startswith("PASS1=2=4:128:4:0:32:0:3,4=4:64:4:0:16:0:1 PASS0=2=8:32:2048:3,4=8:32:2048:3 ")


def test_tuned_without_a_sweep_says_so_and_runs_nothing(tmp_path: Path) -> None:
    calls, out = _gpu_check(tmp_path, "tuned")
    assert not [c for c in calls if "smmf bench" in c]
    assert "run the sweep stage first" in (out / "gpu-check.log").read_text()


def test_the_stages_after_tuned_see_no_launch_settings(tmp_path: Path) -> None:
    calls, _ = _gpu_check(tmp_path, "sweep", "tuned", "train-7b")
    assert calls[-1].startswith("PASS1=unset PASS0=unset ") and "--set llama-7b" in calls[-1]
