"""Image data sets for the examples and case studies.

- :func:`load_digits_images`: scikit-learn's 8x8 hand-written digits as
  float32 images in [0, 1]; embedded, no download.
- :func:`load_mnist`: MNIST from the four standard IDX files (gzipped or
  not) in a folder you give, or fetched through OpenML into a cache.
- :func:`read_idx`: the IDX reader itself.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = ["load_digits_images", "load_mnist", "read_idx"]

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# (images stem, labels stem) per split; the files may also end in ".gz", and
# some mirrors write "train-images.idx3-ubyte" instead of "train-images-idx3-ubyte".
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_N_MNIST_TRAIN = 60000


def load_digits_images():
    """Load scikit-learn's hand-written digits as 1x8x8 float32 images.

    The 1,797 images of :func:`sklearn.datasets.load_digits` (pixel values
    0..16) are divided by 16, so pixels lie in [0, 1].

    Returns
    -------
    Bunch
        ``images`` : float32 ndarray of shape (1797, 1, 8, 8);
        ``data`` : float32 ndarray of shape (1797, 64), the same pixels flat;
        ``target`` : int64 ndarray of shape (1797,), the digit 0..9;
        ``target_names`` : ndarray of the ten classes;
        ``image_shape`` : ``(1, 8, 8)``; ``DESCR`` : str.

    Examples
    --------
    >>> from sklearn_peek.datasets import load_digits_images
    >>> digits = load_digits_images()
    >>> digits.images.shape, digits.images.dtype.name
    ((1797, 1, 8, 8), 'float32')
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    data = (raw.data / 16.0).astype(np.float32)
    return Bunch(
        images=data.reshape(-1, 1, 8, 8),
        data=data,
        target=raw.target.astype(np.int64),
        target_names=np.asarray(raw.target_names),
        image_shape=(1, 8, 8),
        DESCR=(
            "scikit-learn's optical recognition of hand-written digits (UCI), "
            "1,797 images of 8x8 pixels, pixel values divided by 16 to lie in "
            "[0, 1], stored as float32 images of shape (1, 8, 8).\n\n" + raw.DESCR
        ),
    )


