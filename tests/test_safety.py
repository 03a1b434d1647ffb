"""Issue 12: nothing run that should not be, nothing lost, and a clear word for every bad input.

Untrusted files (a planted checkpoint, CIFAR batch or benchmark baseline) never run code; damaged
checkpoints give a clear message and resume falls back to the previous one; a second run on the same
folder is locked out; SMMF's constructor, param groups and load_state_dict refuse bad values and
foreign state; a missing optional dependency is named with its extra.
"""

from __future__ import annotations

import copy
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
from torch import nn

from cli_args import train_argv
from smmf import SMMF
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


# ---------------------------------------------------------------- SMMF validation (item 4)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": math.inf}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": torch.tensor(math.nan)}, "lr"),
        ({"lr": torch.tensor(math.inf)}, "lr"),
        ({"lr": torch.tensor(-1.0)}, "lr"),
        ({"lr": torch.tensor(1e-3, dtype=torch.complex64)}, "lr"),
        ({"weight_decay": math.inf}, "weight_decay"),
        ({"eps": math.nan}, "eps"),
        ({"eps": math.inf}, "eps"),
        ({"beta": math.nan}, "beta"),
        ({"growth_rate": math.inf}, "growth_rate"),
        ({"decay_rate": math.nan}, "decay_rate"),
        ({"maximize": "yes"}, "maximize"),
        ({"maximize": 1}, "maximize"),
        ({"sign_bits": 8.0}, "sign_bits"),
        ({"sign_bits": True}, "sign_bits"),
        ({"fused": 1}, "fused"),
        ({"vector_reshape": 0}, "vector_reshape"),
        ({"block_size": math.inf}, "block_size"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, dict) else "-".join(f"{k}={v[k]!r}" for k in v),
)
def test_constructor_refuses_bad_values_naming_them(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        SMMF([nn.Parameter(torch.zeros(3))], **kwargs)


def test_added_group_values_are_checked_too() -> None:
    opt = SMMF([nn.Parameter(torch.zeros(3))])
    for bad in ({"lr": math.inf}, {"weight_decay": math.nan}, {"maximize": "no"}, {"sign_bits": 8.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], **bad})


def test_good_values_still_pass() -> None:
    p = nn.Parameter(torch.zeros(4, 4))
    SMMF([p], lr=torch.tensor(1e-3), sign_bits=8, maximize=True, fused=False, block_size=64, weight_decay=0.1)
    SMMF([p], lr=0, beta=None, growth_rate=None, eps=0.0, decay_rate=-1.0)


# ---------------------------------------------------------------- load_state_dict structure (item 4)


def _trained(seed: int = 0, **kwargs: Any) -> tuple[nn.Module, SMMF]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, 12), nn.Tanh(), nn.Linear(12, 3))
    opt = SMMF(model.parameters(), fused=False, **kwargs)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(5, 7)).square().mean().backward()
        opt.step()
    return model, opt


def _refused(opt: SMMF, state_dict: dict[str, Any], *needles: str) -> str:
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(state_dict)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    after = opt.state_dict()  # a refused load changes nothing
    assert after["param_groups"] == before["param_groups"]
    for pid, state in before["state"].items():
        for key, value in state.items():
            other = after["state"][pid][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    return message


@pytest.mark.parametrize(
    "kwargs", [{}, {"sign_bits": 8}, {"vector_reshape": False}, {"beta": None, "growth_rate": None}]
)
def test_valid_state_dicts_load(kwargs: dict[str, Any]) -> None:
    model, opt = _trained(**kwargs)
    fresh = SMMF(model.parameters(), fused=False, **kwargs)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    model64 = nn.Linear(5, 3).double()
    opt64 = SMMF(model64.parameters(), fused=False, **kwargs)
    model64(torch.randn(2, 5, dtype=torch.float64)).sum().backward()
    opt64.step()
    SMMF(model64.parameters(), fused=False, **kwargs).load_state_dict(opt64.state_dict())


def test_complex_parameter_state_loads() -> None:
    p = nn.Parameter(torch.randn(6, 5, dtype=torch.complex64))
    opt = SMMF([p], fused=False)
    p.grad = torch.randn_like(p)
    opt.step()
    SMMF([p], fused=False).load_state_dict(opt.state_dict())


def test_torch_adam_state_dict_is_refused_by_name() -> None:
    model, opt = _trained()
    adam = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 7)).sum().backward()
    adam.step()
    _refused(opt, adam.state_dict(), "another optimizer, torch.optim.Adam/AdamW", "'betas'")
    # Adam's moments under SMMF's param groups: named by parameter index and key
    mixed = copy.deepcopy(opt.state_dict())
    mixed["state"][0] = copy.deepcopy(adam.state_dict()["state"][0])
    _refused(opt, mixed, "parameter 0 (group 0), state key 'exp_avg'", "full shape", "another optimizer")


