"""LayerActivationExtractor on PyTorch modules: hooks, shapes, nonneg, memory."""

import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from _helpers import in_threads
from _torch_helpers import BasicBlock
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_peek import (
    LayerActivationExtractor,
    NegativeActivationError,
    available_layers,
)

nn = torch.nn


class LeNet(nn.Module):
    """LeNet-5 shaped, small; relu1 is in place so conv1's output changes."""

    def __init__(self, in_ch=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 4, 5)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(12, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.drop(self.relu3(self.fc1(x.flatten(1))))
        return self.fc2(x)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 4))
        self.layer2 = nn.Sequential(BasicBlock(4, 8, 2), BasicBlock(8, 8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return LeNet().eval()


@pytest.fixture
def X():
    return np.random.default_rng(0).random((23, 784), dtype=np.float32)


def _manual(net, X):
    """Reference forward pass calling the submodules by hand (copies kept)."""
    with torch.no_grad():
        x = torch.from_numpy(X.reshape(-1, 1, 28, 28))
        c1 = net.conv1(x).clone()
        p1 = net.pool1(torch.relu(c1))
        p2 = net.pool2(torch.relu(net.conv2(p1)))
        f1 = net.fc1(p2.flatten(1))
        r3 = torch.relu(f1)
        return {
            "conv1": c1.numpy(),
            "pool1": p1.numpy(),
            "pool2": p2.numpy(),
            "fc1": f1.numpy(),
            "relu3": r3.numpy(),
            "fc2": net.fc2(r3).numpy(),
        }


def _block(ext, A, name):
    start = 0
    for b, size in ext.block_sizes_:
        if b == name:
            return A[:, start : start + size]
        start += size
    raise KeyError(name)


def test_auto_layers_match_manual_forward(lenet, X):
    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28), batch_size=5)
    A = ext.fit_transform(X)
    ref = _manual(lenet, X)
    assert A.dtype == np.float32
    # The auto rule: each ReLU, replaced by the pooling step reading it.
    assert ext.layer_names_ == ["input", "pool1", "pool2", "relu3"]
    assert ext.block_sizes_ == [
        ("input", 784),
        ("pool1", 4 * 12 * 12),
        ("pool2", 6 * 4 * 4),
        ("relu3", 12),
    ]
    assert ext.layer_shapes_["pool1"] == (4, 12, 12)
    assert ext.input_shape_ == (1, 28, 28)
    assert ext.n_features_in_ == 784
    np.testing.assert_array_equal(_block(ext, A, "input"), X)
    for name in ("pool1", "pool2", "relu3"):
        np.testing.assert_allclose(
            _block(ext, A, name), ref[name].reshape(len(X), -1), rtol=1e-5, atol=1e-6
        )


def test_inplace_relu_does_not_change_captured_output(lenet, X):
    # conv1 feeds an in-place ReLU: without a copy the hook's tensor would be
    # clipped afterwards. split keeps the sign: pos - neg must be conv1.
    ext = LayerActivationExtractor(
        lenet, ["conv1", "relu1"], input_shape=(1, 28, 28), nonneg="split"
    )
    A = ext.fit_transform(X)
    ref = _manual(lenet, X)["conv1"].reshape(len(X), -1)
    conv = _block(ext, A, "conv1")
    half = conv.shape[1] // 2
    assert ref.min() < 0
    np.testing.assert_allclose(conv[:, :half] - conv[:, half:], ref, atol=1e-6)
    relu = _block(ext, A, "relu1")
    np.testing.assert_allclose(
        relu[:, : relu.shape[1] // 2], np.maximum(ref, 0), atol=1e-6
    )
    assert np.all(relu[:, relu.shape[1] // 2 :] == 0)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_model_that_changes_its_input_in_place_leaves_x_alone(as_tensor):
    # The first op clips its input in place. A float32 X on the CPU reaches
    # torch without a copy, so the model must get its own: neither the
    # caller's X nor the input block read from it may be clipped.
    net = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(1, 2, 3), nn.ReLU())
    X0 = np.random.default_rng(0).random((6, 1, 6, 6), dtype=np.float32) - 0.5
    X = torch.from_numpy(X0.copy()) if as_tensor else X0.copy()
    ext = LayerActivationExtractor(net, ["1", "2"], nonneg="split", batch_size=4)
    A = ext.fit_transform(X)
    np.testing.assert_array_equal(np.asarray(X), X0)
    inp = _block(ext, A, "input")
    np.testing.assert_array_equal(inp[:, :36] - inp[:, 36:], X0.reshape(6, -1))
    with torch.inference_mode():
        ref = net[1](torch.from_numpy(X0).relu()).numpy().reshape(6, -1)
    conv = _block(ext, A, "1")
    half = conv.shape[1] // 2
    np.testing.assert_allclose(conv[:, :half] - conv[:, half:], ref, atol=1e-6)


def test_batch_size_does_not_change_result(lenet, X):
    a = LayerActivationExtractor(lenet, input_shape=(1, 28, 28), batch_size=1)
    b = LayerActivationExtractor(lenet, input_shape=(1, 28, 28), batch_size=256)
    np.testing.assert_allclose(a.fit_transform(X), b.fit_transform(X), atol=1e-6)


def test_4d_input_and_torch_tensor_input(lenet, X):
    ref = LayerActivationExtractor(lenet, input_shape=(1, 28, 28)).fit_transform(X)
    X4 = X.reshape(-1, 1, 28, 28)
    ext = LayerActivationExtractor(lenet).fit(X4)
    assert ext.input_shape_ == (1, 28, 28)
    np.testing.assert_allclose(ext.transform(X4), ref, atol=1e-6)
    # a fitted extractor accepts the flat form too, and torch tensors
    np.testing.assert_allclose(ext.transform(torch.from_numpy(X)), ref, atol=1e-6)


def test_model_state_restored_and_hooks_removed(lenet, X):
    lenet.train()
    lenet.fc1.eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28))
    A1 = ext.fit_transform(X)
    # dropout active in train mode would make two runs differ
    np.testing.assert_array_equal(A1, ext.transform(X))
    assert lenet.training and lenet.conv1.training and not lenet.fc1.training
    for k, v in lenet.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_hooks for m in lenet.modules())
    with pytest.raises(ValueError, match="shape"):
        ext.transform(np.zeros((2, 1, 20, 20), np.float32))
    bad = LayerActivationExtractor(lenet, ["pool1"], input_shape=(1, 20, 20))
    with pytest.raises(ValueError, match=r"input of shape \(1, 1, 20, 20\)"):
        bad.fit(np.zeros((3, 400), np.float32))
    assert all(not m._forward_hooks for m in lenet.modules())
    assert lenet.training and not lenet.fc1.training
    # an error in a later batch, inside the forward-pass context
    nan_late = X.copy()
    nan_late[20, 0] = np.nan
    ext.set_params(batch_size=4)
    with pytest.raises(ValueError, match="sample 20"):
        ext.transform(nan_late)
    assert all(not m._forward_hooks for m in lenet.modules())
    assert lenet.training and not lenet.fc1.training


