"""Wording shared by both runtimes for samples whose channels do not fit.

The command line rewrites the literal phrase ``channel_repeat=True`` into its
own flag, so the phrase appears only where that parameter fixes the problem:
single-channel samples for a model that takes several channels.
"""

from __future__ import annotations


def _plural(n, word="channel"):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


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
    shape = tuple(int(d) for d in sample_shape)
    got = 1 if no_axis else shape[0]
    if no_axis:
        what = f"X has samples of shape {shape}, without a channel axis"
    else:
        what = f"X has samples of shape {shape} ({_plural(got)})"
    head = f"{what}, but the model's {layer} expects {_plural(want)}"
    if no_axis and want == 1:
        return f"{head}: add the channel axis with X[:, None]."
    if got == 1 and want > 1:
        x = "X[:, None]" if no_axis else "X"
        return (
            f"{head}: repeat the single channel with np.repeat({x}, {want}, axis=1), "
            "or pass channel_repeat=True to repeat it on the fly."
        )
    if want == 1 and got == 3:
        return (
            f"{head}: convert the RGB images to grayscale, e.g. "
            "X.mean(axis=1, keepdims=True)."
        )
    return f"{head}."
