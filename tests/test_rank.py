"""RankQualityScorer: planted ranks, determinism across joblib backends, the
scorer on trained networks, and bad input."""

import contextlib
import warnings

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from sklearn_peek import LayerActivationExtractor, RankQualityScorer, SweepLimitError
from sklearn_peek._extract._onnx import torch_export_options
from sklearn_peek._rank import _batched_task, _chain_task, _rank_chains, _rank_groups


def planted(seed, rank, n=150, widths=(40, 120), noise=0.3):
    """Coupled data of known rank: W H in blocks of different widths + noise."""
    rng = np.random.default_rng(seed)
    W = rng.random((n, rank)) ** 2
    H = rng.random((rank, sum(widths))) ** 2
    X = W @ H
    X = np.abs(X + noise * X.std() * rng.standard_normal(X.shape))
    return X


def blocks_of(widths, names=("input", "conv1", "fc1")):
    return list(zip(names, widths))


# ---------------------------------------------------------------- planted rank
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_bcv_recovers_planted_rank_for_nine_of_ten_seeds():
    hits, got = 0, []
    for seed in range(10):
        rank = 3 + seed % 4  # 3..6
        X = planted(seed, rank)
        sc = RankQualityScorer(
            blocks=blocks_of((40, 120)), ranks=range(1, 9), cv=3, random_state=seed
        ).fit(X)
        got.append((rank, sc.rank_["conv1"]))
        hits += abs(sc.rank_["conv1"] - rank) <= 1
    assert hits >= 9, got