class _TupleOut(nn.Module):
    def forward(self, x):
        return x, x


def test_layer_returning_tuple_is_refused(X):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    net.add_module("pair", _TupleOut())
    ext = LayerActivationExtractor(net, ["1", "pair"], input_shape=(1, 28, 28))
    with pytest.raises(TypeError, match=r"layer 'pair' \(_TupleOut\) returns tuple"):
        ext.fit(X)
    assert all(not m._forward_hooks for m in net.modules())


class _SamplesSecond(nn.Module):
    def forward(self, x):
        return x.flatten(2).permute(2, 0, 1)  # (positions, N, C): batch_first=False


class _MeanOverSamples(nn.Module):
    def forward(self, x):
        return x.mean(0)


@pytest.mark.parametrize(
    "layer, shape",
    [(_SamplesSecond(), r"\(676, 23, 2\)"), (_MeanOverSamples(), r"\(2, 26, 26\)")],
)
def test_layer_without_the_samples_first_is_refused_by_name(X, layer, shape):
    # it used to fail inside NumPy (broadcast or reshape), naming no layer
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), layer)
    ext = LayerActivationExtractor(net, ["2"], input_shape=(1, 28, 28))
    with pytest.raises(
        ValueError,
        match=rf"layer '2' gave an output of shape {shape} for a batch of 23 "
        r"samples; expected the samples on its first axis \(23, \.\.\.\)",
    ):
        ext.fit(X)


class _Spectrum(nn.Module):
    def forward(self, x):
        return torch.fft.fft2(x)


def test_layer_returning_complex_values_is_refused(X):
    # cast to float32, the imaginary part was dropped (torch's own warning)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), _Spectrum())
    ext = LayerActivationExtractor(net, ["1", "2"], input_shape=(1, 28, 28))
    with pytest.raises(
        TypeError,
        match=r"layer '2' \(_Spectrum\) returns complex values "
        r"\(torch\.complex64\), not real activations",
    ):
        ext.fit(X)
    assert all(not m._forward_hooks for m in net.modules())


def test_pooling_avg_and_max(lenet, X):
    ref = _manual(lenet, X)
    for pooling, fn in (("avg", np.mean), ("max", np.max)):
        ext = LayerActivationExtractor(
            lenet, ["pool1", "relu3"], input_shape=(1, 28, 28), pooling=pooling
        )
        A = ext.fit_transform(X)
        assert ext.block_sizes_ == [("input", 784), ("pool1", 4), ("relu3", 12)]
        assert ext.layer_shapes_["pool1"] == (4,)
        np.testing.assert_allclose(
            _block(ext, A, "pool1"), fn(ref["pool1"], axis=(2, 3)), atol=1e-6
        )
        np.testing.assert_allclose(_block(ext, A, "relu3"), ref["relu3"], atol=1e-6)
    names = ext.get_feature_names_out()
    assert list(names[783:786]) == ["input__p783", "pool1__c0", "pool1__c1"]
    assert names[-1] == "relu3__u11"


def test_feature_names_follow_contract(lenet, X):
    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28)).fit(X[:4])
    names = ext.get_feature_names_out()
    assert len(names) == ext.n_features_out_ == sum(s for _, s in ext.block_sizes_)
    assert names[0] == "input__p0"
    assert names[784] == "pool1__c0_y0_x0"
    # channel-major, then row, then column
    assert names[784 + 12 * 12 + 12 + 3] == "pool1__c1_y1_x3"
    blocks = [n.split("__", 1)[0] for n in names]
    assert list(dict.fromkeys(blocks)) == ext.layer_names_
    for b, size in ext.block_sizes_:
        assert blocks.count(b) == size


def test_nonneg_error_names_layer_and_fix(lenet, X):
    ext = LayerActivationExtractor(lenet, ["pool1", "fc2"], input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"'fc2'.*negative values \(min -") as err:
        ext.fit(X)
    for fix in ("nonneg='relu'", "'split'", "'shift'", "after a ReLU"):
        assert fix in str(err.value)
    assert isinstance(err.value, NegativeActivationError)
    assert err.value.what == "layer 'fc2' (block 'fc2')"
    with torch.no_grad():
        want = float(lenet(torch.from_numpy(X.reshape(-1, 1, 28, 28))).min())
    assert err.value.minimum == pytest.approx(want, rel=1e-5)
    # It survives pickling (joblib workers send errors back that way).
    back = pickle.loads(pickle.dumps(err.value))
    assert isinstance(back, NegativeActivationError)
    assert (str(back), back.what, back.minimum) == (
        str(err.value),
        err.value.what,
        err.value.minimum,
    )
    with pytest.raises(ValueError, match="the input X has negative values"):
        LayerActivationExtractor(lenet, ["pool1"], input_shape=(1, 28, 28)).fit(X - 0.5)


def test_nonneg_error_from_a_joblib_worker(lenet, X):
    from joblib import Parallel, delayed

    def work(ext):
        return ext.fit_transform(X)

    ext = LayerActivationExtractor(lenet, ["fc2"], input_shape=(1, 28, 28))
    with pytest.raises(NegativeActivationError, match=r"'fc2'.*negative values"):
        Parallel(n_jobs=2)(delayed(work)(ext) for _ in range(2))


def test_nonneg_relu_split(lenet, X):
    ref = _manual(lenet, X)["fc2"]
    relu = LayerActivationExtractor(
        lenet, ["fc2"], input_shape=(1, 28, 28), nonneg="relu", include_input=False
    ).fit(X)
    np.testing.assert_allclose(relu.transform(X), np.maximum(ref, 0), atol=1e-6)
    split = LayerActivationExtractor(
        lenet, ["fc2"], input_shape=(1, 28, 28), nonneg="split", include_input=False
    ).fit(X)
    S = split.transform(X)
    assert split.block_sizes_ == [("fc2", 20)]
    assert split.layer_shapes_["fc2"] == (2, 10)
    np.testing.assert_allclose(
        S, np.hstack([np.maximum(ref, 0), np.maximum(-ref, 0)]), atol=1e-6
    )
    names = split.get_feature_names_out()
    assert names[0] == "fc2__u0_pos" and names[10] == "fc2__u0_neg"


def test_nonneg_shift(lenet, X):
    ref = _manual(lenet, X)["fc2"]
    ext = LayerActivationExtractor(
        lenet, ["fc2"], input_shape=(1, 28, 28), nonneg="shift", batch_size=4
    ).fit(X)
    shift = ext.shifts_["fc2"]
    np.testing.assert_allclose(shift, np.minimum(ref.min(axis=0), 0), atol=1e-6)
    np.testing.assert_array_equal(ext.shifts_["input"], 0)
    A = ext.transform(X)
    assert A.min() >= 0
    np.testing.assert_allclose(_block(ext, A, "fc2"), ref - shift, atol=1e-5)
    # data reaching below the minimum seen in fit is refused, not clipped
    small = LayerActivationExtractor(
        lenet, ["fc2"], input_shape=(1, 28, 28), nonneg="shift"
    ).fit(X[:3])
    with pytest.raises(ValueError, match=r"nonneg='shift'.*'fc2'.*below the minimum"):
        small.transform(X)


