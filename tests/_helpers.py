"""Helpers shared by several test modules (numpy and sklearn_peek only).

Import them with ``from _helpers import ...``: pytest puts ``tests/`` on
``sys.path`` (rootdir-style ``conftest.py``, no ``__init__.py``).
"""

import gzip
import struct
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from sklearn_peek import CoupledNMF

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
