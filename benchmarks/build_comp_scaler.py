"""Fit the composition-fingerprint scaler of the coverage metrics on MP-20 and write it to the package data.

CDVAE standardises Magpie composition fingerprints with fixed means/stds before applying its COV cutoff (10 for
MP-20). This refits them on the MP-20 rows of ``shared/data/pool.csv.gz`` (column ``in_mp20``; the partial MP-20
copy described in shared/data/SOURCES.md) and writes ``gpsk_materials/evaluation/data/comp_scaler_mp20.json``.

    python benchmarks/build_comp_scaler.py [--pool PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from gpsk_materials.evaluation.fingerprints import COMP_SCALER_FILE, MAGPIE_FEATURES, MAGPIE_STATS, fit_comp_scaler
from gpsk_materials.paths import shared_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=shared_data("pool.csv.gz"))
    parser.add_argument("--out", type=Path, default=COMP_SCALER_FILE)
    args = parser.parse_args()
    table = pd.read_csv(args.pool, usecols=["reduced_formula", "in_mp20", "mp20_split"], low_memory=False)
    table = table[table["in_mp20"].astype(bool)]
    scaler = fit_comp_scaler(list(table["reduced_formula"]))
    scaler.update(
        features=[f"{stat} {feat}" for feat in MAGPIE_FEATURES for stat in MAGPIE_STATS],
        fitted_on=f"{len(table)} MP-20 rows of {args.pool.name} (in_mp20; splits {sorted(set(map(str, table['mp20_split'])))})",
        made_by="benchmarks/build_comp_scaler.py",
    )
    args.out.write_text(json.dumps(scaler, indent=1) + "\n")
    print(f"wrote {args.out} ({len(table)} compositions)")


if __name__ == "__main__":
    main()
