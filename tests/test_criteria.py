"""Rank-selection criteria on synthetic curves whose right answer is known."""

import pickle

import numpy as np
import pytest
from scipy.cluster.hierarchy import cophenet, linkage
from scipy.spatial.distance import squareform

from sklearn_peek import _criteria


# ----------------------------------------------------------------- row folds
@pytest.mark.parametrize("n, cv", [(10, 2), (23, 5), (7, 7)])
def test_row_folds_partition_the_rows(n, cv):
    folds = _criteria.row_folds(n, cv, seed=3)
    assert len(folds) == cv
    tests = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(tests), np.arange(n))
    for tr, te in folds:
        assert np.intersect1d(tr, te).size == 0
        assert tr.size + te.size == n


def test_row_folds_are_seeded_and_shuffled():
    a = _criteria.row_folds(40, 4, seed=1)
    b = _criteria.row_folds(40, 4, seed=1)
    c = _criteria.row_folds(40, 4, seed=2)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    # shuffled: the first fold is not simply the first rows
    assert not np.array_equal(a[0][1], np.arange(10))


# ----------------------------------------------------------------------- bcv
def _bcv_curve(true_rank, ranks, n_folds, seed):
    """Scores rising until ``true_rank`` then slowly falling, plus fold noise."""
    rng = np.random.default_rng(seed)
    ranks = np.asarray(ranks)
    base = np.where(
        ranks <= true_rank,
        -1.0 + 0.9 * ranks / true_rank,
        -0.1 - 0.002 * (ranks - true_rank),
    )
    fold_offset = rng.normal(0, 0.05, size=n_folds)  # shared by all ranks
    noise = rng.normal(0, 0.0005, size=(ranks.size, n_folds))
    return base[:, None] + fold_offset[None, :] + noise


@pytest.mark.parametrize("true_rank", [2, 5, 9])
@pytest.mark.parametrize("rule", ["one_se", "max"])
def test_select_bcv_finds_the_peak(true_rank, rule):
    ranks = np.arange(1, 16)
    scores = _bcv_curve(true_rank, ranks, 5, seed=true_rank)
    assert _criteria.select_bcv(ranks, scores, rule) == true_rank


def test_select_bcv_one_se_prefers_smaller_rank_on_a_plateau():
    ranks = np.arange(1, 7)
    # rises until rank 4, then creeps up by far less than the fold noise
    mean = np.array([0.25, 0.5, 0.75, 1.0, 1.002, 1.004])
    a = np.array([1.0, -1.0, 1.0, -1.0])
    b = np.array([1.0, 1.0, -1.0, -1.0])
    pattern = np.array([a, a, a, b, a, a])
    scores = mean[:, None] + 0.01 * pattern
    assert _criteria.select_bcv(ranks, scores, "max") == 6
    # reference: paired differences to rank 6, their standard error
    diff = scores[5] - scores[3]
    se = diff.std(ddof=1) / 2.0
    assert diff.mean() <= se
    assert _criteria.select_bcv(ranks, scores, "one_se") == 4


def test_select_bcv_paired_se_ignores_shared_fold_offsets():
    # the fold offsets are large but common to every rank: rank 3 is clearly
    # better than rank 2 in every fold, so one_se must not fall back to 2
    ranks = np.array([1, 2, 3, 4])
    offsets = np.array([0.0, 1.0, -1.0, 0.5])
    mean = np.array([0.0, 0.5, 0.6, 0.6])
    scores = mean[:, None] + offsets[None, :]
    assert _criteria.select_bcv(ranks, scores, "one_se") == 3


@pytest.mark.parametrize("rule", ["one_se", "max"])
def test_select_bcv_takes_the_smallest_of_ranks_tied_within_rounding(rule):
    # past the data's rank (2) the held-out errors are rounding: the folds
    # agree to 1e-15, so no standard error separates rank 5's "best" score
    rng = np.random.RandomState(0)
    ranks = np.arange(1, 8)
    mean = np.array([-0.2, -3e-15, -2e-15, -1.5e-15, -1e-16, -4e-8, -2e-11])
    scores = mean[:, None] + 1e-17 * rng.rand(7, 3)
    assert _criteria.select_bcv(ranks, scores, rule) == 2
    # a real gain, if only 2e-6 of the held-out energy, is not a tie
    mean[4] = mean[1] + 2e-6
    scores = mean[:, None] + 1e-17 * rng.rand(7, 3)
    assert _criteria.select_bcv(ranks, scores, rule) == 5
    assert 1e-6 == _criteria.SCORE_TIE  # as docs/user_guide/rank.rst says


# --------------------------------------------------------------------- elbow
@pytest.mark.parametrize("knee", [3, 6, 12])
def test_knee_point_on_piecewise_linear_curve(knee):
    ranks = np.arange(1, 21)
    # steep then flat: the bend is exactly at ``knee``
    err = np.where(ranks <= knee, 1.0 - 0.8 * (ranks - 1) / (knee - 1), 0.2)
    err = err - 0.001 * (ranks - knee).clip(0)
    rank, bend = _criteria.knee_point(ranks, err)
    assert rank == knee
    assert bend.shape == ranks.shape
    assert bend[0] == pytest.approx(0) and bend[-1] == pytest.approx(0)
    assert np.argmax(bend) == knee - 1


