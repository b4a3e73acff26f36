"""Sphinx configuration for sklearn_peek."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import sklearn_peek  # noqa: E402

project = "sklearn_peek"
author = "sklearn_peek developers"
release = sklearn_peek.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
intersphinx_mapping = {}
