"""``gpsk generate`` end to end into a temporary folder."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
from pymatgen.io.cif import CifParser

from gpsk_materials.cli import main
from gpsk_materials.pipelines.generator import default_model_dir
from gpsk_materials.pipelines.output import SUMMARY_COLUMNS
from test_generator_helpers import rock_salt_decode, tiny_model_dir  # noqa: F401


def _summary(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_generate_writes_cifs_extxyz_summary_and_table(tmp_path, tiny_model_dir, rock_salt_decode, capsys):  # noqa: F811
    out = tmp_path / "results"
    code = main(["generate", "NaCl", "Xx2", "NaCl", "-n", "2", "--space-group", "225", "--best-of", "2", "-z", "1",
                 "--steps", "3", "--seed", "5", "--model", str(tiny_model_dir), "--batch-size", "4",
                 "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # one request was rejected ...
    assert "rejected request 1 (Xx2)" in captured.err and "unknown element 'Xx'" in captured.err
    rows = _summary(out)  # ... and the others were written
    assert rows and list(rows[0]) == list(SUMMARY_COLUMNS)
    assert {r["request_index"] for r in rows} <= {"0", "2"} and len(rows) <= 4
    assert [r["file"] for r in rows] == [f"NaCl_{i}.cif" for i in range(len(rows))]
    frames = ase.io.read(out / "structures.extxyz", index=":")
    assert len(frames) == len(rows)
    for row, atoms in zip(rows, frames):
        s = CifParser(out / row["file"]).parse_structures(primitive=False)[0]
        assert s.composition.reduced_formula == row["formula"] == "NaCl"
        assert row["space_group_requested"] == "225" and row["space_group"] == "225" and row["valid"] == "True"
        assert row["formula_units"] == "1" and row["nsites"] == "2"
        assert atoms.info["file"] == row["file"] and atoms.info["seed"] == int(row["seed"])
        assert atoms.get_chemical_formula(mode="reduce") in ("ClNa", "NaCl")
    header = captured.out.splitlines()[0].split()
    assert header[:4] == ["file", "formula", "SG", "req"] and "E_hull" in header and "valid" in header
    assert f"wrote {len(rows)} structures" in captured.out


def test_console_script_end_to_end(tmp_path, tiny_model_dir):  # noqa: F811
    gpsk = Path(sys.executable).with_name("gpsk")
    if not gpsk.exists():
        pytest.skip("the gpsk console script is not installed beside this Python")
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(gpsk), "generate", "Fe2O3", "-n", "2", "--steps", "2", "--seed", "0", "--model", str(tiny_model_dir),
         "--band-gap", "2.0", "--magnetic-ordering", "AFM", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = _summary(out) if (out / "summary.csv").exists() else []
    assert len(rows) == len(list(out.glob("Fe2O3_*.cif"))) <= 2
    if rows:
        assert (out / "structures.extxyz").is_file() and f"wrote {len(rows)} structures" in proc.stdout
    else:  # nothing decoded: nothing written, and said so
        assert not out.exists() and "no structures: nothing written" in proc.stdout
    if len(rows) < 2:  # the untrained model rarely decodes; the shortfall is reported, not hidden
        assert "candidates decoded, seed 0" in proc.stderr
    bad = subprocess.run([str(gpsk), "generate", "NaCl", "--model", str(tmp_path / "missing"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_default_model_missing_is_a_clear_cli_error(tmp_path, monkeypatch, capsys):
    from gpsk_materials.pipelines import generator

    monkeypatch.setattr(generator, "default_model_dir", lambda: tmp_path / "weights" / "default")
    assert main(["generate", "NaCl", "--out", str(tmp_path / "o")]) == 1
    assert "default GPSK model is not installed" in capsys.readouterr().err
    import gpsk_materials

    assert default_model_dir() == Path(gpsk_materials.__file__).resolve().parent / "weights" / "default"


@pytest.mark.parametrize("value,words", [("1.5", "must be a flow time in [0, 1)"), ("-1", "must be a flow time"),
                                         ("abc", "not a number: 'abc'")])
def test_a_bad_projection_is_refused_before_the_model_loads(tmp_path, value, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "NaCl", "--projection", value, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --projection" in err and words in err
    assert not (tmp_path / "o").exists()
