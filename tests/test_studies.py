"""Tests of sklearn_peek.studies (LeNetClassifier, degradations, case-study runner)
and of the statistics helpers in sklearn_peek._stats."""

import re
import warnings

import numpy as np
import pytest
import scipy.stats
from _helpers import in_threads

from sklearn_peek._stats import effective_rank, spearman, spearman_ci
from sklearn_peek.datasets import load_digits_images
from sklearn_peek.studies import LeNetClassifier, degraded_training_set, epoch_order

LAYER_NAMES = [
    "conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
    "fc1", "relu3", "fc2", "relu4", "fc3",
]  # fmt: skip


@pytest.fixture(scope="module")
def digits_split():
    d = load_digits_images()
    rng = np.random.default_rng(0)
    perm = rng.permutation(d.target.size)
    tr, te = perm[:1200], perm[1200:]
    return d.images[tr], d.target[tr], d.images[te], d.target[te]


# --------------------------------------------------------------------------
# LeNetClassifier
# --------------------------------------------------------------------------
def test_training_beats_untrained(digits_split):
    Xtr, ytr, Xte, yte = digits_split
    untrained = LeNetClassifier(epochs=0, random_state=0).fit(Xtr, ytr)
    trained = LeNetClassifier(epochs=10, random_state=0).fit(Xtr, ytr)
    assert untrained.history_ == [] and len(trained.history_) == 10
    acc0, acc10 = untrained.score(Xte, yte), trained.score(Xte, yte)
    assert acc10 > 0.85
    assert acc10 > acc0 + 0.5
    # loss goes down over epochs
    assert trained.history_[-1] < 0.5 * trained.history_[0]
    mod = trained.module_
    assert not mod.training
    assert [n for n, _ in mod.named_modules() if n] == LAYER_NAMES
    proba = trained.predict_proba(Xte)
    assert proba.dtype == np.float32 and proba.shape == (Xte.shape[0], 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        trained.classes_[proba.argmax(1)], trained.predict(Xte)
    )


def test_deterministic_for_a_seed(digits_split):
    Xtr, ytr, Xte, _ = digits_split
    import torch

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = LeNetClassifier(epochs=2, random_state=7).fit(Xtr, ytr)
    # the global torch RNG is left alone by fit
    assert torch.equal(torch.rand(1), before)
    b = LeNetClassifier(epochs=2, random_state=7).fit(Xtr, ytr)
    c = LeNetClassifier(epochs=2, random_state=8).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.predict_proba(Xte), b.predict_proba(Xte))
    assert a.history_ == b.history_
    assert not np.array_equal(a.predict_proba(Xte), c.predict_proba(Xte))
    # same seed -> same initial weights whatever the degradation
    u = LeNetClassifier(epochs=0, random_state=7).fit(Xtr, ytr)
    v = LeNetClassifier(epochs=0, degradation="fraction", level=0.1, random_state=7)
    v.fit(Xtr, ytr)
    for (_, p), (_, q) in zip(
        u.module_.named_parameters(), v.module_.named_parameters()
    ):
        assert torch.equal(p, q)


def test_flat_and_3d_inputs(digits_split):
    Xtr, ytr, Xte, _ = digits_split
    ref = LeNetClassifier(epochs=1, random_state=0).fit(Xtr, ytr)
    flat = LeNetClassifier(epochs=1, input_shape=(1, 8, 8), random_state=0)
    flat.fit(Xtr.reshape(len(Xtr), -1).astype(np.float64), ytr)
    three = LeNetClassifier(epochs=1, random_state=0).fit(Xtr[:, 0], ytr)
    assert flat.input_shape_ == three.input_shape_ == (1, 8, 8)
    assert flat.n_features_in_ == 64
    p = ref.predict_proba(Xte)
    np.testing.assert_array_equal(p, flat.predict_proba(Xte.reshape(len(Xte), -1)))
    # same data in another memory layout: equal up to float rounding in training
    np.testing.assert_allclose(p, three.predict_proba(Xte[:, 0]), atol=1e-5)
    # string labels
    names = np.array(list("abcdefghij"))[ytr]
    clf = LeNetClassifier(epochs=1, random_state=0).fit(Xtr, names)
    assert set(clf.predict(Xte)) <= set(names)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 12, 16)])
