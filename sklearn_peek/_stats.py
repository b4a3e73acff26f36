"""Small statistics used by the case studies (private).

- :func:`spearman_ci`: Spearman's rank correlation with a seeded percentile
  bootstrap confidence interval.
- :func:`effective_rank`: the RankMe effective rank of a matrix (exp of the
  Shannon entropy of its normalised singular values).
"""

from __future__ import annotations

from collections import namedtuple
from numbers import Integral, Real

import numpy as np
from scipy.stats import rankdata

SpearmanResult = namedtuple(
    "SpearmanResult", ["rho", "ci_low", "ci_high", "n", "n_boot_valid", "note"]
)
SpearmanResult.__doc__ = """Spearman correlation and its bootstrap interval.

rho is NaN (with ``note`` saying why) when one of the two variables is
constant, since the correlation is then undefined. ``n_boot_valid`` counts the
bootstrap resamples in which both variables varied; the interval uses only
those, and is NaN (``note`` says why) when more than
``MAX_UNDEFINED_FRACTION`` of the resamples had to be left out.
"""

# Left-out resamples are not a random part of the bootstrap: they are those
# that missed the few pairs that make a variable vary, so keeping the others
# conditions the interval on including them. With many ties (say six networks
# of rank 15 and one of 20: a third of the resamples miss the 20) the interval
# then shifts away from the estimate, and may not even contain it. Beyond this
# fraction no interval is given.
MAX_UNDEFINED_FRACTION = 0.1


def _pearson_rows(a, b):
    """Row-wise Pearson correlation of two 2-D arrays; NaN for constant rows."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    num = np.einsum("ij,ij->i", a, b)
    den = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    out = np.full(a.shape[0], np.nan)
    ok = den > 1e-12 * max(1.0, float(np.max(den, initial=0.0)))
    out[ok] = num[ok] / den[ok]
    return np.clip(out, -1.0, 1.0)


def _check_pair(x, y):
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same length; got len(x)={x.size}, len(y)={y.size}."
        )
    for name, v in (("x", x), ("y", y)):
        if not np.all(np.isfinite(v)):
            bad = np.flatnonzero(~np.isfinite(v))[:5].tolist()
            raise ValueError(
                f"{name} contains NaN or infinite values at positions {bad}; "
                "expected finite numbers."
            )
    if x.size < 3:
        raise ValueError(f"Spearman correlation needs at least 3 pairs; got {x.size}.")
    return x, y


def spearman(x, y):
    """Spearman's rho of two sequences (average ranks for ties).

    Returns NaN when either sequence is constant (undefined correlation).
    """
    return _rho(*_check_pair(x, y))


def _rho(x, y):
    """Spearman's rho of two checked 1-D arrays."""
    return float(_pearson_rows(rankdata(x)[None], rankdata(y)[None])[0])


def spearman_ci(
    x, y, *, n_boot=2000, confidence=0.95, random_state=None, labels=("x", "y")
):
    """Spearman's rho with a percentile bootstrap confidence interval.

    Pairs ``(x[i], y[i])`` are resampled with replacement ``n_boot`` times;
    the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    percentiles of the resampled correlations. Resamples in which x or y is
    constant have no correlation and are left out; when they are more than
    ``MAX_UNDEFINED_FRACTION`` (10%) of all, the interval is NaN and ``note``
    says so (the remaining resamples are no longer representative).

    Parameters
    ----------
    x, y : array-like of shape (n,)
        Paired observations, finite, ``n >= 3``.
    n_boot : int, default=2000
        Number of bootstrap resamples (0 skips the interval: NaN bounds).
    confidence : float, default=0.95
        Coverage of the interval, in (0, 1).
    random_state : int, numpy Generator or None
        Seed of the resampling.
    labels : tuple of str, default=("x", "y")
        Names of x and y in ``note``.

    Returns
    -------
    SpearmanResult
        ``(rho, ci_low, ci_high, n, n_boot_valid, note)``.

    Examples
    --------
    >>> from sklearn_peek._stats import spearman_ci
    >>> r = spearman_ci([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], random_state=0)
    >>> round(r.rho, 2)
    0.8
    """
    x, y = _check_pair(x, y)
    if not isinstance(n_boot, Integral) or isinstance(n_boot, bool) or n_boot < 0:
        raise ValueError(f"n_boot={n_boot!r} must be an integer >= 0.")
    if not isinstance(confidence, Real) or not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be a number in (0, 1).")
    seed_ok = random_state is None or isinstance(random_state, np.random.Generator)
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        seed_ok = random_state >= 0
    if not seed_ok:
        raise ValueError(
            f"random_state={random_state!r} must be None, an integer >= 0 or a "
            "numpy Generator."
        )
    rho = _rho(x, y)
    note = ""
    if np.isnan(rho):
        const = [name for name, v in zip(labels, (x, y)) if np.ptp(v) == 0]
        verb = "is" if len(const) == 1 else "are"
        note = f"undefined: {' and '.join(const)} {verb} constant"
    n = x.size
    lo = hi = np.nan
    n_valid = 0
    if n_boot > 0:
        rng = np.random.default_rng(random_state)
        idx = rng.integers(0, n, size=(n_boot, n))
        xb, yb = x[idx], y[idx]
        rx = rankdata(xb, axis=1)
        ry = rankdata(yb, axis=1)
        boot = _pearson_rows(rx, ry)
        boot = boot[~np.isnan(boot)]
        n_valid = int(boot.size)
        left_out = n_boot - n_valid
        if n_valid and left_out <= MAX_UNDEFINED_FRACTION * n_boot:
            alpha = (1.0 - confidence) / 2.0
            lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
        elif not note:
            const = [
                name
                for name, v in zip(labels, (xb, yb))
                if (np.ptp(v, axis=1) == 0).any()
            ]
            note = (
                f"no interval: {' or '.join(const)} is constant in {left_out} of "
                f"{n_boot} bootstrap resamples"
            )
    return SpearmanResult(float(rho), float(lo), float(hi), int(n), n_valid, note)


def effective_rank(A, *, eps=1e-12):
    """Effective rank (RankMe) of a matrix.

    ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s)`` the normalised
    singular values of ``A``. It lies between 1 and ``min(A.shape)``; it is
    ``k`` for a matrix with ``k`` equal non-zero singular values.

    Parameters
    ----------
    A : array-like of shape (n_samples, n_features)
        Finite values.
    eps : float, default=1e-12
        Singular values below ``eps * max(s)`` count as zero.

    Returns
    -------
    float
        The effective rank; 0.0 for an all-zero matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek._stats import effective_rank
    >>> round(effective_rank(np.eye(4)), 6)
    4.0
    """
    A = np.asarray(A)
    if A.ndim != 2:
        raise ValueError(f"A must be a 2-D matrix; got an array of shape {A.shape}.")
    if A.size == 0:
        raise ValueError(f"A must not be empty; got shape {A.shape}.")
    if not np.all(np.isfinite(A)):
        raise ValueError("A contains NaN or infinite values; expected finite numbers.")
    s = np.linalg.svd(A.astype(np.float64, copy=False), compute_uv=False)
    if s.size == 0 or s[0] <= 0:
        return 0.0
    s = s[s > eps * s[0]]
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))