def test_bcv_curve_peaks_then_falls():
    X = planted(0, 4, noise=0.5)
    sc = RankQualityScorer(
        blocks=blocks_of((40, 120)), ranks=range(1, 10), cv=3, random_state=0
    ).fit(X)
    mean = sc.curves_["conv1"]["mean"]
    assert np.argmax(mean) + 1 in (3, 4, 5)
    # a held-out score: it does not keep growing with the rank
    assert mean[-1] < mean.max()
    res = sc.cv_results_
    folds = np.vstack([res[f"split{k}_score"] for k in range(3)])
    assert np.allclose(res["mean_score"], folds.mean(axis=0))
    assert np.allclose(res["std_score"], folds.std(axis=0))
    assert res["selected"].sum() == 1
    assert res["rank"][res["selected"]][0] == sc.rank_["conv1"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("threshold", [0.8, 0.95])
def test_energy_selects_first_rank_reaching_threshold(threshold):
    X = planted(1, 5, noise=0.2)
    sc = RankQualityScorer(
        blocks=blocks_of((40, 120)), ranks=range(1, 9), criterion="energy",
        energy_threshold=threshold, random_state=0,
    ).fit(X)  # fmt: skip
    res = sc.cv_results_
    energy, ranks = res["explained_energy"], res["rank"]
    sel = sc.rank_["conv1"]
    assert energy[ranks == sel][0] >= threshold
    assert (energy[ranks < sel] < threshold).all()
    # the curve is the weighted explained energy 1 - err^2 / ||X||^2: check it
    # at the selected rank against a direct computation on the model
    from sklearn_peek import CoupledNMF

    m = CoupledNMF(1, blocks=blocks_of((40, 120)), random_state=0).fit(X)
    direct = 1 - m.reconstruction_err_**2 / len(m.block_weights_)
    assert energy[0] == pytest.approx(direct, rel=1e-3)
    assert sc.curves_["conv1"]["mean"] == pytest.approx(energy)


def test_energy_never_reached_warns_and_takes_largest_rank():
    X = planted(2, 6, noise=1.0)
    sc = RankQualityScorer(
        blocks=blocks_of((40, 120)), ranks=[1, 2], criterion="energy",
        energy_threshold=0.999, random_state=0,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="energy_threshold=0.999"):
        sc.fit(X)
    assert sc.rank_["conv1"] == 2


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_elbow_is_the_knee_of_the_relative_error_curve():
    X = planted(3, 4, noise=0.05)
    sc = RankQualityScorer(
        blocks=blocks_of((40, 120)), ranks=range(1, 13), criterion="elbow",
        random_state=0,
    ).fit(X)  # fmt: skip
    res = sc.cv_results_
    err = res["relative_error"]
    assert err[0] > err[3] > 0  # the error falls steeply until the planted rank
    # knee = farthest point below the chord of the normalized curve
    x = (res["rank"] - 1) / 11
    y = (err - err[-1]) / (err[0] - err[-1])
    assert sc.rank_["conv1"] == res["rank"][np.argmax((1 - x) - y)]
    assert abs(sc.rank_["conv1"] - 4) <= 1


def test_stability_reports_cophenetic_and_selects_before_biggest_drop():
    rng = np.random.default_rng(0)
    k, n = 3, 60
    labels = np.repeat(np.arange(k), n // k)
    W = np.full((n, k), 0.05)
    W[np.arange(n), labels] = 1.0
    W *= rng.uniform(0.5, 1.5, size=(n, 1))
    H = rng.random((k, 50)) ** 4
    X = np.abs(W @ H + 0.1 * rng.standard_normal((n, 50)))
    sc = RankQualityScorer(
        blocks=[("input", 20), ("conv1", 30)],
        ranks=range(1, 7),
        criterion="stability",
        n_restarts=5,
        random_state=0,
    ).fit(X)
    coph = sc.cv_results_["cophenetic"]
    assert coph[2] == pytest.approx(1.0, abs=1e-9)  # rank 3 reproduces the clusters
    assert coph[3:].min() < 1 - 1e-3  # over-splitting is not reproducible
    # the documented rule, recomputed here: rank before the largest drop (r >= 2)
    drops = coph[1:-1] - coph[2:]
    assert sc.rank_["conv1"] == 2 + int(np.argmax(drops))
    assert sc.rank_["conv1"] >= 3
    assert sc.cv_results_["n_iter"].min() >= 5  # n_restarts fits per rank


def test_stability_refuses_a_consensus_matrix_that_cannot_fit():
    # 400,000 samples: the n x n matrices would take about 5 TB. The error
    # comes before any fit (this test would otherwise run for hours).
    X = np.random.default_rng(0).random((400_000, 4), dtype=np.float32)
    sc = RankQualityScorer(
        blocks=[("input", 2), ("conv1", 2)],
        ranks=[1, 2],
        criterion="stability",
        n_restarts=2,
    )
    with pytest.raises(MemoryError, match=r"n_samples=400000.*criterion='bcv'"):
        sc.fit(X)


def test_warm_start_saves_iterations_and_keeps_the_answer():
    X = planted(4, 4, n=100)
    kw = dict(blocks=blocks_of((40, 120)), ranks=range(1, 9), cv=3, random_state=0)
    warm = RankQualityScorer(warm_start=True, **kw).fit(X)
    cold = RankQualityScorer(warm_start=False, **kw).fit(X)
    assert warm.n_iter_total_ < cold.n_iter_total_
    assert abs(warm.rank_["conv1"] - cold.rank_["conv1"]) <= 1
    assert cold.n_tasks_ == 3 * 3  # per fold, three stacked groups of ranks


def test_cold_rank_groups_fit_as_one_fit_per_rank():
    # Without warm starts the host stacks the ranks of a (layer, fold) in
    # groups (_rank_groups); a group's records equal one fit per rank to
    # rounding, with the same iteration counts.
    X = planted(4, 4, n=90)
    blocks = blocks_of((40, 120))
    train, test = np.arange(60), np.arange(60, 90)
    params = dict(block_weights="norm", solver="hals", init=None, max_iter=60)
    params.update(tol=1e-4, device=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        group = _batched_task(X, None, blocks, train, test, [2, 5, 7], 3, params)
        alone = [
            _chain_task(X, None, blocks, train, test, [r], 3, [0], params, False)[0]
            for r in (2, 5, 7)
        ]
    for g, a in zip(group, alone):
        assert (g["rank"], g["n_iter"], g["converged"]) == (
            a["rank"],
            a["n_iter"],
            a["converged"],
        )
        np.testing.assert_allclose(g["score"], a["score"], rtol=1e-9)


def test_rank_groups_depend_on_ranks_only():
    assert _rank_groups(range(1, 31)) == [list(range(g, 31, 10)) for g in range(1, 11)]
    assert _rank_groups([3, 5, 8]) == [[3, 5, 8]]
    assert _rank_groups([3, 5, 8, 9]) == [[3, 8], [5, 9]]
    groups = _rank_groups(range(1, 21))
    assert len(groups) == 7 and sorted(r for g in groups for r in g) == list(
        range(1, 21)
    )
    cost = [sum(g) for g in groups]
    assert max(cost) - min(cost) <= len(groups[0]) * (len(groups) - 1)
    # the cold sweep is the same for any number of workers
    X = planted(8, 4, n=90, widths=(20, 30, 25))
    ref = _det_fit(X, n_jobs=1, warm_start=False)
    assert ref.n_tasks_ == 2 * 3 * 2  # two layers, three folds, groups of 3 + 2
    _same(ref, _det_fit(X, n_jobs=2, warm_start=False))


def test_rank_chains_depend_on_ranks_only():
    chains = _rank_chains(range(1, 31), True)
    assert [r for c in chains for r in c] == list(range(1, 31))
    assert all(sum(c) <= 60 or len(c) == 1 for c in chains)
    assert len(chains) > 4  # enough tasks to keep two workers busy
    assert _rank_chains([3, 5, 8], False) == [[3], [5], [8]]


# ------------------------------------------------------------ layout / input
def test_dataframe_blocks_match_ndarray_blocks():
    pd = pytest.importorskip("pandas")
    X = planted(5, 3, widths=(10, 20, 15))
    names = [f"input__p{i}" for i in range(10)]
    names += [f"conv1__c{i}" for i in range(20)] + [f"fc1__u{i}" for i in range(15)]
    df = pd.DataFrame(X, columns=names)
    kw = dict(ranks=range(1, 6), cv=3, random_state=0)
    a = RankQualityScorer(**kw).fit(df)
    b = RankQualityScorer(blocks=blocks_of((10, 20, 15)), **kw).fit(X)
    assert (
        a.block_sizes_ == b.block_sizes_ == [("input", 10), ("conv1", 20), ("fc1", 15)]
    )
    assert a.rank_ == b.rank_
    assert_array_equal(a.cv_results_["mean_score"], b.cv_results_["mean_score"])
    frame = pd.DataFrame(a.cv_results_)
    assert list(frame["layer"].unique()) == ["conv1", "fc1"]
    assert len(frame) == 2 * 5


@pytest.mark.parametrize(
    "coupling, layers, expected",
    [
        ("input", None, ["conv1", "fc1"]),
        ("input", "fc1", ["fc1"]),
        ("none", ["fc1", "conv1"], ["fc1", "conv1"]),
        ("all", None, ["all"]),
    ],
)
def test_coupling_and_layers(coupling, layers, expected):
    X = planted(6, 3, widths=(10, 20, 15))
    sc = RankQualityScorer(
        layers=layers, blocks=blocks_of((10, 20, 15)), ranks=range(1, 5), cv=2,
        coupling=coupling, random_state=0,
    ).fit(X)  # fmt: skip
    assert sc.layers_ == expected
    assert list(sc.rank_) == expected
    assert set(sc.curves_) == set(expected)


@pytest.mark.parametrize("criterion", ["bcv", "elbow"])
def test_coupling_all_with_layers_factors_the_input_and_those_layers(criterion):
    # fit ignored layers under coupling="all" (every block was factored),
    # while __call__ gave them to the extractor; it now factors [input | fc1],
    # the same sweep as on those columns alone
    X = planted(6, 3, widths=(10, 20, 15))
    kw = dict(ranks=range(1, 5), cv=2, coupling="all", random_state=0)
    kw["criterion"] = criterion
    blocks = blocks_of((10, 20, 15))
    chosen = RankQualityScorer(layers=["fc1"], blocks=blocks, **kw).fit(X)
    alone = RankQualityScorer(blocks=[blocks[0], blocks[2]], **kw).fit(
        np.hstack([X[:, :10], X[:, 30:]])
    )
    every = RankQualityScorer(blocks=blocks, **kw).fit(X)
    assert chosen.rank_limits_ == alone.rank_limits_ == {"all": 25}
    assert every.rank_limits_ == {"all": 45}
    assert chosen.rank_ == alone.rank_
    assert_allclose(
        chosen.cv_results_["mean_score"], alone.cv_results_["mean_score"], rtol=1e-10
    )
    assert not np.allclose(
        chosen.cv_results_["mean_score"], every.cv_results_["mean_score"]
    )


def test_coupling_none_uses_the_layer_alone():
    # the layer block is pure noise, the input is rank 3: coupled with the
    # input it supports structure, alone it does not fit better than noise
    rng = np.random.default_rng(0)
    n = 120
    W = rng.random((n, 3))
    X0 = W @ rng.random((3, 30))
    X1 = rng.random((n, 40))
    X = np.hstack([X0 + 0.01 * rng.random(X0.shape), X1])
    kw = dict(
        blocks=[("input", 30), ("noise", 40)], ranks=range(1, 8), cv=3, random_state=0
    )
    coupled = RankQualityScorer(coupling="input", **kw).fit(X)
    alone = RankQualityScorer(coupling="none", **kw).fit(X)
    assert alone.rank_["noise"] < coupled.rank_["noise"]


def test_float32_input_runs_and_gives_float64_scores():
    X = planted(7, 3).astype(np.float32)
    sc = RankQualityScorer(
        blocks=blocks_of((40, 120)), ranks=range(1, 6), cv=3, random_state=0
    ).fit(X)
    assert sc.cv_results_["mean_score"].dtype == np.float64
    assert abs(sc.rank_["conv1"] - 3) <= 1


# -------------------------------------------------------- joblib determinism
def _det_fit(X, **kw):
    return RankQualityScorer(
        blocks=blocks_of((20, 30, 25)), ranks=range(1, 6), cv=3, random_state=42, **kw
    ).fit(X)


def _same(a, b):
    assert a.rank_ == b.rank_
    for key, val in a.cv_results_.items():
        if key.endswith("_score") or key in ("n_iter", "rank", "layer", "selected"):
            assert_array_equal(val, b.cv_results_[key], err_msg=key)


def test_threaded_sweeps_leave_the_warning_filters_alone(monkeypatch):
    # Each fit caught its ConvergenceWarning with warnings.catch_warnings(
    # record=True), which swaps process-wide state: sweeps in joblib threads
    # could leave another thread's recorder installed as showwarning (later
    # warnings never shown) and lose a fit's warning (its converged flag
    # wrong). (scikit-learn's check_array enters catch_warnings too, without
    # recording; that is not counted here.)
    import sys
    import threading

    entered = []
    real = warnings.catch_warnings

    class Spy(real):
        def __enter__(self):
            ours = "sklearn_peek" in sys._getframe(1).f_code.co_filename
            if ours and threading.current_thread() is not threading.main_thread():
                entered.append(sys._getframe(1).f_code.co_name)
            return super().__enter__()

    X = planted(8, 4, n=90, widths=(20, 30, 25))
    kw = dict(n_jobs=2, criterion="bcv", max_iter=15)  # some fits stop early
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the summary
        ref = _det_fit(X, **{**kw, "n_jobs": 1})
    assert not ref.cv_results_["converged"].all()
    show = warnings.showwarning
    monkeypatch.setattr(warnings, "catch_warnings", Spy)
    for _ in range(3):
        with joblib.parallel_config(backend="threading", n_jobs=2):
            with pytest.warns(ConvergenceWarning, match="some fits stopped"):
                sc = _det_fit(X, **kw)
        _same(ref, sc)
        assert_array_equal(sc.cv_results_["converged"], ref.cv_results_["converged"])
    assert entered == []  # no worker thread swapped the filters
    assert warnings.showwarning is show


@pytest.mark.parametrize(
    "params",
    [
        {"criterion": "bcv"},  # warm-start chains
        {"criterion": "bcv", "warm_start": False},  # stacked groups
        {"criterion": "elbow"},
        {"criterion": "stability", "n_restarts": 2},
    ],
    ids=["bcv-warm", "bcv-cold", "elbow", "stability"],
)
def test_a_layers_results_do_not_depend_on_the_other_layers_probed(params):
    # Each fit's seed comes from the layer's name: keyed by its place in
    # `layers`, fc1's starts (and at times its selected rank) changed when
    # conv1 was probed too, or the order was reversed.
    X = planted(8, 4, n=90, widths=(20, 30, 25))

    def fc1_rows(layers):
        sc = _det_fit(X, layers=layers, max_iter=30, **params)
        res = sc.cv_results_
        rows = np.asarray(res["layer"]) == "fc1"
        return sc.rank_["fc1"], {
            key: np.asarray(val)[rows]
            for key, val in res.items()
            if key.endswith("_score") or key in ("n_iter", "rank")
        }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        alone = fc1_rows(["fc1"])
        for layers in (["conv1", "fc1"], ["fc1", "conv1"]):
            rank, res = fc1_rows(layers)
            assert rank == alone[0]
            assert res.keys() == alone[1].keys() and len(res) >= 3
            for key, val in res.items():
                assert_array_equal(val, alone[1][key], err_msg=f"{layers}: {key}")


@pytest.mark.parametrize(
    "dtype, criterion, processes",
    # dask worker processes get X at an odd byte offset (unaligned), on
    # which NumPy's products round differently unless X is copied first
    [(np.float64, "bcv", False), (np.float32, "elbow", True)],
)
def test_results_identical_for_n_jobs_and_backends(dtype, criterion, processes):
    distributed = pytest.importorskip("distributed")
    X = planted(8, 4, n=90, widths=(20, 30, 25)).astype(dtype)
    ref = _det_fit(X, n_jobs=1, criterion=criterion)
    _same(ref, _det_fit(X, n_jobs=2, criterion=criterion))  # loky
    with joblib.parallel_config(backend="threading", n_jobs=2):
        _same(ref, _det_fit(X, criterion=criterion))
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=processes,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster),
        joblib.parallel_config(backend="dask"),
    ):
        _same(ref, _det_fit(X, criterion=criterion))


def test_random_state_reproducible_and_matters():
    X = planted(9, 4, n=90, widths=(20, 30, 25))
    a = _det_fit(X)
    b = _det_fit(X)
    _same(a, b)
    c = RankQualityScorer(
        blocks=blocks_of((20, 30, 25)), ranks=range(1, 6), cv=3, random_state=7
    ).fit(X)
    assert not np.array_equal(
        a.cv_results_["split0_score"], c.cv_results_["split0_score"]
    )


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "params, match",
    [
        ({"ranks": []}, r"ranks=\[\] is empty"),
        ({"ranks": [0, 1, 2]}, r"ranks=\[0, 1, 2\] contains 0; expected integers >= 1"),
        ({"ranks": [1, 2.5]}, r"contains 2.5"),
        ({"ranks": [2, 2]}, r"ranks=\[2, 2\] contains rank 2 more than once"),
        ({"ranks": 5}, "not an iterable"),
        (
            {"ranks": range(1, 60)},
            # the tightest layer is named (conv1 allows 30, fc1 only 25)
            r"layer 'fc1' has 40 training rows per fold and 25 columns; "
            r"expected ranks <= 25",
        ),
        (
            {"criterion": "bvc"},
            r"'criterion' parameter of RankQualityScorer must be a str among "
            r"\{.*'bcv'.*\}\. Got 'bvc' instead\. Did you mean 'bcv'\?",
        ),
        ({"coupling": "inputs"}, r"'coupling'.*Got 'inputs'.*Did you mean 'input'"),
        ({"cv": 1}, r"'cv' parameter.*must be an int in the range \[2, inf\)\. Got 1"),
        ({"cv": 3.0}, r"'cv' parameter.*Got 3\.0"),
        ({"cv": 61}, r"cv=61 is larger than the 60 samples"),
        ({"layers": ["conv"]}, r"layers contains 'conv'.*Did you mean 'conv1'"),
        ({"layers": "input"}, r"layers contains 'input'"),
        # under coupling="all" it factored the input alone, as "all"
        ({"layers": [], "coupling": "all"}, r"layers=\[\] names no layer"),
        ({"layers": ()}, r"layers=\(\) names no layer"),
        ({"energy_threshold": 0}, r"'energy_threshold'.*range \(0\.0, 1\.0\]\. Got 0 "),
        ({"n_restarts": 1}, r"'n_restarts'.*range \[2, inf\)\. Got 1 "),
        ({"selection": "one-se"}, r"'selection'.*Got 'one-se'.*Did you mean 'one_se'"),
        # "custom" is what the warm starts pass on; not the user's to give
        ({"init": "custom"}, r"'init'.*Got 'custom'"),
        ({"warm_start": "yes"}, r"'warm_start'.*Got 'yes'"),
        # scikit-learn's Interval(Integral) would take True as 1
        ({"max_iter": True}, r"'max_iter' parameter.*must be a number, not a bool"),
        ({"n_jobs": 0}, r"'n_jobs'.*Got 0 "),
        ({"score_layer": 1}, r"'score_layer'.*Got 1 "),
        ({"score_layer": "fc"}, r"score_layer='fc'.*Did you mean 'fc1'"),
        # a block of the data, but not a layer the sweep analyses: fit said
        # nothing and score_value raised after the whole sweep
        (
            {"score_layer": "input"},
            r"score_layer='input' is not a layer the scorer analyses \(the input "
            r"block is not analysed.*expected one of \['conv1', 'fc1'\]",
        ),
        (
            {"score_layer": "fc1", "layers": ["conv1"]},
            r"score_layer='fc1' is not a layer the scorer analyses; expected one "
            r"of \['conv1'\]",
        ),
        (
            {"score_layer": "fc1", "coupling": "all"},
            r"score_layer='fc1'.*coupling='all' reports one layer, 'all'",
        ),
        (
            {"block_weights": [1, 2, 3], "coupling": "all", "layers": ["fc1"]},
            r"block_weights=\[1, 2, 3\] gives 3 value\(s\); expected 2 \(one per "
            r"block: input, fc1\)",
        ),
        (
            {"blocks": [("input", 10), ("conv1", 10)]},
            r"add up to 20 columns, but X has n_features=45",
        ),
        ({"blocks": None}, r"blocks=None but X is an ndarray"),
        # passed on to CoupledNMF, with its rules, named as the scorer's
        ({"verbose": "x"}, r"'verbose' parameter of RankQualityScorer.*Got 'x'"),
        ({"tol": -1}, r"'tol' parameter of RankQualityScorer must be .*Got -1"),
        ({"solver": "cd"}, r"'solver' parameter of RankQualityScorer.*Got 'cd'"),
        (
            {"block_weights": "foo"},
            r"'block_weights' parameter of RankQualityScorer.*Got 'foo'",
        ),
        ({"random_state": "a"}, r"'random_state' parameter of RankQualityScorer"),
        (
            {"block_weights": [1, 2, 3]},
            r"block_weights=\[1, 2, 3\] gives 3 value\(s\); expected 2 \(one per "
            r"block: input, <layer>\)",
        ),
        (
            {"block_weights": [1, 2], "coupling": "none"},
            r"block_weights=\[1, 2\] gives 2 value\(s\); expected 1",
        ),
        (
            {"block_weights": [1, 2], "coupling": "all"},
            r"block_weights=\[1, 2\] gives 2 value\(s\); expected 3 \(one per "
            r"block: input, conv1, fc1\)",
        ),
        ({"block_weights": [1, -1]}, r"entry 1 \(block '<layer>'\) is -1\.0"),
        ({"progress": "yes"}, r"'progress'.*must be None or .*bool.*Got 'yes'"),
        (
            {"extractor": "foo"},
            r"'extractor'.*must be None or an object implementing 'fit' and "
            r"'transform'\. Got 'foo'",
        ),
    ],
)
def test_bad_parameters(params, match):
    X = planted(0, 2, n=60, widths=(10, 20, 15))
    kw = dict(blocks=blocks_of((10, 20, 15)), ranks=range(1, 4), cv=3)
    kw.update(params)
    with pytest.raises(ValueError, match=match):
        RankQualityScorer(**kw).fit(X)


