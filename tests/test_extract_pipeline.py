"""LayerActivationExtractor feeding CoupledNMF in a scikit-learn Pipeline."""

import numpy as np
import pytest
import torch
from _torch_helpers import torch_to_onnx
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline, make_pipeline

from sklearn_peek import CoupledNMF, LayerActivationExtractor

nn = torch.nn

# a few iterations are enough to check the plumbing
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _lenet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(96, 12),
        nn.ReLU(),
        nn.Linear(12, 10),
    ).eval()


@pytest.fixture
def X():
    return np.random.default_rng(0).random((40, 784), dtype=np.float32)


def _nmf(**kw):
    return CoupledNMF(n_components=3, max_iter=30, random_state=0, **kw)


def test_pandas_pipeline_blocks_auto(X):
    pd = pytest.importorskip("pandas")
    net = _lenet()
    pipe = Pipeline(
        [
            ("extract", LayerActivationExtractor(net, input_shape=(1, 28, 28))),
            ("nmf", _nmf(blocks="auto")),
        ]
    ).set_output(transform="pandas")
    W = pipe.fit_transform(X)
    ext, nmf = pipe.named_steps["extract"], pipe.named_steps["nmf"]
    assert isinstance(W, pd.DataFrame) and W.shape == (40, 3)
    assert np.all(W.to_numpy() >= 0)
    # the blocks CoupledNMF found are exactly the extractor's blocks
    assert nmf.block_names_ == ext.layer_names_ == ["input", "2", "5", "8"]
    sizes = [
        nmf.block_slices_[b].stop - nmf.block_slices_[b].start for b in nmf.block_names_
    ]
    assert sizes == [s for _, s in ext.block_sizes_]
    assert list(nmf.feature_names_in_) == list(ext.get_feature_names_out())
    # the same as running the two steps by hand
    A = ext.transform(X)
    assert isinstance(A, pd.DataFrame) and A.dtypes.unique().tolist() == [np.float32]
    W_ref = _nmf(blocks="auto").fit_transform(A)
    np.testing.assert_allclose(W.to_numpy(), np.asarray(W_ref), rtol=1e-4, atol=1e-5)
    # new images land in the same latent space
    assert pipe.transform(X[:5]).shape == (5, 3)


def test_numpy_pipeline_explicit_blocks(X):
    net = _lenet()
    sizes = LayerActivationExtractor(net, input_shape=(1, 28, 28)).fit(X).block_sizes_
    for blocks in (sizes, [s for _, s in sizes]):
        pipe = make_pipeline(
            LayerActivationExtractor(net, input_shape=(1, 28, 28)), _nmf(blocks=blocks)
        )
        W = pipe.fit_transform(X)
        assert isinstance(W, np.ndarray) and W.shape == (40, 3)
        nmf = pipe[-1]
        assert len(nmf.block_names_) == 4
        assert nmf.components_.shape == (3, sum(s for _, s in sizes))
    assert pipe[-1].block_names_ != ["input", "2", "5", "8"]  # sizes only: no names
    named = make_pipeline(
        LayerActivationExtractor(net, input_shape=(1, 28, 28)), _nmf(blocks=sizes)
    ).fit(X)
    assert named[-1].block_names_ == ["input", "2", "5", "8"]