def test_unknown_layer_lists_close_matches(lenet, X):
    ext = LayerActivationExtractor(lenet, ["pool1", "poool2"], input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"'poool2' is not a layer.*'pool2'"):
        ext.fit(X)
    with pytest.raises(ValueError, match="more than once") as err:
        LayerActivationExtractor(
            lenet, ["pool1", "pool1"], input_shape=(1, 28, 28)
        ).fit(X)
    # it crosses process boundaries (a case study's joblib workers) intact
    back = pickle.loads(pickle.dumps(err.value))
    assert (back.names, back.aliases, str(back)) == (
        ["pool1"],
        False,
        str(err.value),
    )


@pytest.mark.parametrize(
    "X_shape, input_shape, match",
    [
        (
            (4, 700),
            (1, 28, 28),
            r"does not fit input_shape=\(1, 28, 28\).*\(n_samples, 784\)",
        ),
        ((4,), None, r"expected \(n_samples, n_features\)"),
        ((0, 784), (1, 28, 28), "0 samples"),
    ],
)
def test_bad_X_shape(lenet, X_shape, input_shape, match):
    ext = LayerActivationExtractor(lenet, ["pool1"], input_shape=input_shape)
    with pytest.raises(ValueError, match=match):
        ext.fit(np.ones(X_shape, np.float32))


def test_transform_checks_shape_and_finite(lenet, X):
    ext = LayerActivationExtractor(lenet, ["pool1"], input_shape=(1, 28, 28)).fit(X)
    with pytest.raises(ValueError, match=r"X has 100 features.*expecting 784 features"):
        ext.transform(X[:, :100])
    with pytest.raises(ValueError, match=r"fitted on samples of shape \(1, 28, 28\)"):
        ext.transform(X.reshape(-1, 1, 14, 56))
    bad = X.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values.*sample 7"):
        ext.transform(bad)


@pytest.mark.parametrize(
    "param, value, match",
    [
        (
            "pooling",
            "mean",
            r"'pooling' parameter of LayerActivationExtractor must be a str among "
            r"\{'(avg|max)', '(avg|max)'\} or None\. Got 'mean' instead\.",
        ),
        ("pooling", "Max", r"'pooling'.*Got 'Max'.*Did you mean 'max'\?"),
        ("nonneg", "clip", r"'nonneg'.*Got 'clip'"),
        ("batch_size", 0, r"'batch_size'.*range \[1, inf\)\. Got 0 "),
        ("batch_size", 8.0, r"'batch_size'.*Got 8\.0 "),
        ("batch_size", True, r"'batch_size'.*must be a number, not a bool\. Got True"),
        ("include_input", "no", r"'include_input'.*Got 'no'"),
        ("channel_repeat", 1, r"'channel_repeat'.*Got 1 "),
        ("extra_inputs", [1], r"'extra_inputs'.*dict.*Got \[1\]"),
        ("layers", 3, r"layers=3"),
        ("progress", "yes", r"'progress'.*Got 'yes'"),
        ("input_shape", (1, -28, 28), r"input_shape=\(1, -28, 28\)"),
        ("device", "tpu", r"device='tpu'"),
        ("input_name", "x", "ONNX models only"),
    ],
)
def test_bad_parameters(lenet, X, param, value, match):
    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28))
    ext.set_params(**{param: value})
    with pytest.raises(ValueError, match=match):
        ext.fit(X)


def test_parameter_checks_follow_scikit_learns_skip_setting(lenet, X):
    import sklearn

    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28), batch_size=True)
    with pytest.raises(ValueError, match=r"'batch_size'.*not a bool"):
        ext.fit(X)
    with sklearn.config_context(skip_parameter_validation=True):
        assert ext.fit(X).transform(X[:3]).shape[0] == 3  # batches of True == 1


def test_not_a_model():
    with pytest.raises(TypeError, match=r"model=dict.*torch.nn.Module"):
        LayerActivationExtractor({}).fit(np.ones((2, 4), np.float32))


def test_channel_mismatch_and_channel_repeat(X):
    torch.manual_seed(1)
    net = LeNet(in_ch=3).eval()
    with pytest.raises(ValueError, match=r"expects 3 channels.*channel_repeat=True"):
        LayerActivationExtractor(net, input_shape=(1, 28, 28)).fit(X)
    ext = LayerActivationExtractor(net, input_shape=(1, 28, 28), channel_repeat=True)
    A = ext.fit_transform(X)
    rgb = np.repeat(X.reshape(-1, 1, 28, 28), 3, axis=1)
    B = LayerActivationExtractor(net, include_input=False).fit_transform(rgb)
    assert ext.block_sizes_[0] == ("input", 784)  # the caller's single channel
    assert (ext.input_shape_, ext.channel_repeat_) == ((1, 28, 28), 3)
    np.testing.assert_allclose(A[:, 784:], B, atol=1e-6)
    # matching channels: nothing is repeated, with or without the option
    ext.set_params(input_shape=None)
    assert ext.fit(rgb).channel_repeat_ == 1
    assert LayerActivationExtractor(net).fit(rgb).channel_repeat_ == 1


def test_images_without_channel_axis(lenet, X):
    # (n, H, W) for a model whose first convolution takes one channel: the
    # channel axis is added, as the command line does
    X4 = X.reshape(-1, 1, 28, 28)
    ref = LayerActivationExtractor(lenet, ["pool2", "relu3"]).fit(X4)
    for input_shape in (None, (1, 28, 28)):
        ext = LayerActivationExtractor(
            lenet, ["pool2", "relu3"], input_shape=input_shape
        )
        A = ext.fit_transform(X4[:, 0])
        assert ext.input_shape_ == (1, 28, 28) and ext.n_features_in_ == 784
        np.testing.assert_array_equal(A, ref.transform(X4))
        # every layout of the same images gives the same rows
        np.testing.assert_array_equal(ext.transform(X4), A)
        np.testing.assert_array_equal(ext.transform(X), A)
    # fitted on (n, 1, H, W), transform takes (n, H, W) too
    np.testing.assert_array_equal(ref.transform(X4[:, 0]), A)
    msg = (
        r"X has shape \(23, 20, 20\).*\(n_samples, 1, 28, 28\) or \(n_samples, 28, 28\)"
    )
    with pytest.raises(ValueError, match=msg):
        ref.transform(np.zeros((23, 20, 20), np.float32))
    # the images do not fit: the error shows the channel axis was added
    with pytest.raises(ValueError, match=r"input of shape \(1, 1, 20, 20\) failed"):
        LayerActivationExtractor(lenet, ["pool2"]).fit(np.zeros((3, 20, 20)))


