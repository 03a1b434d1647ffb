"""A script of benchmarks/ loaded as a module, for the tests that check it or use its readers."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    """benchmarks/<name>.py as the module ``name`` (registered in sys.modules, where its dataclasses
    look their module up)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def swept_pass1_launches() -> list[str]:
    """The settings of pass 1 that ``benchmarks/gpu_check.sh sweep`` times (its ``--configs``)."""
    return _swept("--configs")


def swept_pass0_launches() -> list[str]:
    """The settings of pass 0 that ``benchmarks/gpu_check.sh sweep`` times (its ``--pass0-configs``)."""
    return _swept("--pass0-configs")


def _swept(flag: str) -> list[str]:
    script = (BENCHMARKS / "gpu_check.sh").read_text()
    match = re.search(rf"pass1_sweep\.py --workload [^\n]*\\\s+(?:--[^\n]*\\\s+)*?{flag} ([\d:,]+)", script)
    assert match, f"gpu_check.sh's sweep stage names no {flag}"
    return match.group(1).split(",")
