"""Optional dependencies of the command line: which subcommand needs which, checked before any work.

The core package needs only torch and numpy; the commands use the ``cli`` extra
(``pip install "smmf[cli]"``). A command whose options need a package that is not installed stops at
once with one line naming the package and the extra, instead of a ``ModuleNotFoundError`` mid-run.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Iterable

from .common import RunError
from .models import needs_transformers

__all__ = ["EXTRA", "missing", "message", "needs", "bench_needs", "train_bench_needs", "check"]

EXTRA = 'pip install "smmf[cli]"'
# import name -> distribution name (what pip installs)
_DISTRIBUTIONS = {
    "torchvision": "torchvision",
    "transformers": "transformers",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "pytorch_optimizer": "pytorch-optimizer",
}
_THIRD_PARTY_OPTIMIZERS = ("sm3", "came")


def missing(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (in order, each once)."""
    out = []
    for name in dict.fromkeys(modules):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent that fails to import, or sys.modules[name] = None
            found = False
        if not found:
            out.append(name)
    return out


def message(what: str, modules: Iterable[str]) -> str:
    """'<what> needs torchvision, tqdm: pip install "smmf[cli]"'."""
    return f"{what} needs {', '.join(_DISTRIBUTIONS.get(m, m) for m in modules)}: {EXTRA}"


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _optimizer_needs(names: Iterable[str]) -> list[str]:
    return ["pytorch_optimizer"] if any(n in _THIRD_PARTY_OPTIMIZERS for n in names) else []


def bench_needs(param_set: str, optimizer_names: Iterable[str]) -> list[str]:
    """``smmf bench``: matplotlib for the chart, the model library of the set, pytorch-optimizer for CAME/SM3."""
    model = {"resnet50": ["torchvision"], "mobilenet_v2": ["torchvision"], "gpt2": ["transformers"]}.get(param_set, [])
    return ["matplotlib", *model, *_optimizer_needs(optimizer_names)]


def train_bench_needs(workloads: Iterable[str], optimizer_names: Iterable[str]) -> list[str]:
    """``smmf bench --mode train``: torchvision for ResNet-50, transformers for the language models."""
    model = {
        "resnet50": ["torchvision"],
        "gpt2": ["transformers"],
        "llama-7b": ["transformers"],
        "tiny-llama": ["transformers"],
    }
    return [m for w in workloads for m in model.get(w, [])] + _optimizer_needs(optimizer_names)


def needs(args: argparse.Namespace) -> tuple[str, list[str]]:
    """What the parsed command line needs: (the options that ask for it, import names)."""
    if args.command == "memory":
        return f"--model {args.model}", ["transformers" if needs_transformers(args.model) else "torchvision"]
    if args.command == "train":
        model = ["torchvision"] if args.model in ("resnet50", "mobilenet_v2") else []
        return "this run", ["tqdm", "transformers", *model, *_optimizer_needs([args.optimizer])]
    if args.command == "compare":
        from .compare_search import preset_plan

        _, plan = preset_plan(args.preset, args.device.startswith("cuda"), args.full)
        tasks = _names(args.tasks) if args.tasks else plan.tasks
        names = _names(args.optimizers) if args.optimizers else plan.optimizers
        per_task = [m for t, m in (("digits", "sklearn"), ("text", "transformers")) if any(t in x for x in tasks)]
        return "this comparison", ["tqdm", "matplotlib", *per_task, *_optimizer_needs(names)]
    if args.command == "bench":
        names = _names(args.optimizers) if args.optimizers else list(_THIRD_PARTY_OPTIMIZERS)
        if args.mode == "memory":
            return "this benchmark", ["transformers"]
        if args.mode == "train":
            return "this benchmark", train_bench_needs(_names(args.set or "resnet50,gpt2"), names)
        return "this benchmark", bench_needs(args.set or "resnet50", names)
    return args.command, []


def check(args: argparse.Namespace) -> None:
    """RunError naming the missing packages and the extra, if the command needs any that are absent."""
    what, modules = needs(args)
    absent = missing(modules)
    if absent:
        raise RunError(message(what, absent))
