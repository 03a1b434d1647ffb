"""Issue 12: nothing run that should not be, nothing lost, and a clear word for every bad input.

Untrusted files (a planted checkpoint, CIFAR batch or benchmark baseline) never run code; damaged
checkpoints give a clear message and resume falls back to the previous one; a second run on the same
folder is locked out; a missing optional dependency is named with its extra. The optimizer's own
checks of its arguments and of a state dict are in test_optimizer_inputs.py.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cli_args import train_argv
from smmf.commands.main import main

ROOT = Path(__file__).resolve().parents[1]


class Planted:
    """A pickle payload that, if ever unpickled with code execution allowed, creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------- checkpoints (items 2, 3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_bytes(Path(json.__file__).read_bytes() * 2)
    return path


def _train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    options = {"seq_len": 32, "batch_size": 4, "epochs": 1, "limit_batches": 6, "eval_batches": 1, "warmup_steps": 1}
    return [*train_argv("eager", model="gpt2-tiny", text=corpus, checkpoint_every=2, out=out, **options), *extra]


@pytest.fixture(scope="module")
def runs(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An uninterrupted run, and one stopped at step 4 (checkpoint.pt at step 4, the previous at 2)."""
    base = tmp_path_factory.mktemp("runs")
    assert main(_train_args(corpus, base / "full")) == 0
    assert main(_train_args(corpus, base / "stopped", "--stop-at-step", "4")) == 0
    return {"full": base / "full", "stopped": base / "stopped"}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / ".smmf-train.lock").unlink(missing_ok=True)
    return dst


def test_checkpoint_is_plain_data_with_manifest_and_previous(runs: dict[str, Path]) -> None:
    from smmf.commands.checkpoint import sha256_file

    out = runs["stopped"]
    newest = torch.load(out / "checkpoint.pt", weights_only=True)
    previous = torch.load(out / "checkpoint.prev.pt", weights_only=True)
    assert newest["progress"]["step"] == 4 and previous["progress"]["step"] == 2
    json.dumps(newest["config"])  # the run config is plain JSON data
    manifest = json.loads((out / "checkpoint.sha256.json").read_text())
    hashes = [e["sha256"] for e in manifest["checkpoints"]]
    assert sha256_file(out / "checkpoint.pt")[0] == hashes[0]
    assert sha256_file(out / "checkpoint.prev.pt")[0] in hashes


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    else:  # 64 flipped bytes, the same size
        for i in random.Random(1).sample(range(len(data)), 64):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "empty", "random", "bit-flipped"])
def test_damaged_checkpoint_falls_back_to_previous_and_resumes_exactly(
    runs: dict[str, Path], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    out = _copy(runs["stopped"], tmp_path / "run")
    _damage(out / "checkpoint.pt", how)
    stale = out / f".checkpoint.pt.tmp-{os.getpid() + 1}"
    stale.write_bytes(b"left by a killed run")
    assert main(_train_args(corpus, out, "--resume")) == 0
    captured = capsys.readouterr()
    assert f"checkpoint {out / 'checkpoint.pt'} is damaged" in captured.err
    assert f"resuming from the previous checkpoint {out / 'checkpoint.prev.pt'} (step 2)" in captured.err
    assert "resuming at step 2" in captured.out
    assert not stale.exists()
    full = torch.load(runs["full"] / "checkpoint.pt", weights_only=True)
    resumed = torch.load(out / "checkpoint.pt", weights_only=True)
    assert resumed["progress"] == full["progress"]
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_both_checkpoints_damaged_is_one_clear_error(
    runs: dict[str, Path], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(runs["stopped"], tmp_path / "run")
    _damage(out / "checkpoint.pt", "truncated")
    _damage(out / "checkpoint.prev.pt", "bit-flipped")
    err = _one_line_error(capsys, _train_args(corpus, out, "--resume"), 1)
    assert err.startswith(f"smmf train: error: checkpoint {out / 'checkpoint.pt'} is damaged")
    assert f"no usable previous checkpoint (checkpoint {out / 'checkpoint.prev.pt'} is damaged" in err


def test_missing_manifest_is_a_clear_error(
    runs: dict[str, Path], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(runs["stopped"], tmp_path / "run")
    (out / "checkpoint.sha256.json").unlink()
    err = _one_line_error(capsys, _train_args(corpus, out, "--resume"), 1)
    assert f"checkpoint {out / 'checkpoint.pt'} cannot be verified: the manifest" in err


def test_planted_checkpoint_pickle_does_not_run(
    runs: dict[str, Path], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even with its checksum in the manifest (someone who can write the folder), a checkpoint holding
    a pickled object is refused by weights_only loading: the marker is never written."""
    from smmf.commands.checkpoint import sha256_file

    out = _copy(runs["stopped"], tmp_path / "run")
    marker = tmp_path / "marker"
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        torch.save({"config": {}, "progress": {}, "model": Planted(marker), "optimizer": {}}, out / name)
    manifest = {
        "format": 1,
        "checkpoints": [{"sha256": sha256_file(out / n)[0]} for n in ("checkpoint.pt", "checkpoint.prev.pt")],
    }
    (out / "checkpoint.sha256.json").write_text(json.dumps(manifest))
    err = _one_line_error(capsys, _train_args(corpus, out, "--resume"), 1)
    assert f"checkpoint {out / 'checkpoint.pt'} cannot be loaded as plain tensors and values" in err
    assert not marker.exists()


def test_second_run_on_the_same_folder_is_locked_out(
    runs: dict[str, Path], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from smmf.commands.checkpoint import lock_run_folder

    out = _copy(runs["stopped"], tmp_path / "run")
    rows = (out / "metrics.jsonl").read_text()
    held = lock_run_folder(out)  # as another run would hold it
    try:
        err = _one_line_error(capsys, _train_args(corpus, out, "--resume"), 2)
    finally:
        assert held is not None
        held.close()
    assert (
        err == f"smmf train: error: --out: {out} is in use by another smmf train run (process {os.getpid()}); "
        "wait for it to finish or choose another --out"
    )
    assert (out / "metrics.jsonl").read_text() == rows


def test_non_finite_loss_stops_without_saving(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from smmf.commands import training

    real, calls = training._loss, [0]

    def loss_nan_at_step_3(*args: Any) -> Any:
        calls[0] += 1
        loss, hits = real(*args)
        return (loss * math.nan if calls[0] == 3 else loss), hits

    monkeypatch.setattr(training, "_loss", loss_nan_at_step_3)
    out = tmp_path / "run"
    err = _one_line_error(capsys, _train_args(corpus, out), 1)
    assert err.startswith(
        "smmf train: error: non-finite training loss (nan) at step 3; stopped without saving anything new"
    )
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["step"] == 2
    assert not (out / "summary.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


# ---------------------------------------------------------------- CIFAR (item 2)


def test_cifar_batches_load_through_the_restricted_unpickler(tmp_path: Path) -> None:
    from smmf.commands.data import cifar_datasets
    from test_train_resume import write_fake_cifar100

    train, test = cifar_datasets("cifar100", write_fake_cifar100(tmp_path, 8, 4), 32, download=False)
    assert len(train) == 8 and len(test) == 4 and len(train.classes) == 100
    image, label = train[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 100


def test_planted_cifar_pickle_does_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from smmf.commands.data import DataError, cifar_datasets
    from test_train_resume import write_fake_cifar100

    data = write_fake_cifar100(tmp_path / "data", 8, 4)
    marker = tmp_path / "marker"
    (data / "cifar-100-python" / "test").write_bytes(pickle.dumps({"data": Planted(marker), "fine_labels": []}))
    with pytest.raises(DataError, match=r"builtins\.exec is not allowed in a CIFAR batch"):
        cifar_datasets("cifar100", data, 32, download=False)
    argv = train_argv("no-download", model="mobilenet_v2", data_dir=data, image_size=32, out=tmp_path / "run")
    err = _one_line_error(capsys, argv, 1)
    assert err.startswith(f"smmf train: error: {data / 'cifar-100-python' / 'test'}: not a CIFAR batch")
    assert not marker.exists()


# ---------------------------------------------------------------- bench baseline (item 2)


def _plant(folder: Path, marker: Path, package: bool) -> None:
    """A benchmarks/reference_smmf.py (and with ``package`` an smmf package) in ``folder`` that would
    create ``marker``."""
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "benchmarks").mkdir(parents=True)
    (folder / "benchmarks" / "reference_smmf.py").write_text(code + "class ReferenceSMMF: pass\n")
    if package:
        (folder / "smmf").mkdir()
        (folder / "smmf" / "__init__.py").write_text(code)


def test_bench_reference_never_comes_from_the_working_directory(tmp_path: Path) -> None:
    """An installed copy (no checkout around it) run from a folder holding a planted baseline: no
    baseline, nothing run."""
    site, cwd, marker = tmp_path / "site", tmp_path / "cwd", tmp_path / "marker"
    shutil.copytree(ROOT / "src" / "smmf", site / "smmf", ignore=shutil.ignore_patterns("__pycache__"))
    _plant(cwd, marker, package=False)
    code = "import smmf.commands.registry as r; print(r.reference_path())"
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
    assert not marker.exists()


def test_bench_from_a_planted_folder_runs_only_its_own_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smmf.commands.bench_worker import run_worker
    from smmf.commands.registry import reference_path

    cwd, marker = tmp_path / "cwd", tmp_path / "marker"
    _plant(cwd, marker, package=True)  # the worker subprocess must not import this smmf
    monkeypatch.chdir(cwd)
    assert reference_path() == ROOT / "benchmarks" / "reference_smmf.py"
    result = run_worker(
        {"name": "adam", "shapes": [[4, 4]], "device": "cpu", "steps": 1, "warmup": 0, "threads": 1, "mode": "time"}
    )
    assert "error" not in result, result
    assert not marker.exists()


# ---------------------------------------------------------------- missing optional dependencies (item 5)

_NO_EXTRAS = """
import sys
for name in ("torchvision", "transformers", "sklearn", "matplotlib", "tqdm", "pytorch_optimizer"):
    sys.modules[name] = None
from smmf.commands.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "argv, needs",
    [
        (["memory", "--model", "resnet50"], "--model resnet50 needs torchvision"),
        (["memory", "--model", "gpt2"], "--model gpt2 needs transformers"),
        (
            ["compare", "--tasks", "digits", "--optimizers", "adam,smmf"],
            "this comparison needs tqdm, matplotlib, scikit-learn",
        ),
        (
            ["train", "--model", "mobilenet_v2", "--optimizer", "came"],
            "this run needs tqdm, transformers, torchvision, pytorch-optimizer",
        ),
        (["bench", "--set", "tiny", "--optimizers", "adam"], "this benchmark needs matplotlib"),
    ],
)
def test_missing_optional_dependency_names_the_extra(tmp_path: Path, argv: list[str], needs: str) -> None:
    out = tmp_path / "out"
    extra = ["--out", str(out)] if argv[0] != "memory" else []
    proc = subprocess.run(
        [sys.executable, "-c", _NO_EXTRAS, *argv, *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f'smmf {argv[0]}: error: {needs}: pip install "smmf[cli]"\n'
    assert not out.exists()  # before any work


def test_numpy_rng_state_round_trips_and_a_non_legacy_state_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from smmf.commands import checkpoint
    from smmf.commands.common import RunError

    saved = checkpoint._numpy_rng_state()
    expected = np.random.random(3)
    checkpoint._set_numpy_rng_state(saved)
    assert np.array_equal(np.random.random(3), expected)
    monkeypatch.setattr(np.random, "get_state", lambda legacy=True: {"bit_generator": "PCG64"})
    with pytest.raises(RunError, match="'PCG64', not MT19937"):
        checkpoint._numpy_rng_state()
