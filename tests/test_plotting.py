"""Tests of sklearn_peek.plotting: what is drawn, not only that it runs."""

import itertools
import warnings
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
from _helpers import record_calls
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from sklearn.decomposition import NMF

from sklearn_peek import plotting


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.data[:400] / 16.0).astype(np.float32), d.target[:400]


@pytest.fixture(scope="module")
def coupled(digits):
    """A CoupledNMF fitted on [digits | a ReLU conv-like layer | a ReLU fc layer]."""
    from sklearn_peek import CoupledNMF

    X, y = digits
    rng = np.random.default_rng(0)
    imgs = X.reshape(-1, 8, 8)
    # A "conv" layer with 3 channels on a 4x4 grid: 2x2 sums with random
    # signed weights, then ReLU; and a flat layer of 20 ReLU units.
    patches = imgs.reshape(-1, 4, 2, 4, 2).sum(axis=(2, 4))  # (n, 4, 4)
    conv = np.maximum(
        0, patches[:, None] * rng.normal(1.0, 0.5, (1, 3, 1, 1)) - 0.5
    ).reshape(len(X), -1)
    fc = np.maximum(0, X @ rng.normal(0, 1, (64, 20)))
    A = np.hstack([X, conv, fc]).astype(np.float32)
    blocks = [("input", 64), ("conv", 48), ("fc", 20)]
    model = CoupledNMF(n_components=6, blocks=blocks, random_state=0, max_iter=100)
    W = model.fit_transform(A)
    return model, W, y, {"conv": (3, 4, 4), "fc": (20,)}


# ---------------------------------------------------------------- input factors
def test_input_factors_from_sklearn_nmf_draws_one_tile_per_factor(digits, tmp_path):
    X, _ = digits
    nmf = NMF(
        n_components=7, init="nndsvda", max_iter=500, tol=1e-3, random_state=0
    ).fit(X)
    fig = plotting.plot_input_factors(nmf)
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(tiles) == 7
    assert len(fig.axes) == 7  # the unused grid cells are removed
    assert [ax.get_title() for ax in tiles] == [f"factor {k}" for k in range(7)]
    for k, ax in enumerate(tiles):
        img = ax.images[0].get_array()
        assert img.shape == (8, 8)
        expected = nmf.components_[k].reshape(8, 8)
        np.testing.assert_allclose(img, expected / expected.max(), rtol=1e-6)
    fig.savefig(tmp_path / "input_factors.png")
    assert (tmp_path / "input_factors.png").stat().st_size > 1000


def test_input_factors_of_coupled_model_use_the_input_block(coupled):
    model, *_ = coupled
    fig = plotting.plot_input_factors(model, image_shape=(8, 8), ncols=3)
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(tiles) == model.n_components_ == 6
    # 3 columns -> 2 rows of 3 tiles.
    assert len({round(ax.get_position().y0, 3) for ax in tiles}) == 2
    H0 = model.block_components("input")
    k = 4
    np.testing.assert_allclose(
        tiles[k].images[0].get_array(),
        H0[k].reshape(8, 8) / H0[k].max(),
        rtol=1e-5,
    )
    fig = plotting.plot_input_factors(model, components=[5, 1])
    assert [ax.get_title() for ax in fig.axes] == ["factor 5", "factor 1"]


def test_input_factors_multichannel_rgb_and_mean():
    rng = np.random.default_rng(1)
    H = rng.random((4, 3 * 6 * 5))
    fig = plotting.plot_input_factors(H, image_shape=(3, 6, 5))
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (6, 5, 3)
    top = H[0].reshape(3, 6, 5).max()
    np.testing.assert_allclose(img, np.moveaxis(H[0].reshape(3, 6, 5), 0, -1) / top)
    # three square channels are recognised without image_shape
    H = rng.random((2, 3 * 4 * 4))
    assert plotting.plot_input_factors(H).axes[0].images[0].get_array().shape == (
        4,
        4,
        3,
    )
    # 2 channels: the mean over channels is drawn
    H = rng.random((2, 2 * 5 * 5))
    img = plotting.plot_input_factors(H, image_shape=(2, 5, 5)).axes[1].images[0]
    mean = H[1].reshape(2, 5, 5).mean(axis=0)
    np.testing.assert_allclose(img.get_array(), mean / mean.max())


@pytest.mark.parametrize("image_shape", [(2, 1, 8, 8), (1, 8, 8), (8, 8)])
def test_input_factors_split_block_draws_positive_minus_negative(image_shape):
    # An input block made with nonneg="split": [relu(x), relu(-x)], 128 columns
    # (extractor.layer_shapes_["input"] is (2, 1, 8, 8), input_shape_ (1, 8, 8)).
    rng = np.random.default_rng(0)
    H = rng.random((3, 128))
    fig = plotting.plot_input_factors(H, image_shape=image_shape)
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(tiles) == 3
    assert "positive minus negative" in fig._suptitle.get_text()
    for k, ax in enumerate(tiles):
        im = ax.images[0]
        diff = (H[k, :64] - H[k, 64:]).reshape(8, 8)
        assert diff.min() < 0 < diff.max()
        np.testing.assert_allclose(im.get_array(), diff / np.abs(diff).max())
        # a diverging colormap, with 0 in the middle
        assert im.get_cmap().name == "RdBu_r"
        assert im.get_clim() == (-1.0, 1.0)


def test_input_factors_split_block_from_feature_names_and_layer_channels():
    import pandas as pd

    from sklearn_peek import CoupledNMF

    rng = np.random.default_rng(0)
    names = [f"input__p{i}_pos" for i in range(16)]
    names += [f"input__p{i}_neg" for i in range(16)]
    conv = [
        f"conv__c{c}_y{y}_x{x}" for c in range(2) for y in range(2) for x in range(2)
    ]
    conv = [f"{n}_pos" for n in conv] + [f"{n}_neg" for n in conv]
    A = pd.DataFrame(rng.random((40, 48)), columns=names + conv)
    model = CoupledNMF(3, blocks="auto", random_state=0, max_iter=50).fit(A)
    fig = plotting.plot_input_factors(model)  # the shape is inferred from 16
    H0 = model.block_components("input")
    diff = (H0[1, :16] - H0[1, 16:]).reshape(4, 4)
    np.testing.assert_allclose(
        fig.axes[1].images[0].get_array(), diff / np.abs(diff).max(), rtol=1e-6
    )
    # Without split names, 32 features are not an image: no guess.
    with pytest.raises(ValueError, match="cannot guess the image shape"):
        plotting.plot_input_factors(H0)
    # The split conv layer is summed over both parts and space, per channel,
    # from its (2, C, H, W) shape or from its feature names.
    Hc = model.block_components("conv")
    expected = Hc.reshape(3, 2, 2, 4).sum(axis=(1, 3)).T
    expected = expected / expected.max(axis=0, keepdims=True)
    for shapes in ({"conv": (2, 2, 2, 2)}, None):
        fig = plotting.plot_layer_factors(model, layer_shapes=shapes)
        ax = fig.axes[0]
        assert ax.get_ylabel() == "conv channel"
        np.testing.assert_allclose(ax.images[0].get_array(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_shape": (7, 7)}, r"image_shape=\(7, 7\) holds 49 values.*64"),
        ({"image_shape": (3, 1, 8, 4)}, r"\(3, 1, 8, 4\) is not understood.*split"),
        ({"image_shape": (2, 1, 8, 8)}, r"holds 128 values.*64 features"),
        ({"image_shape": (8, 8), "components": [9]}, r"components=\[9\].*3 factors"),
        ({"image_shape": (8, 8), "ncols": 0}, "ncols=0"),
        ({"image_shape": "8x8"}, r"image_shape='8x8' is not understood; expected a "),
        ({"image_shape": 64}, r"image_shape=64 is not understood"),
        ({"image_shape": (8.0, 8)}, r"image_shape=\(8\.0, 8\) is not understood"),
    ],
)
def test_input_factors_bad_arguments(kwargs, match):
    H = np.ones((3, 64))
    with pytest.raises(ValueError, match=match):
        plotting.plot_input_factors(H, **kwargs)


@pytest.mark.parametrize(
    "components, match",
    [("12", r"components='12': expected a sequence of factor indices \(ints\)"),
     ([1.9], r"components=\[1\.9\]: expected"),
     (np.array([True, False, True]), r"for a boolean mask pass np\.flatnonzero"),
     (2, r"components=2: expected a sequence")],
)  # fmt: skip
def test_input_factors_components_must_be_indices(components, match):
    with pytest.raises(TypeError, match=match):
        plotting.plot_input_factors(np.ones((3, 64)), image_shape=(8, 8),
                                    components=components)  # fmt: skip
    for given in (np.array([2, 0]), torch_tensor([2, 0])):
        fig = plotting.plot_input_factors(np.ones((3, 64)), image_shape=(8, 8),
                                          components=given)  # fmt: skip
        assert [ax.get_title() for ax in fig.axes] == ["factor 2", "factor 0"]


def torch_tensor(values):
    import torch

    return torch.tensor(values)


