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