def test_network_sized_to_input(shape):
    rng = np.random.default_rng(0)
    X = rng.random((20, *shape), dtype=np.float32)
    y = np.arange(20) % 4
    clf = LeNetClassifier(epochs=1, batch_size=8, random_state=0).fit(X, y)
    assert clf.predict_proba(X).shape == (20, 4)
    if shape[1] >= 28:
        assert clf.module_.fc1.in_features == 400  # classic LeNet-5
        assert clf.module_.conv1.kernel_size == (5, 5)


# --------------------------------------------------------------------------
# degradations
# --------------------------------------------------------------------------
def test_fraction_keeps_per_class_counts(digits_split):
    Xtr, ytr, _, _ = digits_split
    counts = np.bincount(ytr)
    clf = LeNetClassifier(epochs=1, degradation="fraction", level=0.25, random_state=3)
    clf.fit(Xtr, ytr)
    seen = np.bincount(ytr[clf.train_index_], minlength=10)
    np.testing.assert_array_equal(seen, np.ceil(0.25 * counts).astype(int))
    assert clf.n_train_seen_ == seen.sum()
    assert np.all(np.diff(clf.train_index_) > 0)  # sorted, no repeats
    # a tiny fraction still keeps one sample per class
    kept = degraded_training_set(ytr, "fraction", 1e-6, random_state=0)
    np.testing.assert_array_equal(np.bincount(ytr[kept.index]), np.ones(10, int))


@pytest.mark.parametrize(
    "degradation, level",
    # (label_noise 0.0 and epochs at the full count drew nothing before the
    # fix either: no cases here, they could not fail)
    [("fraction", 1.0), ("classes", 10)],
)
def test_a_degradation_at_its_mildest_trains_the_undegraded_network(
    digits_split, degradation, level
):
    # fraction=1.0 drew its (full) sample at random, which moved the random
    # stream: another epoch order, another network than degradation=None
    Xtr, ytr, Xte, _ = digits_split
    kw = dict(epochs=2, batch_size=32, random_state=0)
    plain = LeNetClassifier(**kw).fit(Xtr, ytr)
    mild = LeNetClassifier(degradation=degradation, level=level, **kw).fit(Xtr, ytr)
    np.testing.assert_array_equal(mild.train_order_, plain.train_order_)
    np.testing.assert_array_equal(mild.predict_proba(Xte), plain.predict_proba(Xte))


def test_classes_keeps_a_subset_of_classes(digits_split):
    Xtr, ytr, Xte, yte = digits_split
    clf = LeNetClassifier(epochs=3, degradation="classes", level=3, random_state=0)
    clf.fit(Xtr, ytr)
    assert clf.classes_seen_.size == 3
    assert set(ytr[clf.train_index_]) == set(clf.classes_seen_)
    np.testing.assert_array_equal(
        clf.train_index_, np.flatnonzero(np.isin(ytr, clf.classes_seen_))
    )
    # the output layer still has one unit per class, but only seen classes are predicted
    assert clf.predict_proba(Xte).shape[1] == 10
    assert set(np.unique(clf.predict(Xte))) <= set(clf.classes_seen_)
    assert clf.score(Xte, yte) < 0.45


