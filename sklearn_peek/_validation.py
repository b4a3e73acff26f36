"""Small input-checking helpers shared by the estimators of sklearn_peek.

This is also the one place where scikit-learn's private helpers are imported
(``_fit_context``, the parameter-constraint classes and validator, and the
``set_output`` configuration), so a change in scikit-learn's internals has to
be followed here only.

Every check raises an exception that names the argument, the value that was
received (and where, for arrays) and what was expected.
"""

from __future__ import annotations

import contextlib
import difflib
import numbers
import threading
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import _fit_context
from sklearn.utils._param_validation import (
    HasMethods,
    Hidden,
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.validation import check_is_fitted, validate_data

from sklearn_peek._backend import is_torch_tensor

__all__ = [
    "HasMethods",
    "Hidden",
    "Interval",
    "InvalidParameterError",
    "Options",
    "StrOptions",
    "_fit_context",
    "check_finite",
    "check_finite_nonneg",
    "check_is_fitted",
    "check_weights",
    "column_block_sq_norms",
    "muted",
    "transform_output",
    "validate_data",
    "validate_parameter_constraints",
    "validate_params",
    "warn",
]

# The warning categories :func:`muted` drops, per thread.
_MUTED = threading.local()


@contextlib.contextmanager
def muted(*categories):
    """Within the block, in this thread only, :func:`warn` drops warnings of
    ``categories`` (and of their subclasses).

    For the warnings the library itself reports another way (a fit that
    stopped at ``max_iter`` is one ``cv_results_["converged"]`` entry of a
    rank sweep). ``warnings.catch_warnings`` swaps the process-wide filters
    and ``showwarning``; it is not thread-safe (before Python 3.14), and rank
    sweeps run in joblib's threading backend too, where overlapping uses of
    it could leave another thread's filters installed, hiding warnings after
    the sweep.
    """
    before = getattr(_MUTED, "categories", ())
    _MUTED.categories = before + tuple(categories)
    try:
        yield
    finally:
        _MUTED.categories = before


def warn(message, category=UserWarning, stacklevel=1):
    """``warnings.warn`` unless :func:`muted` drops ``category`` in this
    thread; ``stacklevel`` counts from the caller, as for ``warnings.warn``.
    A ``message`` that is a Warning instance gives its own category."""
    cls = type(message) if isinstance(message, Warning) else category
    if any(issubclass(cls, c) for c in getattr(_MUTED, "categories", ())):
        return
    warnings.warn(message, category, stacklevel=stacklevel + 1)


# Rows per chunk when scanning a dense array: bounds the temporary boolean /
# float64 arrays to a few MiB whatever the size of the input.
_CHUNK_ELEMENTS = 1 << 16


def _row_chunks(n_rows, n_cols):
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _first_position(mask):
    """Return (row, col) of the first True entry of a 2-D boolean array."""
    idx = np.flatnonzero(mask.ravel())[0]
    return divmod(int(idx), mask.shape[1])


def check_finite_nonneg(X, *, name="X", where=None, col_names=None):
    """Check that every entry of ``X`` is finite and non-negative.

    The scan runs over row chunks, so it never allocates a temporary the size
    of ``X``.

    Parameters
    ----------
    X : ndarray or scipy sparse matrix of shape (n_rows, n_cols)
        The array to check (already converted to a float dtype).
    name : str, default="X"
        Name of the argument, used in the message.
    where : str, default=None
        Name of the caller (for example ``"CoupledNMF.fit"``), used in the
        message.
    col_names : sequence of str, default=None
        Column names; when given, the message names the offending column.

    Raises
    ------
    ValueError
        If an entry is NaN, infinite or negative. The message gives the row and
        column of the first offending entry and its value.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek._validation import check_finite_nonneg
    >>> check_finite_nonneg(np.ones((2, 3)))
    >>> try:
    ...     check_finite_nonneg(np.array([[1.0, -2.0]]))
    ... except ValueError as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    Negative values in data passed to argument X: X[0, 1] = -2.0 at row 0, ...
    """
    _scan(X, name, where, col_names, nonneg=True)


def check_finite(X, *, name="X", where=None, what=None):
    """Check that every entry of ``X`` is finite (negative values are allowed).

    The scan runs over row chunks, like :func:`check_finite_nonneg`.

    Parameters
    ----------
    X : ndarray or scipy sparse matrix of shape (n_rows, n_cols)
        The array to check (already converted to a float dtype).
    name : str, default="X"
        Name of the argument, used in the message.
    where : str, default=None
        Name of the caller (for example ``"CoupledNMF.inverse_transform"``),
        used in the message.
    what : str, default=None
        What the argument holds (for example ``"the sample factor W"``),
        added to the message after its name.

    Raises
    ------
    ValueError
        If an entry is NaN or infinite. The message gives the row and column
        of the first offending entry and its value.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek._validation import check_finite
    >>> check_finite(np.array([[-1.0, 2.0]]))
    >>> try:
    ...     check_finite(np.array([[1.0, np.nan]]), name="W", what="the factor")
    ... except ValueError as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    Input W contains NaN: argument W (the factor) has W[0, 1] = nan at row 0, ...
    """
    _scan(X, name, where, None, nonneg=False, what=what)


def _scan(X, name, where, col_names, *, nonneg, what=None):
    """Raise for the first non-finite (or, with ``nonneg``, negative) entry."""
    caller = f"{where} " if where else ""
    label = f"{name} ({what})" if what else name

    def fail(kind, row, col, value):
        _raise(kind, name, caller, row, col, value, col_names, label)

    if sp.issparse(X):
        X = X.tocsr()
        data = X.data
        checks = [(~np.isfinite(data), "nonfinite")]
        if nonneg:
            checks.append((data < 0, "negative"))
        for bad, kind in checks:
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                row = int(np.searchsorted(X.indptr, k, side="right") - 1)
                fail(kind, row, int(X.indices[k]), data[k])
        return
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(
            f"{caller}argument {label} must be 2-D (n_samples, n_features); "
            f"got an array of shape {X.shape}."
        )
    for start, stop in _row_chunks(X.shape[0], X.shape[1]):
        chunk = X[start:stop]
        finite = np.isfinite(chunk)
        if not finite.all():
            r, c = _first_position(~finite)
            fail("nonfinite", start + r, c, chunk[r, c])
        if nonneg and chunk.size and chunk.min() < 0:
            r, c = _first_position(chunk < 0)
            fail("negative", start + r, c, chunk[r, c])


def _raise(kind, name, caller, row, col, value, col_names, label):
    col_txt = f" (column {col_names[col]!r})" if col_names is not None else ""
    if kind == "nonfinite":
        what = "NaN" if np.isnan(value) else "infinity"
        raise ValueError(
            f"Input {name} contains {what}: {caller}argument {label} has "
            f"{name}[{row}, {col}] = {float(value)!r} at row {row}, column {col}"
            f"{col_txt}; expected finite values (NaN and inf are not allowed)."
        )
    raise ValueError(
        f"Negative values in data passed to {caller}argument {label}: "
        f"{name}[{row}, {col}] = {float(value)!r} at row {row}, column {col}"
        f"{col_txt}; expected non-negative values (e.g. post-ReLU activations or "
        "pixel intensities)."
    )


def transform_output(estimator):
    """The container ``set_output`` asks ``estimator``'s transform to return.

    Parameters
    ----------
    estimator : estimator instance
        A transformer (its own ``set_output`` setting counts first, then
        ``sklearn.set_config(transform_output=...)``).

    Returns
    -------
    container : str
        ``"default"``, ``"pandas"`` or ``"polars"``.
    source : str
        How it was set, in the words the user typed: ``"set_output(transform=
        'pandas')"`` or ``"sklearn.set_config(transform_output='pandas')"``.

    Examples
    --------
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn_peek._validation import transform_output
    >>> transform_output(StandardScaler().set_output(transform="pandas"))
    ('pandas', "set_output(transform='pandas')")
    """
    container = _get_output_config("transform", estimator)["dense"]
    own = getattr(estimator, "_sklearn_output_config", {}).get("transform")
    if own is not None:
        source = f"set_output(transform={own!r})"
    else:
        source = f"sklearn.set_config(transform_output={container!r})"
    return container, source


def column_block_sq_norms(X, slices, *, ord="fro"):
    """Per-block sums over the columns of ``X``, accumulated in float64.

    Parameters
    ----------
    X : ndarray or scipy sparse matrix of shape (n_rows, n_cols)
    slices : list of slice
        Column slices, one per block.
    ord : {"fro", "sum"}, default="fro"
        ``"fro"`` returns squared Frobenius norms, ``"sum"`` plain sums.

    Returns
    -------
    ndarray of shape (n_blocks,), float64

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek._validation import column_block_sq_norms
    >>> column_block_sq_norms(np.ones((2, 3)), [slice(0, 1), slice(1, 3)])
    array([2., 4.])
    """
    if sp.issparse(X):
        # the column of every stored value: CSR holds them, other formats
        # through COO (np.add.reduceat over CSC pointers fails when the last
        # columns are empty: their start equals the number of stored values)
        coo = X if X.format == "csr" else X.tocoo()
        cols = X.indices if X.format == "csr" else coo.col
        vals = coo.data.astype(np.float64)  # a copy: squared in place below
        if ord == "fro":
            np.square(vals, out=vals)
        per_col = np.bincount(cols, weights=vals, minlength=X.shape[1])
    else:
        per_col = np.zeros(X.shape[1])
        for start, stop in _row_chunks(X.shape[0], X.shape[1]):
            chunk = X[start:stop].astype(np.float64)
            per_col += (chunk * chunk).sum(axis=0) if ord == "fro" else chunk.sum(0)
    return np.array([per_col[s].sum() for s in slices])


def check_weights(weights, n_blocks, *, name="block_weights", block_names=None):
    """Validate explicit block weights.

    Parameters
    ----------
    weights : array-like of shape (n_blocks,)
        One non-negative finite number per block, not all zero.
    n_blocks : int
        Expected number of weights.
    name : str, default="block_weights"
        Name of the argument, used in the message.
    block_names : list of str, default=None
        Names of the blocks, used in the message.

    Returns
    -------
    ndarray of shape (n_blocks,), float64

    Examples
    --------
    >>> from sklearn_peek._validation import check_weights
    >>> check_weights([1, 2], 2)
    array([1., 2.])
    """
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name}={weights!r} is not understood; expected 'norm', 'none' or "
            f"{n_blocks} non-negative numbers (one per block)."
        ) from exc
    if w.ndim != 1 or w.shape[0] != n_blocks:
        raise ValueError(
            f"{name}={weights!r} gives {w.size} value(s); expected {n_blocks} "
            f"(one per block{': ' + ', '.join(block_names) if block_names else ''})."
        )
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        label = f" (block {block_names[i]!r})" if block_names else ""
        raise ValueError(
            f"{name}={weights!r}: entry {i}{label} is {float(w[i])!r}; expected finite "
            "non-negative numbers."
        )
    if not (w > 0).any():
        raise ValueError(
            f"{name}={weights!r}: all weights are zero; expected at least one "
            "positive weight."
        )
    return w


