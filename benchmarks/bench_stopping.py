"""Where CoupledNMF and scikit-learn's ``NMF(solver="cd")`` stop.

Both run with ``tol=1e-4`` and ``max_iter=1000`` from their default starts
on the same matrices, at ranks 5 and 10, and the script prints the number of
iterations each ran. CoupledNMF stops on the relative decrease of its
objective, scikit-learn's cd on a projected-gradient ratio: on the same data
they stop at different iterations, which ``docs/user_guide/coupled_nmf.rst``
quotes from this script.

Usage::

    python benchmarks/bench_stopping.py
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from sklearn_peek import CoupledNMF


def cases():
    """The matrices compared: noisy, real (digits) and exactly low-rank."""
    return {
        "random 100x50 float32": np.random.RandomState(0)
        .rand(100, 50)
        .astype(np.float32),
        "digits 1797x64": load_digits().data.astype(np.float64),
        "rank-5 300x80": (
            np.random.RandomState(1).rand(300, 5) @ np.random.RandomState(2).rand(5, 80)
        ),
    }


def main():
    print(f"{'matrix':<24}{'rank':>5}{'CoupledNMF':>12}{'sklearn cd':>12}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, X in cases().items():
            for r in (5, 10):
                ours = CoupledNMF(r, random_state=0, max_iter=1000).fit(X)
                cd = NMF(r, solver="cd", init="nndsvda", random_state=0,
                         max_iter=1000, tol=1e-4).fit(X)  # fmt: skip
                print(f"{name:<24}{r:>5}{ours.n_iter_:>12}{cd.n_iter_:>12}")


if __name__ == "__main__":
    main()
