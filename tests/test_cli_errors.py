"""``smmf`` command line: --help everywhere, and one-line errors with exit codes for bad arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smmf.commands.main import main


@pytest.mark.parametrize("command", [[], ["compare"], ["train"], ["memory"], ["bench"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: smmf" in capsys.readouterr().out


def test_python_m_smmf() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "smmf", "--version"], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.startswith("smmf ")


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    """Run argv, check the exit code, and return stderr, which must be one line without a traceback."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors (usage line + message)
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_compare_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["compare", "--optimizers", "adam,lion"], 2)
    assert err == (
        "smmf compare: error: unknown optimizer 'lion'; valid: adam, adamw, adafactor, sm3, came, smmf, smmf8, sgd, "
        "smmf-sr"
    )
    err = _error(capsys, ["compare", "--tasks", "imagenet"], 2)
    assert err == "smmf compare: error: unknown task 'imagenet'; valid: digits, text, text-gpu"
    err = _error(capsys, ["compare", "--preset", "huge"], 2)
    assert err.startswith("smmf compare: error: argument --preset: invalid choice: 'huge'")


@pytest.mark.parametrize("value", ["-5", "0", "ten"])
def test_compare_bad_steps(capsys: pytest.CaptureFixture[str], value: str) -> None:
    err = _error(capsys, ["compare", "--steps", value], 2)
    assert err.startswith("smmf compare: error: argument --steps: expected a positive integer, got")


def test_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _error(capsys, ["compare", "--tasks", "digits", "--out", str(blocker / "sub")], 2)
    assert err.startswith(f"smmf compare: error: --out: cannot write to {blocker / 'sub'}:")
    err = _error(capsys, ["train", "--model", "gpt2-tiny", "--text", __file__, "--out", str(blocker / "sub")], 2)
    assert err.startswith(f"smmf train: error: --out: cannot write to {blocker / 'sub'}:")


def test_bad_device(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["compare", "--device", "tpu"], 2)
    assert err == "smmf compare: error: --device: unknown device 'tpu'; valid: cpu, cuda, cuda:N, auto"


def test_train_unknown_model_and_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["train", "--model", "vgg16"], 2)
    assert err == "smmf train: error: unknown model 'vgg16'; valid: resnet50, mobilenet_v2, gpt2-small, gpt2-tiny"
    err = _error(capsys, ["train", "--optimizer", "lion"], 2)
    assert err == (
        "smmf train: error: unknown optimizer 'lion'; valid: adam, adamw, adafactor, sm3, came, smmf, smmf8, sgd"
    )


@pytest.mark.parametrize("option", ["--max-steps", "--epochs", "--batch-size"])
def test_train_negative_numbers(capsys: pytest.CaptureFixture[str], option: str) -> None:
    err = _error(capsys, ["train", option, "-3"], 2)
    assert err == f"smmf train: error: argument {option}: expected a positive integer, got -3"


def test_train_text_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.txt"
    err = _error(capsys, ["train", "--model", "gpt2-tiny", "--text", str(missing), "--out", str(tmp_path / "o")], 1)
    assert err == f"smmf train: error: --text: cannot read {missing}: No such file or directory"
    err = _error(capsys, ["train", "--model", "gpt2-tiny", "--out", str(tmp_path / "o")], 2)
    assert err == "smmf train: error: --model gpt2-tiny needs --text FILE [FILE ...] (byte-level training text)"
    err = _error(capsys, ["train", "--model", "resnet50", "--text", __file__], 2)
    assert err.startswith("smmf train: error: --text is for the GPT-2 models")


def test_train_missing_dataset_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "train",
        "--model",
        "mobilenet_v2",
        "--data-dir",
        str(tmp_path / "none"),
        "--no-download",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
    ]
    err = _error(capsys, argv, 1)
    assert err == (
        f"smmf train: error: cifar100: no dataset in {tmp_path / 'none' / 'cifar-100-python'} "
        "(downloading is off); pass --data-dir with a folder holding cifar-100-python/ "
        "(the extracted python version), or run online to download it"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--lr", "nan"], "smmf train: error: --lr: expected a finite number > 0, got nan"),
        (["train", "--lr", "inf"], "smmf train: error: --lr: expected a finite number > 0, got inf"),
        (["train", "--lr", "0"], "smmf train: error: --lr: expected a finite number > 0, got 0.0"),
        (
            ["train", "--growth-rate", "5"],
            "smmf train: error: --growth-rate: expected a finite number >= 0 and <= 1, got 5.0",
        ),
        (
            ["train", "--weight-decay", "-1"],
            "smmf train: error: --weight-decay: expected a finite number >= 0, got -1.0",
        ),
        (
            ["train", "--weight-decay", "inf"],
            "smmf train: error: --weight-decay: expected a finite number >= 0, got inf",
        ),
        (
            ["train", "--decay-rate", "nan"],
            "smmf train: error: --decay-rate: expected a finite number >= -1 and <= 0, got nan",
        ),
        (["train", "--seed", "-1"], "smmf train: error: --seed: expected an integer from 0 to 4294967295, got -1"),
        (
            ["compare", "--steps", "9"],
            "smmf compare: error: --steps: expected at least 11 (the first 10 steps warm up "
            "and are left out of the step-time medians), got 9",
        ),
        (["compare", "--seed", "-1"], "smmf compare: error: --seed: expected an integer from 0 to 4294967295, got -1"),
        (
            ["compare", "--seed", "4294967294"],
            "smmf compare: error: --seed: 3 seeds from 4294967294 run past the largest seed, 4294967295",
        ),
        (["compare", "--lr", "0"], "smmf compare: error: --lr: expected a finite number > 0, got 0.0"),
        (["compare", "--lr", "nan"], "smmf compare: error: --lr: expected a finite number > 0, got nan"),
        (
            ["bench", "--threads", "0"],
            "smmf bench: error: --steps, --rounds and --threads must be >= 1, --warmup >= 0",
        ),
        (
            ["memory", "--model", "llama-h0-l1"],
            "smmf memory: error: llama hidden size must be a positive multiple of 128 (heads of 128), got 0",
        ),
        (["memory", "--model", "llama-h128-l0"], "smmf memory: error: llama needs at least one layer, got 0"),
    ],
)
def test_bad_numbers_are_one_line_errors_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "out"
    extra = [] if argv[0] == "memory" else ["--out", str(out)]
    assert _error(capsys, [*argv, *extra], 2) == message
    assert not out.exists()


def test_bench_unwritable_out_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["bench", "--set", "tiny", "--optimizers", "adam", "--out", "/proc/x"], 2)
    assert err.startswith("smmf bench: error: --out: cannot write to /proc/x:")


def test_compare_help_names_each_task_default_steps(capsys: pytest.CaptureFixture[str]) -> None:
    """--steps' help reads ``default_steps`` from each class in ``compare.TASKS`` (typed as TaskClass)."""
    from smmf.commands.compare_tasks import TASKS

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert [TASKS[name].default_steps for name in TASKS] == [60, 800, 1000]
    assert "(default: digits 60, text 800, text-gpu 1000)" in help_text