def is_integral(x):
    """True for Python/NumPy integers (not bools)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def string_feature_names(X):
    """The column names of a DataFrame ``X`` as ``feature_names_in_`` records
    them (an object array), or None: scikit-learn records names only when all
    of them are strings (a DataFrame made from an array, with integer column
    labels, has none). Estimators that read blocks from mixed names use them
    as strings without recording them."""
    columns = getattr(X, "columns", None)
    if columns is None or not all(isinstance(c, str) for c in columns):
        return None
    return np.asarray(list(columns), dtype=object)


def close_matches(name, choices, *, n=3, cutoff=0.6):
    """Up to ``n`` of ``choices`` close to ``name`` (difflib); failing that,
    those that contain it (case-insensitive). Names compare as strings."""
    name, choices = str(name), [str(c) for c in choices]
    near = difflib.get_close_matches(name, choices, n=n, cutoff=cutoff)
    if not near and name:
        near = [c for c in choices if name.lower() in c.lower()][:n]
    return near


def did_you_mean(name, choices):
    """`` Did you mean 'a', 'b'?`` (:func:`close_matches`), or ``""``: the end
    of an error message about an unknown name."""
    near = close_matches(name, choices)
    return f" Did you mean {', '.join(repr(c) for c in near)}?" if near else ""


def validate_params(estimator):
    """Check ``estimator``'s parameters against its ``_parameter_constraints``.

    scikit-learn's validator (:class:`InvalidParameterError`, a ``ValueError``
    and a ``TypeError``, naming the parameter, what it allows and the value
    received), one parameter at a time in declaration order, so that a
    misspelt string option can also be given its close matches.
    """
    from sklearn import get_config

    if get_config().get("skip_parameter_validation", False):
        return  # as scikit-learn's own estimators do under this setting
    params = estimator.get_params(deep=False)
    for name, allowed in type(estimator)._parameter_constraints.items():
        if allowed == "no_validation":
            continue
        value = params[name]
        try:
            validate_parameter_constraints(
                {name: allowed}, {name: value}, caller_name=type(estimator).__name__
            )
        except InvalidParameterError as exc:
            options = [
                o
                for c in allowed
                if isinstance(c, StrOptions)  # Hidden(...) options stay unnamed
                for o in sorted(c.options)
            ]
            hint = did_you_mean(value, options) if isinstance(value, str) else ""
            if not hint:
                raise
            raise InvalidParameterError(f"{exc}{hint}") from None
        numeric = any(isinstance(c, Interval) for c in allowed)
        if numeric and isinstance(value, (bool, np.bool_)) and "boolean" not in allowed:
            # scikit-learn's Interval(Integral) takes True as 1
            raise InvalidParameterError(
                f"The {name!r} parameter of {type(estimator).__name__} must be a "
                f"number, not a bool. Got {value!r} instead."
            )


def caller_stacklevel():
    """``stacklevel`` (for a warning issued by the function calling this one)
    of the first frame outside sklearn_peek, scikit-learn and joblib (whose
    ``Memory`` wraps a Pipeline's steps): the user's line, also when a
    Pipeline, ``fit_transform`` or scikit-learn's ``_fit_context`` made the
    call."""
    import os
    import sys

    import joblib
    import sklearn

    inside = (
        os.path.dirname(os.path.abspath(__file__)) + os.sep,
        os.path.dirname(os.path.abspath(sklearn.__file__)) + os.sep,
        os.path.dirname(os.path.abspath(joblib.__file__)) + os.sep,
    )
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        inside
    ):
        frame, level = frame.f_back, level + 1
    return level


def check_numeric_columns(X, *, where):
    """Refuse a DataFrame with a column that does not hold numbers, naming it.

    scikit-learn's conversion says only ``could not convert string to float:
    'x'``. Called before it; anything that is not a pandas DataFrame passes.
    """
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None or not hasattr(dtypes, "items") or getattr(X, "ndim", 0) != 2:
        return
    for col, dt in dtypes.items():
        kind = getattr(dt, "kind", None)  # NumPy and pandas' extension dtypes
        if kind is None or kind in "biuf":
            continue
        if kind == "O":  # objects: numbers pass, as scikit-learn converts them
            try:
                np.asarray(X[col], dtype=np.float64)
                continue
            except (TypeError, ValueError):
                pass
        first = X[col].iloc[0] if len(X) else None
        raise ValueError(
            f"{where}: X has column {col!r} of dtype {dt} (first value "
            f"{first!r}); expected numbers in every column."
        )


def check_no_underflow(X, blocks, *, where):
    """Raise for the first of ``blocks`` (``(name, column slice)`` pairs whose
    squared norm came out 0) that holds non-zero values: their squares
    underflow, which ``block_weights="norm"`` cannot divide by. Blocks of
    zeros pass (the callers say those are zeros). NumPy, sparse or torch."""
    for name, sl in blocks:
        Xb = X[:, sl]
        if is_torch_tensor(Xb):
            top = float(Xb.abs().max()) if Xb.numel() else 0.0
        elif sp.issparse(Xb):
            top = float(abs(Xb).max()) if Xb.nnz else 0.0
        else:
            top = float(np.abs(Xb).max()) if Xb.size else 0.0
        if top > 0:
            raise ValueError(
                f"{where}: the squared norm of block {name!r} of X underflows to 0 "
                f"in float64 (its largest value is {top:.3g}). Rescale X (e.g. "
                "X / X.max()), or pass explicit block_weights: "
                "block_weights='norm' divides every block by its squared norm."
            )


def aligned(X):
    """``X``, or a copy of it when its data buffer is not aligned to its
    dtype (dask hands workers arrays at odd byte offsets). NumPy's matrix
    products leave BLAS out on such arrays: slower (about 1.9x for a float32
    fit) and rounded differently, so results would depend on where the array
    came from."""
    if sp.issparse(X):
        parts = [getattr(X, k, None) for k in ("data", "indices", "indptr")]
        if any(isinstance(a, np.ndarray) and not a.flags.aligned for a in parts):
            return X.copy()  # the same format, its arrays new
        return X
    if isinstance(X, np.ndarray) and not X.flags.aligned:
        return X.copy(order="K")  # C or Fortran order kept: it changes rounding
    return X