def test_unshuffled_order(digits_split):
    Xtr, ytr, _, _ = digits_split
    clf = LeNetClassifier(epochs=1, degradation="unshuffled", random_state=0)
    clf.fit(Xtr, ytr)
    seen = ytr[clf.train_order_]
    assert np.all(np.diff(seen) >= 0)  # sorted by class
    assert sorted(clf.train_order_) == list(range(len(ytr)))
    # within a class the original order is kept (stable sort, no shuffle)
    np.testing.assert_array_equal(clf.train_order_, np.argsort(ytr, kind="stable"))
    # a partial level: about (1 - level) of positions move, the rest stay sorted
    sorted_order = np.argsort(ytr, kind="stable")
    moved = [
        np.mean(epoch_order(ytr, "unshuffled", lv, random_state=0) != sorted_order)
        for lv in (1.0, 0.75, 0.5, 0.0)
    ]
    assert moved[0] == 0.0
    assert moved[1] < moved[2] < moved[3]
    assert 0.15 < moved[1] < 0.3 and moved[3] > 0.8
    # plain training shuffles
    shuffled = epoch_order(ytr, None, None, random_state=0)
    assert np.mean(np.diff(ytr[shuffled]) >= 0) < 0.7


def test_epochs_and_label_noise(digits_split):
    Xtr, ytr, _, _ = digits_split
    clf = LeNetClassifier(epochs=10, degradation="epochs", level=2, random_state=0)
    clf.fit(Xtr, ytr)
    assert clf.n_epochs_ == 2 and len(clf.history_) == 2
    noisy = LeNetClassifier(
        epochs=1, degradation="label_noise", level=0.3, random_state=0
    )
    noisy.fit(Xtr, ytr)
    changed = noisy.train_target_ != ytr[noisy.train_index_]
    assert changed.sum() == round(0.3 * len(ytr))
    assert noisy.n_train_seen_ == len(ytr)
    # relabelled samples get a different class, spread over the others
    assert len(np.unique(noisy.train_target_[changed])) == 10


@pytest.mark.parametrize(
    "params, match",
    [
        (
            {"epochs": -1},
            r"'epochs' parameter of LeNetClassifier.*\[0, inf\)\. Got -1 ",
        ),
        ({"epochs": 2.5}, r"'epochs'.*Got 2\.5 "),
        ({"epochs": True}, r"'epochs'.*must be a number, not a bool\. Got True"),
        ({"batch_size": 0}, r"'batch_size'.*Got 0 "),
        ({"lr": 0}, r"'lr'.*range \(0\.0, inf\)\. Got 0 "),
        ({"lr": float("inf")}, r"'lr'.*Got inf "),
        ({"verbose": "loud"}, r"'verbose'.*Got 'loud'"),
        ({"random_state": "seed"}, r"'random_state'.*Got 'seed'"),
        ({"degradation": "dropout"}, "degradation='dropout'"),
        ({"level": 0.5}, "level=0.5 was given but degradation=None"),
        ({"degradation": "fraction"}, "needs a level"),
        ({"degradation": "fraction", "level": 0}, "level=0 is not valid.*fraction"),
        ({"degradation": "fraction", "level": 1.5}, "level=1.5"),
        ({"degradation": "classes", "level": 0.5}, "level=0.5 is not valid.*classes"),
        ({"degradation": "classes", "level": 11}, "level=11 classes"),
        ({"degradation": "unshuffled", "level": 2}, "level=2 .*unshuffled"),
        ({"degradation": "epochs", "level": -2}, "level=-2"),
        ({"degradation": "label_noise", "level": -0.1}, "level=-0.1"),
        ({"input_shape": (8, 8)}, r"input_shape=\(8, 8\)"),
        ({"input_shape": (1, 4, 16)}, r"does not match .* \(1, 8, 8\)"),
        ({"device": "tpu"}, "device='tpu'"),
    ],
)
def test_bad_parameters(digits_split, params, match):
    Xtr, ytr, _, _ = digits_split
    with pytest.raises(ValueError, match=match):
        LeNetClassifier(**params).fit(Xtr[:50], ytr[:50])