def _tiny_relu_net():
    """Conv2d(1, 2, 2) + ReLU with non-negative weights and no bias: no dead
    channel on non-negative inputs (unseeded random weights gave one now and
    then: a flaky "all zeros" error)."""
    conv = nn.Conv2d(1, 2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(0.1, 0.8, 8).reshape(2, 1, 2, 2))
        conv.bias.zero_()
    return nn.Sequential(conv, nn.ReLU()).eval()


def test_input_features_are_recorded_as_scikit_learn_does():
    import pandas as pd

    X = planted(0, 2, n=60, widths=(10, 20, 15))
    blocks = blocks_of((10, 20, 15))
    kw = dict(ranks=range(1, 3), cv=3, random_state=0)
    cols = [f"{name}__f{i}" for name, size in blocks for i in range(size)]
    sc = RankQualityScorer(**kw).fit(pd.DataFrame(X, columns=cols))
    assert sc.n_features_in_ == 45
    assert_array_equal(sc.feature_names_in_, cols)
    # refitted on an ndarray: the names of the earlier fit are not kept
    sc.set_params(blocks=blocks).fit(X)
    assert sc.n_features_in_ == 45 and not hasattr(sc, "feature_names_in_")
    # raw inputs with column names of mixed types (scikit-learn refuses them
    # as feature names): the sweep runs, and no names are recorded
    net = _tiny_relu_net()
    raw = pd.DataFrame(np.random.default_rng(0).random((40, 9), dtype=np.float32),
                       columns=[*range(8), "a"])  # fmt: skip
    ext = LayerActivationExtractor(net, ["1"], input_shape=(1, 3, 3))
    sc = RankQualityScorer(extractor=ext, **kw).fit(raw)
    assert sc.n_features_in_ == 9 and not hasattr(sc, "feature_names_in_")
    assert list(sc.rank_) == ["1"]


