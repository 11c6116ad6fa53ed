"""The tutorial notebooks (tutorials/*.ipynb): stored without outputs, and each one executes cleanly.

Each notebook runs in a fresh ``python3`` kernel (jupyter_client starts it with this interpreter) in a temporary
working folder. The notebooks hold their own ``assert`` statements, so a wrong result fails the cell; on top of that
the test checks that the last cell printed its summary line, that the plots were drawn and that the files the
notebook promises exist. Notebooks that need shared data skip with the path they looked for.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gpsk_materials.paths import SHARED_ENV, shared_data, shared_model

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
POTENTIAL = ("matgl", "TensorNet-MatPES-PBE-v2025.1-PES")

#: notebook -> (shared paths it needs, start of its last line of output, plots drawn at least, files written)
NOTEBOOKS = {
    "01_representation.ipynb": ([], "tutorial 01 finished", 3, []),
    "02_generate_and_check.ipynb": ([shared_model(*POTENTIAL)], "tutorial 02 finished", 0, []),
    "03_screening.ipynb": ([shared_model(*POTENTIAL)], "tutorial 03 finished", 1, ["screening.png"]),
    "04_train_tiny.ipynb": ([shared_data("mp20", "train.csv")], "tutorial 04 finished", 1, []),
    "05_powder_solve.ipynb": ([], "tutorial 05 finished", 2, []),
}
#: seconds one cell may run (the notebooks take well under a minute each on two idle CPU cores)
CELL_TIMEOUT = 300


def test_every_notebook_is_listed():
    assert sorted(p.name for p in TUTORIALS.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{name}: code cells {dirty} hold outputs; strip them before committing"


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                   and o.get("name") == "stdout")


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
@pytest.mark.timeout(4 * CELL_TIMEOUT)
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs(name, tmp_path):
    from nbclient import NotebookClient

    needs, summary, plots, files = NOTEBOOKS[name]
    missing = [str(p) for p in needs if not p.exists()]
    if missing:
        pytest.skip(f"{name} needs shared data {missing}: set ${SHARED_ENV} to the folder holding data/ and models/")
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the traceback) if any cell, or any assert in it, fails
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.1f} s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, errors
    last = _text(code[-1]).strip().splitlines()
    assert last and last[-1].startswith(summary), f"{name}: last cell printed {last!r}"
    assert _images(nb) >= plots, f"{name}: {_images(nb)} plots drawn, expected at least {plots}"
    for f in files:
        assert (tmp_path / f).is_file() and (tmp_path / f).stat().st_size > 0, f"{name} did not write {f}"
