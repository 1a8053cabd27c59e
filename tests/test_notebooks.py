"""Every ``notebooks/*.ipynb`` runs top to bottom without error, so none can rot.

One test per notebook, executed with nbclient in a fresh kernel with the
notebook's folder as the working directory; an exception in any cell fails the
test with that cell's traceback. The notebooks are committed with their
outputs cleared (checked here too), so a diff shows only code changes.
Needs the ``examples`` extra (nbclient, nbformat, ipykernel, Flax, Haiku,
matplotlib, scikit-learn), which the README's test command installs.
"""

from __future__ import annotations

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_are_found():
  assert len(PATHS) >= 3, f"expected the notebooks under {NOTEBOOKS}; found {PATHS}"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
  assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes(path):
  nb = nbformat.read(path, as_version=4)
  # A fresh kernel with JAX's default configuration: the suite's strict
  # promotion and simulated devices stay in this process.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  client = NotebookClient(
      nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute(env=env)
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors, errors