def test_blocks_that_disagree_with_the_extractor_are_refused():
    # they were ignored: the extractor's layout was used without a word
    net = _tiny_relu_net()
    raw = np.random.default_rng(0).random((40, 1, 3, 3), dtype=np.float32)
    ext = LayerActivationExtractor(net, ["1"]).fit(raw)
    kw = dict(extractor=ext, ranks=[1, 2], cv=3, random_state=0)
    with pytest.raises(
        ValueError,
        match=r"blocks=\[\('input', 9\), \('x', 8\)\] disagrees with the blocks "
        r"of `extractor`, \[\('input', 9\), \('1', 8\)\]",
    ):
        RankQualityScorer(blocks=[("input", 9), ("x", 8)], **kw).fit(raw)
    # the same layout is accepted
    same = RankQualityScorer(blocks=ext.block_sizes_, **kw).fit(raw)
    assert same.rank_ == RankQualityScorer(**kw).fit(raw).rank_


@contextlib.contextmanager
def _forward_calls(net):
    """A list that grows by one each time ``net`` runs, while in the block."""
    calls = []
    hook = net.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        hook.remove()


def test_passed_on_parameters_are_checked_before_the_network_runs(
    small_cnn_and_images,
):
    net, images = small_cnn_and_images
    with _forward_calls(net) as calls:
        ext = LayerActivationExtractor(net, layers=["pool1"])
        for bad in ({"tol": -1}, {"solver": "cd"}, {"verbose": "x"}):
            scorer = RankQualityScorer(ranks=[1, 2], **bad)
            with pytest.raises(ValueError, match="parameter of RankQualityScorer"):
                scorer.set_params(extractor=ext).fit(images)
            with pytest.raises(ValueError, match="parameter of RankQualityScorer"):
                scorer.set_params(extractor=None)(net, images)
        assert calls == []


