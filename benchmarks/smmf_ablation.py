"""Why SMMF trails Adam in short runs: the same learning-rate search as ``smmf compare``, for SMMF variants.

Each variant changes one thing against SMMF's defaults (the paper's, kept by ``smmf.SMMF``):

- ``smmf-bc``: the first moment bias-corrected like Adam's. SMMF has no bias correction, so its first
  update is (1 - beta)·g/|g|, a tenth of Adam's, and M reaches full size only after tens of steps.
  With weight decay 0 (as here) dividing M by 1 - prod(beta1_k) is the same as multiplying that step's
  lr by it, which this variant does around ``SMMF.step``; nothing else changes.
- ``smmf-g1``: growth_rate 1 (the first-moment coefficient stays at beta instead of fading as
  beta·0.999^(t-1)).
- ``smmf-d5``: decay_rate -0.5, the paper's CNN value, on the transformer (whose default is -0.8).

Usage (about 12 minutes on 2 CPU cores for both tasks):

    python benchmarks/smmf_ablation.py --tasks text --out runs/ablation

It prints and writes ``smmf compare``'s tables and figure for adam, smmf and the variants.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from smmf import SMMF
from smmf.commands import compare, registry
from smmf.commands.compare_search import PRESETS, RunSpec
from smmf.commands.registry import OptimizerSpec, Settings


class BiasCorrectedSMMF(SMMF):
    """SMMF whose step t uses lr / (1 - prod_{k<=t} beta1_k): Adam's first-moment bias correction."""

    def step(self, closure: Any = None) -> Any:
        saved = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            t = group.setdefault("_bc_t", 0) + 1
            group["_bc_t"] = t
            beta1_t = group["beta"] * group["growth_rate"] ** (t - 1)
            group["_bc_prod"] = group.get("_bc_prod", 1.0) * beta1_t
            group["lr"] = group["lr"] / (1.0 - group["_bc_prod"])
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, saved, strict=True):
                group["lr"] = lr


def _variant(cls: type[SMMF] = SMMF, **fixed: Any) -> Any:
    def make(params: Any, s: Settings) -> torch.optim.Optimizer:
        options = {"decay_rate": s.decay_rate, "growth_rate": s.growth_rate, **fixed}
        return cls(params, lr=s.lr, weight_decay=s.weight_decay, **options)

    return make


VARIANTS = {
    "smmf-bc": OptimizerSpec("smmf-bc", "SMMF + bias correction", 1e-3, _variant(BiasCorrectedSMMF), "ablation"),
    "smmf-g1": OptimizerSpec("smmf-g1", "SMMF, growth_rate 1", 1e-3, _variant(growth_rate=1.0), "ablation"),
    "smmf-d5": OptimizerSpec("smmf-d5", "SMMF, decay_rate -0.5", 1e-3, _variant(decay_rate=-0.5), "ablation"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="text", help="comma-separated compare tasks (default: %(default)s)")
    parser.add_argument("--optimizers", default="adam,smmf," + ",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args()
    registry.OPTIMIZERS.update(VARIANTS)
    registry.NAMES = (*registry.NAMES, *VARIANTS)
    plan = replace(
        PRESETS["quick"],
        tasks=tuple(args.tasks.split(",")),
        optimizers=tuple(args.optimizers.split(",")),
        seeds=args.seeds,
        extend=3,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    compare.compare(plan, 0, RunSpec(torch.device("cpu"), progress=False), args.out, preset="ablation")


if __name__ == "__main__":
    main()
