"""Rank-selection criteria as plain functions on arrays.

Nothing here fits a model: the functions take curves (scores, errors,
consensus matrices) and return numbers. :mod:`sklearn_peek._rank` runs the
fits and calls these. Keeping them separate makes each criterion testable on
synthetic curves whose right answer is known.

Conventions
-----------
* ``ranks`` is a strictly increasing 1-D integer array; every curve has one
  value per rank, in the same order.
* Every ``select_*`` function returns one of ``ranks`` (a Python ``int``);
  none returns NaN.
"""

from __future__ import annotations

import numpy as np

from sklearn_peek._validation import warn

#: The rank-selection criteria RankQualityScorer knows, in its order.
CRITERIA = ("bcv", "elbow", "energy", "stability")
#: Those the case studies (and the command's demo) compute for every
#: network: stability, n_restarts fits per rank, is left out.
STUDY_CRITERIA = ("bcv", "elbow", "energy")

__all__ = [
    "consensus_matrix",
    "cophenetic_correlation",
    "explained_energy",
    "knee_point",
    "row_folds",
    "select_bcv",
    "select_energy",
    "select_stability",
]


# --------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------


class EnergyThresholdWarning(UserWarning):
    """``energy_threshold`` is reached by no rank swept: the largest is taken.

    Its own class, with the facts as attributes, so that a caller (the
    command line, which words the same case in its own options) needs
    neither to match nor to rewrite its text.

    Attributes
    ----------
    threshold : float
        The ``energy_threshold`` no rank reached.
    layer : str or None
        The layer concerned.
    best_energy : float
        The largest explained energy of the ranks swept.
    best_rank : int
        The rank that explained it.
    selected : int
        The rank returned instead: the largest one swept.
    """

    def __init__(
        self,
        message,
        threshold=None,
        layer=None,
        best_energy=None,
        best_rank=None,
        selected=None,
    ):
        super().__init__(message)
        self.threshold = threshold
        self.layer = layer
        self.best_energy = best_energy
        self.best_rank = best_rank
        self.selected = selected


def row_folds(n_samples, cv, seed):
    """Shuffled K-fold split of the rows.

    Parameters
    ----------
    n_samples : int
        Number of rows.
    cv : int
        Number of folds, ``2 <= cv <= n_samples``.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    list of (ndarray, ndarray)
        ``(train_rows, test_rows)`` per fold, both sorted.
    """
    from sklearn.model_selection import KFold

    kf = KFold(n_splits=cv, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in kf.split(np.empty((n_samples, 1)))]


# --------------------------------------------------------------------------
# bcv
# --------------------------------------------------------------------------
#: bcv scores (minus a held-out relative squared error) closer than this
#: count as equal: a millionth of the held-out data's energy, above the
#: rounding of float32 fits and far below any difference a rank makes.
SCORE_TIE = 1e-6


def select_bcv(ranks, fold_scores, rule="one_se"):
    """Select a rank from bi-cross-validation scores.

    Parameters
    ----------
    ranks : array-like of int, shape (n_ranks,)
    fold_scores : array-like of float, shape (n_ranks, n_folds)
        Held-out score of every rank on every fold, higher is better.
    rule : {"one_se", "max"}, default="one_se"
        ``"max"``: the rank of the best mean score. ``"one_se"``: the smallest
        rank whose mean score is within one standard error of the best one,
        where the standard error is that of the per-fold *differences* to the
        best rank (paired over folds, so that a fold that is harder for every
        rank does not widen the band).

        Under both rules, mean scores within ``SCORE_TIE`` of the best count
        as ties, and the smallest tied rank is taken: on data of lower rank
        than the sweep (duplicated rows, say) the scores past that rank
        differ by rounding alone, and their standard error is as small as
        those differences, so it cannot settle them.

    Returns
    -------
    int
    """
    ranks = np.asarray(ranks)
    s = np.asarray(fold_scores, dtype=np.float64)
    mean = s.mean(axis=1)
    best = int(np.argmax(mean))
    band = np.full(mean.shape, SCORE_TIE)
    n_folds = s.shape[1]
    if rule == "one_se" and n_folds >= 2:
        diff = s[best][None, :] - s  # >= 0 on average
        band = np.maximum(band, diff.std(axis=1, ddof=1) / np.sqrt(n_folds))
    ok = np.flatnonzero(mean[best] - mean <= band)
    return int(ranks[ok.min()])


