"""CoupledNMF: non-negative factorization of several column blocks with one
shared sample factor.

The estimator validates its input, resolves blocks, weights and the
initialization, then dispatches to the solver functions of
:mod:`sklearn_peek._solvers`; it stores the results as ``*_`` attributes.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    clone,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array, check_random_state

from . import _solvers
from ._backend import (
    _torch,
    compute_tensor,
    is_torch_tensor,
    like_input,
    numpy_dtype,
    resolve_device,
    select_compute_device,
    sequence_items,
    to_numpy,
)
from ._validation import (
    Interval,
    StrOptions,
    _fit_context,
    aligned,
    caller_stacklevel,
    check_finite,
    check_finite_nonneg,
    check_is_fitted,
    check_no_underflow,
    check_numeric_columns,
    check_weights,
    column_block_sq_norms,
    did_you_mean,
    is_integral,
    validate_data,
    validate_params,
    warn,
)

# Final block errors below this many eps of the block's squared norm are
# computed from the explicit residual (see CoupledNMF._set_errors).
_EXACT_ERRORS = 1e4
# Fraction of each block's columns held out by ``score`` (bi-cross-validation).
_SCORE_HOLDOUT = 0.5
# Seed of the held-in / held-out column split when random_state is not an int.
_SCORE_SEED = 0


def _block_sums(X, slices, *, ord="fro"):
    """Per-block squared norms (or sums) in float64, NumPy arrays or tensors."""
    if not is_torch_tensor(X):
        return column_block_sq_norms(X, slices, ord=ord)
    return _per_block(_solvers.column_sums64(X, square=(ord == "fro")), slices)


def _per_block(col, slices):
    """Per-column sums ``col`` summed over each block's columns."""
    return np.array([col[sl].sum() for sl in slices])


def _on(a, X):
    """NumPy ``a`` moved next to ``X`` (a tensor) in X's dtype; else unchanged."""
    if is_torch_tensor(X):
        return _solvers._from_host(a, X)
    return a


def _host_array(a, dtype):
    """A tensor or array as a NumPy array of ``dtype`` on the host."""
    return np.ascontiguousarray(to_numpy(a), dtype=dtype)


def _init_scaling(X, d, kl):
    """Column scaling ``s`` of the initialisations and the mean of ``X * s``.

    The NNDSVD starts come from the SVD of the weighted matrix ``X * s``
    (``s = d ** (1 / beta)``); its mean fills their zeros. Returns ``(s, y_mean)``
    with ``s`` a NumPy array of X's dtype.
    """
    n, p = X.shape
    dt = numpy_dtype(X)
    beta = 1.0 if kl else 2.0
    s = (d.astype(np.float64) ** (1.0 / beta)).astype(dt)
    # Mean of the weighted matrix Y = X * s, without forming it.
    if is_torch_tensor(X):
        col_sums = _solvers.column_sums64(X, square=False)
    else:
        col_sums = np.asarray(X.sum(axis=0, dtype=np.float64)).ravel()
    return s, float(col_sums @ s.astype(np.float64)) / (n * p)


def _host_svd(svd, dtype):
    """``(U, S, Vt)`` as host arrays for :func:`_solvers.nndsvd` (S keeps its dtype)."""
    U, S, Vt = svd
    return _host_array(U, dtype), _host_array(S, numpy_dtype(S)), _host_array(Vt, dtype)


def _initialize_ranks(models, X, d):
    """``[m._initialize(X, None, None, d, False) for m in models]``, stacked.

    The NNDSVD starts of all the models share their randomized SVD's products
    with X (:func:`_solvers.randomized_svds_weighted`; each model still draws
    its own sketch from its own ``random_state``), and the scaling is
    computed once: the starts equal one ``_initialize`` per model to float
    rounding, for far fewer GPU kernel launches.
    """
    n, p = X.shape
    dt = numpy_dtype(X)
    scaling = _init_scaling(X, d, False)
    svd_models = [
        i
        for i, m in enumerate(models)
        if m._init_name(m.n_components, n, p) != "random"
    ]
    svds = {}
    if svd_models:
        ks = [models[i].n_components for i in svd_models]
        rngs = [check_random_state(models[i].random_state) for i in svd_models]
        U, S, Vt = _host_svd(
            _solvers.randomized_svds_weighted(X, _on(scaling[0], X), ks, rngs), dt
        )
        for i, (lo, hi) in zip(svd_models, _solvers._bounds(ks)):
            svds[i] = (U[:, lo:hi], S[lo:hi], Vt[lo:hi])
    return [
        m._initialize(X, None, None, d, False, scaling=scaling, svd=svds.get(i))
        for i, m in enumerate(models)
    ]


class CoupledNMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    r"""Coupled non-negative matrix factorization with a shared sample factor.

    The columns of ``X`` (n_samples x n_features) split into blocks
    ``X = [X_1 | X_2 | ...]`` (for example raw pixels and the activations of
    one hidden layer). CoupledNMF finds ``W >= 0`` (n_samples x r), shared by
    all blocks, and ``H = [H_1 | H_2 | ...] >= 0`` (r x n_features) that
    minimize, for ``beta_loss="frobenius"``,

    .. math::

        \frac12 \sum_b w_b \lVert X_b - W H_b \rVert_F^2
        + \alpha_W \rho\, p \lVert W\rVert_1
        + \tfrac12 \alpha_W (1-\rho)\, p \lVert W\rVert_F^2
        + \alpha_H \rho\, n \lVert H\rVert_1
        + \tfrac12 \alpha_H (1-\rho)\, n \lVert H\rVert_F^2

    with ``rho = l1_ratio``, ``p = n_features``, ``n = n_samples`` (the
    penalty scaling of :class:`sklearn.decomposition.NMF`). With one block of
    weight 1 this is exactly scikit-learn's NMF objective. Without penalties it
    equals NMF of the weighted concatenation ``[sqrt(w_1) X_1 | sqrt(w_2) X_2
    ...]``. For ``beta_loss="kullback-leibler"`` the data term is
    ``sum_b w_b KL(X_b | W H_b)``, which equals KL-NMF of ``[w_1 X_1 | ...]``
    (the divergence of order 1 is homogeneous of degree 1).

    Read more in the :ref:`User Guide <coupled_nmf>`.

    Parameters
    ----------
    n_components : int or None, default=None
        Rank r. None uses ``n_features`` (as scikit-learn's NMF).
    blocks : None, list of int, list of (str, int) or "auto", default=None
        How the columns split into blocks, left to right. None: one block
        (plain NMF) named ``"block0"``. A list of sizes: blocks named
        ``"block0"``, ``"block1"``... A list of ``(name, size)`` pairs.
        ``"auto"``: from feature names ``"<block>__<feature>"`` (split at the
        first ``"__"``), as a pandas DataFrame carries them.
    block_weights : "norm", "none" or array-like of shape (n_blocks,), default="norm"
        The weights ``w_b``. ``"norm"``: ``w_b = 1 / ||X_b||_F^2`` for
        Frobenius (``1 / sum(X_b)`` for KL), computed on the training data, so
        every block contributes its relative error and a 20,000-unit layer
        does not drown 784 pixels. ``"none"``: all 1. Numbers: used as given
        (non-negative, finite, not all zero). A block of weight 0 is passive:
        it does not influence ``W``, its components are the unpenalized
        non-negative least-squares fit given ``W``.
    solver : {"hals", "mu"}, default="hals"
        ``"hals"``: hierarchical alternating least squares (exact coordinate
        descent, the iterates of scikit-learn's ``"cd"``). ``"mu"``:
        multiplicative updates (the only solver for Kullback-Leibler).
    beta_loss : {"frobenius", "kullback-leibler"}, default="frobenius"
        The data term: squared Frobenius distance, or the (generalized)
        Kullback-Leibler divergence, which needs ``solver="mu"`` and dense
        ``X``.
    init : {"nndsvd", "nndsvda", "nndsvdar", "random", "custom"} or None, default=None
        None: ``"nndsvda"`` if ``n_components <= min(n_samples, n_features)``,
        else ``"random"``. NNDSVD variants factor the weighted matrix.
        ``"custom"``: the ``W`` and ``H`` passed to :meth:`fit_transform`
        (warm start).
    max_iter : int, default=200
        Most iterations (one update of ``W`` and one of ``H`` each); a fit
        that reaches it before ``tol`` warns (ConvergenceWarning).
    tol : float, default=1e-4
        Stop when the objective decreases by less than ``tol`` times its
        value over one iteration (``"hals"``) or ten iterations (``"mu"``).
    alpha_W : float, default=0.0
        Strength of the penalty on ``W`` (``alpha_W`` in the objective
        above); 0 means none. Under ``block_weights="norm"`` (the default)
        the data term is a sum of relative errors, about 1/2 per block, where
        scikit-learn's NMF has ``||X||_F^2 / 2``: a value tuned for NMF on
        the same matrix is ``||X||_F^2`` times too strong here (on the
        digits, ``alpha_W=1e-3`` drives every factor to about 0). Divide it
        by ``||X||_F^2`` for one block, or use ``block_weights="none"``.
    alpha_H : float or "same", default="same"
        Strength of the penalty on ``H``; ``"same"`` takes ``alpha_W``.
    l1_ratio : float, default=0.0
        Share of the L1 part of both penalties, in [0, 1] (``rho`` above): 0
        is a pure squared-Frobenius (ridge) penalty, 1 a pure L1 (sparsity)
        penalty. Without a penalty (``alpha_W`` and ``alpha_H`` 0) it has no
        effect, as in scikit-learn's NMF.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialization. ``score`` uses a fixed column split seeded
        by ``random_state`` when it is an int, else by 0.
    device : None, "cpu", "auto", "cuda", "cuda:N" or torch.device, default=None
        Where the solvers run (the same functions on NumPy arrays or torch
        tensors: same math, initialization and stopping rule). None follows
        the data: NumPy input runs in NumPy, a torch tensor on its own device.
        ``"cpu"``: the CPU (NumPy, or torch on the CPU for tensor input).
        ``"cuda"``, ``"cuda:N"``, a ``torch.device``: torch on that device
        (ValueError when torch sees no such GPU). ``"auto"``: the first GPU
        when torch sees one, else as ``"cpu"``, quietly. On a CUDA device
        NumPy input is computed in float32 (``components_`` is then float32);
        float64 torch tensors stay float64. TF32 matrix units are used only
        if enabled globally in torch (off by default; see the GPU user
        guide). Torch tensors in give torch tensors out (on the input's
        device); ``components_`` and the other attributes are always NumPy.
    verbose : int, default=0
        When > 0, print the objective every 10 iterations and a last line
        saying whether the fit converged or stopped at ``max_iter``, and
        after how many iterations. Stacked
        fits (:func:`fit_ranks`) print the same, with the rank in the tag.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, ``n_features_in_``)
        ``H`` of all blocks side by side.
    n_components_ : int
    block_names_ : list of str
    block_slices_ : dict of str to slice
        Columns of every block in ``X`` and ``components_``.
    block_weights_ : ndarray of shape (n_blocks,)
        The weights ``w_b`` actually used.
    reconstruction_err_ : float
        ``sqrt(sum_b w_b ||X_b - W H_b||_F^2)`` on the training data (for KL:
        ``sqrt(2 sum_b w_b KL(X_b | W H_b))``); with one block of weight 1 it
        is scikit-learn's ``reconstruction_err_``. Computed from the explicit
        residual where the Gram form would cancel (a good float32 fit).
    block_reconstruction_err_ : dict of str to float
        Unweighted ``||X_b - W H_b||_F`` per block (KL: ``sqrt(2 KL)``).
    n_iter_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Defined only when X has feature names that are all strings.

    See Also
    --------
    sklearn.decomposition.NMF : The one-block special case.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek import CoupledNMF
    >>> rng = np.random.RandomState(0)
    >>> W = rng.rand(100, 3)
    >>> X = np.hstack([W @ rng.rand(3, 20), 100 * W @ rng.rand(3, 200)])
    >>> X *= rng.uniform(0.9, 1.1, size=X.shape)  # 10% multiplicative noise
    >>> model = CoupledNMF(3, blocks=[("pixels", 20), ("layer", 200)],
    ...                    random_state=0)
    >>> W_hat = model.fit_transform(X)
    >>> W_hat.shape, model.block_components("layer").shape
    ((100, 3), (3, 200))
    >>> [round(float(w * np.linalg.norm(X[:, s]) ** 2), 6)  # w_b = 1/||X_b||^2
    ...  for w, s in zip(model.block_weights_, model.block_slices_.values())]
    [1.0, 1.0]
    >>> model.transform(X[:, :20], blocks=["pixels"]).shape  # pixels alone
    (100, 3)
    >>> bool(model.score(X) > -0.01)  # held-out relative error below 1%
    True

    The torch path (here on the CPU; ``device="cuda"`` for a GPU) runs the
    same solvers; torch tensors in give torch tensors out:

    >>> import torch
    >>> W_t = CoupledNMF(3, blocks=[("pixels", 20), ("layer", 200)],
    ...                  random_state=0).fit_transform(torch.from_numpy(X))
    >>> type(W_t).__name__, bool(np.allclose(W_t.numpy(), W_hat))
    ('Tensor', True)
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "blocks": [None, StrOptions({"auto"}), list, tuple],
        "block_weights": [StrOptions({"norm", "none"}), "array-like"],
        "solver": [StrOptions({"hals", "mu"})],
        "beta_loss": [StrOptions({"frobenius", "kullback-leibler"})],
        "init": [
            StrOptions({"nndsvd", "nndsvda", "nndsvdar", "random", "custom"}),
            None,
        ],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "alpha_W": [Interval(Real, 0, None, closed="left")],
        "alpha_H": [Interval(Real, 0, None, closed="left"), StrOptions({"same"})],
        "l1_ratio": [Interval(Real, 0, 1, closed="both")],
        "random_state": ["random_state"],
        "device": "no_validation",
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_components=None,
        *,
        blocks=None,
        block_weights="norm",
        solver="hals",
        beta_loss="frobenius",
        init=None,
        max_iter=200,
        tol=1e-4,
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
        random_state=None,
        device=None,
        verbose=0,
    ):
        self.n_components = n_components
        self.blocks = blocks
        self.block_weights = block_weights
        self.solver = solver
        self.beta_loss = beta_loss
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------ sklearn API
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        # Kullback-Leibler and the torch path are solved on dense X only
        # (_check_solver_loss, _validate_fit_input)
        try:
            on_torch = resolve_device(self.device) is not None
        except ValueError:  # fit says what is wrong with it
            on_torch = True
        tags.input_tags.sparse = self.beta_loss != "kullback-leibler" and not on_torch
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _validate_params(self):
        # scikit-learn's check (run by _fit_context), with close matches for
        # a misspelt option
        validate_params(self)

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def fit(self, X, y=None, **params):
        """Learn the coupled factorization of X.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Non-negative data; the columns split into blocks as ``blocks`` says.
        y : Ignored
        **params : dict
            ``W`` and ``H`` for ``init="custom"`` (see :meth:`fit_transform`).

        Returns
        -------
        self : CoupledNMF
        """
        self.fit_transform(X, y, **params)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None, W=None, H=None):
        """Learn the factorization and return the sample factor W.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : Ignored
        W : array-like of shape (n_samples, n_components), default=None
            Initial W for ``init="custom"``.
        H : array-like of shape (n_components, n_features), default=None
            Initial H (all blocks, unweighted) for ``init="custom"``.

        Returns
        -------
        W : ndarray or torch.Tensor of shape (n_samples, n_components)
            A torch tensor (on X's device) when X is one.
        """
        X_in = X
        # Custom W, H are checked on the host (they are small) like arrays.
        W = _host_array(W, None) if is_torch_tensor(W) else W
        H = _host_array(H, None) if is_torch_tensor(H) else H
        X, slices, weights, d, sq = self._prepare_fit(X)
        n, p = X.shape
        kl = self.beta_loss == "kullback-leibler"

        W0, H0, k = self._initialize(X, W, H, d, kl)
        l1_W, l1_H, l2_W, l2_H = self._regularization(n, p)
        # The NumPy and the torch path are the same solver functions: only the
        # array type differs (the small factors move next to X here).
        W0, H0, d = _on(W0, X), _on(H0, X), _on(d, X)
        if kl:
            xconst = _solvers.kl_xconst(X, d)
            Wf, Hf, n_iter, info = _solvers.fit_mu(
                X, W0, H0, d, xnorm=xconst, beta_loss=self.beta_loss,
                l1_W=l1_W, l2_W=l2_W, l1_H=l1_H, l2_H=l2_H,
                max_iter=self.max_iter, tol=self.tol, verbose=self.verbose,
            )  # fmt: skip
        else:
            xnorm = float(sq @ weights)
            solve = _solvers.fit_hals if self.solver == "hals" else _solvers.fit_mu
            Wf, Hf, n_iter, info = solve(
                X, W0, H0, d, xnorm=xnorm,
                l1_W=l1_W, l2_W=l2_W, l1_H=l1_H, l2_H=l2_H,
                max_iter=self.max_iter, tol=self.tol, verbose=self.verbose,
            )  # fmt: skip
        self._finish_fit(X, Wf, Hf, n_iter, info, slices, weights, sq, k)
        return like_input(Wf, X_in)

    def _prepare_fit(self, X):
        """Validate X, resolve blocks and weights (the part of fit before init).

        Returns X (on the compute device), the block slices, the block weights,
        the column weights ``d`` (NumPy, X's dtype) and the blocks' squared
        Frobenius norms (float64; None for Kullback-Leibler), read from X once
        for the weights, the objective and the errors.
        """
        dev = select_compute_device(self.device, X)
        X = self._validate_fit_input(X, dev)
        p = X.shape[1]
        names, slices = self._resolve_blocks(p)
        self.block_names_ = names
        self.block_slices_ = dict(zip(names, slices))
        kl = self.beta_loss == "kullback-leibler"
        self._check_solver_loss(X)
        sq = None if kl else _block_sums(X, slices)
        if sq is not None:
            _check_scale(X, sq, numpy_dtype(X))
        else:
            _check_kl_scale(X)
        weights = self._resolve_weights(X, names, slices, sq)
        self.block_weights_ = weights
        d = self._column_weights(weights, slices, p, numpy_dtype(X))
        return X, slices, weights, d, sq

    def _finish_fit(self, X, Wf, Hf, n_iter, info, slices, weights, sq, k):
        """Store the results of a solver run (the part of fit after it)."""
        if not info["converged"]:
            warn(
                f"CoupledNMF: maximum number of iterations max_iter={self.max_iter} "
                f"reached before convergence (tol={self.tol}); increase max_iter "
                "or tol.",
                ConvergenceWarning,
                stacklevel=caller_stacklevel(),  # the user's line, not sklearn's
            )
        self._set_errors(X, Wf, Hf, slices, weights, sq)
        self.components_ = _host_array(Hf, numpy_dtype(X))
        self.n_components_ = k
        self.n_iter_ = n_iter
        self._objective = info["objective"][-1]
        self._converged = bool(info["converged"])

    def transform(self, X, blocks=None):
        """Place new samples in the latent space: W for X with H fixed.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_columns)
            All blocks (as in fit); or a DataFrame whose columns are whole
            blocks of ``feature_names_in_``; or the columns of the blocks
            listed in ``blocks``, in that order.
        blocks : list of str, default=None
            Names of the blocks present in X (a subset of ``block_names_``).
            The others are ignored: W is the weighted non-negative least
            squares fit to the given blocks only.

        Returns
        -------
        W : ndarray or torch.Tensor of shape (n_samples, n_components)
            A torch tensor (on X's device) when X is one.
        """
        check_is_fitted(self)
        X_in = X
        X, cols, d = self._validate_transform_input(X, blocks)
        W = self._solve_w(X, self.components_[:, cols], d)
        return like_input(W, X_in)

    def inverse_transform(self, X):
        """Reconstruct all blocks from W: ``W @ components_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            The sample factor W.

        Returns
        -------
        X_rec : ndarray or torch.Tensor of shape (n_samples, ``n_features_in_``)
            A torch tensor on W's device when W is one.
        """
        check_is_fitted(self)
        if is_torch_tensor(X):
            if X.dim() != 2 or X.shape[1] != self.n_components_ or X.shape[0] == 0:
                raise ValueError(
                    f"inverse_transform: argument X (the sample factor W) has shape "
                    f"{tuple(X.shape)}; expected (n_samples, n_components_="
                    f"{self.n_components_}) with n_samples >= 1."
                )
            torch = _torch()
            if not bool(torch.isfinite(X).all()):  # as the NumPy path: named
                _check_w_finite(X.detach().cpu().to(torch.float64).numpy())
            H = torch.from_numpy(self.components_).to(X.device)
            return X.to(H.dtype) @ H
        W = check_array(X, dtype=[np.float64, np.float32], ensure_all_finite=False)
        _check_w_finite(W)
        if W.shape[1] != self.n_components_:
            raise ValueError(
                f"inverse_transform: argument X (the sample factor W) has "
                f"{W.shape[1]} columns; expected n_components_={self.n_components_}."
            )
        return W.astype(self.components_.dtype, copy=False) @ self.components_

    def score(self, X, y=None):
        """Held-out fit quality (bi-cross-validation); higher is better.

        The columns of every block are split once, at random (seeded by
        ``random_state`` when it is an int, else by 0), into a held-in and a
        held-out half. W for the rows of X is solved on the held-in columns
        only, with H fixed; the held-out columns are then predicted as
        ``W @ H_out``. The score is minus the weighted relative error on the
        held-out columns::

            - sum_b w_b ||X_b,out - W H_b,out||^2 / sum_b w_b ||X_b,out||^2

        (KL: weighted divergence over weighted sum). A rank that is too high
        fits noise in the held-in columns and predicts the held-out ones
        worse, so the score does not simply grow with rank. When every block
        has a single column nothing can be held out: the score is then the
        in-sample fit, with a warning.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        return _held_out_scores([self], X)[0]

    def block_components(self, name):
        """Components (rows of H) of one block.

        Parameters
        ----------
        name : str
            A name from ``block_names_``.

        Returns
        -------
        H_b : ndarray of shape (n_components, block size)
            A view of ``components_``.
        """
        check_is_fitted(self)
        return self.components_[:, self._block_slice(name, "name")]

    # ---------------------------------------------------------------- helpers
    def _validate_fit_input(self, X, dev=None):
        where = f"{type(self).__name__}.fit"
        if is_torch_tensor(X):
            X = compute_tensor(X, dev, where=where)
            # What validate_data(reset=True) records for arrays without names.
            self.n_features_in_ = int(X.shape[1])
            self.__dict__.pop("feature_names_in_", None)
            return X
        if dev is not None and sp.issparse(X):
            raise ValueError(
                f"{where}: argument X is a scipy sparse matrix of shape {X.shape}, "
                f"but device={self.device!r} runs the torch solvers on {dev}, which "
                "take dense data; expected a dense array (X.toarray()) or "
                "device=None for the NumPy solvers (which accept sparse X)."
            )
        check_numeric_columns(X, where=where)
        X = validate_data(
            self,
            X,
            accept_sparse=("csr", "csc"),
            dtype=[np.float64, np.float32],
            ensure_all_finite=False,
            ensure_min_features=1,
            reset=True,
        )
        names = getattr(self, "feature_names_in_", None)  # a DataFrame's columns
        check_finite_nonneg(X, name="X", where=where, col_names=names)
        X = aligned(X)
        if dev is not None:
            X = compute_tensor(X, dev, where=where)
        return X

    def _check_solver_loss(self, X):
        if self.beta_loss == "kullback-leibler":
            if self.solver != "mu":
                raise ValueError(
                    f"solver={self.solver!r} does not support "
                    "beta_loss='kullback-leibler'; expected solver='mu'."
                )
            if sp.issparse(X):
                raise ValueError(
                    "beta_loss='kullback-leibler' needs dense X; got a scipy sparse "
                    f"matrix of shape {X.shape}. Pass X.toarray() or use "
                    "beta_loss='frobenius'."
                )

    def _resolve_blocks(self, n_features):
        if isinstance(self.blocks, str):  # "auto" (validated by the constraints)
            feature_names = getattr(self, "feature_names_in_", None)
            if feature_names is None:
                raise ValueError(
                    "blocks='auto' needs feature names of the form "
                    "'<block>__<feature>' (pass a pandas DataFrame), but X has no "
                    "column names; pass blocks as a list of sizes or (name, size) "
                    "pairs instead."
                )
            return blocks_from_feature_names(feature_names, "blocks='auto'")
        return resolve_blocks(self.blocks, n_features)

    def _resolve_weights(self, X, names, slices, sq):
        """Block weights; ``sq``: the blocks' squared norms (None for KL)."""
        kl = sq is None
        bw = self.block_weights
        if isinstance(bw, str) and bw == "none":
            return np.ones(len(names))
        if isinstance(bw, str) and bw == "norm":
            size = _block_sums(X, slices, ord="sum") if kl else sq
            zero = [nm for nm, s in zip(names, size) if not s > 0]
            if not kl:  # sums of values do not underflow as squares do
                check_no_underflow(
                    X,
                    [(nm, sl) for nm, sl in zip(names, slices) if nm in zero],
                    where=f"{type(self).__name__}.fit",
                )
            if zero:
                raise ValueError(
                    f"block_weights='norm' divides every block by its "
                    f"{'sum' if kl else 'squared Frobenius norm'}, but block "
                    f"{zero[0]!r} of X is all zeros; expected every block to have a "
                    "non-zero entry (drop the block, or pass explicit "
                    "block_weights)."
                )
            return 1.0 / size
        return check_weights(bw, len(names), name="block_weights", block_names=names)

    @staticmethod
    def _column_weights(weights, slices, p, dtype):
        d = np.empty(p, dtype=dtype)
        for w, sl in zip(weights, slices):
            d[sl] = w
        return d

    def _fitted_column_weights(self, dtype=np.float64):
        """The weight of every column of X, from the fitted blocks."""
        return self._column_weights(
            self.block_weights_,
            self.block_slices_.values(),
            self.n_features_in_,
            dtype,
        )

    def _regularization(self, n, p):
        alpha_H = self.alpha_W if self.alpha_H == "same" else self.alpha_H
        l1_W = p * self.alpha_W * self.l1_ratio
        l1_H = n * alpha_H * self.l1_ratio
        l2_W = p * self.alpha_W * (1.0 - self.l1_ratio)
        l2_H = n * alpha_H * (1.0 - self.l1_ratio)
        return l1_W, l1_H, l2_W, l2_H

    def _init_name(self, k, n, p):
        """The initialisation a fit at rank k of an n x p matrix uses."""
        init = self.init
        if init is None:
            return "nndsvda" if k <= min(n, p) else "random"
        if init != "random" and k > min(n, p):
            raise ValueError(
                f"n_components={k} is larger than min(n_samples, n_features)="
                f"{min(n, p)} (X has shape {(n, p)}); init={init!r} needs "
                "n_components <= min(n_samples, n_features). Use a smaller "
                "n_components or init='random'."
            )
        return init

    def _initialize(self, X, W, H, d, kl, *, scaling=None, svd=None):
        """W0, H0 as NumPy arrays of X's dtype (moved to X's device by the caller).

        ``scaling``: ``_init_scaling(X, d, kl)`` when the caller has it.
        ``svd``: the host ``(U, S, Vt)`` of the NNDSVD inits when the caller
        computed it (:func:`_initialize_ranks`); otherwise it is computed here.
        """
        n, p = X.shape
        dt = numpy_dtype(X)
        k = self.n_components
        init = self.init
        if init == "custom":
            if W is None or H is None:
                raise ValueError(
                    "init='custom' needs both W and H passed to fit_transform; got "
                    f"W={'None' if W is None else 'an array'}, "
                    f"H={'None' if H is None else 'an array'}."
                )
            # NaN and inf are reported below, naming W or H
            H, W = (
                np.array(
                    check_array(
                        a, dtype=[np.float64, np.float32], ensure_all_finite=False
                    ),
                    dtype=dt,
                )
                for a in (H, W)
            )
            if k is None:
                k = H.shape[0]
            for nm, arr, shape in (("H", H, (k, p)), ("W", W, (n, k))):
                if arr.shape != shape:
                    raise ValueError(
                        f"init='custom': argument {nm} has shape {arr.shape}; "
                        f"expected {shape} (n_components={k}, X of shape "
                        f"{tuple(X.shape)})."
                    )
                check_finite_nonneg(arr, name=nm, where="CoupledNMF.fit_transform")
                if not arr.any():  # as scikit-learn's NMF refuses it
                    raise ValueError(
                        f"init='custom': argument {nm} is all zeros; the updates "
                        "scale it, so the fit would stay at zero. Expected a start "
                        "with non-zero entries (or another init, e.g. 'nndsvda')."
                    )
            return W, H, k
        if W is not None or H is not None:
            warnings.warn(
                f"init={init!r}: the W and H passed to fit_transform are ignored "
                "(they are used only with init='custom').",
                RuntimeWarning,
                stacklevel=3,
            )
        if k is None:
            k = p
        init = self._init_name(k, n, p)
        rng = check_random_state(self.random_state)
        s, y_mean = scaling if scaling is not None else _init_scaling(X, d, kl)
        passive = s == 0
        if init == "random":
            avg = np.sqrt(y_mean / k)
            H0 = np.abs(avg * rng.standard_normal(size=(k, p))).astype(dt)
            W0 = np.abs(avg * rng.standard_normal(size=(n, k))).astype(dt)
        else:
            if svd is None:
                # The sketch runs where X is (torch: on its device); the small
                # factors come back to the host for the NNDSVD bookkeeping.
                svd = _host_svd(
                    _solvers.randomized_svd_weighted(X, _on(s, X), k, rng), dt
                )
            W0, H0 = _solvers.nndsvd(*svd)
            if init == "nndsvda":
                W0[W0 == 0] = y_mean
                H0[H0 == 0] = y_mean
            elif init == "nndsvdar":
                rng2 = check_random_state(self.random_state)
                nw, nh = int((W0 == 0).sum()), int((H0 == 0).sum())
                W0[W0 == 0] = np.abs(y_mean * rng2.standard_normal(size=nw) / 100)
                H0[H0 == 0] = np.abs(y_mean * rng2.standard_normal(size=nh) / 100)
        # Back from the weighted components H' = H * s to H.
        active = ~passive
        H0[:, active] /= s[active]
        if passive.any():
            H0[:, passive] = max(y_mean, np.finfo(dt).tiny)
        return W0.astype(dt, copy=False), H0.astype(dt, copy=False), k

    def _set_errors(self, X, W, H, slices, weights, sq):
        """Reconstruction errors; ``sq``: the blocks' squared norms (None: KL)."""
        errs = {}
        if sq is None:
            col = _solvers.kl_column_divergence(X, W, H)
            per_block = _per_block(col, slices)
            for nm, v in zip(self.block_names_, per_block):
                errs[nm] = float(np.sqrt(2.0 * max(v, 0.0)))
            total = float(np.sqrt(2.0 * max(per_block @ weights, 0.0)))
        else:
            WtW = _solvers._to64(W.T @ W)
            terms = []  # lin and quad of every block, read back in one transfer
            for sl in slices:
                Hb = H[:, sl]
                if sp.issparse(X):
                    XbHt = np.asarray(X[:, sl] @ Hb.T)
                else:
                    XbHt = X[:, sl] @ Hb.T
                # Reduced per block and not read back (each n x r product is
                # freed at once); one read at the end.
                HbHbt = _solvers._to64(Hb @ Hb.T)
                terms += [_solvers._sum64_lazy(t) for t in (W * XbHt, WtW * HbHbt)]
            sums = np.array(_solvers._sums64(*terms))
            lin, quad = sums[0::2], sums[1::2]
            sq = np.asarray(sq, dtype=np.float64)
            per_block = np.maximum(sq - 2.0 * lin + quad, 0.0)
            # The Gram form loses about eps * ||X_b||^2 to cancellation: once
            # a block's error is within 1e4 eps of its norm (float32: a
            # relative error below about 3%) it is computed explicitly, one
            # more pass over X, so that the error is good to about 1e-4.
            coarse = per_block < _EXACT_ERRORS * _solvers._eps(H) * sq
            if coarse.any():
                col = _solvers.residual_column_sums64(X, W, H)
                exact = _per_block(col, slices)
                per_block = np.where(coarse, exact, per_block)
            for nm, v in zip(self.block_names_, per_block):
                errs[nm] = float(np.sqrt(v))
            total = float(np.sqrt(max(per_block @ weights, 0.0)))
        self.block_reconstruction_err_ = errs
        self.reconstruction_err_ = total

    def _block_slice(self, name, param):
        if name not in self.block_slices_:
            hint = did_you_mean(name, self.block_names_)
            raise ValueError(
                f"{param}={name!r} is not a block of this model; expected one of "
                f"{self.block_names_}.{hint}"
            )
        return self.block_slices_[name]

    def _validate_transform_input(self, X, blocks):
        """Return (X array, model column indices it holds, column weights).

        X comes back as a tensor on the compute device when the torch path is
        selected (see :func:`~sklearn_peek._backend.select_compute_device`),
        else as a NumPy array; the column weights are NumPy.
        """
        dev = select_compute_device(self.device, X)
        X, cols, d = self._validate_transform_host(X, blocks)
        if dev is not None:
            where = f"{type(self).__name__}.transform"
            if sp.issparse(X):
                raise ValueError(
                    f"{where}: argument X is a scipy sparse matrix, but device="
                    f"{self.device!r} runs the torch solvers on {dev}, which take "
                    "dense data; expected a dense array (X.toarray())."
                )
            X = compute_tensor(X, dev, dtype=self.components_.dtype, where=where)
        return X, cols, d

    def _validate_transform_host(self, X, blocks):
        p = self.n_features_in_
        dtype = self.components_.dtype
        d_full = self._fitted_column_weights(dtype)
        subset = None
        if blocks is not None:
            if isinstance(blocks, str):
                blocks = [blocks]
            subset = list(blocks)
            if not subset:
                raise ValueError("blocks=[] is empty; expected block names.")
            for nm in subset:
                self._block_slice(nm, "blocks")
            if len(set(subset)) != len(subset):
                raise ValueError(f"blocks={blocks!r} repeats a block; expected unique.")
        elif hasattr(X, "columns") and hasattr(self, "feature_names_in_"):
            subset = self._blocks_of_frame(X)
        if is_torch_tensor(X):
            # Checked (finite, non-negative) when moved to the compute device.
            cols = np.arange(p)
            if subset is not None:
                cols = np.concatenate([cols[self.block_slices_[nm]] for nm in subset])
            if X.dim() != 2 or X.shape[1] != cols.size:
                what = f"blocks={subset}" if subset is not None else type(self).__name__
                raise ValueError(
                    f"transform: argument X has shape {tuple(X.shape)}, but {what} "
                    f"expects {cols.size} features; expected a 2-D tensor with "
                    f"{cols.size} columns."
                )
            d = d_full[cols]
            if not (d > 0).any():
                d = np.ones_like(d)
            return X, cols, d
        if subset is None:
            check_numeric_columns(X, where=f"{type(self).__name__}.transform")
            X = validate_data(
                self,
                X,
                accept_sparse=("csr", "csc"),
                dtype=[np.float64, np.float32],
                ensure_all_finite=False,
                reset=False,
            )
            check_finite_nonneg(
                X,
                name="X",
                where=f"{type(self).__name__}.transform",
                col_names=getattr(self, "feature_names_in_", None),
            )
            return aligned(X.astype(dtype, copy=False)), np.arange(p), d_full
        cols = np.concatenate([np.arange(p)[self.block_slices_[nm]] for nm in subset])
        if hasattr(X, "columns") and hasattr(self, "feature_names_in_"):
            want = list(self.feature_names_in_[cols])
            have = set(map(str, X.columns))
            missing = [c for c in want if c not in have]
            if missing:
                raise ValueError(
                    f"transform: X lacks {len(missing)} column(s) of blocks "
                    f"{subset}, e.g. {missing[:3]}; expected all their columns."
                )
            X = X[want]
        X = check_array(
            X,
            accept_sparse=("csr", "csc"),
            dtype=[np.float64, np.float32],
            ensure_all_finite=False,
        )
        if X.shape[1] != cols.size:
            sizes = {nm: self.block_slices_[nm].stop - self.block_slices_[nm].start
                     for nm in subset}  # fmt: skip
            raise ValueError(
                f"transform: X has {X.shape[1]} features, but blocks={subset} have "
                f"{cols.size} columns together ({sizes}); expected X with exactly "
                "those columns, in that order."
            )
        names = getattr(self, "feature_names_in_", None)
        check_finite_nonneg(
            X,
            name="X",
            where=f"{type(self).__name__}.transform",
            col_names=None if names is None else names[cols],
        )
        X = aligned(X.astype(dtype, copy=False))
        d = d_full[cols]
        if not (d > 0).any():  # only passive blocks: weigh them equally
            d = np.ones_like(d)
        return X, cols, d

    def _blocks_of_frame(self, X):
        """Blocks covered by a DataFrame's columns, or None for the full set."""
        cols = [str(c) for c in X.columns]
        fitted = list(self.feature_names_in_)
        if cols == fitted:
            return None
        known = set(fitted)
        if not set(cols) <= known or len(set(cols)) != len(cols):
            return None  # let validate_data report the mismatch
        present = set(cols)
        covered, partial = [], []
        for nm, sl in self.block_slices_.items():
            names = fitted[sl]
            hits = sum(c in present for c in names)
            if hits == len(names):
                covered.append(nm)
            elif hits:
                partial.append(nm)
        if partial or not covered:
            if len(self.block_names_) == 1:
                return None  # one block: scikit-learn's own message
            raise ValueError(
                f"transform: the columns of X cover block(s) {partial} only in part; "
                "expected whole blocks (all columns of every block given) from "
                f"{self.block_names_}."
            )
        return covered

    def _solve_w(self, X, H, d):
        H, d = _on(H, X), _on(d, X)
        n = X.shape[0]
        l1_W, _, l2_W, _ = self._regularization(n, self.n_features_in_)
        if self.beta_loss == "kullback-leibler":
            if sp.issparse(X):
                X = X.toarray()
            W, _ = _solvers.solve_w_kl(
                X, H, d, l1_W=l1_W, l2_W=l2_W, max_iter=self.max_iter, tol=self.tol
            )
        else:
            W, _ = _solvers.solve_w(
                X, H, d, l1_W=l1_W, l2_W=l2_W, max_iter=self.max_iter, tol=self.tol
            )
        return W

    def _score_split(self):
        seed = self.random_state if is_integral(self.random_state) else _SCORE_SEED
        rng = np.random.RandomState(seed)
        held_in, held_out = [], []
        for sl in self.block_slices_.values():
            cols = np.arange(sl.start, sl.stop)
            size = cols.size
            if size < 2:
                held_in.append(cols)
                continue
            n_out = int(min(size - 1, max(1, round(_SCORE_HOLDOUT * size))))
            perm = rng.permutation(size)
            held_out.append(np.sort(cols[perm[:n_out]]))
            held_in.append(np.sort(cols[perm[n_out:]]))
        empty = np.array([], dtype=int)
        return (
            np.concatenate(held_in) if held_in else empty,
            np.concatenate(held_out) if held_out else empty,
        )


# Largest number of stacked components per batched solver run. The eager
# sweep (NumPy, torch on the CPU) costs the stack height squared per column;
# the GPU's stacked kernel only each rank's own block, so a GPU stack can be
# taller: all ranks of a sweep in one run, one pass over X per iteration.
_BATCH_ROWS = 256
_BATCH_ROWS_GPU = 2048


def _check_scale(X, sq, dtype):
    """Refuse X whose squares leave the range of its dtype.

    ``sq``: the blocks' squared norms (float64, exact for float32 data). The
    solvers form squares and products of X in X's dtype. When even the
    largest entry's square underflows (float32: every entry below about
    1.1e-19), or the squared norm itself is beyond the dtype's largest number
    (float32: 3.4e38), the fit can only end in NaN or a failed SVD; such data
    are refused, with the way out. The largest entry is read (one pass) only
    when the root-mean-square is that small already.
    """
    info = np.finfo(dtype)
    total = float(np.sum(sq))
    low = np.sqrt(float(info.tiny))
    size = max(int(X.shape[0]) * int(X.shape[1]), 1)
    problem = None
    if total >= float(info.max):
        problem = (
            f"a squared norm of {total:.3g}, beyond the largest "
            f"{np.dtype(dtype).name} ({float(info.max):.3g}): its squares overflow"
        )
    elif 0 < total and np.sqrt(total / size) < low:
        top = float(X.max())
        if top < low:
            problem = (
                f"a largest value of {top:.3g}, below {low:.2g}: the squares of "
                f"all its values underflow in {np.dtype(dtype).name}"
            )
    if problem is not None:
        raise ValueError(
            f"CoupledNMF.fit: X has {problem}. Rescale X (e.g. X / X.max())"
            f"{', or pass float64 data' if info.bits < 64 else ''}."
        )


def _check_kl_scale(X):
    """Refuse data the Kullback-Leibler updates cannot fit: they floor
    ``W @ H`` at ``EPSILON`` (float32 eps, as scikit-learn does), so when
    every value of X is below it the fit only reproduces the floor and
    reports a meaningless error (about 1/sqrt(scale) of the data)."""
    top = X.max()
    top = float(top.item() if hasattr(top, "item") else top)
    if 0 < top < _solvers.EPSILON:
        raise ValueError(
            f"CoupledNMF.fit: X has a largest value of {top:.3g}, below "
            f"{_solvers.EPSILON:.3g}, the floor beta_loss='kullback-leibler' "
            "puts under W @ H: nothing in X is above it. Rescale X (e.g. "
            "X / X.max())."
        )


def _check_w_finite(W):
    check_finite(
        W, name="X", where="CoupledNMF.inverse_transform", what="the sample factor W"
    )


def resolve_blocks(blocks, n_features):
    """Block names and column slices from a ``blocks`` parameter.

    ``blocks``: None (one block), or a list of sizes and ``(name, size)``
    pairs; plain sizes are named ``"block<i>"`` after their position. Names
    must be unique, non-empty and free of ``"__"``; sizes >= 1, summing to
    ``n_features`` (not checked when it is None: sizes given without data).
    Shared by CoupledNMF and RankQualityScorer.
    """
    if blocks is None:
        return ["block0"], [slice(0, n_features)]
    given = blocks
    blocks = list(blocks)
    if not blocks:
        raise ValueError(
            "blocks=[] is empty; expected None, 'auto', block sizes or "
            "(name, size) pairs."
        )
    names, sizes = [], []
    for i, item in enumerate(blocks):
        if is_integral(item):
            names.append(f"block{i}")
            sizes.append(int(item))
        elif (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], str)
            and is_integral(item[1])
        ):
            names.append(item[0])
            sizes.append(int(item[1]))
        else:
            raise ValueError(
                f"blocks[{i}]={item!r} is not understood; expected a block "
                "size (int) or a (name, size) pair."
            )
    for name, size in zip(names, sizes):
        if size < 1:
            raise ValueError(
                f"blocks: block {name!r} has size {size}; expected sizes >= 1."
            )
        if not name or "__" in name:
            raise ValueError(
                f"blocks: block name {name!r} is not allowed; expected a "
                "non-empty name without '__'."
            )
    dup = sorted({nm for nm in names if names.count(nm) > 1})
    if dup:
        raise ValueError(
            f"blocks: block names {dup} are repeated; expected unique names."
        )
    total = sum(sizes)
    if n_features is not None and total != n_features:
        raise ValueError(
            f"blocks={given!r} add up to {total} columns, but X has "
            f"n_features={n_features}; expected block sizes that sum to "
            f"{n_features}."
        )
    bounds = np.cumsum([0, *sizes])
    return names, [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def blocks_from_feature_names(feature_names, what):
    """Block names and column slices from ``"<block>__<feature>"`` names.

    ``what`` names the setting in the messages (e.g. ``"blocks='auto'"``).
    Each block's columns must be side by side.
    """
    names, starts = [], []
    for j, fname in enumerate(feature_names):
        if "__" not in fname:
            raise ValueError(
                f"{what}: feature name {fname!r} (column {j}) has no "
                "'__'; expected names of the form '<block>__<feature>'."
            )
        block = fname.split("__", 1)[0]
        if not names or names[-1] != block:
            if block in names:
                raise ValueError(
                    f"{what}: the columns of block {block!r} are not "
                    f"contiguous (it starts again at column {j}, "
                    f"{fname!r}); expected each block's columns side by side."
                )
            names.append(block)
            starts.append(j)
    bounds = [*starts, len(feature_names)]
    return names, [slice(a, b) for a, b in itertools.pairwise(bounds)]


def _held_out_scores(models, X):
    """``score(X)`` of each model (bi-cross-validation, see ``score``).

    Models fitted on the same data by :func:`fit_ranks` (same blocks, block
    weights and ``random_state``, so the same held-out columns; HALS,
    Frobenius, no penalties) share one stacked solve of W on the held-in
    columns (:func:`~sklearn_peek._solvers.solve_w_batched`: one product with
    X for all of them, where a GPU would otherwise run one launch-bound solve
    per rank). Other lists are scored one model at a time.
    """
    first = models[0]
    if len(models) > 1 and not all(_same_held_out_solve(m, first) for m in models):
        return [_held_out_scores([m], X)[0] for m in models]
    X, cols, d = first._validate_transform_input(X, None)
    if cols.size != first.n_features_in_:
        raise ValueError(
            f"score: X holds a subset of the blocks ({cols.size} of "
            f"{first.n_features_in_} columns); expected all blocks "
            f"{first.block_names_} (score holds out part of every block)."
        )
    held_in, held_out = first._score_split()
    if held_out.size == 0:
        warnings.warn(
            "score: every block has a single column, so none can be held out; "
            "the score is the in-sample fit of X (W solved and scored on the "
            "same columns), not a held-out estimate.",
            UserWarning,
            stacklevel=3,
        )
        held_in = held_out = np.arange(X.shape[1])
    if is_torch_tensor(X):
        torch = _torch()
        idx_in = torch.as_tensor(held_in, device=X.device)
        idx_out = torch.as_tensor(held_out, device=X.device)
    else:
        idx_in, idx_out = held_in, held_out
    X_in, X_out = X[:, idx_in], X[:, idx_out]
    if sp.issparse(X_out):
        X_out = X_out.toarray()
    if len(models) == 1:
        Ws = [first._solve_w(X_in, first.components_[:, held_in], d[held_in])]
    else:
        Hs = [_on(m.components_[:, held_in], X) for m in models]
        Ws = [
            W
            for W, _ in _solvers.solve_w_batched(
                X_in, Hs, _on(d[held_in], X), max_iter=first.max_iter, tol=first.tol
            )
        ]
    # One loss for all: several models are stacked only when Frobenius.
    kl = first.beta_loss == "kullback-leibler"
    d_out = d[held_out].astype(np.float64)
    den = float(_solvers.column_sums64(X_out, square=not kl) @ d_out)
    d_dev = _on(d[held_out], X)
    scores = []
    for m, W in zip(models, Ws):
        H_out = _on(m.components_[:, held_out], X)
        if kl:
            num = float(_solvers.kl_column_divergence(X_out, W, H_out) @ d_out)
        else:  # in row chunks, without an n x p residual
            num = 2.0 * _solvers._frob_data_exact(X_out, W.T, H_out, d_dev)
        if not (np.isfinite(num) and np.isfinite(den)):
            # fit refuses such data up front (_check_scale); here it shows
            # in the sums, which are float64 whatever X's dtype
            raise ValueError(
                "score: X's held-out squared error or squared norm is not finite "
                f"in float64 (error {num:.3g}, norm {den:.3g}): its values or "
                "their predictions are too large to square. Rescale X as it was "
                "for fit (e.g. X / X.max())."
            )
        scores.append(-num / den if den > 0 else -num)
    return scores


def _same_held_out_solve(m, first):
    """True when ``m`` can share ``first``'s stacked held-out solve."""
    p = first.n_features_in_
    return (
        _batchable(m)
        and _batchable(first)
        and m.max_iter == first.max_iter
        and m.tol == first.tol
        and m.random_state == first.random_state
        and m.n_features_in_ == p
        and m.block_slices_ == first.block_slices_
        and np.array_equal(m.block_weights_, first.block_weights_)
    )


def _batchable(model):
    """True when fit_ranks can share the solver run between ranks."""
    alpha_H = model.alpha_W if model.alpha_H == "same" else model.alpha_H
    return (
        model.solver == "hals"
        and model.beta_loss == "frobenius"
        and model.alpha_W == 0
        and alpha_H == 0
    )


def check_ranks(ranks, *, where=""):
    """``ranks`` as a list of distinct ints >= 1, in the given order (a torch
    tensor counts as its values); else a ValueError that starts with
    ``where`` (e.g. ``"fit_ranks: "``) and names the value."""
    items = sequence_items(ranks)
    if items is None:
        raise ValueError(
            f"{where}ranks={ranks!r} is not an iterable of integers; expected "
            "distinct integers >= 1, e.g. range(1, 31)."
        )
    if not items:
        raise ValueError(
            f"{where}ranks={ranks!r} is empty; expected at least one integer >= 1."
        )
    for r in items:
        if not is_integral(r) or int(r) < 1:
            raise ValueError(
                f"{where}ranks={ranks!r} contains {r!r}; expected integers >= 1."
            )
    items = [int(r) for r in items]
    seen = set()
    dup = next((r for r in items if r in seen or seen.add(r)), None)
    if dup is not None:
        raise ValueError(
            f"{where}ranks={ranks!r} contains rank {dup} more than once; expected "
            "distinct ranks (each would be fitted again, to the same model)."
        )
    return items


def fit_ranks(estimator, X, ranks):
    """Fit one copy of ``estimator`` per rank, sharing the passes over X.

    Equivalent to ``[clone(estimator).set_params(n_components=r).fit(X) for r
    in ranks]`` (the same initialisations from the same ``random_state``, the
    same updates and stopping rule per rank; results equal to float
    rounding), but the HALS iterations of all ranks run as one stacked
    problem (:func:`sklearn_peek._solvers.fit_hals_batched`): every product
    with X serves all ranks, so a rank sweep makes one pass over X per
    iteration instead of one per rank. The randomized SVDs of the NNDSVD
    starts are stacked the same way (each rank still draws its own sketch).
    This is what makes sweeps fast on a GPU, where small fits are bound by
    kernel launches. Solvers or losses that cannot be stacked (MU,
    Kullback-Leibler, penalties) are fitted one rank after the other.

    Parameters
    ----------
    estimator : CoupledNMF
        The settings (its ``n_components`` is ignored).
    X : {array-like, torch.Tensor} of shape (n_samples, n_features)
    ranks : iterable of int
        Distinct ranks >= 1, at least one, in any order.

    Returns
    -------
    models : list of CoupledNMF
        Fitted, one per rank, in the order of ``ranks``.
    Ws : list of ndarray or torch.Tensor
        The sample factor of each (torch tensors when X is one).

    Raises
    ------
    TypeError
        If ``estimator`` is not a CoupledNMF.
    ValueError
        If ``ranks`` is empty, holds a value that is not an integer >= 1 or
        holds a rank twice, or if ``estimator`` has ``init="custom"``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek import CoupledNMF, fit_ranks
    >>> X = np.random.RandomState(0).rand(50, 30)
    >>> est = CoupledNMF(blocks=[("input", 10), ("layer", 20)], random_state=0)
    >>> models, Ws = fit_ranks(est, X, [2, 4, 6])
    >>> [m.n_components_ for m in models], Ws[1].shape
    ([2, 4, 6], (50, 4))
    """
    if not isinstance(estimator, CoupledNMF):
        raise TypeError(
            f"fit_ranks: argument estimator is a {type(estimator).__name__}; "
            "expected a CoupledNMF."
        )
    ranks = check_ranks(ranks, where="fit_ranks: ")
    base = clone(estimator)
    base._validate_params()
    if base.init == "custom":
        raise ValueError(
            "fit_ranks: estimator has init='custom', which needs a start (W, H) "
            "for one rank; expected another init (None, 'random', 'nndsvd', ...)."
        )
    if not _batchable(base):
        models = [clone(base).set_params(n_components=r) for r in ranks]
        return models, [m.fit_transform(X) for m in models]
    models = []
    for r in ranks:
        m = clone(base).set_params(n_components=r)
        m._validate_params()
        models.append(m)
    return models, _fit_stacked(models, X)


def _fit_stacked(models, X, starts=None):
    """Fit ``models`` on X, sharing the solver runs; returns their W.

    The models differ only in ``n_components`` and ``init`` (HALS, Frobenius,
    no penalties, distinct ranks, the same blocks, weights, ``random_state``
    and device: what :func:`_batchable` allows). ``starts[i]``: the start
    ``(W, H)`` (host arrays) of a model with ``init="custom"``, None for the
    others, which are initialized as their own fit would (stacked). Each
    model ends as ``model.fit_transform(X, W=..., H=...)`` leaves it, to
    float rounding; the Ws are torch tensors when X is one.
    """
    X_in = X
    first = models[0]
    X, slices, weights, d, sq = first._prepare_fit(X)
    fitted = {k: v for k, v in vars(first).items() if k.endswith("_")}
    for m in models[1:]:
        for key, value in fitted.items():  # own copies, as separate fits have
            setattr(m, key, copy.deepcopy(value))
    xnorm = float(sq @ weights)
    starts = list(starts or [None] * len(models))
    cold = []
    for i, m in enumerate(models):
        if m.init == "custom":
            starts[i] = m._initialize(X, *starts[i], d, False)
        else:
            cold.append(i)
    if cold:
        inits = _initialize_ranks([models[i] for i in cold], X, d)
        for i, start in zip(cold, inits):
            starts[i] = start
    starts = [(_on(W0, X), _on(H0, X)) for W0, H0, _ in starts]
    ranks = [m.n_components for m in models]
    d_dev = _on(d, X)
    Ws = [None] * len(ranks)
    # Consecutive ranks share a run while their stacked rows fit the limit.
    limit = _BATCH_ROWS_GPU if getattr(X, "is_cuda", False) else _BATCH_ROWS
    groups = [[]]
    for i, r in enumerate(ranks):
        if groups[-1] and sum(ranks[j] for j in groups[-1]) + r > limit:
            groups.append([])
        groups[-1].append(i)
    for group in groups:
        out = _solvers.fit_hals_batched(
            X,
            [starts[j][0] for j in group],
            [starts[j][1] for j in group],
            d_dev,
            xnorm=xnorm,
            max_iter=first.max_iter,
            tol=first.tol,
            verbose=first.verbose,
        )
        for j, (Wf, Hf, n_iter, info) in zip(group, out):
            models[j]._finish_fit(
                X, Wf, Hf, n_iter, info, slices, weights, sq, ranks[j]
            )
            Ws[j] = like_input(Wf, X_in)
    return Ws
