"""Every ``Examples`` section of the package's docstrings, run as written.

The examples are what the API reference shows; each printed value must be
the one the docstring gives (the same check as ``pytest --doctest-modules``,
run here so that the README's test command covers it with this directory's
settings: headless matplotlib, one thread).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sklearn_peek

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(sklearn_peek.__path__, "sklearn_peek.")
    if not m.name.endswith("__main__")  # importing it runs the command
)


def test_the_package_has_examples_to_run():
    finder = doctest.DocTestFinder()
    # the estimators, plotting, the CLI and the studies all show examples
    for name in (
        "sklearn_peek._coupled_nmf",
        "sklearn_peek._rank",
        "sklearn_peek._extract._base",
        "sklearn_peek.plotting",
        "sklearn_peek.cli",
        "sklearn_peek.studies",
    ):
        tests = finder.find(importlib.import_module(name))
        assert any(t.examples for t in tests), f"{name} has no docstring examples"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner()
    report = []
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
