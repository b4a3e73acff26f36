"""Figures for coupled factorizations of a CNN's inputs and hidden layers.

Every function here imports matplotlib only when it is called, works with a
headless backend (``Agg``), and returns the :class:`matplotlib.figure.Figure`
it drew on, so a caller can save it (``fig.savefig("x.png")``) or keep
drawing on it. The inputs are duck-typed: a fitted
:class:`~sklearn_peek.CoupledNMF` (or any estimator with ``components_``),
a fitted :class:`~sklearn_peek.RankQualityScorer` (or its ``curves_``
dictionary), plain arrays and tables (pandas DataFrame or a dict of lists).

=============================  ==============================================
Function                       What it shows
=============================  ==============================================
:func:`plot_input_factors`     the input block of each latent factor, as an
                               image: which pixel pattern the factor is
:func:`plot_layer_factors`     units (or channels) x latent factors, one
                               heatmap per layer: which units fire for it
:func:`plot_sample_loadings`   the shared sample factor ``W``: which factors
                               each input uses, grouped by class if given
:func:`plot_rank_sweep`        rank-selection criterion vs rank per layer,
                               with the fold spread and the selected rank
:func:`plot_rank_vs_quality`   selected rank vs test accuracy over many
                               networks, with Spearman's rho and its interval
=============================  ==============================================
"""

from __future__ import annotations

import bisect
import math
import re
import warnings
from numbers import Integral
from typing import ClassVar

import numpy as np

from sklearn_peek._backend import sequence_items, to_numpy
from sklearn_peek._validation import check_finite, did_you_mean, is_integral

__all__ = [
    "plot_input_factors",
    "plot_layer_factors",
    "plot_rank_sweep",
    "plot_rank_vs_quality",
    "plot_sample_loadings",
]

# Y-axis labels of the rank-sweep curves, per RankQualityScorer criterion.
_CRITERION_LABELS = {
    "bcv": "BCV score\n(minus held-out relative error)",
    "elbow": "minus relative error",
    "energy": "explained energy",
    "stability": "cophenetic correlation",
}

# Pattern of the extractor's conv feature names: "c<c>_y<y>_x<x>" or "c<c>",
# with "_pos" / "_neg" appended under nonneg="split".
_CHANNEL_RE = re.compile(r"^c(\d+)(?:_y\d+_x\d+)?(?:_pos|_neg)?$")
# ... and of a conv layer pooled over space by the extractor: "c<c>".
_POOLED_RE = re.compile(r"^c\d+(?:_pos|_neg)?$")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def _plt():
    import matplotlib.pyplot as plt

    return plt


# Vertical padding (inches) of the constrained layout of the figures made here:
# matplotlib's default (0.04 in, 3 pt) leaves the figure title almost touching
# the panel titles below it.
_H_PAD = 0.1


