"""The ``sklearn-peek`` command: a label-free report on a trained CNN.

Sub-commands:

``sklearn-peek demo --out DIR``
    Trains the quick case study on the embedded digits (small LeNet-style
    networks trained well and badly on purpose), selects the rank per layer
    for each network, and writes ``DIR/report.html`` and ``DIR/results.json``.

``sklearn-peek analyze MODEL --data FILE --out DIR``
    Does the same analysis for one network of yours: an ONNX file, a
    TorchScript file, or (with ``--trust-pickle``) a whole pickled torch
    module; inputs from ``.npy``, ``.npz`` or IDX files.

``sklearn-peek layers MODEL``
    Lists the layers of a model that ``analyze --layers`` accepts.

``python -m sklearn_peek`` runs the same command. :func:`main` returns the exit
code instead of exiting, so it can be called from Python and tests.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shlex
import signal
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

from sklearn_peek._backend import torch_threads
from sklearn_peek._criteria import CRITERIA as _CRITERIA
from sklearn_peek._criteria import STUDY_CRITERIA
from sklearn_peek._report import Report, _rows, write_json

__all__ = ["build_parser", "main"]

PROG = "sklearn-peek"


class CLIError(Exception):
    """A user error the command reports in one line (never a traceback)."""


# --------------------------------------------------------------------------
# argument types
# --------------------------------------------------------------------------
#: The most ranks --ranks may list: a sweep fits every one of them.
_MAX_RANKS = 10_000


def parse_ranks(text):
    """Parse ``"1:20"`` (inclusive), ``"2:30:2"``, ``"1,2,4,8"`` or mixtures.

    Examples
    --------
    >>> parse_ranks("1:4,8")
    [1, 2, 3, 4, 8]
    """
    out = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part:
                bits = [int(b) for b in part.split(":")]
                if len(bits) not in (2, 3):
                    raise ValueError
                step = bits[2] if len(bits) == 3 else 1
                if step < 1 or bits[1] < bits[0]:
                    raise ValueError
                # counted before any list is made (len(range) overflows
                # beyond sys.maxsize)
                _check_rank_count(text, (bits[1] - bits[0]) // step + 1)
                out.extend(range(bits[0], bits[1] + 1, step))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rank list; expected e.g. '1:20' (1 to 20), "
            "'2:30:2' (a step) or '1,2,4,8'."
        ) from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected at least one rank, all >= 1."
        )
    ranks = sorted(set(out))
    _check_rank_count(text, len(ranks))
    return ranks


def _check_rank_count(text, count):
    if count > _MAX_RANKS:
        raise argparse.ArgumentTypeError(
            f"{text!r} gives {count:,} ranks; expected at most {_MAX_RANKS:,} "
            "(each is a factorization; a rank is also at most the inputs and "
            "features of a layer)."
        )


def parse_shape(text):
    """Parse ``"1,28,28"``, ``"1x28x28"`` or ``"28,28"`` into a tuple of ints."""
    try:
        shape = tuple(int(b) for b in str(text).replace("x", ",").split(",") if b)
    except ValueError:
        shape = ()
    if len(shape) not in (1, 2, 3) or min(shape, default=0) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape; expected C,H,W such as 1,28,28 (or H,W)."
        )
    return shape


def _checked(convert, ok, expected):
    """An argparse type: ``convert(text)`` (int or float) for which ``ok`` holds."""

    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}.")
        return v

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
#: Bi-cross-validation holds out one fold of rows and columns: >= 2 folds.
_folds = _checked(
    int,
    lambda v: v >= 2,
    "an integer >= 2 (bi-cross-validation holds out one fold of rows and "
    "columns, so it needs at least 2 folds)",
)
_n_jobs = _checked(
    int, lambda v: v != 0, "a non-zero integer (N workers, or -1 for all cores)"
)
# Comparisons with NaN are False: "nan" is rejected too.
_nonneg_float = _checked(
    float,
    lambda v: math.isfinite(v) and v >= 0.0,
    "a finite number >= 0 (e.g. 1e-4)",
)
_fraction = _checked(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
#: A seed numpy's RandomState takes: 0 to 2**32 - 1.
_seed = _checked(int, lambda v: 0 <= v < 2**32, "an integer from 0 to 4294967295")


def _device(text):
    """--device, checked before any work and answered in the command's words
    (the library's message speaks of device=... arguments)."""
    from sklearn_peek._backend import CUDA_RE

    given, text = text, text.strip().lower()  # as the library reads it
    if text not in ("cpu", "auto") and not CUDA_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{given!r}: expected cpu, auto, cuda or cuda:N (N: a GPU index)."
        )
    if text.startswith("cuda"):
        import torch

        from sklearn_peek._backend import cuda_shortfall

        shortfall = cuda_shortfall(
            torch,
            torch.device(text),
            fallback="Use --device auto to fall back to the CPU quietly, or "
            "--device cpu.",
        )
        if shortfall is not None:
            raise argparse.ArgumentTypeError(f"{text!r} asks for {shortfall}")
    return text


# --------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------
class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph of descriptions and epilogs on its own.

    Paragraphs (separated by blank lines) with indented lines, such as
    examples, are printed as written.
    """

    def _fill_text(self, text, width, indent):
        import textwrap

        out = []
        for para in text.strip("\n").split("\n\n"):
            if any(line.startswith("  ") for line in para.splitlines()):
                out.append(para)
            else:
                out.append(
                    textwrap.fill(
                        " ".join(para.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(out)


_DESCRIPTION = """\
Look inside a trained CNN without labels. The inputs and the activations of
chosen hidden layers are factorized jointly (coupled non-negative matrix
factorization with a shared sample factor, Saini & Papalexakis 2018); the rank
each (input, layer) pair supports is selected by cross-validation, and a
report with figures is written. Per the paper, better-trained networks support
higher ranks.
"""

_EPILOG = """\
examples:
  sklearn-peek demo --out peek-demo
  sklearn-peek layers lenet.onnx
  sklearn-peek analyze lenet.onnx --data t10k-images-idx3-ubyte.gz --out peek-lenet \\
      --layers /pool1/MaxPool /relu3/Relu --ranks 1:20 --max-samples 1000

'sklearn-peek layers MODEL' lists the names --layers accepts: node or tensor
names for ONNX and TorchScript files (/pool1/MaxPool or
/pool1/MaxPool_output_0 from torch.onnx.export(..., dynamo=False), max_pool2d
from its dynamo exporter), module names (pool1) for a pickled torch module
(add --input-shape C,H,W).

exit codes: 0 success, 1 bad input or failure (one line on stderr, starting
'sklearn-peek: error:'; add --debug for the full traceback), 2 bad command line,
141 stdout closed early (e.g. by '| head').
"""


def _add_common(p):
    g = p.add_argument_group("output and diagnostics")
    g.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print no progress lines (warnings and errors are still printed)",
    )
    g.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on error, show the full Python traceback instead of one line",
    )


#: analyze's --energy and --cv when not given
_ENERGY_DEFAULT = 0.9
_CV_DEFAULT = 3
#: analyze's --max-iter when not given. At 200 (the scorer's default) a plain
#: 'analyze' warned about its own default; at 500 it does not, for the same
#: selected ranks and about the same sweep time: most fits converge long
#: before it (benchmarks/bench_cli_max_iter.py).
_MAX_ITER_DEFAULT = 500


class _StoreGiven(argparse.Action):
    """Store the value, and add the option's ``dest`` to ``args.given_``: the
    options typed on the command line, told apart from their defaults (a
    value given where it has no effect is refused, see _option_conflict)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given_ = {*getattr(namespace, "given_", ()), self.dest}


def _add_analysis_options(p, *, ranks_default):
    g = p.add_argument_group("rank selection")
    g.add_argument(
        "--ranks",
        type=parse_ranks,
        default=ranks_default,
        metavar="SPEC",
        help="ranks to try: 'A:B' (A to B inclusive), 'A:B:STEP' or a comma list "
        f"'1,2,4,8' (default: {ranks_default[0]}:{ranks_default[-1]}). Ranks larger "
        "than the samples or the features of a layer are an error.",
    )
    g.add_argument(
        "--criterion",
        choices=_CRITERIA,
        default="bcv",
        help="how the rank is selected: 'bcv' bi-cross-validation (held-out rows "
        "and columns; default), 'elbow' knee of the error curve, 'energy' smallest "
        "rank explaining a fraction --energy of the data, 'stability' consensus over "
        "random "
        "restarts (slow)",
    )
    g.add_argument(
        "--energy",
        type=_fraction,
        default=_ENERGY_DEFAULT,
        action=_StoreGiven,
        metavar="FRACTION",
        help="target explained energy of --criterion energy, in (0, 1] (default: "
        f"{_ENERGY_DEFAULT}; an error with another criterion)",
    )
    g.add_argument(
        "--cv",
        type=_folds,
        default=_CV_DEFAULT,
        action=_StoreGiven,
        metavar="K",
        help=f"folds for --criterion bcv, at least 2 (default: {_CV_DEFAULT}; an "
        "error with another criterion)",
    )
    g.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="random seed of the folds and fits; the same seed gives the same "
        "report (default: 0)",
    )
    g.add_argument(
        "--jobs",
        "-j",
        type=_n_jobs,
        default=1,
        metavar="N",
        help="parallel workers for the rank sweep (joblib; -1 = all cores; default: 1)",
    )
    g.add_argument(
        "--device",
        type=_device,
        default=None,
        help="where factorizations (and torch models) run: 'cpu' (NumPy, "
        "default), 'auto' (a CUDA GPU if torch sees one), 'cuda' or 'cuda:N' "
        "(an error if absent)",
    )
    return g