def test_levels_that_round_to_no_degradation_warn():
    # they trained the undegraded network without a word
    from sklearn_peek.studies import degraded_training_set

    y = np.arange(1437) % 10
    with pytest.warns(UserWarning, match=r"level=0\.0003 of 1437 labels rounds to 0"):
        kept = degraded_training_set(y, "label_noise", 0.0003, random_state=0)
    assert not kept.noisy.any()
    with pytest.warns(UserWarning, match=r"level=0\.99 of 100 samples leaves 1 "):
        order = epoch_order(y[:100], "unshuffled", 0.99, random_state=0)
    np.testing.assert_array_equal(order, np.argsort(y[:100], kind="stable"))
    # one more label or position than that is a degradation: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = degraded_training_set(y, "label_noise", 0.0007, random_state=0)
        assert kept.noisy.sum() == 1
        epoch_order(y[:100], "unshuffled", 0.98, random_state=0)  # 2 positions
        epoch_order(y[:100], "unshuffled", 1.0, random_state=0)  # sorted, as asked


@pytest.mark.parametrize("target", [None, 3, [], [[0, 1], [1, 0]]])
def test_epoch_order_needs_a_1d_array_of_labels(target):
    shape = np.asarray(target).shape
    with pytest.raises(ValueError, match=rf"target must be a non-empty 1-D array "
                       rf"of labels; got shape {re.escape(str(shape))}"):  # fmt: skip
        epoch_order(target, "unshuffled", 0.5, random_state=0)


def test_training_that_diverges_is_an_error_not_a_nan_network(digits_split):
    Xtr, ytr, _, _ = digits_split
    clf = LeNetClassifier(epochs=2, lr=1e10, random_state=0)
    with pytest.raises(ValueError, match=r"training diverged, the loss of epoch 1 "
                       r"is nan with lr=10000000000\.0; expected a finite loss\. "
                       r"Lower lr"):  # fmt: skip
        clf.fit(Xtr[:200], ytr[:200])
    assert not hasattr(clf, "module_")  # no half-fitted network left behind


def test_bad_inputs(digits_split):
    Xtr, ytr, Xte, _ = digits_split
    with pytest.raises(ValueError, match=r"give input_shape"):
        LeNetClassifier().fit(Xtr.reshape(len(Xtr), -1), ytr)
    with pytest.raises(ValueError, match=r"needs 64"):
        LeNetClassifier(input_shape=(1, 8, 8)).fit(
            Xtr.reshape(len(Xtr), -1)[:, :60], ytr
        )
    bad = Xtr.copy()
    bad[3, 0, 2, 2] = np.nan
    # pixel (0, 2, 2) of an 8 x 8 image is column 2 * 8 + 2 of its row
    with pytest.raises(ValueError, match=r"X contains NaN: .* X\[3, 18\] = nan"):
        LeNetClassifier().fit(bad, ytr)
    with pytest.raises(ValueError, match=r"one label per image"):
        LeNetClassifier().fit(Xtr, ytr[:-1])
    with pytest.raises(ValueError, match=r"Unknown label type|continuous"):
        LeNetClassifier().fit(Xtr, ytr + 0.5)
    with pytest.raises(ValueError, match=r"too small"):
        LeNetClassifier().fit(np.zeros((4, 1, 2, 2), np.float32), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"fit requires y .*but y is None"):
        LeNetClassifier().fit(Xtr)
    with pytest.raises(ValueError, match=r"y holds a single class \(3\); expected"):
        LeNetClassifier().fit(Xtr, np.full(len(Xtr), 3))
    import scipy.sparse as sp

    with pytest.raises(ValueError, match=r"X is a scipy sparse matrix of shape"):
        LeNetClassifier(input_shape=(1, 8, 8)).fit(
            sp.csr_matrix(Xtr.reshape(len(Xtr), -1)), ytr
        )
    clf = LeNetClassifier(epochs=0, random_state=0).fit(Xtr, ytr)
    with pytest.raises(ValueError, match=r"fitted on images of shape \(1, 8, 8\)"):
        clf.predict(np.zeros((2, 1, 28, 28), np.float32))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LeNetClassifier().predict(Xte)


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------
X_FIXED = [0.91, 0.85, 0.88, 0.40, 0.72, 0.72, 0.95, 0.10, 0.66, 0.80]
Y_FIXED = [9, 7, 8, 3, 6, 5, 9, 2, 5, 7]  # with ties