def _wrapped(text, width_in, fontsize):
    """``text`` broken at spaces into lines about ``width_in`` inches wide
    (0.5 em per character, about DejaVu Sans' average: an estimate)."""
    import textwrap

    chars = max(12, int(width_in * 72 / (0.5 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars)) if len(text) > chars else text


def _check_title(title):
    """``title``: None (the default title) or a string."""
    if title is not None and not isinstance(title, str):
        raise TypeError(
            f"title={title!r} is not understood; expected a string, or None for "
            "the default title."
        )


def _name_list(value, name="layers"):
    """``value`` (a name or an iterable of names) as a list."""
    if isinstance(value, str):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise TypeError(
            f"{name}={value!r} is not understood; expected a layer name or a "
            "list of layer names."
        ) from None


def _suptitle(fig, title, fontsize=12):
    """The figure title, broken over lines that fit the figure's width."""
    width = fig.bbox.width / _root_figure(fig).dpi
    fig.suptitle(_wrapped(title, width - 0.2, fontsize), fontsize=fontsize)


def _new_figure(fig, figsize):
    """``fig`` as given, or a fresh constrained-layout figure of ``figsize``."""
    if fig is not None:
        from matplotlib.figure import FigureBase

        if not isinstance(fig, FigureBase):
            raise TypeError(
                f"fig={type(fig).__name__}: expected a matplotlib Figure or "
                "SubFigure (an Axes goes to the functions that take ax=)."
            )
        return fig
    plt = _plt()
    fig = plt.figure(figsize=figsize, layout="constrained")
    fig.get_layout_engine().set(h_pad=_H_PAD)
    return fig


def _check_axes(ax):
    """``ax`` unless it is something other than None or a matplotlib Axes."""
    from matplotlib.axes import Axes

    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(
            f"ax={type(ax).__name__}: expected a matplotlib Axes (e.g. "
            "fig.add_subplot()); a Figure goes to the functions that take fig=."
        )
    return ax


def _int_items(value):
    """The items of ``value`` when it is a sequence of integers (a 1-D tensor
    or array of them included), else None."""
    items = sequence_items(value)
    if items is None or not all(is_integral(v) for v in items):
        return None
    return items


def _shape_tuple(shape, name="image_shape"):
    """``shape`` as a tuple of ints, or a ValueError naming it as ``name``."""
    items = _int_items(shape)
    if items is None:
        raise ValueError(
            f"{name}={shape!r} is not understood; expected a tuple of ints, "
            "such as (H, W) or (C, H, W)."
        )
    return tuple(int(s) for s in items)


def _component_indices(components, n):
    """The factor indices ``components`` asks for (all when None), checked."""
    if components is None:
        return list(range(n))
    items = _int_items(components)
    if items is None:
        mask = to_numpy(components).dtype == bool
        raise TypeError(
            f"components={components!r}: expected a sequence of factor indices "
            "(ints), e.g. [0, 2]"
            + ("; for a boolean mask pass np.flatnonzero(mask)." if mask else ".")
        )
    return [int(k) for k in items]


def _root_figure(fig):
    """The top-level Figure of ``fig`` (itself, or the parent of a SubFigure)."""
    while getattr(fig, "figure", fig) is not fig:
        fig = fig.figure
    return fig


def _layout(fig):
    """Run the figure's layout, without drawing, so that positions are final.

    Widths of axes (what the titles and x tick labels must fit in) and
    heights (what the y tick labels must fit in) are only known once the
    layout engine ran; the extents measured after it are in display pixels.
    Only the layout engine runs, as in ``Figure.draw`` (and the axes' aspect
    is applied), not a draw of every artist.
    """
    root = _root_figure(fig)
    engine = root.get_layout_engine()
    if engine is not None and root.axes:
        try:
            engine.execute(root)
        except ValueError:  # as in Figure.draw: a window resized to nothing
            pass
    for ax in root.axes:
        ax.apply_aspect()


class _TextMeter:
    """Widths of single- or multi-line text, in display pixels, for a renderer.

    :meth:`width` asks the renderer (what the drawn text will measure); it is
    cached, but laying out a long string costs about 10 us a character.
    :meth:`fits` first estimates a width from per-character advances (cached
    per font and dpi): clearly narrower or clearly wider than the room (by
    more than ``band``) is decided from the estimate, the rest is measured.
    Callers check their final choice with :meth:`width` and fall back to
    ``exact=True`` (no estimates) when it does not fit. Math text and usetex
    are always measured.
    """

    # (font at 10 pt, dpi, renderer type) -> {char: width}, for every meter
    _advances: ClassVar[dict] = {}
    band = 0.15

    def __init__(self, renderer, dpi, *, exact=False):
        self.renderer = renderer
        self.dpi = dpi
        self.exact = exact
        self._widths = {}
        self._sized = {}

    def sized(self, prop, size):
        """``prop`` at ``size`` points (``prop`` may change later: a title's does)."""
        key = (hash(prop), size)
        out = self._sized.get(key)
        if out is None:
            out = prop.copy()
            out.set_size(size)
            self._sized[key] = out
        return out

    def _math(self, line, usetex):
        from matplotlib import cbook

        if usetex:
            return "TeX"
        return bool(cbook.is_math_text(line))

    def width(self, text, prop, usetex=False):
        """The drawn width of ``text`` (its widest line)."""
        key = (text, prop, usetex)
        w = self._widths.get(key)
        if w is None:
            w = 0.0
            for line in str(text).split("\n"):
                if line:
                    w = max(
                        w,
                        self.renderer.get_text_width_height_descent(
                            line, prop, ismath=self._math(line, usetex)
                        )[0],
                    )
            self._widths[key] = w
        return w

    def height(self, prop):
        """The height of a line of text (``"lp"``) in ``prop``."""
        return self.renderer.get_text_width_height_descent("lp", prop, ismath=False)[1]

    def estimate(self, text, prop, usetex=False):
        """Width from per-character advances; None for math text or usetex."""
        if usetex:
            return None
        size = prop.get_size_in_points()
        ref = self.sized(prop, 10.0)
        key = (ref, self.dpi, type(self.renderer).__name__)
        adv = self._advances.setdefault(key, {})
        best = 0.0
        for line in str(text).split("\n"):
            if self._math(line, False):
                return None
            for ch in set(line) - adv.keys():
                adv[ch] = self.renderer.get_text_width_height_descent(
                    ch, ref, ismath=False
                )[0]
            best = max(best, sum(adv[ch] for ch in line) * size / 10.0)
        return best

    def fits(self, text, prop, avail, usetex=False):
        """Whether ``text`` is no wider than ``avail`` pixels."""
        if not self.exact:
            est = self.estimate(text, prop, usetex)
            if est is not None:
                if est > (1 + self.band) * avail:
                    return False
                if est < (1 - self.band) * avail:
                    return True
        return self.width(text, prop, usetex) <= avail


# Where a long layer name may be broken across lines: after "/", "_", ".",
# ":", "-" or a space (ONNX names look like "/pool2/MaxPool_output_0").
_BREAK_RE = re.compile(r"(?<=[/_.:\-\s])")


def _wrap_name(name, fits, max_lines=3):
    """``name`` broken after separators into lines that each satisfy ``fits``.

    Returns None when that takes more than ``max_lines`` lines or a piece
    between two separators does not fit on its own.
    """
    lines, cur = [], ""
    for tok in (t for t in _BREAK_RE.split(name) if t):
        if cur and not fits(cur + tok):
            lines.append(cur)
            if len(lines) >= max_lines:  # a further line is needed
                return None
            cur = tok
        else:
            cur += tok
    lines.append(cur)
    if not all(fits(line) for line in lines):
        return None
    return lines


def _shorten_middle(name, fits):
    """The longest ``head…tail`` of ``name`` that satisfies ``fits``.

    The start and the end of a layer name are what tell layers apart
    (``"/pool2/MaxPool_output_0"`` -> ``"/pool2/Ma…output_0"``), so the
    middle goes. A longer ``head…tail`` is never narrower, so the number of
    characters kept is found by bisection (a dozen measurements for a name
    of hundreds of characters).
    """

    def short(keep):
        head, tail = (keep + 1) // 2, keep // 2
        return f"{name[:head]}\u2026{name[len(name) - tail :]}"

    lo, hi = 1, len(name) - 1  # the answer keeps lo characters; lo = 1: none fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(short(mid)):
            lo = mid
        else:
            hi = mid - 1
    return short(lo) if lo >= 2 else f"{name[:1]}\u2026"


def _choose_title(fits, name, detail, *, sep, fontsize, min_fontsize):
    """The title text and font size for ``name`` (and ``detail``) in a panel.

    ``fits(text, fs)`` says whether ``text`` at ``fs`` points is no wider than
    the axes. Tried in turn, the first that fits is kept: ``"name: detail"``
    on one line at ``fontsize`` then one point smaller; ``name`` and
    ``detail`` on two lines, down to ``min_fontsize``; ``name`` broken after
    its separators (``/ _ . : -``) over up to three lines, at a size where
    ``detail`` fits; last, at ``min_fontsize``, ``name`` broken the same way,
    else shortened in the middle with an ellipsis. Neighbouring panels'
    titles then neither run off the figure nor touch each other. When
    ``detail`` alone is wider than the axes even at ``min_fontsize``, a
    shorter name would not help: the name is kept whole (on up to three
    lines) when it fits, and only a name that cannot be broken to fit is
    shortened. Returns ``(text, fontsize)``.
    """
    tail = [] if detail is None else [str(detail)]
    sizes = list(range(int(fontsize), int(min_fontsize) - 1, -1)) or [int(fontsize)]
    one = name if detail is None else f"{name}{sep}{detail}"
    for fs in sizes[:2]:
        if fits(one, fs):
            return one, fs
    if detail is not None:
        two = f"{name}\n{detail}"
        for fs in sizes:
            if fits(two, fs):
                return two, fs
    # The name is too long: break it, then shorten it, at a size where the
    # detail fits.
    wrapped = set()
    for fs in sizes[1:] or sizes:
        if tail and not fits(tail[0], fs):
            continue
        wrapped.add(fs)
        lines = _wrap_name(name, lambda s, fs=fs: fits(s, fs))
        if lines is not None:
            return "\n".join(lines + tail), fs
    # The detail is too wide at every size (then the name is broken at the
    # smallest one, rather than cut), or the name cannot be broken to fit.
    fs = sizes[-1]
    lines = None
    if fs not in wrapped:
        lines = _wrap_name(name, lambda s: fits(s, fs))
    if lines is None or len(lines) == 1:
        short = name if lines else _shorten_middle(name, lambda s: fits(s, fs))
        one = f"{short}{sep}{tail[0]}" if tail else short
        if tail and fits(one, fs):
            return one, fs
        lines = [short]
    return "\n".join(lines + tail), fs


def _title_fits(meter, ax, text, fs, avail, *, estimate=True):
    prop = meter.sized(ax.title.get_fontproperties(), fs)
    usetex = ax.title.get_usetex()
    if estimate:
        return meter.fits(text, prop, avail, usetex)
    return meter.width(text, prop, usetex) <= avail


def _fitted_title(meter, ax, name, detail, *, sep, fontsize, min_fontsize, avail):
    """:func:`_choose_title` for ``ax`` with ``meter``; the choice is checked."""
    kw = {"sep": sep, "fontsize": fontsize, "min_fontsize": min_fontsize}
    text, fs = _choose_title(
        lambda s, fs: _title_fits(meter, ax, s, fs, avail), name, detail, **kw
    )
    if not meter.exact and not _title_fits(meter, ax, text, fs, avail, estimate=False):
        exact = _TextMeter(meter.renderer, meter.dpi, exact=True)
        text, fs = _choose_title(
            lambda s, fs: _title_fits(exact, ax, s, fs, avail), name, detail, **kw
        )
    return text, fs


def _grid_shape(n, max_cols=6, ncols=None):
    """Rows and columns for ``n`` panels.

    ``ncols`` panels per row when given, else at most ``max_cols`` with the
    rows as even as possible.
    """
    if ncols is not None:
        if not isinstance(ncols, Integral) or ncols < 1:
            raise ValueError(f"ncols={ncols!r}: expected a positive integer.")
        n_cols = min(int(ncols), n)
        return math.ceil(n / n_cols), n_cols
    n_rows = max(1, math.ceil(n / max_cols))
    n_cols = math.ceil(n / n_rows)
    return n_rows, n_cols


def _panels(fig, n, n_rows, n_cols):
    """The first ``n`` axes of an ``n_rows`` x ``n_cols`` grid; the rest removed."""
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.remove()
    return axes[:n]


_EXPECTED_MODEL = "expected a fitted CoupledNMF (or pipeline)"


def _describe(obj):
    """``"ndarray of shape (400, 6)"``, or the type name of ``obj``."""
    shape = getattr(obj, "shape", None)
    name = type(obj).__name__
    return f"{name} of shape {tuple(shape)}" if shape is not None else name


def _unwrap_model(model):
    """The fitted factorization inside a search or a Pipeline, else ``model``.

    ``GridSearchCV``-like objects give their ``best_estimator_``; a Pipeline
    its last step with ``components_``.
    """
    for _ in range(8):  # a search of a pipeline of a search...
        if hasattr(model, "components_"):
            return model
        best = getattr(model, "best_estimator_", None)
        if best is not None:
            model = best
            continue
        steps = getattr(model, "steps", None)
        if steps:
            fitted = [s for _, s in steps if hasattr(s, "components_")]
            model = fitted[-1] if fitted else steps[-1][1]
            continue
        break
    return model


def _check_fitted(model, what="model"):
    if hasattr(model, "components_"):
        return
    if hasattr(model, "fit") or hasattr(model, "get_params"):
        from sklearn.exceptions import NotFittedError

        raise NotFittedError(
            f"{what}={type(model).__name__} has no components_: fit it first "
            f"({_EXPECTED_MODEL}, or any estimator with components_)."
        )
    if hasattr(model, "shape") or isinstance(model, (list, tuple)):
        raise TypeError(
            f"{what}={_describe(model)}: {_EXPECTED_MODEL} with blocks; an array "
            "has no blocks to draw."
        )
    raise TypeError(
        f"{what}={_describe(model)}: {_EXPECTED_MODEL}, or any estimator with "
        "components_."
    )


def _block_names(model):
    names = getattr(model, "block_names_", None)
    if names is not None:
        return list(names)
    slices = getattr(model, "block_slices_", None)
    if slices is not None:
        return list(slices)
    return None


def _components_array(arr, what="model"):
    """An array passed where a model is expected, as components (factors x pixels).

    Components have a row per latent factor and at least as many columns
    (pixels) as factors; an array with more rows than columns is almost
    surely the sample loadings ``W`` (n_samples x n_factors), which is
    rejected with a message saying what to pass instead.
    """
    H = np.asarray(to_numpy(arr), dtype=float)
    if H.ndim == 2 and H.shape[0] > H.shape[1]:
        raise ValueError(
            f"{what}={_describe(arr)}: {_EXPECTED_MODEL}, or its components, an "
            "array of shape (n_factors, n_pixels). An array with more rows than "
            "columns looks like the sample loadings W (n_samples, n_factors) "
            "from model.transform(X): pass the fitted model itself (W is drawn "
            "by plot_sample_loadings)."
        )
    return H


def _block_components(model, block):
    """The rows of ``components_`` restricted to one block's columns.

    ``model`` is an array of components, or a model already unwrapped by
    :func:`_unwrap_model`.
    """
    if not hasattr(model, "components_") and hasattr(model, "shape"):
        H = _components_array(model)
        what = "the components"
    else:
        _check_fitted(model)
        H = _fitted_block_components(model, block)
        what = f"components_ of block {block!r}"
    if H.ndim == 2:  # other shapes: the callers say what they expected
        # NaN or inf would be drawn as blank or saturated pixels, unremarked
        check_finite(H, name="model", what=what)
    return H


def _fitted_block_components(model, block):
    names = _block_names(model)
    if names is None or (block == "input" and names == ["block0"]):
        # Plain NMF or PCA, or a CoupledNMF fitted without blocks (one block,
        # "block0"): the whole of components_ is the input.
        return np.asarray(to_numpy(model.components_), dtype=float)
    if block not in names:
        raise ValueError(
            f"block={block!r} is not a block of this {type(model).__name__}; "
            f"its blocks are {names}."
        )
    if hasattr(model, "block_components"):
        return np.asarray(to_numpy(model.block_components(block)), dtype=float)
    sl = model.block_slices_[block]
    return np.asarray(to_numpy(model.components_), dtype=float)[:, sl]


def _block_feature_names(model, block, extractor=None):
    """Feature names of ``block`` without the ``"<block>__"`` prefix, or None.

    From the model's ``feature_names_in_`` (fitted on a DataFrame), else from
    a fitted ``extractor``'s ``get_feature_names_out``.
    """
    names = getattr(model, "feature_names_in_", None)
    if names is None and hasattr(extractor, "block_sizes_"):
        names = extractor.get_feature_names_out()
    if names is None:
        return None
    prefix = f"{block}__"
    out = [str(n)[len(prefix) :] for n in names if str(n).startswith(prefix)]
    return out or None


def _infer_image_shape(n_features):
    side = math.isqrt(n_features)
    if side * side == n_features:
        return (side, side)
    if n_features % 3 == 0:
        side = math.isqrt(n_features // 3)
        if 3 * side * side == n_features:
            return (3, side, side)
    raise ValueError(
        f"image_shape=None: cannot guess the image shape of an input block with "
        f"{n_features} features (not a square image, nor 3 square channels); pass "
        "image_shape=(C, H, W) or (H, W), or (2, C, H, W) for an input block "
        "made with nonneg='split'."
    )


def _as_image_shape(image_shape, n_features):
    if image_shape is None:
        return _infer_image_shape(n_features)
    shape = _shape_tuple(image_shape)
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ValueError(
            f"image_shape={image_shape!r} is not understood; expected (H, W) or "
            "(C, H, W) with positive sizes."
        )
    if math.prod(shape) != n_features:
        raise ValueError(
            f"image_shape={image_shape!r} holds {math.prod(shape)} values, but the "
            f"input block has {n_features} features."
        )
    return shape


def _is_split_names(names):
    """True when feature names are ``*_pos`` then ``*_neg`` (``nonneg="split"``)."""
    if names is None or len(names) % 2:
        return False
    half = len(names) // 2
    return all(n.endswith("_pos") for n in names[:half]) and all(
        n.endswith("_neg") for n in names[half:]
    )


def _input_image_shape(image_shape, n_features, feature_names=None):
    """The image shape of an input block, and whether it is a split block.

    A block made with ``nonneg="split"`` holds ``[relu(x), relu(-x)]``: twice
    the pixels, positive parts first. It is recognised from an
    ``image_shape`` of ``(2, C, H, W)`` (``extractor.layer_shapes_["input"]``),
    from an ``(H, W)`` or ``(C, H, W)`` shape holding half the features
    (``extractor.input_shape_``), or, without ``image_shape``, from feature
    names ending in ``_pos`` / ``_neg``. Returns ``(shape, split)`` where
    ``shape`` is the shape of one part.
    """
    if image_shape is None:
        if _is_split_names(feature_names):
            return _infer_image_shape(n_features // 2), True
        return _infer_image_shape(n_features), False
    shape = _shape_tuple(image_shape)
    if len(shape) == 4:
        if shape[0] != 2 or any(s < 1 for s in shape):
            raise ValueError(
                f"image_shape={image_shape!r} is not understood; expected (H, W), "
                "(C, H, W), or (2, C, H, W) for an input block made with "
                "nonneg='split' (positive part, negative part)."
            )
        if 2 * math.prod(shape[1:]) != n_features:
            raise ValueError(
                f"image_shape={image_shape!r} holds {math.prod(shape)} values, but "
                f"the input block has {n_features} features."
            )
        return shape[1:], True
    half = (
        len(shape) in (2, 3)
        and all(s >= 1 for s in shape)
        and 2 * math.prod(shape) == n_features
    )
    # Feature names, when the model saw them, must agree that it is split.
    if half and (feature_names is None or _is_split_names(feature_names)):
        return shape, True
    return _as_image_shape(image_shape, n_features), False


def _tile_image(row, shape):
    """One factor's input row as something imshow can draw, scaled to [0, 1].

    Each tile is scaled by its own maximum: factors have arbitrary scales
    (``W H`` is unchanged when a column of ``W`` is multiplied and the row of
    ``H`` divided by the same number), so only the pattern is meaningful.
    """
    img = row.reshape(shape)
    if img.ndim == 3:
        if img.shape[0] == 3:
            img = np.moveaxis(img, 0, -1)
        else:
            img = img.mean(axis=0)
    top = float(np.max(img))
    lo = float(np.min(img))
    if top > lo:
        img = (img - min(lo, 0.0)) / (top - min(lo, 0.0))
    else:
        img = np.zeros_like(img)
    return np.clip(img, 0.0, 1.0)


def _signed_tile_image(row, shape):
    """A signed input row (positive minus negative part), scaled to [-1, 1].

    Each tile is divided by its largest absolute value, so zero stays zero
    (the middle of a diverging colormap). Three channels are drawn in RGB
    around mid-grey (``0.5 + img / 2``); other multi-channel tiles are drawn
    as their mean over channels.
    """
    img = row.reshape(shape)
    rgb = img.ndim == 3 and img.shape[0] == 3
    if img.ndim == 3:
        img = np.moveaxis(img, 0, -1) if rgb else img.mean(axis=0)
    top = float(np.max(np.abs(img)))
    img = img / top if top > 0 else np.zeros_like(img)
    img = np.clip(img, -1.0, 1.0)
    return 0.5 + 0.5 * img if rgb else img


class _TitleJob:
    """A panel title that the figure fits to its axes whenever it is drawn."""

    def __init__(self, ax, name, detail, kwargs):
        self.ax, self.name, self.detail = ax, name, detail
        self.kwargs = {"sep": ": ", "fontsize": 11, "min_fontsize": 8, **kwargs}
        one = name if detail is None else f"{name}{self.kwargs['sep']}{detail}"
        self.apply(one, self.kwargs["fontsize"])  # in full until the first draw
        self.fitted_at = None  # (axes width in inches, dpi) of the last fit
        self.fit_avail = 0.0  # axes width (pixels) the title was chosen for

    def owned(self, root):
        """The axes is still drawn and its title is the one set here."""
        ax = self.ax
        return (
            ax in root.axes
            and ax.get_title() == self.text
            and ax.title.get_fontsize() == self.size
        )

    def apply(self, text, size):
        """Set the title."""
        self.ax.set_title(text, fontsize=size)
        self.text, self.size = self.ax.get_title(), self.ax.title.get_fontsize()


class _TickJob:
    """The x tick labels of a rank axis, thinned whenever the figure is drawn.

    The candidate ticks are set now, all labelled; at draw time
    :func:`_thin_x_ticks` keeps those whose labels do not touch, and the
    selected rank's label is set in bold red. (No tick artists are made
    here: matplotlib makes them when the figure is drawn.)
    """

    def __init__(self, ax, values, keep, selected):
        self.ax, self.values, self.keep = ax, [int(v) for v in values], list(keep)
        self.selected = selected
        self.style = None  # (color, weight, font) of an unmarked label, when drawn
        self._set(self.values)

    def _set(self, values):
        from matplotlib.ticker import FixedFormatter, FixedLocator

        self.ax.xaxis.set_major_locator(FixedLocator(values))
        self.ax.xaxis.set_major_formatter(FixedFormatter([str(v) for v in values]))
        self.ticks = list(values)

    def _paint(self):
        """The selected rank's label in bold red, the others as they were."""
        color, weight, _ = self.style
        for v, tick in zip(self.ticks, self.ax.xaxis.get_major_ticks(len(self.ticks))):
            want = ("tab:red", "bold") if v == self.selected else (color, weight)
            label = tick.label1
            if (label.get_color(), label.get_fontweight()) != want:
                label.set_color(want[0])
                label.set_fontweight(want[1])

    def owned(self, root):
        """The axes is still drawn and its ticks are the ones set here."""
        ticks = [float(v) for v in self.ax.get_xticks()]
        return self.ax in root.axes and ticks == [float(v) for v in self.ticks]

    def fit(self, meter):
        if self.style is None:
            label = self.ax.xaxis.get_major_ticks(1)[0].label1  # not painted yet
            prop = label.get_fontproperties().copy()
            bold = prop.copy()
            bold.set_weight("bold")
            self.style = (label.get_color(), label.get_fontweight(), (prop, bold))
        prop, bold = self.style[2]
        lo, hi = sorted(self.ax.get_xlim())
        values = [v for v in self.values if lo - 1e-9 <= v <= hi + 1e-9]
        kept = _thin_x_ticks(
            self.ax,
            values,
            self.keep,
            lambda v: meter.width(str(v), bold if v == self.selected else prop),
            meter.height(prop),
        )
        if kept != self.ticks:
            self._set(kept)
        self._paint()


class _GroupTickJob:
    """The group names of a heatmap's y axis (:func:`_group_ticks`).

    Placed now, on the layout already run, so that they can be read before
    the figure is drawn; placed again when the figure is drawn with its axes
    at another height (a resized or re-saved figure), where rows that had
    room for a name may have none.
    """

    def __init__(self, ax, starts, ends, names):
        self.ax, self.groups = ax, (starts, ends, names)
        self._place()

    def _place(self):
        self.labels = _group_ticks(self.ax, *self.groups)
        self.ticks = [float(v) for v in self.ax.get_yticks()]
        self.height = self.ax.get_window_extent().height

    def owned(self, root):
        """The axes is still drawn and its ticks are the ones set here."""
        ticks = [float(v) for v in self.ax.get_yticks()]
        return self.ax in root.axes and ticks == self.ticks

    def fit(self):
        """Place the names again if the axes' height changed; True if they did."""
        if abs(self.ax.get_window_extent().height - self.height) < 0.5:
            return False
        labels = self.labels
        self._place()
        return self.labels != labels


def _fit_title_pass(groups, meter, root, *, first):
    """Fit each group's titles to their axes as laid out now.

    On the first pass of a draw, a title fitted before at the same axes width
    and dpi is kept as it is; on later passes (after the layout ran again), a
    title that still fits is kept unless its axes got wider than when it was
    chosen (a title that overhung its axes had made the layout narrow them).
    Other titles are fitted from scratch, then every title of a group is set
    at the group's smallest font size. Returns True when the layout must run
    again: a title changed height, or replaced one wider than its axes.
    """
    relayout = False
    for group in groups:
        jobs = [job for job in group if job.owned(root)]
        chosen = []
        for job in jobs:
            ax = job.ax
            avail = ax.get_window_extent().width
            if first:
                here = (avail / root.dpi, root.dpi)
                keep = job.fitted_at is not None and (
                    abs(job.fitted_at[0] - here[0]) < 0.005
                    and job.fitted_at[1] == here[1]
                )
            else:
                keep = avail <= job.fit_avail + 1 and _title_fits(
                    meter, ax, job.text, job.size, avail, estimate=False
                )
            if keep:
                text, fs = job.text, job.size
            else:
                job.fit_avail = avail
                text, fs = _fitted_title(
                    meter, ax, job.name, job.detail, avail=avail, **job.kwargs
                )
            chosen.append((text, fs, avail))
        if not chosen:
            continue
        # One font size for the panels of a figure: the smallest one needed
        # (a text that fits at a size fits at a smaller one).
        size = min(fs for _, fs, _ in chosen)
        for job, (text, _, avail) in zip(jobs, chosen):
            if (text, size) == (job.text, job.size):
                continue
            relayout |= (
                text.count("\n") != job.text.count("\n")
                or size != job.size
                or not _title_fits(meter, job.ax, job.text, job.size, avail)
            )
            job.apply(text, size)
    return relayout


def _fit_text_now(fitter, renderer, passes=3):
    """Fit the registered titles, then thin the tick labels (during a draw).

    ``Figure.draw`` has run the layout before it draws this (the first of the
    figure's artists). A title of more lines leaves its axes less height,
    which can change the y tick labels and so the axes' width; a title that
    overhung its axes had made the layout narrow it: after titles change the
    layout is run again and the titles are checked again, at most ``passes``
    times. The group names of y axes are placed next (other names leave
    other room for them: the layout runs again when they changed), and the x
    tick labels are thinned on the final layout.
    """
    root = _root_figure(fitter.figure)
    meter = _TextMeter(renderer, root.dpi)
    groups = [g for g in fitter.title_groups if any(j.ax in root.axes for j in g)]
    fitter.title_groups = groups
    for i in range(passes):
        if not _fit_title_pass(groups, meter, root, first=i == 0):
            break
        _layout(root)
    for group in groups:
        for job in group:
            job.fitted_at = (job.ax.get_window_extent().width / root.dpi, root.dpi)
    fitter.group_jobs = [job for job in fitter.group_jobs if job.ax in root.axes]
    if any([job.fit() for job in fitter.group_jobs if job.owned(root)]):
        _layout(root)
    fitter.tick_jobs = [job for job in fitter.tick_jobs if job.ax in root.axes]
    for job in fitter.tick_jobs:
        if job.owned(root):
            job.fit(meter)


_FITTER_CLASS = None


def _fitter_class():
    """The artist class that fits text when a figure is drawn (made on first use).

    matplotlib is imported only when a function here is called, so the class,
    an :class:`~matplotlib.artist.Artist`, is made then; the module's
    ``__getattr__`` gives it to pickle as ``_TextFitter``.
    """
    global _FITTER_CLASS
    if _FITTER_CLASS is None:
        from matplotlib.artist import Artist
        from matplotlib.transforms import Bbox

        class _TextFitter(Artist):
            """Invisible, drawn first: fits titles and tick labels to the layout.

            Text widths depend on the space the layout gives each axes, known
            only when the figure is drawn; measuring then costs no extra
            layout (and none at all when every title fits as it is), and the
            text fits the size and dpi the figure is drawn at.
            """

            zorder = float("-inf")

            def __init__(self):
                super().__init__()
                self.set_in_layout(False)
                self.title_groups = []
                self.group_jobs = []
                self.tick_jobs = []

            def get_window_extent(self, renderer=None):
                return Bbox.null()

            def get_tightbbox(self, renderer=None):
                return None

            def draw(self, renderer):
                _fit_text_now(self, renderer)
                self.stale = False

        _TextFitter.__module__ = __name__
        _TextFitter.__qualname__ = _TextFitter.__name__ = "_TextFitter"
        _FITTER_CLASS = _TextFitter
    return _FITTER_CLASS


def __getattr__(name):
    if name == "_TextFitter":
        return _fitter_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _text_fitter(fig):
    """The text fitter of ``fig``'s top-level figure, added on first use."""
    root = _root_figure(fig)
    cls = _fitter_class()
    for artist in root.artists:
        if isinstance(artist, cls):
            return artist
    return root.add_artist(cls())


def _fit_titles(fig, specs):
    """Title each ``ax`` of ``specs``, ``(ax, name, detail, kwargs)``, to fit it.

    The text is chosen by :func:`_choose_title` (``kwargs``: ``sep``,
    ``fontsize``, ``min_fontsize``) whenever the figure is drawn (shown,
    saved, or ``fig.draw_without_rendering()``), on the layout of that draw:
    until then each title is ``"name: detail"`` (``sep`` between them). The
    titles of one call share a font size, the smallest one needed. A title
    later set by the caller (other text or size) is left alone.
    """
    _text_fitter(fig).title_groups.append(
        [
            _TitleJob(ax, name, detail, dict(kwargs))
            for ax, name, detail, kwargs in specs
        ]
    )


# --------------------------------------------------------------------------
# input factors
# --------------------------------------------------------------------------
def plot_input_factors(
    model,
    *,
    block="input",
    image_shape=None,
    ncols=None,
    cmap=None,
    components=None,
    fig=None,
    title=None,
):
    """Draw each latent factor's input pattern as an image, one tile per factor.

    The input block of ``components_`` (``H_0`` in the coupled model) has one
    row per latent factor; reshaped to the image shape, a row shows which
    pixels the factor stands for. Tiles are titled ``"factor k"`` where ``k``
    is the row of ``components_``.

    An input block made by an extractor with ``nonneg="split"`` holds
    ``[relu(x), relu(-x)]``, twice the pixels. Its tiles show the signed
    pattern, positive part minus negative part, with a diverging colormap
    (zero in the middle).

    Parameters
    ----------
    model : fitted CoupledNMF, estimator with ``components_``, Pipeline, or ndarray
        The coupled model. Its ``block`` columns are taken with
        ``model.block_components(block)`` (or ``block_slices_``). An estimator
        without blocks (e.g. scikit-learn's ``NMF`` fitted on images) is drawn
        whole; a Pipeline (or a fitted search) gives its last step with
        ``components_``; an array of shape (n_factors, n_pixels) is drawn as
        given. An array with more rows than columns is taken for the sample
        loadings ``W`` and rejected with a ValueError.
    block : str, default="input"
        Which block holds the image pixels.
    image_shape : tuple of int, optional
        ``(H, W)`` or ``(C, H, W)``. By default a square grey image, or 3
        square channels, is inferred from the number of pixels.
        Multi-channel tiles: with 3 channels the tile is drawn in RGB (scaled
        by the tile's maximum); with any other number of channels the mean
        over channels is drawn with ``cmap``. A ``nonneg="split"`` input
        block is recognised from ``(2, C, H, W)``
        (``extractor.layer_shapes_["input"]``), from an ``(H, W)`` or
        ``(C, H, W)`` shape that holds half the block
        (``extractor.input_shape_``), or, without ``image_shape``, from
        feature names ending in ``_pos`` / ``_neg``. Its tiles are scaled to
        [-1, 1] by their largest absolute value; 3 channels are drawn in RGB
        around mid-grey (``0.5 + value / 2``).
    ncols : int, optional
        Tiles per row; by default at most 6, rows as even as possible.
    cmap : str, optional
        Colormap for single-channel tiles. By default ``"gray_r"`` (dark =
        strong weight), and ``"RdBu_r"`` for a ``nonneg="split"`` block or
        signed components such as PCA's (red = positive part, blue = negative
        part, white = 0).
    components : sequence of int, optional
        Which factors to draw; all by default.
    fig : matplotlib Figure, optional
        Figure to draw on (it should be empty); a new one by default.
    title : str, optional
        Figure title; a description of what is drawn by default.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per tile, each holding one image.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.decomposition import NMF
    >>> from sklearn_peek.plotting import plot_input_factors
    >>> X = load_digits().data / 16.0
    >>> nmf = NMF(n_components=6, init="nndsvda", max_iter=300, random_state=0).fit(X)
    >>> fig = plot_input_factors(nmf, image_shape=(8, 8))
    >>> sum(len(ax.images) for ax in fig.axes)
    6
    """
    _check_title(title)
    model = _unwrap_model(model)
    H = _block_components(model, block)
    if H.ndim != 2:
        raise ValueError(
            f"model={_describe(model)}: {_EXPECTED_MODEL}, or its components of "
            f"shape (n_factors, n_pixels); got components of shape {H.shape}."
        )
    shape, split = _input_image_shape(
        image_shape, H.shape[1], _block_feature_names(model, block)
    )
    if split:
        half = H.shape[1] // 2
        H = H[:, :half] - H[:, half:]  # positive part minus negative part
    # Signed patterns (a split block, or components of PCA, ICA, ...) are
    # drawn around zero with a diverging map; non-negative ones from zero up.
    signed = split or bool(np.any(H < 0))
    if cmap is None:
        cmap = "RdBu_r" if signed else "gray_r"
    idx = _component_indices(components, H.shape[0])
    bad = [k for k in idx if not 0 <= k < H.shape[0]]
    if bad:
        raise ValueError(
            f"components={components!r}: {bad} out of range; the model has "
            f"{H.shape[0]} factors (0..{H.shape[0] - 1})."
        )
    n = len(idx)
    if n == 0:
        raise ValueError("components=[]: nothing to draw.")
    n_rows, n_cols = _grid_shape(n, ncols=ncols)
    # Tiles of 1.7 x 1.7 in for square images; others keep that area, each
    # side within 1 to 4 in, and the whole figure at most 16 in wide.
    aspect = shape[-1] / shape[-2]
    tile_w = float(np.clip(1.7 * np.sqrt(aspect), 1.0, 4.0))
    tile_h = float(np.clip(1.7 / np.sqrt(aspect), 1.0, 4.0))
    scale = min(1.0, 16.0 / (n_cols * tile_w))
    tile_w, tile_h = tile_w * scale, tile_h * scale
    fig = _new_figure(fig, (max(3.5, n_cols * tile_w), n_rows * tile_h + 0.6))
    for ax, k in zip(_panels(fig, n, n_rows, n_cols), idx):
        if signed:
            img = _signed_tile_image(H[k], shape)
            lo = -1.0
        else:
            img = _tile_image(H[k], shape)
            lo = 0.0
        kwargs = {} if img.ndim == 3 else {"cmap": cmap, "vmin": lo, "vmax": 1.0}
        ax.imshow(img, interpolation="nearest", **kwargs)
        # a blank tile would look like a drawing failure
        note = "" if np.any(H[k]) else "\n(no input weight)"
        ax.set_title(f"factor {k}{note}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if title is None:
        title = f"Input patterns of the latent factors (block {block!r})"
        if split:
            title += ", positive minus negative part: red positive, blue negative"
        elif signed:
            title += ", signed: red positive, blue negative"
    _suptitle(fig, title)
    return fig


# --------------------------------------------------------------------------
# layer factors
# --------------------------------------------------------------------------
def _layer_shape_for(layer_shapes, layer):
    """``(shape, split)`` of ``layer``: its per-sample shape (None when not
    given) and whether it holds ``nonneg="split"`` parts (None: not known,
    when ``layer_shapes`` is a dict rather than the extractor)."""
    if layer_shapes is None:
        return None, None
    split = None
    if hasattr(layer_shapes, "layer_shapes_"):
        split = getattr(layer_shapes, "nonneg", None) == "split"
        layer_shapes = layer_shapes.layer_shapes_
    try:
        layer_shapes = dict(layer_shapes)  # a dict, or (name, shape) pairs
    except (TypeError, ValueError):
        raise ValueError(
            f"layer_shapes={layer_shapes!r}: expected a dict layer -> shape, such "
            "as extractor.layer_shapes_, or the fitted extractor."
        ) from None
    shape = layer_shapes.get(layer)
    if shape is None:
        return None, split
    return _shape_tuple(shape, f"layer_shapes[{layer!r}]"), split


def _reduce_to_channels(H, layer, shape, feature_names, split=None):
    """Sum a conv layer's factor loadings over spatial positions.

    Returns ``(H_channels, "channel")`` or ``(H, "unit")`` when the layer has
    no channel structure (a flat layer, or one already pooled). A
    ``nonneg="split"`` layer (``split``; when None, read from ``_pos`` /
    ``_neg`` feature names, or from a ``(2, C, H, W)`` shape) first has its
    positive and negative parts summed, so that a unit is drawn once.
    """
    if shape is not None and math.prod(shape) != H.shape[1]:
        raise ValueError(
            f"layer_shapes[{layer!r}]={shape} holds {math.prod(shape)} values, but "
            f"the layer block has {H.shape[1]} features."
        )
    if split is None:
        if feature_names is not None:
            split = _is_split_names(feature_names)
        else:
            split = shape is not None and len(shape) == 4 and shape[0] == 2
    with_shape = shape is not None and len(shape) >= 2 and shape[0] == 2
    if split and (with_shape or (shape is None and feature_names is not None)):
        H = H.reshape(H.shape[0], 2, -1).sum(axis=1)  # both parts of a unit
        if with_shape:
            shape = shape[1:]
        else:  # the positive parts' names, without "_pos"
            feature_names = [n[: -len("_pos")] for n in feature_names[: H.shape[1]]]
    if shape is not None and len(shape) == 3:
        return H.reshape(H.shape[0], shape[0], -1).sum(axis=2), "channel"
    if shape is None and feature_names is not None:
        matches = [_CHANNEL_RE.match(n) for n in feature_names]
        if all(matches) and any("_y" in n for n in feature_names):
            ch = np.array([int(m.group(1)) for m in matches])
            n_ch = int(ch.max()) + 1
            out = np.zeros((H.shape[0], n_ch))
            np.add.at(out.T, ch, H.T)
            return out, "channel"
    if feature_names is not None and all(
        _POOLED_RE.match(n) for n in feature_names
    ):  # a pooled conv layer: one feature per channel already
        return H, "channel"
    return H, "unit"


def _max_bins(M, max_rows):
    """``M`` with runs of neighbouring rows merged by their maximum.

    Returns ``(M, note)``: ``M`` itself and ``""`` when it has at most
    ``max_rows`` rows (or ``max_rows`` is None); else at most ``max_rows``
    rows, each the maximum over ``n // max_rows`` or one more consecutive
    rows (bins as even as possible, so each drawn row spans its share of the
    axis), and a note for the axis label saying so.
    """
    n = M.shape[0]
    if max_rows is None or n <= max_rows:
        return M, ""
    starts = np.linspace(0, n, max_rows + 1).round().astype(int)[:-1]
    sizes = np.diff(np.r_[starts, n])
    lo, hi = int(sizes.min()), int(sizes.max())
    each = str(hi) if lo == hi else f"{lo}\u2013{hi}"
    return np.maximum.reduceat(M, starts, axis=0), f" (max of {each} per row)"


def plot_layer_factors(
    model,
    layers=None,
    *,
    layer_shapes=None,
    reduce="channel",
    normalize="factor",
    max_rows=300,
    cmap="magma_r",
    fig=None,
    title=None,
):
    """Heatmaps of which units (or channels) of each layer every factor uses.

    For each layer block ``l`` the matrix ``H_l`` (factors x units) is drawn
    transposed: one row per unit (or channel), one column per latent factor,
    one panel per layer. A dark cell means that unit responds to the input
    pattern of that factor (see :func:`plot_input_factors`; dark means
    strong there and in :func:`plot_sample_loadings` too). With
    ``normalize`` the panels share one 0-1 colorbar; without, each has its
    own.

    Parameters
    ----------
    model : fitted CoupledNMF
        Any estimator with ``components_`` and ``block_names_`` /
        ``block_slices_`` (and optionally ``block_components``).
    layers : list of str, optional
        Layer blocks to draw; by default every block except ``"input"``.
    layer_shapes : dict or fitted LayerActivationExtractor, optional
        Per-sample shape of each layer, e.g. ``extractor.layer_shapes_`` or
        the extractor itself. With ``reduce="channel"``, a layer of shape
        ``(C, H, W)`` is summed over its ``H * W`` positions so one row is one
        channel; a ``nonneg="split"`` layer of shape ``(2, C, H, W)`` is also
        summed over its positive and negative parts. Given the extractor, a
        split flat or pooled layer, ``(2, N)``, is summed over its parts too
        (one row per unit); a dict of shapes cannot tell that shape from a
        1-D convolution's ``(C, L)``. Without it, channels are
        read from feature names such as ``"conv1__c2_y5_x7"`` when the model
        saw them.
    reduce : {"channel", None}, default="channel"
        ``"channel"`` sums conv maps over space; ``None`` draws every unit.
    normalize : {"factor", "unit", None}, default="factor"
        ``"factor"`` divides each factor's column by its maximum, because a
        factor's scale is arbitrary (it can move between ``W`` and ``H``): a
        column then shows which units carry that factor most. ``"unit"``
        divides each row by its maximum: a row then shows which factors a unit
        (channel) prefers, whatever its overall activity. ``None`` draws raw
        values.
    max_rows : int or None, default=300
        A layer with more rows than this (units, or channels) is drawn in
        at most ``max_rows`` rows, each the maximum over a run of
        neighbouring units (13-14 of 4,096 at the default), after
        ``normalize``: a strong unit always shows, where drawing every unit
        in fewer pixels than rows would skip some and can draw moiré bands.
        The y axis still counts units and its label says how many each row
        holds. ``None`` draws every row.
    cmap : str, default="magma_r"
        Colormap of the heatmaps (dark = strong, as the input tiles and the
        sample loadings).
    fig : matplotlib Figure, optional
        Figure to draw on; a new one by default.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One heatmap axes per layer plus one colorbar axes per layer.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from sklearn_peek.plotting import plot_layer_factors
    >>> rng = np.random.default_rng(0)
    >>> model = SimpleNamespace(
    ...     components_=rng.random((4, 64 + 30)),
    ...     block_names_=["input", "fc1"],
    ...     block_slices_={"input": slice(0, 64), "fc1": slice(64, 94)},
    ... )
    >>> fig = plot_layer_factors(model)
    >>> fig.axes[0].get_ylabel()
    'fc1 unit'
    """
    _check_title(title)
    model = _unwrap_model(model)
    _check_fitted(model)
    names = _block_names(model)
    if names is None:
        raise ValueError(
            f"model={type(model).__name__} has no blocks (block_names_ or "
            "block_slices_); plot_layer_factors needs a coupled model."
        )
    if layers is None:
        layers = [b for b in names if b != "input"] or list(names)
    layers = _name_list(layers)
    unknown = [lay for lay in layers if lay not in names]
    if unknown:
        raise ValueError(
            f"layers contains {unknown[0]!r}, which is not a block of the model; "
            f"expected some of {names}.{did_you_mean(unknown[0], names)}"
        )
    if not layers:
        raise ValueError(
            f"layers=[]: nothing to draw; expected some of the model's blocks {names}."
        )
    if reduce not in ("channel", None):
        raise ValueError(f"reduce={reduce!r}: expected 'channel' or None.")
    if normalize not in ("factor", "unit", None):
        raise ValueError(f"normalize={normalize!r}: expected 'factor', 'unit' or None.")
    if max_rows is not None and (not is_integral(max_rows) or max_rows < 1):
        raise ValueError(f"max_rows={max_rows!r}: expected None or an integer >= 1.")

    panels = []
    for layer in layers:
        H = _block_components(model, layer)
        kind = "unit"
        if reduce == "channel":
            shape, split = _layer_shape_for(layer_shapes, layer)
            names = _block_feature_names(model, layer, layer_shapes)
            H, kind = _reduce_to_channels(H, layer, shape, names, split)
        M = H.T  # units x factors
        if normalize is not None:
            top = M.max(axis=0 if normalize == "factor" else 1, keepdims=True)
            M = np.divide(M, top, out=np.zeros_like(M), where=top > 0)
        panels.append((layer, kind, M.shape[0], *_max_bins(M, max_rows)))

    n = len(panels)
    n_rows, n_cols = _grid_shape(n, max_cols=3)
    n_factors = panels[0][3].shape[1]
    width = min(4.8, 1.9 + 0.25 * n_factors)
    fig = _new_figure(fig, (max(5.0, width * n_cols), 4.3 * n_rows + 0.4))
    axes = _panels(fig, n, n_rows, n_cols)
    label = {"factor": "weight / factor max", "unit": "weight / unit max"}.get(
        normalize, "weight"
    )
    # The panel titles name the layers; the axes repeat the names only when
    # every one fits along an axis (ONNX tensor names do not), so that the
    # panels are labelled alike.
    named = all(len(f"{layer} {kind}") <= 30 for layer, kind, *_ in panels)
    for ax, (layer, kind, n_units, M, per_row) in zip(axes, panels):
        vmax = 1.0 if normalize is not None else None
        im = ax.imshow(
            M,
            aspect="auto",
            cmap=cmap,
            interpolation="nearest",
            vmin=0.0,
            vmax=vmax,
            # rows merged by _max_bins still span their units on the y axis
            extent=(-0.5, M.shape[1] - 0.5, n_units - 0.5, -0.5),
        )
        ax.set_xlabel("latent factor")
        ax.set_ylabel((f"{layer} {kind}" if named else kind) + per_row)
        step = max(1, math.ceil(M.shape[1] / 12))
        ax.set_xticks(np.arange(0, M.shape[1], step))
        if n_units <= 24:
            ax.set_yticks(np.arange(n_units))
        if normalize is None:  # each panel on its own scale
            fig.colorbar(im, ax=ax, shrink=0.9).set_label(label)
    if normalize is not None:
        # every panel on the same 0-1 scale: one colorbar, not one per panel
        cb = fig.colorbar(
            im,
            ax=list(axes),
            shrink=0.9 if n_rows == 1 else 0.6,
            pad=0.05 / n_cols,  # the default pad is a share of all panels' width
            aspect=20 * (1 if n_rows == 1 else 1.5),
        )
        cb.set_label(label)
    if title is None:
        title = "Which units of each layer every latent factor uses"
    _suptitle(fig, title)
    # Long layer names (ONNX: "/pool2/MaxPool_output_0") are fitted to the
    # width of their panel when drawn: smaller, broken over lines, or shortened.
    _fit_titles(
        fig,
        [
            (ax, str(layer), f"({n_units} {kind}s)", {"sep": " "})
            for ax, (layer, kind, n_units, *_) in zip(axes, panels)
        ],
    )
    return fig


# --------------------------------------------------------------------------
# sample loadings
# --------------------------------------------------------------------------
def _as_loadings(W):
    """``W`` as a float array, or a TypeError saying what ``W`` should be."""
    how = "get it with W = model.transform(X) (or model.fit_transform(X))"
    if (
        hasattr(W, "components_")
        or hasattr(W, "fit")
        or hasattr(W, "steps")
        or hasattr(W, "best_estimator_")
    ):
        raise TypeError(
            f"W={type(W).__name__}: expected the sample loadings W, an array of "
            f"shape (n_samples, n_factors), not a model; {how}."
        )
    try:
        return np.asarray(to_numpy(W), dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"W={_describe(W)}: expected the sample loadings W, an array of "
            f"numbers of shape (n_samples, n_factors); {how}. ({exc})"
        ) from exc


class _SpacedLabels:
    """Extents of labels along one axis, kept at least ``pad`` pixels apart.

    Labels are offered in order of priority; :meth:`add` keeps one when it
    stays ``pad`` away from every label kept so far. Kept extents never
    overlap, so only the neighbours of a new one, in sorted order, are
    checked.
    """

    def __init__(self, pad):
        self.pad = pad
        self._spans = []  # kept (lo, hi), sorted

    def add(self, lo, hi):
        """Keep the label spanning ``lo..hi`` if it has room; True if kept."""
        i = bisect.bisect_left(self._spans, (lo, hi))
        for a, b in self._spans[max(0, i - 1) : i + 1]:
            if not (hi + self.pad <= a or b + self.pad <= lo):
                return False
        self._spans.insert(i, (lo, hi))
        return True


def _group_ticks(ax, starts, ends, names, pad_em=0.3):
    """Name the row groups of a heatmap on its y axis, no two names overlapping.

    Group ``i`` covers the rows ``starts[i]:ends[i]``. The figure's layout
    must have been run. A name goes at its group's centre when it stays at
    least ``pad_em`` of its height away from the names already placed, the
    largest groups first. Neighbouring groups each too thin for a name get
    one name for the run, ``"first–last"`` (a run is cut into pieces about
    two names tall); when that does not fit either, its groups are tried one
    by one. Groups left unnamed still have their
    boundaries drawn. Returns the labels as placed, top to bottom.
    """
    k = len(starts)
    if k == 0:
        return []
    centres = (np.asarray(starts) + np.asarray(ends) - 1) / 2.0
    # The height of a tick label, measured on the first group's name.
    ax.set_yticks(centres[:1], labels=names[:1])
    height = ax.get_yticklabels()[0].get_window_extent().height
    need = height * (1.0 + pad_em)

    def display_y(row):
        return float(ax.transData.transform((0.0, row))[1])

    placed = _SpacedLabels(pad_em * height)
    chosen = {}  # centre row -> name

    def place(row, name):
        y = display_y(row)
        if placed.add(y - height / 2.0, y + height / 2.0):
            chosen[row] = name
            return True
        return False

    # Groups tall enough for their own name stand alone; runs of smaller
    # neighbours form candidates "first–last", each run cut once it is two
    # names tall (60 thin classes get "0–4", "5–9", ..., not one "0–59").
    px_per_row = abs(display_y(1.0) - display_y(0.0))
    tall = (np.asarray(ends) - np.asarray(starts)) * px_per_row
    small = tall < need
    spans = []  # (first group, last group)
    i = 0
    while i < k:
        j, run = i, tall[i]
        while small[i] and j + 1 < k and small[j + 1] and run < 2 * need:
            j += 1
            run += tall[j]
        spans.append((i, j))
        i = j + 1

    def span_rows(span):
        return ends[span[1]] - starts[span[0]]

    left = []
    for a, b in sorted(spans, key=lambda sp: (-span_rows(sp), sp[0])):
        name = names[a] if a == b else f"{names[a]}\u2013{names[b]}"
        if not place((starts[a] + ends[b] - 1) / 2.0, name) and b > a:
            left.extend(range(a, b + 1))
    # A run whose name did not fit: its members, the largest first.
    for i in sorted(left, key=lambda i: (starts[i] - ends[i], i)):
        place(centres[i], names[i])
    rows = sorted(chosen)
    ax.set_yticks(rows, labels=[chosen[r] for r in rows])
    return [chosen[r] for r in rows]


def plot_sample_loadings(
    W,
    y=None,
    *,
    normalize="row",
    cmap="magma_r",
    max_samples=2000,
    ax=None,
    title=None,
):
    """Heatmap of the shared sample factor ``W`` (samples x latent factors).

    With labels ``y`` the rows are grouped by class, the class boundaries
    marked with lines and the classes named on the y axis (labels serve only
    the picture; nothing is fitted with them). Without labels the rows are
    sorted by their dominant factor, then by its weight, and the groups are
    marked the same way. Names never overlap: a run of neighbouring groups
    too thin for their own names gets one name, ``"8–13"``, and a group
    that has no room stays unnamed (its boundaries are still drawn). The
    names are placed again when the figure is drawn at another size.

    Parameters
    ----------
    W : array-like of shape (n_samples, n_factors)
        Non-negative loadings, e.g. ``CoupledNMF.fit_transform(X)`` or
        ``model.transform(X)``; passing the model itself is a TypeError.
    y : array-like of shape (n_samples,), optional
        Class of each sample, used for grouping only.
    normalize : {"row", None}, default="row"
        ``"row"`` divides each row by its maximum so every sample shows which
        factors it uses regardless of its overall intensity. With a single
        factor the loadings are drawn as they are (each row over its maximum
        would be 1).
    cmap : str, default="magma_r"
        Colormap (dark = strong loading).
    max_samples : int, default=2000
        Rows beyond this are thinned evenly (every k-th row after sorting) so
        the image stays readable; the title says so (the y label, when
        ``title`` is given).
    ax : matplotlib Axes, optional
        Axes to draw on; a new figure by default.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the heatmap and its colorbar.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek.plotting import plot_sample_loadings
    >>> rng = np.random.default_rng(0)
    >>> fig = plot_sample_loadings(rng.random((60, 5)), y=np.repeat([0, 1, 2], 20))
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['0', '1', '2']
    """
    _check_title(title)
    W = _as_loadings(W)
    if W.ndim != 2 or W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(
            f"W: expected a non-empty 2-D array (n_samples, n_factors), got shape "
            f"{W.shape}."
        )
    check_finite(W, name="W", where="plot_sample_loadings", what="the sample loadings")
    if W.min() < 0:
        i, j = np.unravel_index(int(np.argmax(W < 0)), W.shape)  # the first
        raise ValueError(
            f"W has negative values (W[{i}, {j}] = {W[i, j]:.4g}); expected "
            "non-negative loadings such as CoupledNMF's or NMF's W (signed "
            "scores, e.g. PCA's, have no 'share of a sample' to draw)."
        )
    if normalize not in ("row", None):
        raise ValueError(f"normalize={normalize!r}: expected 'row' or None.")
    if max_samples is not None and (not is_integral(max_samples) or max_samples < 1):
        raise ValueError(
            f"max_samples={max_samples!r}: expected None or an integer >= 1."
        )
    n, r = W.shape
    if y is not None:
        y = np.asarray(to_numpy(y))
        if y.shape != (n,):
            raise ValueError(
                f"y: expected shape ({n},) to match W's {n} rows, got {y.shape}."
            )
        try:
            order = np.argsort(y, kind="stable")
        except TypeError as exc:  # labels of mixed types (None among ints, ...)
            raise ValueError(
                f"y: the labels cannot be sorted into groups ({exc}); expected "
                "labels of one type, e.g. all ints or all strings."
            ) from None
        groups = y[order]
        group_label = "class"
    else:
        dom = W.argmax(axis=1)
        order = np.lexsort((-W[np.arange(n), dom], dom))
        groups = dom[order]
        group_label = "dominant factor"
    M = W[order]
    if r == 1:
        # one factor: every row over its maximum is 1, a uniform block
        normalize = None
    if normalize == "row":
        top = M.max(axis=1, keepdims=True)
        M = np.divide(M, top, out=np.zeros_like(M), where=top > 0)
    thinned = ""
    if max_samples is not None and n > max_samples:
        keep = np.linspace(0, n - 1, int(max_samples)).round().astype(int)
        M, groups = M[keep], groups[keep]
        thinned = f", {len(keep)} of the {n} rows shown"

    if _check_axes(ax) is None:
        fig = _new_figure(None, (min(9.0, max(5.0, 3.2 + 0.35 * r)), 5.5))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    vmax = 1.0 if normalize == "row" else max(float(M.max()), 1e-300)
    im = ax.imshow(
        M, aspect="auto", cmap=cmap, interpolation="nearest", vmin=0.0, vmax=vmax
    )
    ax.set_xlabel("latent factor")
    ylabel = f"samples grouped by {group_label}"
    if thinned and title is not None:  # the default title says it
        ylabel += f"\n({thinned[2:]})"
    ax.set_ylabel(ylabel)
    step = max(1, math.ceil(r / 15))
    ax.set_xticks(np.arange(0, r, step))
    # Group boundaries and centres, in display rows.
    change = np.flatnonzero(groups[1:] != groups[:-1]) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, len(groups)]
    for b in change:
        ax.axhline(b - 0.5, color="tab:cyan", lw=1.0)
    ax.set_yticks([])
    cb = fig.colorbar(im, ax=ax, shrink=0.9)
    cb.set_label("loading / row max" if normalize == "row" else "loading")
    if title is None:
        factors = "factor" if r == 1 else "factors"
        title = f"Sample loadings W ({n} samples x {r} {factors}{thinned})"
    # the axes take the figure's width less the colorbar and the labels
    width = ax.figure.bbox.width / _root_figure(ax.figure).dpi
    ax.set_title(_wrapped(title, max(width - 1.4, 1.5), 11), fontsize=11)
    # Group names where they fit: the row heights are known after the layout
    # (and placed again when the figure is drawn at another size).
    _layout(fig)
    names = [str(groups[s]) for s in starts]
    _text_fitter(fig).group_jobs.append(_GroupTickJob(ax, starts, ends, names))
    return fig


# --------------------------------------------------------------------------
# rank sweep
# --------------------------------------------------------------------------
def _tick_priority(value, keep):
    """Sort key of a candidate tick: ``keep`` first, then round numbers."""
    v = int(value)
    if v in keep:
        return (0, keep.index(v), v)
    for rank_, step in enumerate((10, 5, 2)):
        if v % step == 0:
            return (1 + rank_, 0, v)
    return (4, 0, v)


# Up to this many probed ranks, each gets a minor tick on the rank axis.
_MAX_MINOR_TICKS = 60


def _rank_tick_candidates(ranks, selected):
    """Integer tick values over the probed ranks, before any thinning.

    Every probed rank when there are at most 15 of them, else round values
    (:class:`~matplotlib.ticker.MaxNLocator` with ``integer=True``) over
    their range; the first and last probed rank and the selected one are
    always among them.
    """
    from matplotlib.ticker import MaxNLocator

    grid = np.unique(ranks[np.isfinite(ranks)]).astype(int)
    if grid.size == 0:
        return [], grid
    lo, hi = int(grid.min()), int(grid.max())
    if len(grid) <= 15:
        cands = set(grid.tolist())
    else:
        locs = MaxNLocator(nbins=10, steps=[1, 2, 5, 10], integer=True).tick_values(
            lo, hi
        )
        cands = {int(t) for t in locs if lo <= t <= hi} | {lo, hi}
    if selected is not None:
        cands.add(int(selected))
    return sorted(cands), grid


def _thin_x_ticks(ax, values, keep, label_width, label_height, pad_em=0.6):
    """The x tick values of ``values`` whose labels would not touch on ``ax``.

    Labels are centred under their ticks; ``label_width(v)`` is the width of
    the label of ``v`` and ``label_height`` the height of a line, in display
    pixels (the layout must have been run: the pixels per rank are those of
    the axes as laid out). Greedily, in order of :func:`_tick_priority`
    (``keep`` first, then multiples of 10, 5, 2), a tick is kept when its
    label is at least ``pad_em`` of a line height away from every label kept
    so far. Returns the kept tick values, ascending; nothing is changed.
    """
    if not values:
        return []
    y = ax.get_ylim()[0]
    xs = ax.transData.transform([(v, y) for v in values])[:, 0]
    boxes = {}
    for v, x in zip(values, xs):
        half = label_width(v) / 2.0
        boxes[v] = (x - half, x + half)
    placed = _SpacedLabels(pad_em * label_height)
    ordered = sorted(boxes, key=lambda v: _tick_priority(v, keep))
    return sorted(v for v in ordered if placed.add(*boxes[v]))


def _checked_curve(layer, c):
    """One curve of a ``curves_``-like dict, its arrays checked and converted."""
    where = f"scorer_or_curves[{layer!r}]"
    out = dict(c)
    for key in ("ranks", "mean", "std"):
        if key not in c or (key == "std" and c[key] is None):
            continue
        try:
            values = np.asarray(to_numpy(c[key]), dtype=float)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}[{key!r}]={c[key]!r} is not understood; expected a 1-D "
                "sequence of numbers."
            ) from None
        if values.ndim != 1:
            raise ValueError(
                f"{where}[{key!r}] has shape {values.shape}; expected a 1-D "
                "sequence of numbers, one per rank."
            )
        out[key] = values
    n = len(out["ranks"])
    for key in ("mean", "std"):
        if key in out and out[key] is not None and len(out[key]) != n:
            raise ValueError(
                f"{where} has {n} ranks but {len(out[key])} {key} values; expected "
                "one per rank."
            )
    sel = c.get("selected")
    if sel is None or isinstance(sel, str):
        value = sel
    else:
        try:
            value = float(to_numpy(sel))  # 2.0 from a table, NaN for none
        except (TypeError, ValueError):
            value = sel
    if isinstance(value, float) and math.isnan(value):
        out["selected"] = None
    elif value is not None:
        if not (isinstance(value, float) and value in out["ranks"]):
            raise ValueError(
                f"{where}['selected']={sel!r} is not one of its ranks; expected None "
                f"(or NaN) or one of {[int(r) for r in out['ranks']]}."
            )
        out["selected"] = int(value)
    return out


def _curves_from(obj):
    """``{layer: {"ranks", "mean", "std", "selected"}}`` from a scorer or dict."""
    if hasattr(obj, "curves_"):
        return dict(obj.curves_), getattr(obj, "criterion", None)
    if hasattr(obj, "cv_results_") or (
        isinstance(obj, dict) and {"layer", "rank", "mean_score"} <= set(obj)
    ):
        res = obj.cv_results_ if hasattr(obj, "cv_results_") else obj
        sel = dict(getattr(obj, "rank_", {}) or {})
        layers = np.asarray(res["layer"])
        if not sel and "selected" in res:  # a cv_results_ dict on its own
            chosen = np.asarray(res["selected"], dtype=bool)
            for layer, rank in zip(layers[chosen], np.asarray(res["rank"])[chosen]):
                sel.setdefault(layer, int(rank))
        curves = {}
        for layer in dict.fromkeys(layers.tolist()):
            m = layers == layer
            curves[layer] = {
                "ranks": np.asarray(res["rank"])[m],
                "mean": np.asarray(res["mean_score"], dtype=float)[m],
                "std": np.asarray(res.get("std_score", np.zeros(m.sum())), dtype=float)[
                    m
                ],
                "selected": sel.get(layer),
            }
        return curves, getattr(obj, "criterion", None)
    if isinstance(obj, dict):
        want = (
            "expected a dict with 'ranks' and 'mean' (and optionally 'std', "
            "'selected'), as RankQualityScorer.curves_ holds."
        )
        for layer, c in obj.items():
            if not isinstance(c, dict):
                raise ValueError(
                    f"scorer_or_curves[{layer!r}] is a {type(c).__name__}; {want}"
                )
            missing = [k for k in ("ranks", "mean") if k not in c]
            if missing:
                raise ValueError(f"scorer_or_curves[{layer!r}] lacks {missing}; {want}")
        return {layer: _checked_curve(layer, c) for layer, c in obj.items()}, None
    raise TypeError(
        f"scorer_or_curves={type(obj).__name__}: expected a fitted RankQualityScorer "
        "(with curves_) or a dict layer -> {'ranks', 'mean', 'std', 'selected'}."
    )


def _shared_legend(fig, axes):
    """One legend for the panels of ``fig``: the entries of every panel, each
    label once (a legend in every panel covered its curve). Below the panels
    when the figure's layout is constrained (it makes room there); otherwise
    in the last panel, where nothing else would keep it off the tick labels.
    """
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if not handles:
        return
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    engine = _root_figure(fig).get_layout_engine()
    if not isinstance(engine, ConstrainedLayoutEngine):
        axes[-1].legend(list(handles.values()), list(handles), fontsize=8)
        return
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=len(handles),
        fontsize=8,
        frameon=False,
    )


