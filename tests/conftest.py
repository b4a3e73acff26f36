"""Shared test settings: headless matplotlib, few threads on the 2-core CI box."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _torch_seed():
    """Every test starts from torch's seed 0: a network built without a seed
    of its own has the same weights whatever ran before (an unseeded layer
    of a test was dead now and then, all zeros after its ReLU)."""
    import torch

    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Leave out scikit-learn's array API input checks unless SCIPY_ARRAY_API=1.

    scikit-learn skips them when scipy was imported without that variable,
    which it must be before scipy is first imported: in this process it never
    is. ``tests/test_coupled_nmf.py::test_array_api_checks_in_their_own_process``
    runs them in a child process that sets it, instead of skipping them here.
    """
    if os.environ.get("SCIPY_ARRAY_API") == "1":
        return
    keep, drop = [], []
    for item in items:
        (drop if "check_array_api_input" in item.nodeid else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
