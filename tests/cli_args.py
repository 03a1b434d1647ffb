"""Command lines for the ``smmf train`` tests, from keyword options (shared by the CLI test modules)."""

from __future__ import annotations


def train_argv(*switches: str, **options: object) -> list[str]:
    """``smmf train`` on the CPU without a progress bar or loader workers: ``model="gpt2-tiny"`` becomes
    ``--model gpt2-tiny`` (underscores become dashes) and each of ``switches`` a bare ``--switch``."""
    argv = ["train", "--device", "cpu", "--num-workers", "0", "--no-progress"]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv + [f"--{switch}" for switch in switches]