def plot_rank_sweep(
    scorer_or_curves,
    layers=None,
    *,
    criterion=None,
    ncols=None,
    fig=None,
    title=None,
):
    """Criterion vs rank for each layer, with the spread over folds and the pick.

    Each panel shows the mean criterion over cross-validation folds as a line,
    a band of plus/minus one standard deviation, and the selected rank as a
    dashed vertical line with a marker on the curve; the panel title states
    the selected rank. One legend below the panels names these (in the last
    panel, on a figure of yours without constrained layout); the y axis is
    labelled on the first panel of each row.

    The x axis has a minor tick at every probed rank (up to 60 probed ranks;
    beyond, only the labelled ticks) and integer labels that never overlap:
    as many of the probed ranks (or of round values, beyond 15 ranks) as fit
    side by side, the selected rank always among them, in bold red. A title
    too long for its panel (ONNX layer names such as
    ``"/pool2/MaxPool_output_0"``) is set smaller, then on two lines, then
    with the name broken after ``/`` or ``_``, and only as a last resort
    shortened in the middle (``"/pool2/Ma…output_0"``).

    Titles and tick labels are fitted whenever the figure is drawn (shown,
    saved, or ``fig.canvas.draw()``), to the size and dpi it is drawn at:
    until then each title reads ``"<layer>: selected rank <k>"`` and every
    candidate tick is labelled. A title or ticks you set yourself afterwards
    are left as you set them.

    Parameters
    ----------
    scorer_or_curves : fitted RankQualityScorer or dict
        The scorer (its ``curves_`` are used, or ``cv_results_`` and
        ``rank_``), or a dict ``layer -> {"ranks": ..., "mean": ..., "std":
        ..., "selected": ...}``; ``"std"`` and ``"selected"`` may be missing.
    layers : list of str, optional
        Layers to draw, in order; all by default.
    criterion : str, optional
        Y-axis label; by default the scorer's ``criterion`` or the curve's
        ``"criterion"`` entry, spelled out for the scorer's criteria (``"bcv"``
        becomes "BCV score (minus held-out relative error)", on two lines).
    ncols : int, optional
        Panels per row (at most 3 by default).
    fig : matplotlib Figure, optional
        Figure to draw on; a new one by default.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per layer.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek.plotting import plot_rank_sweep
    >>> ranks = np.arange(1, 9)
    >>> curves = {"fc1": {"ranks": ranks, "mean": -(ranks - 4.0) ** 2,
    ...                   "std": np.full(8, 0.5), "selected": 4}}
    >>> fig = plot_rank_sweep(curves)
    >>> fig.axes[0].get_title()
    'fc1: selected rank 4'
    """
    _check_title(title)
    curves, crit = _curves_from(scorer_or_curves)
    if not curves:
        raise ValueError("scorer_or_curves holds no curves.")
    layers = list(curves) if layers is None else _name_list(layers)
    unknown = [lay for lay in layers if lay not in curves]
    if unknown:
        raise ValueError(
            f"layers contains {unknown[0]!r}, which has no curve; expected some of "
            f"{list(curves)}.{did_you_mean(unknown[0], list(curves))}"
        )
    n = len(layers)
    if n == 0:
        raise ValueError(
            f"layers=[]: nothing to draw; expected some of {list(curves)}."
        )
    n_rows, n_cols = _grid_shape(n, max_cols=3, ncols=ncols)
    fig = _new_figure(fig, (max(4.5, 3.9 * n_cols), 3.2 * n_rows + 0.5))
    drawn = []
    for ax, layer in zip(_panels(fig, n, n_rows, n_cols), layers):
        c = curves[layer]
        ranks = np.asarray(c["ranks"], dtype=float)
        order = np.argsort(ranks, kind="stable")  # a line from rank to rank
        ranks = ranks[order]
        mean = np.asarray(c["mean"], dtype=float)[order]
        std = c.get("std")
        name = criterion or c.get("criterion") or crit
        label = _CRITERION_LABELS.get(name, name or "criterion")
        # bcv's curve is a mean over folds; the other criteria fit once per
        # rank (stability: its restarts give one value), so no spread
        over = " over folds" if name == "bcv" else ""
        if std is not None:
            std = np.asarray(std, dtype=float)[order]
            if not np.any(std > 0):
                std = None
        ax.plot(
            ranks, mean, "-o", color="tab:blue", ms=3.5, lw=1.6,
            label=f"mean{over}" if std is not None or over else str(label),
        )  # fmt: skip
        if std is not None:
            ax.fill_between(
                ranks,
                mean - std,
                mean + std,
                color="tab:blue",
                alpha=0.2,
                lw=0,
                label=f"± 1 std{over}",
            )
        sel = c.get("selected")
        if sel is not None and not (isinstance(sel, float) and np.isnan(sel)):
            sel = int(sel)
            ax.axvline(sel, color="tab:red", ls="--", lw=1.2)
            hit = np.flatnonzero(ranks == sel)
            if hit.size:
                ax.plot(
                    [sel],
                    [mean[hit[0]]],
                    marker="*",
                    ms=14,
                    color="tab:red",
                    ls="none",
                    label="selected rank",
                    zorder=5,
                )
        else:
            sel = None
        ax.set_xlabel("rank")
        # The y label once per row (on its first panel, and where it
        # changes): on every panel it took the panel's height and width.
        if len(drawn) % n_cols == 0:
            row_label = None
        if str(label) != row_label:
            ax.set_ylabel(str(label))
            row_label = str(label)
        cands, grid = _rank_tick_candidates(ranks, sel)
        if len(grid) <= _MAX_MINOR_TICKS:
            # Every probed rank gets a minor tick, labelled or not (more
            # would merge into a comb).
            from matplotlib.ticker import FixedLocator

            ax.xaxis.set_minor_locator(FixedLocator(grid))
        ax.grid(alpha=0.3)
        drawn.append((ax, layer, sel, grid, cands))
    if title is None:
        title = "Rank sweep per layer"
    _suptitle(fig, title)
    _shared_legend(fig, [ax for ax, *_ in drawn])
    # Titles and tick labels are fitted to the space the layout gives them,
    # whenever the figure is drawn.
    _fit_titles(
        fig,
        [
            (
                ax,
                str(layer),
                "no rank selected" if sel is None else f"selected rank {sel}",
                {},
            )
            for ax, layer, sel, _, _ in drawn
        ],
    )
    fitter = _text_fitter(fig)
    for ax, _, sel, grid, cands in drawn:
        keep = [] if sel is None else [sel]
        if grid.size:
            keep += [int(grid[0]), int(grid[-1])]
        fitter.tick_jobs.append(_TickJob(ax, cands, keep, sel))
    return fig