def test_volumes_without_channel_axis_for_a_conv3d_model():
    # (n, D, H, W) for a model whose first convolution is a Conv3d taking one
    # channel: the channel axis is added, as for (n, H, W) and a Conv2d
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU()).eval()
    V = np.random.default_rng(0).random((4, 5, 6, 6), dtype=np.float32)
    ext = LayerActivationExtractor(net, ["1"])
    A = ext.fit_transform(V)
    assert ext.input_shape_ == (1, 5, 6, 6)
    ref = LayerActivationExtractor(net, ["1"]).fit_transform(V[:, None])
    np.testing.assert_array_equal(A, ref)


class _AddsChannelAxis(nn.Module):
    """Takes (n, H, W) and adds the channel axis itself."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.unsqueeze(1))


def test_an_input_shape_without_the_channel_axis_adds_it(lenet, X):
    ref = LayerActivationExtractor(lenet, input_shape=(1, 28, 28)).fit(X)
    ext = LayerActivationExtractor(lenet, input_shape=(28, 28)).fit(X)
    assert ext.input_shape_ == (1, 28, 28)
    np.testing.assert_array_equal(ext.transform(X), ref.transform(X))
    X4 = X.reshape(-1, 1, 28, 28)  # images with the axis fit it too
    np.testing.assert_array_equal(ext.transform(X4), ref.transform(X))
    ext = LayerActivationExtractor(lenet, input_shape=(28, 28)).fit(X4)
    np.testing.assert_array_equal(ext.transform(X), ref.transform(X))
    # available_layers reads (28, 28) as fit does
    assert available_layers(lenet, (28, 28)) == available_layers(lenet, (1, 28, 28))
    # a module that adds the axis itself is fed X shaped by input_shape
    wrapped = _AddsChannelAxis(lenet)
    ext = LayerActivationExtractor(wrapped, ["net.pool2"], input_shape=(28, 28))
    A = ext.fit_transform(X)  # flat rows
    assert ext.input_shape_ == (28, 28)
    ref = LayerActivationExtractor(lenet, ["pool2"], input_shape=(1, 28, 28))
    np.testing.assert_array_equal(A, ref.fit_transform(X))
    shapes = {r["name"]: r["shape"] for r in available_layers(wrapped, (28, 28))}
    assert shapes["net.pool2"] == ext.layer_shapes_["net.pool2"]


def test_module_that_adds_the_channel_axis_itself(lenet, X):
    X4 = X.reshape(-1, 1, 28, 28)
    ext = LayerActivationExtractor(_AddsChannelAxis(lenet), ["net.pool2"])
    A = ext.fit_transform(X4[:, 0])
    assert ext.input_shape_ == (28, 28)  # X fed as given
    ref = LayerActivationExtractor(lenet, ["pool2"]).fit_transform(X4)
    np.testing.assert_array_equal(A, ref)


def test_three_channel_model_and_images_without_channel_axis(X):
    torch.manual_seed(1)
    net = LeNet(in_ch=3).eval()
    X3 = X.reshape(-1, 28, 28)
    msg = (
        r"X has samples of shape \(28, 28\), without a channel axis, but the model's "
        r"first convolution expects 3 channels: repeat the single channel with "
        r"np\.repeat\(X\[:, None\], 3, axis=1\), or pass channel_repeat=True"
    )
    with pytest.raises(ValueError, match=msg):
        LayerActivationExtractor(net, ["pool2"]).fit(X3)
    ext = LayerActivationExtractor(net, ["pool2"], channel_repeat=True)
    A = ext.fit_transform(X3)
    assert ext.input_shape_ == (1, 28, 28)
    rgb = np.repeat(X3[:, None], 3, axis=1)
    ref = LayerActivationExtractor(net, ["pool2"], include_input=False).fit(rgb)
    np.testing.assert_array_equal(A[:, :784], X)
    np.testing.assert_allclose(A[:, 784:], ref.transform(rgb), atol=1e-6)


@pytest.mark.parametrize(
    "model_ch, data_ch, channel_repeat, fix",
    [
        (
            3,
            1,
            False,
            r": repeat the single channel with np\.repeat\(X, 3, axis=1\), "
            r"or pass channel_repeat=True",
        ),
        (4, 1, False, r"np\.repeat\(X, 4, axis=1\), or pass channel_repeat=True"),
        (
            1,
            3,
            False,
            r": convert the RGB images to grayscale, e\.g\. "
            r"X\.mean\(axis=1, keepdims=True\)\.$",
        ),
        (1, 3, True, r"X\.mean\(axis=1, keepdims=True\)\.$"),
        (3, 2, False, r"expects 3 channels\.$"),
        (3, 2, True, r"expects 3 channels\.$"),
    ],
)
def test_channel_mismatch_hint_depends_on_direction(
    model_ch, data_ch, channel_repeat, fix
):
    torch.manual_seed(0)
    net = LeNet(in_ch=model_ch).eval()
    Xc = np.random.default_rng(0).random((2, data_ch, 28, 28), dtype=np.float32)
    ext = LayerActivationExtractor(net, ["pool2"], channel_repeat=channel_repeat)
    with pytest.raises(ValueError) as info:
        ext.fit(Xc)
    msg = str(info.value)
    counts = (
        f"X has samples of shape ({data_ch}, 28, 28) ({data_ch} channel"
        f"{'s' if data_ch > 1 else ''}), but the model's first convolution expects "
        f"{model_ch} channel{'s' if model_ch > 1 else ''}"
    )
    assert counts in msg
    assert re.search(fix, msg), msg
    # channel_repeat is offered only where it fixes the mismatch
    assert ("channel_repeat=True" in msg) == (data_ch == 1)
    assert "np.repeat(X, 1," not in msg


def test_integer_images_are_fed_unscaled_with_a_warning(lenet, X):
    X8 = np.round(X * 255).astype(np.uint8)
    ext = LayerActivationExtractor(lenet, ["pool1"], input_shape=(1, 28, 28))
    msg = (
        r"X has dtype uint8 with values up to 255; they are fed to the model as "
        r"they are.*X / 255.*X\.astype\(np\.float32\)"
    )
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        A = ext.fit_transform(X8)
    # X is checked once per call: one warning, not one from fit and one more
    # from transform
    assert len(rec) == 1, [str(w.message) for w in rec]
    assert rec[0].category is UserWarning and re.match(msg, str(rec[0].message))
    assert rec[0].filename == __file__  # points at the caller's line
    for method in ("fit", "transform"):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            getattr(ext, method)(X8)
        assert len(rec) == 1 and rec[0].filename == __file__
    # nothing is rescaled: the same as the float values 0..255
    B = ext.fit_transform(X8.astype(np.float32))
    np.testing.assert_array_equal(A, B)
    assert A[:, :784].max() == 255
    with pytest.warns(UserWarning, match=r"dtype int64 with values up to 255"):
        ext.transform(torch.from_numpy(X8.astype(np.int64)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ext.transform(X8.astype(np.float32))  # floats: taken as meant
        ext.fit_transform((X8 > 127).astype(np.uint8))  # a 0/1 mask


class _Counting(nn.Module):
    """Wraps a module; counts forward calls and the samples they get."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, x):
        self.calls.append(len(x))
        return self.inner(x)


