"""The second CI run installs the lowest versions pyproject.toml allows.

``.ci/min-versions.txt`` lists them; these tests keep it in step with the
lower bounds in ``pyproject.toml``, so that raising a bound without the
pins (or the reverse) fails here instead of silently testing other versions.
"""

import re
from pathlib import Path

from _helpers import pyproject

ROOT = Path(__file__).resolve().parent.parent


def _lower_bounds(specs):
    """``{name: "X.Y.Z"}`` for each ``name>=X.Y[.Z]`` (padded to three parts)."""
    out = {}
    for spec in specs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?>=([0-9.]+)(;.*)?", spec)
        if m:
            parts = m.group(3).split(".")
            out[m.group(1).lower()] = ".".join(parts + ["0"] * (3 - len(parts)))
    return out


def _pins():
    pins = {}
    for line in (ROOT / ".ci" / "min-versions.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_min_versions_pin_every_lower_bound():
    project = pyproject()
    runtime = _lower_bounds(project["dependencies"])
    # every runtime dependency has a lower bound, which the parser found
    assert len(runtime) == len(project["dependencies"]), project["dependencies"]
    pins = _pins()
    # torch's lowest release is a 3 GB CUDA build on PyPI: CI keeps torch
    # 2.13.0 (CPU) there, and the file says so
    assert "torch" not in pins and "torch" in runtime
    expected = {name: v for name, v in runtime.items() if name != "torch"}
    # pandas is a dev dependency (DataFrame output in the tests)
    expected["pandas"] = _lower_bounds(project["optional-dependencies"]["dev"])[
        "pandas"
    ]
    assert pins == expected


def test_ci_installs_the_pins_in_a_second_run():
    script = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    # the README's test command runs first, in the project's own environment
    assert "python -m pytest -q" in readme
    first = script.index("python -m pytest -q")
    second = script.index('-e ".[dev]" -c .ci/min-versions.txt')
    assert first < second
    assert "-m pytest" in script[second:]