# --------------------------------------------------------------------------
# rank vs training quality
# --------------------------------------------------------------------------
def _as_columns(table):
    """A dict of 1-D arrays from a DataFrame or a dict of lists."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        return {str(c): np.asarray(table[c]) for c in table.columns}
    if isinstance(table, dict):
        cols = {str(k): np.asarray(v) for k, v in table.items()}
        lengths = {len(v) for v in cols.values() if v.ndim == 1}
        if len(lengths) > 1:
            raise ValueError(
                f"table: the columns have different lengths {sorted(lengths)}."
            )
        return cols
    raise TypeError(
        f"table={type(table).__name__}: expected a pandas DataFrame or a dict of lists."
    )


def _numbers(column, name):
    """A table column as float values; a column that is not numbers is named."""
    try:
        return np.asarray(column, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"column {name!r} of table holds {column[:3].tolist()!r}...; expected "
            "numbers."
        ) from None


def _rank_column(cols, layer, criterion, rank_col):
    """Find the selected-rank values for ``layer`` (and ``criterion``).

    Returns ``(mask, column)``: the rows of ``layer`` (all rows of a wide
    table) and the column that holds their ranks. In a long table (a
    ``"layer"`` column) the rows are those of ``layer`` and, when the table
    has a ``"criterion"`` column and ``criterion`` is given, of that
    criterion, also when ``rank_col`` names the rank column.
    """
    if rank_col is not None and rank_col not in cols:
        raise ValueError(
            f"rank_col={rank_col!r} is not a column of table: {list(cols)}."
        )
    # Long format: one row per (network, layer[, criterion]) with a "rank" column.
    if "layer" in cols and (
        rank_col is not None or "rank" in cols or "selected_rank" in cols
    ):
        col = rank_col or ("rank" if "rank" in cols else "selected_rank")
        mask = cols["layer"].astype(str) == str(layer)
        if criterion is not None and "criterion" in cols:
            mask &= cols["criterion"].astype(str) == str(criterion)
        if not mask.any():
            raise ValueError(
                f"layer={layer!r}, criterion={criterion!r}: no rows in table "
                f"(layers {sorted(set(cols['layer'].astype(str).tolist()))})."
            )
        return mask, col
    if rank_col is not None:  # wide: the column holds one layer's ranks
        return np.ones(len(cols[rank_col]), bool), rank_col
    # Wide format: a column per layer (and criterion).
    cands = []
    if criterion is not None:
        for a, b in ((layer, criterion), (criterion, layer)):
            cands += [
                f"rank_{a}_{b}",
                f"rank_{a}__{b}",
                f"{a}_{b}",
                f"{a}__{b}",
                f"rank[{a}][{b}]",
                f"rank_{a}[{b}]",
                f"rank[{a}, {b}]",
            ]
    cands += [f"rank_{layer}", f"rank[{layer}]", f"{layer}_rank", str(layer)]
    for c in cands:
        if c in cols:
            return np.ones(len(cols[c]), bool), c
    # The columns of this layer under some criterion: rank_<layer>_<criterion>
    # or <layer>_<criterion> (run_case_study's tables).
    prefixes = [f"rank_{layer}_", f"rank_{layer}__", f"{layer}__", f"{layer}_"]
    mine = {}
    for c in map(str, cols):
        for pre in prefixes:
            if c.startswith(pre) and len(c) > len(pre):
                mine.setdefault(c, c[len(pre) :])
                break
    if criterion is None and len(mine) == 1:
        # One rank column for this layer (under any criterion) is unambiguous.
        (only,) = mine
        return np.ones(len(cols[only]), bool), only
    if criterion is None and mine:
        raise ValueError(
            f"layer={layer!r}, criterion=None: table has {len(mine)} rank columns "
            f"for this layer ({list(mine)}); pass criterion= one of "
            f"{list(dict.fromkeys(mine.values()))}, or rank_col=..."
        )
    names = list(map(str, cols))
    raise ValueError(
        f"layer={layer!r}, criterion={criterion!r}: cannot find the selected-rank "
        f"column in table (columns {names}); pass rank_col=..."
        + did_you_mean(f"{layer}_{criterion}" if criterion else str(layer), names)
    )


def _spearman(x, y, *, n_boot, random_state):
    """Spearman's rho and its 95% bootstrap interval; NaNs when undefined."""
    from sklearn_peek._stats import spearman_ci

    if len(x) < 3:
        return float("nan"), float("nan"), float("nan")
    res = spearman_ci(x, y, n_boot=n_boot, random_state=random_state)
    return res.rho, res.ci_low, res.ci_high


