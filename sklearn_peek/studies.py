"""The paper's case studies: CNNs trained badly on purpose, and their rank.

- :class:`LeNetClassifier`: a scikit-learn classifier that trains a
  LeNet-style CNN in torch, optionally with a *degradation* of its training
  (less data per class, fewer classes, class-sorted order, fewer epochs,
  noisy labels).
- :func:`degraded_training_set` and :func:`epoch_order`: the degradations as
  plain functions, so what a network saw can be checked directly.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import Bunch, check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from sklearn_peek import _criteria
from sklearn_peek._backend import resolve_device, to_numpy
from sklearn_peek._coupled_nmf import check_ranks
from sklearn_peek._progress import collect, progress_bar
from sklearn_peek._validation import (
    Interval,
    caller_stacklevel,
    check_finite,
    did_you_mean,
    is_integral,
    muted,
    validate_params,
)

__all__ = [
    "CASE_STUDIES",
    "DEFAULT_LAYERS",
    "DEFAULT_RANKS",
    "DEGRADATIONS",
    "PRESETS",
    "LeNetClassifier",
    "correlations",
    "degraded_training_set",
    "digits_split",
    "epoch_order",
    "run_case_study",
    "run_paper_studies",
]

DEGRADATIONS = (None, "fraction", "classes", "unshuffled", "epochs", "label_noise")

# torch's global generator is seeded to build a network: fits running in
# threads at once (GridSearchCV under joblib's threading backend) would
# interleave their draws, so they build one at a time.
_SEEDED_BUILD = threading.Lock()

_LEVEL_HELP = {
    "fraction": "a fraction in (0, 1] of the training images kept per class",
    "classes": "an integer >= 1, the number of classes kept",
    "unshuffled": "None or a fraction in [0, 1] of the samples presented in "
    "class-sorted order (1 or None: fully sorted)",
    "epochs": "an integer >= 0, the number of epochs (overrides epochs)",
    "label_noise": "a fraction in [0, 1] of training labels replaced by another class",
}


def _is_real(v):
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _check_degradation(degradation, level):
    """Validate a (degradation, level) pair; return the level as used."""
    if degradation not in DEGRADATIONS:
        raise ValueError(
            f"degradation={degradation!r} is not valid; expected one of "
            f"{list(DEGRADATIONS)}."
        )
    if degradation is None:
        if level is not None:
            raise ValueError(
                f"level={level!r} was given but degradation=None; set a degradation "
                f"(one of {list(DEGRADATIONS[1:])}) or leave level=None."
            )
        return None
    help_ = _LEVEL_HELP[degradation]
    if degradation == "unshuffled":
        if level is None:
            return 1.0
        if not _is_real(level) or not 0 <= level <= 1:
            raise ValueError(
                f"level={level!r} is not valid for degradation='unshuffled'; "
                f"expected {help_}."
            )
        return float(level)
    if level is None:
        raise ValueError(f"degradation={degradation!r} needs a level: {help_}.")
    if degradation == "fraction":
        ok = _is_real(level) and 0 < level <= 1
    elif degradation == "label_noise":
        ok = _is_real(level) and 0 <= level <= 1
    elif degradation == "classes":
        ok = is_integral(level) and level >= 1
    else:  # epochs
        ok = is_integral(level) and level >= 0
    if not ok:
        raise ValueError(
            f"level={level!r} is not valid for degradation={degradation!r}; "
            f"expected {help_}."
        )
    return float(level) if degradation in ("fraction", "label_noise") else int(level)


def degraded_training_set(y, degradation=None, level=None, *, random_state=None):
    """Which training samples a degraded network sees, and with which labels.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels of the full training set.
    degradation : {None, "fraction", "classes", "unshuffled", "epochs", \
"label_noise"}, default=None
        ``"fraction"`` keeps ``ceil(level * n_c)`` randomly chosen samples of
        each class ``c`` (at least one); ``"classes"`` keeps all samples of
        ``level`` randomly chosen classes; ``"label_noise"`` keeps every
        sample but gives a fraction ``level`` of them (chosen at random) a
        label drawn uniformly from the *other* classes. ``None``,
        ``"unshuffled"`` and ``"epochs"`` keep everything (they act on the
        order and the number of passes; see :func:`epoch_order`). A level
        that keeps every sample (``fraction`` 1.0, ``classes`` all of them,
        ``label_noise`` 0.0) draws nothing, so the network trained is the one
        ``degradation=None`` trains. A ``label_noise`` level that rounds to
        no label replaced (``round(level * n) == 0``) warns.
    level : float or int, default=None
        The strength of the degradation; see :class:`LeNetClassifier`.
    random_state : int, RandomState, Generator or None
        Seed of the random choices.

    Returns
    -------
    Bunch
        ``index``: sorted positions into ``y`` of the kept samples;
        ``target``: the labels used for training (``y[index]`` except for
        label noise); ``classes_kept``: the classes present in ``index``;
        ``noisy``: boolean mask over ``index`` of relabelled samples.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek.studies import degraded_training_set
    >>> y = np.repeat([0, 1, 2], 10)
    >>> kept = degraded_training_set(y, "fraction", 0.3, random_state=0)
    >>> np.bincount(y[kept.index]).tolist()
    [3, 3, 3]
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(
            f"y must be a non-empty 1-D array of labels; got shape {y.shape}."
        )
    level = _check_degradation(degradation, level)
    rng = _as_generator(random_state)
    classes = np.unique(y)
    index = np.arange(y.size)
    target = y.copy()
    noisy = np.zeros(y.size, dtype=bool)
    if degradation == "fraction":
        keep = []
        for c in classes:
            members = np.flatnonzero(y == c)
            k = max(1, math.ceil(level * members.size - 1e-9))
            # all of a class: no draw, so that level=1.0 leaves the random
            # stream, hence the epoch order, as degradation=None does
            keep.append(
                members if k >= members.size else rng.choice(members, k, replace=False)
            )
        index = np.sort(np.concatenate(keep))
        target = y[index]
        noisy = noisy[index]
    elif degradation == "classes":
        if level > classes.size:
            raise ValueError(
                f"level={level!r} classes asked for with degradation='classes', but y "
                f"has only {classes.size} classes; expected 1 <= level <= "
                f"{classes.size}."
            )
        chosen = (
            classes
            if level == classes.size  # all of them: no draw, as for fraction
            else np.sort(rng.choice(classes, size=level, replace=False))
        )
        index = np.flatnonzero(np.isin(y, chosen))
        target = y[index]
        noisy = noisy[index]
    elif degradation == "label_noise" and level > 0:
        if classes.size < 2:
            raise ValueError("degradation='label_noise' needs at least 2 classes in y.")
        n_noisy = round(level * y.size)
        if n_noisy == 0:
            warnings.warn(
                f"degradation='label_noise', level={level!r} of {y.size} labels "
                "rounds to 0 labels replaced: the training set is not degraded.",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )
        flip = rng.choice(y.size, size=n_noisy, replace=False)
        pos = np.searchsorted(classes, y[flip])
        # shift by 1..n_classes-1: uniformly one of the *other* classes.
        shift = rng.integers(1, classes.size, size=n_noisy)
        target[flip] = classes[(pos + shift) % classes.size]
        noisy[flip] = True
    return Bunch(
        index=index,
        target=target,
        classes_kept=np.unique(y[index]),
        noisy=noisy,
    )


