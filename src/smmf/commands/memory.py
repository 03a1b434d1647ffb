"""``smmf memory``: optimizer state of a model architecture, computed from its parameter shapes.

The formulas are the library's (:mod:`smmf.memory`); this module picks the optimizers of the table,
builds the model on the meta device (nothing allocated or downloaded) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

from ..memory import adam_state_bytes, allocator_bytes, smmf_state_bytes, state_tensor_bytes
from .common import UsageError, markdown_table
from .models import build_meta_model, meta_shapes

__all__ = ["memory_table", "register", "run"]

# (optimizer registry name, label, extra state_tensor_bytes options): the rows of the ``smmf memory`` table.
_TABLE_ROWS: tuple[tuple[str, str, dict[str, bool]], ...] = (
    ("adam", "Adam / AdamW", {}),
    ("adafactor", "Adafactor (torch, no momentum)", {}),
    ("adafactor", "Adafactor + momentum", {"beta1": True}),
    ("sm3", "SM3 (pytorch_optimizer)", {}),
    ("came", "CAME (pytorch_optimizer)", {}),
    ("smmf", "SMMF 1-bit", {}),
    ("smmf8", "SMMF 8-bit", {}),
)
# Implementations whose step counter lives on the parameter's device (Adam and Adafactor keep it on the
# CPU unless capturable; SM3 and CAME count in a Python int).
_DEVICE_STEP = ("smmf", "smmf8")


def memory_table(shapes: Sequence[Sequence[int]], *, include_step: bool = True) -> list[dict[str, Any]]:
    """Optimizer state for parameters of ``shapes``, per optimizer: exact bytes, % of Adam, CUDA bytes.

    ``bytes`` is what ``optimizer_state_bytes`` reports once every parameter has a state; ``cuda_bytes``
    rounds each state tensor that lives on the GPU up to the allocator's 512-byte blocks, which is what
    ``torch.cuda.memory_allocated`` (and so a GPU measurement such as the paper's) sees.
    """
    shapes = [tuple(s) for s in shapes]
    rows: list[dict[str, Any]] = []
    for name, label, extra in _TABLE_ROWS:
        if name == "adam":
            exact = adam_state_bytes(shapes, include_step=include_step)
        elif name in ("smmf", "smmf8"):
            exact = smmf_state_bytes(shapes, sign_bits=1 if name == "smmf" else 8, include_step=include_step)
        else:
            exact = sum(sum(state_tensor_bytes(name, s, include_step=include_step, **extra)) for s in shapes)
        on_device_step = include_step and name in _DEVICE_STEP
        cuda = sum(allocator_bytes(state_tensor_bytes(name, s, include_step=on_device_step, **extra)) for s in shapes)
        rows.append({"optimizer": name, "label": label, "bytes": exact, "cuda_bytes": cuda})
    adam = rows[0]["bytes"]
    for row in rows:
        row["percent_of_adam"] = 100.0 * row["bytes"] / adam if adam else float("nan")
    return rows


def _format_table(rows: list[dict[str, Any]], markdown: bool) -> str:
    header = ("optimizer", "MiB", "% of Adam", "MiB on CUDA (512-B blocks)", "bytes")
    body = [
        (
            r["label"],
            f"{r['bytes'] / 2**20:.2f}",
            f"{r['percent_of_adam']:.1f}%",
            f"{r['cuda_bytes'] / 2**20:.2f}",
            f"{r['bytes']:,}",
        )
        for r in rows
    ]
    if markdown:
        return markdown_table(header, body)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``memory`` subcommand (its parser and ``run``) to the ``smmf`` command."""
    p = subparsers.add_parser(
        "memory",
        help="optimizer state memory for a model architecture, from parameter shapes",
        description=(
            "Optimizer state memory of Adam, Adafactor, SM3, CAME and SMMF (1-bit, 8-bit) for a model, computed "
            "from its parameter shapes on the meta device (nothing is allocated or downloaded)."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help=(
            "torchvision name (resnet50, mobilenet_v2, vit_b_16, ...), gpt2[-medium|-large|-xl], "
            "bert-base-uncased, bert-large-uncased, llama-1b|3b|7b|8b|13b|70b, llama-h<HIDDEN>-l<LAYERS>, or a "
            "transformers config: a config.json, its folder, or a Hub id in the local cache (nothing is downloaded)"
        ),
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classifier head size (torchvision default 1000; for BERT, a classification head)",
    )
    p.add_argument(
        "--no-step", action="store_true", help="leave out step counters (the SMMF reference keeps them as Python ints)"
    )
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text", help="output format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the memory table for ``args.model``."""
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes: expected a positive integer, got {args.num_classes}")
    shapes = meta_shapes(build_meta_model(args.model, args.num_classes))
    rows = memory_table(shapes, include_step=not args.no_step)
    numel = sum(math.prod(s) for s in shapes)
    if args.format == "json":
        summary = {"model": args.model, "num_classes": args.num_classes, "parameters": numel, "tensors": len(shapes)}
        print(json.dumps({**summary, "rows": rows}, indent=1))
        return 0
    head = f" ({args.num_classes} classes)" if args.num_classes else ""
    print(f"{args.model}{head}: {numel:,} parameters in {len(shapes)} tensors (fp32 state)\n")
    print(_format_table(rows, markdown=args.format == "markdown"))
    return 0
