"""Best-of-N scoring: validity, energy (after the volume scan), symmetry match, connectivity."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials import provenance
from gpsk_materials.checks.scoring import CandidateScorer
from gpsk_materials.errors import ConditioningError, InvalidStructureError

from _checks_util import conventional_a, one_torch_thread, rock_salt, tensornet  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def candidates() -> list[Structure]:
    good = rock_salt(5.70)
    squeezed = rock_salt(0.75 * 5.64)
    broken = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.075, 0, 0]])  # 0.3 A apart
    return [broken, squeezed, good]


def test_scores_rank_candidates(tensornet):
    cands = candidates()
    scores = CandidateScorer(tensornet).score(cands, {"space_group": 225})
    assert scores[2] > scores[1] > scores[0]
    good = provenance.read(cands[2], "scores")
    assert good["valid"] and good["space_group"] == 225 and good["space_group_match"] is True
    assert good["connectivity"] == 1.0 and good["energy_per_atom"] == pytest.approx(-3.357, abs=0.005)
    assert good["total"] == pytest.approx(scores[2])
    assert provenance.read(cands[0], "scores")["valid"] is False


def test_symmetry_match_counts():
    plain = CandidateScorer(potential=False)
    s = rock_salt(5.64)
    match, miss = plain.score([s], {"space_group": 225})[0], plain.score([s], {"space_group": 221})[0]
    assert match - miss == pytest.approx(0.5)  # symmetry weight x (space group term)
    assert plain.score([s], {"crystal_system": "cubic"})[0] - plain.score([s])[0] == pytest.approx(0.25)


def test_select_best_with_volume_scan(tensornet):
    scorer = CandidateScorer(tensornet, volume_scan=True)
    squeezed, broken = rock_salt(0.75 * 5.64), Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.075, 0, 0]])
    (best,) = scorer.select_best([[broken, squeezed]], requests=[{"space_group": 225}])
    assert abs(conventional_a(best) / 5.64 - 1) < 0.03  # the squeezed one, rescaled
    assert provenance.read(best, "scores")["volume_scale_factor"] == pytest.approx(1.35, abs=0.03)
    assert squeezed.lattice.a == pytest.approx(0.75 * 5.64 / 2**0.5)  # inputs keep their geometry


def test_serialization_and_errors(tensornet):
    scorer = CandidateScorer(tensornet, weights={"energy": 2.0})
    d = scorer.as_dict()
    assert d["weights"]["energy"] == 2.0 and d["potential"]["backend"] == "matgl"
    assert CandidateScorer.from_dict(d).weights == scorer.weights
    with pytest.raises(ConditioningError):
        CandidateScorer(potential=False, weights={"beauty": 1.0})
    with pytest.raises(ConditioningError):
        CandidateScorer(potential=False, volume_scan=True)
    with pytest.raises(InvalidStructureError):
        scorer.select_best([[]])
    with pytest.raises(ConditioningError):
        scorer.select_best([[rock_salt(5.6)]], requests=[{}, {}])
    with pytest.raises(InvalidStructureError):
        scorer.score(["NaCl"])