def test_ranks_none_means_one_to_thirty():
    X = planted(0, 2, n=60, widths=(10, 40))
    kw = dict(blocks=blocks_of((10, 40)), criterion="energy", max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scorer = RankQualityScorer(**kw).fit(X)
    assert scorer.get_params()["ranks"] is None
    assert_array_equal(scorer.ranks_, np.arange(1, 31))
    assert_array_equal(scorer.curves_["conv1"]["ranks"], np.arange(1, 31))
    assert_array_equal(scorer.cv_results_["rank"], np.arange(1, 31))
    assert scorer.score_value() == scorer.rank_["conv1"] / 30
    # a plot of the sweep shows the thirty ranks
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sklearn_peek.plotting import plot_rank_sweep

    fig = plot_rank_sweep(scorer)
    assert_array_equal(fig.axes[0].lines[0].get_xdata(), np.arange(1, 31))
    plt.close(fig)
    # too few rows for rank 30: the message spells the default out
    with pytest.raises(
        ValueError, match=r"ranks=None \(ranks 1 to 30\) goes up to 30, but"
    ):
        RankQualityScorer(**kw).fit(X[:20])


def test_scikit_learn_checks_on_default_parameters_and_positive_tag():
    from sklearn.utils.estimator_checks import (
        check_parameters_default_constructible,
        check_positive_only_tag_during_fit,
    )

    scorer = RankQualityScorer(blocks=[("input", 2), ("conv1", 2)], ranks=[1, 2])
    assert scorer.__sklearn_tags__().input_tags.positive_only
    check_parameters_default_constructible("RankQualityScorer", scorer)
    check_positive_only_tag_during_fit("RankQualityScorer", scorer)


def test_blocks_as_plain_sizes_are_named_as_coupled_nmf_names_them():
    X = planted(1, 2, n=60, widths=(10, 20))
    kw = dict(ranks=[1, 2], cv=3, random_state=0)
    sizes = RankQualityScorer(blocks=[10, 20], coupling="none", **kw).fit(X)
    assert sizes.block_sizes_ == [("block0", 10), ("block1", 20)]
    assert sizes.layers_ == ["block0", "block1"]  # no block is "input"
    # block1 is analysed as the same block named by a pair would be
    one = RankQualityScorer(blocks=[10, 20], layers="block1", coupling="none", **kw)
    # (each fit's seed comes from the layer's name, so the pairs name it alike)
    pairs = [("block0", 10), ("block1", 20)]
    named = RankQualityScorer(blocks=pairs, layers="block1", coupling="none", **kw)
    one.fit(X), named.fit(X)
    assert one.rank_["block1"] == named.rank_["block1"]
    assert_array_equal(one.cv_results_["mean_score"], named.cv_results_["mean_score"])
    # the input block given as a pair, the layer as a size
    mixed = RankQualityScorer(blocks=[("input", 10), 20], **kw).fit(X)
    assert mixed.layers_ == ["block1"]
    # sizes alone cannot say which block is the input
    with pytest.raises(
        ValueError,
        match=r"blocks=\[10, 20\] gives plain sizes.*cannot say which block holds "
        r"the input.*blocks=\[\('input', 10\), \('block1', 20\)\], or "
        r"coupling='none' or 'all'",
    ):
        RankQualityScorer(blocks=[10, 20], **kw).fit(X)
    with pytest.raises(
        ValueError, match=r"blocks\[1\]='x' is not understood; expected a block size"
    ):
        RankQualityScorer(blocks=[10, "x"], **kw).fit(X)
    # checked as CoupledNMF checks them, before any fit (no "__" in names)
    with pytest.raises(ValueError, match=r"block name 'a__b' is not allowed"):
        RankQualityScorer(blocks=[10, ("a__b", 20)], **kw).fit(X)


def test_parallel_backends_snippet_of_the_guide_runs():
    """The "Any joblib backend works" block of rank.rst, up to its dask part,
    run as a script (its work is under ``if __name__ == "__main__":``).

    (The dask backend itself is checked by
    test_results_identical_for_n_jobs_and_backends.)
    """
    import textwrap
    from pathlib import Path

    rst = Path(__file__).resolve().parents[1] / "docs" / "user_guide" / "rank.rst"
    lines = rst.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Any joblib backend"))
    start = next(i for i in range(start, len(lines)) if lines[i].endswith("::")) + 2
    stop = next(i for i in range(start, len(lines)) if "dask" in lines[i])
    code = textwrap.dedent("\n".join(lines[start:stop]))
    namespace = {"__name__": "__main__"}
    exec(compile(code, "rank.rst", "exec"), namespace)
    assert namespace["scorer"].rank_ == {"conv1": 4}


def test_rank_beyond_columns_names_the_layer():
    X = planted(0, 2, n=60, widths=(3, 4))
    sc = RankQualityScorer(
        blocks=[("input", 3), ("tiny", 4)], ranks=range(1, 6), coupling="none",
        criterion="elbow",
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=r"layer 'tiny' has 60 rows and 4 columns.*<= 4"
    ):
        sc.fit(X)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda X: X.__setitem__((3, 5), -1.0),
            r"Negative values.*X\[3, 5\] = -1\.0 at row 3, column 5",
        ),
        (
            lambda X: X.__setitem__((2, 1), np.nan),
            r"X contains NaN.*X\[2, 1\] = nan at row 2, column 1",
        ),
    ],
)
def test_bad_data(mutate, match):
    X = planted(0, 2, n=60, widths=(10, 20))
    mutate(X)
    with pytest.raises(ValueError, match=match):
        RankQualityScorer(blocks=blocks_of((10, 20)), ranks=[1, 2]).fit(X)


def test_input_coupling_needs_an_input_block():
    X = planted(0, 2, n=60, widths=(10, 20))
    with pytest.raises(ValueError, match="coupling='input' needs an 'input' block"):
        RankQualityScorer(blocks=[("a", 10), ("b", 20)], ranks=[1, 2]).fit(X)


def test_scorer_refuses_objects_without_a_model():
    X = np.random.default_rng(0).random((10, 64))
    with pytest.raises(TypeError, match="estimator='dict': cannot find a model"):
        RankQualityScorer()({}, X)


# ---------------------------------------------------------- scorer on models
class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.fc2(self.relu2(self.fc1(x.flatten(1))))


class Wrapped:
    """Stands for a skorch net: the trained module sits in ``module_``."""

    def __init__(self, module):
        self.module_ = module


@pytest.fixture(scope="module")
def small_cnn_and_images():
    from sklearn_peek.datasets import load_digits_images

    torch.manual_seed(0)
    net = SmallCNN().eval()
    images = load_digits_images().images[:90]
    return net, images