def build_parser():
    """The :class:`argparse.ArgumentParser` of the ``sklearn-peek`` command.

    Returns
    -------
    argparse.ArgumentParser
        With one sub-command per entry of :ref:`cli` (``analyze``, ``demo``,
        ...); :func:`main` runs what it parses.

    Examples
    --------
    >>> from sklearn_peek.cli import build_parser
    >>> args = build_parser().parse_args(["demo", "--out", "report", "--cv", "5"])
    >>> args.command, args.out, args.cv, args.preset
    ('demo', 'report', 5, 'quick')
    """
    from sklearn_peek import __version__

    fmt = _Formatter
    parser = argparse.ArgumentParser(
        prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=fmt
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # -- demo -------------------------------------------------------------
    demo = sub.add_parser(
        "demo",
        formatter_class=fmt,
        help="train the quick case study on the embedded digits and write a report",
        description="Train small LeNet-style CNNs on scikit-learn's 8x8 digits, "
        "some well and some badly on purpose (less data, class-sorted order, few "
        "epochs), select the rank every probed layer supports for each network "
        "(no labels), and write DIR/report.html (figures, the results table, the "
        "Spearman correlation between rank and test accuracy) and "
        "DIR/results.json. Takes about a minute on 2 CPU cores; no download.",
    )
    demo.add_argument(
        "--out",
        "-o",
        required=True,
        metavar="DIR",
        help="folder for report.html and results.json (created if needed)",
    )
    demo.add_argument(
        "--preset",
        default="quick",
        choices=("quick", "full"),
        help="size of the case study: 'quick' (default: 7 networks, the "
        "'epochs' and 'fraction' studies, one seed) or 'full' (60 networks: four "
        "studies, five levels, three seeds; several minutes)",
    )
    g = demo.add_argument_group("rank selection")
    g.add_argument(
        "--ranks",
        type=parse_ranks,
        default=None,
        metavar="SPEC",
        help="rank grid of the sweeps: 'A:B', 'A:B:STEP' or '1,2,4,8' (default: "
        "the preset's, 1,2,3,4,6,8,10,12,15,20 for 'quick')",
    )
    g.add_argument(
        "--criterion",
        choices=STUDY_CRITERIA,
        default="bcv",
        help="criterion shown in the figures and the summary: 'bcv' "
        "bi-cross-validation (default), 'elbow' knee of the error curve, 'energy' "
        "smallest rank explaining 90%% of the data; the table and results.json "
        "hold all three",
    )
    g.add_argument(
        "--cv",
        type=_folds,
        default=3,
        metavar="K",
        help="folds of the bcv criterion, at least 2 (default: 3)",
    )
    g.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the networks, the folds, the fits and the bootstrap; the "
        "same seed gives the same report (default: 0)",
    )
    g.add_argument(
        "--jobs",
        "-j",
        type=_n_jobs,
        default=-1,
        metavar="N",
        help="networks trained and analysed in parallel, one thread each "
        "(joblib; default: -1, all cores)",
    )
    demo.add_argument(
        "--figures-beside",
        action="store_true",
        help="write the figures as PNG files in DIR/figures/ instead of embedding "
        "them in report.html",
    )
    # A tiny study (3 networks, 2 layers, ranks 1..4) for the test suite.
    demo.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    _add_common(demo)
    demo.set_defaults(func=_cmd_demo)

    # -- analyze ----------------------------------------------------------
    an = sub.add_parser(
        "analyze",
        formatter_class=fmt,
        help="analyse one trained network (ONNX, TorchScript or pickled torch module)",
        description="Run the label-free analysis on one trained network and "
        "write DIR/report.html and DIR/results.json: the rank each probed layer "
        "supports, the rank-sweep curves, the input pattern of every latent "
        "factor, which units of each layer respond to it, and the per-sample "
        "loadings.",
        epilog="MODEL formats: an ONNX file (.onnx); a TorchScript file saved with "
        "torch.jit.save (converted to ONNX internally so its intermediate tensors "
        "can be read; name layers as 'sklearn-peek layers' lists them); or a whole "
        "torch module saved with torch.save(model) - only with --trust-pickle, "
        "because loading a pickle runs arbitrary code from the file: use it only "
        "for files you trust. A state_dict alone is not enough (the class is "
        "needed).\n\nDATA formats: .npy; .npz (--data-key picks the array); IDX "
        "files as MNIST ships them (gzipped or not). Shape (n, C, H, W), (n, H, W) "
        "(one channel is added) or flat (n, C*H*W) with --input-shape. uint8 "
        "data is divided by 255 unless --scale none (--scale 255 divides any "
        "data). Inputs must be "
        "non-negative (pixels).",
    )
    an.add_argument("model", metavar="MODEL", help="the trained network file")
    an.add_argument(
        "--data",
        "-d",
        required=True,
        metavar="FILE",
        help="unlabeled inputs: .npy, .npz or IDX (.gz or not)",
    )
    an.add_argument(
        "--out",
        "-o",
        required=True,
        metavar="DIR",
        help="folder for report.html and results.json (created if needed)",
    )
    g = an.add_argument_group("model and data")
    g.add_argument(
        "--data-key",
        metavar="KEY",
        help="array to use inside an .npz file (default: its only array, or "
        "'x'/'X'/'images'/'data' if present)",
    )
    g.add_argument(
        "--labels",
        metavar="FILE",
        help="optional labels (.npy, .npz or IDX) used only to group the "
        "sample-loadings figure by class; nothing is fitted with them",
    )
    g.add_argument(
        "--labels-key",
        metavar="KEY",
        help="array to use inside an .npz --labels file (default: its only array, "
        "or 'y'/'labels'/'label'/'targets'/'target' if present), e.g. y_test "
        "with --data-key x_test for a Keras-style mnist.npz",
    )
    g.add_argument(
        "--layers",
        nargs="+",
        metavar="LAYER",
        help="layers to probe (module names for torch, tensor or node names for "
        "ONNX; see 'sklearn-peek layers MODEL'); space or comma separated. "
        "Default: the extractor's 'auto' choice (activation and pooling outputs)",
    )
    g.add_argument(
        "--input-shape",
        type=parse_shape,
        metavar="C,H,W",
        help="shape of one input, e.g. 1,28,28; needed when the data is flat",
    )
    g.add_argument(
        "--channel-repeat",
        action="store_true",
        help="feed single-channel (grayscale) data to a model whose first layer "
        "expects C channels (e.g. RGB) by repeating the channel C times; the "
        "input block keeps the single channel",
    )
    g.add_argument(
        "--max-samples",
        type=_positive_int,
        default=2000,
        metavar="N",
        help="analyse a random subset of N inputs (seeded by --seed) when the data "
        "holds more, to keep the sweep fast (default: 2000; the report states the "
        "number used)",
    )
    g.add_argument(
        "--scale",
        choices=("auto", "none", "255"),
        default="auto",
        help="'auto' (default): divide uint8 data by 255 and use other data as "
        "stored (a warning names integer data above 1); '255': divide any data by "
        "255 (e.g. 0-255 pixels saved as int64); 'none': use values as stored",
    )
    g.add_argument(
        "--pooling",
        choices=("none", "avg", "max"),
        default="none",
        help="pool conv feature maps over space before factorizing, one value "
        "per channel (default: none, every unit)",
    )
    g.add_argument(
        "--nonneg",
        choices=("error", "relu", "split", "shift"),
        default="error",
        help="what to do with a layer that has negative values: 'error' "
        "(default), 'relu' clip at 0, 'split' positive and negative parts as two "
        "blocks, 'shift' subtract the minimum",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        metavar="N",
        help="inputs per forward pass (default: 256)",
    )
    g.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow MODEL to be a pickled torch module (torch.load with "
        "weights_only=False). WARNING: this runs code stored in the file",
    )
    g = _add_analysis_options(an, ranks_default=list(range(1, 21)))
    g.add_argument(
        "--max-iter",
        type=_positive_int,
        default=_MAX_ITER_DEFAULT,
        metavar="N",
        help="iterations per factorization of the rank sweep, a positive integer "
        f"(default: {_MAX_ITER_DEFAULT}); raise it when a warning says fits stopped "
        "at --max-iter",
    )
    g.add_argument(
        "--tol",
        type=_nonneg_float,
        default=1e-4,
        metavar="T",
        help="stopping tolerance of each factorization of the rank sweep "
        "(relative decrease of the objective), a number >= 0 (default: 1e-4; "
        "larger stops sooner). The model drawn in the figures uses this or 1e-3, "
        "whichever is larger, and up to max(300, --max-iter) iterations",
    )
    g = an.add_argument_group("figures")
    g.add_argument(
        "--figure-rank",
        type=_positive_int,
        metavar="R",
        help="rank of the coupled model drawn in the factor figures (default: the "
        "largest rank selected over the layers)",
    )
    g.add_argument(
        "--figures-beside",
        action="store_true",
        help="write the figures as PNG files in DIR/figures/ instead of embedding "
        "them in report.html",
    )
    _add_common(an)
    an.set_defaults(func=_cmd_analyze)

    # -- layers -----------------------------------------------------------
    ly = sub.add_parser(
        "layers",
        formatter_class=fmt,
        help="list the layers of a model that 'analyze --layers' accepts",
        description="Print the probe-able layers of MODEL (name, operation, "
        "output shape per input).",
    )
    ly.add_argument(
        "model", metavar="MODEL", help="ONNX, TorchScript or pickled module"
    )
    ly.add_argument(
        "--input-shape",
        type=parse_shape,
        metavar="C,H,W",
        help="shape of one input, when the model does not state it",
    )
    ly.add_argument(
        "--channel-repeat",
        action="store_true",
        help="as in 'analyze': --input-shape has one channel, and the model's first "
        "layer takes C channels (the single channel is repeated C times)",
    )
    ly.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a pickled torch module (runs code stored in the file)",
    )
    _add_common(ly)
    ly.set_defaults(func=_cmd_layers)
    # main() reports an unknown option with its command's usage line
    parser.commands = sub.choices
    return parser


# --------------------------------------------------------------------------
# progress and warnings
# --------------------------------------------------------------------------
class _Progress:
    """Plain progress lines on stderr with the elapsed time."""

    def __init__(self, quiet=False, stream=None):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.perf_counter()
        self.marks = {}
        #: Every warning printed (also under --quiet), in order, as dicts
        #: with "kind" and "message" (and details); results.json and the
        #: report hold them.
        self.warnings = []
        self.warnings_reported = 0  # how many of them a report shows

    def warn(self, kind, message, **details):
        """Print ``sklearn-peek: warning: message`` (once) and record it."""
        text = " ".join(str(message).split())
        if any(w["message"] == text for w in self.warnings):
            return
        self.warnings.append({"kind": kind, "message": text, **details})
        # Printed under --quiet too: warnings are few, short and recorded.
        print(f"{PROG}: warning: {text}", file=sys.stderr, flush=True)

    def __call__(self, msg):
        if not self.quiet:
            t = time.perf_counter() - self.t0
            print(f"[{t:6.1f}s] {msg}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, key, msg):
        self(msg)
        t = time.perf_counter()
        yield
        self.marks[key] = round(time.perf_counter() - t, 3)

    def elapsed(self):
        return time.perf_counter() - self.t0


@contextlib.contextmanager
def _one_line_warnings(say):
    """Show library warnings as single 'sklearn-peek: warning:' lines, once each.

    They are recorded in ``say.warnings`` too (kind: the warning class).
    """

    def show(message, category, filename, lineno, file=None, line=None):
        say.warn(getattr(category, "__name__", "Warning"), message)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.showwarning = show
        yield


# --------------------------------------------------------------------------
# loading data and models
# --------------------------------------------------------------------------
def _require_file(path, what):
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist.")
    if p.is_dir():
        raise CLIError(f"{what} {str(p)!r} is a folder; expected a file.")
    return p


def _output_dir(path, created):
    """Create the ``--out`` folder (and its parents) and check it is writable.

    Done before any work, so that a mistyped or read-only ``--out`` is
    reported at once, not after the rank sweep. The folders it creates are
    added to the list ``created``: :func:`main` removes those left
    empty when the command fails (deepest first).
    """
    out = Path(path)
    new = []
    for p in (out, *out.parents):
        if p.exists():
            break
        new.append(p)
    try:
        out.mkdir(parents=True, exist_ok=True)
        created.extend(new)  # deepest first, as (out, *out.parents)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise CLIError(
            f"--out {str(out)!r}: cannot create or write to this folder ({why})."
        ) from exc
    return out


def _is_idx(path):
    """True when the file (or its gzip content) starts with an IDX header."""
    from sklearn_peek.datasets import _IDX_DTYPES, _open

    try:
        with _open(path) as fh:
            head = fh.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and head[:2] == b"\x00\x00" and head[2] in _IDX_DTYPES


#: The array of an .npz file that --data and --labels take when the file
#: holds several and no --data-key / --labels-key is given (the first found).
_NPZ_GUESSES = {
    "--data": ("x", "X", "images", "data"),
    "--labels": ("y", "labels", "label", "targets", "target"),
}


def load_array(path, *, key=None, what="--data", key_option="--data-key"):
    """Read an array from .npy, .npz (``key``) or an IDX file (gzipped or not).

    ``what`` names the option that gave ``path`` and ``key_option`` the one
    that gave ``key``, for the messages.
    """
    p = _require_file(path, what)
    name = p.name.lower()
    if key is not None and not name.endswith(".npz"):
        raise CLIError(
            f"{key_option} {key!r} applies to .npz files only, but {what} "
            f"{str(p)!r} is not an .npz file; drop {key_option}."
        )
    if name.endswith(".npy"):
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise CLIError(
                f"{what} {str(p)!r} could not be read as .npy: {exc}"
            ) from exc
    if name.endswith(".npz"):
        try:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                if key is None:
                    if len(keys) == 1:
                        key = keys[0]
                    else:
                        guesses = _NPZ_GUESSES.get(what, ())
                        common = [k for k in guesses if k in keys]
                        if not common:
                            raise CLIError(
                                f"{what} {str(p)!r} holds several arrays {keys}; "
                                f"choose one with {key_option}."
                            )
                        key = common[0]
                if key not in keys:
                    raise CLIError(
                        f"{key_option} {key!r} is not in {str(p)!r}; "
                        f"its arrays are {keys}."
                    )
                return z[key]
        except (ValueError, zipfile.BadZipFile, OSError) as exc:
            raise CLIError(
                f"{what} {str(p)!r} could not be read as .npz: {exc}"
            ) from exc
    if _is_idx(p):
        from sklearn_peek.datasets import read_idx

        return read_idx(p)
    raise CLIError(
        f"{what} {str(p)!r} is not a .npy, .npz or IDX file (IDX files start with "
        "two zero bytes and a type code; gzipped IDX files are read too)."
    )