@pytest.mark.parametrize("nonneg", ["error", "relu", "split", "shift"])
@pytest.mark.parametrize("include_input", [True, False])
def test_fit_transform_reads_and_runs_x_once(nonneg, include_input, monkeypatch):
    import sklearn_peek._extract._base as base

    torch.manual_seed(0)
    net = _Counting(
        nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(108, 4))
    ).eval()
    layers = ["inner.1"] if nonneg == "error" else ["inner.1", "inner.3"]
    X = np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)
    kw = dict(nonneg=nonneg, include_input=include_input, batch_size=4)

    reads, scans, layer_mins = [], [], set()
    as_array, check_finite = base._as_array, base._check_finite

    def counting_as_array(X, *args, **kwargs):
        reads.append(np.shape(X))
        return as_array(X, *args, **kwargs)

    def counting_check_finite(a, what, start, need_min=True):
        if what == "X":
            scans.append((start, len(a)))
        else:
            layer_mins.add(need_min)
        return check_finite(a, what, start, need_min)

    monkeypatch.setattr(base, "_as_array", counting_as_array)
    monkeypatch.setattr(base, "_check_finite", counting_check_finite)
    ext = LayerActivationExtractor(net, layers, **kw)
    A = ext.fit_transform(X)
    assert reads == [X.shape]  # validated once
    batches = [(0, 4), (4, 4), (8, 2)]
    # every batch is checked for NaN once, and the first batch, which fit
    # checked and ran, is not run again; nonneg="shift" needs all of X in fit,
    # and then runs the rest once more with the shifts (fit first runs one
    # sample of zeros to learn the layer shapes)
    assert scans == batches
    # a layer's minimum is computed only where it can refuse negative values
    assert layer_mins == {nonneg == "error"}
    rest = [4, 2]
    if nonneg == "shift":
        assert net.calls == [1, 4, *rest, *rest]
    else:
        assert net.calls == [1, 4, *rest]
    # the same result as fit(X).transform(X)
    monkeypatch.undo()
    ref = LayerActivationExtractor(net, layers, **kw).fit(X)
    np.testing.assert_array_equal(A, ref.transform(X))
    t = LayerActivationExtractor(net, layers, output="torch", **kw).fit_transform(X)
    assert torch.is_tensor(t)
    np.testing.assert_array_equal(t.numpy(), A)


@pytest.mark.parametrize("nonneg", ["error", "relu", "shift"])
@pytest.mark.parametrize("row", [1, 9])
def test_fit_transform_still_finds_nan_in_every_batch(nonneg, row, lenet, X):
    Xn = X[:10].copy()
    Xn[row, 5] = np.nan
    ext = LayerActivationExtractor(
        lenet, ["pool1"], input_shape=(1, 28, 28), nonneg=nonneg, batch_size=4
    )
    with pytest.raises(ValueError, match=rf"NaN.*first at sample {row}, feature 5:"):
        ext.fit_transform(Xn)


def test_fit_transform_under_set_output_pandas(lenet, X):
    pd = pytest.importorskip("pandas")
    ext = LayerActivationExtractor(lenet, ["pool1"], input_shape=(1, 28, 28))
    df = ext.set_output(transform="pandas").fit_transform(X)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == list(ext.get_feature_names_out())
    np.testing.assert_array_equal(df.to_numpy(), ext.transform(X).to_numpy())


def test_resnet_auto_rule_and_call_index():
    torch.manual_seed(0)
    net = TinyResNet().eval()
    rows = available_layers(net, input_shape=(3, 16, 16))
    by_name = {r["name"]: r for r in rows}
    assert by_name["layer1.0.relu"]["calls"] == 2
    assert by_name["layer2.0.conv1"]["shape"] == (8, 4, 4)
    X = np.random.default_rng(1).random((6, 3, 16, 16), dtype=np.float32)
    ext = LayerActivationExtractor(net, pooling="avg").fit(X)
    # 1 + 4 block ReLUs + avgpool = 6 <= 8 candidates: all kept; the stem ReLU
    # is replaced by maxpool, the last block's ReLU by avgpool.
    assert ext.layer_names_ == [
        "input",
        "maxpool",
        "layer1.0.relu",
        "layer1.1.relu",
        "layer2.0.relu",
        "avgpool",
    ]
    assert [r["name"] for r in rows if r["auto"]] == ext.layer_names_[1:]
    # "name" is the last call (block output), "name:0" the first call
    e2 = LayerActivationExtractor(
        net, ["layer1.0.relu:0", "layer1.0.relu", "layer1.0"], include_input=False
    ).fit(X)
    A = e2.transform(X)
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(torch.from_numpy(X)))))
        blk = net.layer1[0]
        first = torch.relu(blk.bn1(blk.conv1(x)))
        out = blk(x)
    n = first[0].numel()
    np.testing.assert_allclose(A[:, :n], first.reshape(6, -1).numpy(), atol=1e-5)
    np.testing.assert_allclose(A[:, n : 2 * n], out.reshape(6, -1).numpy(), atol=1e-5)
    np.testing.assert_allclose(A[:, 2 * n :], out.reshape(6, -1).numpy(), atol=1e-5)
    assert e2.layer_names_ == ["layer1.0.relu:0", "layer1.0.relu", "layer1.0"]


def test_auto_caps_number_of_layers():
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Linear(5, 5), nn.ReLU()]
    net = nn.Sequential(*layers)
    ext = LayerActivationExtractor(net, include_input=False).fit(
        np.random.default_rng(0).random((3, 5), dtype=np.float32)
    )
    # The 12 ReLUs are modules "1", "3", ..., "23", each its own top-level
    # part: 8 evenly spaced ones are kept, the first and the last included.
    relus = [str(2 * i + 1) for i in range(12)]
    keep = np.linspace(0, 11, 8).round().astype(int)
    assert ext.layer_names_ == [relus[i] for i in keep]
    assert ext.layer_names_ == ["1", "5", "7", "11", "13", "17", "19", "23"]


def test_double_underscore_names_are_sanitized(X):
    net = nn.Sequential()
    net.add_module("conv__a", nn.Conv2d(1, 2, 3))
    net.add_module("act", nn.ReLU())
    net.add_module("input", nn.ReLU())
    ext = LayerActivationExtractor(net, ["conv__a", "act", "input"], nonneg="relu")
    ext.fit(X.reshape(-1, 1, 28, 28)[:3])
    assert ext.layer_names_ == ["input", "conv_a", "act", "input_1"]
    assert ext.layer_sources_["conv_a"] == "conv__a"
    assert all(n.count("__") == 1 for n in ext.get_feature_names_out())


