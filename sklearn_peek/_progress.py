"""Progress bars for long work (tqdm), shown where a person is watching."""

from __future__ import annotations

import os
import sys


def show_progress(progress):
    """Whether to draw a progress bar.

    ``progress``: True or False as given; None (the estimators' default)
    draws one when a person is watching: standard error is a terminal, or
    the code runs in a Jupyter kernel (whose stderr is no terminal); the
    ``CI`` environment variable is unset, so logs and test runs stay clean;
    and this is the main process, not a worker of joblib (a GridSearchCV
    with ``n_jobs``): workers share the parent's terminal, where their bars
    would write over each other.
    """
    if progress is not None:
        return bool(progress)
    if _in_worker_process():
        return False
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return (tty or _in_jupyter_kernel()) and not os.environ.get("CI")


def _in_worker_process():
    """Whether this is a child process started by multiprocessing or loky
    (joblib's process backends); their process names are not the main one's."""
    import multiprocessing

    return multiprocessing.current_process().name != "MainProcess"


def _in_jupyter_kernel():
    """Whether this runs in a Jupyter kernel (IPython's shell has a kernel);
    IPython is only looked at when something has imported it already."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # a half-initialised IPython: no notebook
        return False
    return getattr(shell, "kernel", None) is not None


def progress_bar(progress, *, total, desc, unit):
    """A tqdm bar when :func:`show_progress` says so, else None."""
    if not show_progress(progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def ticking(items, bar):
    """Yield ``items``, ticking ``bar`` (from :func:`progress_bar`; None for
    no bar) once each one's work is done (when the next is asked for); the
    bar is closed at the end, also when the loop stops early or raises."""
    if bar is None:
        yield from items
        return
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def collect(results, bar):
    """``list(results)``, ticking ``bar`` once per item (see :func:`ticking`)."""
    return list(ticking(results, bar))