#: At most this many distinct levels get a stepped colorbar, one colour each.
_DISCRETE_LEVELS = 10

# What the "level" of each case-study degradation counts (see
# sklearn_peek.studies.LeNetClassifier), for the colorbar of the levels.
_LEVEL_LABELS = {
    "epochs": "epochs: number of training epochs",
    "fraction": "fraction: share of training images kept",
    "classes": "classes: number of classes kept",
    "unshuffled": "unshuffled: share of samples in class order",
    "label_noise": "label_noise: share of labels replaced",
}


def _hue_label(hue, sub):
    """Legend or colorbar title for ``hue``.

    A ``"level"`` column says nothing by itself: when the table holds a
    single ``"degradation"`` (the case-study runner's table has that column),
    the label names it and what its level counts, e.g. ``"epochs: number of
    training epochs"``; an unknown degradation ``d`` gives ``"d level"``.
    """
    if hue != "level" or "degradation" not in sub:
        return str(hue)
    degs = {str(d) for d in sub["degradation"].tolist()}
    if len(degs) != 1:
        return str(hue)
    (deg,) = degs
    if deg in ("", "None", "nan"):
        return str(hue)
    return _LEVEL_LABELS.get(deg, f"{deg} level")


def _corner_box(cx, cy, w, h, gap, corner):
    """The (x0, y0, x1, y1) box of a ``w`` x ``h`` label ``gap`` away from
    the point ``(cx, cy)`` at ``corner``, ``(+-1, +-1)`` (right/left,
    above/below)."""
    sx, sy = corner
    x0 = cx + sx * gap - (w if sx < 0 else 0)
    y0 = cy + sy * gap - (h if sy < 0 else 0)
    return (x0, y0, x0 + w, y0 + h)