def test_spearman_matches_scipy():
    ref = scipy.stats.spearmanr(X_FIXED, Y_FIXED).statistic
    assert spearman(X_FIXED, Y_FIXED) == pytest.approx(ref, rel=1e-12)
    r = spearman_ci(X_FIXED, Y_FIXED, n_boot=500, random_state=0)
    assert r.rho == pytest.approx(ref, rel=1e-12)
    assert r.ci_low <= r.rho <= r.ci_high
    # the bootstrap by hand, with scipy computing each resampled rho
    rng = np.random.default_rng(0)
    x, y = np.asarray(X_FIXED), np.asarray(Y_FIXED)
    idx = rng.integers(0, x.size, size=(500, x.size))
    boots = []
    for row in idx:
        if np.ptp(x[row]) > 0 and np.ptp(y[row]) > 0:
            boots.append(scipy.stats.spearmanr(x[row], y[row]).statistic)
    assert r.n_boot_valid == len(boots)
    np.testing.assert_allclose(
        [r.ci_low, r.ci_high], np.quantile(boots, [0.025, 0.975])
    )
    # seeded
    assert spearman_ci(X_FIXED, Y_FIXED, n_boot=500, random_state=0) == r
    # anti-correlated data
    assert spearman(X_FIXED, -np.asarray(Y_FIXED)) == pytest.approx(-ref)


def test_spearman_interval_withheld_when_many_resamples_are_constant():
    # Six networks share rank 15: a third of the resamples miss the 20 and
    # have no correlation. Keeping only the others used to give an interval
    # above the estimate (+0.61 [+0.62, +0.92]).
    x = [15, 15, 15, 15, 15, 15, 20]
    y = [0.106, 0.467, 0.75, 0.928, 0.275, 0.481, 0.956]
    r = spearman_ci(x, y, random_state=0, labels=("the rank", "the accuracy"))
    assert r.rho == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert np.isnan(r.ci_low) and np.isnan(r.ci_high)
    left_out = 2000 - r.n_boot_valid
    assert left_out > 0.1 * 2000
    assert r.note == (
        f"no interval: the rank is constant in {left_out} of 2000 bootstrap resamples"
    )
    # a few left-out resamples (0.7 ** 10: about 3%) keep the interval
    x2 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    r2 = spearman_ci(x2, [1, 1, 1, 1, 1, 1, 1, 2, 3, 4], random_state=0)
    assert 0 < 2000 - r2.n_boot_valid <= 200
    assert r2.ci_low <= r2.rho <= r2.ci_high and r2.note == ""
    # the threshold is 10%: about 7.8% keeps the interval (0.6 ** 5 of the
    # resamples miss the 2 and the 3), 12.5% does not (2 * 0.5 ** 4)
    near = spearman_ci([1, 1, 1, 2, 3], [5, 1, 4, 2, 3], random_state=0)
    assert 0.06 < 1 - near.n_boot_valid / 2000 < 0.095
    assert np.isfinite(near.ci_low) and near.note == ""
    over = spearman_ci([1, 1, 2, 2], [4, 1, 3, 2], random_state=0)
    assert 0.105 < 1 - over.n_boot_valid / 2000 < 0.15
    assert np.isnan(over.ci_low) and over.note.startswith("no interval")


