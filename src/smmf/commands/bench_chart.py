"""``smmf bench``'s chart: three bar panels, one bar per optimizer (matplotlib, imported when drawn)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["chart"]


def chart(meta: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    """Three bar panels per optimizer: step time / Adam, state bytes / param, peak extra / largest param."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    ok = [r for r in rows if "error" not in r]
    labels = [r["label"] for r in ok]
    panels = [
        ("step time / Adam(foreach)", [r["ratio_to_adam"] for r in ok], 1.0, True),
        ("state bytes / param", [r["state_bytes_per_param"] for r in ok], None, True),
        ("peak extra / largest param", [r["peak_extra_over_largest"] for r in ok], 0.25, False),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(ok) + 1.6), sharey=True)
    for ax, (title, values, line, log) in zip(axes, panels, strict=True):
        clean = [v if v is not None and not math.isnan(v) else 0.0 for v in values]
        if log:  # a zero bar has no place on a log axis
            clean = [max(v, 1e-3) for v in clean]
        colors = ["tab:blue" if label.startswith("SMMF") else "tab:gray" for label in labels]
        ax.barh(labels, clean, color=colors)
        for y, v in enumerate(clean):
            ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
        if line is not None:
            ax.axvline(line, color="tab:red", linestyle="--", linewidth=1)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
    axes[0].invert_yaxis()
    fig.suptitle(f"{meta['set']} on {meta['device']} ({meta['machine']}), {meta['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