def test_memory_estimate_refuses_before_allocating(lenet):
    # 100 million samples that take no memory (a broadcast view): ~550 GiB
    X = np.broadcast_to(np.float32(0.5), (100_000_000, 1, 28, 28))
    ext = LayerActivationExtractor(lenet, batch_size=8).fit(X)
    expected = rf"100000000 samples x {ext.n_features_out_} features x 4 bytes"
    with pytest.raises(MemoryError, match=expected) as err:
        ext.transform(X)
    for way in ("pooling=", "fewer", "out=np.memmap"):
        assert way in str(err.value)


def test_out_memmap(lenet, X, tmp_path):
    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28), batch_size=6).fit(X)
    ref = ext.transform(X)
    mm = np.memmap(tmp_path / "a.dat", dtype=np.float32, mode="w+", shape=ref.shape)
    res = ext.transform(X, out=mm)
    assert res is mm
    mm.flush()
    back = np.memmap(tmp_path / "a.dat", dtype=np.float32, mode="r", shape=ref.shape)
    np.testing.assert_array_equal(back, ref)
    with pytest.raises(ValueError, match=r"out=ndarray float64.*float32.*\(23, 1468\)"):
        ext.transform(X, out=np.zeros(ref.shape))


def test_progress_bar(lenet, X, capsys, monkeypatch):
    LayerActivationExtractor(
        lenet, input_shape=(1, 28, 28), batch_size=5, progress=True
    ).fit_transform(X)
    assert "5/5" in capsys.readouterr().err
    monkeypatch.setenv("CI", "1")
    LayerActivationExtractor(
        lenet, input_shape=(1, 28, 28), batch_size=5
    ).fit_transform(X)
    assert capsys.readouterr().err == ""


def test_progress_bar_over_the_pass_that_fits_the_shifts(lenet, X, capsys):
    # nonneg="shift" runs the network over all of X in fit to find each
    # feature's minimum, as long a pass as transform's: it had no bar.
    ext = LayerActivationExtractor(
        lenet, ["fc2"], input_shape=(1, 28, 28), nonneg="shift", batch_size=5,
        progress=True,
    )  # fmt: skip
    ext.fit(X)
    err = capsys.readouterr().err
    assert "fit shifts" in err and "5/5" in err
    ext.transform(X)
    err = capsys.readouterr().err
    assert "fit shifts" not in err and "extract" in err and "5/5" in err


class _Terminal:
    """A stderr that says it is a terminal."""

    def isatty(self):
        return True

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _default_progress_on_a_terminal():
    import sys

    from sklearn_peek._progress import show_progress

    real, sys.stderr = sys.stderr, _Terminal()
    try:
        return show_progress(None)
    finally:
        sys.stderr = real


def test_no_progress_bars_by_default_in_joblib_worker_processes(monkeypatch):
    # A GridSearchCV(n_jobs=2) scored by RankQualityScorer: its loky workers
    # share the parent's terminal, and their extract and sweep bars wrote
    # over each other on one line.
    import joblib

    monkeypatch.delenv("CI", raising=False)
    assert _default_progress_on_a_terminal() is True
    for backend in ("loky", "multiprocessing"):
        with joblib.parallel_config(backend=backend, n_jobs=2):
            got = joblib.Parallel()(
                joblib.delayed(_default_progress_on_a_terminal)() for _ in range(2)
            )
        assert got == [False, False], backend
    # threads of the main process draw (tqdm stacks their bars)
    with joblib.parallel_config(backend="threading", n_jobs=2):
        got = joblib.Parallel()(
            joblib.delayed(_default_progress_on_a_terminal)() for _ in range(2)
        )
    assert got == [True, True]


def test_progress_bar_by_default_in_a_jupyter_kernel(lenet, X, capsys, monkeypatch):
    # A notebook's stderr is no terminal; its IPython shell has a kernel.
    # IPython itself is not installed here: a module standing in for it
    # gives the shell the check reads.
    import sys
    import types

    def run():
        LayerActivationExtractor(
            lenet, input_shape=(1, 28, 28), batch_size=5
        ).fit_transform(X)
        return capsys.readouterr().err

    monkeypatch.delenv("CI", raising=False)
    assert run() == ""  # pytest's captured stderr: no terminal, no kernel
    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    fake.get_ipython = lambda: types.SimpleNamespace(kernel=None)  # a terminal
    assert run() == ""
    fake.get_ipython = lambda: types.SimpleNamespace(kernel=object())
    assert "5/5" in run()
    monkeypatch.setenv("CI", "1")
    assert run() == ""