def test_spearman_constant_and_errors():
    r = spearman_ci([1, 2, 3, 4], [5, 5, 5, 5], n_boot=50, random_state=0)
    assert np.isnan(r.rho) and r.note == "undefined: y is constant"
    assert r.n_boot_valid == 0
    with pytest.raises(ValueError, match=r"same length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"at least 3"):
        spearman([1, 2], [1, 2])
    with pytest.raises(ValueError, match=r"y contains NaN"):
        spearman([1, 2, 3], [1, np.nan, 2])
    with pytest.raises(ValueError, match=r"confidence=1\.5"):
        spearman_ci([1, 2, 3], [1, 2, 3], confidence=1.5)
    with pytest.raises(ValueError, match=r"n_boot=-1"):
        spearman_ci([1, 2, 3], [1, 2, 3], n_boot=-1)
    for bad in ("x", -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"random_state={bad!r} must be None, "
                           r"an integer >= 0 or a numpy Generator"):  # fmt: skip
            spearman_ci([1, 2, 3], [1, 2, 3], random_state=bad)
    gen = np.random.default_rng(5)
    assert spearman_ci([1, 2, 3, 5], [1, 3, 2, 4], n_boot=50, random_state=gen)


def test_effective_rank():
    rng = np.random.default_rng(0)
    A = rng.random((30, 12))
    s = np.linalg.svd(A, compute_uv=False)
    p = s / s.sum()
    assert effective_rank(A) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    # k equal singular values -> k
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    B = Q[:, :3] @ np.diag([2.0, 2.0, 2.0]) @ Q[:3, :]
    assert effective_rank(B) == pytest.approx(3.0, rel=1e-9)
    # a dominant direction gives an effective rank near 1
    C = np.outer(rng.random(20), rng.random(10)) + 1e-4 * rng.random((20, 10))
    assert 1.0 <= effective_rank(C) < 1.1
    assert effective_rank(np.zeros((3, 3))) == 0.0
    with pytest.raises(ValueError, match=r"2-D"):
        effective_rank(np.ones(3))
    with pytest.raises(ValueError, match=r"NaN"):
        effective_rank(np.array([[1.0, np.inf]]))


# --------------------------------------------------------------------------
# case-study runner
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data(digits_split):
    Xtr, ytr, Xte, yte = digits_split
    return (Xtr[:600], ytr[:600], Xte[:150], yte[:150])


def _relu3_activations(clf, X):
    import torch

    store = {}
    handle = clf.module_.relu3.register_forward_hook(
        lambda m, i, o: store.__setitem__("a", o.detach().numpy().copy())
    )
    with torch.no_grad():
        clf.module_(torch.from_numpy(X))
    handle.remove()
    return store["a"]


@pytest.mark.parametrize("progress", [False, True])
def test_run_case_study_draws_its_own_bar_only(small_data, progress, capsys,
                                               monkeypatch):  # fmt: skip
    # in a notebook (a kernel: no terminal) the extractors and scorers inside
    # drew bars of their own, also under progress=False
    import sys
    import types

    from sklearn_peek.studies import run_case_study

    fake = types.ModuleType("IPython")  # IPython is not installed here
    fake.get_ipython = lambda: types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.delenv("CI", raising=False)
    run_case_study("epochs", [0, 1], seeds=[0], data=small_data, layers=["relu3"],
                   ranks=[1, 2], criteria=["bcv", "elbow"], n_boot=10,
                   progress=progress)  # fmt: skip
    bars = [ln for ln in capsys.readouterr().err.split("\r") if "%|" in ln]
    names = {ln.split(":")[0].strip() for ln in bars}
    assert names == ({"case study epochs"} if progress else set()), names


def test_run_case_study_table(small_data):
    from sklearn.exceptions import ConvergenceWarning

    from sklearn_peek._criteria import EnergyThresholdWarning
    from sklearn_peek.studies import run_case_study

    ranks = [1, 2, 3, 5]
    with warnings.catch_warnings():
        # expected for the untrained networks, and muted: the table says it
        warnings.simplefilter("error", EnergyThresholdWarning)
        warnings.simplefilter("error", ConvergenceWarning)
        res = run_case_study(
            "epochs",
            [0, 8],
            seeds=[0, 1],
            data=small_data,
            layers=["pool2", "relu3"],
            ranks=ranks,
            criteria=["bcv", "elbow", "energy"],
            n_boot=200,
            random_state=0,
        )
    table = res.table
    measures = ["bcv", "elbow", "energy", "bcv_alone", "elbow_alone", "energy_alone"]
    measures += ["rankme"]
    expected_cols = [
        "degradation",
        "level",
        "seed",
        "accuracy",
        "n_train_seen",
        "epochs",
    ]
    expected_cols += [f"{layer}_{m}" for layer in ["pool2", "relu3"] for m in measures]
    assert list(table.columns) == expected_cols
    assert table.shape == (4, len(expected_cols))
    assert list(table["level"]) == [0, 0, 8, 8] and list(table["seed"]) == [0, 1, 0, 1]
    assert list(table["epochs"]) == [0, 0, 8, 8]
    assert (table["n_train_seen"] == 600).all()
    # untrained networks are worse than trained ones, seed by seed
    acc = table["accuracy"].to_numpy()
    assert acc[2] > acc[0] + 0.3 and acc[3] > acc[1] + 0.3
    for col in expected_cols[6:]:
        if col.endswith("rankme"):
            assert ((table[col] >= 1) & (table[col] <= 150)).all()
        else:
            assert table[col].isin(ranks).all(), col
    # accuracy and RankMe recomputed independently for one network
    Xtr, ytr, Xte, yte = small_data
    clf = LeNetClassifier(epochs=8, random_state=1).fit(Xtr, ytr)
    assert table["accuracy"][3] == pytest.approx(np.mean(clf.predict(Xte) == yte))
    assert table["relu3_rankme"][3] == pytest.approx(
        effective_rank(_relu3_activations(clf, Xte)), rel=1e-5
    )
    # correlations: one row per (layer, measure), against scipy
    corr = res.correlations
    assert corr.shape[0] == 2 * len(measures)
    row = corr[(corr["layer"] == "relu3") & (corr["measure"] == "rankme")].iloc[0]
    ref = scipy.stats.spearmanr(table["relu3_rankme"], table["accuracy"]).statistic
    assert row["rho"] == pytest.approx(ref)
    assert row["kind"] == "rankme" and row["n"] == 4
    assert set(res.timings) >= {
        "training",
        "extraction",
        "sweep_coupled",
        "sweep_alone",
    }
    assert res.timings["training"] > 0 and res.timings["sweep_coupled"] > 0
    assert res.timings["sweep_alone"] > 0 and res.timings["extraction"] > 0
    assert set(res.curves) == {(0, 0), (0, 1), (8, 0), (8, 1)}


def test_run_case_study_parallel_matches_serial(small_data):
    from sklearn_peek.studies import run_case_study

    kwargs = dict(
        seeds=[0],
        data=small_data,
        layers=["relu4"],
        ranks=[1, 2, 4],
        criteria=["bcv", "elbow"],
        epochs=3,
        n_boot=50,
    )
    serial = run_case_study("fraction", [0.05, 1.0], n_jobs=1, **kwargs)
    parallel = run_case_study("fraction", [0.05, 1.0], n_jobs=2, **kwargs)
    assert list(serial.table["n_train_seen"]) == [
        int(np.sum(np.ceil(0.05 * np.bincount(small_data[1])))),
        600,
    ]
    cols = [c for c in serial.table.columns]
    assert serial.table[cols].equals(parallel.table[cols])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"degradation": None}, "degradation=None"),
        ({"degradation": "blur"}, "degradation='blur'"),
        ({"levels": []}, "levels=.* empty"),
        ({"levels": [0.5, 2.0]}, "level=2.0"),
        ({"criteria": ["aic"]}, "criteria=.*aic"),
        ({"ranks": [0, 1]}, "ranks="),
        ({"seeds": [-1]}, "seeds="),
        ({"epochs": -1}, "epochs=-1"),
        ({"random_state": None}, "random_state=None"),
        ({"ranks": [1, 2.5]}, r"ranks=\[1, 2\.5\]"),
        ({"ranks": [3, 1, 3]}, r"ranks=\[3, 1, 3\] contains rank 3 more than once"),
        ({"layers": ["pool3"]}, r"'pool3'.*Did you mean"),
        ({"data": "digits"}, "data of type str"),
        ({"data": {"X_train": 1}}, "data is missing"),
        ({"scorer_params": {"criterion": "bcv"}}, r"sets \['criterion'\]"),
        # a TypeError in the first sweep, after a network was trained
        ({"scorer_params": {"progress": True}}, r"sets \['progress'\]"),
    ],
)
def test_run_case_study_bad_arguments(small_data, kwargs, match):
    from sklearn_peek.studies import run_case_study

    args = {"degradation": "fraction", "levels": [0.5], "data": small_data}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        run_case_study(args.pop("degradation"), args.pop("levels"), **args)


