"""Atomic file writes: one home (gpsk_materials.atomic_files) for the datasets, checks, diffraction and model I/O."""

from __future__ import annotations

import json
import os
import stat

import pytest

from gpsk_materials import atomic_files as A


def test_written_files_have_ordinary_permissions_and_no_leftovers(tmp_path):
    A.write_bytes_atomic(tmp_path / "sub" / "a.bin", b"abc")
    A.write_json_atomic(tmp_path / "b.json", {"y": 1, "x": [2]})
    A.write_atomic(tmp_path / "c.txt", lambda p: open(p, "w").write("hello"), ".txt")
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"abc"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [2], "y": 1}
    assert (tmp_path / "c.txt").read_text() == "hello"
    mode = stat.S_IMODE(os.stat(tmp_path / "c.txt").st_mode)
    assert mode == 0o666 & ~A.umask()  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "c.txt", "sub"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    A.write_text_atomic(path, "old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        A.write_atomic(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_model_io_keeps_its_public_names():
    from gpsk_materials.models import io

    assert io.write_bytes_atomic is A.write_bytes_atomic and io.write_json_atomic is A.write_json_atomic


def test_csv_rows_are_written_atomically_in_column_order(tmp_path):
    path = tmp_path / "rows.csv"
    A.write_csv_atomic(path, [{"b": 1, "a": None, "extra": "x"}, {"a": "y"}], ["a", "b"])
    assert path.read_text().splitlines() == ["a,b", ",1", "y,"]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


def test_a_folder_is_built_beside_and_swapped_in(tmp_path):
    target = tmp_path / "model"
    A.write_folder_atomic(target, lambda tmp: (tmp / "a.txt").write_text("one"))
    assert (target / "a.txt").read_text() == "one"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~A.umask()  # not mkdtemp's 0700
    # a second build replaces the whole folder (no file of the old one is left)
    A.write_folder_atomic(target, lambda tmp: (tmp / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]

    def fail(tmp):
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        A.write_folder_atomic(target, fail)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or set-aside folder is left


def test_checkpoints_and_generation_results_go_through_atomic_files(tmp_path, monkeypatch):
    """The training checkpoint's folder swap and the generation summary use this module (no writer of their own)."""
    import torch

    from gpsk_materials.pipelines.output import SUMMARY_COLUMNS, write_results
    from gpsk_materials.training import checkpoint

    seen = []
    folder, csv_ = A.write_folder_atomic, A.write_csv_atomic
    monkeypatch.setattr(checkpoint, "write_folder_atomic", lambda p, b: seen.append(("folder", p)) or folder(p, b))
    final = checkpoint.save_checkpoint(tmp_path / "run", "vae-1", {"model": {"w": torch.ones(2)}}, {"step": 1})
    again = checkpoint.save_checkpoint(tmp_path / "run", "vae-1", {"model": {"w": torch.zeros(2)}}, {"step": 1})
    assert final == again == tmp_path / "run" / "checkpoints" / "vae-1" and len(seen) == 2
    assert sorted(p.name for p in final.parent.iterdir()) == ["vae-1"]
    assert torch.equal(checkpoint.load_tensors(final, "model")[0]["w"], torch.zeros(2))

    from gpsk_materials.pipelines import output

    monkeypatch.setattr(output, "write_csv_atomic", lambda p, r, c: seen.append(("csv", p)) or csv_(p, r, c))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.csv").write_text("an earlier run's summary\n")
    assert write_results([], tmp_path / "out") == []  # nothing to write: an earlier run's files stay
    assert (tmp_path / "out" / "summary.csv").read_text() == "an earlier run's summary\n"
    from pymatgen.core import Lattice, Structure

    from gpsk_materials.pipelines import GenerationRequest, GenerationResult

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert len(write_results([GenerationResult(0, GenerationRequest("NaCl"), structures=[nacl])], tmp_path / "out")) == 1
    assert seen[-1] == ("csv", tmp_path / "out" / "summary.csv")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["NaCl_0.cif", "structures.extxyz", "summary.csv"]
    text = (tmp_path / "out" / "summary.csv").read_bytes()
    assert b"\r" not in text and text.decode().splitlines()[0] == ",".join(SUMMARY_COLUMNS)
