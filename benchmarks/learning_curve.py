"""The learning curve of the model line: sample metrics of each training run against cumulative GPU-hours.

Issue 14 asks for a curve on which a plateau is seen, not guessed: one point per training run, every metric
against the GPU time spent so far. The runs are listed in ``docs/results/training_runs.json`` (name, date, GPU
minutes the run added, the run it continued from, the result files that measured its weights); the metrics are
read from those result files as the benchmarks wrote them, never typed in:

- ``vae_reconstruction`` (benchmarks/vae_reconstruction.py): match rate given the cell content and given the
  reduced formula, the metric channel's MSE, and the composition-free formula ratio (reconstructed / true grids);
- ``csp_one_sample`` (benchmarks/csp.py with ``--k 1``): one-sample match rate and the share of samples that decode;
- ``csp_best_of`` (benchmarks/csp.py with ``--k 20``), ``de_novo`` (benchmarks/de_novo.py), where measured.

A run's cumulative GPU time is its own plus that of the runs it continued from (``starts_from``), so a branch that
was not shipped sits at the right x. The plot has one panel per metric; each metric's file records its command.

    python benchmarks/learning_curve.py --out docs/results/learning_curve.json --plot docs/results/learning_curve.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"

#: metric -> (result kind, key in that file, label of the plot)
METRICS = {
    "vae_match_cell": ("vae_reconstruction", "match_rate_cell", "VAE reconstruction match, cell content given"),
    "vae_match_formula": ("vae_reconstruction", "match_rate", "VAE reconstruction match, reduced formula given"),
    "vae_formula_ratio": ("vae_reconstruction", "formula_ratio", "composition-free formula, recon / true grids"),
    "vae_mse_metric": ("vae_reconstruction", "mse_metric", "metric channel MSE (log scale)"),
    "csp_match_1": ("csp_one_sample", "match_rate_1", "CSP match rate, one sample"),
    "csp_decoded_1": ("csp_one_sample", "decoded_fraction", "CSP samples that decode, one sample"),
    "csp_match_20": ("csp_best_of", "match_rate_k", "CSP match rate, best of 20"),
    "de_novo_decoded": ("de_novo", "decoded_fraction", "de novo samples that decode"),
}


def _read(name: str, results: Path) -> dict:
    data = json.loads((results / name).read_text())
    asked = data.get("generated") or data.get("requested")
    if "decoded" in data and asked:
        data["decoded_fraction"] = data["decoded"] / asked
    return data


def learning_curve(runs_file: Path, results: Path = RESULTS) -> list[dict]:
    """One row per run: name, date, GPU minutes of the run and cumulative (through ``starts_from``), shipped,
    and every metric of :data:`METRICS` its result files hold (with the file each came from)."""
    runs = json.loads(runs_file.read_text())["runs"]
    by_name = {r["name"]: r for r in runs}

    def cumulative(run: dict) -> float:
        seen, total = set(), 0.0
        while run is not None:
            if run["name"] in seen:
                raise ValueError(f"{runs_file}: the starts_from chain of {run['name']!r} loops")
            seen.add(run["name"])
            total += float(run["gpu_minutes"])
            parent = run.get("starts_from")
            if parent is not None and parent not in by_name:
                raise ValueError(f"{runs_file}: run {run['name']!r} starts from unknown run {parent!r}")
            run = by_name.get(parent) if parent is not None else None
        return total

    rows = []
    for run in runs:
        row = {"name": run["name"], "date": run["date"], "gpu_minutes": run["gpu_minutes"],
               "cumulative_gpu_hours": cumulative(run) / 60.0, "shipped": bool(run.get("shipped")), "sources": {}}
        files = {kind: _read(name, results) for kind, name in run.get("results", {}).items()}
        for metric, (kind, key, _) in METRICS.items():
            if kind in files and files[kind].get(key) is not None:
                row[metric] = float(files[kind][key])
                row["sources"][metric] = run["results"][kind]
        rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    metrics = [m for m in METRICS if any(m in r for r in rows)]
    ncol = 2
    nrow = (len(metrics) + ncol - 1) // ncol
    fig = Figure(figsize=(10, 2.8 * nrow), constrained_layout=True)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        pts = sorted((r["cumulative_gpu_hours"], r[metric], r["shipped"], r["name"]) for r in rows if metric in r)
        ship = [(x, y) for x, y, s, _ in pts if s]
        if ship:
            ax.plot(*zip(*ship), "o-", color="C0", label="shipped line")
        other = [(x, y) for x, y, s, _ in pts if not s]
        if other:
            ax.plot(*zip(*other), "x", color="C3", markersize=9, label="not shipped")
        for x, y, _, name in pts:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if metric == "vae_mse_metric":
            ax.set_yscale("log")
        ax.set_title(METRICS[metric][2], fontsize=9)
        ax.set_xlabel("cumulative GPU-hours (one H200)")
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=RESULTS / "training_runs.json")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the curve")
    p.add_argument("--plot", type=Path, default=None, help="image file for the plot")
    args = p.parse_args(argv)
    rows = learning_curve(args.runs)
    for r in rows:
        vals = ", ".join(f"{m}={r[m]:.4g}" for m in METRICS if m in r)
        print(f"{r['name']:>22s}  {r['cumulative_gpu_hours']:.2f} GPU-h  {vals}")
    if args.out:
        text = json.dumps({"runs_file": str(args.runs.name), "rows": rows}, indent=1)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
