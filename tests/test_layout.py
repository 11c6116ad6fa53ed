"""Where things live: datasets/ reads no vocabulary or file helpers from models/, no sub-package imports the
top-level command line, and the moved names keep their old import paths."""

from __future__ import annotations

import ast
from pathlib import Path

import gpsk_materials

PACKAGE = Path(gpsk_materials.__file__).parent


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_datasets_do_not_import_models():
    for path in (PACKAGE / "datasets").glob("*.py"):
        assert not any(m.startswith("gpsk_materials.models") for m in _imports(path)), path.name


def test_sub_packages_do_not_import_the_top_level_cli():
    for path in PACKAGE.glob("*/*.py"):
        assert "gpsk_materials.cli" not in _imports(path), path.relative_to(PACKAGE)


def test_moved_names_keep_their_old_import_paths():
    from gpsk_materials import cli, text_table, vocabulary
    from gpsk_materials.models import conditioning, io
    from gpsk_materials.pipelines import generator

    assert generator.folder_hash is io.folder_hash
    assert cli.format_table is text_table.format_table
    assert conditioning.SCALARS is vocabulary.SCALARS and conditioning.MODALITIES is vocabulary.MODALITIES
    assert text_table.format_table([{"a": True, "b": 0.5}, {"a": None, "b": "x"}], [("a", "A"), ("b", "B")]) == (
        "A    B\nyes  0.5000\n-    x")
