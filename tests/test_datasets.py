"""Array caches, sources (CSV, Structures, ASE db), magnetic-ordering labels and leak-free splits."""

from __future__ import annotations

import csv
import functools
import gzip

import numpy as np
import pytest

from gpsk_materials.datasets import (
    ArrayCache,
    cache_from_ase_db,
    cache_from_csv,
    cache_from_structures,
    derive_magnetic_ordering,
    exclusion_mask,
    load_source,
    read_id_list,
    split_indices,
)
from gpsk_materials.errors import DataError

# (prototype, elements, lattice constant)
_TOYS = [
    ("rocksalt", ("Na", "Cl"), 5.64), ("rocksalt", ("Mg", "O"), 4.21), ("rocksalt", ("K", "Br"), 6.6),
    ("rocksalt", ("Ca", "O"), 4.81), ("rocksalt", ("Li", "F"), 4.03), ("rocksalt", ("Ni", "O"), 4.18),
    ("cscl", ("Cs", "Cl"), 4.12), ("cscl", ("Cs", "Br"), 4.29), ("cscl", ("Fe", "Al"), 2.91), ("cscl", ("Cu", "Zn"), 2.95),
    ("zincblende", ("Ga", "As"), 5.65), ("zincblende", ("Zn", "S"), 5.41), ("zincblende", ("Si", "C"), 4.36),
    ("zincblende", ("In", "P"), 5.87), ("fluorite", ("Ca", "F"), 5.46), ("fluorite", ("Ce", "O"), 5.41),
    ("fluorite", ("Ba", "F"), 6.2), ("perovskite", ("Sr", "Ti", "O"), 3.9), ("perovskite", ("Ba", "Ti", "O"), 4.0),
    ("perovskite", ("Ca", "Ti", "O"), 3.84), ("perovskite", ("K", "Nb", "O"), 4.0), ("bcc", ("Fe",), 2.87),
    ("bcc", ("W",), 3.16), ("fcc", ("Cu",), 3.61), ("fcc", ("Al",), 4.05), ("fcc", ("Au",), 4.08),
]


def toy_structures(n: int | None = None, seed: int = 0):
    """Small real prototypes with slightly jittered lattice constants, plus labels; deterministic: the first ``n``
    (all by default), fresh copies the caller may change."""
    structures, labels = _all_toy_structures(seed)
    return [s.copy() for s in structures[:n]], {k: list(v[:n]) for k, v in labels.items()}


