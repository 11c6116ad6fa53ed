"""Metrics log (JSON lines) and a plot of the training curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpsk_materials.atomic_files import write_atomic, write_text_atomic


class MetricsLog:
    """Append-only JSON-lines log; each record holds ``stage``, ``split`` ("train"/"val"), ``step`` and scalars.

    On resume, records past the resumed step are dropped so the log matches the weights (a run killed between a
    log write and the next checkpoint would otherwise leave duplicate steps).
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, stage_order: list[str], stage: str, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        rank = {s: i for i, s in enumerate(stage_order)}
        keep = [r for r in self.read() if (rank.get(r["stage"], -1), r["step"]) <= (rank[stage], step)]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill; the rest of the log stays usable
                continue
        return out


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Loss curves per stage (train and val, log scale) to a PNG; None if there is nothing to plot."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is never switched

    stages = [s for s in ("vae", "flow") if any(r["stage"] == s for r in records)]
    if not stages:
        return None
    fig = Figure(figsize=(5.5 * len(stages), 4))
    axes = fig.subplots(1, len(stages), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for split, style in (("train", "-"), ("val", "o-")):
            rows = [r for r in records if r["stage"] == stage and r.get("split") == split and "loss" in r]
            if rows:
                ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=f"{split} loss", ms=3)
            if stage == "vae" and split == "val":
                rows = [r for r in rows if "mse_metric" in r]
                if rows:
                    ax.plot([r["step"] for r in rows], [r["mse_metric"] for r in rows], "s--", ms=3, label="val MSE metric ch.")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title({"vae": "GridVAE", "flow": "MMDiT rectified flow"}[stage])
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), ".png")
    return path
