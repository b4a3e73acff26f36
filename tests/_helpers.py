"""Helpers shared by several test modules (numpy and sklearn_peek only).

Import them with ``from _helpers import ...``: pytest puts ``tests/`` on
``sys.path`` (rootdir-style ``conftest.py``, no ``__init__.py``).
"""

import gzip
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from sklearn_peek import CoupledNMF


def pyproject():
    """The ``[project]`` table of the repository's ``pyproject.toml``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
        import tomli as tomllib
    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    return tomllib.loads(path.read_text())["project"]


_IDX_DTYPES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def idx_bytes(arr, code=0x08):
    """``arr`` as the bytes of an IDX file (MNIST's format) of type ``code``."""
    arr = np.asarray(arr)
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(
        f">{arr.ndim}i", *arr.shape
    )
    return header + arr.astype(_IDX_DTYPES[code]).tobytes()


def write_idx(path, arr, code=0x08, gz=False):
    """Write ``arr`` to ``path`` as an IDX file, gzipped if ``gz``."""
    payload = idx_bytes(arr, code)
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def fit_quietly(X, **params):
    """``CoupledNMF(**params)`` fitted on ``X`` without ConvergenceWarning.

    Returns
    -------
    model : CoupledNMF
    W : ndarray
        ``model.fit_transform(X)``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = CoupledNMF(**params)
        W = model.fit_transform(X)
    return model, W


_SOLVERS = (
    "fit_hals",
    "fit_mu",
    "fit_hals_batched",
    "solve_w",
    "solve_w_kl",
    "solve_w_batched",
)


def record_calls(monkeypatch, owner, name, into=None):
    """Replace ``owner.name`` by a wrapper that records each call's positional
    arguments (a tuple; ``self`` first for a method) and calls through.

    Returns the list the calls go to (``into``, or a new one): several
    functions can share one list, in call order.
    """
    calls = [] if into is None else into
    real = getattr(owner, name)

    def recorded(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls


def spy_solvers(monkeypatch):
    """Record which kind of array each solver function of ``_solvers`` gets.

    Returns a list that fills with ``(function name, "torch" or "numpy")``
    for every call, so that a test can tell which code path actually ran
    (comparing torch results with NumPy results alone would also pass if
    both ran the NumPy code).
    """
    from sklearn_peek import _solvers

    calls = []
    for name in _SOLVERS:
        real = getattr(_solvers, name)

        def spy(X, *args, _real=real, _name=name, **kwargs):
            kind = "numpy" if isinstance(X, np.ndarray) else type(X).__module__
            calls.append((_name, kind.split(".")[0]))
            return _real(X, *args, **kwargs)

        monkeypatch.setattr(_solvers, name, spy)
    return calls


def solver_kinds(calls):
    """The set of array kinds in ``calls`` (see :func:`spy_solvers`), then
    empty ``calls`` for the next fit."""
    kinds = {kind for _, kind in calls}
    calls.clear()
    return kinds


def in_threads(jobs):
    """Run the callables in ``jobs`` in threads started together; their results."""
    start = threading.Barrier(len(jobs))
    out = [None] * len(jobs)

    def run(k):
        start.wait()
        out[k] = jobs[k]()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out
