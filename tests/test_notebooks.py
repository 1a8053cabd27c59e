"""Every ``notebooks/*.ipynb`` is committed executed, and still runs top to bottom.

The notebooks are committed with their outputs (plots and numbers), so a reader
browsing them sees the results. To keep those outputs honest, each notebook is
re-executed here, in memory (the committed file is never rewritten), in a fresh
kernel with the notebook's folder as the working directory: an exception in any
cell, including the ``assert`` cells that check each notebook's headline numbers,
fails the test with that cell's traceback. No pixels are compared; the plots
only have to be drawn by the same cells as in the committed copy.

After editing a notebook, regenerate its committed outputs with the same code::

    python tests/test_notebooks.py                              # every notebook
    python tests/test_notebooks.py notebooks/04_vae.ipynb       # one

which executes it as below and writes it back without volatile metadata
(execution timestamps, the kernel's Python version), so diffs stay small.
Needs nbclient, nbformat, ipykernel and what the notebooks import (Flax, Haiku,
matplotlib, scikit-learn): the ``test`` and ``notebooks`` extras.
"""

from __future__ import annotations

import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
REGENERATE = "python tests/test_notebooks.py"
# The notebook metadata worth keeping; the rest (language_info's version, widget state) varies by machine.
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
  """``nb`` without volatile metadata, and each run of printed text as one output (in place; returned)."""
  nb.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
  for cell in nb.cells:
    for key in ("execution", "collapsed", "scrolled", "jupyter", "ExecuteTime"):
      cell.metadata.pop(key, None)
    if cell.cell_type == "code":  # the kernel splits a cell's prints into chunks at random points
      outputs = []
      for output in cell.outputs:
        if outputs and output.output_type == "stream" == outputs[-1].output_type and (
            output.name == outputs[-1].name):
          outputs[-1].text += output.text
        else:
          outputs.append(output)
      cell.outputs = outputs
  return nb


def execute(path: pathlib.Path) -> nbformat.NotebookNode:
  """A copy of the notebook at ``path``, executed top to bottom in a fresh kernel; the file is untouched."""
  nb = nbformat.read(path, as_version=4)
  # A fresh kernel with JAX's default configuration: the suite's strict
  # promotion and simulated devices stay in this process.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  client = NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                          resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute(env=env)
  return strip(nb)


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
  return [cell for cell in nb.cells if cell.cell_type == "code"]


def draws(cell: nbformat.NotebookNode) -> bool:
  """Whether the cell's outputs include a plot."""
  return any("image/png" in output.get("data", {}) for output in cell.outputs)


def test_the_notebooks_are_found():
  assert len(PATHS) >= 3, f"expected the notebooks under {NOTEBOOKS}; found {PATHS}"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_committed_executed(path):
  nb = nbformat.read(path, as_version=4)
  cells = code_cells(nb)
  counts = [cell.execution_count for cell in cells]
  assert counts == list(range(1, len(cells) + 1)), (
      f"{path.name}: the outputs must come from one run of every cell, top to bottom (execution counts "
      f"{counts}); regenerate them with `{REGENERATE} {path.relative_to(NOTEBOOKS.parent)}`")
  errors = [i for i, cell in enumerate(cells) for o in cell.outputs if o.output_type == "error"]
  assert not errors, f"{path.name}: code cells {errors} are committed with an error"
  assert any(draws(cell) for cell in cells), f"{path.name}: no plot among the committed outputs"
  stripped = strip(nbformat.from_dict(nbformat.read(path, as_version=4)))
  assert nb == stripped, f"{path.name}: volatile metadata is committed; regenerate with `{REGENERATE}`"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes(path):
  committed = code_cells(nbformat.read(path, as_version=4))
  executed = code_cells(execute(path))
  errors = [o for cell in executed for o in cell.outputs if o.output_type == "error"]
  assert not errors, errors
  drawn = [i for i, cell in enumerate(executed) if draws(cell)]
  assert drawn == [i for i, cell in enumerate(committed) if draws(cell)], (
      f"{path.name}: code cells {drawn} draw plots now, unlike the committed outputs; "
      f"regenerate them with `{REGENERATE}`")


if __name__ == "__main__":
  for arg in sys.argv[1:] or PATHS:
    target = pathlib.Path(arg).resolve()
    print(f"executing {target.name}", flush=True)
    nbformat.write(execute(target), target)
