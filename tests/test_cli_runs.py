"""Tiny end-to-end runs: ``smmf compare`` (both tasks) and ``smmf train`` on a text file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_args import train_argv
from smmf.commands.main import main

pytestmark = pytest.mark.slow


def test_compare_writes_table_json_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--optimizers",
        "adam,sm3,smmf",
        "--steps",
        "12",
        "--smmf-eager",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| SMMF (1-bit) |" in printed and "held-out perplexity" in printed and "held-out accuracy (%)" in printed
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["tasks"]) == {"digits", "text"}
    for task in payload["tasks"].values():
        runs = {r["optimizer"]: r for r in task["results"]}
        assert list(runs) == ["adam", "sm3", "smmf"]
        assert all(len(r["losses"]) == 12 and r["state_bytes"] > 0 and r["step_ms"] > 0 for r in runs.values())
        assert runs["smmf"]["state_bytes"] < runs["sm3"]["state_bytes"] < runs["adam"]["state_bytes"]
        assert runs["adam"]["losses"][0] == runs["smmf"]["losses"][0]  # same init, same first batch
    assert (out / "compare.png").stat().st_size > 10_000
    assert "| Adam |" in (out / "compare.md").read_text()


def test_train_gpt2_tiny_on_text(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_bytes(Path(json.__file__).read_bytes() * 2)
    out = tmp_path / "run"
    options = {"seq_len": 32, "batch_size": 4, "max_steps": 3, "eval_batches": 2, "optimizer": "adamw"}
    argv = train_argv(model="gpt2-tiny", text=text, out=out, **options)
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_eval"]["perplexity"] > 1
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "kind,step,epoch,batch,loss,lr,accuracy,perplexity,seconds,skipped_steps"
    assert [r.split(",")[0] for r in rows[1:]] == ["train", "train", "train", "eval"]


def test_ctrl_c_exits_130_without_traceback(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    argv = [
        sys.executable,
        "-m",
        "smmf",
        "compare",
        "--tasks",
        "digits",
        "--optimizers",
        "adam",
        "--steps",
        "1000000",
        "--no-progress",
        "--out",
        str(tmp_path / "cmp"),
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A background shell starts its jobs with SIGINT ignored, which the child would inherit; the child
        # only resets one signal disposition before exec, so the thread-safety caveat does not apply.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith("smmf compare:")  # training has begun
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "smmf: interrupted" and "Traceback" not in err