def epoch_order(target, degradation=None, level=None, *, random_state=None):
    """Order in which the training samples are presented in one epoch.

    Parameters
    ----------
    target : array-like of shape (n,)
        Labels of the samples that are trained on.
    degradation, level
        As in :class:`LeNetClassifier`. Only ``"unshuffled"`` changes the
        order: the samples are sorted by class (stable, so within a class the
        original order is kept) and then a fraction ``1 - level`` of the
        positions, chosen at random, are shuffled among themselves. ``level=1``
        (or None) is fully class-sorted, ``level=0`` a plain shuffle; a level
        below 1 that leaves fewer than 2 positions to shuffle warns (the order
        is then fully class-sorted). Every other case is a plain random
        permutation.
    random_state : int, RandomState, Generator or None
        Seed of the shuffle.

    Returns
    -------
    ndarray of int
        A permutation of ``range(n)``.

    Examples
    --------
    >>> from sklearn_peek.studies import epoch_order
    >>> epoch_order([2, 0, 1, 0], "unshuffled").tolist()
    [1, 3, 2, 0]
    """
    target = np.asarray(target)
    if target.ndim != 1 or target.size == 0:
        raise ValueError(
            f"target must be a non-empty 1-D array of labels; got shape {target.shape}."
        )
    level = _check_degradation(degradation, level)
    rng = _as_generator(random_state)
    n = target.size
    if degradation != "unshuffled":
        return rng.permutation(n)
    order = np.argsort(target, kind="stable")
    n_free = round((1.0 - level) * n)
    if n_free <= 1 and level < 1:
        warnings.warn(
            f"degradation='unshuffled', level={level!r} of {n} samples leaves "
            f"{n_free} position(s) to shuffle: the order is fully class-sorted, "
            "as at level=1.",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    if n_free > 1:
        pos = np.sort(rng.choice(n, size=n_free, replace=False))
        order[pos] = order[pos[rng.permutation(n_free)]]
    return order


def _as_generator(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    return np.random.default_rng(seed)


def _seeds(random_state):
    """Two independent integer seeds (data, torch) from a random_state."""
    rs = check_random_state(random_state)
    return int(rs.randint(np.iinfo(np.int32).max)), int(
        rs.randint(np.iinfo(np.int32).max)
    )


class LeNetClassifier(ClassifierMixin, BaseEstimator):
    """A LeNet-style CNN as a scikit-learn classifier, with optional degraded training.

    The network (built by :mod:`sklearn_peek._lenet`) is sized to the input:
    3x3 kernels for small images such as the 8x8 digits, the classic LeNet-5
    for 1x28x28 MNIST and 3x32x32 images. Its named submodules are ``conv1,
    relu1, pool1, conv2, relu2, pool2, fc1, relu3, fc2, relu4, fc3``. It is
    trained with Adam on the cross-entropy loss.

    Parameters
    ----------
    epochs : int, default=10
        Passes over the training data; 0 leaves the network untrained.
    batch_size : int, default=64
        Mini-batch size.
    lr : float, default=3e-3
        Adam learning rate.
    input_shape : tuple of int, default=None
        ``(channels, height, width)`` of one image. Inferred from 4-D ``X``
        of shape (n, C, H, W) (or 3-D (n, H, W): one channel); required for
        flat 2-D ``X``.
    degradation : {None, "fraction", "classes", "unshuffled", "epochs", \
"label_noise"}, default=None
        How training is made worse on purpose (the paper's case studies).
    level : float or int, default=None
        Strength of the degradation:

        - ``"fraction"``: fraction in (0, 1] of the training images kept per class;
        - ``"classes"``: number of classes kept (randomly chosen; the output
          layer still has one unit per class in ``y``);
        - ``"unshuffled"``: fraction in [0, 1] of the samples presented in
          class-sorted order, the rest shuffled (None means 1: fully sorted);
        - ``"epochs"``: number of epochs (overrides ``epochs``);
        - ``"label_noise"``: fraction in [0, 1] of labels replaced by another class.
    random_state : int, RandomState or None, default=None
        Seeds the weight initialisation (torch, inside a forked RNG so the
        global torch state is untouched), the data choices and the shuffles.
        The same seed gives the same network; for a fixed seed the initial
        weights do not depend on the degradation.
    device : None, str or torch.device, default=None
        Where to train, via :func:`sklearn_peek._backend.resolve_device`
        (None: CPU).
    verbose : int, default=0
        Print the loss after each epoch when > 0.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network, in eval mode, on the CPU.
    classes_ : ndarray
        Class labels (from ``y``; one output unit each).
    input_shape_ : tuple of int
    n_features_in_ : int
        ``C * H * W``.
    history_ : list of float
        Mean training loss of each epoch.
    n_epochs_ : int
        Epochs actually run.
    train_index_ : ndarray
        Positions in ``X`` of the samples trained on.
    train_target_ : ndarray
        The labels trained on (differ from ``y[train_index_]`` under label noise).
    train_order_ : ndarray
        Positions in ``X`` in the order presented in the first epoch.
    n_train_seen_ : int
        ``len(train_index_)``.
    classes_seen_ : ndarray
        Classes present in the training subset.
    fit_time_ : float
        Seconds spent in ``fit``.

    Examples
    --------
    >>> from sklearn_peek.datasets import load_digits_images
    >>> from sklearn_peek.studies import LeNetClassifier
    >>> d = load_digits_images()
    >>> clf = LeNetClassifier(epochs=10, random_state=0)
    >>> clf = clf.fit(d.images[:1000], d.target[:1000])
    >>> clf.score(d.images[1000:], d.target[1000:]) > 0.8
    True
    """

    _parameter_constraints: ClassVar[dict] = {
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "input_shape": "no_validation",  # with X
        "degradation": "no_validation",  # with level: _check_degradation
        "level": "no_validation",
        "random_state": ["random_state"],
        "device": "no_validation",  # resolve_device
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        epochs=10,
        batch_size=64,
        lr=3e-3,
        input_shape=None,
        degradation=None,
        level=None,
        random_state=None,
        device=None,
        verbose=0,
    ):
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.input_shape = input_shape
        self.degradation = degradation
        self.level = level
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # -- validation ---------------------------------------------------------
    def _check_params(self):
        validate_params(self)
        return _check_degradation(self.degradation, self.level)

    def _shape_from_param(self):
        shape = self.input_shape
        if shape is None:
            return None
        try:
            shape = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            shape = None
        if shape is None or len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"input_shape={self.input_shape!r} must be a tuple (channels, height, "
                "width) of positive integers, e.g. (1, 8, 8)."
            )
        return shape

    def _validate_X(self, X, *, fitting):
        import scipy.sparse as sp

        if sp.issparse(X):
            raise ValueError(
                f"X is a scipy sparse matrix of shape {X.shape}; expected dense "
                "images (X.toarray())."
            )
        X = to_numpy(X)
        if getattr(X, "dtype", None) is not None and X.dtype == object:
            X = np.asarray(X, dtype=np.float32)
        X = np.asarray(X)
        if not np.issubdtype(X.dtype, np.number) or np.issubdtype(
            X.dtype, np.complexfloating
        ):
            raise ValueError(f"X must hold real numbers; got dtype {X.dtype}.")
        X = X.astype(np.float32, copy=False)
        if X.ndim not in (2, 3, 4):
            raise ValueError(
                f"X has shape {X.shape}; expected images (n, C, H, W) or (n, H, W), "
                "or flat rows (n, C*H*W) together with input_shape."
            )
        if X.shape[0] == 0:
            raise ValueError(f"X has shape {X.shape}: no samples.")
        if fitting:
            shape = self._shape_from_param()
            if X.ndim == 2:
                if shape is None:
                    raise ValueError(
                        f"X is 2-D with shape {X.shape}; give input_shape=(C, H, W) "
                        "with "
                        f"C*H*W = {X.shape[1]}, or pass images of shape (n, C, H, W)."
                    )
            else:
                data_shape = X.shape[1:] if X.ndim == 4 else (1, *X.shape[1:])
                if shape is not None and tuple(shape) != tuple(data_shape):
                    raise ValueError(
                        f"input_shape={self.input_shape!r} does not match the images "
                        "in "
                        f"X, of shape {tuple(data_shape)}."
                    )
                shape = tuple(int(v) for v in data_shape)
        else:
            shape = self.input_shape_
        if X.ndim == 2 and X.shape[1] != math.prod(shape):
            raise ValueError(
                f"X has {X.shape[1]} features per row but input_shape={shape} needs "
                f"{math.prod(shape)}."
            )
        if X.ndim == 2:
            X = X.reshape((X.shape[0], *shape))
        elif X.ndim == 3:
            X = X[:, None]
        if X.shape[1:] != tuple(shape):
            raise ValueError(
                f"X holds images of shape {X.shape[1:]}; this classifier was fitted on "
                f"images of shape {shape}."
            )
        check_finite(X.reshape(len(X), -1), name="X", what="images, a row per image")
        return np.ascontiguousarray(X), shape

    # -- fit / predict ------------------------------------------------------
    def fit(self, X, y=None):
        """Train the network on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : array-like of shape (n, C, H, W), (n, H, W) or (n, C*H*W)
            Training images (float32 inside).
        y : array-like of shape (n,)
            Class labels.

        Returns
        -------
        self
        """
        import torch

        from sklearn_peek._lenet import build_lenet, lenet_feature_shape

        start = time.perf_counter()
        level = self._check_params()
        dev = resolve_device(self.device) or torch.device("cpu")
        if y is None:
            raise ValueError(
                "LeNetClassifier.fit requires y (one class label per image), but "
                "y is None."
            )
        X, shape = self._validate_X(X, fitting=True)
        y = to_numpy(y)
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"y has shape {y.shape}; expected one label per image, "
                f"shape ({X.shape[0]},)."
            )
        check_classification_targets(y)
        lenet_feature_shape(shape)  # clear error for too-small images

        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"y holds a single class ({classes.tolist()[0]!r}); expected at "
                "least 2 classes to train a classifier."
            )
        self.classes_ = classes
        self.input_shape_ = shape
        self.n_features_in_ = math.prod(shape)
        seed_data, seed_torch = _seeds(self.random_state)
        rng = np.random.default_rng(seed_data)

        kept = degraded_training_set(y_idx, self.degradation, level, random_state=rng)
        n_epochs = level if self.degradation == "epochs" else self.epochs
        self.train_index_ = kept.index
        self.train_target_ = self.classes_[kept.target]
        self.classes_seen_ = self.classes_[kept.classes_kept]
        self.n_train_seen_ = int(kept.index.size)
        self.n_epochs_ = int(n_epochs)

        with _SEEDED_BUILD, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_torch)
            module = build_lenet(shape, self.classes_.size)
        module = module.to(dev)
        Xt = torch.from_numpy(X[kept.index]).to(dev)
        yt = torch.from_numpy(kept.target.astype(np.int64)).to(dev)
        optimizer = torch.optim.Adam(module.parameters(), lr=self.lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        history = []
        module.train()
        for epoch in range(self.n_epochs_):
            order = epoch_order(kept.target, self.degradation, level, random_state=rng)
            if epoch == 0:
                self.train_order_ = kept.index[order]
            order_t = torch.from_numpy(order).to(dev)
            total = 0.0
            for lo in range(0, order.size, self.batch_size):
                batch = order_t[lo : lo + self.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(module(Xt[batch]), yt[batch])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * batch.numel()
            history.append(total / order.size)
            if not math.isfinite(history[-1]):
                # the weights are NaN or inf from here on: predictions would be
                raise ValueError(
                    f"LeNetClassifier.fit: training diverged, the loss of epoch "
                    f"{epoch + 1} is {history[-1]} with lr={self.lr!r}; expected a "
                    f"finite loss. Lower lr (e.g. lr={self.lr / 10:g}; the "
                    "default is 3e-3)."
                )
            if self.verbose:
                print(
                    f"[LeNetClassifier] epoch {epoch + 1}/{self.n_epochs_} "
                    f"loss {history[-1]:.4f}"
                )
        if self.n_epochs_ == 0:
            self.train_order_ = kept.index.copy()
        self.history_ = history
        self.module_ = module.to("cpu").eval()
        self.fit_time_ = time.perf_counter() - start
        return self

    def _logits(self, X):
        import torch

        check_is_fitted(self, "module_")
        X, _ = self._validate_X(X, fitting=False)
        out = []
        with torch.no_grad():
            for lo in range(0, X.shape[0], 1024):
                out.append(self.module_(torch.from_numpy(X[lo : lo + 1024])).numpy())
        return np.concatenate(out)

    def predict_proba(self, X):
        """Class probabilities: the softmax of the network's output.

        Parameters
        ----------
        X : array-like of shape (n, C, H, W), (n, H, W) or (n, C*H*W)
            Images of the shape seen in fit.

        Returns
        -------
        ndarray of shape (n, n_classes), float32
            One row per image, summing to 1; columns in the order of
            ``classes_``.
        """
        logits = self._logits(X)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X):
        """Most probable class of each image.

        Parameters
        ----------
        X : array-like
            Images, as for :meth:`predict_proba`.

        Returns
        -------
        ndarray of shape (n,)
            Labels from ``classes_``.
        """
        check_is_fitted(self, "module_")
        return self.classes_[np.argmax(self._logits(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.non_deterministic = self.random_state is None
        return tags


# ==========================================================================
# case-study runner
# ==========================================================================
DEFAULT_LAYERS = ("pool1", "pool2", "relu3", "relu4")
DEFAULT_RANKS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25)

#: Levels of each paper case study on the digits (worst first).
CASE_STUDIES = {
    "fraction": (0.01, 0.03, 0.1, 0.3, 1.0),
    "unshuffled": (1.0, 0.95, 0.8, 0.5, 0.0),
    "classes": (2, 4, 6, 8, 10),
    "epochs": (0, 1, 2, 4, 10),
}

#: Settings of :func:`run_paper_studies`.
PRESETS = {
    "quick": {
        "studies": {"epochs": (0, 1, 3, 10), "fraction": (0.01, 0.1, 1.0)},
        "seeds": (0,),
        "ranks": (1, 2, 3, 4, 6, 8, 10, 12, 15, 20),
        "criteria": _criteria.STUDY_CRITERIA,
        "cv": 3,
    },
    "full": {
        "studies": CASE_STUDIES,
        "seeds": (0, 1, 2),
        "ranks": DEFAULT_RANKS,
        "criteria": _criteria.STUDY_CRITERIA,
        "cv": 3,
    },
}


def digits_split(*, test_size=0.2, random_state=0):
    """The fixed train/test split of the digits used by the case studies.

    Parameters
    ----------
    test_size : float, default=0.2
        Fraction of the 1,797 images held out for testing.
    random_state : int, default=0
        Seeds the stratified split (0 gives the split the case studies use).

    Returns
    -------
    Bunch
        ``X_train, y_train, X_test, y_test`` (images float32 (n, 1, 8, 8)),
        stratified by class; 1,437 training and 360 test images by default.

    Examples
    --------
    >>> from sklearn_peek.studies import digits_split
    >>> d = digits_split()
    >>> d.X_train.shape, d.X_test.shape
    ((1437, 1, 8, 8), (360, 1, 8, 8))
    """
    from sklearn.model_selection import train_test_split

    from sklearn_peek.datasets import load_digits_images

    d = load_digits_images()
    Xtr, Xte, ytr, yte = train_test_split(
        d.images,
        d.target,
        test_size=test_size,
        random_state=random_state,
        stratify=d.target,
    )
    return Bunch(X_train=Xtr, y_train=ytr, X_test=Xte, y_test=yte)


def _check_data(data):
    if data is None:
        return digits_split()
    if isinstance(data, dict):
        keys = ("X_train", "y_train", "X_test", "y_test")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(
                f"data is missing {missing}; expected a mapping with keys {list(keys)} "
                "or a tuple (X_train, y_train, X_test, y_test)."
            )
        parts = [data[k] for k in keys]
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        parts = list(data)
    else:
        raise ValueError(
            f"data of type {type(data).__name__} is not understood; expected None "
            "(digits), a tuple (X_train, y_train, X_test, y_test) or a dict with "
            "those keys."
        )
    Xtr, ytr, Xte, yte = (np.asarray(to_numpy(p)) for p in parts)
    for nx, ny, Xp, yp in (
        ("X_train", "y_train", Xtr, ytr),
        ("X_test", "y_test", Xte, yte),
    ):
        if Xp.ndim < 3:
            raise ValueError(
                f"data: {nx} has shape {Xp.shape}; expected images (n, C, H, W) "
                "or (n, H, W)."
            )
        if yp.ndim != 1 or yp.shape[0] != Xp.shape[0]:
            raise ValueError(
                f"data: {ny} has shape {yp.shape}; expected ({Xp.shape[0]},), one "
                f"label per image of {nx}."
            )
    if Xtr.ndim == 3:
        Xtr = Xtr[:, None]
    if Xte.ndim == 3:
        Xte = Xte[:, None]
    if Xtr.shape[1:] != Xte.shape[1:]:
        raise ValueError(
            f"data: X_train images have shape {Xtr.shape[1:]} but X_test images "
            f"{Xte.shape[1:]}; they must match."
        )
    return Bunch(
        X_train=Xtr.astype(np.float32, copy=False),
        y_train=ytr,
        X_test=Xte.astype(np.float32, copy=False),
        y_test=yte,
    )


def _check_study_args(degradation, levels, seeds, layers, ranks, criteria, epochs):
    if degradation is None or degradation not in DEGRADATIONS:
        raise ValueError(
            f"degradation={degradation!r} is not valid; expected one of "
            f"{list(DEGRADATIONS[1:])}."
        )
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise ValueError(f"levels={levels!r} must be a list of levels.")
    levels = list(levels)
    if not levels:
        raise ValueError("levels=[] is empty; expected at least one level.")
    for lv in levels:
        _check_degradation(degradation, lv)
    if isinstance(seeds, Integral):
        seeds = [seeds]
    seeds = list(seeds)
    if not seeds or not all(is_integral(s) and s >= 0 for s in seeds):
        raise ValueError(f"seeds={seeds!r} must be a non-empty list of integers >= 0.")
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers or not all(isinstance(name, str) for name in layers):
        raise ValueError(f"layers={layers!r} must be a non-empty list of layer names.")
    ranks = sorted(check_ranks(ranks))
    if isinstance(criteria, str):
        criteria = [criteria]
    criteria = list(criteria)
    bad = [c for c in criteria if c not in _criteria.STUDY_CRITERIA]
    if not criteria or bad:
        raise ValueError(
            f"criteria={criteria!r} is not valid; expected a non-empty subset of "
            f"{list(_criteria.STUDY_CRITERIA)}."
        )
    if not is_integral(epochs) or epochs < 0:
        raise ValueError(f"epochs={epochs!r} must be an integer >= 0.")
    return levels, seeds, layers, ranks, criteria


def _check_layer_names(layers, data):
    """Fail before any training when a layer is not in the network."""
    from sklearn_peek._lenet import build_lenet

    names = [n for n, _ in build_lenet(data.X_train.shape[1:], 2).named_modules() if n]
    for layer in layers:
        if layer not in names:
            raise ValueError(
                f"layers contains {layer!r}, which is not a layer of the LeNet-style "
                f"network; expected names from {names}.{did_you_mean(layer, names)}"
            )


def _check_rank_limits(layers, data, ranks, criteria, params):
    """Fail before any training when ``ranks`` or ``cv`` exceed what the data
    allow (:class:`~sklearn_peek.SweepLimitError`, as the sweeps would raise
    after training).

    The layer widths do not depend on the training, so an untrained network
    gives them. Every layer is swept on the test images alone
    (``coupling="none"``, the baseline; the narrower matrix) and coupled with
    the input, under each scorer criterion the study runs.
    """
    from sklearn_peek._extract import LayerActivationExtractor
    from sklearn_peek._lenet import build_lenet
    from sklearn_peek._rank import RankQualityScorer

    X = data.X_test
    n = int(X.shape[0])
    net = build_lenet(X.shape[1:], len(np.unique(data.y_train))).eval()
    ext = LayerActivationExtractor(net, layers=list(layers), progress=False)
    blocks = ext.fit(X[:2]).block_sizes_
    scorer_criteria = ["bcv"] if "bcv" in criteria else []
    if {"elbow", "energy"} & set(criteria):
        scorer_criteria.append("elbow")  # one full-data sweep serves both
    for criterion in scorer_criteria:
        for coupling in ("none", "input"):
            sc = RankQualityScorer(
                criterion=criterion, coupling=coupling, ranks=list(ranks), **params
            )
            sc._check_sweep(n, blocks, f"the {n} test images", sc._validate_params())


# Columns describing each trained network, before the per-layer rank columns.
NETWORK_COLUMNS = ("degradation", "level", "seed", "accuracy", "n_train_seen", "epochs")


def _layer_columns(layers, criteria):
    cols = []
    for layer in layers:
        cols += [f"{layer}_{c}" for c in criteria]
        cols += [f"{layer}_{c}_alone" for c in criteria]
        cols.append(f"{layer}_rankme")
    return cols


def _sweep(A, blocks, layers, ranks, criteria, coupling, params, seed):
    """Selected rank per (layer, criterion) for one coupling; plus curves."""
    from sklearn_peek import _criteria
    from sklearn_peek._rank import RankQualityScorer

    out, curves = {}, {}
    common = dict(
        blocks=blocks,
        layers=list(layers),
        ranks=list(ranks),
        coupling=coupling,
        n_jobs=1,
        random_state=seed,
        progress=False,  # the study's own bar counts the networks
        **params,
    )
    # "energy threshold not reached" / "stopped at max_iter" are expected for
    # some of the badly trained networks; the table shows the outcome. Muted
    # in this thread only (the networks may be swept in joblib threads).
    with muted(ConvergenceWarning, _criteria.EnergyThresholdWarning):
        if "bcv" in criteria:
            sc = RankQualityScorer(criterion="bcv", **common).fit(A)
            for layer in layers:
                out[(layer, "bcv")] = sc.rank_[layer]
                curves[(layer, "bcv")] = sc.curves_[layer]
        if "elbow" in criteria or "energy" in criteria:
            # One full-data sweep serves both: elbow is the knee of its error
            # curve, energy the first rank reaching the threshold on it.
            sc = RankQualityScorer(criterion="elbow", **common).fit(A)
            res = sc.cv_results_
            thr = sc.energy_threshold
            for layer in layers:
                mask = res["layer"] == layer
                if "elbow" in criteria:
                    out[(layer, "elbow")] = sc.rank_[layer]
                    curves[(layer, "elbow")] = sc.curves_[layer]
                if "energy" in criteria:
                    energy = res["explained_energy"][mask]
                    out[(layer, "energy")] = _criteria.select_energy(
                        res["rank"][mask], energy, thr, layer=layer
                    )
                    curves[(layer, "energy")] = {
                        "ranks": res["rank"][mask],
                        "mean": energy,
                        "std": np.zeros_like(energy),
                        "selected": out[(layer, "energy")],
                        "criterion": "energy",
                    }
    return out, curves


def _network_job(
    degradation, level, seed, data, layers, ranks, criteria, epochs, params, sweep_seed
):
    """Train one network, measure it, extract its layers, sweep the ranks."""
    from sklearn_peek._backend import single_threaded
    from sklearn_peek._extract import LayerActivationExtractor
    from sklearn_peek._stats import effective_rank

    # one thread each (shared by the jobs of joblib's threading backend)
    with single_threaded():
        t0, c0 = time.perf_counter(), time.process_time()
        clf = LeNetClassifier(
            epochs=epochs, degradation=degradation, level=level, random_state=seed
        ).fit(data.X_train, data.y_train)
        t1, c1 = time.perf_counter(), time.process_time()
        accuracy = float(clf.score(data.X_test, data.y_test))
        ext = LayerActivationExtractor(clf.module_, layers=list(layers), progress=False)
        A = ext.fit(data.X_test).transform(data.X_test)
        t2, c2 = time.perf_counter(), time.process_time()
        blocks = ext.block_sizes_
        names = [n for n, _ in blocks if n != "input"]
        row = {
            "degradation": degradation,
            "level": level,
            "seed": seed,
            "accuracy": accuracy,
            "n_train_seen": clf.n_train_seen_,
            "epochs": clf.n_epochs_,
        }
        start = 0
        rankme = {}
        for name, size in blocks:
            if name != "input":
                rankme[name] = effective_rank(A[:, start : start + size])
            start += size
        t3, c3 = time.perf_counter(), time.process_time()
        coupled, curves = _sweep(
            A, blocks, names, ranks, criteria, "input", params, sweep_seed
        )
        t4, c4 = time.perf_counter(), time.process_time()
        alone, _ = _sweep(A, blocks, names, ranks, criteria, "none", params, sweep_seed)
        t5, c5 = time.perf_counter(), time.process_time()
    for layer, name in zip(layers, names):
        for c in criteria:
            row[f"{layer}_{c}"] = coupled[(name, c)]
        for c in criteria:
            row[f"{layer}_{c}_alone"] = alone[(name, c)]
        row[f"{layer}_rankme"] = rankme[name]
    phases = ["training", "extraction", "rankme", "sweep_coupled", "sweep_alone"]
    walls = [t0, t1, t2, t3, t4, t5]
    cpus = [c0, c1, c2, c3, c4, c5]
    timings = {p: walls[i + 1] - walls[i] for i, p in enumerate(phases)}
    # CPU seconds of this worker: what the phases cost on an idle machine,
    # whatever else is running at the same time.
    timings.update({f"{p}_cpu": cpus[i + 1] - cpus[i] for i, p in enumerate(phases)})
    curves = {
        (layer, c): curves[(name, c)]
        for layer, name in zip(layers, names)
        for c in criteria
    }
    return row, timings, curves


def _concat_tables(tables):
    """Stack tables made by ``_to_frame`` (DataFrames, or dicts without pandas)."""
    if isinstance(tables[0], dict):
        return {k: [v for t in tables for v in t[k]] for k in tables[0]}
    import pandas as pd

    return pd.concat(tables, ignore_index=True)


def _to_frame(rows, columns):
    table = {c: [r[c] for r in rows] for c in columns}
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dev dependency
        return table
    return pd.DataFrame(table, columns=columns)


def _column(table, name):
    return np.asarray(table[name], dtype=float)


# How the notes of correlations() name a measure ("undefined: the selected
# rank is constant", i.e. the same for every network of the group).
_MEASURE_NAMES = {
    "coupled": "the selected rank",
    "alone": "the selected rank",
    "rankme": "the effective rank",
}


def correlations(
    table,
    *,
    layers,
    criteria,
    group="degradation",
    n_boot=2000,
    confidence=0.95,
    random_state=0,
):
    """Spearman rho(rank, accuracy) per group, layer and measure, with bootstrap CIs.

    Parameters
    ----------
    table : DataFrame or dict of lists
        A case-study table (see :func:`run_case_study`).
    layers, criteria : list of str
        The layers and criteria whose columns are in the table.
    group : str or None, default="degradation"
        Column to group the networks by; None pools all rows.
    n_boot, confidence, random_state
        Passed to the bootstrap (:func:`sklearn_peek._stats.spearman_ci`).

    Returns
    -------
    DataFrame or dict of lists
        One row per (group, layer, measure): ``measure`` is a criterion
        (coupled with the input), ``<criterion>_alone`` (layer alone) or
        ``rankme`` (effective rank of the layer alone); columns ``rho``,
        ``ci_low``, ``ci_high``, ``n``, ``note`` (why rho or its interval is
        undefined, if it is: e.g. "undefined: the selected rank is constant",
        the same for every network of the group).

    Examples
    --------
    >>> from sklearn_peek.studies import correlations
    >>> table = {
    ...     "degradation": ["epochs"] * 4,
    ...     "accuracy": [0.2, 0.5, 0.8, 0.9],
    ...     "pool1_bcv": [1, 2, 4, 5],
    ...     "pool1_bcv_alone": [2, 2, 3, 6],
    ...     "pool1_rankme": [3.0, 2.5, 4.1, 4.0],
    ... }
    >>> out = correlations(table, layers=["pool1"], criteria=["bcv"], n_boot=200)
    >>> list(out["measure"]), [round(float(r), 2) for r in out["rho"]]
    (['bcv', 'bcv_alone', 'rankme'], [1.0, 0.95, 0.6])
    """
    from sklearn_peek._stats import SpearmanResult, spearman_ci

    groups = (
        list(table[group]) if group is not None else ["all"] * len(table["accuracy"])
    )
    acc = _column(table, "accuracy")
    kinds = {c: "coupled" for c in criteria}
    kinds.update({f"{c}_alone": "alone" for c in criteria}, rankme="rankme")
    rows = []
    for g in dict.fromkeys(groups):
        mask = np.array([x == g for x in groups])
        n_g = int(mask.sum())
        for layer in layers:
            for m, kind in kinds.items():
                vals = _column(table, f"{layer}_{m}")[mask]
                if n_g < 3:
                    res = SpearmanResult(
                        np.nan, np.nan, np.nan, n_g, 0, "fewer than 3 networks"
                    )
                else:
                    res = spearman_ci(
                        vals,
                        acc[mask],
                        n_boot=n_boot,
                        confidence=confidence,
                        random_state=random_state,
                        labels=(_MEASURE_NAMES[kind], "the accuracy"),
                    )
                rows.append(
                    {
                        "degradation": g,
                        "layer": layer,
                        "measure": m,
                        "kind": kind,
                        "rho": res[0],
                        "ci_low": res[1],
                        "ci_high": res[2],
                        "n": res[3],
                        "note": res[5],
                    }
                )
    cols = [
        "degradation",
        "layer",
        "measure",
        "kind",
        "rho",
        "ci_low",
        "ci_high",
        "n",
        "note",
    ]
    return _to_frame(rows, cols)


def run_case_study(
    degradation,
    levels,
    *,
    seeds=(0, 1, 2),
    data=None,
    layers=DEFAULT_LAYERS,
    ranks=DEFAULT_RANKS,
    criteria=_criteria.STUDY_CRITERIA,
    epochs=10,
    cv=3,
    max_iter=100,
    tol=1e-3,
    scorer_params=None,
    n_boot=2000,
    n_jobs=None,
    random_state=0,
    progress=None,
):
    """Train degraded networks, select the rank of their layers, relate it to accuracy.

    For every ``level`` and ``seed`` a :class:`LeNetClassifier` is trained
    with ``degradation=degradation, level=level``; its test accuracy is the
    only use of labels. The layers are extracted on the (unlabelled) test
    images with :class:`~sklearn_peek.LayerActivationExtractor` and swept with
    :class:`~sklearn_peek.RankQualityScorer`: coupled with the input
    (``coupling="input"``), and alone (``coupling="none"``) as a baseline. The
    effective rank (RankMe) of each layer is a second label-free baseline.

    Parameters
    ----------
    degradation : {"fraction", "classes", "unshuffled", "epochs", "label_noise"}
        See :class:`LeNetClassifier`.
    levels : list
        Levels of the degradation (see ``level`` in :class:`LeNetClassifier`).
    seeds : list of int, default=(0, 1, 2)
        One network per (level, seed); the seed fixes the initial weights, the
        data choices and the order of training.
    data : None, tuple or dict, default=None
        ``(X_train, y_train, X_test, y_test)`` images; None uses
        :func:`digits_split` (1,437 train / 360 test digits).
    layers : list of str, default=("pool1", "pool2", "relu3", "relu4")
        Layers to probe (after pool1, pool2, fc1 and fc2).
    ranks : list of int, default=DEFAULT_RANKS
        Rank grid of the sweeps.
    criteria : subset of {"bcv", "elbow", "energy"}
        Rank-selection criteria. elbow and energy share one full-data sweep.
    epochs : int, default=10
        Epochs of every network (the "epochs" degradation overrides it).
    cv, max_iter, tol : int, int, float
        Passed to the scorer (few folds and a loose tolerance keep the study
        fast; rank selection is insensitive to them on these data).
    scorer_params : dict, default=None
        More :class:`~sklearn_peek.RankQualityScorer` parameters
        (e.g. ``{"energy_threshold": 0.95, "solver": "mu"}``). Those the
        study sets itself (``blocks``, ``layers``, ``ranks``, ``criterion``,
        ``coupling``, ``n_jobs``, ``random_state``, ``progress``,
        ``extractor``) raise a ValueError before any training.
    n_boot : int, default=2000
        Bootstrap resamples of the correlation intervals.
    n_jobs : int or None, default=None
        Networks processed in parallel with joblib (each with one thread).
    random_state : int, default=0
        Seeds the scorers' row folds, column groups and fits (together with
        the network's seed: network ``s`` is swept with seed
        ``random_state * 1000003 + s``) and the bootstrap. The networks
        themselves depend only on ``seeds``.
    progress : bool or None, default=None
        Show a tqdm progress bar over the networks: True always, False never,
        None (as the estimators) when standard error is a terminal or the
        code runs in a Jupyter notebook, unless the ``CI`` environment
        variable is set or this is a joblib worker process.

    Returns
    -------
    Bunch
        ``table``: one row per network (pandas DataFrame, or dict of lists
        without pandas): ``degradation, level, seed, accuracy, n_train_seen,
        epochs`` and, per layer, ``<layer>_<criterion>`` (coupled rank),
        ``<layer>_<criterion>_alone`` and ``<layer>_rankme``;
        ``correlations``: see :func:`correlations`; ``timings``: seconds
        summed over networks (``training, extraction, rankme, sweep_coupled,
        sweep_alone``) and ``wall``; ``curves``: dict (level, seed) -> dict
        (layer, criterion) -> curve of the coupled sweeps; ``settings``.

    Raises
    ------
    SweepLimitError
        Before any network is trained, when ``cv`` exceeds the test images
        or the largest of ``ranks`` exceeds what a layer's matrix allows
        (its columns, or the rows a fit sees); the sweeps would raise it
        after training otherwise.

    Examples
    --------
    >>> from sklearn_peek.studies import run_case_study
    >>> res = run_case_study("epochs", [0, 1, 5], seeds=[0], layers=["relu3"],
    ...                      ranks=[1, 2, 4, 8], criteria=["elbow"])
    >>> res.table[["level", "accuracy", "relu3_elbow"]].shape
    (3, 3)
    """
    from joblib import Parallel, delayed

    levels, seeds, layers, ranks, criteria = _check_study_args(
        degradation, levels, seeds, layers, ranks, criteria, epochs
    )
    if not is_integral(random_state) or random_state < 0:
        raise ValueError(f"random_state={random_state!r} must be an integer >= 0.")
    data = _check_data(data)
    _check_layer_names(layers, data)
    params = {"cv": cv, "max_iter": max_iter, "tol": tol}
    if scorer_params:
        clash = sorted(
            set(scorer_params)
            & {
                "blocks",
                "layers",
                "ranks",
                "criterion",
                "coupling",
                "n_jobs",
                "random_state",
                "progress",  # the study's bar counts the networks
                "extractor",  # the sweeps take activations (blocks), not images
            }
        )
        if clash:
            raise ValueError(
                f"scorer_params={scorer_params!r} sets {clash}, which run_case_study "
                "controls; use its own arguments instead."
            )
        params.update(scorer_params)
    _check_rank_limits(layers, data, ranks, criteria, params)
    jobs = [(lv, s) for lv in levels for s in seeds]
    wall = time.perf_counter()
    tasks = (
        delayed(_network_job)(
            degradation,
            lv,
            s,
            data,
            layers,
            ranks,
            criteria,
            epochs,
            {**params},
            # random_state=0 keeps the scorer seed equal to the network seed
            (random_state * 1_000_003 + s) % (2**31 - 1),
        )
        for lv, s in jobs
    )
    bar = progress_bar(
        progress, total=len(jobs), desc=f"case study {degradation}", unit="network"
    )
    results = collect(Parallel(n_jobs=n_jobs, return_as="generator")(tasks), bar)
    wall = time.perf_counter() - wall

    columns = [*NETWORK_COLUMNS, *_layer_columns(layers, criteria)]
    rows = [r for r, _, _ in results]
    table = _to_frame(rows, columns)
    timings = {k: float(sum(t[k] for _, t, _ in results)) for k in results[0][1]}
    timings["wall"] = wall
    timings["n_networks"] = len(jobs)
    curves = {(lv, s): c for (lv, s), (_, _, c) in zip(jobs, results)}
    corr = correlations(
        table,
        layers=layers,
        criteria=criteria,
        n_boot=n_boot,
        random_state=random_state,
    )
    settings = {
        "degradation": degradation,
        "levels": levels,
        "seeds": seeds,
        "layers": layers,
        "ranks": ranks,
        "criteria": criteria,
        "epochs": epochs,
        "scorer": params,
        "n_boot": n_boot,
        "n_train": int(data.X_train.shape[0]),
        "n_test": int(data.X_test.shape[0]),
    }
    return Bunch(
        table=table,
        correlations=corr,
        timings=timings,
        curves=curves,
        settings=settings,
    )


def run_paper_studies(
    preset="quick", *, data=None, n_jobs=None, progress=None, random_state=0
):
    """Run the paper's case studies with a preset.

    Parameters
    ----------
    preset : {"quick", "full"} or dict, default="quick"
        ``"quick"``: two short studies (epochs: 4 levels; fraction: 3 levels;
        one seed), for the demo. ``"full"``: the four case studies of
        :data:`CASE_STUDIES` (fraction, unshuffled, classes, epochs; five
        levels each) with three seeds: 60 networks. A dict with the keys of
        :data:`PRESETS` entries is used as is.
    data, n_jobs, progress, random_state
        As in :func:`run_case_study`.

    Returns
    -------
    Bunch
        ``table`` (all networks), ``correlations`` (per degradation, plus
        ``"all"``: every network pooled), ``timings`` (summed over studies,
        and ``per_study``), ``studies`` (the :func:`run_case_study` results).
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(
                f"preset={preset!r} is not valid; expected {list(PRESETS)}."
            )
        settings = PRESETS[preset]
    elif isinstance(preset, dict):
        settings = preset
    else:
        raise ValueError(f"preset={preset!r} must be 'quick', 'full' or a dict.")
    allowed = {
        "studies",
        "seeds",
        "ranks",
        "criteria",
        "cv",
        "layers",
        "epochs",
        "max_iter",
        "tol",
        "scorer_params",
        "n_boot",
    }
    unknown = sorted(set(settings) - allowed)
    if unknown or "studies" not in settings or not settings["studies"]:
        raise ValueError(
            f"preset has keys {sorted(settings)}; expected a non-empty 'studies' "
            f"mapping (degradation -> levels) and optional keys {sorted(allowed)}"
            + (f"; unknown: {unknown}." if unknown else ".")
        )
    data = _check_data(data)
    options = {k: v for k, v in settings.items() if k != "studies"}
    studies = {}
    for deg, levels in settings["studies"].items():
        studies[deg] = run_case_study(
            deg,
            levels,
            data=data,
            n_jobs=n_jobs,
            progress=progress,
            random_state=random_state,
            **options,
        )
    first = next(iter(studies.values()))
    layers, criteria = first.settings["layers"], first.settings["criteria"]
    table = _concat_tables([s.table for s in studies.values()])
    pooled = correlations(
        table,
        layers=layers,
        criteria=criteria,
        group=None,
        n_boot=first.settings["n_boot"],
        random_state=random_state,
    )
    corr = _concat_tables([*(s.correlations for s in studies.values()), pooled])
    keys = [k for k in first.timings if k != "n_networks"]
    timings = {k: float(sum(s.timings[k] for s in studies.values())) for k in keys}
    timings["n_networks"] = sum(s.timings["n_networks"] for s in studies.values())
    timings["per_study"] = {d: s.timings for d, s in studies.items()}
    return Bunch(
        table=table,
        correlations=corr,
        timings=timings,
        studies=studies,
        preset=preset if isinstance(preset, str) else "custom",
    )