@functools.lru_cache(maxsize=None)
def _all_toy_structures(seed: int):
    """Every toy of ``_TOYS``, built once per seed (the random draws of the first n toys do not depend on the
    others, so ``toy_structures(n)`` is the first n of these)."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    out, labels = [], {"band_gap": [], "formation_energy": [], "e_above_hull": [], "space_group": []}
    for proto, els, a in _TOYS:
        a = a * (1 + 0.01 * rng.standard_normal())
        if proto == "rocksalt":
            s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), els, [[0, 0, 0], [0.5, 0.5, 0.5]]); sg = 225
        elif proto == "cscl":
            s = Structure(Lattice.cubic(a), els, [[0, 0, 0], [0.5, 0.5, 0.5]]); sg = 221
        elif proto == "zincblende":
            s = Structure.from_spacegroup("F-43m", Lattice.cubic(a), els, [[0, 0, 0], [0.25, 0.25, 0.25]]); sg = 216
        elif proto == "fluorite":
            s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), els, [[0, 0, 0], [0.25, 0.25, 0.25]]); sg = 225
        elif proto == "perovskite":
            s = Structure(Lattice.cubic(a), [els[0], els[1], els[2], els[2], els[2]],
                          [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]); sg = 221
        else:
            s = Structure.from_spacegroup("Im-3m" if proto == "bcc" else "Fm-3m", Lattice.cubic(a), els, [[0, 0, 0]])
            sg = 229 if proto == "bcc" else 225
        out.append(s)
        metal = proto in ("bcc", "fcc", "cscl")
        labels["band_gap"].append(0.0 if metal else float(rng.uniform(0.5, 6)))
        labels["formation_energy"].append(0.0 if len(els) == 1 else float(rng.uniform(-3.5, -0.2)))
        labels["e_above_hull"].append(float(abs(rng.normal(0, 0.02))))
        labels["space_group"].append(sg)
    return tuple(out), {k: tuple(v) for k, v in labels.items()}


def test_cache_from_structures(toy_cache):
    c = toy_cache
    assert len(c) == len(_TOYS) and c.max_sites == 5  # primitive cells: perovskite has 5 sites
    assert c.numbers.dtype == np.int16 and c.lattice.dtype == np.float64
    i = 0  # NaCl, primitive rocksalt: 2 atoms
    assert sorted(c.numbers[i][c.numbers[i] > 0].tolist()) == [11, 17] and c.formula[i] == "NaCl"
    assert c.space_group[i] == 225 and c.crystal_system[i] == 6
    assert np.isfinite(c.band_gap).all() and (c.occupancy[c.numbers > 0] == 1).all()
    assert c.meta["n_kept"] == len(_TOYS) and c.meta["magnetic_ordering"]["given"] == 0


def test_cache_save_load_and_bad_files(toy_cache, tmp_path):
    path = toy_cache.save(tmp_path / "c.npz")
    loaded = ArrayCache.load(path)
    for name in ("lattice", "frac_coords", "numbers", "band_gap", "material_id", "magnetic_ordering"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(toy_cache, name))
    assert loaded.meta["n_kept"] == toy_cache.meta["n_kept"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable"):
        ArrayCache.load(path)
    with pytest.raises(DataError, match="not found"):
        ArrayCache.load(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError):
        ArrayCache.load(tmp_path / "other.npz")


def test_cache_validation_and_subset(toy_cache):
    sub = toy_cache.subset(np.array([0, 1]))
    assert len(sub) == 2 and sub.max_sites == 2  # trimmed to the widest kept structure
    both = ArrayCache.concatenate([sub, toy_cache.subset(np.array([17]))])
    assert both.max_sites == 5 and len(both) == 3
    with pytest.raises(DataError, match="unique"):
        ArrayCache.concatenate([sub, sub])
    fields = {k: getattr(sub, k) for k in ("lattice", "frac_coords", "numbers", "occupancy", "band_gap", "formation_energy",
                                           "e_above_hull", "space_group", "crystal_system", "magnetic_ordering",
                                           "material_id", "formula", "source")}
    with pytest.raises(DataError, match="shape"):
        ArrayCache(**{**fields, "band_gap": np.zeros(3)})
    with pytest.raises(DataError, match="0..98"):
        ArrayCache(**{**fields, "numbers": np.where(fields["numbers"] > 0, 99, 0)})


def _write_csv(path, structures, rows, ids=None):
    from pymatgen.io.cif import CifWriter

    ids = [f"mp-{i}" for i in range(len(structures))] if ids is None else ids
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["material_id", *rows[0].keys(), "cif"])
        w.writeheader()
        for mid, s, r in zip(ids, structures, rows):
            w.writerow({"material_id": mid, **r, "cif": str(CifWriter(s))})


def test_cache_from_csv_label_columns(tmp_path):
    structures, _ = toy_structures(4)
    rows = [
        {"band_gap": "5.0", "band_gap_wbm": "1.0", "formation_energy_per_atom": "", "formation_energy_per_atom_wbm": "-2.0",
         "e_above_hull": "", "energy_above_hull": "0.01", "spacegroup.number": "225", "band_gap_optb88vdw": "9"},
        {"band_gap": "", "band_gap_wbm": "1.5", "formation_energy_per_atom": "-1.0", "formation_energy_per_atom_wbm": "",
         "e_above_hull": "0.2", "energy_above_hull": "", "spacegroup.number": "", "band_gap_optb88vdw": "9"},
        {"band_gap": "", "band_gap_wbm": "", "formation_energy_per_atom": "", "formation_energy_per_atom_wbm": "",
         "e_above_hull": "", "energy_above_hull": "", "spacegroup.number": "999", "band_gap_optb88vdw": "9"},
        {"band_gap": "nan", "band_gap_wbm": "x", "formation_energy_per_atom": "", "formation_energy_per_atom_wbm": "",
         "e_above_hull": "", "energy_above_hull": "", "spacegroup.number": "225", "band_gap_optb88vdw": "9"},
    ]
    path = tmp_path / "mini.csv.gz"
    _write_csv(path, structures, rows)
    c = cache_from_csv(path, progress=False, workers=1)
    assert c.material_id.tolist() == ["mp-0", "mp-1", "mp-2", "mp-3"]
    np.testing.assert_array_equal(c.band_gap[:2], [5.0, 1.5])
    assert np.isnan(c.band_gap[2:]).all()  # JARVIS optB88vdW gaps are not used
    np.testing.assert_array_equal(c.formation_energy[:2], [-2.0, -1.0])
    np.testing.assert_array_equal(c.e_above_hull[:2], [0.01, 0.2])
    # missing or invalid space groups are computed with SpacegroupAnalyzer (MgO, KBr: rocksalt)
    assert c.space_group.tolist() == [225, 225, 225, 225]
    with pytest.raises(DataError, match="cif"):
        path2 = tmp_path / "nocif.csv"
        path2.write_text("material_id,x\na,1\n")
        cache_from_csv(path2, progress=False)


def test_unparseable_rows_are_skipped_and_counted(tmp_path):
    structures, _ = toy_structures(3)
    path = tmp_path / "bad.csv"
    _write_csv(path, structures, [{"band_gap": "1"}] * 3)
    text = path.read_text().replace("_cell_length_a", "_cell_length_q", 1)
    path.write_text(text)
    c = cache_from_csv(path, progress=False, workers=1)
    assert len(c) == 2 and sum(c.meta["skipped"].values()) == 1
    big, _ = toy_structures(1)
    big[0].make_supercell([3, 3, 3])
    # canonicalisation makes it primitive again: 2 sites, kept
    assert len(cache_from_structures(big, progress=False)) == 1


def test_shared_mp20_rows(shared_data_dir):
    c = cache_from_csv(shared_data_dir / "mp20" / "train.csv", limit=30, workers=1, progress=False)
    assert 25 <= len(c) <= 30 and c.max_sites <= 20
    assert (c.space_group > 0).all() and np.isfinite(c.formation_energy).all()
    assert set(np.unique(c.magnetic_ordering)) <= {-1, 0}


def test_ase_database(tmp_path, toy_cache):
    from ase.db import connect
    from pymatgen.io.ase import AseAtomsAdaptor

    structures, _ = toy_structures(3)
    db = connect(str(tmp_path / "x.db"))
    db.write(AseAtomsAdaptor.get_atoms(structures[0]), material_id="mp-22862", band_gap=5.0, magnetic_ordering="NM")
    db.write(AseAtomsAdaptor.get_atoms(structures[1]), formation_energy=-3.0, space_group=225)
    db.write(AseAtomsAdaptor.get_atoms(structures[2]), magnetic_ordering="AFM")
    c = cache_from_ase_db(tmp_path / "x.db", progress=False)
    assert c.material_id.tolist() == ["mp-22862", "x-2", "x-3"]
    assert c.band_gap[0] == 5.0 and c.formation_energy[1] == -3.0
    assert c.magnetic_ordering.tolist()[0] == 0 and c.magnetic_ordering.tolist()[2] == 3
    both = load_source([tmp_path / "x.db", toy_cache.save(tmp_path / "t.npz")])
    assert len(both) == 3 + len(toy_cache)
    with pytest.raises(DataError, match="unknown source"):
        load_source(tmp_path / "x.cif")
    with pytest.raises(DataError, match="not found"):
        cache_from_ase_db(tmp_path / "missing.db")


def test_magnetic_ordering_rule():
    numbers = np.array([
        [11, 17, 0],  # NaCl: s/p only, 28 electrons -> NM
        [26, 26, 8],  # Fe: d-block -> unknown
        [19, 8, 8],   # KO2: odd (35) with a gap -> unknown (superoxides are magnetic)
        [11, 0, 0],   # Na metal: odd (11) but no gap -> NM
        [19, 8, 8],   # odd with unknown gap -> unknown
        [58, 8, 8],   # CeO2: f-block -> unknown
        [11, 17, 0],  # disordered NaCl -> unknown
    ])
    occ = np.where(numbers > 0, 1.0, 0.0)
    occ[6, 0] = 0.5
    gap = np.array([5.0, 2.0, 1.0, 0.0, np.nan, 3.0, 5.0])
    assert derive_magnetic_ordering(numbers, occ, gap).tolist() == [0, -1, -1, 0, -1, -1, -1]


def _mag_files(tmp_path):
    """A pool CSV (no orderings; gaps) and a magnetic-ordering CSV (`ordering` column, as in shared/data/magnetic)
    sharing one material id. Toys: 0 NaCl, 5 NiO, 8 FeAl, 21 Fe (bcc), 22 W, 23 Cu, 1 MgO."""
    structures, _ = toy_structures()
    pool = tmp_path / "pool.csv.gz"
    _write_csv(pool, [structures[i] for i in (0, 5, 8, 22)],
               [{"band_gap": g, "source": "mp"} for g in ("5.0", "3.0", "0.0", "0.0")],
               ids=["mp-22862", "mp-19009", "mp-2658", "mp-91"])
    mag = tmp_path / "mp_magnetic_orderings.csv"
    _write_csv(mag, [structures[i] for i in (5, 21, 8, 23)],
               [{"reduced_formula": "NiO", "nsites": "4", "ordering": "AFM", "magmoms": "[1.7, -1.7, 0, 0]"},
                {"reduced_formula": "Fe", "nsites": "1", "ordering": "FM", "magmoms": "[2.2]"},
                {"reduced_formula": "FeAl", "nsites": "2", "ordering": "FiM", "magmoms": "[0.7, -0.02]"},
                {"reduced_formula": "Cu", "nsites": "1", "ordering": "", "magmoms": "[0]"}],
               ids=["mp-19009", "mp-13", "mp-2658-mag", "mp-30"])
    return pool, mag


def test_ordering_column_gives_labels(tmp_path):
    _, mag = _mag_files(tmp_path)
    c = cache_from_csv(mag, progress=False, workers=1)
    got = dict(zip(c.material_id.tolist(), c.magnetic_ordering.tolist()))
    # AFM, FM, FiM by name; an empty cell is unknown (Cu: a d-block metal, so the NM rule does not apply either)
    assert got == {"mp-19009": 3, "mp-13": 1, "mp-2658-mag": 2, "mp-30": -1}
    assert c.meta["magnetic_ordering"]["given"] == 3
    assert c.meta["magnetic_ordering"]["counts"] == {"NM": 0, "FM": 1, "FiM": 1, "AFM": 1}
    # a given label wins over the derived NM rule (NaCl would be derived NM)
    structures, _ = toy_structures(1)
    _write_csv(tmp_path / "nacl.csv", structures, [{"band_gap": "5.0", "ordering": "fm"}])
    nacl = cache_from_csv(tmp_path / "nacl.csv", progress=False, workers=1)
    assert nacl.magnetic_ordering.tolist() == [1] and nacl.meta["magnetic_ordering"]["given_over_derived_nm"] == 1


def test_duplicate_material_ids_are_merged(tmp_path, caplog):
    pool, mag = _mag_files(tmp_path)
    with caplog.at_level("INFO", logger="gpsk_materials.datasets.sources"):
        c = cache_from_csv([pool, mag], progress=False, workers=1)
    ids = c.material_id.tolist()
    assert sorted(ids) == sorted(["mp-22862", "mp-19009", "mp-2658", "mp-91", "mp-13", "mp-2658-mag", "mp-30"])
    i = ids.index("mp-19009")  # NiO: in both files, once in the cache
    assert c.magnetic_ordering[i] == 3 and c.band_gap[i] == 3.0 and c.source[i] == "mp"  # pool row + measured label
    assert c.magnetic_ordering[ids.index("mp-22862")] == 0  # NaCl, only in the pool: derived NM
    assert c.meta["merged"] == {"rows": 1, "magnetic_attached": 1, "magnetic_clashes": 0}
    assert "merged 1 rows" in caplog.text
    # the other order: the magnetic row comes first and takes the pool's band gap
    c2 = cache_from_csv([mag, pool], progress=False, workers=1)
    j = c2.material_id.tolist().index("mp-19009")
    assert c2.magnetic_ordering[j] == 3 and c2.band_gap[j] == 3.0 and c2.meta["merged"]["magnetic_attached"] == 0
    # two different measured orderings for one id: the first is kept, and said
    clash = tmp_path / "clash.csv"
    structures, _ = toy_structures()
    _write_csv(clash, [structures[5]], [{"ordering": "FM"}], ids=["mp-19009"])
    caplog.clear()
    c3 = cache_from_csv([mag, clash], progress=False, workers=1)
    assert c3.magnetic_ordering[c3.material_id.tolist().index("mp-19009")] == 3
    assert c3.meta["merged"]["magnetic_clashes"] == 1 and "two different magnetic orderings" in caplog.text


def test_magnetic_rows_of_evaluation_materials_are_excluded(tmp_path):
    from gpsk_materials.cli import main

    pool, mag = _mag_files(tmp_path)
    structures, _ = toy_structures()
    strained = structures[21].copy()  # bcc Fe under another id, 2% larger: caught only by structure matching
    strained.scale_lattice(strained.volume * 1.02)
    test_csv = tmp_path / "test.csv"
    _write_csv(test_csv, [structures[5], strained], [{"band_gap": ""}] * 2, ids=["mp-19009", "eval-fe"])
    out = tmp_path / "run"
    assert main(["train", "--data", str(pool), str(mag), "--exclude-csv", str(test_csv), "--match-structures",
                 "--out", str(out), "--cache-only", "--workers", "1", "--no-progress"]) == 0
    built = ArrayCache.load(out / "data.npz")
    ids = built.material_id.tolist()
    assert "mp-19009" not in ids and "mp-13" not in ids  # by id (in both files) and by structure (magnetic only)
    assert sorted(ids) == sorted(["mp-22862", "mp-2658", "mp-91", "mp-2658-mag", "mp-30"])
    assert built.meta["excluded"] == 2 and sorted(built.magnetic_ordering.tolist()) == [-1, -1, -1, 0, 2]


def test_bad_magnetic_label_names_file_and_row(tmp_path):
    structures, _ = toy_structures(3)
    path = tmp_path / "bad_ordering.csv"
    _write_csv(path, structures, [{"ordering": "FM"}, {"ordering": "AFM"}, {"ordering": "ferrimagnetic"}])
    with pytest.raises(DataError, match=r"bad_ordering\.csv, row 3 \(material_id mp-2\).*'ferrimagnetic'"):
        cache_from_csv(path, progress=False, workers=1)
    with pytest.raises(DataError, match="structure 0 .*magnetic ordering 'PM'"):
        cache_from_structures(structures[:1], {"magnetic_ordering": ["PM"]}, progress=False)
    # explicit unknowns and indices are accepted
    ok = cache_from_structures(structures, {"magnetic_ordering": ["unknown", 3, "Unknown"]}, progress=False)
    assert ok.magnetic_ordering.tolist() == [0, 3, 0]  # NaCl, KBr: unknown given, so derived NM; MgO: index 3 (AFM)


def test_splits_are_deterministic_and_leak_free(toy_cache):
    a = split_indices(toy_cache, {"train": 0.7, "val": 0.3}, seed=1)
    b = split_indices(toy_cache.subset(np.arange(len(toy_cache))[::-1]), {"train": 0.7, "val": 0.3}, seed=1)
    rev = toy_cache.subset(np.arange(len(toy_cache))[::-1])
    assert set(toy_cache.material_id[a["train"]]) == set(rev.material_id[b["train"]])  # order independent
    assert len(a["train"]) and len(a["val"])
    assert not set(a["train"]) & set(a["val"]) and len(a["train"]) + len(a["val"]) == len(toy_cache)
    excl = np.zeros(len(toy_cache), dtype=bool)
    excl[:5] = True
    c = split_indices(toy_cache, {"train": 0.7, "val": 0.3}, seed=1, exclude=excl)
    assert not set(range(5)) & (set(c["train"]) | set(c["val"]))
    assert set(c["train"]) == set(a["train"]) - set(range(5))  # other rows keep their split
    with pytest.raises(DataError, match="sum to 1"):
        split_indices(toy_cache, {"train": 0.7, "val": 0.2})
    with pytest.raises(DataError, match="key"):
        split_indices(toy_cache, by="nsites")


def test_formula_split_keeps_polymorphs_together(toy_cache):
    doubled = ArrayCache.concatenate([toy_cache, _renamed(toy_cache, "copy-")])
    s = split_indices(doubled, {"train": 0.5, "val": 0.5}, seed=3, by="formula")
    for name, idx in s.items():
        other = set(s["val" if name == "train" else "train"])
        assert not {f for f in doubled.formula[idx]} & {doubled.formula[i] for i in other}


def _renamed(cache: ArrayCache, prefix: str) -> ArrayCache:
    sub = cache.subset(np.arange(len(cache)))
    sub.material_id = np.array([prefix + m for m in sub.material_id])
    return sub


def test_exclusion_by_id_and_by_structure(toy_cache, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("toy-0  # NaCl\n\ntoy-3\n")
    assert read_id_list(ids_file) == {"toy-0", "toy-3"}
    mask = exclusion_mask(toy_cache, read_id_list(ids_file))
    assert np.flatnonzero(mask).tolist() == [0, 3]
    # the evaluation set holds MgO and GaAs under other ids and slightly strained: matched by structure
    structures, _ = toy_structures()
    ref_structs = [structures[1].copy(), structures[10].copy()]
    for s in ref_structs:
        s.scale_lattice(s.volume * 1.03)
    reference = cache_from_structures(ref_structs, material_ids=["eval-1", "eval-2"], progress=False)
    assert not exclusion_mask(toy_cache, (), reference).any()
    mask = exclusion_mask(toy_cache, (), reference, match_structures=True)
    assert np.flatnonzero(mask).tolist() == [1, 10]
    with pytest.raises(DataError, match="not found"):
        read_id_list(tmp_path / "none.txt")


def test_shared_data_falls_back_to_a_gzipped_copy(tmp_path, monkeypatch):
    from gpsk_materials.paths import SHARED_ENV, shared_data

    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    (tmp_path / "data" / "mp20").mkdir(parents=True)
    assert shared_data("mp20", "test.csv") == tmp_path / "data" / "mp20" / "test.csv"  # neither exists: as asked
    (tmp_path / "data" / "mp20" / "test.csv.gz").write_bytes(b"")
    assert shared_data("mp20", "test.csv").name == "test.csv.gz"
    (tmp_path / "data" / "mp20" / "test.csv").write_text("material_id\n")
    assert shared_data("mp20", "test.csv").name == "test.csv"  # the plain file wins
