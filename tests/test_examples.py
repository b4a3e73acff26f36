"""Run every script in examples/ on its quick settings and check what it made.

Each example is executed in this process with :func:`runpy.run_path` (the
heavy imports are then paid once), from a temporary working folder, with
``SKLEARN_PEEK_EXAMPLE_QUICK=1``. The checks read the script's global
variables, the figures it left open and the files it wrote.
"""

import ast
import re
import runpy
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from _helpers import pyproject

matplotlib.use("Agg")
import matplotlib.pyplot as plt

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture
def run_example(tmp_path, monkeypatch, capsys):
    """Run examples/<name> quickly from tmp_path; return (globals, stdout, figures)."""

    def run(name):
        monkeypatch.setenv("SKLEARN_PEEK_EXAMPLE_QUICK", "1")
        monkeypatch.chdir(tmp_path)
        plt.close("all")
        ns = runpy.run_path(str(EXAMPLES / name), run_name="__main__")
        figures = [plt.figure(n) for n in plt.get_fignums()]
        return ns, capsys.readouterr().out, figures

    yield run
    plt.close("all")


def _n_images(fig):
    return sum(len(ax.images) for ax in fig.axes)


def test_every_example_is_tested():
    scripts = sorted(p.name for p in EXAMPLES.glob("plot_*.py"))
    tested = sorted(
        name[len("test_") :] + ".py"
        for name in globals()
        if name.startswith("test_plot_")
    )
    assert scripts == tested
    for path in EXAMPLES.glob("plot_*.py"):
        text = path.read_text()
        assert text.startswith('"""') and "# %%" in text, path.name
        assert "SKLEARN_PEEK_EXAMPLE_QUICK" in text, path.name


def test_plot_quickstart_digits(run_example):
    ns, out, figures = run_example("plot_quickstart_digits.py")
    model, scorer, A, W = ns["model"], ns["scorer"], ns["A"], ns["W"]
    layers = ["pool1", "pool2", "relu3", "relu4"]
    assert model.block_names_ == ["input", *layers]
    assert W.shape == (len(A), model.n_components_) and np.all(np.asarray(W) >= 0)
    assert sorted(scorer.rank_) == layers
    for rank in scorer.rank_.values():
        assert isinstance(rank, (int, np.integer)) and 1 <= rank <= max(scorer.ranks)
    assert f"selected rank per layer: {scorer.rank_}" in out
    # input factors, layer factors, sample loadings, rank sweep
    assert len(figures) == 4
    assert _n_images(figures[0]) == model.n_components_
    assert _n_images(figures[1]) == len(layers)
    # the sample loadings: W's rows grouped by class, each divided by its max
    y = ns["data"].y_test[: len(ns["X_test"])]
    M = np.asarray(W)[np.argsort(y, kind="stable")]
    top = M.max(axis=1, keepdims=True)
    M = np.divide(M, top, out=np.zeros_like(M), where=top > 0)
    shown = np.asarray(figures[2].axes[0].images[0].get_array())
    np.testing.assert_allclose(shown, M, rtol=1e-6)
    # the rank-sweep panels name each layer's selected rank
    titles = [ax.get_title() for ax in figures[3].axes if ax.get_title()]
    assert titles == [f"{k}: selected rank {r}" for k, r in scorer.rank_.items()]


def test_plot_pipeline_gridsearch(run_example):
    ns, out, figures = run_example("plot_pipeline_gridsearch.py")
    search, ranks, best_rank = ns["search"], ns["ranks"], ns["best_rank"]
    assert best_rank in ranks
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == len(ranks) and np.all(np.isfinite(scores))
    # what the example shows: the held-out score does not keep rising with
    # the rank (the largest rank only fits noise), so the best is inside
    assert scores[-1] < scores.max()
    assert best_rank < max(ranks)
    assert f"rank selected by GridSearchCV: {best_rank}" in out
    assert ns["W_pixels"].shape == (len(ns["X"]), best_rank)
    assert np.all(ns["W_pixels"] >= 0)
    # pixels alone place most images close to where all blocks place them
    assert 0.5 < np.median(ns["cosine"]) <= 1 + 1e-6
    assert ns["nmf"].block_names_ == ["input", "relu3"]
    assert len(figures) == 2
    assert _n_images(figures[1]) == best_rank