def test_wrong_figure_and_axes_objects_are_named():
    W = np.random.default_rng(0).random((30, 3))
    with pytest.raises(TypeError, match=r"ax=Figure: expected a matplotlib Axes"):
        plotting.plot_sample_loadings(W, ax=plt.figure())
    with pytest.raises(TypeError, match=r"fig=Axes: expected a matplotlib Figure"):
        plotting.plot_input_factors(np.ones((3, 64)), fig=plt.figure().add_subplot())
    for bad in (0, "100", 2.5):
        with pytest.raises(ValueError, match=r"max_samples=.*expected None or an"):
            plotting.plot_sample_loadings(W, max_samples=bad)


def test_input_factors_need_a_shape_or_a_fitted_model(coupled):
    with pytest.raises(ValueError, match=r"cannot guess the image shape.*50 features"):
        plotting.plot_input_factors(np.ones((2, 50)))
    with pytest.raises(ValueError, match=r"block='hidden'.*'input', 'conv', 'fc'"):
        plotting.plot_input_factors(coupled[0], block="hidden")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="fit it first"):
        plotting.plot_input_factors(NMF(n_components=2))


# ---------------------------------------------------------------- layer factors
def test_layer_factors_one_heatmap_per_layer_channels_summed(coupled, tmp_path):
    model, _, _, shapes = coupled
    fig = plotting.plot_layer_factors(model, layer_shapes=shapes)
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 2  # conv and fc
    # the panels share their 0-1 scale: one colorbar, not one per panel
    assert len(fig.axes) == 3 and fig.axes[2].get_ylabel() == "weight / factor max"
    assert [ax.images[0].get_cmap().name for ax in heat] == ["magma_r"] * 2
    own = plotting.plot_layer_factors(model, layer_shapes=shapes, normalize=None)
    assert len(own.axes) == 4  # each on its own scale, with its own colorbar
    conv_ax, fc_ax = heat
    assert conv_ax.get_title() == "conv (3 channels)"
    assert fc_ax.get_title() == "fc (20 units)"
    assert conv_ax.get_xlabel() == "latent factor"
    assert conv_ax.get_ylabel() == "conv channel"
    M = conv_ax.images[0].get_array()
    assert M.shape == (3, 6)
    Hc = model.block_components("conv").reshape(6, 3, 16).sum(axis=2).T
    np.testing.assert_allclose(M, Hc / Hc.max(axis=0), rtol=1e-5)
    Hf = model.block_components("fc").T
    np.testing.assert_allclose(
        fc_ax.images[0].get_array(), Hf / Hf.max(axis=0), rtol=1e-5
    )
    fig.savefig(tmp_path / "layer_factors.png")
    # a fitted extractor (anything with layer_shapes_) works as layer_shapes

    fig = plotting.plot_layer_factors(
        model, layers=["conv"], layer_shapes=SimpleNamespace(layer_shapes_=shapes)
    )
    assert fig.axes[0].images[0].get_array().shape == (3, 6)


def test_layer_factors_raw_units_and_channel_names_from_feature_names():
    rng = np.random.default_rng(0)

    names = ["input__p0", "input__p1", "input__p2", "input__p3"] + [
        f"conv1__c{c}_y{y}_x{x}" for c in range(2) for y in range(2) for x in range(2)
    ]
    model = SimpleNamespace(
        components_=rng.random((3, 12)),
        block_names_=["input", "conv1"],
        block_slices_={"input": slice(0, 4), "conv1": slice(4, 12)},
        feature_names_in_=np.array(names, dtype=object),
    )
    fig = plotting.plot_layer_factors(model, normalize=None)
    M = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(M, model.components_[:, 4:].reshape(3, 2, 4).sum(2).T)
    fig = plotting.plot_layer_factors(model, normalize="unit")
    M = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(M.max(axis=1), 1.0)
    assert fig.axes[1].get_ylabel() == "weight / unit max"  # the colorbar
    fig = plotting.plot_layer_factors(model, reduce=None, layers="conv1")
    assert fig.axes[0].images[0].get_array().shape == (8, 3)
    assert fig.axes[0].get_ylabel() == "conv1 unit"
    with pytest.raises(ValueError, match=r"'conv9'.*'conv1'.*Did you mean 'conv1'"):
        plotting.plot_layer_factors(model, layers=["conv9"])
    with pytest.raises(ValueError, match="reduce='space'"):
        plotting.plot_layer_factors(model, reduce="space")


def test_layer_factors_merge_rows_of_a_wide_layer_by_their_maximum():
    # 1,000 units in at most 300 rows: drawing every unit in fewer pixels
    # would skip rows, so a single strong unit would vanish.
    rng = np.random.default_rng(0)
    H = rng.random((3, 4 + 1000)) * 0.01
    H[0, 4 + 777] = 1.0  # one unit carries factor 0
    model = SimpleNamespace(
        components_=H,
        block_names_=["input", "fc1"],
        block_slices_={"input": slice(0, 4), "fc1": slice(4, 1004)},
    )
    fig = plotting.plot_layer_factors(model)
    ax = fig.axes[0]
    M = ax.images[0].get_array()
    assert M.shape == (300, 3)  # bins of 3 or 4 units
    starts = np.linspace(0, 1000, 301).round().astype(int)[:-1]
    i = np.searchsorted(starts, 777, side="right") - 1
    assert M[i, 0] == 1.0 and np.count_nonzero(M[:, 0] > 0.5) == 1
    top = np.maximum.reduceat(H[1, 4:] / H[1, 4:].max(), starts)
    np.testing.assert_allclose(M[:, 1], top)
    # the y axis still counts units, and says what a row is
    assert ax.images[0].get_extent()[2:] == [999.5, -0.5]
    assert ax.get_ylabel() == "fc1 unit (max of 3\u20134 per row)"
    assert ax.get_title() == "fc1 (1000 units)"
    # just above max_rows the rows stay max_rows, not half as many
    M = plotting.plot_layer_factors(model, max_rows=999).axes[0].images[0].get_array()
    assert M.shape == (999, 3) and M[:, 0].max() == 1.0
    assert (
        "max of 1\u20132 per row"
        in plotting.plot_layer_factors(model, max_rows=999).axes[0].get_ylabel()
    )
    # "unit" normalization is per unit, before merging: every row peaks at 1
    fig = plotting.plot_layer_factors(model, normalize="unit")
    M = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(M.max(axis=1), 1.0)
    full = plotting.plot_layer_factors(model, max_rows=None).axes[0]
    assert full.images[0].get_array().shape == (1000, 3)
    assert full.get_ylabel() == "fc1 unit"
    for bad in (0, 2.5, "300", True):
        with pytest.raises(ValueError, match=f"max_rows={bad!r}: expected None or"):
            plotting.plot_layer_factors(model, max_rows=bad)


# --------------------------------------------------------------- sample loadings
def test_sample_loadings_grouped_by_class(coupled, tmp_path):
    _, W, y, _ = coupled
    fig = plotting.plot_sample_loadings(W, y=y)
    ax = fig.axes[0]
    M = ax.images[0].get_array()
    assert M.shape == W.shape
    order = np.argsort(y, kind="stable")
    Wn = W[order] / W[order].max(axis=1, keepdims=True)
    np.testing.assert_allclose(M, Wn, rtol=1e-5)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [str(c) for c in np.unique(y)]
    # one boundary line between consecutive classes
    assert len(ax.lines) == len(np.unique(y)) - 1
    boundaries = sorted(line.get_ydata()[0] + 0.5 for line in ax.lines)
    assert boundaries == np.cumsum(np.bincount(y))[:-1].tolist()
    assert ax.get_ylabel() == "samples grouped by class"
    fig.savefig(tmp_path / "loadings.png")


def test_sample_loadings_unlabelled_sorted_by_dominant_factor():
    rng = np.random.default_rng(3)
    W = rng.random((50, 4)) ** 3
    fig = plotting.plot_sample_loadings(W, normalize=None)
    M = fig.axes[0].images[0].get_array()
    dom = M.argmax(axis=1)
    assert np.all(np.diff(dom) >= 0)
    assert sorted(map(tuple, np.asarray(M))) == sorted(map(tuple, W))
    assert fig.axes[0].get_ylabel() == "samples grouped by dominant factor"


def test_sample_loadings_of_one_factor_are_drawn_as_they_are():
    # over its row maximum, a single factor was 1 everywhere: a black block
    W = np.random.default_rng(0).random((50, 1))
    fig = plotting.plot_sample_loadings(W)
    M = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_allclose(np.sort(M[:, 0]), np.sort(W[:, 0]))
    assert fig.axes[1].get_ylabel() == "loading"  # the colorbar
    assert fig.axes[1].get_ylim()[1] == pytest.approx(W.max())


def test_input_factor_without_input_weight_says_so():
    # its blank tile looked like a drawing failure
    H = np.random.default_rng(0).random((3, 16))
    H[1] = 0.0
    fig = plotting.plot_input_factors(H, image_shape=(4, 4))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["factor 0", "factor 1\n(no input weight)", "factor 2"]