def test_scorer_reaches_the_model_every_way(small_cnn_and_images, tmp_path):
    from sklearn.pipeline import Pipeline

    net, images = small_cnn_and_images
    kw = dict(layers=["pool1", "relu2"], ranks=range(1, 5), cv=3, random_state=0)
    scorer = RankQualityScorer(**kw)
    direct = scorer(net, images)
    assert 0 < direct <= 1
    assert scorer(Wrapped(net), images) == direct
    ext = LayerActivationExtractor(net, layers=["pool1", "relu2"]).fit(images)
    pipe = Pipeline([("ext", ext), ("nmf", "passthrough")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a passthrough step is no unused step
        assert scorer(pipe, images) == direct
    # a step after the extractor is not used, and says so: a search over its
    # parameters with this scorer gave every candidate the same score
    from sklearn_peek import CoupledNMF

    pipe = Pipeline([("ext", ext), ("nmf", CoupledNMF(2, blocks="auto"))])
    with pytest.warns(UserWarning, match=r"steps after its LayerActivationExtrac"
                      r"tor \(\['nmf'\]\) are not used") as rec:  # fmt: skip
        assert scorer(pipe, images) == direct
    assert rec[0].filename == __file__  # the user's line
    # the number is the documented one: mean selected rank / max rank
    inner = RankQualityScorer(blocks=ext.block_sizes_, **kw).fit(ext.transform(images))
    assert direct == pytest.approx(np.mean(list(inner.rank_.values())) / 4)
    layer_scorer = RankQualityScorer(score_layer="relu2", **kw)
    assert layer_scorer(net, images) == pytest.approx(inner.rank_["relu2"] / 4)
    # labels are not used
    y = np.arange(len(images)) % 10
    assert scorer(net, images, y) == direct

    path = tmp_path / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, torch.zeros(1, 1, 8, 8), str(path), input_names=["x"],
            dynamic_axes={"x": {0: "batch"}}, **torch_export_options(),
        )  # fmt: skip
    # the same network through onnxruntime: same activations, same number
    onnx_layers = ["/pool1/MaxPool_output_0", "/relu2/Relu_output_0"]
    onnx_scorer = RankQualityScorer(**{**kw, "layers": onnx_layers})
    assert onnx_scorer(str(path), images) == pytest.approx(direct)


def test_fit_with_extractor_takes_raw_images(small_cnn_and_images):
    net, images = small_cnn_and_images
    ext = LayerActivationExtractor(net, layers=["pool1", "relu2"])
    sc = RankQualityScorer(extractor=ext, ranks=range(1, 5), cv=3, random_state=0).fit(
        images
    )
    assert sc.block_sizes_ == [("input", 64), ("pool1", 64), ("relu2", 16)]
    assert not hasattr(
        ext, "block_sizes_"
    )  # the given extractor is not fitted in place
    assert sc.layers_ == ["pool1", "relu2"]


@pytest.mark.parametrize("criterion", ["bcv", "elbow"])
def test_torch_device_without_warm_start_batches_the_ranks(criterion):
    # On a torch device (here torch on the CPU) with warm_start=False all ranks
    # of a (layer, fold) share one stacked solver run: one task per fold, and
    # the same curve and ranks as the NumPy path, which stacks them in groups
    # of up to 3 ranks (here three groups per fold).
    rng = np.random.RandomState(0)
    W = rng.rand(150, 5)
    X = np.hstack([W @ rng.rand(5, 30), 20 * W @ rng.rand(5, 90)])
    X = (X * rng.uniform(0.9, 1.1, size=X.shape)).astype(np.float64)
    kw = dict(
        blocks=[("input", 30), ("layer", 90)],
        ranks=range(1, 9),
        cv=3,
        criterion=criterion,
        warm_start=False,
        random_state=0,
    )
    kw["max_iter"] = 40  # some ranks stop at max_iter: convergence warnings
    with warnings.catch_warnings(record=True) as rec_ref:
        warnings.simplefilter("always")
        ref = RankQualityScorer(**kw).fit(X)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sc = RankQualityScorer(device=torch.device("cpu"), **kw).fit(X)
    # The stacked run reports convergence as the per-rank tasks do: once.
    n_conv = [
        sum(issubclass(w.category, ConvergenceWarning) for w in r)
        for r in (rec_ref, rec)
    ]
    assert n_conv[0] == n_conv[1] == 1
    assert ref.n_tasks_ == 3 * (3 if criterion == "bcv" else 1)
    assert sc.n_tasks_ == (3 if criterion == "bcv" else 1)
    assert sc.rank_ == ref.rank_
    np.testing.assert_allclose(
        sc.cv_results_["mean_score"], ref.cv_results_["mean_score"], rtol=1e-7
    )
    assert_array_equal(sc.cv_results_["n_iter"], ref.cv_results_["n_iter"])
    assert_array_equal(sc.cv_results_["converged"], ref.cv_results_["converged"])


@pytest.mark.parametrize("criterion", ["bcv", "energy"])
def test_torch_device_runs_the_warm_chains_in_lockstep(criterion, monkeypatch):
    # With warm starts (the default) on a torch device, the chains of a
    # (layer, fold) advance together: step j fits the j-th rank of every chain
    # in one stacked run. In float64 the records equal those of one chain
    # after the other (the same starts, updates and stopping rule).
    from _helpers import spy_solvers

    from sklearn_peek import _rank

    rng = np.random.RandomState(0)
    W = rng.rand(150, 5)
    X = np.hstack([W @ rng.rand(5, 30), 20 * W @ rng.rand(5, 90)])
    X = torch.from_numpy(X * rng.uniform(0.9, 1.1, size=X.shape))
    ranks = range(1, 13)
    chains = _rank_chains(ranks, True)
    assert len(chains) == 4  # [1..6], [7, 8, 9], [10, 11], [12]
    kw = dict(
        blocks=[("input", 30), ("layer", 90)],
        ranks=ranks,
        cv=3,
        criterion=criterion,
        random_state=0,
        max_iter=60,
        device=torch.device("cpu"),
    )
    folds = 3 if criterion == "bcv" else 1
    calls = spy_solvers(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sc = RankQualityScorer(**kw).fit(X)
        runs = [name for name, _ in calls]
        calls.clear()
        monkeypatch.setattr(_rank, "_LOCKSTEP", False)
        ref = RankQualityScorer(**kw).fit(X)
        ref_runs = [name for name, _ in calls]
    assert sc.n_tasks_ == folds  # one task per (layer, fold)
    assert ref.n_tasks_ == folds * len(chains)  # one per chain
    # one stacked solver run per step of the chains, none per rank
    assert runs.count("fit_hals_batched") == folds * max(map(len, chains))
    assert "fit_hals" not in runs
    assert ref_runs.count("fit_hals") == folds * len(ranks)
    assert sc.rank_ == ref.rank_
    np.testing.assert_allclose(
        sc.cv_results_["mean_score"], ref.cv_results_["mean_score"], rtol=1e-9
    )
    assert_array_equal(sc.cv_results_["n_iter"], ref.cv_results_["n_iter"])
    assert_array_equal(sc.cv_results_["converged"], ref.cv_results_["converged"])


def test_new_components_on_a_torch_device_match_numpy():
    from sklearn_peek._rank import _new_components

    rng = np.random.RandomState(3)
    X = rng.rand(60, 40)
    W, H = rng.rand(60, 3), rng.rand(3, 40)
    col_w = rng.uniform(0.5, 2.0, size=40)
    ref = _new_components(X, W, H, col_w, 4, 7)
    got = _new_components(torch.from_numpy(X), W, H, col_w, 4, 7)
    for a, b in zip(got, ref):
        assert isinstance(a, np.ndarray)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_new_components_hold_one_residual_and_leave_x_alone():
    # A warm start's new components, on the host: the residual X - W @ H is
    # the one n x m array made (there were a copy of X, the product, and the
    # clipped residual: 2x X at the peak), and X is not written to.
    import tracemalloc

    from sklearn_peek._rank import _new_components

    rng = np.random.default_rng(0)
    X = rng.random((600, 800), dtype=np.float32)
    X.setflags(write=False)
    W, H = rng.random((600, 5)), 0.1 * rng.random((5, 800))
    col_w = rng.uniform(0.5, 2.0, size=800)
    tracemalloc.start()
    try:
        Wn, Hn = _new_components(X, W, H, col_w, 3, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.3 * X.nbytes
    assert Wn.shape == (600, 3) and Hn.shape == (3, 800)
    assert (Wn > 0).all() and (Hn > 0).all()


def test_cpu_tensor_input_takes_the_numpy_path_and_is_validated():
    import scipy.sparse as sp

    rng = np.random.RandomState(1)
    W = rng.rand(120, 4)
    X = np.hstack([W @ rng.rand(4, 20), 10 * W @ rng.rand(4, 60)])
    kw = dict(blocks=[("input", 20), ("layer", 60)], ranks=range(1, 6), cv=3)
    kw.update(warm_start=False, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = RankQualityScorer(**kw).fit(X)
        sc = RankQualityScorer(**kw).fit(torch.from_numpy(X))  # device=None
    # A CPU tensor runs as NumPy data: the host's groups of ranks (3 + 2
    # per fold), not the device's single stack.
    assert sc.n_tasks_ == ref.n_tasks_ == 6
    assert sc.rank_ == ref.rank_
    np.testing.assert_allclose(
        sc.cv_results_["mean_score"], ref.cv_results_["mean_score"], rtol=1e-7
    )
    bad = torch.from_numpy(X.copy())
    bad[7, 3] = -1.0
    with pytest.raises(
        ValueError, match=r"negative.*row 7.*column 3|row 7.*column 3.*negative"
    ):
        RankQualityScorer(**kw).fit(bad)
    with pytest.raises(ValueError, match="scipy sparse matrix; expected a dense"):
        RankQualityScorer(**kw).fit(sp.csr_matrix(X))


def test_stability_on_an_all_zero_layer_reports_zero_error():
    # An all-zero layer has nothing to reconstruct: relative error 0, no
    # division by its zero norm (block_weights="none" lets such a block in).
    X = np.zeros((30, 20))
    X[:, :5] = np.random.RandomState(0).rand(30, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = RankQualityScorer(
            blocks=[("input", 5), ("conv1", 15)],
            ranks=[1, 2, 3],
            criterion="stability",
            coupling="none",
            block_weights="none",
            n_restarts=2,
            random_state=0,
        ).fit(X)
    assert_array_equal(sc.cv_results_["relative_error"], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_progress_bar_counts_the_tasks(n_jobs, capsys, monkeypatch):
    X = planted(0, 2, n=60, widths=(10, 20, 15))
    kw = dict(blocks=blocks_of((10, 20, 15)), ranks=range(1, 4), cv=3,
              random_state=0, n_jobs=n_jobs)  # fmt: skip
    ref = RankQualityScorer(progress=False, **kw).fit(X)
    assert capsys.readouterr().err == ""
    sc = RankQualityScorer(progress=True, **kw).fit(X)
    err = capsys.readouterr().err
    assert "rank sweep" in err
    assert f"{sc.n_tasks_}/{sc.n_tasks_}" in err  # every task, once
    # results are the same, in the same order, with or without the bar
    assert sc.rank_ == ref.rank_
    assert_array_equal(sc.cv_results_["mean_score"], ref.cv_results_["mean_score"])
    # the default: no bar where nobody watches (CI, or a captured stderr)
    monkeypatch.setenv("CI", "1")
    RankQualityScorer(**kw).fit(X)
    assert capsys.readouterr().err == ""


def test_scorer_progress_reaches_the_extractor_it_builds(small_cnn_and_images, capsys):
    net, images = small_cnn_and_images
    kw = dict(layers=["pool1"], ranks=[1, 2], cv=3, random_state=0)
    quiet = RankQualityScorer(progress=False, **kw)(net, images)
    assert capsys.readouterr().err == ""
    loud = RankQualityScorer(progress=True, **kw)(net, images)
    err = capsys.readouterr().err
    assert "extract" in err and "rank sweep" in err
    assert loud == quiet
    # an extractor passed in keeps its own setting
    own = LayerActivationExtractor(net, layers=["pool1"], progress=False)
    mixed = RankQualityScorer(progress=True, extractor=own, **kw)(net, images)
    err = capsys.readouterr().err
    assert "rank sweep" in err and "extract" not in err
    assert mixed == quiet
    # ... and one that leaves it at None follows the scorer (before, the
    # template's None drew no bar: stderr is captured here, no terminal)
    template = LayerActivationExtractor(net, layers=["pool1"])
    assert RankQualityScorer(progress=True, extractor=template, **kw)(
        net, images
    ) == pytest.approx(quiet)
    err = capsys.readouterr().err
    assert "extract" in err and "rank sweep" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_scorer_device_reaches_an_extractor_template_that_leaves_it_unset(
    small_cnn_and_images,
):
    # the template's copy ran on the CPU and only the fits asked for CUDA,
    # after the whole extraction
    net, images = small_cnn_and_images
    with _forward_calls(net) as calls:
        template = LayerActivationExtractor(net, layers=["pool1"])
        scorer = RankQualityScorer(device="cuda", extractor=template, ranks=[1, 2])
        with pytest.raises(ValueError, match=r"device='cuda' asks for a CUDA GPU"):
            scorer(net, images)
        assert calls == []
        # a template with a device of its own keeps it (the fits still ask)
        template.set_params(device="cpu")
        with pytest.raises(ValueError, match=r"device='cuda' asks for a CUDA GPU"):
            scorer(net, images)
        assert calls != []


def test_score_layer_not_among_the_given_layers_is_refused_before_the_network_runs(
    small_cnn_and_images,
):
    net, images = small_cnn_and_images
    with _forward_calls(net) as calls:
        for kw in (
            dict(layers=["pool1"], score_layer="relu2"),
            dict(coupling="all", score_layer="relu2"),
        ):
            with pytest.raises(ValueError, match="score_layer='relu2' is not a layer"):
                RankQualityScorer(ranks=[1, 2], **kw)(net, images)
        assert calls == []


def test_sweep_limit_error_says_which_setting_and_its_limit():
    import pickle

    X = planted(0, 2, n=60, widths=(10, 20, 15))
    kw = dict(blocks=blocks_of((10, 20, 15)), cv=3)
    with pytest.raises(SweepLimitError) as err:
        RankQualityScorer(ranks=range(1, 60), **kw).fit(X)
    assert (err.value.param, err.value.limit) == ("ranks", 25)  # fc1: 25 columns
    assert "layer 'fc1'" in err.value.reason
    # what sets the limit: 40 training rows per fold; [input | layer] widths
    assert (err.value.rows, err.value.columns) == (40, {"conv1": 30, "fc1": 25})
    back = pickle.loads(pickle.dumps(err.value))
    assert (str(back), back.param, back.limit) == (str(err.value), "ranks", 25)
    assert (back.rows, back.columns) == (40, {"conv1": 30, "fc1": 25})
    # a sweep that fits records the limit
    sc = RankQualityScorer(ranks=[1, 2], **kw).fit(X)
    assert sc.rank_limit_ == 25
    assert sc.rank_limits_ == {"conv1": 30, "fc1": 25}
    sc = RankQualityScorer(ranks=[1, 2], **kw).fit(X[:12])  # 8 rows per fold
    assert sc.rank_limit_ == 8
    with pytest.raises(SweepLimitError) as err:
        RankQualityScorer(ranks=[1, 2], cv=61, blocks=kw["blocks"]).fit(X)
    assert (err.value.param, err.value.limit) == ("cv", 60)


def test_rank_limits_before_fitting_match_what_fit_records():
    widths = (10, 20, 15)
    X = planted(0, 2, n=60, widths=widths)
    blocks = blocks_of(widths)  # input 10, conv1 20, fc1 15
    for kw in (
        {"cv": 3},  # 40 training rows per fold
        {"cv": 2, "coupling": "none"},
        {"criterion": "elbow", "coupling": "all"},
        {"criterion": "energy", "layers": ["fc1"]},
    ):
        sc = RankQualityScorer(ranks=[1, 2], blocks=blocks, **kw)
        before = sc.rank_limits(60, blocks)
        assert before == sc.fit(X).rank_limits_
        assert min(before.values()) == sc.rank_limit_
    # the rows of a fold bind when they are fewer than the columns
    assert RankQualityScorer(cv=3).rank_limits(12, blocks) == {"conv1": 8, "fc1": 8}
    assert RankQualityScorer(coupling="none").rank_limits(60, blocks) == {
        "conv1": 20,
        "fc1": 15,
    }
    with pytest.raises(
        SweepLimitError, match=r"cv=5 is larger than n_samples=4; expected 2 <= cv"
    ) as err:
        RankQualityScorer(cv=5).rank_limits(4, blocks)
    assert err.value.param == "cv"
    # what fit would refuse with these blocks, refused here too
    with pytest.raises(ValueError, match=r"score_layer='zz' is not a layer"):
        RankQualityScorer(score_layer="zz").rank_limits(10, blocks)
    with pytest.raises(ValueError, match=r"block_weights"):
        RankQualityScorer(coupling="all", block_weights=[1, 2]).rank_limits(10, blocks)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"n_samples={bad!r} is invalid"):
            RankQualityScorer().rank_limits(bad, blocks)
    # as fit refuses them (resolve_blocks), names with "__" and empty names too
    for bad in ([], [("a", 0)], [("a", 3), ("a", 4)], [3, 4], "input", [("a",)],
                [("a__b", 3)], [("", 3)], [("a", 2.5)], [("a", 3, 1)]):  # fmt: skip
        with pytest.raises(ValueError, match=r"block_sizes=.* is not understood"):
            RankQualityScorer().rank_limits(10, bad)
    with pytest.raises(ValueError, match=r"layers contains 'fc9'"):
        RankQualityScorer(layers=["fc9"]).rank_limits(10, blocks)


def _sparse_layer_data(active_rows, seed=0):
    """60 samples: an input block of 10 columns, a layer 'l1' of 20 columns
    that is non-zero on ``active_rows`` only, and a dense layer 'l2'."""
    rng = np.random.RandomState(seed)
    X = rng.rand(60, 45)
    X[:, 10:30] = 0
    X[active_rows, 10:30] = rng.rand(len(active_rows), 20)
    return X, [("input", 10), ("l1", 20), ("l2", 15)]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("device", [None, torch.device("cpu")])
@pytest.mark.parametrize("warm_start", [True, False])
def test_bcv_with_a_layer_that_fires_on_a_few_samples(device, warm_start):
    # With one active row, some fold trains without it: "norm" cannot divide
    # 'l1' by its (zero) training norm there. The sweep still runs, and that
    # fold weighs 'l1' as the other folds do on average.
    from sklearn_peek._criteria import row_folds
    from sklearn_peek._rank import _fold_weights, _row_block_sq

    X, blocks = _sparse_layer_data([3])
    kw = dict(blocks=blocks, ranks=[1, 2, 3], cv=5, random_state=11)
    sc = RankQualityScorer(device=device, warm_start=warm_start, **kw).fit(X)
    assert set(sc.rank_) == {"l1", "l2"}
    assert np.isfinite(sc.cv_results_["mean_score"]).all()
    sq = _row_block_sq(X, [s for _, s in blocks])
    np.testing.assert_allclose(sq, np.stack([
        (X[:, a:b] ** 2).sum(axis=1) for a, b in ((0, 10), (10, 30), (30, 45))
    ], axis=1))  # fmt: skip
    cb = blocks[:2]
    special = 0
    for train, _ in row_folds(60, 5, 0):
        w = _fold_weights(sq, blocks, cb, train)
        if 3 in train:
            assert w is None  # "norm" as it is
            continue
        special += 1
        want_in = 1 / (X[train, :10] ** 2).sum()
        want_l1 = 60 / (len(train) * (X[:, 10:30] ** 2).sum())
        np.testing.assert_allclose(w, [want_in, want_l1], rtol=1e-12)
    assert special == 1  # the fold that tests on row 3
    # a layer that fires on two samples: the fallback runs only for seeds
    # whose folds put both in one test fold (16 and 19 do, 0 does not)
    from sklearn_peek import _rank

    X2, _ = _sparse_layer_data([3, 7])
    for seed, fallback in ((0, False), (16, True), (19, True)):
        used = []

        def spy(*args, used=used):
            weights = _fold_weights(*args)
            used.append(weights is not None)
            return weights

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_rank, "_fold_weights", spy)
            sc = RankQualityScorer(**{**kw, "random_state": seed}).fit(X2)
        assert any(used) == fallback
        assert np.isfinite(sc.cv_results_["mean_score"]).all()


@pytest.mark.parametrize("device", [None, torch.device("cpu")])
def test_a_dead_layer_is_refused_and_can_be_left_out(device):
    X, blocks = _sparse_layer_data([])
    kw = dict(blocks=blocks, ranks=[1, 2], cv=3, random_state=0, device=device)
    Xd = X if device is None else torch.from_numpy(X)
    for criterion in ("bcv", "elbow"):
        with pytest.raises(
            ValueError,
            match=r"block\(s\) \['l1'\] of X are all zeros on the 60 samples "
            r"\(a dead layer.*'norm'.*Leave it out: layers=\['l2'\]",
        ):
            RankQualityScorer(criterion=criterion, **kw).fit(Xd)
    sc = RankQualityScorer(layers=["l2"], **kw).fit(Xd)
    assert list(sc.rank_) == ["l2"]
    with pytest.raises(ValueError, match=r"\['input'\] of X are all zeros"):
        X0 = X.copy()
        X0[:, :10] = 0
        RankQualityScorer(layers=["l2"], **kw).fit(X0)
    # values whose squares underflow are no dead layer: said as they are
    tiny = X.copy()
    tiny[:, 30:] = 1e-300 * np.random.RandomState(1).rand(60, 15)
    tiny = tiny if device is None else torch.from_numpy(tiny)
    with pytest.raises(
        ValueError,
        match=r"the squared norm of block 'l2' of X underflows to 0 in float64 "
        r"\(its largest value is ",
    ):
        RankQualityScorer(layers=["l2"], **kw).fit(tiny)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("selection", ["one_se", "max"])
def test_bcv_on_two_distinct_rows_selects_rank_two(selection):
    # 60 rows, two distinct ones: every rank past 2 fits the held-out cells to
    # rounding, and rounding must not pick among them
    rng = np.random.RandomState(0)
    X = rng.rand(2, 45)[np.arange(60) % 2]
    sc = RankQualityScorer(
        blocks=blocks_of((10, 20, 15)),
        ranks=range(1, 9),
        cv=3,
        selection=selection,
        random_state=0,
    ).fit(X)
    assert sc.rank_ == {"conv1": 2, "fc1": 2}


@pytest.mark.parametrize("criterion", ["bcv", "elbow"])
def test_a_dead_layer_under_block_weights_none_scores_the_input_alone(criterion):
    # docs/user_guide/rank.rst: block_weights="none" lets a dead layer in, and
    # its rank then reflects the input block only. Coupled with an all-zero
    # layer, the sweep scores as the input block fitted on its own does (up
    # to the data's rank, 3: above it the fits only place noise).
    rng = np.random.RandomState(0)
    X_in = rng.rand(60, 3) @ rng.rand(3, 10) + 0.05 * rng.rand(60, 10)
    kw = dict(
        ranks=[1, 2, 3],
        cv=3,
        criterion=criterion,
        block_weights="none",
        random_state=0,
    )
    dead = RankQualityScorer(blocks=[("input", 10), ("dead", 20)], **kw)
    dead.fit(np.hstack([X_in, np.zeros((60, 20))]))
    # the pixels again, as a layer of the same name (a layer's fits are
    # seeded by its name)
    alone = RankQualityScorer(
        blocks=[("input", 10), ("dead", 10)], coupling="none", layers=["dead"], **kw
    ).fit(np.hstack([X_in, X_in]))
    assert dead.rank_ == {"dead": alone.rank_["dead"]}
    np.testing.assert_allclose(
        dead.cv_results_["mean_score"], alone.cv_results_["mean_score"], rtol=1e-4
    )


@pytest.mark.parametrize("warm_start", [True, False])
def test_device_sweep_that_would_not_fit_raises_before_moving_data(
    warm_start, monkeypatch
):
    # The stacked sweeps keep X on the device: a CUDA device without room
    # for it is refused up front, with the size and the ways out.
    from _helpers import spy_solvers

    from sklearn_peek import _rank

    seen = []

    def free(dev):
        seen.append(dev)
        return 12_000  # bytes

    monkeypatch.setattr(_rank, "device_free_memory", free)
    calls = spy_solvers(monkeypatch)
    X = np.random.RandomState(0).rand(40, 30)
    sc = RankQualityScorer(
        blocks=[("input", 10), ("layer", 20)],
        ranks=[1, 2],
        cv=2,
        warm_start=warm_start,
        device=torch.device("cpu"),
    )
    # The layer's matrix holds the input too (30 columns): 4 bytes x 40 x
    # (30 + 30) = 9,600 bytes without warm starts, 4 x 40 x (30 + 2 x 30) =
    # 14,400 with them; 90% of 12,000 is 10,800.
    if warm_start:
        with pytest.raises(
            MemoryError, match=r"needs about 14.1 KiB .*twice.*11.7 KiB free.*None"
        ):
            sc.fit(X)
        assert calls == []  # refused before any fit
    else:
        sc.fit(X)
        assert calls
    assert seen == [torch.device("cpu")]