def test_plot_onnx_other_framework(run_example, tmp_path):
    import onnx

    pytest.importorskip("skl2onnx")
    ns, out, figures = run_example("plot_onnx_other_framework.py")
    for name in ("mlp_digits.onnx", "mlp_digits_1_epoch.onnx"):
        onnx.checker.check_model(onnx.load(str(tmp_path / name)))
    extractor, scorer = ns["extractor"], ns["scorer"]
    hidden = [n for n, _ in extractor.block_sizes_ if n != "input"]
    assert len(hidden) == 2 and extractor.block_sizes_[0] == ("input", 64)
    assert sorted(scorer.rank_) == sorted(hidden)
    assert all(1 <= r <= max(scorer.ranks) for r in scorer.rank_.values())
    # Called on the trained network's file, the scorer refits what the
    # example fitted: its number is the mean selected rank / largest rank.
    label_free, accuracy = ns["label_free"], ns["accuracy"]
    trained = [k for k in label_free if k != "1 epoch"]
    assert len(trained) == 1 and len(label_free) == 2
    expect = np.mean(list(scorer.rank_.values())) / max(scorer.ranks)
    assert label_free[trained[0]] == pytest.approx(expect)
    assert accuracy["1 epoch"] < accuracy[trained[0]]
    for name, value in label_free.items():
        line = (
            f"{name:10s} label-free score {value:.2f}   accuracy {accuracy[name]:.3f}"
        )
        assert line in out, out
    assert len(figures) == 2
    assert _n_images(figures[0]) == ns["model"].n_components_


def test_plot_case_study(run_example):
    ns, out, figures = run_example("plot_case_study.py")
    table, levels = ns["table"], ns["levels"]
    assert list(table["level"]) == levels
    acc = table["accuracy"].to_numpy()
    # the untrained network (0 epochs) is worse than the trained one
    assert acc[0] < acc[-1]
    assert set(table["relu3_bcv"]).issubset({1, 2, 4, 8})
    assert re.search(r"wall time \d+\.\d s", out), out
    assert len(figures) == 2
    # the scatter shows one point per network: (accuracy, selected rank)
    (scatter,) = [c for c in figures[0].axes[0].collections if len(c.get_offsets())]
    pts = np.asarray(scatter.get_offsets())
    np.testing.assert_allclose(pts[:, 0], acc)
    np.testing.assert_allclose(pts[:, 1], table["relu3_bcv"].to_numpy())
    # with two networks no correlation is claimed
    assert "Spearman rho undefined (fewer than 3 networks)" in (
        figures[0].axes[0].get_title()
    )


def test_plot_gpu_switch(run_example):
    import torch

    ns, out, figures = run_example("plot_gpu_switch.py")
    W = ns["W"]
    assert isinstance(W, np.ndarray) and W.dtype == np.float32
    if not torch.cuda.is_available():
        # "auto" falls back to the very same CPU computation
        assert ns["max_diff"] == 0.0
        assert "ValueError: device='cuda'" in out
    else:
        assert np.max(np.abs(W - ns["W_cpu"])) < 1e-2 * np.max(np.abs(ns["W_cpu"]))
    # the torch solvers (the GPU code) run on the CPU agree with NumPy
    assert isinstance(ns["W_torch"], np.ndarray)
    err_np = ns["model_cpu"].reconstruction_err_
    assert abs(ns["model_torch"].reconstruction_err_ - err_np) <= 1e-3 * err_np
    assert ns["torch_diff"] < 0.05
    assert all(1 <= r <= 8 for r in ns["scorer"].rank_.values())
    assert len(figures) == 1


# Import name -> distribution name, where they differ.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "sklearn_peek": None}


def _requirement_names(specs):
    return {re.split(r"[<>=!~;\[ ]", s, maxsplit=1)[0].lower() for s in specs}


def test_examples_need_only_the_library_and_its_examples_extra():
    # `pip install "sklearn-peek[examples]"` must be enough to run every
    # example: each third-party module an example imports, or pandas when it
    # asks scikit-learn for DataFrame output, is a dependency or in the extra.
    project = pyproject()
    allowed = _requirement_names(project["dependencies"])
    allowed |= _requirement_names(project["optional-dependencies"]["examples"])
    needed = {}
    for path in sorted(EXAMPLES.glob("*.py")):
        source = path.read_text()
        mods = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods.add(node.module.split(".")[0])
        if 'transform="pandas"' in source:
            mods.add("pandas")
        for mod in mods - set(sys.stdlib_module_names):
            dist = _DISTRIBUTIONS.get(mod, mod)
            if dist is not None:
                needed.setdefault(dist.lower(), []).append(path.name)
    assert "pandas" in needed and "skl2onnx" in needed  # the check sees them
    missing = {d: files for d, files in needed.items() if d not in allowed}
    assert not missing, f"examples import packages outside [examples]: {missing}"