def test_knee_point_of_exponential_decay_matches_max_distance():
    ranks = np.arange(1, 31)
    err = np.exp(-ranks / 4.0)
    rank, _ = _criteria.knee_point(ranks, err)
    # reference: distance to the chord computed directly in the test
    x = (ranks - 1) / 29
    y = (err - err[-1]) / (err[0] - err[-1])
    assert rank == ranks[np.argmax((1 - x) - y)]
    assert 4 <= rank <= 10


@pytest.mark.parametrize(
    "err", [np.linspace(1, 0, 10), 1 - np.linspace(0, 1, 10) ** 2, np.ones(10)]
)
def test_knee_point_without_a_bend_returns_the_largest_rank(err):
    ranks = np.arange(1, 11)
    rank, bend = _criteria.knee_point(ranks, err)
    assert rank == 10
    # documented: no bend, so the bend curve is 0 everywhere (and not NaN)
    np.testing.assert_array_equal(bend, np.zeros(10))


# -------------------------------------------------------------------- energy
def test_explained_energy_definition():
    sq_err = np.array([50.0, 20.0, 5.0])
    assert np.allclose(_criteria.explained_energy(sq_err, 100.0), [0.5, 0.8, 0.95])


@pytest.mark.parametrize(
    "threshold, expected", [(0.5, 2), (0.8, 3), (0.95, 5), (1.0, 6)]
)
def test_select_energy_is_the_first_rank_reaching_the_threshold(threshold, expected):
    ranks = np.array([1, 2, 3, 4, 5, 6])
    energy = np.array([0.3, 0.6, 0.85, 0.9, 0.97, 1.0])
    got = _criteria.select_energy(ranks, energy, threshold)
    assert got == expected
    assert energy[ranks == got][0] >= threshold
    assert (energy[ranks < got] < threshold).all()


def test_select_energy_warns_when_never_reached():
    with pytest.warns(
        _criteria.EnergyThresholdWarning, match=r"energy_threshold=0\.99.*layer 'fc1'"
    ) as caught:
        got = _criteria.select_energy([1, 2, 3], [0.1, 0.7, 0.5], 0.99, layer="fc1")
    assert got == 3
    w = caught[0].message
    facts = (w.threshold, w.layer, w.best_energy, w.best_rank, w.selected)
    assert facts == (0.99, "fc1", 0.7, 2, 3)
    w.seen_by = "a caller"  # anything set on it survives too
    back = pickle.loads(pickle.dumps(w))
    assert (str(back), back.best_rank, back.selected) == (str(w), 2, 3)
    assert back.seen_by == "a caller"
    from sklearn_peek import EnergyThresholdWarning

    assert EnergyThresholdWarning is _criteria.EnergyThresholdWarning


# ----------------------------------------------------------------- stability
def test_consensus_matrix_counts_co_clustering():
    labels = np.array([[0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 0, 0]])
    c = _criteria.consensus_matrix(labels)
    expected = np.zeros((4, 4))
    for lab in labels:
        expected += lab[:, None] == lab[None, :]
    expected /= 3
    assert np.allclose(c, expected)
    assert np.allclose(np.diag(c), 1)


def test_cophenetic_of_perfect_consensus_is_one():
    lab = np.repeat([0, 1, 2], 5)
    c = _criteria.consensus_matrix(np.tile(lab, (4, 1)))
    assert _criteria.cophenetic_correlation(c) == pytest.approx(1.0)


def test_cophenetic_matches_scipy_reference_and_drops_with_disagreement():
    rng = np.random.default_rng(0)
    lab = np.repeat([0, 1, 2], 8)
    stable = np.tile(lab, (10, 1))
    noisy = np.array([rng.integers(0, 3, size=24) for _ in range(10)])
    c_noisy = _criteria.consensus_matrix(noisy)
    got = _criteria.cophenetic_correlation(c_noisy)
    d = squareform(1 - c_noisy, checks=False)
    ref, _ = cophenet(linkage(d, "average"), d)
    assert got == pytest.approx(ref)
    assert got < _criteria.cophenetic_correlation(_criteria.consensus_matrix(stable))


def test_cophenetic_constant_consensus_is_defined():
    assert _criteria.cophenetic_correlation(np.ones((6, 6))) == 1.0


@pytest.mark.parametrize(
    "coph, expected",
    [
        ([1.0, 0.99, 0.98, 0.97, 0.70, 0.68], 4),  # biggest drop: rank 4 -> 5
        ([1.0, 0.95, 0.97, 0.90, 0.89, 0.88], 3),  # a rise, then the big drop
        ([1.0, 0.90, 0.92, 0.94, 0.96, 0.98], 6),  # never drops: the maximum
    ],
)
def test_select_stability(coph, expected):
    ranks = np.arange(1, 7)
    assert _criteria.select_stability(ranks, coph) == expected


def test_select_stability_skips_rank_one():
    # rank 1 is always perfectly stable; the big drop 1 -> 2 must not count
    ranks = np.array([1, 2, 3, 4])
    assert _criteria.select_stability(ranks, [1.0, 0.6, 0.6, 0.4]) == 3
    assert _criteria.select_stability([1], [1.0]) == 1
