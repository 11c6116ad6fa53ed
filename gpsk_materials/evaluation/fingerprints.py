"""CDVAE's structure and composition fingerprints, computed with pymatgen alone.

CDVAE (Xie et al. 2022) and its successors use matminer's ``CrystalNNFingerprint.from_preset("ops")`` averaged over
sites, and ``ElementProperty.from_preset("magpie")`` scaled by a fixed standard scaler. matminer is not a dependency
here (it pins pandas < 3), so both are re-implemented on the same pymatgen primitives (``CrystalNN``,
``LocalStructOrderParams`` with pymatgen's ``CN_OPT_PARAMS``) and on matminer's Magpie element tables (vendored in
``data/magpie_elementdata``, BSD licence in ``LICENSE.matminer``). As in the matminer versions CDVAE used, missing
element data stay NaN and become 0 after scaling. ``tests/test_evaluation_fingerprints.py`` compares both with
values matminer 0.10.1 computed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from pymatgen.core import Composition, Element, Structure

from gpsk_materials.errors import DataError

DATA_DIR = Path(__file__).resolve().parent / "data"
#: Scaler of the composition fingerprint, fitted on MP-20 by ``benchmarks/build_comp_scaler.py``.
COMP_SCALER_FILE = DATA_DIR / "comp_scaler_mp20.json"

#: Motifs whose order parameters matminer's "ops" preset adds to the coordination-number weights.
_CN_TARGET_MOTIFS: dict[int, list[str]] = {
    1: ["sgl_bd"],
    2: ["L-shaped", "water-like", "bent 120 degrees", "bent 150 degrees", "linear"],
    3: ["trigonal planar", "trigonal non-coplanar", "T-shaped"],
    4: ["square co-planar", "tetrahedral", "rectangular see-saw-like", "see-saw-like", "trigonal pyramidal"],
    5: ["pentagonal planar", "square pyramidal", "trigonal bipyramidal"],
    6: ["hexagonal planar", "octahedral", "pentagonal pyramidal"],
    7: ["hexagonal pyramidal", "pentagonal bipyramidal"],
    8: ["body-centered cubic", "hexagonal bipyramidal"],
    9: ["q2", "q4", "q6"],
    10: ["q2", "q4", "q6"],
    11: ["q2", "q4", "q6"],
    12: ["cuboctahedral", "q2", "q4", "q6"],
}
_MAX_CN = 24

#: The 22 Magpie element properties and 6 statistics of matminer's "magpie" preset, in its order.
MAGPIE_FEATURES = [
    "Number", "MendeleevNumber", "AtomicWeight", "MeltingT", "Column", "Row", "CovalentRadius", "Electronegativity",
    "NsValence", "NpValence", "NdValence", "NfValence", "NValence", "NsUnfilled", "NpUnfilled", "NdUnfilled",
    "NfUnfilled", "NUnfilled", "GSvolume_pa", "GSbandgap", "GSmagmom", "SpaceGroupNumber",
]  # fmt: skip
MAGPIE_STATS = ["minimum", "maximum", "range", "mean", "avg_dev", "mode"]


@lru_cache(maxsize=1)
def _site_featurizer():
    from pymatgen.core.local_env import CN_OPT_PARAMS, CrystalNN, LocalStructOrderParams

    ops: list[tuple[int, object]] = []  # (cn, "wt" or an order-parameter object), in fingerprint order
    for cn in range(1, _MAX_CN + 1):
        ops.append((cn, "wt"))
        for motif in _CN_TARGET_MOTIFS.get(cn, []):
            spec = CN_OPT_PARAMS.get(cn, {}).get(motif, [motif])
            params = spec[1] if len(spec) > 1 else None
            ops.append((cn, LocalStructOrderParams([spec[0]], parameters=[params])))
    return CrystalNN(), ops


def site_fingerprint(structure: Structure, index: int) -> np.ndarray:
    """matminer's ``CrystalNNFingerprint.from_preset('ops')`` of one site (61 values)."""
    cnn, ops = _site_featurizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CrystalNN warns on every site without oxidation states
        nndata = cnn.get_nn_data(structure, index)
    out = []
    for cn, op in ops:
        wt = nndata.cn_weights.get(cn, 0)
        if isinstance(op, str) or wt == 0:
            out.append(wt)
            continue
        neighbours = [d["site"] for d in nndata.cn_nninfo[cn]]
        value = op.get_order_parameters([structure[index], *neighbours], 0,
                                        indices_neighs=list(range(1, len(neighbours) + 1)))[0]
        out.append(wt * (value or 0))
    return np.asarray(out, dtype=float)


