"""Errors shared by both runtimes: unknown layers, channels that do not fit.

Both are ``ValueError`` subclasses that carry what went wrong as attributes,
so that a caller (the command line) can word its own advice without parsing
the message. The phrase ``channel_repeat=True`` appears in a channel message
only where that parameter fixes the problem: single-channel samples for a
model that takes several channels.
"""

from __future__ import annotations


class UnknownLayerError(ValueError):
    """A name in ``layers`` that the model does not have.

    Attributes
    ----------
    name : str
        The name asked for.
    close_matches : list of str
        The model's layer names closest to it (may be empty).
    kind : str
        The model's runtime, ``"torch"`` or ``"onnx"``.
    """

    def __init__(self, name, close_matches, kind):
        # All in args, so that pickle and copy can rebuild the error.
        super().__init__(name, list(close_matches), kind)
        self.name, self.close_matches, self.kind = name, list(close_matches), kind

    def __str__(self):
        hint = f" Close matches: {self.close_matches}." if self.close_matches else ""
        return (
            f"layers: {self.name!r} is not a layer of this {self.kind} model.{hint} "
            "Call sklearn_peek.available_layers(model, input_shape) for the full "
            "list."
        )


class ChannelMismatchError(ValueError):
    """Samples whose channel count the model's first layer does not take.

    Attributes
    ----------
    expected : int
        Channels the model takes.
    got : int
        Channels of the samples (1 for samples without a channel axis; for
        samples that look channels-last, the last axis).
    channels_last : bool
        The samples look like ``(H, W, C)`` images (:func:`looks_channels_last`).
    sample_shape : tuple of int
        One sample as given (without the channel axis when ``no_axis``).
    no_axis : bool
        The samples had no channel axis.
    detail : str
        What failed before the mismatch was found (e.g. torch's own error),
        or "".
    """

    def __init__(self, expected, sample_shape, no_axis=False, layer="first layer",
                 detail=""):  # fmt: skip
        shape = tuple(int(d) for d in sample_shape)
        super().__init__(expected, shape, no_axis, layer, detail)
        self.expected, self.sample_shape, self.no_axis = int(expected), shape, no_axis
        self.channels_last = looks_channels_last(expected, shape, no_axis=no_axis)
        self.got = 1 if no_axis else shape[-1] if self.channels_last else shape[0]
        self.layer, self.detail = layer, detail

    def __str__(self):
        text = channel_mismatch(
            self.expected, self.sample_shape, no_axis=self.no_axis, layer=self.layer
        )
        return f"{self.detail} {text}" if self.detail else text


def _plural(n, word="channel"):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def looks_channels_last(want, sample_shape, *, no_axis=False):
    """Whether samples of ``sample_shape`` look like ``(H, W, C)`` images.

    Channels last, as PIL, TensorFlow and matplotlib keep them: the last axis
    has the model's channel count (or 1 or 3) and the first is too long to be
    a channel axis.
    """
    shape = tuple(int(d) for d in sample_shape)
    return (
        not no_axis
        and len(shape) >= 3
        and shape[-1] in (int(want), 1, 3)
        and shape[0] > 4
    )


def channel_mismatch(want, sample_shape, *, no_axis=False, layer="first layer"):
    """Say that samples of ``sample_shape`` do not fit a model taking ``want``
    channels, and how to convert ``X``.

    Parameters
    ----------
    want : int
        Channels the model's first layer takes.
    sample_shape : tuple of int
        One sample as fed (``(C, H, W)``), or without its channel axis
        (``(H, W)``) when ``no_axis``.
    no_axis : bool, default=False
        ``X`` has no channel axis: its samples are single-channel images.
    layer : str, default="first layer"
        How to name the layer that takes ``want`` channels.

    Returns
    -------
    str
        A sentence ending with a full stop.
    """
    head, advice = mismatch_parts(want, sample_shape, no_axis=no_axis, layer=layer)
    return f"{head}: {advice}." if advice else f"{head}."


def mismatch_parts(want, sample_shape, *, no_axis=False, layer="first layer"):
    """:func:`channel_mismatch`'s sentence in two parts: ``(statement,
    advice)``, both without the full stop; ``advice`` is None when no
    conversion is known for these channel counts. The command line words
    its own advice after the statement."""
    shape = tuple(int(d) for d in sample_shape)
    got = 1 if no_axis else shape[0]
    if looks_channels_last(want, shape, no_axis=no_axis):
        last = shape[-1]
        head = (
            f"X has samples of shape {shape}, channels last ({_plural(last)}) by "
            f"the look of it, but the model's {layer} expects channels first "
            f"({_plural(want)})"
        )
        move = "move the channel axis first with np.moveaxis(X, -1, 1)"
        if last == want:
            return head, move
        _, then = mismatch_parts(want, (last, *shape[:-1]), layer=layer)
        if then is None:  # no conversion for these counts (e.g. 3 -> 4)
            then = f"convert it to the {_plural(want)} the model takes"
        return head, f"{move}, then {then}"
    if no_axis:
        what = f"X has samples of shape {shape}, without a channel axis"
    else:
        what = f"X has samples of shape {shape} ({_plural(got)})"
    head = f"{what}, but the model's {layer} expects {_plural(want)}"
    if no_axis and want == 1:
        return head, "add the channel axis with X[:, None]"
    if got == 1 and want > 1:
        x = "X[:, None]" if no_axis else "X"
        return head, (
            f"repeat the single channel with np.repeat({x}, {want}, axis=1), "
            "or pass channel_repeat=True to repeat it on the fly"
        )
    if want == 1 and got == 3:
        return head, (
            "convert the RGB images to grayscale, e.g. X.mean(axis=1, keepdims=True)"
        )
    return head, None