def test_run_case_study_refuses_ranks_and_cv_beyond_the_data_before_training(
    small_data, monkeypatch
):
    from sklearn_peek import SweepLimitError, studies

    def no_training(*args, **kwargs):
        raise AssertionError("a network was trained")

    monkeypatch.setattr(studies, "_network_job", no_training)
    args = dict(seeds=[0], data=small_data, n_jobs=1)
    # relu4 alone has 84 units, fewer than the 100 training rows of a fold
    with pytest.raises(SweepLimitError, match=r"has 100 training rows per fold "
                       r"and 84 columns; expected ranks <= 84") as err:  # fmt: skip
        studies.run_case_study("epochs", [1], layers=["relu4"], ranks=[1, 85], **args)
    assert (err.value.param, err.value.limit, err.value.rows) == ("ranks", 84, 100)
    assert err.value.columns == {"relu4": 84}  # the layer-alone baseline
    # relu3 has 120: the rows of a fold set the limit
    with pytest.raises(SweepLimitError, match=r"expected ranks <= 100"):
        studies.run_case_study("epochs", [1], layers=["relu3"], ranks=[101], **args)
    # the elbow sweep fits on all 150 test rows: pool2 (64 units) sets its limit
    with pytest.raises(SweepLimitError, match=r"expected ranks <= 64"):
        studies.run_case_study(
            "epochs", [1], layers=["pool2"], ranks=[65], criteria=["elbow"], **args
        )
    with pytest.raises(SweepLimitError, match=r"cv=200 is larger than the 150 test"):
        studies.run_case_study("epochs", [1], layers=["relu3"], cv=200, **args)