def test_sample_loadings_thins_and_validates():
    W = np.random.default_rng(0).random((300, 3))
    fig = plotting.plot_sample_loadings(W, max_samples=100)
    assert fig.axes[0].images[0].get_array().shape == (100, 3)
    assert "100 of the 300 rows shown" in fig.axes[0].get_title().replace("\n", " ")
    assert fig.axes[0].get_ylabel() == "samples grouped by dominant factor"
    # a title of the caller's own: the y label says it (it was said nowhere)
    ax = plotting.plot_sample_loadings(W, max_samples=100, title="mine").axes[0]
    assert ax.get_title() == "mine"
    assert ax.get_ylabel() == (
        "samples grouped by dominant factor\n(100 of the 300 rows shown)"
    )
    with pytest.raises(ValueError, match=r"y: expected shape \(300,\)"):
        plotting.plot_sample_loadings(W, y=np.zeros(10))
    bad = np.ones((3, 2))
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"W contains infinity.*W\[2, 1\] = inf"):
        plotting.plot_sample_loadings(bad)
    y = np.array([1, None, 2] * 100, dtype=object)
    with pytest.raises(ValueError, match=r"y: the labels cannot be sorted into groups"):
        plotting.plot_sample_loadings(W, y=y)


# -------------------------------------------------------------------- rank sweep
def _curves():
    ranks = np.arange(1, 11)
    return {
        "pool1": {
            "ranks": ranks,
            "mean": 1 - np.exp(-ranks / 3.0),
            "std": np.full(10, 0.05),
            "selected": 6,
        },
        "fc1": {
            "ranks": ranks,
            "mean": -((ranks - 3.0) ** 2),
            "std": np.full(10, 0.5),
            "selected": 3,
            "criterion": "bcv score",
        },
    }


def test_rank_sweep_in_a_small_figure_keeps_its_panels_usable():
    # a legend in every panel and a y label on every panel squeezed them to
    # 0.13 in wide at 8 x 3 in ("constrained_layout not applied")
    ranks = np.arange(1, 31)
    curves = {
        f"/features/features.{i}/Relu_output_0": {
            "ranks": ranks,
            "mean": -np.exp(-ranks / (3.0 + i)) - 0.01 * ranks,
            "std": np.full(30, 0.01),
            "selected": 5 + 2 * i,
            "criterion": "bcv",
        }
        for i in range(4)
    }
    fig = plt.figure(figsize=(8, 3), layout="constrained")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plotting.plot_rank_sweep(curves, fig=fig, ncols=4)
        fig.canvas.draw()
    widths = [ax.get_position().width * 8 for ax in fig.axes]
    assert min(widths) > 1.0, widths
    # the legend sits below every panel and its labels
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert all(box.y1 <= ax.get_tightbbox(renderer).y0 + 1 for ax in fig.axes)
    # a figure without constrained layout makes no room below: the legend
    # goes in the last panel
    for layout in (None, "tight"):
        fig = plt.figure(figsize=(8, 3), layout=layout)
        plotting.plot_rank_sweep(curves, fig=fig, ncols=4)
        assert not fig.legends and fig.axes[-1].get_legend() is not None
        assert all(ax.get_legend() is None for ax in fig.axes[:-1])


def test_rank_sweep_marks_the_selected_rank(tmp_path):
    curves = _curves()
    fig = plotting.plot_rank_sweep(curves)
    assert len(fig.axes) == 2
    for ax, layer, sel in zip(fig.axes, ["pool1", "fc1"], [6, 3]):
        c = curves[layer]
        assert ax.get_title() == f"{layer}: selected rank {sel}"
        np.testing.assert_allclose(ax.lines[0].get_xdata(), c["ranks"])
        np.testing.assert_allclose(ax.lines[0].get_ydata(), c["mean"])
        vlines = [ln for ln in ax.lines if len(set(np.atleast_1d(ln.get_xdata()))) == 1]
        xs = {float(np.atleast_1d(ln.get_xdata())[0]) for ln in vlines}
        assert xs == {float(sel)}
        star = [ln for ln in ax.lines if ln.get_marker() == "*"]
        assert len(star) == 1
        assert star[0].get_xdata()[0] == sel
        assert star[0].get_ydata()[0] == pytest.approx(c["mean"][sel - 1])
        assert len(ax.collections) == 1  # the fold spread band
        band_y = ax.collections[0].get_paths()[0].vertices[:, 1]
        assert band_y.min() == pytest.approx((c["mean"] - c["std"]).min())
        assert band_y.max() == pytest.approx((c["mean"] + c["std"]).max())
        assert ax.get_xlabel() == "rank"
        assert ax.get_legend() is None  # one legend for all panels, below them
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.texts] == [
        "mean",
        "± 1 std",
        "selected rank",
    ]
    # a panel that measures something else has its own y label (pool1's
    # curve names no criterion) ...
    assert [ax.get_ylabel() for ax in fig.axes] == ["criterion", "bcv score"]
    # ... and the same one is on the first panel of a row only (on every
    # panel it took the panel's height)
    same = _curves()
    same["pool1"]["criterion"] = "bcv"
    same["fc1"]["criterion"] = "bcv"
    labels = [ax.get_ylabel() for ax in plotting.plot_rank_sweep(same).axes]
    bcv = "BCV score\n(minus held-out relative error)"
    assert labels == [bcv, ""]
    two_rows = plotting.plot_rank_sweep(same, ncols=1)
    assert [ax.get_ylabel() for ax in two_rows.axes] == [bcv, bcv]
    fig.savefig(tmp_path / "sweep.png")
    fig = plotting.plot_rank_sweep(_curves(), layers=["fc1"], criterion="my score")
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "my score"
    fig = plotting.plot_rank_sweep(_curves(), layers=["fc1"], criterion="energy")
    assert fig.axes[0].get_ylabel() == "explained energy"
    with pytest.raises(ValueError, match=r"contains 'relu9', which has no curve"):
        plotting.plot_rank_sweep(_curves(), layers=["relu9"])
    with pytest.raises(TypeError, match="RankQualityScorer"):
        plotting.plot_rank_sweep([1, 2, 3])
    with pytest.raises(ValueError, match="ncols=0"):
        plotting.plot_rank_sweep(_curves(), ncols=0)
    fig = plotting.plot_rank_sweep(_curves(), ncols=1)  # one panel per row
    assert len({round(ax.get_position().y0, 3) for ax in fig.axes}) == 2


def test_rank_sweep_from_a_fitted_scorer():
    from sklearn_peek import RankQualityScorer

    rng = np.random.default_rng(0)
    W = rng.random((90, 3))
    X = np.hstack([W @ rng.random((3, 16)), W @ rng.random((3, 12))])
    X += 0.01 * rng.random(X.shape)
    scorer = RankQualityScorer(
        blocks=[("input", 16), ("fc", 12)],
        ranks=range(1, 6),
        cv=3,
        tol=1e-3,
        max_iter=500,
        random_state=0,
    ).fit(X)
    fig = plotting.plot_rank_sweep(scorer)
    (ax,) = fig.axes
    sel = scorer.rank_["fc"]
    assert ax.get_title() == f"fc: selected rank {sel}"
    star = next(ln for ln in ax.lines if ln.get_marker() == "*")
    assert star.get_xdata()[0] == sel
    curve = ax.lines[0]
    np.testing.assert_allclose(curve.get_ydata(), scorer.curves_["fc"]["mean"])


# ------------------------------------------------------------- rank vs quality
def _study_table():
    rng = np.random.default_rng(0)
    acc = np.linspace(0.2, 0.95, 12)
    return {
        "degradation": ["fraction"] * 6 + ["epochs"] * 6,
        "level": list(np.linspace(0.1, 1, 6)) * 2,
        "seed": [0, 1] * 6,
        "accuracy": acc,
        "rank_fc1_bcv": np.round(2 + 6 * acc + rng.normal(0, 1, 12)),
    }


def test_rank_vs_quality_title_states_spearman_with_interval(tmp_path):
    t = _study_table()
    fig = plotting.plot_rank_vs_quality(t, layer="fc1", criterion="bcv")
    ax = fig.axes[0]
    rho = spearmanr(t["accuracy"], t["rank_fc1_bcv"]).statistic
    title = ax.get_title()
    assert f"Spearman rho = {rho:+.2f}" in title
    assert "95% CI" in title and "n = 12" in title
    # categorical hue: one scatter per degradation and a legend naming them
    assert len(ax.collections) == 2
    assert [t.get_text() for t in ax.get_legend().texts] == ["fraction", "epochs"]
    offsets = np.vstack([c.get_offsets() for c in ax.collections])
    assert sorted(offsets[:, 0]) == sorted(t["accuracy"])
    assert ax.get_xlabel() == "test accuracy"
    assert ax.get_ylabel() == "selected rank (fc1)"
    fig.savefig(tmp_path / "rank_quality.png")