def test_clone_shares_model_pickle_and_pandas(lenet, X):
    pd = pytest.importorskip("pandas")
    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28)).set_output(
        transform="pandas"
    )
    twin = clone(ext)
    assert twin.model is lenet
    assert twin.get_params()["input_shape"] == (1, 28, 28)
    df = twin.fit_transform(X)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == list(twin.get_feature_names_out())
    assert df.dtypes.unique().tolist() == [np.float32]
    again = pickle.loads(pickle.dumps(twin))
    np.testing.assert_allclose(again.transform(X).to_numpy(), df.to_numpy(), atol=1e-6)
    # a DataFrame as input: its column names are checked in transform
    Xdf = pd.DataFrame(X, columns=[f"px{i}" for i in range(784)])
    e2 = LayerActivationExtractor(lenet, ["relu3"], input_shape=(1, 28, 28)).fit(Xdf)
    assert e2.feature_names_in_[0] == "px0"
    with pytest.raises(ValueError, match="column names"):
        e2.transform(Xdf.rename(columns={"px0": "other"}))
    # names on one side only: scikit-learn's warnings, the result unchanged
    ref = e2.transform(Xdf)
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        np.testing.assert_array_equal(e2.transform(X), ref)
    e3 = clone(e2).fit(X)
    with pytest.warns(UserWarning, match="X has feature names, but Layer"):
        np.testing.assert_array_equal(e3.transform(Xdf), ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e2.transform(Xdf), e3.transform(X)
        # integer column labels (a DataFrame made from an array) are no
        # feature names, as in scikit-learn: none recorded, no warning
        e4 = clone(e2).fit(pd.DataFrame(X))
        assert not hasattr(e4, "feature_names_in_")
        np.testing.assert_array_equal(e4.transform(X), ref)
        np.testing.assert_array_equal(e3.transform(pd.DataFrame(X)), ref)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_modules_are_refused_with_a_way_out(lenet, X):
    # forward hooks do not fire inside a TorchScript module: it said "found
    # no non-negative activation" (traced) or failed inside torch (scripted)
    for scripted in (
        torch.jit.trace(lenet, torch.zeros(1, 1, 28, 28)),
        torch.jit.script(lenet),
    ):
        with pytest.raises(ValueError, match=r"TorchScript module.*eager nn\.Module"):
            LayerActivationExtractor(scripted, input_shape=(1, 28, 28)).fit(X[:2])
        with pytest.raises(ValueError, match="TorchScript module"):
            available_layers(scripted, (1, 28, 28))


def test_model_without_weights_on_the_meta_device_is_refused(lenet, X):
    # built under torch.device("meta") (shapes only): torch said "Cannot copy
    # out of meta tensor; no data!" from inside the first batch
    with torch.device("meta"):
        empty = type(lenet)()
    with pytest.raises(ValueError, match=r"model has \d+ parameters.*'meta' device"):
        LayerActivationExtractor(empty, input_shape=(1, 28, 28)).fit(X[:2])
    with pytest.raises(ValueError, match=r"to_empty\(device='cpu'\)"):
        available_layers(empty, (1, 28, 28))
    # the way out the message gives works
    empty.to_empty(device="cpu").load_state_dict(lenet.state_dict())
    np.testing.assert_array_equal(
        LayerActivationExtractor(empty, input_shape=(1, 28, 28)).fit_transform(X[:4]),
        LayerActivationExtractor(lenet, input_shape=(1, 28, 28)).fit_transform(X[:4]),
    )


class _Overlap(torch.nn.Module):
    """Identity that records the most passes running through it at once
    (each stays 20 ms, so that passes started together overlap)."""

    def __init__(self):
        super().__init__()
        self.now = self.most = 0

    def forward(self, x):
        import time

        self.now += 1
        self.most = max(self.most, self.now)
        time.sleep(0.02)
        self.now -= 1
        return x


def _gated_net():
    torch.manual_seed(0)
    gate = _Overlap()
    body = nn.Sequential(gate, nn.Conv2d(1, 4, 3), nn.ReLU())
    return gate, body


def test_extractors_sharing_modules_take_turns_in_threads():
    # clone shares the model; two passes at once over one module (threads:
    # GridSearchCV under joblib's threading backend) read each other's
    # outputs through the hooks and undo each other's eval mode. Also when
    # one extractor reads a network and another one of its blocks.
    gate, inner = _gated_net()
    outer = nn.Sequential(inner, nn.MaxPool2d(2)).eval()
    X = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    X2 = X[::-1] * 3
    base = LayerActivationExtractor(outer, ["0.2", "1"], batch_size=4)
    pairs = [
        (clone(base).fit(X), X),  # two clones
        (clone(base).fit(X2), X2),
        (LayerActivationExtractor(inner, ["2"], batch_size=4).fit(X), X),  # a block
    ]
    refs = [ext.transform(data) for ext, data in pairs]
    for chosen in ([0, 1], [0, 2]):
        gate.most = 0
        got = in_threads(
            [lambda k=k: pairs[k][0].transform(pairs[k][1]) for k in chosen]
        )
        assert gate.most == 1  # one pass at a time
        for k, out in zip(chosen, got):
            np.testing.assert_array_equal(out, refs[k])


class _FreedRelu(torch.nn.Module):
    """A pool that reads a signed tensor made after the ReLU's output was
    freed: the new tensor may reuse the ReLU output's memory."""

    def __init__(self):
        super().__init__()
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)

    def forward(self, x):
        x = self.relu(x)
        y = x - 2.0
        del x
        return self.pool(y * 1.0)


def test_a_pool_reading_reused_memory_is_not_taken_for_the_relus():
    # "auto" tells which tensor a pool reads by its address; before every
    # output was kept alive for the pass, about 1 run in 4 marked this pool
    net = _FreedRelu().eval()
    for _ in range(40):
        rows = available_layers(net, (4, 64, 64))
        assert [r["name"] for r in rows if r["auto"]] == ["relu"]


def test_double_precision_model_gives_float32(X):
    torch.manual_seed(0)
    net = LeNet().double().eval()
    A = LayerActivationExtractor(net, input_shape=(1, 28, 28)).fit_transform(X[:4])
    assert A.dtype == np.float32
    ref = _manual(net.float(), X[:4])["relu3"]
    np.testing.assert_allclose(A[:, -12:], ref, atol=1e-5)


def test_parameters_changed_after_fit_are_refused_not_ignored(lenet, X):
    # transform under a model, layers or policy other than fit's would run
    # the old network, or fail deep in NumPy: it says so and asks for a fit
    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28)).fit(X)
    A = ext.transform(X)
    torch.manual_seed(1)
    other = LeNet().eval()
    ext.set_params(model=other)
    with pytest.raises(ValueError, match=r"model=<LeNet object at 0x.*differs "
                       r"from the value fit saw.*call fit again"):  # fmt: skip
        ext.transform(X)
    B = ext.fit(X).transform(X)  # now the other network's activations
    ref = _manual(other, X)
    np.testing.assert_allclose(_block(ext, B, "relu3"), ref["relu3"], atol=1e-5)
    assert not np.allclose(_block(ext, B, "relu3"), _block(ext, A, "relu3"))
    for param, value in [
        ("pooling", "avg"),
        ("nonneg", "split"),
        ("layers", ["pool2"]),
        ("include_input", False),
        ("input_shape", (1, 14, 56)),
    ]:
        changed = clone(ext).set_params(model=other)
        changed.__dict__.update(ext.__dict__)  # the fitted state, as after fit
        changed.set_params(**{param: value})
        with pytest.raises(ValueError, match=rf"^{param}=.*differs from the value"):
            changed.transform(X)
    # a list changed in place after fit is a change too; so are the names
    layers = ["pool2"]
    inplace = LayerActivationExtractor(lenet, layers, input_shape=(1, 28, 28)).fit(X)
    layers.append("relu3")
    with pytest.raises(ValueError, match=r"^layers=\['pool2', 'relu3'\] differs"):
        inplace.transform(X)
    with pytest.raises(ValueError, match=r"^layers=\['pool2', 'relu3'\] differs"):
        inplace.get_feature_names_out()
    # what fit did not use may change; equal plain values count as the same
    ext.set_params(batch_size=5, progress=False, layers="auto", input_shape=[1, 28, 28])
    np.testing.assert_allclose(ext.transform(X), B, atol=1e-6)


def test_array_parameters_survive_a_joblib_round_trip(lenet, X, tmp_path):
    # joblib stores arrays outside the pickle's memo: after load, the
    # parameter and the value fit saw are equal copies, not one object
    import joblib

    ext = LayerActivationExtractor(
        lenet, layers=np.array(["pool2", "relu3"]), input_shape=np.array([1, 28, 28])
    ).fit(X)
    joblib.dump(ext, tmp_path / "ext.joblib")
    back = joblib.load(tmp_path / "ext.joblib")
    np.testing.assert_array_equal(back.transform(X), ext.transform(X))
    back.set_params(layers=np.array(["pool2"]))
    with pytest.raises(ValueError, match=r"^layers=\['pool2'\] differs from the "
                       r"value fit saw \(\['pool2', 'relu3'\]\)"):  # fmt: skip
        back.transform(X)


