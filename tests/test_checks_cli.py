"""``gpsk check`` end to end."""

from __future__ import annotations

import json

import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials.cli import main

from _checks_util import one_torch_thread, rock_salt  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gpsk_check_end_to_end(tmp_path, monkeypatch, capsys, matgl_model_dir, shared_data_dir):
    monkeypatch.setenv("GPSK_CACHE_DIR", str(tmp_path / "cache"))
    rock_salt(0.75 * 5.64, primitive=False).to(filename=str(tmp_path / "nacl.cif"))
    Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]]).to(filename=str(tmp_path / "bad.cif"))
    out = tmp_path / "out" / "report.json"
    code = main(["check", str(tmp_path / "nacl.cif"), str(tmp_path / "bad.cif"), "--volume-scan", "--hull",
                 "--space-group", "225", "--json", str(out)])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "Fm-3m" in text and "E_hull" in text and "a_new/a_old" in text
    good, bad = json.loads(out.read_text())
    assert good["space_group"] == 225 and good["space_group_match"] and good["valid"]
    assert good["volume_scale_factor"] == pytest.approx(1.35, abs=0.03)
    assert abs(good["e_above_hull"]) < 0.01
    assert Structure.from_dict(good["structure"]).volume == pytest.approx(good["volume_per_atom"] * 8)
    assert not bad["structural_valid"] and not bad["valid"]
    assert (tmp_path / "cache" / "reference_energies.json").is_file()


def test_gpsk_check_without_energy(tmp_path, capsys):
    rock_salt(5.64).to(filename=str(tmp_path / "a.cif"))
    assert main(["check", str(tmp_path / "a.cif"), "--no-energy"]) == 0
    text = capsys.readouterr().out
    assert "Fm-3m" in text and "E (eV/atom)" not in text


def test_gpsk_check_bad_file(tmp_path, capsys):
    (tmp_path / "junk.cif").write_text("not a cif")
    assert main(["check", str(tmp_path / "junk.cif"), "--no-energy"]) == 1
    assert main(["check", str(tmp_path / "missing.cif"), "--no-energy"]) == 1
    assert "error" in capsys.readouterr().err