def test_rank_vs_quality_long_dataframe_with_numeric_hue():
    pd = pytest.importorskip("pandas")
    t = _study_table()
    rows = []
    for i in range(12):
        for layer, crit, r in [
            ("fc1", "bcv", t["rank_fc1_bcv"][i]),
            ("pool1", "bcv", 12 - i),
        ]:
            rows.append(
                {
                    "degradation": "fraction",
                    "level": t["level"][i],
                    "accuracy": t["accuracy"][i],
                    "layer": layer,
                    "criterion": crit,
                    "rank": r,
                }
            )
    df = pd.DataFrame(rows)
    fig = plotting.plot_rank_vs_quality(df, layer="pool1", criterion="bcv")
    assert "Spearman rho = -1.00" in fig.axes[0].get_title()
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], t["accuracy"])
    np.testing.assert_allclose(offsets[:, 1], 12 - np.arange(12))
    assert len(fig.axes) == 2  # scatter + the colorbar of "level"
    # the table holds one degradation: the colorbar says what its level is
    assert fig.axes[1].get_ylabel() == "fraction: share of training images kept"
    fig = plotting.plot_rank_vs_quality(
        df, layer="fc1", criterion="bcv", spearman=(0.5, 0.1, 0.8)
    )
    assert "rho = +0.50 [95% CI +0.10, +0.80]" in fig.axes[0].get_title()
    # an interval the bootstrap could not give (spearman_ci's NaN bounds)
    fig = plotting.plot_rank_vs_quality(
        df, layer="fc1", criterion="bcv", spearman=(0.61, np.nan, np.nan)
    )
    assert "rho = +0.61 (no interval)" in fig.axes[0].get_title()


def test_rank_vs_quality_counts_networks_drawn_on_one_point():
    # Three networks at (0.9, 6) and two at (0.5, 3): drawn on top of each
    # other, each pile gets its count; the single points get none.
    t = {
        "accuracy": [0.9, 0.9, 0.9, 0.5, 0.5, 0.7, 0.2],
        "rank_fc1": [6, 6, 6, 3, 3, 4, 2],
    }
    ax = plotting.plot_rank_vs_quality(t, layer="fc1").axes[0]
    counts = {
        tuple(a.xy): a.get_text() for a in ax.texts if a.get_gid() == "overlap-count"
    }
    assert counts == {(0.9, 6.0): "\u00d73", (0.5, 3.0): "\u00d72"}
    # the same accuracy at another rank is another point
    t["rank_fc1"][2] = 7
    ax = plotting.plot_rank_vs_quality(t, layer="fc1").axes[0]
    counts = {
        tuple(a.xy): a.get_text() for a in ax.texts if a.get_gid() == "overlap-count"
    }
    assert counts == {(0.9, 6.0): "\u00d72", (0.5, 3.0): "\u00d72"}


def test_rank_vs_quality_counts_of_neighbouring_piles_do_not_overlap():
    # two piles of three a hair apart printed "×3×3" (case-study networks)
    t = {
        "accuracy": [0.93] * 3 + [0.935] * 3 + [0.2, 0.5, 0.7],
        "rank_fc1": [20] * 6 + [6, 10, 15],
    }
    fig = plotting.plot_rank_vs_quality(t, layer="fc1")
    fig.canvas.draw()
    ax = fig.axes[0]
    counts = [a for a in ax.texts if a.get_gid() == "overlap-count"]
    boxes = [a.get_window_extent() for a in counts]
    assert len(boxes) == 2
    assert not boxes[0].overlaps(boxes[1])
    # near the right edge the labels go left of their points, inside the axes
    assert {a.get_horizontalalignment() for a in counts} == {"right"}
    frame = ax.get_window_extent()
    assert all(b.x1 <= frame.x1 for b in boxes)


def test_rank_vs_quality_rank_col_keeps_the_rows_of_the_layer():
    # rank_col in a long table drew every row: both layers under one label,
    # and rho of the mixture
    long = {
        "layer": ["fc1", "conv1"] * 4,
        "criterion": ["bcv"] * 8,
        "sel": [2, 20, 3, 21, 5, 22, 6, 23],
        "accuracy": [0.2, 0.2, 0.5, 0.5, 0.7, 0.7, 0.9, 0.9],
    }
    ax = plotting.plot_rank_vs_quality(long, layer="fc1", rank_col="sel").axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets()[:, 1], [2, 3, 5, 6])
    assert "n = 4" in ax.get_title()
    with pytest.raises(ValueError, match=r"layer='fc2', criterion=None: no rows"):
        plotting.plot_rank_vs_quality(long, layer="fc2", rank_col="sel")
    with pytest.raises(ValueError, match=r"criterion='elbow': no rows"):
        plotting.plot_rank_vs_quality(
            long, layer="fc1", criterion="elbow", rank_col="sel"
        )
    # a wide table: the named column is the layer's
    wide = {"accuracy": long["accuracy"], "mine": long["sel"]}
    ax = plotting.plot_rank_vs_quality(wide, layer="fc1", rank_col="mine").axes[0]
    assert len(ax.collections[0].get_offsets()) == 8


def test_rank_vs_quality_errors():
    t = _study_table()
    with pytest.raises(ValueError, match="cannot find the selected-rank column"):
        plotting.plot_rank_vs_quality(t, layer="pool2", criterion="bcv")
    with pytest.raises(ValueError, match="quality='loss'"):
        plotting.plot_rank_vs_quality(t, layer="fc1", quality="loss")
    with pytest.raises(TypeError, match="DataFrame or a dict"):
        plotting.plot_rank_vs_quality([1, 2], layer="fc1")
    with pytest.raises(ValueError, match=r"spearman=0\.5: expected \(rho, low, high\)"):
        plotting.plot_rank_vs_quality(t, layer="fc1", criterion="bcv", spearman=0.5)


def test_rank_vs_quality_names_what_it_leaves_out_or_cannot_read():
    t = {"accuracy": [0.2, np.nan, 0.5, 0.9], "fc1_bcv": [2, 3, 3, 5]}
    with pytest.warns(UserWarning, match=r"1 of 4 rows have a NaN or infinite "
                      r"'accuracy' or 'fc1_bcv' and are not drawn"):  # fmt: skip
        fig = plotting.plot_rank_vs_quality(t, layer="fc1")
    assert len(fig.axes[0].collections[0].get_offsets()) == 3
    words = {**t, "accuracy": ["low", "mid", "high", "top"]}
    with pytest.raises(
        ValueError,
        match=r"column 'accuracy' of table holds \['low', 'mid', 'high'\]\.\.\.; "
        r"expected numbers",
    ):
        plotting.plot_rank_vs_quality(words, layer="fc1")
    finite = {"accuracy": [0.2, 0.5, 0.9], "fc1_bcv": [2, 3, 5]}
    with pytest.raises(ValueError, match=r"random_state='x' must be None"):
        plotting.plot_rank_vs_quality(finite, layer="fc1", random_state="x")


def test_rank_vs_quality_on_several_criteria_asks_for_one_by_name():
    # run_case_study's columns: <layer>_<criterion>, several per layer
    t = {"accuracy": [0.2, 0.5, 0.9], "fc1_bcv": [2, 3, 5], "fc1_elbow": [2, 2, 4],
         "fc1_bcv_alone": [1, 3, 3], "pool2_bcv": [4, 4, 6]}  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"layer='fc1', criterion=None: table has 3 rank columns for this "
        r"layer \(\['fc1_bcv', 'fc1_elbow', 'fc1_bcv_alone'\]\); pass criterion= "
        r"one of \['bcv', 'elbow', 'bcv_alone'\], or rank_col=",
    ):
        plotting.plot_rank_vs_quality(t, layer="fc1")
    fig = plotting.plot_rank_vs_quality(t, layer="fc1", criterion="elbow")
    np.testing.assert_array_equal(fig.axes[0].collections[0].get_offsets()[:, 1],
                                  t["fc1_elbow"])  # fmt: skip
    # one column for the layer: no criterion needed
    fig = plotting.plot_rank_vs_quality(t, layer="pool2")
    np.testing.assert_array_equal(fig.axes[0].collections[0].get_offsets()[:, 1],
                                  t["pool2_bcv"])  # fmt: skip


def test_rank_sweep_curves_dict_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"scorer_or_curves\['l'\] lacks \['mean'\]"):
        plotting.plot_rank_sweep({"l": {"ranks": [1, 2]}})
    with pytest.raises(ValueError, match=r"\['l'\] is a list; expected a dict"):
        plotting.plot_rank_sweep({"l": [1, 2]})
    with pytest.raises(ValueError, match=r"has 2 ranks but 3 mean values"):
        plotting.plot_rank_sweep({"l": {"ranks": [1, 2], "mean": [1, 2, 3]}})
    # these failed inside NumPy (IndexError, "could not convert string")
    with pytest.raises(ValueError, match=r"has 2 ranks but 1 std values"):
        plotting.plot_rank_sweep({"l": {"ranks": [1, 2], "mean": [1, 2], "std": [1]}})
    with pytest.raises(ValueError, match=r"\['l'\]\['ranks'\]=\['x', 'y'\] is not "
                       r"understood; expected a 1-D sequence of numbers"):  # fmt: skip
        plotting.plot_rank_sweep({"l": {"ranks": ["x", "y"], "mean": [1, 2]}})
    with pytest.raises(ValueError, match=r"\['l'\]\['ranks'\] has shape \(\)"):
        plotting.plot_rank_sweep({"l": {"ranks": 1, "mean": 2}})
    with pytest.raises(
        ValueError,
        match=r"\['selected'\]='x' is not one of its ranks; expected None "
        r"\(or NaN\) or one of \[1, 2\]",
    ):
        plotting.plot_rank_sweep(
            {"l": {"ranks": [1, 2], "mean": [1, 2], "selected": "x"}}
        )
    # a table's floats: 2.0 is rank 2, NaN is no selection
    for sel in (2, 2.0, np.int64(2), np.nan, None):
        fig = plotting.plot_rank_sweep(
            {"l": {"ranks": (1, 2), "mean": [0.5, 0.7], "std": None, "selected": sel}}
        )
        marked = [ln for ln in fig.axes[0].lines if ln.get_marker() == "*"]
        assert len(marked) == (0 if sel is None or sel != sel else 1), sel
    fig = plotting.plot_rank_vs_quality(
        {"accuracy": [0.5, 0.6], "rank_fc1": [2, 3]}, layer="fc1"
    )
    assert "undefined (fewer than 3 networks)" in fig.axes[0].get_title()
    fig = plotting.plot_rank_vs_quality(
        {"accuracy": [0.1, 0.5, 0.9], "rank_fc1": [4, 4, 4]}, layer="fc1"
    )
    ax = fig.axes[0]
    assert "undefined (the same rank for every network)" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["3", "4", "5"]


