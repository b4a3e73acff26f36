"""Host synchronisations of the torch path, counted on the CPU.

On a GPU every value the host reads back waits for all queued work, and the
GPU idles until the host queues more: small fits are bound by it. These
tests hold the eager torch code (what runs on a GPU without Triton) to a
budget per iteration; ``test_gpu_kernels.py`` does the same for the Triton
kernel path through Triton's interpreter, and ``test_gpu.py`` on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import fit_quietly
from _syncs import (
    EAGER_BUDGET,
    _cases,
    _data,
    count_host_syncs,
    rates,
    syncs_per_iteration,
)

from sklearn_peek import _solvers

CPU = torch.device("cpu")


def test_counter_counts_reads_made_by_the_library_only():
    t = torch.arange(6.0)
    G = torch.eye(3)
    with count_host_syncs() as counts:
        _solvers._sum64(t)  # float(tensor)
        _solvers._diag_list(G)  # tolist
        _solvers._host(G)  # .to("cpu").numpy()
        _solvers._segment_sums64([G], torch.ones(1, 3, dtype=torch.float64), None)
        float(t.sum())  # the test's own read: not the library's
        t[t > 2].sum()
    assert counts == {
        "_local_scalar_dense in sklearn_peek._solvers:_sum64": 1,
        "tolist in sklearn_peek._solvers:_diag_list": 1,
        "numpy in sklearn_peek._solvers:_host": 1,
        # .cpu().numpy() is one transfer, counted once
        "cpu in sklearn_peek._solvers:_segment_sums64": 1,
    }


def _as_library(source):
    """A function ``f`` compiled as if it were a module of sklearn_peek."""
    namespace = {"__name__": "sklearn_peek._probe", "torch": torch}
    exec(source, namespace)
    return namespace["f"]


@pytest.mark.parametrize(
    "body, key",
    [
        ("t[t > 2]", "index in sklearn_peek._probe:f"),
        ("t.nonzero()", "nonzero in sklearn_peek._probe:f"),
        ("bool(t.any())", "_local_scalar_dense in sklearn_peek._probe:f"),
        ("t.cpu().tolist()", "cpu in sklearn_peek._probe:f"),
        ("t.tolist()", "tolist in sklearn_peek._probe:f"),
    ],
)
def test_counter_sees_each_kind_of_read(body, key):
    f = _as_library(f"def f(t):\n    return {body}\n")
    with count_host_syncs() as counts:
        f(torch.arange(6.0))
    assert counts == {key: 1}
    # Outside the context nothing is counted any more.
    f(torch.arange(6.0))
    assert counts == {key: 1}
    assert torch.Tensor.tolist.__qualname__ == "TensorBase.tolist"


def test_eager_syncs_per_iteration_within_budget():
    got = rates(CPU)
    assert {name: rate for name, (rate, _) in got.items()} == EAGER_BUDGET, got


def test_exact_residual_is_read_once_however_many_chunks(monkeypatch):
    fit = _cases(CPU)["hals, exact objective"]
    one_chunk, _ = syncs_per_iteration(fit)
    # 300 rows of 120 columns in chunks of 4 rows: 75 chunks per residual
    monkeypatch.setattr(_solvers, "_TORCH_CHUNK_ELEMENTS", 480)
    assert _solvers._row_steps(300, 120, torch.zeros(1))[:2] == [(0, 4), (4, 8)]
    many_chunks, by_caller = syncs_per_iteration(fit)
    assert many_chunks == one_chunk == EAGER_BUDGET["hals, exact objective"], by_caller


def test_kl_objective_is_read_once_however_many_chunks(monkeypatch):
    X = _data(CPU)

    def fit(n):
        fit_quietly(
            X, n_components=4, solver="mu", beta_loss="kullback-leibler",
            max_iter=n, tol=1e-30, blocks=[40, 80], random_state=0,
        )  # fmt: skip

    monkeypatch.setattr(_solvers, "_TORCH_CHUNK_ELEMENTS", 480)
    rate, by_caller = syncs_per_iteration(fit)
    assert rate == pytest.approx(0.1), by_caller  # one read per 10 iterations


def test_fixed_syncs_of_a_fit_do_not_grow_with_the_blocks():
    # The final per-block errors are read back in one transfer.
    X = _data(CPU)
    totals = []
    for blocks in ([60, 60], [24] * 5):
        with count_host_syncs() as counts:
            fit_quietly(X, n_components=6, max_iter=5, blocks=blocks, random_state=0)
        totals.append(sum(counts.values()))
    assert totals[0] == totals[1]


def test_warm_start_components_on_a_device_are_read_back_once():
    # _rank._new_components (lockstep warm starts) works on the device and
    # reads U, S, Vt and the positive column sums back in one transfer.
    import numpy as np

    from sklearn_peek._rank import _new_components

    rng = np.random.RandomState(3)
    X = torch.from_numpy(rng.rand(60, 40).astype(np.float32))
    with count_host_syncs() as counts:
        Wn, Hn = _new_components(X, rng.rand(60, 3), rng.rand(3, 40), np.ones(40), 4, 7)
    assert sum(counts.values()) == 1, counts
    assert Wn.shape == (60, 4) and Hn.shape == (4, 40)