def _position_text(pos, shape):
    """Where ``pos`` (an index into one sample, as stored) lies, in words."""
    names = {
        3: ("channel", "row", "column"),
        2: ("row", "column"),
        1: ("feature",),
    }.get(len(shape))
    if names is None:
        return f"index {tuple(int(i) for i in pos)}"
    return ", ".join(f"{n} {int(i)}" for n, i in zip(names, pos))


def _check_finite(X, index=None):
    """Raise a CLIError naming the first NaN or infinite value of ``X``.

    ``index`` maps the rows of ``X`` to the samples of the file (after a
    --max-samples subset); the message uses the file's sample numbers.
    """
    bad = ~np.isfinite(X)
    if not bad.any():
        return
    n_bad = int(bad.sum())
    first = np.unravel_index(int(np.argmax(bad.ravel())), X.shape)
    value = X[first]
    row = int(first[0]) if index is None else int(index[first[0]])
    where = _position_text(first[1:], X.shape[1:])
    n_rows = int(bad.reshape(X.shape[0], -1).any(axis=1).sum())
    raise CLIError(
        f"--data contains NaN or infinite values: the first is {value} at sample "
        f"{row} (counting from 0), {where} of its per-sample shape "
        f"{tuple(X.shape[1:])} ({n_bad} non-finite value(s) in {n_rows} of the "
        f"{X.shape[0]} samples read). Expected finite numbers: replace or drop "
        "those samples."
    )


def _warn_data(say, kind, text, **details):
    """A warning about --data: recorded by ``say``, or a UserWarning without it."""
    if say is None:
        warnings.warn(text, UserWarning, stacklevel=3)
    else:
        say.warn(kind, text, **details)


def prepare_inputs(X, *, input_shape=None, scale="auto", index=None, say=None):
    """Float32 images of shape (n, C, H, W) (or as ``input_shape`` says).

    ``scale`` is ``--scale``: ``"auto"`` divides uint8 data by 255, ``"255"``
    any data, ``"none"`` none. Under ``"auto"``, integer data of another type
    with values above 1 (0-255 pixels saved as int64?) is used as stored, with
    a warning (kind ``"unscaled_integers"``) through ``say.warn``, or
    :func:`warnings.warn` without ``say``.

    ``index`` (optional) gives the file's sample number of every row of ``X``
    (after a --max-samples subset), for error messages.
    """
    X = np.asarray(X)
    if not (np.issubdtype(X.dtype, np.integer) or np.issubdtype(X.dtype, np.floating)):
        raise CLIError(f"--data holds {X.dtype} values; expected numbers.")
    if X.ndim < 2:
        raise CLIError(
            f"--data has shape {X.shape}; expected at least 2 dimensions "
            "(n_samples, ...): images (n, C, H, W) or (n, H, W), or flat rows "
            "(n, C*H*W). A 1-D array is one value per sample (labels? pass those "
            "with --labels)."
        )
    if X.shape[0] == 0:
        raise CLIError(f"--data has shape {X.shape}; expected n_samples >= 1.")
    stored = X
    if scale == "auto" and X.dtype.kind in "iu" and X.dtype != np.uint8:
        top = X.max()
        if top > 1:
            text = (
                f"--data has dtype {X.dtype} with values up to {top}; they are used "
                "as stored, not divided by 255 (--scale auto divides only uint8 "
                "data). If they are 0-255 pixels of a network trained on [0, 1] "
                "images, pass --scale 255; --scale none uses them as stored "
                "without this warning."
            )
            _warn_data(say, "unscaled_integers", text, dtype=str(X.dtype), max=int(top))
    divide = scale == "255" or (scale == "auto" and stored.dtype == np.uint8)
    with np.errstate(over="ignore"):  # values beyond float32: the error below
        # The caller's array is never changed, and the data copied only once.
        X = X.astype(np.float32, copy=divide)
    if divide:
        X /= np.float32(255.0)
    if stored.dtype.kind == "f" and not np.isfinite(X).all():
        # NaN or inf in the file (named with its positions as stored), or
        # values beyond float32's range (inf after the cast). One pass over
        # the data when all is well; integers always fit float32.
        _check_finite(stored, index)
        big = float(np.max(np.abs(X[np.isfinite(X)]), initial=0.0))
        raise CLIError(
            "--data holds values too large for float32 (beyond +-3.4e38; the "
            f"largest finite one after conversion is {big:.3g}); expected finite "
            "float32 values: rescale the data."
        )
    if scale == "255" and stored.dtype.kind == "f":
        # finite now; float data already within [0, 1] was probably scaled
        # (v <= 1 gives v / 255 <= 1 / 255 in float32: rounding is monotone)
        lo, top = X.min(), X.max()
        if lo >= 0 and top <= np.float32(1.0) / np.float32(255.0):
            hi = float(top) * 255.0
            text = (
                f"--scale 255 divides --data by 255, but it holds {stored.dtype} "
                f"values already within [0, 1] (max {hi:.4g}): the inputs become "
                "0-0.004. If the network was trained on [0, 1] images, drop "
                "--scale 255 (--scale auto uses float data as stored)."
            )
            _warn_data(say, "scaled_unit_data", text, dtype=str(stored.dtype), max=hi)
    if input_shape is not None:
        size = math.prod(input_shape)
        given = ",".join(map(str, input_shape))
        if math.prod(X.shape[1:]) != size:
            raise CLIError(
                f"--input-shape {given} holds {size} values "
                f"per input, but the data has shape {X.shape} "
                f"({math.prod(X.shape[1:])} values per input)."
            )
        _check_sample_shape(X.shape[1:], tuple(input_shape), given)
        X = X.reshape((X.shape[0], *input_shape))
    elif X.ndim == 3:
        X = X[:, None]
    elif X.ndim == 2:
        side = math.isqrt(X.shape[1])
        if side * side != X.shape[1]:
            raise CLIError(
                f"--data is flat with shape {X.shape}; give --input-shape C,H,W."
            )
        X = X.reshape(X.shape[0], 1, side, side)
    return np.ascontiguousarray(X, dtype=np.float32)


def _check_sample_shape(sample, shape, given):
    """Images whose own shape contradicts --input-shape are not reshaped.

    Flat rows, flat inputs (an --input-shape of one number) and shapes that
    differ only in axes of length one (``(H, W)`` for ``--input-shape
    1,H,W``) are reshaped; anything else would regroup the pixels into other
    rows and columns.
    """

    def squeezed(dims):
        return tuple(d for d in dims if d != 1)

    if len(sample) == 1 or len(shape) == 1 or squeezed(sample) == squeezed(shape):
        return
    own = ",".join(map(str, sample))
    hint = f"Give --input-shape {own}, or flat rows (n, {math.prod(sample)})."
    if len(shape) == 3 and sample == (*shape[1:], shape[0]):
        hint = (
            "It looks channels-last (H, W, C): save the data as (n, C, H, W) "
            "(np.moveaxis(X, -1, 1)) for a channels-first network."
        )
    raise CLIError(
        f"--input-shape {given} does not match the data's samples of shape "
        f"{sample}: reshaping them would regroup the pixels into other rows and "
        f"columns. {hint}"
    )


def _checked_onnx(p):
    """The path of an ONNX file that parses; else a CLIError naming MODEL."""
    from sklearn_peek._extract._onnx import load_model as load_onnx

    try:
        load_onnx(str(p), subject=f"MODEL {str(p)!r}")
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    return str(p)


def load_model(
    path, *, trust_pickle=False, sample=None, workdir=None, channel_repeat=False
):
    """Return ``(model, format)`` where model is what the extractor accepts.

    ONNX files are returned as their path. TorchScript modules cannot carry
    forward hooks, so they are exported to ONNX in ``workdir`` (with the
    batch dimension dynamic, using ``sample`` to trace shapes). Pickled
    modules need ``trust_pickle``.
    """
    p = _require_file(path, "MODEL")
    if p.suffix.lower() == ".onnx":
        return _checked_onnx(p), "onnx"
    import torch

    if zipfile.is_zipfile(p):
        try:
            with warnings.catch_warnings():
                # torch deprecates TorchScript: from 2.15 every load warns
                # ("`torch.jit.load` is deprecated", a FutureWarning; "... is
                # not supported in Python 3.14+" there), also for the
                # torch.save pickles (zip files too) tried here first. The
                # format is the user's file; cli.rst says what to expect.
                warnings.filterwarnings("ignore", r"`torch\.jit\.load` is ", Warning)
                scripted = torch.jit.load(str(p), map_location="cpu")
        except Exception:
            scripted = None
        if scripted is not None:
            onnx_path = _script_to_onnx(scripted, p, sample, workdir, channel_repeat)
            return onnx_path, "torchscript"
    elif _looks_like_onnx(p):
        return _checked_onnx(p), "onnx"
    if not trust_pickle:
        raise CLIError(
            f"MODEL {str(p)!r} is neither ONNX nor TorchScript. If it is a torch "
            "module saved with torch.save(model) and you trust its source, add "
            "--trust-pickle (loading a pickle runs code from the file)."
        )
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=False)
    except Exception as exc:
        hint = ""
        if isinstance(exc, AttributeError) and "Can't get attribute" in str(exc):
            hint = (
                " The module's class must be importable where you run the command "
                "(not defined in a script's __main__); or export the network as "
                "TorchScript or ONNX."
            )
        raise CLIError(
            f"MODEL {str(p)!r} could not be read as ONNX, TorchScript or a pickled "
            f"torch module: {type(exc).__name__}: {exc}.{hint}"
        ) from exc
    if isinstance(obj, dict):
        raise CLIError(
            f"MODEL {str(p)!r} holds a dict (a state_dict?), not a module; save the "
            "whole module (torch.save(model)), TorchScript or ONNX."
        )
    if not isinstance(obj, torch.nn.Module):
        raise CLIError(
            f"MODEL {str(p)!r} holds a {type(obj).__name__}, not a torch.nn.Module."
        )
    return obj.eval(), "pickle"


def _looks_like_onnx(p):
    try:
        import onnx

        proto = onnx.load(str(p), load_external_data=False)
    except Exception:
        return False
    return len(proto.graph.node) > 0


def _script_channels(scripted):
    """Channels the first convolution of a TorchScript module takes, or None.

    Read from the weight of its first ``Conv1d``/``Conv2d``/``Conv3d``
    submodule in definition order (``weight.shape[1]``: the input channels
    per group; a traced module keeps no ``groups``).
    """
    for _, mod in scripted.named_modules():
        if getattr(mod, "original_name", None) in ("Conv1d", "Conv2d", "Conv3d"):
            weight = getattr(mod, "weight", None)
            if weight is not None and weight.ndim >= 3:
                return int(weight.shape[1])
    return None