def test_a_title_or_layers_of_the_wrong_type_is_named_before_a_figure_opens(coupled):
    model, W, _, shapes = coupled
    calls = {
        "plot_input_factors": lambda **kw: plotting.plot_input_factors(model, **kw),
        "plot_layer_factors": lambda **kw: plotting.plot_layer_factors(
            model, layer_shapes=shapes, **kw
        ),
        "plot_sample_loadings": lambda **kw: plotting.plot_sample_loadings(W, **kw),
        "plot_rank_sweep": lambda **kw: plotting.plot_rank_sweep(_curves(), **kw),
        "plot_rank_vs_quality": lambda **kw: plotting.plot_rank_vs_quality(
            _study_table(), layer="fc1", criterion="bcv", **kw
        ),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=r"^title=3 is not understood; expected"):
            call(title=3)
        assert plt.get_fignums() == [], name
        call(title="ok")  # a string is drawn
        plt.close("all")
    for name in ("plot_layer_factors", "plot_rank_sweep"):
        with pytest.raises(TypeError, match=r"^layers=5 is not understood; expected a"):
            calls[name](layers=5)
        assert calls[name](layers=("fc",) if "factors" in name else ("fc1",))


def test_components_with_nan_or_inf_are_refused_not_drawn_blank(coupled):
    from sklearn.base import clone

    model, _, _, shapes = coupled
    H = np.ones((3, 64))
    H[1, 5] = np.inf
    with pytest.raises(ValueError, match=r"model \(the components\) has "
                       r"model\[1, 5\] = inf"):  # fmt: skip
        plotting.plot_input_factors(H, image_shape=(8, 8))
    broken = clone(model)
    broken.__dict__.update(model.__dict__)
    broken.components_ = model.components_.copy()
    broken.components_[2, 64 + 7] = np.nan  # in the "conv" block
    plotting.plot_input_factors(broken)  # the input block is fine
    with pytest.raises(ValueError, match=r"components_ of block 'conv'\) has "
                       r"model\[2, 7\] = nan"):  # fmt: skip
        plotting.plot_layer_factors(broken, layer_shapes=shapes)
    assert plt.get_fignums() == [1]  # the input factors only


def test_functions_draw_on_given_axes_and_figures():
    fig, (a1, a2) = plt.subplots(1, 2)
    W = np.diag([1.0, 2.0, 3.0])
    out = plotting.plot_sample_loadings(W, ax=a1)
    assert out is fig
    np.testing.assert_allclose(a1.images[0].get_array(), np.eye(3))  # rows / max
    out = plotting.plot_rank_vs_quality(_study_table(), layer="fc1", ax=a2)
    assert out is fig and len(a2.collections) == 2
    fig2 = plt.figure()
    H = np.arange(1.0, 9.0).reshape(2, 4)
    assert plotting.plot_input_factors(H, fig=fig2) is fig2
    assert [ax.get_title() for ax in fig2.axes] == ["factor 0", "factor 1"]
    np.testing.assert_allclose(
        fig2.axes[1].images[0].get_array(), H[1].reshape(2, 2) / H[1].max()
    )


# ------------------------------------------------- readable text (no overlaps)
def _boxes(texts):
    """Display-space extents of the visible, non-empty texts (after a draw)."""
    return [
        (t.get_text(), t.get_window_extent())
        for t in texts
        if t.get_visible() and t.get_text()
    ]


def _assert_apart(boxes, axis):
    """No two extents overlap along ``axis`` ("x" or "y")."""
    lo, hi = ("x0", "x1") if axis == "x" else ("y0", "y1")
    spans = [(getattr(b, lo), getattr(b, hi), s) for s, b in boxes]
    for (a0, a1, sa), (b0, b1, sb) in itertools.combinations(spans, 2):
        apart = a1 < b0 or b1 < a0
        assert apart, f"labels {sa!r} and {sb!r} overlap: {a0, a1} vs {b0, b1}"


def _sweep(ranks, selected):
    ranks = np.asarray(ranks)
    return {
        "ranks": ranks,
        "mean": -np.abs(np.log(ranks / selected)),
        "std": np.full(len(ranks), 0.05),
        "selected": selected,
    }


CASE_STUDY_RANKS = [1, 2, 4, 6, 8, 10, 15, 20, 25, 30]


@pytest.mark.parametrize(
    "ranks, selected, ncols",
    [
        (CASE_STUDY_RANKS, [2, 15], None),  # examples/plot_case_study.py
        (CASE_STUDY_RANKS, [1, 4, 30], 3),
        (list(range(1, 31)), [12, 18, 9], 3),  # quickstart: every rank to 30
        (list(range(1, 13)), [4], 1),
    ],
)
def test_rank_sweep_tick_labels_never_overlap(ranks, selected, ncols, tmp_path):
    curves = {f"layer{i}": _sweep(ranks, s) for i, s in enumerate(selected)}
    fig = plotting.plot_rank_sweep(curves, ncols=ncols)
    fig.savefig(tmp_path / "sweep.png")  # draws at the saved size too
    fig.canvas.draw()
    for ax, sel in zip(fig.axes, selected):
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        _assert_apart(_boxes(labels), "x")
        values = [int(t.get_text()) for t in labels]
        np.testing.assert_allclose(ax.get_xticks(), values)
        assert min(ranks) <= min(values) and max(values) <= max(ranks)
        # the selected rank is always labelled, in red and bold
        (mark,) = [t for t in labels if t.get_text() == str(sel)]
        assert mark.get_color() == "tab:red" and mark.get_fontweight() == "bold"
        others = [t for t in labels if t is not mark]
        assert all(t.get_color() != "tab:red" for t in others)
        # every probed rank keeps a tick, major (labelled) or minor
        ticks = set(ax.get_xticks()) | set(ax.xaxis.get_minorticklocs())
        assert set(ranks) <= ticks
    if ranks == CASE_STUDY_RANKS and ncols is None:
        # "1" and "2" would touch ("12"): one goes, the selected one stays
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()][:2] == ["2", "4"]


def test_rank_sweep_keeps_every_rank_label_where_there_is_room():
    fig = plotting.plot_rank_sweep({"fc1": _sweep(range(1, 9), 3)})
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        str(r) for r in range(1, 9)
    ]


ONNX_LAYERS = [
    "/pool1/MaxPool_output_0",
    "/pool2/MaxPool_output_0",
    "/relu3/Relu_output_0",
]


def _assert_titles_fit(fig, axes):
    fig.canvas.draw()
    boxes = []
    for ax in axes:
        t, a = ax.title.get_window_extent(), ax.get_window_extent()
        assert a.x0 - 1 <= t.x0 and t.x1 <= a.x1 + 1, ax.get_title()
        assert ax.title.get_fontsize() >= 8
        # the row of the grid (axes placed by hand: the title's height)
        spec = ax.get_subplotspec()
        row = spec.rowspan.start if spec is not None else round(t.y0)
        boxes.append((row, ax.get_title(), t))
    rows = {}
    for row, title, box in boxes:
        rows.setdefault(row, []).append((title, box))
    for row in rows.values():
        _assert_apart(row, "x")  # neighbouring titles in a row do not touch


@pytest.mark.parametrize("figsize", [None, (9.0, 3.5), (7.5, 4.0)])
def test_rank_sweep_long_onnx_layer_names_fit_their_panels(figsize):
    ranks = CASE_STUDY_RANKS
    curves = {name: _sweep(ranks, s) for name, s in zip(ONNX_LAYERS, [10, 20, 8])}
    fig = None
    if figsize is not None:
        fig = plt.figure(figsize=figsize, layout="constrained")
    fig = plotting.plot_rank_sweep(curves, criterion="bcv", fig=fig)
    _assert_titles_fit(fig, fig.axes)
    for ax, name, sel in zip(fig.axes, ONNX_LAYERS, [10, 20, 8]):
        title = ax.get_title()
        assert title.endswith(f"selected rank {sel}")
        head = title.rsplit("selected rank", 1)[0].replace("\n", "").rstrip(": ")
        if "\u2026" in head:  # shortened in the middle: both ends kept
            start, end = head.split("\u2026")
            assert name.startswith(start) and name.endswith(end) and len(start) > 3
        else:  # whole, maybe broken after "/" or "_"
            assert head == name