def test_a_failed_refit_leaves_an_unfitted_extractor(lenet, X):
    from sklearn.exceptions import NotFittedError

    ext = LayerActivationExtractor(lenet, ["pool2"], input_shape=(1, 28, 28)).fit(X)
    ext.set_params(layers=["nope"])
    with pytest.raises(ValueError, match=r"nope"):
        ext.fit(X)
    ext.set_params(layers=["pool2"])  # back to what the first fit saw
    with pytest.raises(NotFittedError):
        ext.transform(X)  # not the first fit's state under the second's sources


def test_device_changed_after_fit_is_where_transform_runs(lenet, X):
    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28)).fit(X[:4])
    ext.set_params(device="cpu", output="torch")
    assert ext.transform(X[:4]).device.type == "cpu"
    if not torch.cuda.is_available():
        # not the session fit built: asking for CUDA now asks the machine
        ext.set_params(device="cuda")
        with pytest.raises(ValueError, match=r"device='cuda'.*no"):
            ext.transform(X[:4])


def test_cuda_requested_without_gpu(lenet, X):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    ext = LayerActivationExtractor(lenet, input_shape=(1, 28, 28), device="cuda")
    with pytest.raises(ValueError, match=r"device='cuda'.*no"):
        ext.fit(X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_model_stays(lenet, X):
    cpu = LayerActivationExtractor(lenet, input_shape=(1, 28, 28)).fit_transform(X)
    gpu = LayerActivationExtractor(lenet, input_shape=(1, 28, 28), device="cuda")
    np.testing.assert_allclose(gpu.fit_transform(X), cpu, rtol=1e-4, atol=1e-4)
    assert next(lenet.parameters()).device.type == "cpu"
    net = LeNet().eval().cuda()
    A = LayerActivationExtractor(net, input_shape=(1, 28, 28)).fit_transform(X)
    assert A.dtype == np.float32 and next(net.parameters()).is_cuda


def test_available_layers_needs_shape_for_torch(lenet):
    with pytest.raises(ValueError, match="input_shape"):
        available_layers(lenet)
    rows = available_layers(lenet, (1, 28, 28))
    assert [r["name"] for r in rows if r["auto"]] == ["pool1", "pool2", "relu3"]
    assert {"name", "op_type", "shape", "auto", "calls"} <= set(rows[0])


# scikit-learn's estimator checks feed arbitrary 2-D data: a network that
# accepts any width (one ReLU) and nonneg="split" (negative test data) let
# them run; the checks then cover cloning, pickling, set_output, dtypes,
# n_features_in_ and the error messages for bad input.
@parametrize_with_checks(
    [LayerActivationExtractor(nn.Sequential(nn.ReLU()), ["0"], nonneg="split")]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_auto_rule_on_the_library_lenet_gives_the_paper_probes():
    # extraction.rst: "auto" on LeNet-5 reads pool1, pool2, relu3, relu4.
    from sklearn_peek._lenet import LeNet

    torch.manual_seed(0)
    X = np.random.RandomState(0).rand(4, 1, 28, 28).astype(np.float32)
    ext = LayerActivationExtractor(LeNet((1, 28, 28), 10).eval()).fit(X)
    assert ext.layer_names_ == ["input", "pool1", "pool2", "relu3", "relu4"]


def test_one_pass_finiteness_check_of_the_input():
    from sklearn_peek._extract._base import _check_finite

    big = np.full((3, 4), 1e20, np.float32)  # its dot product overflows
    assert _check_finite(big, "X", 0, need_min=False) is None
    assert _check_finite(big, "X", 0) == pytest.approx(1e20)
    for bad in (np.nan, np.inf, -np.inf):
        a = np.ones((3, 4), np.float32)
        a[2, 1] = bad
        for need_min in (False, True):
            match = rf"X has NaN or .* \(first at sample 12, feature 1: {bad}\)"
            with pytest.raises(ValueError, match=match):
                _check_finite(a, "X", 10, need_min)


def test_nan_input_is_refused_without_the_input_block(lenet, X):
    Xn = X.copy()
    Xn[3, 5] = np.nan
    ext = LayerActivationExtractor(lenet, ["pool1"], input_shape=(1, 28, 28),
                                   include_input=False).fit(X)  # fmt: skip
    with pytest.raises(ValueError, match=r"X has NaN.*first at sample 3"):
        ext.transform(Xn)


def test_channels_last_images_for_a_torch_model():
    from sklearn_peek import ChannelMismatchError

    torch.manual_seed(0)
    net = LeNet(in_ch=3).eval()
    X = np.random.default_rng(0).random((2, 28, 28, 3), dtype=np.float32)
    with pytest.raises(ChannelMismatchError) as info:
        LayerActivationExtractor(net).fit(X)
    assert info.value.channels_last and (info.value.got, info.value.expected) == (3, 3)
    assert "np.moveaxis(X, -1, 1)." in str(info.value)
    A = LayerActivationExtractor(net).fit_transform(np.moveaxis(X, -1, 1))
    assert A.shape[0] == 2


class _Exp(nn.Module):
    def forward(self, x):
        return torch.exp(100.0 * x)  # inf in float32 once x > 0.89


@pytest.mark.parametrize("nonneg", ["error", "relu", "split", "shift"])
@pytest.mark.parametrize("output", ["numpy", "torch"])
def test_a_layer_that_overflows_is_refused_under_every_policy(nonneg, output):
    # the input is finite; the hidden layer is infinite for sample 6 only (in
    # the second batch). Under relu/split/shift the layer check takes one
    # pass (no minimum needed), under "error" a min and a max: both find it.
    net = nn.Sequential(nn.Flatten(), _Exp(), nn.ReLU()).eval()
    X = np.random.default_rng(0).uniform(0, 0.5, (9, 1, 2, 2)).astype(np.float32)
    X[6, 0, 1, 0] = 1.0
    kw = dict(nonneg=nonneg, output=output, batch_size=4)
    match = r"layer '1' has NaN or .* \(first at sample 6, feature 2: inf\)"
    with pytest.raises(ValueError, match=match):
        LayerActivationExtractor(net, ["1"], **kw).fit_transform(X)
    ext = LayerActivationExtractor(net, ["1"], **kw).fit(np.delete(X, 6, axis=0))
    with pytest.raises(ValueError, match=match):
        ext.transform(X)
    # finite values too large for the one-pass check's dot product pass
    big = np.full((9, 1, 2, 2), 0.86, np.float32)  # exp(86) ~ 2e37: finite
    A = ext.transform(big)
    assert np.isfinite(np.asarray(A)).all()