# --------------------------------------------------------------------------
# elbow
# --------------------------------------------------------------------------
def knee_point(ranks, errors):
    """Knee of a decreasing error curve (Kneedle-style).

    Both axes are rescaled to [0, 1]; the knee is the point farthest below the
    chord joining the first and the last point. It measures where adding
    components stops paying off at the rate it did before.

    Parameters
    ----------
    ranks : array-like of int, shape (n_ranks,)
    errors : array-like of float, shape (n_ranks,)
        Error at each rank (e.g. relative reconstruction error).

    Returns
    -------
    rank : int
        The rank at the knee. When no point lies below the chord (a straight
        or concave curve: there is no bend), the largest rank is returned and
        ``bend`` is 0.
    bend : ndarray, shape (n_ranks,)
        Normalized distance of every point below the chord (the curve the knee
        maximizes; 0 at both ends).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    err = np.asarray(errors, dtype=np.float64)
    if ranks.size <= 2:
        return int(ranks[-1]), np.zeros_like(err)
    x = (ranks - ranks[0]) / (ranks[-1] - ranks[0])
    span = err[0] - err[-1]
    if not np.isfinite(span) or span <= 0:
        return int(ranks[-1]), np.zeros_like(err)
    y = (err - err[-1]) / span  # 1 at the first rank, 0 at the last
    bend = (1.0 - x) - y
    k = int(np.argmax(bend))
    if bend[k] <= 0:
        return int(ranks[-1]), np.zeros_like(err)
    return int(ranks[k]), bend


# --------------------------------------------------------------------------
# energy
# --------------------------------------------------------------------------
def explained_energy(sq_errors, sq_norm):
    """Fraction of energy explained: ``1 - err^2 / ||X||^2``.

    Parameters
    ----------
    sq_errors : array-like of float
        Squared (weighted) reconstruction errors.
    sq_norm : float
        Squared (weighted) Frobenius norm of the data; must be positive.

    Returns
    -------
    ndarray
    """
    return 1.0 - np.asarray(sq_errors, dtype=np.float64) / float(sq_norm)


def select_energy(ranks, energy, threshold, *, layer=None):
    """Smallest rank whose explained energy reaches ``threshold``.

    When no rank reaches it, the largest rank is returned and an
    :class:`EnergyThresholdWarning` (a ``UserWarning``) says so, naming the
    threshold and the best energy seen.

    Parameters
    ----------
    ranks : array-like of int
    energy : array-like of float
        Explained energy per rank (see :func:`explained_energy`).
    threshold : float
        Target fraction in (0, 1].
    layer : str, optional
        Used in the warning.

    Returns
    -------
    int
    """
    ranks = np.asarray(ranks)
    energy = np.asarray(energy, dtype=np.float64)
    ok = np.flatnonzero(energy >= threshold)
    if ok.size:
        return int(ranks[ok.min()])
    where = f" for layer {layer!r}" if layer is not None else ""
    best, best_rank, top = (
        float(energy.max()),
        int(ranks[np.argmax(energy)]),
        int(ranks[-1]),
    )
    warn(
        EnergyThresholdWarning(
            f"energy_threshold={threshold!r} is not reached by any rank{where}: the "
            f"best explained energy is {best:.4f} at rank {best_rank}; selecting "
            f"the largest rank {top}. Extend `ranks` or lower `energy_threshold`.",
            threshold,
            layer,
            best,
            best_rank,
            top,
        ),
        stacklevel=3,
    )
    return top


# --------------------------------------------------------------------------
# stability (consensus clustering, Brunet et al. 2004)
# --------------------------------------------------------------------------
def consensus_matrix(labels):
    """Consensus matrix of several clusterings of the same samples.

    Parameters
    ----------
    labels : array-like of int, shape (n_runs, n_samples)
        Cluster label of every sample in every run (for NMF: the argmax of each
        row of W).

    Returns
    -------
    ndarray of float64, shape (n_samples, n_samples)
        Entry (i, j) is the fraction of runs that put i and j together.
    """
    labels = np.asarray(labels)
    n_runs, n = labels.shape
    c = np.zeros((n, n), dtype=np.float64)
    for lab in labels:
        k = int(lab.max()) + 1 if lab.size else 0
        onehot = np.zeros((n, k), dtype=np.float64)
        onehot[np.arange(n), lab] = 1.0
        c += onehot @ onehot.T
    return c / max(n_runs, 1)


def cophenetic_correlation(consensus):
    """Cophenetic correlation of a consensus matrix.

    The distance ``1 - consensus`` is clustered with average linkage; the
    result is the Pearson correlation between those distances and the
    cophenetic distances of the tree. 1 means the runs agree perfectly (the
    consensus is 0/1 block-diagonal). When every distance is equal (e.g. rank
    1: all samples always together) there is nothing to disagree on and 1.0 is
    returned.

    Parameters
    ----------
    consensus : ndarray, shape (n_samples, n_samples)

    Returns
    -------
    float
    """
    from scipy.cluster.hierarchy import cophenet, linkage
    from scipy.spatial.distance import squareform

    # The consensus matrix is symmetric: its upper triangle is all there is.
    # Working on the condensed vector spares three n x n temporaries.
    condensed = squareform(np.asarray(consensus, dtype=np.float64), checks=False)
    condensed = np.subtract(1.0, condensed)
    np.clip(condensed, 0.0, None, out=condensed)
    if condensed.size < 2 or np.ptp(condensed) <= 1e-12:
        return 1.0
    z = linkage(condensed, method="average")
    c, _ = cophenet(z, condensed)
    return float(c) if np.isfinite(c) else 1.0


def select_stability(ranks, coph):
    """Rank chosen from a cophenetic-correlation curve.

    Following Brunet et al. (2004), the chosen rank is the one just before
    the largest drop of the cophenetic correlation between consecutive ranks.
    When the curve never drops, the rank of its maximum is chosen (the largest
    one among ties). Rank 1 is skipped whenever other ranks exist, since one
    cluster is trivially perfectly stable.

    Parameters
    ----------
    ranks : array-like of int
    coph : array-like of float

    Returns
    -------
    int
    """
    ranks = np.asarray(ranks)
    coph = np.asarray(coph, dtype=np.float64)
    keep = ranks >= 2 if (ranks >= 2).any() else np.ones_like(ranks, dtype=bool)
    r, c = ranks[keep], coph[keep]
    if r.size >= 2:
        drops = c[:-1] - c[1:]
        k = int(np.argmax(drops))
        if drops[k] > 0:
            return int(r[k])
    best = np.flatnonzero(c >= c.max())
    return int(r[best.max()])
