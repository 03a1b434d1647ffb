"""Memory accounting: bytes an optimizer keeps between steps, measured or computed from shapes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .matricization import is_factored, square_matricize
from .signpack import packed_numel

__all__ = [
    "optimizer_state_bytes",
    "smmf_state_bytes",
    "adam_state_bytes",
    "adafactor_state_bytes",
    "sm3_state_bytes",
    "came_state_bytes",
    "state_tensor_bytes",
    "allocator_bytes",
]


def _local(t: Tensor) -> Tensor:
    """The tensor this process holds: a DTensor's local shard, else the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _tensors(value: Any) -> Iterable[Tensor]:
    if isinstance(value, Tensor):
        yield _local(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state``, each counted once, for any torch optimizer.

    Tensors that share memory (views of one buffer) are counted once, by storage; for DTensor state
    only this rank's shard counts.
    """
    seen: dict[tuple[str, int], int] = {}
    for t in _tensors(list(optimizer.state.values())):
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr()) if storage.data_ptr() else (str(t.device), id(t))
        nbytes = storage.nbytes() if storage.data_ptr() else t.numel() * t.element_size()
        seen[key] = max(seen.get(key, 0), nbytes)
    return sum(seen.values())


def smmf_state_bytes(
    shapes: Iterable[Sequence[int]],
    *,
    sign_bits: int = 1,
    vector_reshape: bool = True,
    beta: float | None = 0.9,
    factor_bytes: int = 4,
    include_step: bool = True,
) -> int:
    """SMMF state for parameters of these shapes, without allocating them.

    Per factorized tensor of N elements viewed as (n, m): n * ceil(m/8) bytes of 1-bit sign (rows padded
    to whole bytes) or N of 8-bit sign, and (n + m) factor entries per moment; dense 1-D tensors (vector_reshape=False) keep full moments.
    """
    moments = 1 if beta is None else 2
    total = 0
    for shape in shapes:
        numel = math.prod(shape)
        if include_step:
            total += 4
        if is_factored(shape, vector_reshape):
            n, m = square_matricize(numel)
            total += moments * (n + m) * factor_bytes
            if beta is not None:
                total += packed_numel(n, m) if sign_bits == 1 else numel
        else:
            total += moments * numel * factor_bytes
    return total


def adam_state_bytes(shapes: Iterable[Sequence[int]], *, state_bytes: int = 4, include_step: bool = True) -> int:
    """Adam/AdamW state (exp_avg and exp_avg_sq) for parameters of these shapes."""
    return sum(2 * math.prod(s) * state_bytes + (4 if include_step else 0) for s in shapes)



def state_tensor_bytes(
    optimizer: str, shape: Sequence[int], *, state_bytes: int = 4, include_step: bool = True, beta1: bool = False
) -> list[int]:
    """Bytes of each state tensor ``optimizer`` keeps for one parameter of ``shape``, as it allocates them.

    ``optimizer`` is a registry name (adam, adamw, adafactor, sm3, came, smmf, smmf8). Step counters are
    included when they are tensors (Adam, Adafactor, SMMF) and ``include_step`` is set; SM3 and CAME
    count steps in a Python int (CAME's 4-byte RMS scalar is always counted). ``beta1`` gives Adafactor a full first moment (the original algorithm
    with momentum; torch's Adafactor has none). Per-tensor sizes matter because a CUDA allocator rounds
    each one up (see :func:`allocator_bytes`).
    """
    numel = math.prod(shape)
    step = [4] if include_step else []
    if optimizer in ("adam", "adamw"):
        return step + [numel * state_bytes] * 2
    if optimizer == "adafactor":
        second = (
            [numel // shape[-1] * state_bytes if shape[-1] else 0, numel // shape[-2] * state_bytes if shape[-2] else 0]
            if len(shape) >= 2
            else [numel * state_bytes]
        )
        return step + second + ([numel * state_bytes] if beta1 else [])
    if optimizer == "sm3":
        accumulators = [d * state_bytes for d in shape] if len(shape) else [state_bytes]
        return [numel * state_bytes] + accumulators
    if optimizer == "came":
        rms = [4]  # a 0-d float32 tensor after the first step
        if len(shape) >= 2:
            row, col = numel // shape[-1] if shape[-1] else 0, numel // shape[-2] if shape[-2] else 0
            return rms + [numel * state_bytes] + [row * state_bytes, col * state_bytes] * 2
        return rms + [numel * state_bytes] * 2
    if optimizer in ("smmf", "smmf8"):
        if not is_factored(shape):
            return step + [numel * state_bytes] * 2
        n, m = square_matricize(numel)
        sign = packed_numel(n, m) if optimizer == "smmf" else numel
        return step + [n * state_bytes, m * state_bytes] * 2 + [sign]
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: adam, adamw, adafactor, sm3, came, smmf, smmf8")


def allocator_bytes(sizes: Iterable[int], granularity: int = 512) -> int:
    """Bytes a caching allocator hands out for tensors of these sizes: each rounded up to ``granularity``.

    torch.cuda.memory_allocated() counts these rounded blocks (512 B), which is how memory measured on
    a GPU, as in the SMMF paper, exceeds the exact tensor bytes for models with many small tensors.
    """
    return sum(-(-size // granularity) * granularity for size in sizes if size)


def adafactor_state_bytes(
    shapes: Iterable[Sequence[int]], *, state_bytes: int = 4, include_step: bool = True, beta1: bool = False
) -> int:
    """torch.optim.Adafactor state: a row and a column factor over the last two dims, else a full moment.

    A tensor of rank >= 2 keeps numel/shape[-1] + numel/shape[-2] second-moment entries (so a 1x1 conv
    kernel keeps 2 x numel); lower ranks keep numel. ``beta1=True`` adds a full first moment, as in the
    original Adafactor with momentum (e.g. transformers' Adafactor), which torch's version lacks.
    """
    return sum(
        sum(state_tensor_bytes("adafactor", s, state_bytes=state_bytes, include_step=include_step, beta1=beta1))
        for s in shapes
    )


def sm3_state_bytes(shapes: Iterable[Sequence[int]], *, state_bytes: int = 4) -> int:
    """pytorch_optimizer.SM3 state: one accumulator per dimension (sum of the dims) plus a full momentum
    buffer, which that implementation allocates even with momentum=0; a 0-d tensor keeps 1 + 1 entries."""
    return sum(sum(state_tensor_bytes("sm3", s, state_bytes=state_bytes)) for s in shapes)


def came_state_bytes(shapes: Iterable[Sequence[int]], *, state_bytes: int = 4) -> int:
    """pytorch_optimizer.CAME state: a full first moment plus, for rank >= 2, row and column factors of
    both the second moment and the confidence (residual) moment over the last two dims; else a full
    second moment, and a 4-byte RMS scalar. Its step counter is a Python int in the param group."""
    return sum(sum(state_tensor_bytes("came", s, state_bytes=state_bytes)) for s in shapes)


# ---------------------------------------------------------------------------------------- smmf memory

# (registry name, label, extra state_tensor_bytes options): the rows of the ``smmf memory`` table.
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
    rows = []
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
        (r["label"], f"{r['bytes'] / 2**20:.2f}", f"{r['percent_of_adam']:.1f}%", f"{r['cuda_bytes'] / 2**20:.2f}", f"{r['bytes']:,}")
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


def register(subparsers: Any) -> None:
    """Add the ``memory`` subcommand (its parser and ``run``) to the ``smmf`` command."""
    p = subparsers.add_parser(
        "memory",
        help="optimizer state memory for a model architecture, from parameter shapes",
        description=(
            "Optimizer state memory of Adam, Adafactor, SM3, CAME and SMMF (1-bit, 8-bit) for a model, computed "
            "from its parameter shapes on the meta device (nothing is allocated or downloaded)."
        ),
    )
    p.add_argument("--model", required=True, help=(
        "torchvision name (resnet50, mobilenet_v2, vit_b_16, ...), gpt2[-medium|-large|-xl], "
        "bert-base-uncased, bert-large-uncased, llama-1b|3b|7b|8b|13b|70b or llama-h<HIDDEN>-l<LAYERS>"))
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier head size (torchvision default 1000; for BERT, a classification head)")
    p.add_argument("--no-step", action="store_true",
                   help="leave out step counters (the SMMF reference keeps them as Python ints)")
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text", help="output format")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    """Print the memory table for ``args.model``."""
    import json

    from .cli import UsageError
    from .models import build_meta_model

    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes: expected a positive integer, got {args.num_classes}")
    model = build_meta_model(args.model, args.num_classes)
    shapes = [tuple(p.shape) for p in model.parameters()]
    rows = memory_table(shapes, include_step=not args.no_step)
    numel = sum(math.prod(s) for s in shapes)
    head = f" ({args.num_classes} classes)" if args.num_classes else ""
    if args.format == "json":
        print(json.dumps({"model": args.model, "num_classes": args.num_classes, "parameters": numel,
                          "tensors": len(shapes), "rows": rows}, indent=1))
        return 0
    print(f"{args.model}{head}: {numel:,} parameters in {len(shapes)} tensors (fp32 state)\n")
    print(_format_table(rows, markdown=args.format == "markdown"))
    return 0
