import warnings

import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace.benchmarks import get
from testable_tasks import blobs, fit, for_loop_grads


def logreg(x, y, seed=0):
    torch.manual_seed(seed)
    return fit(torch.nn.Linear(x.shape[1], 3), x, y, steps=300)


def kernel_products(model, task, train, query, ridge_abs):
    """(−∇m_q)ᵀ (ΦᵀΦ + λI)⁻¹ φ_i in float64 from for-loop gradients, unprojected."""
    phi = for_loop_grads(model, task.output, *train).double()
    gamma = -for_loop_grads(model, task.measurement, *query).double()
    kernel = phi.T @ phi + ridge_abs * torch.eye(phi.shape[1], dtype=torch.float64)
    return (gamma @ torch.linalg.solve(kernel, phi.T)).numpy()


def trak_formula(model, task, train, query, ridge_abs):
    """Unprojected single-model TRAK: kernel products times the out-to-loss term Q_i."""
    q = task.output_to_loss(model, train).detach().double().numpy()
    return kernel_products(model, task, train, query, ridge_abs) * q


@pytest.fixture(scope="module")
def lr_setup():
    x, y = blobs(60, d=4)
    return logreg(x, y), (x, y), blobs(5, d=4, seed=1)


def test_unprojected_trak_equals_formula(lr_setup):
    model, train, query = lr_setup
    task = dt.ClassificationTask()
    attr = dt.TRAK(model, task, proj_dim=None, ridge=0.5, verbose=False).fit(train)
    want = trak_formula(model, task, train, query, attr.ridge_abs_[0])
    np.testing.assert_allclose(attr.score(query).values, want, rtol=1e-3, atol=1e-6 * np.abs(want).max())


class BinaryLogisticTask(dt.Task):
    """Binary logistic regression with labels ±1: f = y·logit, loss = softplus(−f), Q = σ(−f)."""

    def output(self, model, batch):
        x, y = batch
        return y * model(x).squeeze(-1)

    def loss(self, model, batch):
        return torch.nn.functional.softplus(-self.output(model, batch))

    def output_to_loss(self, model, batch):
        return torch.sigmoid(-self.output(model, batch))


