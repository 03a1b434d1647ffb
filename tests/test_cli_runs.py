"""Tiny end-to-end runs: ``smmf compare`` (both tasks) and ``smmf train`` on a text file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_args import train_argv
from smmf.commands.main import main

pytestmark = pytest.mark.slow


def test_compare_searches_lr_and_reports_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--optimizers", "adam,smmf", "--steps", "12", "--seeds", "2", "--smmf-eager", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| SMMF (1-bit) |" in printed and "test perplexity, mean ± std" in printed
    assert "test accuracy (%)" in printed and "searched: grid x0.3, x1, x3" in printed
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["tasks"]) == {"digits", "text"}
    for task_name, task in payload["tasks"].items():
        per_point = 2 if task_name == "digits" else 1  # digits trains every seed at every grid point
        searches = {s["optimizer"]: s for s in task["searches"]}
        assert list(searches) == ["adam", "smmf"]
        for s in searches.values():
            lrs = sorted({r["lr"] for r in s["runs"]})
            assert 3 <= len(lrs) <= 6 and s["best_lr"] in lrs  # 3 points, grown up to 3 times
            best = [r for r in s["runs"] if r["lr"] == s["best_lr"]]
            assert sorted(r["seed"] for r in best) == [0, 1]
            assert all(r["test"] for r in best) and not any(r["test"] for r in s["runs"] if r["lr"] != s["best_lr"])
            scored = [(r["lr"], r["val"][task["metric"]]) for r in s["runs"] if r["seed"] < per_point]
            score = {lr: sum(v for x, v in scored if x == lr) for lr in lrs}
            assert min(lrs, key=score.__getitem__) == s["best_lr"]  # chosen on validation
        adam, smmf = (searches[n]["runs"][0] for n in ("adam", "smmf"))
        assert smmf["state_bytes"] < adam["state_bytes"] and adam["losses"][0] == smmf["losses"][0]
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
    assert proc.returncode == 130, err  # -2: a KeyboardInterrupt escaped; err holds where
    assert err.strip().splitlines()[-1] == "smmf: interrupted" and "Traceback" not in err
