import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import datatrace as dt
from testable_tasks import TinyCNN, blobs, fit, for_loop_grads, images, mlp

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module", params=["mlp", "conv"])
def trained(request):
    if request.param == "mlp":
        x, y = blobs(60)
        return fit(mlp(), x, y), (x, y), blobs(6, seed=1)
    x, y = images(24)
    return fit(TinyCNN(), x, y, steps=50), (x, y), images(5, seed=1)


def test_full_rank_equals_the_unprojected_preconditioned_inner_product(trained):
    model, train, query = trained
    task = dt.ClassificationTask()
    full = dt.LoGra(model, task, rank=100, verbose=False).fit(train)  # rank ≥ every layer dimension
    ekfac = dt.InfluenceFunction(model, task, solver="ekfac", verbose=False).fit(train)
    assert full.damping_abs_ == pytest.approx(ekfac.damping_abs_, rel=1e-6)
    want = ekfac.score(query).values
    np.testing.assert_allclose(full.score(query).values, want, rtol=1e-3, atol=1e-5 * np.abs(want).max())
    identity = dt.LoGra(model, task, rank=100, precondition="identity", verbose=False).fit(train)
    want = dt.GradDot(model, task, verbose=False).fit(train).score(query).values / len(train[0])
    np.testing.assert_allclose(identity.score(query).values, want, rtol=1e-3, atol=1e-5 * np.abs(want).max())


def test_features_are_the_kronecker_projection_of_per_example_gradients(trained):
    model, train, _ = trained
    task = dt.ClassificationTask()
    attr = dt.LoGra(model, task, rank=3, precondition="identity", seed=4, verbose=False).fit(train)
    proj = attr.projector_
    stored = torch.from_numpy(np.array(attr.stores_[0]["grad"]))
    grads = for_loop_grads(model, task.loss, *train)
    params = dict(model.named_parameters())
    col = offset = 0
    for name in proj.layer_names:
        w, b = params[f"{name}.weight"], params[f"{name}.bias"]
        block = torch.cat(
            [
                grads[:, offset : offset + w.numel()].reshape(len(grads), w.shape[0], -1),
                grads[:, offset + w.numel() : offset + w.numel() + b.numel()].unsqueeze(2),
            ],
            dim=2,
        )
        offset += w.numel() + b.numel()
        want = (proj.p_out[name].T @ block @ proj.p_in[name]).reshape(len(grads), -1)
        r = want.shape[1]
        torch.testing.assert_close(stored[:, col : col + r], want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
        col += r
    assert col == attr.feature_dim_ == proj.out_dim


def test_projections_are_scaled_orthonormal_and_seeded():
    x, y = blobs(30)
    model = fit(mlp(hidden=20), x, y)
    a = dt.LoGra(model, dt.ClassificationTask(), rank=4, seed=1, verbose=False).fit((x, y))
    for p in a.projector_.p_in.values():
        dim, rank = p.shape
        torch.testing.assert_close(p.T @ p, torch.eye(rank) * dim / rank, rtol=1e-5, atol=1e-5)
    b = dt.LoGra(model, dt.ClassificationTask(), rank=4, seed=1, verbose=False).fit((x, y))
    c = dt.LoGra(model, dt.ClassificationTask(), rank=4, seed=2, verbose=False).fit((x, y))
    assert np.array_equal(a.score((x, y)).values, b.score((x, y)).values)
    assert not np.array_equal(a.score((x, y)).values, c.score((x, y)).values)
    assert a.feature_dim_ == 4 * 4 + 4 * 3  # layer 1: 4 × 4 (out 20, in 5 + bias); layer 2: out 3 × 4


@pytest.mark.parametrize("precondition", ["ekfac", "identity"])
def test_sign_exact_copy_of_query_is_a_top_proponent(precondition, digits_copies):
    train, query, model, copies = digits_copies
    scores = dt.LoGra(model, dt.ClassificationTask(), precondition=precondition, verbose=False).fit(train).score(query)
    scores = scores.values
    ranks = [(scores[q] > scores[q, c]).sum() for q, c in enumerate(copies)]
    assert max(ranks) < np.ceil(0.01 * scores.shape[1]), ranks
    assert (scores[np.arange(len(copies)), copies] > 0).all()


def test_self_influence_is_the_diagonal_of_loss_scores():
    x, y = blobs(40)
    model = fit(mlp(), x, y)
    attr = dt.LoGra(model, dt.ClassificationTask(), rank=3, verbose=False).fit((x, y))
    diagonal = attr.score((x, y)).values.diagonal()
    np.testing.assert_allclose(attr.self_influence((x, y)), diagonal, rtol=1e-4)
    assert (attr.self_influence((x[:5] + 1, y[:5])) > 0).all()


def test_bad_options_are_refused():
    x, y = blobs(20)
    model = fit(mlp(), x, y)
    task = dt.ClassificationTask()
    with pytest.raises(dt.InputError, match="proj_dim does not apply"):
        dt.LoGra(model, task, proj_dim=16)
    with pytest.raises(dt.InputError, match="rank must be a positive int"):
        dt.LoGra(model, task, rank=0)
    with pytest.raises(dt.UnknownOptionError, match="identity"):
        dt.LoGra(model, task, precondition="kfac")
    with pytest.raises(dt.InputError, match="damping must be > 0"):
        dt.LoGra(model, task, damping=0)
    embedded = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    with pytest.raises(dt.InputError, match=r"LoGra supports only .*unsupported: 0 \(Embedding\).*params=\['2'\]"):
        dt.LoGra(embedded, task).fit((torch.randint(0, 10, (6, 2)), torch.zeros(6, dtype=torch.long)))


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, torch, datatrace as dt
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
        torch.nn.Linear(2048, 10),
    ).eval()
    x, y = torch.randn(64, 1024), torch.randint(0, 10, (64,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    attr = dt.LoGra(model, dt.ClassificationTask(), rank=8, batch_size=64, verbose=False).fit((x, y))
    scores = attr.score((x[:4], y[:4])).values
    extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    n_params = sum(p.numel() for p in model.parameters())
    finite = bool((scores == scores).all())
    print(json.dumps({"extra": extra, "per_example_bytes": 4 * 64 * n_params, "finite": finite}))
    """
)


@pytest.mark.slow
def test_runs_where_full_per_example_gradients_would_not_fit():
    """6.3M parameters: a batch of 64 full per-example gradients is 1.6 GB; LoGra (rank 8, EK-FAC) never forms them.

    Run in a fresh process so that its peak memory is its own; measured extra peak 0.13 GB.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["finite"]
    assert result["extra"] < result["per_example_bytes"] / 4, result