@pytest.mark.parametrize(
    "other", [torch.optim.SGD, torch.optim.Adafactor, torch.optim.RMSprop], ids=lambda c: c.__name__
)
def test_other_torch_optimizers_are_refused_by_name(other: type) -> None:
    model, opt = _trained()
    foreign = other(model.parameters(), lr=0.1)
    model(torch.randn(5, 7)).sum().backward()
    foreign.step()
    _refused(opt, foreign.state_dict(), f"torch.optim.{other.__name__}")


def _edit(opt: SMMF, fn: Any) -> dict[str, Any]:
    sd = copy.deepcopy(opt.state_dict())
    fn(sd)
    return sd


@pytest.mark.parametrize(
    "edit, needles",
    [
        (lambda sd: sd["state"][0].pop("row_v"), ("parameter 0", "'row_v'", "missing")),
        (lambda sd: sd["state"][2].pop("sign"), ("parameter 2", "'sign'", "missing")),
        (lambda sd: sd["state"][2].pop("step"), ("parameter 2", "'step'", "missing")),
        (lambda sd: sd["state"][0].update(sign=sd["state"][0]["sign"][:-1]), ("parameter 0", "'sign'", "length")),
        (lambda sd: sd["state"][0].update(col_v=torch.zeros(5)), ("parameter 0", "'col_v'", "length 7")),
        (
            lambda sd: sd["state"][1].update(row_m=sd["state"][1]["row_m"].double()),
            ("parameter 1", "'row_m'", "float32"),
        ),
        (lambda sd: sd["state"][1].update(sign=sd["state"][1]["sign"].float()), ("parameter 1", "'sign'", "uint8")),
        (lambda sd: sd["state"][3].update(step=math.nan), ("parameter 3", "'step'")),
        (lambda sd: sd["state"][3].update(row_v=torch.zeros(3, 1)), ("parameter 3", "'row_v'", "1-D")),
        (lambda sd: sd["state"][3].update(extra=torch.zeros(9)), ("parameter 3", "'extra'", "not an SMMF state")),
        (lambda sd: sd["state"].update({7: {}}), ("parameter id 7",)),
        (lambda sd: sd["state"].update({0: [1, 2]}), ("parameter 0", "must be a dict")),
        (lambda sd: sd["param_groups"][0].update(lr=math.inf), ("param group 0", "Invalid lr: inf")),
        (lambda sd: sd["param_groups"][0].update(sign_bits=8.0), ("param group 0", "sign_bits")),
        (lambda sd: sd["param_groups"][0]["params"].pop(), ("param group 0 holds 3 parameters",)),
        (lambda sd: sd.pop("param_groups"), ("'param_groups'",)),
    ],
)
def test_malformed_state_dict_names_parameter_and_key(edit: Any, needles: tuple[str, ...]) -> None:
    _, opt = _trained()
    _refused(opt, _edit(opt, edit), *needles)


def test_state_for_other_shapes_is_refused_before_step() -> None:
    _, opt = _trained()
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 3))
    target = SMMF(other.parameters(), fused=False)
    with pytest.raises(
        ValueError,
        match=r"parameter 0 \(group 0\), state key 'row_v': expected a 1-D torch.float32 tensor of length 13",
    ):
        target.load_state_dict(opt.state_dict())


def _as_format_1(sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` as an older release saved it: no ``state_format`` in the groups, 1-bit signs packed flat
    (ceil(numel/8) bytes), a number ``step`` (older torch), and none of the newer group keys."""
    sd = copy.deepcopy(sd)
    for state in sd["state"].values():
        state["step"] = state["step"].item()
        numel = state["row_v"].numel() * state["col_v"].numel()
        state["sign"] = torch.zeros((numel + 7) // 8, dtype=torch.uint8)
    for group in sd["param_groups"]:
        for key in ("state_format", "block_size", "fused", "maximize", "backend"):
            group.pop(key, None)
    return sd


def test_old_formats_still_load() -> None:
    model, opt = _trained()
    old = _as_format_1(opt.state_dict())
    assert old["state"][0]["sign"].numel() == 11  # (12, 7): 84 bits flat, not 12 rows of one byte
    SMMF(model.parameters(), fused=False).load_state_dict(old)


def test_flat_signs_are_refused_in_the_current_format_and_newer_formats_are_refused() -> None:
    _, opt = _trained()
    flat = _as_format_1(opt.state_dict())
    for group, own in zip(flat["param_groups"], opt.state_dict()["param_groups"], strict=True):
        group["state_format"] = own["state_format"]
    _refused(opt, flat, "parameter 0 (group 0), state key 'sign'", "length 12")
    newer = copy.deepcopy(opt.state_dict())
    newer["param_groups"][0]["state_format"] = 99
    _refused(opt, newer, "param group 0: state_format 99")


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
