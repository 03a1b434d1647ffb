"""How evenly pass 1 of the Triton step fills a GPU, from the tiling alone (a model, not a timing).

Pass 1 runs one program per tile; a GPU holds a fixed number of programs at once (``--resident``:
SMs x programs an SM holds, 132 x 5 on an H100 or H200 at 20 warps an SM) and starts the next tile
as one finishes, in order. This takes the tiles ``smmf.triton_backend`` would make for a model's
parameter shapes, either all in one launch (``step()``) or one launch per tensor (as
``step_in_backward`` steps them). It gives each tile a cost of its blocks of rows (BLOCK_R x 128
columns) plus ``--overhead`` blocks for its start, schedules the tiles greedily in order, and prints
the time the last program ends against the time of a perfectly balanced launch without overheads.
Nothing here runs a kernel: it says where waves leave SMs idle, not how fast a block runs.

    python benchmarks/tile_waves.py --model llama-7b --per-tensor
    python benchmarks/tile_waves.py --model gpt2 --max-slots 32
"""

from __future__ import annotations

import argparse
import heapq
import math

from smmf import triton_backend, triton_launch
from smmf.commands.models import build_meta_model, meta_shapes
from smmf.matricization import square_matricize
from smmf.signpack import row_bytes

Shape = tuple[int, int, int, bool]


def tile_costs(shape: Shape, tile_rows: int, tile_bytes: int, block_rows: int) -> list[int]:
    """Blocks of rows (block_rows x 8 * BLOCK_J columns) in each tile of a tensor, in launch order."""
    n, m, width, _ = shape
    columns_per_block = 8 * triton_launch.BLOCK_J
    costs = []
    for row_tile in range(math.ceil(n / tile_rows)):
        rows = min(tile_rows, n - row_tile * tile_rows)
        for col_tile in range(math.ceil(width / tile_bytes)):
            columns = min(8 * tile_bytes, m - col_tile * 8 * tile_bytes)
            costs.append(math.ceil(rows / block_rows) * math.ceil(max(columns, 1) / columns_per_block))
    return costs


def makespan(costs: list[int], resident: int, overhead: float) -> float:
    """When the last of ``costs`` ends, each started on the first of ``resident`` slots to be free."""
    slots = [0.0] * resident
    for cost in costs:
        heapq.heappush(slots, heapq.heappop(slots) + cost + overhead)
    return max(slots)


def launch(shapes: list[Shape], element_bytes: int, resident: int, overhead: float) -> tuple[float, float, int]:
    """(makespan, balanced time without overheads, tiles) of one launch over ``shapes``."""
    budget = triton_backend.scratch_budget(max(n * m for n, m, _, _ in shapes) * element_bytes)
    block_rows = triton_launch.BLOCK_R
    tile_rows, tile_bytes = triton_backend._tiling(shapes, 2, 4, budget, block_rows)
    costs = [c for shape in shapes for c in tile_costs(shape, tile_rows, tile_bytes, block_rows)]
    return makespan(costs, resident, overhead), sum(costs) / resident, len(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-7b", help="a model name of smmf's (resnet50, gpt2, llama-7b, ...)")
    parser.add_argument("--per-tensor", action="store_true", help="one launch per tensor, as step_in_backward")
    parser.add_argument("--resident", type=int, default=132 * 5, help="programs the GPU holds at once")
    parser.add_argument("--overhead", type=float, default=4.0, help="a tile's start, in blocks of rows")
    parser.add_argument("--max-slots", type=int, default=None, help="cap on tiles along a line (default: smmf's)")
    parser.add_argument("--element-bytes", type=int, default=None, help="parameter bytes (default: 2 for llama)")
    args = parser.parse_args()
    if args.max_slots:
        triton_backend.MAX_SLOTS = triton_backend.LONE_TENSOR_MAX_SLOTS = args.max_slots
    model = build_meta_model(args.model, **({"num_classes": 100} if args.model == "resnet50" else {}))
    shapes: list[Shape] = []
    for shape in meta_shapes(model):
        n, m = square_matricize(math.prod(shape))
        shapes.append((n, m, row_bytes(m), False))
    element_bytes = args.element_bytes or (2 if args.model.startswith("llama") else 4)
    launches = [[shape] for shape in shapes] if args.per_tensor else [shapes]
    results = [launch(group, element_bytes, args.resident, args.overhead) for group in launches]
    span, ideal, tiles = (sum(r[i] for r in results) for i in range(3))
    how = f"{len(launches)} launches, one per tensor" if args.per_tensor else "one launch"
    cap = args.max_slots or f"{triton_backend.MAX_SLOTS} ({triton_backend.LONE_TENSOR_MAX_SLOTS} for a lone tensor)"
    print(f"{args.model}: {how}, {int(tiles)} tiles, at most {cap} along a line, {args.resident} programs at once")
    print(f"last program ends at {span:,.0f} blocks; balanced, no overheads: {ideal:,.0f} ({ideal / span:.0%})")


if __name__ == "__main__":
    main()
