"""``gpsk train`` / ``python -m gpsk_materials.training``: build the array cache and train GPSK-300.

Examples::

    # CPU machine with pymatgen: CSV -> cache (evaluation materials removed, also by structure) and stop
    gpsk train --data ../shared/data/pool.csv.gz --exclude-csv ../shared/data/mp20/test.csv \\
        --match-structures --out runs/pool --cache-only
    # any machine with torch + numpy + safetensors: train from the cache in 10-minute chunks
    gpsk train --data runs/pool/data.npz --out runs/pool --resume --max-minutes 9
    # several GPUs
    torchrun --nproc_per_node 4 -m gpsk_materials.training --data runs/pool/data.npz --out runs/pool --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from gpsk_materials.cli_options import add
from gpsk_materials.errors import DataError

_HELP = {
    "model": "named model config (tiny, default, gpsk300)",
    "vae_steps": "optimizer steps of the VAE stage",
    "flow_steps": "optimizer steps of the flow stage",
    "batch_size": "global batch size (split over ranks)",
    "flow_batch_size": "global batch size of the flow stage (default: --batch-size)",
    "precision": "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16",
    "compile": "torch.compile the models (worth it on GPUs)",
    "split_by": "hash key of the train/val split: material_id or formula",
    "compact_checkpoints": "store optimizer moments as bf16 (a third smaller; resume no longer bit-exact)",
    "export_minutes": "write the EMA weights to OUT/export every this many minutes, at the time limit and at the end "
                      "of each stage (what --init-weights continues from)",
    "channels_last": "channels_last_3d memory layout for the VAE (faster cuDNN 3D convolutions on GPUs)",
    "warmup_steps": "linear learning-rate warm-up steps (also after --init-weights)",
    "anneal_to_deadline": "decay the learning rate of the last stage over the time --max-minutes leaves, so that a run "
                          "stopped by its time limit ends annealed (--flow-steps / --vae-steps then only cap it); "
                          "--resume continues from the share of the budget the checkpoint had spent",
    "cond_drop_all": "share of flow training rows that drop every condition (the unconditional branch that "
                     "classifier-free guidance extrapolates from; independent --cond-dropout alone almost never "
                     "shows it)",
    "cond_composition_only": "share of flow training rows that keep only their composition (the request of crystal "
                             "structure prediction)",
    "vae_jitter": "displacement in Å of every site in the copies --vae-jitter-weight compares (the setting held fixed)",
    "vae_jitter_weight": "weight of the VAE term that keeps the latent of a crystal with every site displaced by "
                         "--vae-jitter Å close to the crystal's own (relative to the spread of the batch's latents; "
                         "benchmarks/latent_smoothness.py measures it); each VAE step then encodes both",
    "vae_freeze_encoder": "train only the VAE's decoder (and metric head): the latent, and an MMDiT started from "
                          "--init-weights, stay valid",
    "vae_shell_weight": "weight of the VAE's per-shell log-power term (GridVAE.shell_log_power_error), which keeps "
                        "the form-factor fall-off that tells elements apart",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpsk_materials.training.trainer import TrainConfig

    p.add_argument("--data", nargs="+", required=True, type=Path,
                   help="sources: array caches (.npz), CSV files in the shared/data format (.csv, .csv.gz), ASE dbs (.db)")
    add(p, "out", out=dict(required=True, help="output folder (checkpoints, metrics, model)"))
    p.add_argument("--resume", action="store_true", help="continue the run in --out (starts fresh if it has none)")
    p.add_argument("--max-minutes", type=float, default=None, help="checkpoint and exit 0 after this much wall time")
    add(p, "device", device=dict(default="auto", help="torch device: auto, cpu or cuda (default auto)"))
    p.add_argument("--init-vae", type=Path, default=None,
                   help="model folder whose trained VAE a fresh run adopts, skipping the VAE stage")
    p.add_argument("--init-model", type=Path, default=None,
                   help="model folder to fine-tune: a fresh run adopts its VAE and starts the flow from its MMDiT")
    p.add_argument("--init-weights", type=Path, default=None,
                   help="model folder or weights-only export (OUT/export) to continue from: each stage with steps > 0 "
                        "starts from its weights, with a fresh optimizer and --warmup-steps of warm-up")
    add(p, "no_progress")
    g = p.add_argument_group("data preparation (CSV / ASE sources need pymatgen)")
    g.add_argument("--cache-only", action="store_true", help="write OUT/data.npz and stop")
    g.add_argument("--max-sites", type=int, default=20, help="largest canonical (primitive) cell kept")
    add(g, "workers", workers=dict(default=None, help="processes parsing CIFs (default: all cores)"))
    g.add_argument("--limit", type=int, default=None, help="read at most this many rows per CSV file")
    g.add_argument("--exclude-ids", nargs="*", type=Path, default=[], help="files of material ids to keep out of training")
    g.add_argument("--exclude-csv", nargs="*", type=Path, default=[],
                   help="evaluation CSVs whose materials are kept out of training (by material_id)")
    g.add_argument("--match-structures", action="store_true",
                   help="also drop rows that StructureMatcher matches to an --exclude-csv structure of the same formula")
    g = p.add_argument_group("training options")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            g.add_argument(flag, action="store_true", default=None, help=_HELP.get(f.name))
        else:
            typ = {"int": int, "int | None": int, "float": float, "float | None": float, "str": str}.get(
                str(f.type), type(f.default))
            g.add_argument(flag, type=typ, default=None, help=f"{_HELP.get(f.name, '')} (default {f.default})".strip())


def prepare_data(args: argparse.Namespace, info):
    """The training cache: sources read (rank 0 builds OUT/data.npz if parsing is needed), exclusions applied."""
    import numpy as np

    from gpsk_materials.datasets import ArrayCache, exclusion_mask, load_source, read_id_list
    from gpsk_materials.training import distributed as D

    out = Path(args.out)
    target = out / "data.npz"
    only_caches = all(str(p).lower().endswith(".npz") for p in args.data)
    needs_build = not only_caches or args.match_structures
    if needs_build and not (args.resume and target.exists()):
        if info.is_main:
            kw = dict(max_sites=args.max_sites, workers=args.workers, progress=not args.no_progress, limit=args.limit)
            cache = load_source(args.data, **kw)
            mask = _exclusions(cache, args, kw)
            cache = cache.subset(np.flatnonzero(~mask))
            cache.meta["excluded"] = int(mask.sum())
            cache.save(target)
            print(f"wrote {target}: {len(cache)} structures ({int(mask.sum())} excluded as evaluation materials)")
        D.barrier(info)
    if needs_build or (args.cache_only and target.exists()):
        return ArrayCache.load(target)
    cache = load_source(args.data)
    ids = set().union(*[read_id_list(p) for p in [*args.exclude_ids, *args.exclude_csv]])
    if ids:
        mask = exclusion_mask(cache, ids)
        cache = cache.subset(np.flatnonzero(~mask))
    return cache


def _exclusions(cache, args, kw):
    from gpsk_materials.datasets import cache_from_csv, exclusion_mask, read_id_list

    ids = set().union(*[read_id_list(p) for p in args.exclude_ids]) if args.exclude_ids else set()
    reference = None
    if args.exclude_csv:
        ids |= set().union(*[read_id_list(p) for p in args.exclude_csv])
        if args.match_structures:
            reference = cache_from_csv(args.exclude_csv, **{**kw, "max_sites": 10**6, "limit": None})
    return exclusion_mask(cache, ids, reference, args.match_structures, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``gpsk train``; returns 0 on success and when stopped by --max-minutes."""
    from gpsk_materials.training import distributed as D
    from gpsk_materials.training.trainer import Trainer, config_from_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    cfg.check()
    info = D.setup(args.device)
    try:
        cache = prepare_data(args, info)
        if args.cache_only:
            if not (Path(args.out) / "data.npz").exists() and info.is_main:
                cache.save(Path(args.out) / "data.npz")
            return 0
        if len(cache) == 0:
            raise DataError("no training data left after exclusions")
        trainer = Trainer(cache, args.out, cfg, info, max_minutes=args.max_minutes, progress=not args.no_progress,
                          init_vae=args.init_vae, init_model=args.init_model, init_weights=args.init_weights)
        status = trainer.run(resume=args.resume)
        if info.is_main:
            if status == "time_limit":
                print(f"stopped at the time limit in stage {trainer.stage} step {trainer.step}; rerun with --resume")
            else:
                print(f"training finished: model folder {Path(args.out) / 'model'}")
        if info.enabled:
            _write_sync_report(trainer, info)
        return 0
    finally:
        D.teardown()


def _write_sync_report(trainer, info) -> None:
    """Each rank's checksums of its in-memory weights at the end of every stage it trained -> OUT/sync.json."""
    from gpsk_materials.atomic_files import write_json_atomic

    if info.is_main:
        sums = trainer.rank_checksums
        write_json_atomic(Path(trainer.out) / "sync.json", {
            "world_size": info.world_size,
            "checksums": sums,
            "in_sync": all(all(r == ranks[0] for r in ranks) for ranks in sums.values()),
        })


def register(subparsers) -> None:
    """Add ``gpsk train``."""
    p = subparsers.add_parser("train", help="train the GPSK-300 VAE and MMDiT (resumable, DDP via torchrun)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    from gpsk_materials.errors import GPSKError

    parser = argparse.ArgumentParser(prog="python -m gpsk_materials.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except GPSKError as exc:
        print(f"gpsk train: error: {exc}", file=sys.stderr)
        return 1
