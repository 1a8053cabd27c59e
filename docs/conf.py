"""Sphinx configuration of jaxdiv's API reference.

Build (the ``docs`` extra, beside jaxdiv itself; CI does the same with ``-W``)::

    pip install ".[docs]" && sphinx-build -W -b html docs docs/_build/html

autodoc documents the installed ``jaxdiv`` (the one ``import jaxdiv`` finds), napoleon reads the
Google-style docstrings, MathJax renders their ``.. math::``. The front page is the README; the
notebooks (``docs/notebooks`` links to ``../notebooks``) are shown with their committed outputs and
never executed here: ``tests/test_notebooks.py`` executes them.
"""

import re

import jaxdiv

project = "jaxdiv"
author = "the jaxdiv authors"
copyright = "the jaxdiv authors, Apache-2.0"
release = version = jaxdiv.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",  # Markdown (the README) and notebooks; includes myst_parser
]

exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# autodoc: members in the order of each module's __all__ (or source order), signatures as written.
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_type_aliases = {"ArrayLike": "jax.typing.ArrayLike"}  # not its expansion into eight types


def _alias_names(app, what, name, obj, options, signature, return_annotation):
  """Print ``ArrayLike | None`` as written: Sphinx 9 prints an alias inside a union as its repr."""
  def fix(text):
    return text and re.sub(r"TypeAliasForwardRef\('([^']*)'\)", r"\1", text)
  return fix(signature), fix(return_annotation)


def setup(app):
  app.connect("autodoc-process-signature", _alias_names)

# napoleon: Google style, as every jaxdiv docstring; the "Numerics:" and "References:" sections are
# jaxdiv's own headings, rendered as admonition-like paragraphs.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Numerics", "notes_style"), ("References", "notes_style")]
napoleon_use_rtype = False

# myst-nb: show the committed outputs, never execute (CI executes the notebooks in tests/).
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath"]  # the notebooks' $$ math

html_theme = "alabaster"
html_title = f"jaxdiv {release}"
html_theme_options = {"description": "NaN-safe cross-entropy and KL divergences for JAX"}
