"""``smmf train --distributed {ddp,fsdp}`` under torchrun: 2 ranks, gloo on CPU, a tiny GPT-2 on a text file and
MobileNetV2 on a small CIFAR-100."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cli_args import train_argv
from smmf.commands.main import main

needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

STEPS = 6  # one epoch of --limit-batches 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_bytes(Path(json.__file__).read_bytes() * 2)
    return path


def _args(corpus: Path, out: Path, mode: str) -> list[str]:
    options = {"seq_len": 32, "batch_size": 4, "epochs": 1, "eval_batches": 2, "warmup_steps": 2}
    return train_argv(
        "eager",
        distributed=mode,
        model="gpt2-tiny",
        text=corpus,
        limit_batches=STEPS,
        checkpoint_every=2,
        out=out,
        **options,
    )


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "smmf", *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


@pytest.mark.slow
@needs_gloo
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_train_and_rank0_logs(corpus: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / mode
    proc = _torchrun(_args(corpus, out, mode))
    assert proc.stdout.count(f"smmf train: gpt2-tiny on text, smmf, {mode} on 2 ranks (cpu)") == 1  # rank 0 only
    assert [r["kind"] for r in _rows(out)] == ["train"] * STEPS + ["eval"]
    assert len((out / "metrics.csv").read_text().splitlines()) == STEPS + 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["final_eval"]["perplexity"] > 1
    assert summary["config"]["world_size"] == 2 and len(summary["optimizer_state_bytes_per_rank"]) == 2
    final = torch.load(out / "model_final.pt")
    assert final["transformer.wte.weight"].shape == (256, 128)  # full, unsharded tensors
    assert (out / ("checkpoint" if mode == "fsdp" else "checkpoint.pt")).exists()


@pytest.mark.slow
@needs_gloo
def test_fsdp_stop_and_resume_matches_uninterrupted(corpus: Path, tmp_path: Path) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    _torchrun(_args(corpus, full, "fsdp"))
    proc = _torchrun([*_args(corpus, split, "fsdp"), "--stop-at-step", "3"])
    assert "stopped at step 3 of 6" in proc.stdout
    assert sorted(p.name for p in (split / "checkpoint").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "train_state.pt",
    ]
    assert not (split / ".checkpoint.tmp").exists() and not (split / ".checkpoint.old").exists()
    proc = _torchrun([*_args(corpus, split, "fsdp"), "--resume"])
    assert "resuming at step 3" in proc.stdout
    reference, resumed = torch.load(full / "model_final.pt"), torch.load(split / "model_final.pt")
    assert reference.keys() == resumed.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, resumed[name]), name
    assert _rows(split) == _rows(full)


def test_distributed_without_torchrun_is_one_line_error(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert main(_args(corpus, tmp_path / "o", "fsdp")) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "smmf train: error: --distributed fsdp: run under torchrun, e.g. 'torchrun --nproc-per-node 2"
    )
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@needs_gloo
def test_image_model_trains_under_ddp_and_fsdp(tmp_path: Path) -> None:
    """MobileNetV2 (BatchNorm buffers, many same-shaped tensors batched per shard) on a small CIFAR-100
    in the real pickle format: both modes train, evaluate alike, and FSDP holds less state per rank."""
    from test_train_resume import write_fake_cifar100

    data = write_fake_cifar100(tmp_path / "data")
    summaries = {}
    for mode in ("ddp", "fsdp"):
        out = tmp_path / mode
        options = {"dataset": "cifar100", "image_size": 32, "batch_size": 8, "epochs": 1, "max_steps": 3}
        _torchrun(
            train_argv(
                "no-download", distributed=mode, model="mobilenet_v2", data_dir=data, eval_batches=1, out=out, **options
            )
        )
        summaries[mode] = json.loads((out / "summary.json").read_text())
    ddp, fsdp = summaries["ddp"], summaries["fsdp"]
    assert ddp["steps"] == fsdp["steps"] == 3
    # the same data and initial weights; SMMF factorizes each shard on its own, so FSDP is close, not equal
    assert abs(ddp["final_eval"]["loss"] - fsdp["final_eval"]["loss"]) < 1e-2
    assert max(fsdp["optimizer_state_bytes_per_rank"]) < 0.7 * ddp["optimizer_state_bytes_per_rank"][0]


@pytest.mark.parametrize("name", ["gpt2-tiny", "resnet50", "mobilenet_v2"])
def test_fsdp_shards_each_repeated_block(name: str) -> None:
    """The units --distributed fsdp shards: GPT-2 blocks, ResNet bottlenecks, MobileNetV2 feature stages."""
    from smmf.commands.distributed import _blocks
    from smmf.commands.models import IMAGE_MODELS, build_gpt2, build_image_model

    pytest.importorskip("torchvision" if name in IMAGE_MODELS else "transformers")
    model = build_image_model(name, 10) if name in IMAGE_MODELS else build_gpt2(name, n_positions=32)
    if name == "gpt2-tiny":
        expected = list(model.get_submodule("transformer.h"))
    elif name == "resnet50":
        expected = [block for i in range(1, 5) for block in model.get_submodule(f"layer{i}")]
    else:
        expected = list(model.get_submodule("features"))
    blocks = _blocks(model)
    assert len(blocks) == {"gpt2-tiny": 4, "resnet50": 16, "mobilenet_v2": 19}[name]
    assert all(a is b for a, b in zip(blocks, expected, strict=True))
