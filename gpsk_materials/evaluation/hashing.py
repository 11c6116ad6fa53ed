"""BAWL structure hashes, as LeMaterial's material-hasher computes them for LeMat-Bulk and LeMat-GenBench.

A BAWL (Bonding Algorithm Weisfeiler-Lehman) hash is ``"<graph hash>_<space group>_<cell formula>"``
(Siron et al., *LeMat-Bulk*, AI4Mat @ ICLR 2025; Ongari et al., *J. Chem. Eng. Data* 67, 1743 (2022)):

1. **Bonding graph.** pymatgen's ``StructureGraph.from_local_env_strategy`` with ``EconNN(tol=0.2, cutoff=10,
   use_fictive_radius=True)`` on the structure *as given* (no primitive or Niggli reduction: material-hasher hashes
   the cell it receives). pymatgen stores each bond once, directed from the lower to the higher site index.
2. **Weisfeiler-Lehman hash** (Shervashidze et al., JMLR 12, 2539 (2011)) of that directed multigraph, 100
   iterations, initial node label = element symbol, no edge labels. One iteration relabels every node with the
   16-byte BLAKE2b hex digest of its label followed by the sorted labels of its *successors* (distinct neighbours
   along out-edges); the sorted (label, count) histogram of every iteration is appended to a list whose string
   form, hashed the same way, is the graph hash. This is the rule of ``structuregraph_helpers`` (which
   material-hasher calls), i.e. networkx's ``weisfeiler_lehman_graph_hash`` before networkx 3.5; networkx 3.5
   changed the rule for directed graphs (predecessors are aggregated too), so networkx's function no longer gives
   these hashes and the few lines are written here.
3. **Symmetry label**: spglib's space-group number through ``SpacegroupAnalyzer(symprec=0.01)`` (default
   ``angle_tolerance`` 5 degrees); an empty label where spglib fails, as material-hasher does.
4. **Composition**: ``Composition.formula`` without spaces (electronegativity order, explicit 1s), e.g.
   ``Mn3Ge3Pd3``.

Two consequences of the definition (not of this implementation): the hash depends on the site order (the bond
directions do) and on the cell (a supercell has another formula), so it recognises the same cell with the same site
order, which is how the reference hashes of a database are made and how a structure read from that database is
matched. Agreement with the published MP-20 hashes: ``benchmarks/bawl_hash_agreement.py`` (docs/evaluation.md).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from hashlib import blake2b

from pymatgen.core import Element, Structure
from tqdm.auto import tqdm

from gpsk_materials.errors import InvalidStructureError, UnknownElementError

#: material-hasher's bonding settings (``material_hasher.hasher.bawl.BAWLHasher`` defaults, used by LeMat-GenBench)
BAWL_BONDING = {"tol": 0.2, "cutoff": 10.0, "use_fictive_radius": True}
#: Weisfeiler-Lehman iterations and digest size (material-hasher: ``generate_hash(graph, True, False, 100)``)
BAWL_WL_ITERATIONS = 100
BAWL_DIGEST_SIZE = 16
#: spglib tolerance of the symmetry label (material-hasher ``SPGLibSymmetry``)
BAWL_SYMPREC = 0.01


def _digest(text: str, size: int) -> str:
    return blake2b(text.encode("ascii"), digest_size=size).hexdigest()


def weisfeiler_lehman_hash(graph, node_attr: str, iterations: int = BAWL_WL_ITERATIONS,
                           digest_size: int = BAWL_DIGEST_SIZE) -> str:
    """Weisfeiler-Lehman graph hash aggregating successors (the rule of networkx < 3.5 for directed graphs).

    Parameters
    ----------
    graph
        A networkx graph; for a directed (multi)graph only successors are aggregated, each distinct one once.
    node_attr
        Node attribute giving the initial labels.
    iterations, digest_size
        Relabelling rounds; bytes of each BLAKE2b digest.

    Returns
    -------
    str
        Hex digest of ``2 * digest_size`` characters.
    """
    neighbours = graph.successors if graph.is_directed() else graph.neighbors
    labels = {node: str(data[node_attr]) for node, data in graph.nodes(data=True)}
    histogram: list[tuple[str, int]] = []
    for _ in range(iterations):
        labels = {node: _digest(labels[node] + "".join(sorted(labels[n] for n in neighbours(node))), digest_size)
                  for node in graph.nodes()}
        histogram.extend(sorted(Counter(labels.values()).items(), key=lambda item: item[0]))
    return _digest(str(tuple(histogram)), digest_size)


class BAWLHasher:
    """BAWL hash of a Structure (see the module docstring for each step and its source).

    Parameters
    ----------
    bonding
        ``EconNN`` keyword arguments; default :data:`BAWL_BONDING`.
    iterations
        Weisfeiler-Lehman iterations; default :data:`BAWL_WL_ITERATIONS`.
    symprec
        spglib tolerance of the space-group label (Angstrom); default :data:`BAWL_SYMPREC`.

    Examples
    --------
    >>> BAWLHasher().get_hash(structure)  # doctest: +SKIP
    '0009632c49b8cd70df49e5003d2105f9_225_Ti1H1'
    """

    def __init__(self, bonding: dict | None = None, iterations: int = BAWL_WL_ITERATIONS,
                 symprec: float = BAWL_SYMPREC) -> None:
        self.bonding = dict(BAWL_BONDING if bonding is None else bonding)
        self.iterations = int(iterations)
        self.symprec = float(symprec)

    def get_graph_hash(self, structure: Structure) -> str:
        """Weisfeiler-Lehman hash of the EconNN bonding graph (32 hex characters)."""
        from pymatgen.analysis.graphs import StructureGraph
        from pymatgen.analysis.local_env import EconNN

        graph = StructureGraph.from_local_env_strategy(structure, EconNN(**self.bonding)).graph
        for index, site in enumerate(structure):
            graph.nodes[index]["specie"] = site.specie.name
        return weisfeiler_lehman_hash(graph, "specie", self.iterations)

    def get_symmetry_label(self, structure: Structure) -> str:
        """spglib space-group number as text, ``""`` where spglib fails (as material-hasher)."""
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        try:
            return str(SpacegroupAnalyzer(structure, self.symprec).get_symmetry_dataset().number)
        except Exception:  # spglib gives up on some degenerate cells; material-hasher leaves the label empty
            return ""

    def get_hash(self, structure: Structure) -> str:
        """``"<graph hash>_<space group>_<cell formula>"``.

        Raises
        ------
        InvalidStructureError
            A disordered structure (the bonding graph needs one element per site), or a structure pymatgen
            cannot build a bonding graph for.
        UnknownElementError
            A site holds a species that is not a chemical element (``DummySpecies("X")``).
        """
        if not isinstance(structure, Structure):
            raise InvalidStructureError(f"expected a pymatgen Structure, got {type(structure).__name__}")
        for i, site in enumerate(structure):
            for sp in site.species:
                if not isinstance(getattr(sp, "element", sp), Element):
                    raise UnknownElementError(f"{structure.formula}: site {i} holds {sp}, which is not a chemical "
                                              "element: a BAWL hash needs the element of every site")
        if not structure.is_ordered:
            raise InvalidStructureError(
                f"{structure.composition.reduced_formula}: BAWL hashes need an ordered structure (one element per site)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # EconNN warns about missing oxidation states
                graph_hash = self.get_graph_hash(structure)
        except Exception as exc:  # pymatgen's neighbour search on degenerate cells
            raise InvalidStructureError(
                f"{structure.composition.reduced_formula}: no bonding graph ({type(exc).__name__}: {exc})") from exc
        formula = structure.composition.formula.replace(" ", "")
        return f"{graph_hash}_{self.get_symmetry_label(structure)}_{formula}"

    def get_hashes(self, structures: Sequence[Structure], progress: bool = False) -> list[str | None]:
        """Hashes of many structures; ``None`` for a structure that cannot be hashed (one never sinks the rest)."""
        out: list[str | None] = []
        for structure in tqdm(structures, desc="BAWL hashes", disable=not progress):
            try:
                out.append(self.get_hash(structure))
            except InvalidStructureError:
                out.append(None)
        return out
