"""The guide examples whose printed results the docs quote, run as written.

Each example is read from its .rst file up to the ``print(...)  # result``
line, and the printed value must equal the quoted result: editing the code or
the quoted output alone makes this fail. Nor may an example warn (e.g. fits
stopping at ``max_iter``): a reader running it would see what the page does
not show.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "user_guide"


def _example(rst, expected):
    """The code block of ``rst`` that prints ``expected``, up to that line."""
    lines = (DOCS / rst).read_text().splitlines()
    end = next(i for i, ln in enumerate(lines) if ln.rstrip().endswith(f"# {expected}"))
    start = max(i for i in range(end) if lines[i].strip() == ".. code-block:: python")
    body = textwrap.dedent("\n".join(lines[start + 1 : end + 1]))
    call = re.fullmatch(r"print\((.*)\)\s*#.*", body.splitlines()[-1].strip())
    assert call, f"{rst}: the example's last line is not print(...)  # result"
    return "\n".join(body.splitlines()[:-1]), call.group(1)


@pytest.mark.parametrize(
    "rst, expected",
    [
        ("coupled_nmf.rst", "{'n_components': 5}"),
        ("rank.rst", "{'conv1': 4}"),
        # rank limits from the block layout, before any fit
        ("rank.rst", "{'2': 36, '5': 5}"),
        # GridSearchCV over LeNet's epochs, scored without labels (the layer
        # alone): the 20-epoch network must win
        ("rank.rst", "{'epochs': 20}"),
    ],
)
def test_guide_example_prints_what_the_guide_says(rst, expected):
    code, expr = _example(rst, expected)
    namespace = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, rst, "exec"), namespace)
        value = eval(expr, namespace)
    assert repr(value) == expected
    shown = (UserWarning, RuntimeWarning)  # ConvergenceWarning is a UserWarning
    warned = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not [w for w in caught if issubclass(w.category, shown)], warned