def _script_to_onnx(scripted, path, sample, workdir, channel_repeat=False):
    """Export a TorchScript module to ONNX in ``workdir``; return the path.

    With ``channel_repeat``, single-channel samples are widened to the
    channels of the model's first convolution for the export (the extractor
    repeats the channel when it runs the exported model). Raises
    :class:`~sklearn_peek.ChannelMismatchError` when the samples' channels do
    not fit the model.
    """
    import torch

    from sklearn_peek import ChannelMismatchError
    from sklearn_peek._extract._onnx import torch_export_options

    if sample is None:
        raise CLIError(
            f"MODEL {str(path)!r} is TorchScript; an input sample is needed to "
            "convert it (give --input-shape)."
        )
    out = Path(workdir) / (path.stem + ".onnx")
    x0 = torch.as_tensor(np.asarray(sample[:2], dtype=np.float32))
    have = int(x0.shape[1]) if x0.ndim >= 3 else None

    def widen(c):
        return x0.repeat(1, c, *([1] * (x0.ndim - 2)))

    def export(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                scripted.eval(),
                (x,),
                str(out),
                **torch_export_options(),
                input_names=["input"],
                dynamic_axes={"input": {0: "batch"}},
            )

    def last_line(exc):
        # TorchScript errors carry a long serialized traceback; its last line
        # is the actual reason.
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    want = _script_channels(scripted)
    x = x0
    if channel_repeat and have == 1 and want is not None and want > 1:
        x = widen(want)
    try:
        export(x)
        return str(out)
    except Exception as exc:
        last = last_line(exc)
        if have is not None:
            if want is None or want == x.shape[1]:
                # No convolution module, or not the first to run (definition
                # order): torch's message names the channels that failed.
                want = _expected_channels(last)
            if want is not None and want != x.shape[1]:
                if not (channel_repeat and have == 1):
                    raise ChannelMismatchError(want, tuple(x0.shape[1:])) from exc
                try:
                    export(widen(want))
                    return str(out)
                except Exception as exc2:
                    raise CLIError(
                        f"MODEL {str(path)!r} is TorchScript but could not run on "
                        f"inputs of shape {tuple(x0.shape[1:])}, nor on them with "
                        f"the channel repeated {want} times (--channel-repeat), or "
                        f"be converted to ONNX: {type(exc).__name__}: {last}; with "
                        f"{want} channels: {type(exc2).__name__}: {last_line(exc2)}"
                    ) from exc2
        repeated = (
            f" with the channel repeated {x.shape[1]} times (--channel-repeat)"
            if x is not x0
            else ""
        )
        raise CLIError(
            f"MODEL {str(path)!r} is TorchScript but could not run on inputs of "
            f"shape {tuple(x0.shape[1:])}{repeated} (or be converted to ONNX): "
            f"{type(exc).__name__}: {last}"
        ) from exc


#: How torch names the channel count a convolution expects ("expected
#: input[2, 1, 8, 8] to have 3 channels"): the fallback of _script_to_onnx
#: when the module's convolutions do not say it.
_EXPECTED_CHANNELS = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels")


def _expected_channels(text):
    m = _EXPECTED_CHANNELS.search(str(text))
    return None if m is None else int(m.group(1))


def _channel_error(model, exc, *, source="--data"):
    """The command's wording of a :class:`~sklearn_peek.ChannelMismatchError`.

    The sentence stating the mismatch is the library's
    (:func:`~sklearn_peek._extract._channels.mismatch_parts`), with ``X``
    named as ``source`` (``--data``, or ``--input-shape`` for the layers
    command). Its advice is in Python terms (``np.repeat``, ``X[:, None]``),
    so the command gives its own, chosen from the error's attributes:
    channels-last samples, or single-channel samples for a model taking
    several channels (where ``--channel-repeat`` fixes the problem).
    """
    from sklearn_peek._extract._channels import mismatch_parts

    want, shape, no_axis = exc.expected, exc.sample_shape, exc.no_axis
    head, _ = mismatch_parts(want, shape, no_axis=no_axis)
    if head.startswith("X "):
        head = source + head[1:]
    head = head.replace(
        "the model's first layer", f"the first layer of MODEL {str(model)!r}"
    )
    dims = tuple(shape) if no_axis else tuple(shape[1:])

    def spec(c):
        return ",".join(str(int(v)) for v in (c, *dims))

    if exc.channels_last:
        # (H, W, C) samples, as PIL, TensorFlow and matplotlib keep images.
        last, hw = int(shape[-1]), tuple(int(v) for v in shape[:-1])
        if source == "--input-shape":
            fix = (
                "--input-shape looks channels-last (H,W,C); give the channel axis "
                f"first: --input-shape {','.join(map(str, (last, *hw)))}"
            )
        else:
            fix = (
                "--data looks channels-last, (n, H, W, C): save it as "
                f"(n, C, H, W), here (n, {last}, {', '.join(map(str, hw))}), e.g. "
                "with np.moveaxis(X, -1, 1)"
            )
        if last == 1 and want > 1:
            fix += f", and add --channel-repeat to feed the single channel {want} times"
        elif last != want:
            fix += (
                f", then convert it to the {want} channel{'s' if want > 1 else ''} "
                "the model takes"
            )
        return CLIError(f"{head}. {fix}.")
    if exc.got == 1 and want > 1:
        fix = f"Add --channel-repeat to feed the single channel {want} times (e.g. "
        fix += "grayscale -> RGB)"
        if no_axis:
            fix += f", with --input-shape {spec(1)} (the channel axis first)"
        elif source == "--input-shape":
            fix += f", or give --input-shape {spec(want)}"
    elif no_axis:
        fix = f"Give --input-shape {spec(want)} (the channel axis first)"
    elif source == "--input-shape":
        fix = f"Give --input-shape {spec(want)} instead"
    elif len(shape) < 2:
        fix = (
            f"Give --input-shape C,H,W (C = {want}) to shape each flat sample as an "
            "image"
        )
    else:
        fix = (
            "Save --data as single-channel (e.g. grayscale) images, shape "
            "(n, 1, H, W) or (n, H, W)"
            if want == 1
            else f"Save --data with {want} channels per input, shape (n, {want}, H, W)"
        ) + "; --channel-repeat only widens single-channel data"
    return CLIError(f"{head}. {fix}.")


_FORMAT_LAYERS = {
    "onnx": "an ONNX model (layers are its tensor or node names)",
    "torchscript": "a TorchScript file, converted to ONNX to read its layers (so "
    "layers have ONNX names such as /relu1/Relu)",
    "pickle": "a pickled torch module (layers are module names such as relu1)",
}


def _layers_command(args, fmt, sample_shape):
    """The 'sklearn-peek layers' command line that lists MODEL's layers."""
    cmd = [PROG, "layers", shlex.quote(str(args.model))]
    if fmt in ("torchscript", "pickle"):
        cmd += ["--input-shape", ",".join(str(int(v)) for v in sample_shape)]
        if getattr(args, "channel_repeat", False):
            cmd.append("--channel-repeat")
    if fmt == "pickle":
        cmd.append("--trust-pickle")
    return " ".join(cmd)


def _extractor_error(exc, args, fmt, sample_shape, *, source="--data"):
    """Reword an extractor error in the command's terms; None to keep it.

    The extractor speaks of its Python parameters (``layers=``,
    ``available_layers(model, input_shape)``, ``channel_repeat=True``) and,
    for a TorchScript file, of the ONNX model the command converted it to.
    ``source`` names where the samples' shape came from: ``--data``
    (analyze) or ``--input-shape`` (layers).
    """
    from sklearn_peek import ChannelMismatchError, UnknownLayerError
    from sklearn_peek._extract._base import NoAutoLayersError, RepeatedLayerError

    layers_cmd = f"'{_layers_command(args, fmt, sample_shape)}'"
    if isinstance(exc, NoAutoLayersError):
        return CLIError(
            f"MODEL {str(args.model)!r} has no ReLU-like activation or pooling "
            "layer for the automatic choice of layers; give --layers (run "
            f"{layers_cmd} to list them) with --nonneg relu, split or shift."
        )
    if isinstance(exc, RepeatedLayerError):
        alias = " (a node and its output are one layer)" if exc.aliases else ""
        return CLIError(
            f"--layers names the same layer more than once: {exc.names}{alias}; "
            "give each once."
        )
    if isinstance(exc, UnknownLayerError):
        close = exc.close_matches
        hint = f" Close matches: {close}." if close else ""
        return CLIError(
            f"--layers {exc.name!r} is not a layer of MODEL "
            f"{str(args.model)!r}, {_FORMAT_LAYERS.get(fmt, 'the model')}.{hint} "
            f"Run {layers_cmd} for the full list."
        )
    if isinstance(exc, ChannelMismatchError):
        return _channel_error(args.model, exc, source=source)
    return None


@contextlib.contextmanager
def _in_cli_terms(args, fmt, sample_shape, *, source="--data"):
    """Re-raise the ValueErrors :func:`_extractor_error` rewords, reworded."""
    try:
        yield
    except ValueError as exc:
        new = _extractor_error(exc, args, fmt, sample_shape, source=source)
        if new is None:
            raise
        raise new from exc


def _load_args_model(args, sample, workdir, *, source="--data"):
    """:func:`load_model` with the command's options; ``(model, format)``.

    A TorchScript file's channel mismatch (found while converting it with
    ``sample``) is worded with the command's options.
    """
    shape = None if sample is None else tuple(sample.shape[1:])
    with _in_cli_terms(args, None, shape, source=source):
        return load_model(
            args.model,
            trust_pickle=args.trust_pickle,
            sample=sample,
            workdir=workdir,
            channel_repeat=args.channel_repeat,
        )


def _warn_idle_options(args, ext, say):
    """Warn about --pooling and --channel-repeat where the model (known only
    once the extractor is fitted) leaves them without effect."""
    from sklearn_peek._extract._base import poolable

    if args.pooling != "none":
        if not any(poolable(n, shape) for n, shape in ext._raw_shapes.items()):
            say.warn(
                "pooling",
                f"--pooling {args.pooling} has no effect: none of the probed layers "
                f"({', '.join(n for n, _ in ext.block_sizes_ if n != 'input')}) has "
                "feature maps to pool over (it pools conv outputs; flat layers are "
                "used as they are).",
            )
    if args.channel_repeat and ext.channel_repeat_ == 1:
        say.warn(
            "channel_repeat",
            "--channel-repeat has no effect: the model takes the data's "
            f"{ext.input_shape_[0]} channel(s) as they are.",
        )


def _split_layers(layers):
    if not layers:
        return None
    out = [s.strip() for item in layers for s in item.split(",") if s.strip()]
    return out or None


# --------------------------------------------------------------------------
# the analysis of one network (shared by demo and analyze)
# --------------------------------------------------------------------------
def _limit_cause(exc):
    """What bounds the ranks of a SweepLimitError: ``(limit, rows, by_rows,
    narrow)``, ``by_rows`` when the rows a fit sees set the limit, ``narrow``
    the layers whose matrix width sets it."""
    limit = int(exc.limit)
    narrow = [name for name, m in (exc.columns or {}).items() if m == limit]
    return limit, exc.rows, exc.rows == limit, narrow


def _rank_limit_error(exc, ranks, n, *, criterion, cv, n_available):
    """The CLI's wording of a SweepLimitError about ``ranks``.

    The hint follows the cause the error reports (``exc.rows``, the rows a
    fit sees, and ``exc.columns``, each layer's width): too few rows (more
    inputs would help; raising --max-samples only when it left inputs out)
    or a narrow layer (more inputs would not help).
    """
    limit, rows, by_rows, narrow = _limit_cause(exc)
    hints = [f"--ranks {ranks[0]}..{ranks[-1]} goes up to {ranks[-1]}, {exc.reason}"]
    if by_rows:
        if criterion == "bcv":
            hints.append(
                f"The limit is the number of inputs: each of the --cv {cv} folds "
                f"fits on {rows} of the {n} inputs analysed."
            )
        else:
            hints.append(f"The limit is the number of inputs ({n} analysed).")
        if n_available is not None and n_available > n:
            more = (
                f"or raise --max-samples (it kept {n} of the {n_available} inputs "
                "in --data)"
            )
        else:
            more = "or give --data with more inputs"
        hints.append(f"Pass --ranks up to {limit}, {more}.")
    elif narrow:
        names = ", ".join(repr(x) for x in narrow)
        hints.append(
            f"The limit is the width of layer {names}: {limit} columns (the input's "
            "values plus the layer's), which more inputs would not change. Pass "
            f"--ranks up to {limit}, or leave that layer out of --layers."
        )
    else:  # the library's bound changed: say only what is sure
        hints.append(f"Pass --ranks up to {limit}.")
    return CLIError(" ".join(hints))


