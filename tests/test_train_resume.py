"""``smmf train`` on a small CIFAR-100 file in the real pickle format, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_args import train_argv
from smmf.commands.main import main

pytestmark = pytest.mark.slow


def write_fake_cifar100(root: Path, n_train: int = 64, n_test: int = 16) -> Path:
    """A cifar-100-python folder with train/test/meta pickles holding the keys torchvision reads."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": rng.integers(0, 100, n).tolist(),
            "coarse_labels": rng.integers(0, 20, n).tolist(),
            "filenames": [f"{name}_{i}.png" for i in range(n)],
            "batch_label": name,
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {
        "fine_label_names": [f"class{i}" for i in range(100)],
        "coarse_label_names": [f"super{i}" for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return root


def _args(data: Path, out: Path) -> list[str]:
    options = {"dataset": "cifar100", "image_size": 32, "batch_size": 8, "epochs": 2, "warmup_steps": 2}
    return train_argv(
        "no-download",
        "eager",
        model="mobilenet_v2",
        data_dir=data,
        checkpoint_every=3,
        optimizer="smmf",
        out=out,
        **options,
    )


def _load(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)


def _log(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def test_cifar_pickle_train_and_kill9_resume_is_bit_identical(tmp_path: Path) -> None:
    data = write_fake_cifar100(tmp_path / "data")
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(_args(data, full)) == 0
    reference = _load(full)
    assert reference["progress"] == {"epoch": 2, "batch": 0, "step": 16}
    summary = json.loads((full / "summary.json").read_text())
    assert summary["steps"] == 16 and 0 <= summary["final_eval"]["accuracy"] <= 100
    assert summary["optimizer_state_bytes"] > 0 and summary["cpu_max_rss_bytes"] > 0
    evals = [row for row in _log(full) if row["kind"] == "eval"]
    assert evals and all(row["skipped_steps"] == 0 for row in evals)  # SMMF's non-finite-gradient count

    proc = subprocess.Popen(
        [sys.executable, "-m", "smmf", *_args(data, killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    interrupted = _load(killed)["progress"]
    assert 0 < interrupted["step"] < 16 and interrupted["batch"] > 0, interrupted  # killed mid-epoch

    assert main([*_args(data, killed), "--resume"]) == 0
    resumed = _load(killed)
    assert resumed["progress"] == reference["progress"]
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for pid, state in reference["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][pid][key]), (pid, key)
    assert _log(killed) == _log(full)  # rows logged after the checkpoint by the killed run were dropped


def test_checkpoint_in_out_requires_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_fake_cifar100(tmp_path / "data", n_train=8, n_test=8)
    out = tmp_path / "run"
    args = [*_args(data, out), "--max-steps", "1"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a checkpoint; pass --resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--lr", "0.01"]) == 2
    assert "--resume: arguments differ from the checkpoint's (lr: 0.001 -> 0.01)" in capsys.readouterr().err
