"""``gpsk params``: parameter counts of every named model configuration."""

from __future__ import annotations

import argparse

import torch

from gpsk_materials.models.configs import CONFIGS, ModelConfig


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Parameters of the VAE and MMDiT of a config (built on the meta device: no memory, no init cost)."""
    from gpsk_materials.models.mmdit import MMDiT
    from gpsk_materials.models.vae import GridVAE

    with torch.device("meta"):
        vae, mmdit = GridVAE(config.vae), MMDiT(config.mmdit)
    counts = {"vae": sum(p.numel() for p in vae.parameters()), "mmdit": sum(p.numel() for p in mmdit.parameters())}
    counts["total"] = counts["vae"] + counts["mmdit"]
    return counts


def params_table(markdown: bool = False) -> str:
    """A table of parameter counts of every named config."""
    rows = []
    for name, cfg in CONFIGS.items():
        c, m = parameter_counts(cfg), cfg.mmdit
        arch = f"d={m.hidden}, heads={m.heads}, {m.double_blocks} double + {m.single_blocks} single, patch {m.patch}"
        rows.append((name, f"{c['vae']:,}", f"{c['mmdit']:,}", f"{c['total']:,}", arch))
    head = ("config", "VAE", "MMDiT", "total", "MMDiT layout")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i in (0, 4) else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [head, *rows])


def _run(args: argparse.Namespace) -> int:
    print(params_table(markdown=args.markdown))
    return 0


def register(subparsers) -> None:
    """Add ``gpsk params``."""
    p = subparsers.add_parser("params", help="print parameter counts of every named model config")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (as in docs/models.md)")
    p.set_defaults(func=_run)