def analyze_activations(
    A,
    blocks,
    *,
    ranks,
    criterion,
    cv,
    seed,
    jobs,
    device,
    energy=_ENERGY_DEFAULT,
    max_iter=_MAX_ITER_DEFAULT,
    tol=1e-4,
    progress=None,
    n_available=None,
):
    """Rank sweep of every layer in the coupled activation matrix ``A``.

    Parameters
    ----------
    A : ndarray of shape (n_samples, n_features)
        The coupled [input | layers] activation matrix.
    blocks : list of (str, int)
        Block names and sizes, in column order.
    ranks : list of int
        Ranks to try, sorted.
    criterion : {"bcv", "elbow", "energy", "stability"}
        Rank-selection criterion (``--criterion``).
    cv : int
        Folds of ``"bcv"`` (``--cv``).
    seed : int
        Random seed (``--seed``).
    jobs : int
        Joblib workers (``--jobs``).
    device : str or None
        Where the factorizations run (``--device``).
    energy : float, default=0.9
        Target explained energy of ``"energy"`` (``--energy``).
    max_iter : int, default=500
        Iterations per factorization (``--max-iter``).
    tol : float, default=1e-4
        Stopping tolerance per factorization (``--tol``).
    progress : bool or None, default=None
        The scorer's progress bar over its fit tasks (False under ``--quiet``;
        None: on in a terminal).
    n_available : int or None, default=None
        Inputs in ``--data`` (before ``--max-samples``): a rank limit set by
        the number of inputs suggests raising ``--max-samples`` only when it
        left inputs out.

    Returns
    -------
    RankQualityScorer
        The fitted scorer. The scorer's own warnings about fits stopped at
        ``max_iter`` and (with several ranks) about an ``--energy`` no rank
        reaches are not re-emitted: :func:`sweep_warnings` words them with the
        command's options, the latter in its warning about the top of the
        grid. With a single rank, an ``--energy`` no rank reaches is worded
        from :class:`~sklearn_peek.EnergyThresholdWarning`'s attributes. Other
        warnings are re-emitted as they are.
    """
    from sklearn.exceptions import ConvergenceWarning

    from sklearn_peek import RankQualityScorer
    from sklearn_peek._criteria import EnergyThresholdWarning
    from sklearn_peek._rank import SweepLimitError

    ranks = list(ranks)
    scorer = RankQualityScorer(
        blocks=list(blocks),
        ranks=ranks,
        criterion=criterion,
        cv=cv,
        energy_threshold=energy,
        max_iter=max_iter,
        tol=tol,
        n_jobs=jobs,
        device=device,
        random_state=seed,
        progress=progress,
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scorer.fit(A)
    except SweepLimitError as exc:  # say it with the options the user typed
        if exc.param == "cv":
            raise CLIError(
                f"--cv {cv} is larger than the {exc.limit} inputs analysed; "
                f"expected 2 <= --cv <= {exc.limit}, or more inputs."
            ) from exc
        raise _rank_limit_error(
            exc,
            ranks,
            A.shape[0],
            criterion=criterion,
            cv=cv,
            n_available=n_available,
        ) from exc
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            continue  # cv_results_["converged"] has it; see sweep_warnings
        message = w.message
        if isinstance(message, EnergyThresholdWarning):
            if len(ranks) > 1:
                continue  # the layer selected the top rank: sweep_warnings says both
            # One rank: worded in the command's options, from the warning's facts.
            message = (
                f"--energy {message.threshold:g} is not reached for layer "
                f"{message.layer!r} by rank {message.selected}, the only rank "
                f"tried (explained energy {message.best_energy:.4f}). Lower "
                "--energy, or give several ranks to select one."
            )
        warnings.warn_explicit(message, w.category, w.filename, w.lineno)
    return scorer


def _compact_ranks(ranks):
    """``--ranks`` text of a rank list: runs of 3 or more as A:B or A:B:STEP.

    Examples
    --------
    >>> _compact_ranks([1, 2, 3, 4, 6, 8, 10, 12, 15, 20, 25])
    '1:4,6:12:2,15:25:5'
    """
    r = sorted({int(v) for v in ranks})
    parts, i = [], 0
    while i < len(r):
        j = i
        if i + 1 < len(r):
            step = r[i + 1] - r[i]
            j = i + 1
            while j + 1 < len(r) and r[j + 1] - r[j] == step:
                j += 1
        if j - i >= 2:
            parts.append(f"{r[i]}:{r[j]}" + (f":{step}" if step > 1 else ""))
            i = j + 1
        else:
            parts.append(str(r[i]))
            i += 1
    return ",".join(parts)


def _extended_grid(ranks, cap=None):
    """A longer ``--ranks`` than ``ranks``, as text; None when ``cap`` leaves none.

    The grid is kept and continued with its last spacing up to twice its
    largest rank, or to ``cap`` (the largest rank the data allow) when that
    is smaller: a sparse grid stays sparse.
    """
    r = sorted({int(v) for v in ranks})
    top = r[-1]
    end = 2 * top if cap is None else min(2 * top, int(cap))
    if end <= top:
        return None
    step = r[-1] - r[-2] if len(r) > 1 else 1
    more = list(range(top + step, end + 1, step))
    if not more or more[-1] != end:
        more.append(end)
    return _compact_ranks(r + more)


def _top_of_grid(ranks, selected):
    """The largest of ``ranks``, and the keys of ``selected`` (key -> rank) at it.

    No keys for a grid of one rank (nothing was selected).
    """
    r = sorted(int(v) for v in ranks)
    if len(r) < 2:
        return r[-1], []
    return r[-1], [k for k, v in selected.items() if int(v) == r[-1]]


def _extend_advice(ranks, cap=None, what="the curve levels off"):
    """The sentence suggesting a longer ``--ranks`` (shared by both commands)."""
    spec = _extended_grid(ranks, cap)
    if spec is None:
        return ""
    return f"Extend --ranks (e.g. --ranks {spec}) to see where {what}."


def _names(keys):
    return ", ".join(repr(k) for k in keys)


def sweep_warnings(scorer, *, ranks, max_iter, tol):
    """The command's warnings about a fitted sweep, as (kind, text, details).

    * ``"convergence"``: fits that stopped at ``--max-iter`` before ``--tol``,
      per layer and rank.
    * ``"rank_at_top_of_grid"``: layers whose selected rank is the largest
      rank of ``--ranks``; up to two warnings, as ``details["at_limit"]``
      says: False for layers below their own limit (``rank_limits_``: a
      longer ``--ranks`` may show where their curve turns; when a narrower
      layer caps ``--ranks``, ``details["limited_by"]`` names it), True for
      layers at it (the selected rank is a lower bound). Under
      ``--criterion energy``, the layers whose ``--energy`` no rank reached
      are named in the same warning (the library's own warning about them
      is not re-emitted: see :func:`analyze_activations`).
    """
    out = []
    res = scorer.cv_results_
    bad = ~np.asarray(res["converged"], dtype=bool)
    if bad.any():
        per = {}
        for layer, rank in zip(res["layer"][bad], res["rank"][bad]):
            per.setdefault(str(layer), []).append(int(rank))
        # Runs of ranks as A:B (--ranks syntax): a long sweep may leave
        # dozens of ranks unconverged.
        where = "; ".join(
            f"layer {k!r}: rank{'s' if len(v) > 1 else ''} {_compact_ranks(v)}"
            for k, v in per.items()
        )
        out.append(
            (
                "convergence",
                f"some fits of the rank sweep stopped at --max-iter {max_iter} "
                f"before reaching --tol {tol:g} ({where}); the rank-sweep curves may "
                f"be noisier. Raise --max-iter (e.g. --max-iter {2 * max_iter}) or "
                "--tol.",
                {"max_iter": max_iter, "tol": tol, "unconverged_ranks": per},
            )
        )
    ranks = sorted(int(r) for r in ranks)
    top, at_top = _top_of_grid(ranks, scorer.rank_)
    if not at_top:
        return out
    cap = int(scorer.rank_limit_)
    limits = {k: int(scorer.rank_limits_.get(k, cap)) for k in scorer.rank_}
    unmet = {}  # layer -> best explained energy, where --energy is not reached
    if scorer.criterion == "energy" and "explained_energy" in res:
        layer_of = np.asarray(res["layer"]).astype(str)
        energy = np.asarray(res["explained_energy"], dtype=float)
        for k in at_top:
            best = float(np.nanmax(energy[layer_of == str(k)]))
            if best < scorer.energy_threshold:
                unmet[k] = round(best, 4)
    for at_limit in (False, True):
        group = [k for k in at_top if (limits[k] <= top) == at_limit]
        if not group:
            continue
        s = "s" if len(group) > 1 else ""
        head = (
            f"layer{s} {_names(group)} selected rank {top}, the largest rank in "
            f"--ranks {ranks[0]}..{top}"
        )
        details = {"layers": group, "rank": top, "at_limit": at_limit}
        details["limits"] = {k: limits[k] for k in group}
        best = {k: v for k, v in unmet.items() if k in group}
        if best:
            head += (
                f" (--energy {scorer.energy_threshold:g} is reached by no rank tried; "
                "best explained energy "
                + ", ".join(f"{k!r} {v:.4f}" for k, v in best.items())
                + ")"
            )
            details["best_energy"] = best
        if at_limit:
            them = "these layers" if len(group) > 1 else "this layer"
            text = (
                f"{head}, which is also the largest rank these data allow for {them} "
                "(the smaller of the inputs a fit sees and the columns of the "
                "[input | layer] matrix): the selected rank is a lower bound, not a "
                "peak, and a longer --ranks is not possible with these data."
            )
        elif top < cap:
            text = f"{head}: the data may support a higher rank. " + _extend_advice(
                ranks, cap
            )
        else:  # below its own limit, but a narrower layer caps --ranks
            narrow = [k for k, v in limits.items() if v <= cap and k not in group]
            details["limited_by"] = narrow
            text = (
                f"{head}: the data may support a higher rank, but --ranks cannot go "
                f"beyond {cap}, the limit of {_names(narrow)}. Leave "
                f"{'those layers' if len(narrow) > 1 else 'that layer'} out of "
                "--layers to try a longer --ranks."
            )
        out.append(("rank_at_top_of_grid", text, details))
    return out


def _warn_single_rank(say, ranks):
    """Warn (kind "single_rank") when ``ranks`` holds one rank; whether it did.

    Shared by both commands.
    """
    if len(ranks) != 1:
        return False
    rank = int(ranks[0])
    say.warn(
        "single_rank",
        f"--ranks {rank} holds a single rank, so nothing was compared: the rank "
        f"reported for every layer is {rank} because it is the only one tried, not "
        f"because it was selected. Give several ranks (e.g. --ranks 1:{max(rank, 2)}) "
        "to select one.",
        rank=rank,
    )
    return True


def _top_of_grid_notes(warned):
    """Layer -> the rank table's note, from the rank_at_top_of_grid warnings."""
    notes = {}
    for w in warned:
        if w["kind"] != "rank_at_top_of_grid":
            continue
        top = w["rank"]
        if w.get("at_limit"):
            note = f"largest rank these data allow ({top}): a lower bound"
        elif w.get("limited_by"):
            note = (
                f"largest rank tried ({top}): --ranks is capped by "
                f"{_names(w['limited_by'])}"
            )
        else:
            note = f"largest rank tried ({top}): extend --ranks"
        notes.update(dict.fromkeys(w["layers"], note))
    return notes


def fit_figure_model(
    A, blocks, rank, *, seed, device, max_iter=300, tol=1e-3, say=None, hint=""
):
    """The coupled model drawn in the factor figures, and its W.

    The figures need the patterns, not the last digits of the error, so the
    defaults are looser than the sweep's. When the fit stops at ``max_iter``
    and ``say`` is given, the warning is recorded there as kind
    "convergence", followed by ``hint`` (which options would help).
    """
    from sklearn.exceptions import ConvergenceWarning

    from sklearn_peek import CoupledNMF

    model = CoupledNMF(
        n_components=int(rank),
        blocks=list(blocks),
        random_state=seed,
        device=device,
        max_iter=max_iter,
        tol=tol,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        W = model.fit_transform(A)
    for w in caught:
        if issubclass(w.category, ConvergenceWarning) and say is not None:
            say.warn(
                "convergence",
                f"the coupled model drawn in the figures (rank {rank}) stopped at "
                f"{max_iter} iterations before reaching tol {tol:g}; its factor "
                f"figures may be less sharp.{hint}",
                max_iter=max_iter,
                tol=tol,
                where="figure model",
            )
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model, W


def network_figures(
    report, curves, selected, criterion, model, W, *, y, input_shape, extractor
):
    """Add the four per-network figures to ``report``, each with its meaning.

    ``extractor``: the fitted extractor of the activations (its layer shapes,
    and whether its layers are split into positive and negative parts)."""
    from sklearn_peek import plotting

    ranks = ", ".join(f"{k}: {v}" for k, v in selected.items())
    report.add_figure(
        plotting.plot_rank_sweep(curves, criterion=criterion),
        f"Rank sweep ({criterion}): for every probed layer, the criterion of the "
        "coupled [input | layer] factorization at each rank, with the spread over "
        f"folds where there are folds. The starred rank is the one selected ({ranks})"
        "; a layer that supports a higher rank carries more distinct input "
        "patterns. A curve still rising at the last rank means the grid stopped "
        "too early.",
        name="rank-sweep",
    )
    # With --nonneg split the input block is [relu(x), relu(-x)], of shape
    # (2, C, H, W); plot_input_factors then draws positive minus negative.
    image_shape = tuple(extractor.layer_shapes_.get("input", input_shape))
    split = len(image_shape) == 4
    pattern = (
        "positive minus negative part of its input pattern (--nonneg split: red = "
        "positive, blue = negative, white = 0)"
        if split
        else "input pattern (pixel weights, dark = strong)"
    )
    report.add_figure(
        plotting.plot_input_factors(model, image_shape=image_shape),
        f"Input factors: each tile is one of the {model.n_components_} latent "
        f"factors of the coupled model, shown as the {pattern} that it stands "
        "for. Every layer is explained by the same factors, so these are the "
        "input patterns the network carries forward.",
        name="input-factors",
    )
    report.add_figure(
        plotting.plot_layer_factors(model, layer_shapes=extractor),
        "Layer factors: for each probed layer, how strongly each unit (conv "
        "layers: each channel, summed over positions) takes part in each latent "
        "factor, scaled per factor. A column with a few dark rows means the "
        "input pattern of that factor is carried by a few dedicated units.",
        name="layer-factors",
    )
    group = (
        "grouped by class (labels used only for this picture)"
        if y is not None
        else "sorted by their dominant factor"
    )
    report.add_figure(
        plotting.plot_sample_loadings(W, y=y),
        f"Sample loadings: the shared factor W, one row per input, {group}, each "
        "row scaled to its maximum. Inputs that use the same factors are "
        "processed alike by the network.",
        name="sample-loadings",
    )


def _curves_json(scorer):
    # write_json turns the arrays into lists.
    keys = ("ranks", "mean", "std", "selected")
    return {layer: {k: c[k] for k in keys} for layer, c in scorer.curves_.items()}


# --------------------------------------------------------------------------
# sub-commands
# --------------------------------------------------------------------------
def _cmd_analyze(args, say):
    from sklearn_peek import LayerActivationExtractor, __version__
    from sklearn_peek._extract._base import NegativeActivationError

    _require_file(args.model, "MODEL")
    with say.step("load", f"reading {args.data}"):
        X = load_array(args.data, key=args.data_key)
        n_available = int(X.shape[0]) if X.ndim >= 1 else 0
        keep = None
        y = None
        if args.labels:
            y = np.asarray(
                load_array(
                    args.labels,
                    key=args.labels_key,
                    what="--labels",
                    key_option="--labels-key",
                )
            )
            if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
                raise CLIError(
                    f"--labels has shape {y.shape}; expected one label per input, "
                    f"shape ({X.shape[0] if X.ndim >= 1 else 'n'},) (is it the "
                    "images file?)."
                )
            y = y.ravel()
            if X.ndim >= 1 and y.shape[0] != X.shape[0]:
                raise CLIError(
                    f"--labels has {y.shape[0]} entries but --data has "
                    f"{X.shape[0]} inputs."
                )
        if X.ndim >= 2 and X.shape[0] > args.max_samples:
            # Subset before converting: the whole data is never copied to float.
            say(
                f"using a random subset of {args.max_samples} of the {X.shape[0]} "
                "inputs (--max-samples)"
            )
            rng = np.random.default_rng(args.seed)
            keep = np.sort(rng.choice(X.shape[0], args.max_samples, replace=False))
            X = X[keep]
            y = None if y is None else y[keep]
        X = prepare_inputs(
            X, input_shape=args.input_shape, scale=args.scale, index=keep, say=say
        )
    if X.shape[0] < 2:
        cap = " (--max-samples)" if args.max_samples < 2 else ""
        raise CLIError(
            f"{X.shape[0]} input analysed{cap}; expected at least 2 (the analysis "
            "factorizes what the inputs share)."
        )
    say(f"{X.shape[0]} inputs of shape {X.shape[1:]}")
    if args.figure_rank is not None and args.figure_rank > len(X):
        # before any work: a model of more components than inputs has
        # components that describe no input, and would be drawn as if they did
        raise CLIError(
            f"--figure-rank {args.figure_rank} is larger than the {len(X)} inputs "
            f"analysed; expected --figure-rank <= {len(X)}, or more inputs."
        )
    out = _output_dir(args.out, args.created_dirs_)

    with tempfile.TemporaryDirectory(prefix="sklearn-peek-") as tmp:
        with say.step("model", f"loading {args.model}"):
            model, fmt = _load_args_model(args, X, tmp)
        layers = _split_layers(args.layers)
        ext = LayerActivationExtractor(
            model,
            layers=layers if layers else "auto",
            include_input=True,
            input_shape=X.shape[1:],
            pooling=None if args.pooling == "none" else args.pooling,
            nonneg=args.nonneg,
            batch_size=args.batch_size,
            device=args.device,
            progress=False if say.quiet else None,
            channel_repeat=args.channel_repeat,
        )
        with (
            say.step("extract", f"running the {fmt} model and recording layers"),
            _in_cli_terms(args, fmt, X.shape[1:]),
        ):
            try:
                A = ext.fit(X).transform(X)
            except NegativeActivationError as exc:
                other = (
                    "or save the data shifted to >= 0 (the input block is "
                    "the data as given)"
                    if exc.what == "the input X"
                    else "or --layers after a ReLU (see 'sklearn-peek layers MODEL')"
                )
                raise CLIError(
                    f"{exc.what} has negative values (min {exc.minimum:.4g}), but "
                    "the coupled factorization needs non-negative data. Pass "
                    "--nonneg relu (clip at 0), split ([relu(x), relu(-x)]) or shift "
                    f"(subtract the minimum), {other}."
                ) from exc
    blocks = [(str(n), int(s)) for n, s in ext.block_sizes_]
    say("blocks: " + ", ".join(f"{n} ({s})" for n, s in blocks))
    _warn_idle_options(args, ext, say)
    with say.step(
        "sweep",
        f"sweeping ranks {args.ranks[0]}..{args.ranks[-1]} "
        f"({args.criterion}, {len(blocks) - 1} layers)",
    ):
        scorer = analyze_activations(
            A,
            blocks,
            ranks=args.ranks,
            criterion=args.criterion,
            cv=args.cv,
            seed=args.seed,
            jobs=args.jobs,
            device=args.device,
            energy=args.energy,
            max_iter=args.max_iter,
            tol=args.tol,
            progress=False if say.quiet else None,
            n_available=n_available,
        )
    say("selected ranks: " + ", ".join(f"{k}={v}" for k, v in scorer.rank_.items()))
    for kind, text, details in sweep_warnings(
        scorer,
        ranks=args.ranks,
        max_iter=args.max_iter,
        tol=args.tol,
    ):
        say.warn(kind, text, **details)
    notes = _top_of_grid_notes(say.warnings)
    if _warn_single_rank(say, args.ranks):
        notes = dict.fromkeys(scorer.rank_, "the only rank tried: not selected")
    r_fig = args.figure_rank or max(int(v) for v in scorer.rank_.values())
    with say.step("figure_model", f"fitting the coupled model at rank {r_fig}"):
        fig_iter, fig_tol = max(300, args.max_iter), max(1e-3, args.tol)
        cmodel, W = fit_figure_model(
            A,
            blocks,
            r_fig,
            seed=args.seed,
            device=args.device,
            max_iter=fig_iter,
            tol=fig_tol,
            say=say,
            hint=f" Raise --max-iter above {fig_iter} or --tol above {fig_tol:g}.",
        )

    repeat = ext.channel_repeat_  # > 1 only under --channel-repeat
    shape_text = f"shape {tuple(X.shape[1:])}"
    if repeat > 1:
        shape_text += (
            f", its channel repeated {repeat} times for the model (--channel-repeat)"
        )
    report = Report(
        f"sklearn-peek: {Path(args.model).name}",
        subtitle=f"{X.shape[0]} inputs from {Path(args.data).name}, {shape_text}; "
        f"model format {fmt}; criterion {args.criterion}; "
        f"ranks {_compact_ranks(args.ranks)}",
    )
    _method_text(report)
    report.add_heading("Selected rank per layer")
    rows = [
        {"layer": n, "features": s, "selected rank": scorer.rank_.get(n)}
        for n, s in blocks
        if n != "input"
    ]
    if notes:
        for row in rows:
            row["note"] = notes.get(row["layer"], "")
    report.add_table(rows, text_columns=["layer", "note"])
    report.add_text(
        "The selected rank is the number of latent factors the coupled "
        "[input | layer] data supports. Compare it across networks trained on the "
        "same task: per the paper, a lower rank points to poorer training (little "
        "or unshuffled data, too few epochs).",
    )
    _add_warnings(report, say)
    report.add_heading("Figures")
    with say.step("figures", "drawing figures"):
        network_figures(
            report,
            scorer.curves_,
            scorer.rank_,
            args.criterion,
            cmodel,
            W,
            y=y,
            input_shape=ext.input_shape_,
            extractor=ext,
        )
    results = {
        "command": "analyze",
        "version": __version__,
        "model": str(args.model),
        "model_format": fmt,
        "data": str(args.data),
        "n_samples": int(X.shape[0]),
        "input_shape": list(ext.input_shape_),
        "blocks": [[n, s] for n, s in blocks],
        "layer_shapes": {k: list(v) for k, v in ext.layer_shapes_.items()},
        "criterion": args.criterion,
        "energy_threshold": args.energy,
        "max_iter": args.max_iter,
        "tol": args.tol,
        "channel_repeat": bool(repeat > 1),  # what was done (argv: what was asked)
        "channels_fed": int(X.shape[1]) * repeat if X.ndim == 4 else None,
        "scale": args.scale,
        "pooling": args.pooling,
        "nonneg": args.nonneg,
        "max_samples": args.max_samples,
        "n_available": n_available,
        "ranks_tried": list(args.ranks),
        "ranks": {k: int(v) for k, v in scorer.rank_.items()},
        "curves": _curves_json(scorer),
        "figure_model": _model_json(cmodel),
        "seed": args.seed,
        "timings_s": say.marks,
    }
    return _finish(report, results, out, args, say)


def _model_json(cmodel):
    return {
        "n_components": int(cmodel.n_components_),
        "reconstruction_err": float(cmodel.reconstruction_err_),
        "block_reconstruction_err": dict(cmodel.block_reconstruction_err_),
        "n_iter": int(cmodel.n_iter_),
    }


def _finish(report, results, out, args, say):
    import platform

    from sklearn_peek import __version__

    command = " ".join([PROG, *(shlex.quote(a) for a in args.argv_)])
    _add_warnings(report, say)  # those printed after the report's own section
    results["warnings"] = list(say.warnings)
    report.add_heading("How this report was made")
    report.add_key_values(
        {
            "command": command,
            "sklearn_peek": __version__,
            "Python": platform.python_version(),
            "seconds": f"{say.elapsed():.1f}",
        }
    )
    results["command_line"] = command
    try:
        path = report.write(out, embed=not args.figures_beside)
        results["timings_s"]["total"] = round(say.elapsed(), 3)
        write_json(out / "results.json", results)
    except OSError as exc:
        raise CLIError(
            f"--out {str(out)!r}: the report could not be written: {exc}"
        ) from exc
    say(f"wrote {path} and {out / 'results.json'}")
    return 0


def demo_warnings(rows, layers, criterion, ranks):
    """The demo's warnings about its study, as (kind, text, details).

    ``"rank_at_top_of_grid"``: per layer, the networks whose coupled rank is
    the largest of ``ranks``; their rank is a lower bound, and a rank that
    cannot grow weakens the correlation with accuracy. The suggested grid
    keeps the spacing of ``ranks`` (see :func:`_extended_grid`).
    """
    out = []
    for layer in layers:
        selected = {i: r[f"{layer}_{criterion}"] for i, r in enumerate(rows)}
        top, at_top = _top_of_grid(ranks, selected)
        nets = [f"{rows[i]['degradation']}={rows[i]['level']:g}" for i in at_top]
        if nets:
            out.append(
                (
                    "rank_at_top_of_grid",
                    f"layer {layer!r}: {len(nets)} of {len(rows)} networks selected "
                    f"rank {top}, the largest in --ranks ({', '.join(nets)}); their "
                    "rank is a lower bound, which blurs the comparison between "
                    "networks. " + _extend_advice(ranks, what="their curves level off"),
                    {"layer": layer, "rank": top, "networks": nets},
                )
            )
    return out


def _add_warnings(report, say):
    """A "Warnings" section with the warnings not yet in the report."""
    done = say.warnings_reported
    new = say.warnings[done:]
    if not new:
        return
    say.warnings_reported = len(say.warnings)
    report.add_heading("Warnings" if not done else "More warnings")
    report.add_notes(
        [w["message"] for w in new],
        intro='Printed while the report was made (results.json: "warnings"):',
    )


def _method_text(report):
    report.add_heading("What this report shows")
    report.add_html(
        "<p>The inputs <i>X</i><sub>0</sub> (one row per input, one column per "
        "pixel) and the activations <i>X</i><sub><i>l</i></sub> of every probed "
        "layer are factorized jointly, with one sample factor <i>W</i> shared by "
        "all blocks:</p>"
        '<p style="text-align:center">minimize &nbsp;&sum;<sub><i>b</i></sub> '
        "<i>w</i><sub><i>b</i></sub> &#8214;<i>X</i><sub><i>b</i></sub> &minus; "
        "<i>W H</i><sub><i>b</i></sub>&#8214;<sup>2</sup><sub>F</sub> &nbsp; "
        "subject to <i>W</i> &ge; 0, <i>H</i><sub><i>b</i></sub> &ge; 0.</p>"
        "<p>Every latent factor thus has an input pattern (its row of "
        "<i>H</i><sub>0</sub>) and a set of units in each layer (its row of "
        "<i>H</i><sub><i>l</i></sub>). The rank each coupled [input | layer] pair "
        "supports is selected without labels (Saini &amp; Papalexakis, 2018); "
        "per the paper, better-trained networks support higher ranks.</p>"
    )


def _cmd_layers(args, say):
    from sklearn_peek import available_layers

    sample = None
    if args.input_shape is not None:
        sample = np.zeros((2, *args.input_shape), np.float32)
    with tempfile.TemporaryDirectory(prefix="sklearn-peek-") as tmp:
        model, fmt = _load_args_model(args, sample, tmp, source="--input-shape")
        if fmt == "pickle" and args.input_shape is None:
            raise CLIError(
                f"MODEL {str(args.model)!r} is a pickled torch module, which "
                "must run once to learn its layer shapes: give --input-shape "
                "C,H,W (the shape of one input, e.g. 1,28,28)."
            )
        with _in_cli_terms(args, fmt, args.input_shape, source="--input-shape"):
            rows = available_layers(
                model, input_shape=args.input_shape, channel_repeat=args.channel_repeat
            )
    if not rows:
        print("(no layers found)")
        return 0
    cols = list(rows[0])
    width = {c: max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(str(c).ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(width[c]) for c in cols))
    return 0


_TINY = {
    "studies": {"epochs": (0, 1, 4)},
    "ranks": (1, 2, 3, 4),
    "criteria": STUDY_CRITERIA,
    "layers": ("pool1", "relu3"),
}


def _pm(rho, lo, hi):
    if rho is None or not np.isfinite(rho):
        return "undefined"
    if lo is None or not np.isfinite(lo):  # the table's note column says why
        return f"{rho:+.2f} [no interval]"
    return f"{rho:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _why_no_interval(r):
    """Why a correlation row (of studies.correlations) has no interval."""
    note = str(r.get("note") or "").strip()
    if note:
        return note
    if r["rho"] is None or not np.isfinite(r["rho"]):
        return "undefined"
    return "no bootstrap interval (too many tied resamples)"


def _records(table):
    """List of row dicts from a DataFrame or a dict of lists."""
    cols, rows = _rows(table)
    return [dict(zip(cols, row)) for row in rows]


def _demo_limit_error(exc, settings):
    """The demo's wording of a SweepLimitError from the case study.

    :func:`~sklearn_peek.studies.run_case_study` raises it before any network
    is trained, from an untrained network's layer widths: ``cv`` beyond the
    test digits, or ``ranks`` beyond a layer's matrix. The narrowest matrix is
    a layer alone (its baseline sweep, ``columns``), or the rows a fit sees.
    The demo has no --data, --max-samples or --layers: only --ranks and --cv
    can change.
    """
    if exc.param == "cv":
        return CLIError(
            f"--cv {settings['cv']} is larger than the {exc.limit} test digits the "
            f"demo analyses; expected 2 <= --cv <= {exc.limit}."
        )
    low, high = min(settings["ranks"]), max(settings["ranks"])
    limit, rows, by_rows, narrow = _limit_cause(exc)
    if by_rows:
        why = f"but each sweep fits on {rows} test digits, so no rank above {limit}"
        why += " fits."
    elif narrow:
        why = (
            f"but layer {narrow[0]!r} has {limit} units: its layer-alone baseline "
            f"(the layer's {limit} columns, without the input's) allows no rank "
            f"above {limit}."
        )
    else:  # the library's bound changed: say only what is sure
        why = exc.reason or f"but no rank above {limit} fits."
    return CLIError(
        f"--ranks {low}..{high} goes up to {high}, {why} Pass --ranks up to {limit}."
    )


def _cmd_demo(args, say):
    from sklearn_peek import (
        LayerActivationExtractor,
        SweepLimitError,
        __version__,
        plotting,
        studies,
    )

    crit = args.criterion
    settings = dict(_TINY if args.tiny else studies.PRESETS[args.preset])
    settings["seeds"] = (
        (args.seed,)
        if args.preset == "quick" or args.tiny
        # wrapped: --seed 4294967295 is allowed, and seeds stop at 2**32 - 1
        else tuple((args.seed + s) % 2**32 for s in settings["seeds"])
    )
    settings["cv"] = args.cv
    if args.ranks is not None:
        settings["ranks"] = tuple(args.ranks)
    if crit not in settings["criteria"]:
        settings["criteria"] = (*settings["criteria"], crit)
    layers = list(settings.get("layers", studies.DEFAULT_LAYERS))
    out = _output_dir(args.out, args.created_dirs_)
    n_nets = sum(len(v) for v in settings["studies"].values()) * len(settings["seeds"])
    plan = "; ".join(
        f"{deg}: levels {', '.join(str(v) for v in levels)}"
        for deg, levels in settings["studies"].items()
    )
    say(
        f"case study on the digits: {n_nets} networks ({plan}), layers "
        f"{', '.join(layers)}, ranks {_compact_ranks(settings['ranks'])}"
    )
    try:
        with say.step("case_study", "training the networks and sweeping their ranks"):
            res = studies.run_paper_studies(
                settings,
                n_jobs=args.jobs,
                progress=False if say.quiet else None,
                random_state=args.seed,
            )
    except SweepLimitError as exc:  # raised before any training
        raise _demo_limit_error(exc, settings) from exc
    rows = _records(res.table)
    corr = _records(res.correlations)
    for kind, text, details in demo_warnings(rows, layers, crit, settings["ranks"]):
        say.warn(kind, text, **details)
    _warn_single_rank(say, settings["ranks"])

    # -- the report ---------------------------------------------------------
    n_train = next(iter(res.studies.values())).settings["n_train"]
    n_test = next(iter(res.studies.values())).settings["n_test"]
    report = Report(
        "sklearn-peek demo: does the rank track training quality?",
        subtitle=f"{n_nets} LeNet-style networks trained on {n_train} digits "
        f"(8x8), some badly on purpose; analysed on {n_test} test digits without "
        f"labels; criterion {crit}; seed {args.seed}",
    )
    _method_text(report)
    report.add_text(
        "Each network was trained with a degradation: 'epochs' trains for fewer "
        "epochs (level = number of epochs), 'fraction' keeps a fraction of the "
        "training images of every class (level = fraction), 'unshuffled' presents "
        "the images sorted by class, 'classes' keeps only some classes. Test "
        "accuracy (which uses labels) is measured only to check the claim; the "
        "ranks are selected from the test images alone."
    )

    report.add_heading("Spearman summary: rank vs accuracy")
    pooled = {
        (r["layer"], r["measure"]): r for r in corr if str(r["degradation"]) == "all"
    }
    summary = []
    for layer in layers:
        row, notes = {"layer": layer}, []
        for m, label in (
            (crit, f"coupled rank ({crit})"),
            (f"{crit}_alone", f"layer alone ({crit})"),
            ("rankme", "effective rank (RankMe)"),
        ):
            r = pooled.get((layer, m))
            row[label] = _pm(r["rho"], r["ci_low"], r["ci_high"]) if r else "n/a"
            if r and not np.isfinite(r["ci_low"]):
                notes.append(f"{label}: {_why_no_interval(r)}")
        row["note"] = "; ".join(notes)
        summary.append(row)
    if not any(row["note"] for row in summary):
        for row in summary:
            del row["note"]
    report.add_table(summary, text_columns=list(summary[0]))
    report.add_text(
        f"Spearman's rho between each network's measure and its test accuracy, "
        f"pooled over all {n_nets} networks, with a 95% bootstrap interval. The "
        "first column is the paper's claim: positive means networks trained worse "
        "support a lower coupled rank. The other two are label-free baselines "
        "computed from the layer alone; the coupled rank adds something when it "
        "tracks accuracy better than they do. With few networks the intervals "
        "are wide: read them before the point values."
    )
    per = [
        {
            "degradation": r["degradation"],
            "layer": r["layer"],
            "rho [95% CI]": _pm(r["rho"], r["ci_low"], r["ci_high"]),
            "networks": r["n"],
            "note": r.get("note", ""),
        }
        for r in corr
        if r["measure"] == crit and str(r["degradation"]) != "all"
    ]
    report.add_table(per, caption=f"Per degradation (coupled rank, {crit})")

    report.add_heading("Figures")
    with say.step("figures_study", "drawing the case-study figures"):
        import matplotlib.pyplot as plt

        n_rows, n_cols = plotting._grid_shape(len(layers), max_cols=2)
        fig = plt.figure(figsize=(6.0 * n_cols, 4.6 * n_rows), layout="constrained")
        for ax, layer in zip(
            plotting._panels(fig, len(layers), n_rows, n_cols), layers
        ):
            r = pooled.get((layer, crit))
            sp = None if r is None else (r["rho"], r["ci_low"], r["ci_high"])
            plotting.plot_rank_vs_quality(
                res.table, layer=layer, criterion=crit, spearman=sp, ax=ax
            )
        fig.suptitle(f"Selected rank ({crit}) vs test accuracy, one point per network")
        studies_run = list(dict.fromkeys(r["degradation"] for r in rows))
        colours = (
            "colours are the degradations"
            if len(studies_run) > 1
            else f"colours are the levels of the {studies_run[0]!r} study"
        )
        report.add_figure(
            fig,
            "Rank vs training quality: every point is one network, placed by its "
            f"test accuracy and the rank selected ({crit}, coupled with the input) "
            f"for that layer; {colours}. The title of each panel "
            "gives Spearman's rho pooled over all networks with its 95% interval, "
            "or '(no interval)' when the bootstrap gives none, or 'undefined' with "
            "the reason (e.g. the same rank for every network); the summary "
            "table's note column says why. "
            "Points rising to the right support the paper's claim for that layer.",
            name="rank-vs-accuracy",
        )

    # -- the best-trained network, in detail ----------------------------------
    best = max(range(len(rows)), key=lambda i: rows[i]["accuracy"])
    b = rows[best]
    deg, level, seed = b["degradation"], b["level"], b["seed"]
    study = res.studies[deg]
    lvl = next(v for v in study.settings["levels"] if np.isclose(float(v), level))
    curves_all = study.curves[(lvl, seed)]
    curves = {layer: curves_all[(layer, crit)] for layer in layers}
    selected = {layer: int(b[f"{layer}_{crit}"]) for layer in layers}
    with say.step(
        "reference", f"re-training the best network ({deg}={lvl}) for its figures"
    ):
        data = studies.digits_split()
        with torch_threads(1):
            # Small batches of 8x8 images: one thread is faster than several,
            # and it is how the study trained the same network.
            clf = studies.LeNetClassifier(
                epochs=study.settings["epochs"],
                degradation=deg,
                level=lvl,
                random_state=seed,
            ).fit(data.X_train, data.y_train)
        acc = float(clf.score(data.X_test, data.y_test))
        ext = LayerActivationExtractor(clf.module_, layers=layers, progress=False)
        A = ext.fit(data.X_test).transform(data.X_test)
        rank = max(selected.values())
        cmodel, W = fit_figure_model(
            A, ext.block_sizes_, rank, seed=args.seed, device=None, say=say
        )
    report.add_heading(
        f"The best-trained network in detail ({deg} = {lvl}, accuracy {acc:.3f})"
    )
    report.add_text(
        f"The figures below are for the network with the highest test accuracy. "
        f"The factor figures use one coupled model of all probed layers at rank "
        f"{rank}, the largest rank selected for its layers."
        + (
            ""
            if abs(acc - b["accuracy"]) < 1e-9
            else f" Note: re-training gave accuracy {acc:.3f}, not {b['accuracy']:.3f} "
            "as in the study; torch was not bit-reproducible here."
        )
    )
    with say.step("figures_network", "drawing the network's figures"):
        network_figures(
            report,
            curves,
            selected,
            crit,
            cmodel,
            W,
            y=data.y_test,
            input_shape=ext.input_shape_,
            extractor=ext,
        )

    report.add_heading("All networks")
    cols = [*studies.NETWORK_COLUMNS, *(f"{layer}_{crit}" for layer in layers)]
    report.add_table(
        [{c: r[c] for c in cols} for r in rows],
        text_columns=["degradation"],
        caption=f"Selected rank ({crit}, coupled with the input) per layer; "
        "results.json has every criterion and the baselines.",
    )
    results = {
        "command": "demo",
        "version": __version__,
        "preset": "tiny" if args.tiny else args.preset,
        "settings": settings,
        "criterion": crit,
        "layers": layers,
        "table": rows,
        "correlations": corr,
        "best_network": {
            "degradation": deg,
            "level": lvl,
            "seed": seed,
            "accuracy": acc,
            "ranks": selected,
            "figure_model": _model_json(cmodel),
        },
        "study_timings_s": {k: v for k, v in res.timings.items() if k != "per_study"},
        "timings_s": say.marks,
    }
    return _finish(report, results, out, args, say)


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------
class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it stops as on Ctrl-C:
    joblib stops its workers and the empty --out folders are removed."""


# Seconds a command has, after Ctrl-C or SIGTERM, to stop by itself before it
# is ended at once (see _stop_on_signals).
_STOP_GRACE_S = 15.0


def _stopped_word(signum):
    """How the command reports being stopped by ``signum``."""
    return "terminated" if signum == signal.SIGTERM else "interrupted"


def _kill_children():
    """Kill this process's child processes (the --jobs workers), when psutil
    is installed to find them; without it they end when they next find the
    command gone."""
    try:
        import psutil
    except ImportError:
        return
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


@contextlib.contextmanager
def _stop_on_signals(cleanup):
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, ``timeout``, a cancelled CI
    job) stop the block as an exception where it runs: KeyboardInterrupt, or
    :class:`_Terminated`, so that joblib stops its workers and ``main``
    cleans up (Python's default for SIGTERM is to die at once, leaving loky's
    workers running and the --out folder behind). An exception raised at
    some points of joblib's dispatch can be lost (seen once with joblib
    1.3), so the command then gets :data:`_STOP_GRACE_S` seconds; after
    that, or at a second signal, it ends at once: the same message and exit
    code, the child processes killed and ``cleanup()`` run. A signal that
    was ignored when the command started (a script's background job ignores
    Ctrl-C) stays ignored. Only for the command itself (``main`` called
    without ``argv``): a Python caller of ``main(argv)`` keeps its own
    handlers, and its process is never ended from here. Only the main
    thread can handle signals; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"signal": None, "timer": None}

    def end_now(signum):
        print(f"\n{PROG}: {_stopped_word(signum)}", file=sys.stderr, flush=True)
        _kill_children()
        with contextlib.suppress(Exception):
            cleanup()
        os._exit(128 + int(signum))

    def stop(signum, frame):
        if state["signal"] is not None:  # a second signal: at once
            end_now(signum)
        state["signal"] = signum
        timer = threading.Timer(_STOP_GRACE_S, end_now, args=(signum,))
        timer.daemon = True
        timer.start()
        state["timer"] = timer
        raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        # SIG_IGN: started to ignore it (a background job of a script
        # ignores Ctrl-C); None: a handler Python did not install
        if signal.getsignal(sig) not in (signal.SIG_IGN, None):
            old[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if state["timer"] is not None:
            state["timer"].cancel()


def main(argv=None):
    """Run the ``sklearn-peek`` command; return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        0 on success, 1 on bad input or failure (a one-line message on
        stderr), 2 on a bad command line, 130 when interrupted (Ctrl-C),
        143 when terminated (SIGTERM), 141 when stdout was closed early (as
        after SIGPIPE). Called without ``argv`` (as the ``sklearn-peek``
        program) it handles SIGTERM and a second Ctrl-C itself; called with
        an argument list it leaves the caller's signal handlers alone.

    Examples
    --------
    >>> from sklearn_peek.cli import main
    >>> main(["--version"])  # doctest: +SKIP
    sklearn-peek 0.1.0
    0
    """
    parser = build_parser()
    as_program = argv is None
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args, extra = parser.parse_known_args(argv)
        if extra:  # as parse_args would, with the command's own usage line
            name = getattr(args, "command", None)
            before = (
                name in argv
                and extra[0] in argv
                and argv.index(extra[0]) < argv.index(name)
            )
            command = parser if before else parser.commands.get(name, parser)
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        conflict = _option_conflict(args)
        if conflict:
            parser.commands[args.command].error(conflict)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.argv_ = [str(a) for a in argv]
    args.created_dirs_ = []  # --out folders made by this run (_output_dir)
    debug = getattr(args, "debug", False)
    quiet = getattr(args, "quiet", False)
    say = _Progress(quiet=quiet)
    try:
        try:
            # Signals are the command's to handle only when it is the
            # program (the console script, python -m): a notebook or test
            # calling main(argv) keeps its handlers and is never ended here.
            stop = (
                _stop_on_signals(lambda: _remove_empty(args.created_dirs_))
                if as_program
                else contextlib.nullcontext()
            )
            with stop, _one_line_warnings(say):
                code = int(args.func(args, say) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return code
        except BaseException:
            _remove_empty(args.created_dirs_)
            raise
    except BrokenPipeError:
        # stdout was closed early (e.g. '| head -1'): stop quietly, as tools
        # killed by SIGPIPE do (exit 128 + 13).
        _stdout_to_devnull()
        return 141
    except KeyboardInterrupt as exc:
        # as shells report a command stopped by the signal: 128 + its number
        signum = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
        print(f"{PROG}: {_stopped_word(signum)}", file=sys.stderr)
        return 128 + int(signum)
    except Exception as exc:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 1


def _option_conflict(args):
    """A usage error for options the rest of the command line leaves without
    effect, or None."""
    command = getattr(args, "command", None)
    if command == "layers" and args.channel_repeat and args.input_shape is None:
        return (
            "--channel-repeat applies to a single-channel --input-shape (e.g. "
            "--input-shape 1,28,28 for a model that takes 3 channels); give "
            "--input-shape too, or leave --channel-repeat out."
        )
    if command != "analyze":
        return None
    if args.labels_key is not None and args.labels is None:
        return "--labels-key chooses an array of the --labels file; give --labels too."
    given = getattr(args, "given_", set())
    for option, value, criterion in (
        ("--energy", args.energy, "energy"),
        ("--cv", args.cv, "bcv"),
    ):
        if option[2:] in given and args.criterion != criterion:
            return (
                f"{option} {value:g} applies to --criterion {criterion} only, and "
                f"the criterion is {args.criterion}; add --criterion {criterion}, "
                f"or leave {option} out."
            )
    if args.layers is not None and _split_layers(args.layers) is None:
        return (
            f"--layers is empty ({' '.join(map(repr, args.layers))}); expected "
            "layer names (see 'sklearn-peek layers MODEL'), or no --layers for "
            "the automatic choice."
        )
    return None


def _remove_empty(folders):
    """Remove the folders of ``folders`` (deepest first) that are still empty."""
    for p in folders:
        try:
            p.rmdir()  # only succeeds on an empty folder
        except OSError:
            break


def _stdout_to_devnull():
    """Point stdout at os.devnull, so that flushing it at exit cannot fail.

    What Python's documentation advises after a BrokenPipeError (see the
    note on SIGPIPE in the signal module).
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor
        pass


def _one_line(exc):
    text = " ".join(str(exc).split())
    if not isinstance(exc, CLIError):
        # The command's own messages are never cut. A long library message
        # (e.g. a long list inside it) loses its middle, never its end: the
        # advice comes last.
        text = _elide_middle(text)
    if isinstance(exc, (CLIError, ValueError, FileNotFoundError, TypeError)):
        return text or type(exc).__name__
    # Unexpected failures keep their type, and point at --debug.
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


def _elide_middle(text, limit=1000):
    """``text`` cut to about ``limit`` characters by dropping its middle.

    The cut falls between words; the start and the end (where messages put
    their advice) are kept.

    Examples
    --------
    >>> _elide_middle("a " * 10 + "advice", limit=12)
    'a a a ... advice'
    """
    if len(text) <= limit:
        return text
    head = text[: limit // 2].rsplit(" ", 1)[0]
    tail = text[-(limit - len(head)) :].split(" ", 1)[-1]
    return f"{head} ... {tail}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
