"""Tests of sklearn_peek.datasets: digits images, the IDX reader, MNIST loading."""

import gzip
import re
import urllib.error

import numpy as np
import pytest
from _helpers import idx_bytes, write_idx

from sklearn_peek.datasets import load_digits_images, load_mnist, read_idx


def _fake_mnist(folder, n_train=7, n_test=4, gz=True, seed=0, names=None):
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        img_name = f"{split}-images-idx3-ubyte" + (".gz" if gz else "")
        lab_name = f"{split}-labels-idx1-ubyte" + (".gz" if gz else "")
        if names is not None:
            img_name, lab_name = names(img_name), names(lab_name)
        write_idx(folder / img_name, images, gz=gz)
        write_idx(folder / lab_name, labels, gz=gz)
        data[split] = (images, labels)
    return data


def test_load_digits_images():
    from sklearn.datasets import load_digits

    d = load_digits_images()
    raw = load_digits()
    assert d.images.shape == (1797, 1, 8, 8)
    assert d.images.dtype == np.float32 and d.data.dtype == np.float32
    assert d.data.shape == (1797, 64)
    assert d.image_shape == (1, 8, 8)
    assert d.images.min() == 0.0 and d.images.max() == 1.0
    np.testing.assert_allclose(d.images[5, 0], raw.images[5] / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(d.target, raw.target)
    np.testing.assert_array_equal(d.images.reshape(1797, -1), d.data)
    assert "8x8" in d.DESCR


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "code, values",
    [
        (0x08, np.arange(24).reshape(2, 3, 4)),
        (0x09, np.array([-3, 0, 5], dtype=np.int8)),
        (0x0B, np.array([[-300, 2], [7, 32000]])),
        (0x0C, np.array([1, -2, 2**30])),
        (0x0D, np.array([[0.5, -1.25]], dtype=np.float32)),
        (0x0E, np.array([np.pi, -1e300])),
    ],
)
def test_read_idx_types_and_gzip(tmp_path, gz, code, values):
    path = tmp_path / "x-idx"
    write_idx(path, values, code, gz=gz)
    out = read_idx(path)
    assert out.shape == values.shape
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_read_idx_errors(tmp_path):
    good = idx_bytes(np.arange(12).reshape(3, 4))
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        read_idx(tmp_path / "nope")
    p = tmp_path / "f"
    p.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"truncated.*magic"):
        read_idx(p)
    p.write_bytes(b"PK\x03\x04" + good[4:])
    with pytest.raises(ValueError, match=r"not an IDX file: magic number"):
        read_idx(p)
    # The magic is the 4 bytes as an unsigned number (a .npy file starts so).
    p.write_bytes(b"\x93NUMPY" + good[4:])
    with pytest.raises(ValueError, match=r"magic number 2471384397 \(0x934e554d\);"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x07\x02" + good[4:])  # unknown type code 0x07
    with pytest.raises(ValueError, match=r"not an IDX file"):
        read_idx(p)
    p.write_bytes(good[:6])  # header cut inside the dims
    with pytest.raises(
        ValueError, match=r"truncated: the header declares 2 dimensions"
    ):
        read_idx(p)
    p.write_bytes(good[:-3])
    with pytest.raises(
        ValueError, match=r"truncated: its header declares shape \(3, 4\)"
    ):
        read_idx(p)
    p.write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match=r"1 bytes more than its header"):
        read_idx(p)
    gz = tmp_path / "g.gz"
    buf = gzip.compress(good)
    gz.write_bytes(buf[: len(buf) // 2])
    with pytest.raises(ValueError, match=r"could not be decompressed"):
        read_idx(gz)
    with pytest.raises(IsADirectoryError, match=r"IDX file .* is a folder; expected"):
        read_idx(tmp_path)
    # a dimension of 0: a valid, empty array of the declared shape
    p.write_bytes(idx_bytes(np.zeros((0, 28, 28), dtype=np.uint8)))
    empty = read_idx(p)
    assert empty.shape == (0, 28, 28) and empty.dtype == np.uint8


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_folder(tmp_path, gz):
    data = _fake_mnist(tmp_path, gz=gz)
    train = load_mnist(tmp_path)
    assert train.images.shape == (7, 1, 28, 28) and train.images.dtype == np.float32
    assert train.data.shape == (7, 784)
    np.testing.assert_allclose(train.images[:, 0], data["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(train.target, data["train"][1])
    assert train.target.dtype == np.int64
    test = load_mnist(tmp_path, kind="test")
    np.testing.assert_array_equal(test.target, data["t10k"][1])
    both = load_mnist(tmp_path, kind="both")
    assert both.images.shape[0] == 11 and both.n_train == 7
    np.testing.assert_array_equal(both.target[7:], data["t10k"][1])


def test_load_mnist_dotted_names_and_cache(tmp_path):
    # Some mirrors name the files "train-images.idx3-ubyte".
    data = _fake_mnist(tmp_path, gz=False, names=lambda n: n.replace("-idx", ".idx"))
    out = load_mnist(kind="test", cache_dir=tmp_path, download=False)
    np.testing.assert_array_equal(out.target, data["t10k"][1])
    assert out.source == str(tmp_path)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(ValueError, match=r"kind='val'"):
        load_mnist(tmp_path, kind="val")
    with pytest.raises(FileNotFoundError, match=r"not an existing folder"):
        load_mnist(tmp_path / "absent")
    idx = tmp_path / "t10k-images-idx3-ubyte"
    idx.write_bytes(b"")
    with pytest.raises(
        NotADirectoryError,
        match=rf"path='.*t10k-images-idx3-ubyte' is a file; expected the folder .*"
        rf"load_mnist\(path='{re.escape(str(tmp_path))}'\)",
    ):
        load_mnist(idx)
    idx.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"lacks the MNIST file.*train-images-idx3"
    ):
        load_mnist(tmp_path)
    # Only the test files present: kind="test" works, kind="both" names what is missing.
    rng = np.random.default_rng(0)
    write_idx(
        tmp_path / "t10k-images-idx3-ubyte",
        rng.integers(0, 255, (3, 28, 28)),
    )
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3]))
    assert load_mnist(tmp_path, kind="test").images.shape == (3, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match=r"train-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path, kind="both")
    # Valid IDX files of no images (it failed inside a NumPy reshape).
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match=r"test images file in .* holds no images"):
        load_mnist(tmp_path, kind="test")
    write_idx(
        tmp_path / "t10k-images-idx3-ubyte",
        rng.integers(0, 255, (3, 28, 28)),
    )
    # Images and labels that disagree.
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2]))
    with pytest.raises(ValueError, match=r"3 images but .* 2 labels"):
        load_mnist(tmp_path, kind="test")
    # Labels out of range.
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 11]))
    with pytest.raises(ValueError, match=r"label 11"):
        load_mnist(tmp_path, kind="test")
    # Labels file that holds images (wrong magic for labels).
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match=r"expected MNIST labels"):
        load_mnist(tmp_path, kind="test")


def test_load_mnist_offline_messages(tmp_path, monkeypatch):
    empty = tmp_path / "cache"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"download=False") as info:
        load_mnist(cache_dir=empty, download=False)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(empty) in msg
    with pytest.raises(ValueError, match=r"download='no'"):
        load_mnist(cache_dir=empty, download="no")

    # A network failure inside fetch_openml becomes a ConnectionError that
    # says what to download and where to put it. The network is never used.
    import sklearn.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sklearn.datasets, "fetch_openml", offline)
    with pytest.raises(ConnectionError, match=r"Could not fetch MNIST") as info:
        load_mnist(cache_dir=empty)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and str(empty) in msg
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    # a cache folder that cannot be made is said so, before any download
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(
        OSError,
        match=r"cache folder .*file/sub' \(cache_dir\) could "
        r"not be created: .*Pass cache_dir= a writable folder",
    ) as info:
        load_mnist(cache_dir=blocker / "sub")  # fmt: skip
    assert not isinstance(info.value, ConnectionError)