@pytest.mark.parametrize("factor", [2, 4])
def test_projection_at_least_parameters_with_vanishing_ridge_equals_unprojected_formula(factor):
    """On binary logistic regression ΦᵀΦ has full rank, so the λ → 0 limit exists and equals the formula.

    (Softmax models are invariant to shifting all logits, so their ΦᵀΦ is singular and only λ > 0 defines TRAK.)
    """
    x, labels = blobs(80, d=4, classes=2)
    y = labels.float() * 2 - 1
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    task = BinaryLogisticTask()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        task.loss(model, (x, y)).mean().backward()
        opt.step()
    query = (x[:6] + 0.3, y[:6])
    n_params = 5
    attr = dt.TRAK(model.eval(), task, proj_dim=factor * n_params, ridge=1e-9, verbose=False).fit((x, y))
    assert attr.projector_ is not None
    want = trak_formula(model, task, (x, y), query, ridge_abs=0.0)
    np.testing.assert_allclose(attr.score(query).values, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_several_models_average_kernel_products_times_mean_q(lr_setup):
    _, (x, y), query = lr_setup
    task = dt.ClassificationTask()
    models = [logreg(x, y, seed=s) for s in range(2)]
    models[1] = fit(models[1], x[:30], y[:30], steps=50)  # a genuinely different second model
    attr = dt.TRAK(models, task, proj_dim=None, verbose=False).fit((x, y))
    products = [kernel_products(m, task, (x, y), query, lam) for m, lam in zip(models, attr.ridge_abs_)]
    q_mean = np.mean([task.output_to_loss(m, (x, y)).detach().numpy() for m in models], axis=0)
    np.testing.assert_allclose(attr.score(query).values, np.mean(products, axis=0) * q_mean, rtol=1e-3, atol=1e-7)


def test_auto_projection_only_for_large_models(lr_setup):
    model, train, _ = lr_setup
    small = dt.TRAK(model, dt.ClassificationTask(), verbose=False).fit(train)
    assert small.projector_ is None
    big = torch.nn.Sequential(torch.nn.Linear(4, 600), torch.nn.Tanh(), torch.nn.Linear(600, 3)).eval()
    attr = dt.TRAK(big, dt.ClassificationTask(), verbose=False).fit(train)
    assert attr.feature_dim_ == 2048


def test_ridge_is_scale_aware_and_recorded(lr_setup):
    model, train, query = lr_setup
    attr = dt.TRAK(model, dt.ClassificationTask(), proj_dim=None, ridge=0.5, verbose=False).fit(train)
    phi = np.asarray(attr.stores_[0]["phi"], dtype=np.float64)
    assert attr.ridge_abs_[0] == pytest.approx(0.5 * (phi**2).sum() / len(phi), rel=1e-6)
    assert attr.score(query).metadata["ridge_abs"] == attr.ridge_abs_


def test_warns_when_kernel_is_singular_and_ridge_tiny(lr_setup):
    model, (x, y), _ = lr_setup
    with pytest.warns(dt.DatatraceWarning, match="nearly\\) singular"):
        dt.TRAK(model, dt.ClassificationTask(), proj_dim=64, ridge=1e-6, verbose=False).fit((x[:20], y[:20]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dt.TRAK(model, dt.ClassificationTask(), proj_dim=64, verbose=False).fit((x[:20], y[:20]))


def test_zero_ridge_on_singular_kernel_is_a_clear_error(lr_setup):
    model, (x, y), _ = lr_setup
    with pytest.raises(dt.InputError, match="not positive definite.*ridge > 0"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dt.TRAK(model, dt.ClassificationTask(), proj_dim=64, ridge=0, verbose=False).fit((x[:20], y[:20]))
    with pytest.raises(dt.InputError, match="ridge must be ≥ 0"):
        dt.TRAK(model, dt.ClassificationTask(), ridge=-1)


def test_sign_exact_copy_of_query_is_a_top_proponent(digits_copies):
    train, query, model, copies = digits_copies
    scores = dt.TRAK(model, dt.ClassificationTask(), verbose=False).fit(train).score(query).values
    ranks = [(scores[q] > scores[q, c]).sum() for q, c in enumerate(copies)]
    assert max(ranks) < np.ceil(0.01 * scores.shape[1]), ranks


@pytest.mark.slow
def test_lds_floor_on_digits_logistic_regression():
    """TRAK with 5 models, each trained on a random half of the data, against 64 retrained 50% subsets.

    Measured 0.854 (95% CI 0.839–0.868) with the default ridge; the floor leaves room for platform noise only.
    """
    bench = get("digits-logreg")
    assert bench.n_subsets >= 50
    gt = bench.ground_truth(workers=2, verbose=False)
    train, query = bench.data()
    halves = [np.random.default_rng(i).choice(len(train), len(train) // 2, replace=False) for i in range(5)]
    models = [bench.train_fn(train.subset(h), i) for i, h in enumerate(halves)]
    res = dt.eval.lds(dt.TRAK(models, bench.task, verbose=False).fit(train).score(query), gt)
    assert res.mean >= 0.80, str(res)
    assert res.ci[0] >= 0.75


def test_self_influence_is_the_diagonal_with_the_loss_on_both_sides(lr_setup):
    model, (x, y), query = lr_setup
    task = dt.ClassificationTask(measurement="margin")  # self-influence uses the loss regardless
    attr = dt.TRAK(model, task, proj_dim=None, verbose=False).fit((x, y))
    loss_task = dt.ClassificationTask()
    for data in ((x, y), query):  # the training set (stored features) and other examples (computed in memory)
        phi = for_loop_grads(model, loss_task.output, *data).double()
        gamma = -for_loop_grads(model, loss_task.loss, *data).double()
        train_phi = for_loop_grads(model, loss_task.output, x, y).double()
        kernel = train_phi.T @ train_phi + attr.ridge_abs_[0] * torch.eye(phi.shape[1], dtype=torch.float64)
        q = loss_task.output_to_loss(model, data).detach().double()
        want = ((gamma @ torch.linalg.inv(kernel)) * phi).sum(1) * q
        np.testing.assert_allclose(attr.self_influence(data), want.numpy(), rtol=1e-3)
