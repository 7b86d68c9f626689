import numpy as np
import pytest
import torch

import datatrace as dt
from testable_tasks import blobs, fit, for_loop_grads, mlp


@pytest.fixture(scope="module")
def setup():
    x, y = blobs(40)
    xq, yq = blobs(6, seed=1)
    model = fit(mlp(), x, y)
    task = dt.ClassificationTask(measurement="margin")
    g_train = for_loop_grads(model, task.loss, x, y).double()
    g_query = for_loop_grads(model, task.measurement, xq, yq).double()
    return model, task, (x, y), (xq, yq), g_train, g_query


def test_graddot_equals_explicit_dot_product(setup):
    model, task, train, query, g_train, g_query = setup
    scores = dt.GradDot(model, task, verbose=False).fit(train).score(query)
    np.testing.assert_allclose(scores.values, (g_query @ g_train.T).numpy(), rtol=1e-4, atol=1e-6)


def test_gradcos_equals_explicit_cosine(setup):
    model, task, train, query, g_train, g_query = setup
    scores = dt.GradCos(model, task, verbose=False).fit(train).score(query).values
    want = torch.nn.functional.normalize(g_query, dim=1) @ torch.nn.functional.normalize(g_train, dim=1).T
    np.testing.assert_allclose(scores, want.numpy(), rtol=1e-4, atol=1e-6)
    assert np.abs(scores).max() <= 1 + 1e-6


def test_projected_graddot_is_the_dot_product_of_projected_gradients(setup):
    model, task, train, query, g_train, g_query = setup
    attr = dt.GradDot(model, task, proj_dim=32, seed=7, verbose=False).fit(train)
    r = attr.projector_.matrix().double()
    np.testing.assert_allclose(
        attr.score(query).values, ((g_query @ r) @ (g_train @ r).T).numpy(), rtol=1e-4, atol=1e-5
    )


def test_tracin_is_the_learning_rate_weighted_sum_over_checkpoints(setup):
    _, task, (x, y), query, _, _ = setup
    checkpoints = [fit(mlp(seed=s), x, y, steps=20 * (s + 1)) for s in range(3)]
    lrs = [0.1, 0.05, 0.01]
    got = dt.TracIn(checkpoints, task, lrs=lrs, verbose=False).fit((x, y)).score(query).values
    want = sum(
        lr * (for_loop_grads(m, task.measurement, *query) @ for_loop_grads(m, task.loss, x, y).T).numpy()
        for lr, m in zip(lrs, checkpoints)
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_tracin_needs_one_learning_rate_per_checkpoint(setup):
    model, task, *_ = setup
    with pytest.raises(dt.InputError, match="2 checkpoints but 3 learning rates"):
        dt.TracIn([model, model], task, lrs=[1, 2, 3])


def test_graddot_over_several_models_is_the_mean(setup):
    model, task, train, query, *_ = setup
    other = fit(mlp(seed=3), *train)
    both = dt.GradDot([model, other], task, verbose=False).fit(train).score(query).values
    each = [dt.GradDot(m, task, verbose=False).fit(train).score(query).values for m in (model, other)]
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [dt.GradDot, dt.GradCos, dt.TracIn])
def test_sign_exact_copy_of_query_is_a_top_proponent(cls, digits_copies):
    train, query, model, copies = digits_copies
    scores = cls(model, dt.ClassificationTask(), verbose=False).fit(train).score(query).values
    top_1_percent = int(np.ceil(0.01 * scores.shape[1]))
    ranks = [(scores[q] > scores[q, c]).sum() for q, c in enumerate(copies)]
    assert max(ranks) < top_1_percent, ranks
    assert (scores[np.arange(len(copies)), copies] > 0).all()


def test_self_influence_is_the_squared_loss_gradient_norm(setup):
    model, task, train, query, g_train, _ = setup
    attr = dt.GradDot(model, task, verbose=False).fit(train)
    np.testing.assert_allclose(attr.self_influence(train), (g_train**2).sum(1).numpy(), rtol=1e-4)
    g_other = for_loop_grads(model, task.loss, *query).double()  # examples outside the training set
    np.testing.assert_allclose(attr.self_influence(query), (g_other**2).sum(1).numpy(), rtol=1e-4)


def test_tracin_self_influence_sums_over_checkpoints(setup):
    _, task, (x, y), _, _, _ = setup
    checkpoints = [fit(mlp(seed=s), x, y, steps=20 * (s + 1)) for s in range(2)]
    got = dt.TracIn(checkpoints, task, lrs=[0.1, 0.01], verbose=False).fit((x, y)).self_influence((x, y))
    want = sum(lr * (for_loop_grads(m, task.loss, x, y) ** 2).sum(1) for lr, m in zip([0.1, 0.01], checkpoints))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4)