def test_run_paper_studies_bad_preset():
    from sklearn_peek.studies import PRESETS, run_paper_studies

    with pytest.raises(ValueError, match="preset='huge'"):
        run_paper_studies("huge")
    with pytest.raises(ValueError, match=r"unknown: \['level'\]"):
        run_paper_studies({"studies": {"epochs": [0, 1]}, "level": 3})
    full = PRESETS["full"]
    assert set(full["studies"]) == {"fraction", "unshuffled", "classes", "epochs"}
    assert all(len(v) >= 5 for v in full["studies"].values())
    assert len(full["seeds"]) >= 3


def test_lenet_classifier_seeds_hold_in_threads(monkeypatch):
    # the network's initial weights come from torch's global generator,
    # seeded per fit: fits in threads at once must not mix their draws, so
    # the seeded builds take turns (each build here lasts 20 ms longer)
    import time

    import torch

    from sklearn_peek import _lenet

    data = load_digits_images()
    X, y = data.images[:100], data.target[:100]

    def weights():
        net = LeNetClassifier(epochs=0, random_state=0).fit(X, y).module_
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    ref = weights()
    build, busy = _lenet.build_lenet, {"now": 0, "most": 0}

    def slow_build(*args, **kwargs):
        busy["now"] += 1
        busy["most"] = max(busy["most"], busy["now"])
        time.sleep(0.02)
        try:
            return build(*args, **kwargs)
        finally:
            busy["now"] -= 1

    monkeypatch.setattr(_lenet, "build_lenet", slow_build)
    out = in_threads([weights] * 4)
    assert busy["most"] == 1
    assert len(out) == 4 and all(torch.equal(w, ref) for w in out)