def _open(path):
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_idx(path):
    """Read one IDX file (the MNIST format), gzipped or not.

    Parameters
    ----------
    path : str or path-like
        The file. Gzip compression is recognised from the file's first bytes,
        not from its name.

    Returns
    -------
    ndarray
        With the dimensions and element type the header declares (native
        byte order).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the header is not an IDX header, or the file is shorter or longer
        than its header says, or a gzipped file is corrupt.

    Examples
    --------
    >>> import os, tempfile, struct
    >>> from sklearn_peek.datasets import read_idx
    >>> fname = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> with open(fname, "wb") as fh:
    ...     _ = fh.write(struct.pack(">BBBBi", 0, 0, 8, 1, 3) + bytes([7, 2, 1]))
    >>> read_idx(fname).tolist()
    [7, 2, 1]
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"IDX file {str(path)!r} is a folder; expected an IDX file such as "
            "t10k-images-idx3-ubyte.gz."
        )
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist.")
    try:
        with _open(path) as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(
            f"IDX file {str(path)!r} could not be decompressed ({exc}); it looks "
            "like a gzip file but is corrupt or truncated. Download it again."
        ) from exc
    if len(raw) < 4:
        raise ValueError(
            f"IDX file {str(path)!r} is truncated: {len(raw)} bytes, shorter than "
            "the 4-byte magic number."
        )
    zero, code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        magic = struct.unpack(">I", raw[:4])[0]  # unsigned: the 4 bytes as read
        raise ValueError(
            f"{str(path)!r} is not an IDX file: magic number {magic} (0x{magic:08x}); "
            "expected two zero bytes, a type code in "
            f"{[hex(c) for c in sorted(_IDX_DTYPES)]} and a number of dimensions "
            ">= 1 (MNIST images: 2051, labels: 2049)."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"IDX file {str(path)!r} is truncated: the header declares {ndim} "
            f"dimensions ({header} header bytes) but the file has {len(raw)} bytes."
        )
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    if any(d < 0 for d in dims):
        raise ValueError(f"IDX file {str(path)!r} declares negative dimensions {dims}.")
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = count * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise ValueError(
            f"IDX file {str(path)!r} is truncated: its header declares shape {dims} "
            f"({expected} data bytes) but only {found} data bytes follow. "
            "Download the file again."
        )
    if found > expected:
        raise ValueError(
            f"IDX file {str(path)!r} has {found - expected} bytes more than its "
            f"header (shape {dims}, {expected} data bytes) declares; it is not a "
            "valid IDX file."
        )
    if count == 0:  # a valid, empty file (a dimension of 0)
        return np.zeros(dims, dtype=dtype.newbyteorder("="))
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="))


def _find_file(folder, stem):
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def _read_mnist_split(folder, split):
    img_stem, lab_stem = _MNIST_FILES[split]
    img_path = _find_file(folder, img_stem)
    lab_path = _find_file(folder, lab_stem)
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{str(img_path)!r} holds a {images.dtype} array of shape {images.shape}; "
            "expected MNIST images: unsigned bytes of shape (n, 28, 28) "
            "(magic number 2051)."
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"{str(lab_path)!r} holds a {labels.dtype} array of shape {labels.shape}; "
            "expected MNIST labels: unsigned bytes of shape (n,) (magic number 2049)."
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{str(img_path)!r} has {images.shape[0]} images but {str(lab_path)!r} "
            f"has {labels.shape[0]} labels; they must match."
        )
    if labels.size and labels.max() > 9:
        raise ValueError(
            f"{str(lab_path)!r} has label {int(labels.max())}; MNIST labels are 0..9."
        )
    return images, labels.astype(np.int64)


def _missing(folder, splits):
    missing = []
    for split in splits:
        for stem in _MNIST_FILES[split]:
            if _find_file(folder, stem) is None:
                missing.append(stem + ".gz")
    return missing


def _how_to_download(folder, splits):
    names = [s + ".gz" for split in splits for s in _MNIST_FILES[split]]
    return (
        "Download the MNIST IDX files "
        + ", ".join(names)
        + f" (for example from {_MNIST_URL}) and put them, gzipped or not, in "
        + f"{str(folder)!r}; then call load_mnist(path={str(folder)!r}). Or call "
        + "load_mnist(download=True) on a machine with internet access to fetch "
        + "'mnist_784' from OpenML into the cache."
    )


def _default_cache(cache_dir):
    if cache_dir is not None:
        return Path(cache_dir)
    from sklearn.datasets import get_data_home

    return Path(get_data_home()) / "sklearn_peek_mnist"


def _bunch(images, target, kind, n_train, source):
    images = images.astype(np.float32).reshape(-1, 1, 28, 28)
    images /= 255.0  # in place: astype made the only copy
    return Bunch(
        images=images,
        data=images.reshape(images.shape[0], -1),
        target=target,
        target_names=np.arange(10),
        image_shape=(1, 28, 28),
        kind=kind,
        n_train=n_train,
        source=source,
        DESCR=(
            "MNIST hand-written digits (LeCun, Cortes & Burges): 28x28 grey "
            "images, pixel values divided by 255 to lie in [0, 1], float32 of "
            "shape (n, 1, 28, 28). 60,000 training and 10,000 test images; "
            f"kind={kind!r}" + (", training images first." if kind == "both" else ".")
        ),
    )


def load_mnist(path=None, *, kind="train", cache_dir=None, download=True):
    """Load MNIST as float32 images of shape (n, 1, 28, 28) in [0, 1].

    The data come from, in this order: the IDX files in ``path`` when it is
    given; the IDX files already in the cache folder; or OpenML's
    ``mnist_784`` fetched by :func:`sklearn.datasets.fetch_openml` and cached
    in ``cache_dir`` (when ``download=True``).

    Parameters
    ----------
    path : str or path-like, default=None
        A folder holding the standard files ``train-images-idx3-ubyte``,
        ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
        ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``). Only
        the files of the requested ``kind`` are needed. When given, nothing is
        downloaded.
    kind : {"train", "test", "both"}, default="train"
        Which split: the 60,000 training images, the 10,000 test images, or
        all 70,000 with the training images first (``n_train`` in the result
        says where the test images begin).
    cache_dir : str or path-like, default=None
        Where OpenML downloads are cached (``data_home`` of ``fetch_openml``)
        and where IDX files are looked for when ``path`` is None. Default:
        ``<scikit-learn data home>/sklearn_peek_mnist``.
    download : bool, default=True
        Whether to fetch from OpenML when no local files are found.

    Returns
    -------
    Bunch
        ``images`` float32 (n, 1, 28, 28); ``data`` float32 (n, 784);
        ``target`` int64 (n,); ``target_names``; ``image_shape`` (1, 28, 28);
        ``kind``; ``n_train`` (number of training images at the start);
        ``source`` (folder or "openml"); ``DESCR``.

    Raises
    ------
    FileNotFoundError
        If ``path`` lacks the files, or no files are found and
        ``download=False``; the message says what to download and where.
    ConnectionError
        If the download from OpenML fails (e.g. offline); same advice.
    ValueError
        For a bad ``kind`` or malformed IDX files.

    Examples
    --------
    >>> from sklearn_peek.datasets import load_mnist
    >>> mnist = load_mnist(kind="test")  # doctest: +SKIP
    >>> mnist.images.shape  # doctest: +SKIP
    (10000, 1, 28, 28)
    """
    if kind not in ("train", "test", "both"):
        raise ValueError(
            f"kind={kind!r} is not valid; expected 'train', 'test' or 'both'."
        )
    if not isinstance(download, bool):
        raise ValueError(f"download={download!r} must be True or False.")
    splits = ["train", "test"] if kind == "both" else [kind]

    if path is not None:
        folder = Path(os.fspath(path))
        if folder.is_file():
            raise NotADirectoryError(
                f"path={str(folder)!r} is a file; expected the folder that holds "
                f"the MNIST IDX files (load_mnist(path={str(folder.parent)!r}) if "
                "they are there)."
            )
        if not folder.is_dir():
            raise FileNotFoundError(
                f"path={str(folder)!r} is not an existing folder. "
                + _how_to_download(folder, splits)
            )
        missing = _missing(folder, splits)
        if missing:
            raise FileNotFoundError(
                f"path={str(folder)!r} lacks the MNIST file(s) {missing} needed for "
                f"kind={kind!r}. " + _how_to_download(folder, splits)
            )
        return _load_from_folder(folder, splits, kind)

    cache = _default_cache(cache_dir)
    if cache.is_dir() and not _missing(cache, splits):
        return _load_from_folder(cache, splits, kind)
    if not download:
        raise FileNotFoundError(
            f"No MNIST IDX files found in the cache folder {str(cache)!r} and "
            "download=False. " + _how_to_download(cache, splits)
        )
    return _fetch_openml(cache, kind)


def _load_from_folder(folder, splits, kind):
    parts = [_read_mnist_split(folder, s) for s in splits]
    for (images, _), split in zip(parts, splits):
        if images.shape[1:] != (28, 28):
            raise ValueError(
                f"The {split} images in {str(folder)!r} have shape {images.shape[1:]}; "
                "expected 28x28 MNIST images."
            )
        if images.shape[0] == 0:  # a truncated download, say
            raise ValueError(
                f"The {split} images file in {str(folder)!r} holds no images; "
                "expected the MNIST images (delete it to download it again)."
            )
    images = np.concatenate([p[0] for p in parts])
    target = np.concatenate([p[1] for p in parts])
    n_train = parts[0][0].shape[0] if splits[0] == "train" else 0
    return _bunch(images, target, kind, n_train, str(folder))


def _fetch_openml(cache, kind):
    from http.client import HTTPException

    from sklearn.datasets import fetch_openml

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # before any download: not a network problem
        raise type(exc)(
            f"The cache folder {str(cache)!r} (cache_dir) could not be created: "
            f"{type(exc).__name__}: {exc}. Pass cache_dir= a writable folder, or "
            "path= a folder that holds the MNIST IDX files."
        ) from exc
    try:
        X, y = fetch_openml(
            "mnist_784",
            version=1,
            as_frame=False,
            return_X_y=True,
            data_home=str(cache),
        )
    except (OSError, HTTPException) as exc:  # URLError, timeouts, DNS errors
        raise ConnectionError(
            f"Could not fetch MNIST ('mnist_784') from OpenML into {str(cache)!r}: "
            f"{type(exc).__name__}: {exc}. "
            + _how_to_download(cache, ["train", "test"])
        ) from exc
    X = np.asarray(X)
    images = X.reshape(-1, 28, 28).astype(np.uint8)
    target = np.asarray(y).astype(np.int64)
    if images.shape[0] != 70000:
        raise ValueError(
            f"OpenML's mnist_784 returned {images.shape[0]} images; expected 70,000."
        )
    if kind == "train":
        sl, n_train = slice(0, _N_MNIST_TRAIN), _N_MNIST_TRAIN
    elif kind == "test":
        sl, n_train = slice(_N_MNIST_TRAIN, None), 0
    else:
        sl, n_train = slice(None), _N_MNIST_TRAIN
    return _bunch(images[sl], target[sl], kind, n_train, "openml")
