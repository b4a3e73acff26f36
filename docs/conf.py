"""Sphinx configuration for sklearn_peek."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import sklearn_peek

project = "sklearn_peek"
author = "sklearn_peek developers"
release = sklearn_peek.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
]
autosummary_generate = True
# Class pages document the class's own methods in full (not inherited
# scikit-learn helpers such as get_params), plus __call__ of scorers.
templates_path = ["_templates"]
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
# Wide enough for 88-column code (ruff's line length) without scrolling.
html_theme_options = {"page_width": "1180px", "sidebar_width": "230px"}


def _skip_metadata_requests(app, what, name, obj, skip, options):
    # scikit-learn generates set_{fit,transform,score,...}_request on every
    # estimator; their docstrings point into scikit-learn's own docs.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_requests)