def _free(box, placed):
    """``box`` overlaps none of the boxes in ``placed``."""
    return not any(
        b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3]
        for b in placed
    )


def _count_overlaps(ax, x, y, fontsize=8):
    """Label each point that several rows share with how many share it.

    Networks trained the same way (a degradation at its mildest level is the
    undegraded network) give the same (quality, rank) pair; drawn on top of
    each other they would look like one. A small "×k" beside the point says
    how many there are: above right of it, or at another corner where that
    would cover a label placed before (larger piles first), to the left
    first near the right edge. Positions are judged on the axes as laid out
    now; the labels keep their offsets in points when the figure is resized.
    """
    pairs, counts = np.unique(np.column_stack([x, y]), axis=0, return_counts=True)
    piles = sorted(
        ((int(k), float(px), float(py)) for (px, py), k in zip(pairs, counts) if k > 1),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    if not piles:
        return
    pt = ax.figure.dpi / 72.0  # display pixels per point
    lo, hi = sorted(ax.get_xlim())
    placed = []  # label boxes (x0, y0, x1, y1) in display pixels
    for k, px, py in piles:
        text = f"\u00d7{k}"
        w, h = 0.62 * fontsize * len(text) * pt, fontsize * pt
        cx, cy = ax.transData.transform((px, py))
        corners = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
        if px > lo + 0.85 * (hi - lo):  # near the right edge: left first
            corners = [(-1, 1), (-1, -1), (1, 1), (1, -1)]
        boxes = [_corner_box(cx, cy, w, h, 4 * pt, c) for c in corners]
        # the first free corner; with none free, the first, as it would be
        i = next((i for i, b in enumerate(boxes) if _free(b, placed)), 0)
        (sx, sy), box = corners[i], boxes[i]
        placed.append(box)
        ax.annotate(
            text,
            (px, py),
            xytext=(4 * sx, 4 * sy),
            textcoords="offset points",
            ha="left" if sx > 0 else "right",
            va="bottom" if sy > 0 else "top",
            fontsize=fontsize,
            color="0.2",
            gid="overlap-count",
        )


def plot_rank_vs_quality(
    table,
    *,
    layer,
    criterion=None,
    quality="accuracy",
    hue=None,
    rank_col=None,
    spearman=None,
    n_boot=2000,
    random_state=0,
    ax=None,
    title=None,
):
    """Scatter of each network's selected rank against its test accuracy.

    One point per trained network; a point that several networks share
    (same quality, same rank) is labelled with their count, "×3". The title
    gives Spearman's rho between
    rank and ``quality`` with its 95% bootstrap interval: the paper's claim is
    that it is positive (networks trained worse support a lower rank).

    Parameters
    ----------
    table : pandas DataFrame or dict of lists
        One row per network (wide: a rank column per layer/criterion such as
        ``"rank_fc1_bcv"``), or one row per (network, layer, criterion) with
        ``"layer"``, ``"criterion"`` and ``"rank"`` columns (long).
    layer : str
        Layer whose selected rank is drawn.
    criterion : str, optional
        Rank criterion, when the table has several (a ``"criterion"`` column
        of a long table, or columns such as ``"rank_fc1_bcv"``); also named
        in the title.
    quality : str, default="accuracy"
        Column with the training-quality measure (x axis).
    hue : str, optional
        Column that colours the points. Default: ``"degradation"`` when it
        takes several values (categorical colours), else ``"level"`` (a
        colormap with a colorbar) when present. When the table holds a single
        degradation, the colorbar of ``"level"`` names it and what its level
        counts (``"epochs: number of training epochs"``).
    rank_col : str, optional
        Name of the rank column, when it cannot be guessed. In a long table
        the rows are still those of ``layer`` (and ``criterion``).
    spearman : tuple (rho, low, high), optional
        Precomputed correlation (e.g. from the case-study runner); computed
        here otherwise (seeded percentile bootstrap of the pairs).
    n_boot, random_state : int
        Bootstrap settings when rho is computed here.
    ax : matplotlib Axes, optional
        Axes to draw on; a new figure by default.
    title : str, optional
        Axes title; by default names the layer, criterion and rho.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sklearn_peek.plotting import plot_rank_vs_quality
    >>> table = {"accuracy": [0.2, 0.5, 0.7, 0.9, 0.95],
    ...          "rank_fc1": [2, 3, 3, 6, 7],
    ...          "level": [0.05, 0.1, 0.2, 0.5, 1.0]}
    >>> fig = plot_rank_vs_quality(table, layer="fc1")
    >>> "rho = +0.97" in fig.axes[0].get_title()
    True
    """
    _check_title(title)
    cols = _as_columns(table)
    if quality not in cols:
        raise ValueError(f"quality={quality!r} is not a column of table: {list(cols)}.")
    mask, rcol = _rank_column(cols, layer, criterion, rank_col)
    x, yv = (_numbers(cols[c][mask], c) for c in (quality, rcol))
    ok = np.isfinite(x) & np.isfinite(yv)
    if not ok.any():
        raise ValueError(f"layer={layer!r}: no finite (quality, rank) pairs in table.")
    if not ok.all():
        warnings.warn(
            f"plot_rank_vs_quality: {int((~ok).sum())} of {ok.size} rows have a NaN "
            f"or infinite {quality!r} or {rcol!r} and are not drawn nor counted in "
            "Spearman's rho.",
            UserWarning,
            stacklevel=2,
        )
    sub = {
        k: v[mask][ok] for k, v in cols.items() if v.ndim == 1 and len(v) == len(mask)
    }
    x, yv = x[ok], yv[ok]
    if spearman is None:
        rho, lo, hi = _spearman(x, yv, n_boot=n_boot, random_state=random_state)
    else:
        try:
            rho, lo, hi = (float(v) for v in spearman)
        except (TypeError, ValueError):
            raise ValueError(
                f"spearman={spearman!r}: expected (rho, low, high), e.g. a row of "
                "studies' correlations table, or None to compute it."
            ) from None

    if _check_axes(ax) is None:
        fig = _new_figure(None, (6.2, 4.6))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    if hue is None:
        if "degradation" in sub and len(set(sub["degradation"].tolist())) > 1:
            hue = "degradation"
        elif "level" in sub:
            hue = "level"
    if hue is not None and hue not in sub:
        raise ValueError(f"hue={hue!r} is not a column of table: {list(cols)}.")
    if hue is None:
        ax.scatter(x, yv, s=45, color="tab:blue", edgecolor="k", lw=0.5, alpha=0.85)
    else:
        h = sub[hue]
        numeric = np.issubdtype(h.dtype, np.number) and len(set(h.tolist())) > 4
        if hue == "level" and np.issubdtype(h.dtype, np.number):
            numeric = True
        if numeric:
            values = h.astype(float)
            levels = np.unique(values)
            if len(levels) <= _DISCRETE_LEVELS:
                # A case study's few levels (epochs 0, 1, 3, 10): one evenly
                # spaced colour each, as a stepped colorbar labelled with the
                # levels; on a linear scale 0 and 1 would look alike.
                import matplotlib as mpl

                k = len(levels)
                sc = ax.scatter(
                    x,
                    yv,
                    c=np.searchsorted(levels, values),
                    cmap=mpl.colormaps["viridis"].resampled(k),
                    norm=mpl.colors.BoundaryNorm(np.arange(k + 1) - 0.5, k),
                    s=45,
                    edgecolor="k",
                    lw=0.5,
                    alpha=0.9,
                )
                cb = fig.colorbar(sc, ax=ax, shrink=0.9, ticks=np.arange(k))
                cb.set_ticklabels([f"{v:g}" for v in levels])
                cb.minorticks_off()
            else:
                sc = ax.scatter(
                    x,
                    yv,
                    c=values,
                    cmap="viridis",
                    s=45,
                    edgecolor="k",
                    lw=0.5,
                    alpha=0.9,
                )
                cb = fig.colorbar(sc, ax=ax, shrink=0.9)
                if np.all(values == np.round(values)):  # whole epochs: whole ticks
                    from matplotlib.ticker import MaxNLocator

                    cb.locator = MaxNLocator(integer=True)
                    cb.update_ticks()
            cb.set_label(_hue_label(hue, sub))
        else:
            import matplotlib as mpl

            colors = mpl.colormaps["tab10"]
            for i, val in enumerate(dict.fromkeys(h.tolist())):
                m = h == val
                ax.scatter(
                    x[m],
                    yv[m],
                    s=45,
                    color=colors(i % 10),
                    edgecolor="k",
                    lw=0.5,
                    alpha=0.9,
                    label=str(val),
                )
            ax.legend(
                title=_hue_label(hue, sub), fontsize=8, title_fontsize=8, loc="best"
            )
    ax.set_xlabel(f"test {quality}" if quality == "accuracy" else quality)
    ax.set_ylabel(f"selected rank ({layer})")
    ax.grid(alpha=0.3)
    if np.all(yv == np.round(yv)):
        from matplotlib.ticker import MaxNLocator

        # Ranks are integers: integer ticks, and room for a constant rank.
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        lo_y, hi_y = ax.get_ylim()
        pad = 1.0 if np.ptp(yv) < 2 else 0.6
        ax.set_ylim(min(lo_y, yv.min() - pad), max(hi_y, yv.max() + pad))
    _layout(fig)  # the axes as they will be drawn, for the labels' room
    _count_overlaps(ax, x, yv)
    if np.isnan(rho):
        if len(x) < 3:
            why = "fewer than 3 networks"
        elif np.ptp(yv) == 0:
            why = "the same rank for every network"
        else:
            why = f"the same {quality} for every network"
        stat = f"Spearman rho undefined ({why})"
    elif np.isnan(lo):  # n_boot=0, or too many tied resamples (spearman_ci)
        stat = f"Spearman rho = {rho:+.2f} (no interval)"
    else:
        stat = f"Spearman rho = {rho:+.2f} [95% CI {lo:+.2f}, {hi:+.2f}]"
    if title is not None:
        ax.set_title(title, fontsize=11)
        return fig
    crit = f", {criterion}" if criterion else ""
    name, detail = f"{layer}{crit}", f"rank vs {quality}, n = {len(x)}\n{stat}"
    _fit_titles(fig, [(ax, name, detail, {})])
    return fig