def test_pandas_pipeline_onnx_with_split(X):
    pytest.importorskip("pandas")
    net = _lenet()
    model = torch_to_onnx(
        net, (1, 28, 28), input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    layers = ["/2/MaxPool", "/9/Gemm"]  # node names; the logits are signed
    pipe = make_pipeline(
        LayerActivationExtractor(model, layers, nonneg="split"),
        _nmf(blocks="auto"),
    ).set_output(transform="pandas")
    pipe.fit(X)
    nmf = pipe[-1]
    assert nmf.block_names_ == ["input", "/2/MaxPool", "/9/Gemm"]
    assert nmf.block_components("/9/Gemm").shape == (3, 20)  # 10 units x 2 signs
    assert nmf.feature_names_in_[-1] == "/9/Gemm__u9_neg"


def test_pipeline_takes_images_without_channel_axis(X):
    # (n, H, W) images, as MNIST loaders give them, for torch and ONNX alike
    net = _lenet()
    X3 = X.reshape(-1, 28, 28)
    model = torch_to_onnx(
        net, (1, 28, 28), input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    for m in (net, model):
        blocks = LayerActivationExtractor(m).fit(X3[:4, None]).block_sizes_
        ref = make_pipeline(LayerActivationExtractor(m), _nmf(blocks=blocks))
        W_ref = ref.fit_transform(X3[:, None])
        pipe = make_pipeline(LayerActivationExtractor(m), _nmf(blocks=blocks))
        W = pipe.fit_transform(X3)
        assert pipe[0].input_shape_ == (1, 28, 28)
        np.testing.assert_allclose(W, W_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            pipe.transform(X3[:5]), ref.transform(X[:5]), rtol=1e-5, atol=1e-6
        )


def test_grid_search_clones_share_the_model(X):
    net = _lenet()
    pipe = Pipeline(
        [
            ("extract", LayerActivationExtractor(net, input_shape=(1, 28, 28))),
            ("nmf", _nmf(blocks=[784, 576, 96, 12])),
        ]
    )
    folds = list(KFold(2).split(X))
    search = GridSearchCV(pipe, {"nmf__n_components": [2, 4]}, cv=folds).fit(X)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    assert search.best_params_["nmf__n_components"] == [2, 4][int(np.argmax(scores))]
    assert search.best_estimator_.named_steps["extract"].model is net
    # A split's score is the pipeline's own score, fitted by hand on that fold.
    train, test = folds[0]
    by_hand = clone(pipe).set_params(nmf__n_components=4).fit(X[train])
    assert search.cv_results_["split0_test_score"][1] == pytest.approx(
        by_hand.score(X[test]), rel=1e-6
    )


def test_torch_output_refuses_a_pandas_set_output(X):
    pd = pytest.importorskip("pandas")
    import sklearn

    net = _lenet()
    ext = LayerActivationExtractor(net, input_shape=(1, 28, 28), output="torch")
    own = r"output='torch' cannot be combined with set_output\(transform='pandas'\)"
    way_out = r"Expected output='numpy'.*or set_output\(transform='default'\)"
    with pytest.raises(ValueError, match=own + ".*" + way_out):
        ext.set_output(transform="pandas").fit_transform(X)
    # set after fit: transform refuses before running the model
    ext = LayerActivationExtractor(net, input_shape=(1, 28, 28), output="torch")
    ext.fit(X).set_output(transform="pandas")
    with pytest.raises(ValueError, match=own):
        ext.transform(X)
    # the same through a Pipeline, and through the global configuration
    pipe = make_pipeline(
        LayerActivationExtractor(net, input_shape=(1, 28, 28), output="torch"),
        _nmf(blocks=[784, 576, 96, 12]),
    ).set_output(transform="pandas")
    with pytest.raises(ValueError, match=own):
        pipe.fit(X)
    with sklearn.config_context(transform_output="pandas"):
        ext = LayerActivationExtractor(net, input_shape=(1, 28, 28), output="torch")
        with pytest.raises(ValueError, match=r"set_config\(transform_output='pandas'"):
            ext.fit_transform(X)
        # each way out works
        A = ext.set_output(transform="default").fit_transform(X)
        assert isinstance(A, torch.Tensor) and A.shape == (40, 1468)
        A = (
            ext.set_params(output="numpy")
            .set_output(transform="pandas")
            .fit_transform(X)
        )
        assert isinstance(A, pd.DataFrame)


def test_pipeline_warns_once_about_integer_images(X):
    # Pipeline.fit calls the extractor's fit_transform, which reads X once:
    # one warning about the unscaled uint8 values, at the caller's line
    import warnings

    X8 = np.round(X * 255).astype(np.uint8)
    pipe = make_pipeline(
        LayerActivationExtractor(_lenet(), input_shape=(1, 28, 28)),
        _nmf(blocks=[784, 576, 96, 12]),
    )
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        pipe.fit(X8)
    ours = [w for w in rec if "dtype uint8" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        pipe.transform(X8[:5])
    assert sum("dtype uint8" in str(w.message) for w in rec) == 1