def structure_fingerprint(structure: Structure) -> np.ndarray:
    """CDVAE's structure fingerprint: the mean of :func:`site_fingerprint` over all sites."""
    return np.mean([site_fingerprint(structure, i) for i in range(len(structure))], axis=0)


@lru_cache(maxsize=1)
def _magpie_table() -> np.ndarray:
    """(118, 22) array of Magpie element properties, NaN where the table says 'Missing'."""
    table = np.full((118, len(MAGPIE_FEATURES)), np.nan)
    for j, name in enumerate(MAGPIE_FEATURES):
        lines = (DATA_DIR / "magpie_elementdata" / f"{name}.table").read_text().splitlines()
        for z in range(1, 119):
            try:
                table[z - 1, j] = float(lines[z - 1])
            except (ValueError, IndexError):
                pass
    return table


def composition_fingerprint(composition: Composition | str) -> np.ndarray:
    """matminer's ``ElementProperty.from_preset('magpie')`` (132 values, unscaled; NaN for missing data)."""
    comp = Composition(composition).element_composition
    if len(comp) == 0:
        raise DataError("empty composition")
    z = np.array([Element(str(e)).Z for e in comp]) - 1
    w = np.array(list(comp.values()), dtype=float)
    props = _magpie_table()[z]  # (n_elements, 22)
    out = []
    for j in range(props.shape[1]):
        x = props[:, j]
        has_nan = bool(np.isnan(x).any())
        mean = np.average(x, weights=w)
        mode = x[np.isclose(w, w.max())].min()
        out += [
            np.nan if has_nan else x.min(),
            np.nan if has_nan else x.max(),
            np.nan if has_nan else x.max() - x.min(),
            mean,
            np.average(np.abs(x - mean), weights=w),
            mode,
        ]
    return np.asarray(out, dtype=float)


def fit_comp_scaler(compositions: Sequence[Composition | str]) -> dict[str, list[float]]:
    """Means and standard deviations (NaN-ignoring, ddof 0) of :func:`composition_fingerprint` over a set."""
    fps = np.array([composition_fingerprint(c) for c in compositions])
    return {"means": np.nanmean(fps, axis=0).tolist(), "stds": np.nanstd(fps, axis=0).tolist()}


@lru_cache(maxsize=1)
def load_comp_scaler() -> tuple[np.ndarray, np.ndarray]:
    """The MP-20 composition scaler (means, stds) shipped with the package."""
    if not COMP_SCALER_FILE.exists():
        raise DataError(f"{COMP_SCALER_FILE} missing: run benchmarks/build_comp_scaler.py")
    data = json.loads(COMP_SCALER_FILE.read_text())
    return np.asarray(data["means"], dtype=float), np.asarray(data["stds"], dtype=float)


def scale_composition_fingerprints(fps: np.ndarray) -> np.ndarray:
    """Standardise composition fingerprints; NaN (missing element data) becomes 0, as CDVAE's scaler does."""
    means, stds = load_comp_scaler()
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (np.asarray(fps, dtype=float) - means) / np.where(stds > 0, stds, 1.0)
    return np.where(np.isnan(scaled), 0.0, scaled)