def test_rank_sweep_title_of_a_hopelessly_long_name_is_shortened():
    name = "/features/features.12/block/Conv2d_very_long_output_name_" * 3
    fig = plt.figure(figsize=(3.0, 3.0), layout="constrained")
    fig = plotting.plot_rank_sweep({name: _sweep(range(1, 6), 2)}, fig=fig)
    _assert_titles_fit(fig, fig.axes)
    title = fig.axes[0].get_title()
    assert "\u2026" in title and title.endswith("\nselected rank 2")
    assert title.startswith("/feat") and title.split("\n")[0].endswith("name_")


def test_layer_factors_long_onnx_layer_names_fit_their_panels():

    rng = np.random.default_rng(0)
    names = ["input", *ONNX_LAYERS]
    sizes = [64, 96, 64, 120]
    edges = np.cumsum([0, *sizes])
    model = SimpleNamespace(
        components_=rng.random((8, edges[-1])),
        block_names_=names,
        block_slices_={n: slice(edges[i], edges[i + 1]) for i, n in enumerate(names)},
    )
    shapes = {ONNX_LAYERS[0]: (6, 4, 4), ONNX_LAYERS[1]: (16, 2, 2)}
    fig = plotting.plot_layer_factors(model, layer_shapes=shapes)
    heat = [ax for ax in fig.axes if ax.images]
    _assert_titles_fit(fig, heat)
    for ax, name, what in zip(
        heat, ONNX_LAYERS, ["(6 channels)", "(16 channels)", "(120 units)"]
    ):
        assert ax.get_title().replace("\n", "") in (f"{name}{what}", f"{name} {what}")


def test_sample_loadings_group_names_never_overlap(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.random((300, 14)) ** 4
    W[:, :8] *= 3  # factors 8..13 dominate only a few samples each
    fig = plotting.plot_sample_loadings(W)
    fig.savefig(tmp_path / "loadings.png")
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t for t in ax.get_yticklabels() if t.get_text()]
    _assert_apart(_boxes(labels), "y")
    texts = [t.get_text() for t in labels]
    assert texts[:8] == [str(k) for k in range(8)]  # the big groups, each named
    assert texts[8:] == ["8\u201313"]  # the thin ones share one name
    # each name sits within the rows of its group(s)
    dom = np.sort(W.argmax(axis=1))
    for text, y in zip(texts, ax.get_yticks()):
        first, _, last = text.partition("\u2013")
        rows = np.flatnonzero((dom >= int(first)) & (dom <= int(last or first)))
        assert rows.min() - 0.5 <= y <= rows.max() + 0.5


def test_sample_loadings_small_classes_are_not_named_on_top_of_each_other():
    rng = np.random.default_rng(1)
    y = np.repeat(["cat", "cow", "dog", "eel", "fox", "gnu"], [150, 2, 1, 2, 150, 1])
    fig = plotting.plot_sample_loadings(rng.random((len(y), 4)), y=y)
    fig.canvas.draw()
    labels = [t for t in fig.axes[0].get_yticklabels() if t.get_text()]
    _assert_apart(_boxes(labels), "y")
    texts = [t.get_text() for t in labels]
    assert texts[0] == "cat" and "fox" in texts
    assert "cow\u2013eel" in texts  # the three thin classes in between
    # one boundary per class change is still drawn
    assert len(fig.axes[0].lines) == 5


def test_sample_loadings_group_names_are_placed_again_when_resized():
    rng = np.random.default_rng(1)
    every = ["cat", "cow", "dog", "eel", "fox", "gnu"]
    y = np.repeat(every, [150, 30, 30, 30, 150, 30])
    fig = plotting.plot_sample_loadings(rng.random((len(y), 4)), y=y)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == every  # room for all
    fig.set_size_inches(6.0, 1.5)  # rows too thin now for each name
    fig.canvas.draw()
    labels = [t for t in ax.get_yticklabels() if t.get_text()]
    _assert_apart(_boxes(labels), "y")
    assert [t.get_text() for t in labels] == ["cat", "cow\u2013eel", "fox"]
    assert all(fig.bbox.x0 <= t.get_window_extent().x0 for t in labels)
    fig.set_size_inches(4.6, 5.5)
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_yticklabels()] == every


# ------------------------------------------------ case study: what "level" is
def test_rank_vs_quality_colorbar_names_the_degradation(tmp_path):
    table = {
        "degradation": ["epochs"] * 8,
        "level": [0, 0, 1, 1, 3, 3, 10, 10],
        "seed": [0, 1] * 4,
        "accuracy": [0.1, 0.12, 0.7, 0.72, 0.9, 0.91, 0.97, 0.98],
        "relu3_bcv": [1, 1, 4, 5, 8, 8, 12, 14],
    }
    fig = plotting.plot_rank_vs_quality(table, layer="relu3", criterion="bcv")
    fig.savefig(tmp_path / "rank_quality.png")
    cbar = fig.axes[1]
    assert cbar.get_ylabel() == "epochs: number of training epochs"
    # few levels: a stepped colorbar, one tick per level, evenly spaced
    # colours (on a linear 0-10 scale epochs 0 and 1 were near the same)
    assert [t.get_text() for t in cbar.get_yticklabels()] == ["0", "1", "3", "10"]
    import matplotlib as mpl

    faces = fig.axes[0].collections[0].get_facecolors()[::2, :3]
    even = mpl.colormaps["viridis"](np.linspace(0, 1, 4))[:, :3]
    np.testing.assert_allclose(faces, even, atol=1e-6)
    # more than 10 levels: a continuous colorbar; whole epochs get whole
    # ticks there (matplotlib's own step by 2.5 over 0-20)
    many = {
        "degradation": ["epochs"] * 21,
        "level": list(range(21)),
        "accuracy": np.linspace(0.1, 0.9, 21),
        "relu3_bcv": list(range(21)),
    }
    cbar = plotting.plot_rank_vs_quality(many, layer="relu3", criterion="bcv").axes[1]
    cbar.figure.canvas.draw()
    lo, hi = cbar.get_ylim()
    ticks = [t for t in cbar.get_yticks() if lo <= t <= hi]
    assert len(ticks) >= 3 and all(t == round(t) for t in ticks), ticks
    # the cut: 10 levels are stepped (a BoundaryNorm), 11 continuous
    import matplotlib as mpl

    for k, stepped in [(10, True), (11, False), (21, False)]:
        few = {key: v[:k] for key, v in many.items()}
        fig = plotting.plot_rank_vs_quality(few, layer="relu3", criterion="bcv")
        norm = fig.axes[0].collections[0].norm
        assert isinstance(norm, mpl.colors.BoundaryNorm) == stepped, k
    table["degradation"] = ["blur"] * 8
    fig = plotting.plot_rank_vs_quality(table, layer="relu3", criterion="bcv")
    assert fig.axes[1].get_ylabel() == "blur level"
    del table["degradation"]
    fig = plotting.plot_rank_vs_quality(table, layer="relu3", criterion="bcv")
    assert fig.axes[1].get_ylabel() == "level"


def test_level_labels_cover_the_case_study_degradations():
    from sklearn_peek import studies

    assert "degradation" in studies.NETWORK_COLUMNS
    assert "level" in studies.NETWORK_COLUMNS
    for deg in studies.DEGRADATIONS:
        if deg is not None:
            assert plotting._LEVEL_LABELS[deg].startswith(f"{deg}: ")


def test_rank_vs_quality_long_layer_name_fits_a_small_panel():
    t = {"accuracy": [0.2, 0.5, 0.9], f"rank_{ONNX_LAYERS[1]}": [2, 3, 7]}
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5), layout="constrained")
    for ax in axes:
        plotting.plot_rank_vs_quality(t, layer=ONNX_LAYERS[1], ax=ax)
    _assert_titles_fit(fig, axes)
    title = axes[0].get_title()
    assert ONNX_LAYERS[1] in title.replace("\n", "") and "Spearman rho" in title


# ------------------------------------------- figure title clear of the tiles
def test_input_factors_figure_title_stands_clear_of_the_tile_titles(coupled):
    model, *_ = coupled
    fig = plotting.plot_input_factors(model, components=[0, 2, 4], ncols=3)
    fig.canvas.draw()
    sup = fig._suptitle.get_window_extent()
    tops = [ax.title.get_window_extent().y1 for ax in fig.axes]
    assert [ax.get_title() for ax in fig.axes] == ["factor 0", "factor 2", "factor 4"]
    # at least 0.1 inch (7 pt) of white between them (matplotlib's default
    # constrained layout leaves 0.07 in here)
    assert (sup.y0 - max(tops)) / fig.dpi >= 0.1
    assert sup.y1 <= fig.bbox.y1  # and the title is still on the figure


