"""Crystal datasets as compact array caches (NumPy only to read), their sources and leak-free splits."""

from gpsk_materials.datasets.cache import ArrayCache
from gpsk_materials.datasets.magnetism import derive_magnetic_ordering
from gpsk_materials.datasets.sources import (
    LABEL_COLUMNS,
    cache_from_ase_db,
    cache_from_csv,
    cache_from_structures,
    load_source,
)
from gpsk_materials.datasets.splits import exclusion_mask, read_id_list, split_indices

__all__ = [
    "LABEL_COLUMNS",
    "ArrayCache",
    "cache_from_ase_db",
    "cache_from_csv",
    "cache_from_structures",
    "derive_magnetic_ordering",
    "exclusion_mask",
    "load_source",
    "read_id_list",
    "split_indices",
]