# ------------------------------------------ wrong objects: say what is wanted
def test_input_factors_given_W_say_a_model_is_expected(coupled):
    model, W, *_ = coupled
    with pytest.raises(
        ValueError,
        match=r"model=ndarray of shape \(400, 6\): expected a fitted CoupledNMF "
        r"\(or pipeline\).*sample loadings W.*model\.transform\(X\)",
    ):
        plotting.plot_input_factors(W)
    with pytest.raises(TypeError, match=r"model=str: expected a fitted CoupledNMF"):
        plotting.plot_input_factors("model.pkl")
    with pytest.raises(
        TypeError, match=r"model=ndarray of shape \(6, 132\): expected a fitted"
    ):
        plotting.plot_layer_factors(model.components_)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_input_factors_of_a_pipeline_use_its_factorization(digits):
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, _ = digits
    pipe = make_pipeline(
        FunctionTransformer(),
        NMF(n_components=3, init="nndsvda", max_iter=300, random_state=0),
    )
    with pytest.raises(NotFittedError, match="NMF has no components_: fit it first"):
        plotting.plot_input_factors(pipe)
    pipe.fit(X)
    fig = plotting.plot_input_factors(pipe)
    H = pipe[-1].components_
    np.testing.assert_allclose(
        fig.axes[2].images[0].get_array(), H[2].reshape(8, 8) / H[2].max()
    )


def test_sample_loadings_given_a_model_say_how_to_get_W(coupled):
    model, *_ = coupled
    with pytest.raises(
        TypeError,
        match=r"W=CoupledNMF: expected the sample loadings W, an array of shape "
        r"\(n_samples, n_factors\), not a model; get it with W = "
        r"model\.transform\(X\)",
    ):
        plotting.plot_sample_loadings(model)
    with pytest.raises(TypeError, match=r"W=list: expected the sample loadings W"):
        plotting.plot_sample_loadings([["a", "b"], ["c", "d"]])


# ------------------------------------------- text fitted when the figure is drawn
def _count_layouts(monkeypatch):
    """Count the runs of constrained layout (each lays out every axes)."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    return record_calls(monkeypatch, ConstrainedLayoutEngine, "execute")


def _many_sweeps(names):
    return {name: _sweep(range(1, 31), 17) for name in names}


def test_rank_sweep_lays_out_only_when_drawn_and_again_only_for_new_titles(
    monkeypatch,
):
    calls = _count_layouts(monkeypatch)
    fig = plotting.plot_rank_sweep(_many_sweeps([f"layer{i}" for i in range(8)]))
    assert calls == []  # nothing is laid out before the figure is drawn
    fig.canvas.draw()
    # short titles fit as they are: the draw's own layout is the only one
    assert len(calls) == 1
    assert [ax.get_title() for ax in fig.axes] == [
        f"layer{i}: selected rank 17" for i in range(8)
    ]
    calls.clear()
    names = [
        f"/features/features.{i}/Conv_output_0_relu/Relu_output_{i}" for i in range(8)
    ]
    fig = plotting.plot_rank_sweep(_many_sweeps(names))
    fig.canvas.draw()
    assert 2 <= len(calls) <= 4  # the titles changed: laid out again, not more
    _assert_titles_fit(fig, fig.axes)
    titles = [ax.get_title() for ax in fig.axes]
    calls.clear()
    fig.canvas.draw()  # drawn again at the same size: nothing to refit
    assert len(calls) == 1
    assert [ax.get_title() for ax in fig.axes] == titles


def test_rank_sweep_very_long_names_are_shortened_in_the_middle():
    # (that the cut is found by bisection is test_shorten_middle_keeps_the_
    # most_that_fits_by_bisection: counting renderer calls here cannot tell,
    # since estimates decide most candidates without measuring)
    for names in (
        [f"{i}" + "x" * 300 for i in range(8)],
        [f"/model/layer{i}/" + "/".join(["blockname_x"] * 20) for i in range(8)],
    ):
        fig = plotting.plot_rank_sweep(_many_sweeps(names))
        _assert_titles_fit(fig, fig.axes)
        for ax, name in zip(fig.axes, names):
            title = ax.get_title()
            assert title.endswith("\nselected rank 17")
            start, end = title.split("\n")[0].split("\u2026")
            assert name.startswith(start) and name.endswith(end)
            assert len(start) >= 4 and len(end) >= 4


def test_shorten_middle_keeps_the_most_that_fits_by_bisection():
    name = "/features/features.12/block/Conv2d_very_long_output_name_" * 3
    for limit in (2, 5, 17, 40, len(name) - 1):
        calls = []

        def fits(text, limit=limit, calls=calls):
            calls.append(text)
            return len(text) - 1 <= limit  # characters kept, ellipsis aside

        short = plotting._shorten_middle(name, fits)
        head, tail = short.split("\u2026")
        assert len(head) + len(tail) == limit
        assert name.startswith(head) and name.endswith(tail)
        assert len(calls) <= 9  # log2(168) rounded up, not one per length
    assert plotting._shorten_middle(name, lambda text: False) == "/\u2026"


def test_fit_title_breaks_the_name_when_the_detail_is_too_wide_anyway():
    fig = plt.figure(figsize=(2.0, 2.0))
    ax = fig.add_axes([0.1, 0.1, 0.8, 0.8])
    name = "/features/pool1/MaxPool_output_0"
    detail = "a detail far too wide for this small panel, at any font size"
    plotting._fit_titles(fig, [(ax, name, detail, {})])
    fig.canvas.draw()  # the title is fitted when the figure is drawn
    title = ax.get_title()
    *head, last = title.split("\n")
    assert last == detail and len(head) > 1  # the name broken, not cut
    assert "".join(head) == name and "\u2026" not in title
    assert ax.title.get_fontsize() == 8
    avail = ax.get_window_extent().width
    for line in head:
        ax.set_title(line, fontsize=8)
        assert ax.title.get_window_extent().width <= avail


def test_rank_sweep_titles_and_ticks_refit_when_drawn_at_another_size():
    names = [
        "/pool1/MaxPool_output_0",
        "/pool2/MaxPool_output_0",
        "/relu3/Relu_output_0",
    ]
    fig = plotting.plot_rank_sweep(
        {name: _sweep(range(1, 31), s) for name, s in zip(names, [9, 12, 17])}
    )
    fig.canvas.draw()
    assert all("\n" not in ax.get_title() for ax in fig.axes)  # room to spare
    wide = [len(ax.get_xticks()) for ax in fig.axes]
    fig.set_size_inches(7.5, 4.0)
    fig.canvas.draw()
    _assert_titles_fit(fig, fig.axes)
    assert any("\n" in ax.get_title() for ax in fig.axes)
    assert sum(len(ax.get_xticks()) for ax in fig.axes) < sum(wide)
    for ax, sel in zip(fig.axes, [9, 12, 17]):
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        _assert_apart(_boxes(labels), "x")
        (mark,) = [t for t in labels if t.get_text() == str(sel)]
        assert mark.get_color() == "tab:red" and mark.get_fontweight() == "bold"
        assert all(t.get_color() != "tab:red" for t in labels if t is not mark)
    fig.set_size_inches(11.7, 3.7)
    fig.canvas.draw()
    assert [len(ax.get_xticks()) for ax in fig.axes] == wide
    assert all("\n" not in ax.get_title() for ax in fig.axes)


def test_rank_sweep_leaves_a_title_or_ticks_set_afterwards_alone():
    fig = plotting.plot_rank_sweep(_many_sweeps(["a" * 200, "b" * 200]))
    fig.axes[0].set_title("mine")
    fig.axes[0].set_xticks([3, 4])
    fig.canvas.draw()
    assert fig.axes[0].get_title() == "mine"
    assert list(fig.axes[0].get_xticks()) == [3, 4]
    assert "\u2026" in fig.axes[1].get_title()


def test_rank_sweep_minor_tick_at_every_rank_up_to_sixty():
    fig = plotting.plot_rank_sweep(
        {"a": _sweep(range(1, 61), 30), "b": _sweep(range(1, 62), 30)}
    )
    fig.canvas.draw()
    a, b = fig.axes
    assert set(range(1, 61)) <= set(a.get_xticks()) | set(a.xaxis.get_minorticklocs())
    assert len(b.xaxis.get_minorticklocs()) == 0  # beyond 60: labelled ticks only


def test_rank_sweep_figure_pickles_and_still_fits_its_text():
    import pickle

    names = ["/pool1/MaxPool_output_0", "/pool2/MaxPool_output_0"]
    fig = plt.figure(figsize=(5.0, 3.0), layout="constrained")
    plotting.plot_rank_sweep(_many_sweeps(names), fig=fig)
    fig = pickle.loads(pickle.dumps(fig))
    fig.canvas.draw()
    _assert_titles_fit(fig, fig.axes)
    for ax in fig.axes:
        assert ax.get_title().replace("\n", "").startswith(names[fig.axes.index(ax)])
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        _assert_apart(_boxes(labels), "x")


def test_input_factors_of_signed_components_are_drawn_around_zero(digits):
    from sklearn.decomposition import PCA

    X, _ = digits
    pca = PCA(4).fit(X)
    fig = plotting.plot_input_factors(pca, image_shape=(8, 8))
    for ax, row in zip(fig.axes, pca.components_):
        (im,) = ax.images
        assert im.get_cmap().name == "RdBu_r" and im.get_clim() == (-1.0, 1.0)
        img = im.get_array()
        # each tile divided by its largest absolute value: zero stays white
        np.testing.assert_allclose(img, (row / np.abs(row).max()).reshape(8, 8))
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "signed: red positive, blue negative" in title
    # non-negative components keep the sequential map from zero
    nmf = NMF(4, init="nndsvda", max_iter=300, random_state=0).fit(X)
    im = plotting.plot_input_factors(nmf, image_shape=(8, 8)).axes[0].images[0]
    assert im.get_cmap().name == "gray_r" and im.get_clim() == (0.0, 1.0)


@pytest.mark.parametrize("shape", [(1, 50), (4, 60), (60, 4), (8, 8)])
def test_input_factors_figure_size_stays_sensible_for_any_image_shape(shape):
    rng = np.random.default_rng(0)
    H = rng.random((6, shape[0] * shape[1]))
    fig = plotting.plot_input_factors(H, image_shape=shape)
    w, h = fig.get_size_inches()
    assert 3.5 <= w <= 16.0 and h <= 9.0
    if shape == (8, 8):  # square tiles: 1.7 in, as before
        assert (w, h) == pytest.approx((6 * 1.7, 1.7 + 0.6))
    fig.canvas.draw()
    # each tile keeps the image's aspect ratio, its longer side 1 to 4 in
    for ax in fig.axes:
        box = ax.images[0].get_window_extent()
        assert box.width / box.height == pytest.approx(shape[1] / shape[0], rel=0.02)
        assert 1.0 - 1e-6 <= max(box.width, box.height) / fig.dpi <= 4.0
    # tile titles side by side never overlap
    boxes = [ax.title.get_window_extent() for ax in fig.axes]
    for a, b in itertools.pairwise(boxes):
        assert a.x1 <= b.x0 + 1


def test_figure_titles_are_broken_to_fit_narrow_figures(coupled):
    model, *_ = coupled
    fig = plotting.plot_input_factors(model, components=[0])
    fig.canvas.draw()
    title = fig._suptitle
    assert "\n" in title.get_text()
    box = title.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    fig = plotting.plot_sample_loadings(np.random.default_rng(0).random((50, 1)))
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_title().startswith("Sample loadings W (50 samples x 1 factor)")
    box = ax.title.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width


def test_sample_loadings_scale_and_sign():
    rng = np.random.default_rng(0)
    W = rng.random((40, 3))
    fig = plotting.plot_sample_loadings(W)
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)  # shares of the row max
    one = plotting.plot_sample_loadings(np.full((10, 1), 2.0))
    assert one.axes[0].images[0].get_clim() == (0.0, 2.0)  # not 1.9 to 2.1
    raw = plotting.plot_sample_loadings(W * 3, normalize=None)
    assert raw.axes[0].images[0].get_clim() == (0.0, pytest.approx((W * 3).max()))
    W[4, 2], W[9, 0] = -0.25, -0.5
    with pytest.raises(ValueError, match=r"W has negative values \(W\[4, 2\] = -0\.25"):
        plotting.plot_sample_loadings(W)  # the first one, as the other checks


def test_layer_factors_long_names_leave_the_y_axis_to_the_unit_kind():
    name = "/layer1/layer1.0/relu/Relu_output_0"
    H = np.random.default_rng(0).random((3, 14))

    model = SimpleNamespace(
        components_=H,
        block_names_=["input", name, "fc1"],
        block_slices_={"input": slice(0, 4), name: slice(4, 10), "fc1": slice(10, 14)},
    )
    fig = plotting.plot_layer_factors(model)
    # one long name: every panel's axis says the kind alone, so that the
    # panels read alike (the titles name the layers)
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["unit", "unit"]
    short = SimpleNamespace(**{**vars(model), "block_names_": ["input", "c", "fc1"]})
    short.block_slices_ = {
        "input": slice(0, 4),
        "c": slice(4, 10),
        "fc1": slice(10, 14),
    }
    fig = plotting.plot_layer_factors(short)
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["c unit", "fc1 unit"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_rank_sweep_sorts_ranks_reads_cv_results_and_names_its_spread():
    from sklearn_peek import RankQualityScorer

    curves = {"l": {"ranks": [3, 1, 2], "mean": [0.3, 0.1, 0.2],
                    "std": [0.0, 0.0, 0.0], "selected": 2}}  # fmt: skip
    fig = plotting.plot_rank_sweep(curves, criterion="elbow")
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == [
        0.1, 0.2, 0.3]  # fmt: skip
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert not any("fold" in t for t in labels) and "minus relative error" in labels
    rng = np.random.default_rng(0)
    A = rng.random((60, 4)) @ rng.random((4, 30)) + 0.01
    sc = RankQualityScorer(blocks=[("input", 10), ("l", 20)], ranks=range(1, 5),
                           cv=3, random_state=0).fit(A)  # fmt: skip
    fig = plotting.plot_rank_sweep(dict(sc.cv_results_))
    title = fig.axes[0].get_title()
    assert title.endswith(f"selected rank {sc.rank_['l']}")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "mean" in labels and "± 1 std" in labels
    labels = plotting.plot_rank_sweep(sc).axes[0].get_legend_handles_labels()[1]
    assert "mean over folds" in labels


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_input_factors_of_a_coupled_model_without_blocks_draw_it_whole(digits):
    from sklearn_peek import CoupledNMF

    X, _ = digits
    model = CoupledNMF(3, random_state=0, max_iter=50).fit(X)  # one block, "block0"
    fig = plotting.plot_input_factors(model, image_shape=(8, 8))
    for ax, row in zip(fig.axes, model.components_):
        np.testing.assert_allclose(
            ax.images[0].get_array(), (row / row.max()).reshape(8, 8), rtol=1e-6
        )
    with pytest.raises(ValueError, match=r"block='conv' is not a block.*\['block0'\]"):
        plotting.plot_input_factors(model, block="conv")
    # a single block that has a name of its own is not taken for the input
    named = CoupledNMF(3, blocks=[("conv1", 64)], random_state=0, max_iter=50).fit(X)
    with pytest.raises(ValueError, match=r"block='input' is not a block.*'conv1'"):
        plotting.plot_input_factors(named, image_shape=(8, 8))


def test_sample_loadings_many_thin_classes_are_named_in_ranges():
    # 60 classes of 6 rows: each too thin for its own name, but the axis has
    # room for a dozen names: consecutive ranges, not one "0–59"
    W = np.random.default_rng(0).random((360, 6))
    fig = plotting.plot_sample_loadings(W, y=np.arange(360) % 60)
    fig.canvas.draw()
    labels = [t for t in fig.axes[0].get_yticklabels() if t.get_text()]
    _assert_apart(_boxes(labels), "y")
    spans = [tuple(int(v) for v in t.get_text().split("\u2013")) for t in labels]
    assert len(spans) >= 8
    assert spans[0][0] == 0 and spans[-1][-1] == 59
    for (_, b), (a, _) in itertools.pairwise(spans):
        assert a == b + 1  # the ranges follow each other


def test_layer_factors_split_flat_and_pooled_layers_draw_each_unit_once():
    # nonneg="split" flat (2, N) and pooled (2, C) layers: the positive and
    # negative parts of a unit are summed, as for split conv maps, when the
    # extractor says the layers are split (a dict of shapes cannot tell a
    # split (2, N) from a Conv1d's (C, L)).
    import torch

    from sklearn_peek import CoupledNMF, LayerActivationExtractor

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(3 * 6 * 6, 5),
    ).eval()  # fmt: skip
    X = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    ext = LayerActivationExtractor(
        net, ["0", "3"], nonneg="split", include_input=False, pooling="avg"
    ).fit(X)
    assert ext.layer_shapes_ == {"0": (2, 3), "3": (2, 5)}
    A = ext.transform(X)
    model = CoupledNMF(2, blocks=ext.block_sizes_, random_state=0).fit(A)
    fig = plotting.plot_layer_factors(model, layer_shapes=ext, normalize=None)
    for ax, name, n in zip(fig.axes[:2], ["0", "3"], [3, 5]):
        H = model.block_components(name)
        np.testing.assert_allclose(
            ax.images[0].get_array(), (H[:, :n] + H[:, n:]).T, rtol=1e-6
        )
    # the pooled conv layer's rows are its channels (the extractor's names
    # say so: "0__c1_pos"), the linear layer's its units
    titles = [ax.get_title() for ax in fig.axes[:2]]
    assert titles == ["0 (3 channels)", "3 (5 units)"]
    assert fig.axes[0].get_ylabel() == "0 channel"
    # the shapes alone: drawn as given, 2 x the units
    fig = plotting.plot_layer_factors(model, layer_shapes=ext.layer_shapes_)
    assert fig.axes[0].images[0].get_array().shape == (6, 2)
    with pytest.raises(ValueError, match=r"layer_shapes=\[1, 2\]: expected a dict"):
        plotting.plot_layer_factors(model, layer_shapes=[1, 2])
    with pytest.raises(ValueError, match=r"layer_shapes\['3'\]=\(2\.0, 5\) is not"):
        plotting.plot_layer_factors(model, layer_shapes={"3": (2.0, 5)})
    # (name, shape) pairs are a dict too
    pairs = list(ext.layer_shapes_.items())
    fig = plotting.plot_layer_factors(model, layer_shapes=pairs)
    assert fig.axes[0].images[0].get_array().shape == (6, 2)
