import warnings

import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace.attributors.hessian import HessianOperator, hessian_matrix
from datatrace.benchmarks import get
from datatrace.benchmarks.digits import digits_split, train_logreg
from datatrace.grads import select_parameters
from testable_tasks import blobs, fit, for_loop_grads, mlp

SOLVERS = ["explicit", "cg", "lissa", "arnoldi", "kfac", "ekfac"]


@pytest.fixture(scope="module")
def trained():
    x, y = blobs(60)
    return fit(mlp(), x, y), (x, y), blobs(6, seed=1)


def reference_hessian(model, x, y, kind):
    """Hessian of the mean cross-entropy in float64 via torch.autograd.functional (parameters flattened in order)."""
    model = __import__("copy").deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(v):
        sizes = [s.numel() for s in shapes]
        return {n: p.reshape(s) for n, p, s in zip(names, torch.split(v, sizes), shapes)}

    def logits(v):
        return torch.func.functional_call(model, unflat(v), (x.double(),))

    if kind == "exact":
        return torch.autograd.functional.hessian(lambda v: torch.nn.functional.cross_entropy(logits(v), y), flat)
    jac = torch.autograd.functional.jacobian(logits, flat)  # (n, C, P)
    p = torch.softmax(logits(flat), dim=1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", jac, lam, jac) / len(x)


def if_formula(model, task, train, query, hessian, lam):
    """(1/n) ∇m(q)ᵀ (H + λI)⁻¹ ∇L(i) from for-loop gradients, float64."""
    g_train = for_loop_grads(model, task.loss, *train).double()
    g_query = for_loop_grads(model, task.measurement, *query).double()
    solved = torch.linalg.solve(hessian + lam * torch.eye(len(hessian), dtype=torch.float64), g_train.T)
    return (g_query @ solved).numpy() / len(train[0])


@pytest.mark.parametrize("kind", ["gn", "exact"])
def test_hessian_operator_equals_autograd_hessian(trained, kind):
    model, (x, y), _ = trained
    op = HessianOperator(model, dt.ClassificationTask(), dt.Data((x, y)), select_parameters(model), kind, 16, False)
    want = reference_hessian(model, x, y, kind)
    np.testing.assert_allclose(hessian_matrix(op).numpy(), want.numpy(), atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("kind", ["gn", "exact"])
def test_explicit_scores_equal_the_formula(trained, kind):
    model, train, query = trained
    task = dt.ClassificationTask(measurement="margin")
    lam = 0.05 if kind == "exact" else 1e-3  # the exact Hessian of this MLP has eigenvalues down to about −0.02
    attr = dt.InfluenceFunction(model, task, solver="explicit", hessian=kind, damping_abs=lam, verbose=False)
    got = attr.fit(train).score(query).values
    want = if_formula(model, task, train, query, reference_hessian(model, *train, kind), lam)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_explicit_influence_predicts_leave_one_out_retraining():
    """Convex case: L2-regularised logistic regression (digits-logreg's recipe, λ = its L2 coefficient 1e-3).

    On 200 training images, for the query with the highest loss, the 25 most positive and 25 most negative predicted
    examples are each removed and the model retrained: Pearson 0.977 between predicted and actual change of the query
    loss (measured; the slope is about 2, removal effects being larger than first order).
    """
    (xt, yt), (xq, yq) = digits_split()
    x, y, l2 = xt[:200], yt[:200], 1e-3
    task = dt.ClassificationTask()
    model = train_logreg(dt.Data((x, y)), 0, l2=l2)
    with torch.no_grad():
        losses = task.loss(model, (xq, yq))
    q = int(losses.argmax())
    query = (xq[q : q + 1], yq[q : q + 1])
    attr = dt.InfluenceFunction(model, task, solver="explicit", damping_abs=l2, verbose=False).fit((x, y))
    predicted = attr.score(query).values[0]
    order = np.argsort(predicted)
    removed = np.concatenate([order[:25], order[-25:]])
    actual = []
    for i in removed:
        keep = np.delete(np.arange(len(x)), i)
        with torch.no_grad():
            actual.append(float(task.loss(train_logreg(dt.Data((x[keep], y[keep])), 0, l2=l2), query)) - losses[q])
    assert np.corrcoef(predicted[removed], actual)[0, 1] >= 0.95


@pytest.mark.parametrize(
    ("solver", "options", "rtol"),
    [
        ("cg", {"tol": 1e-8}, 1e-4),
        ("arnoldi", {"rank": 75}, 1e-4),  # rank = P: complete eigendecomposition
        ("lissa", {"lissa_batch_size": 60, "tol": 1e-4}, 1e-4),  # full batch: no noise
        ("lissa", {"lissa_batch_size": 16, "lissa_depth": 1000, "lissa_repeats": 2}, 0.25),  # stochastic
    ],
)
def test_iterative_solvers_agree_with_explicit(trained, solver, options, rtol):
    """Tolerance: relative Frobenius error of the score matrix. Float32 Hessian-vector products limit CG, Arnoldi and
    full-batch LiSSA to ~1e-5; minibatch noise limits stochastic LiSSA (measured 0.03 here)."""
    model, train, query = trained
    task = dt.ClassificationTask()
    damping = 5.0  # a well-conditioned system keeps LiSSA's run short
    explicit = dt.InfluenceFunction(model, task, solver="explicit", damping=damping, verbose=False).fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dt.DatatraceWarning)  # stochastic LiSSA does not reach tol
        attr = dt.InfluenceFunction(model, task, solver=solver, damping=damping, verbose=False, **options).fit(train)
        got = attr.score(query).values
    assert attr.damping_abs_ == explicit.damping_abs_  # the same Hutchinson trace: the same damped system
    want = explicit.score(query).values
    assert np.linalg.norm(got - want) <= rtol * np.linalg.norm(want), np.linalg.norm(got - want) / np.linalg.norm(want)


def test_cg_reports_its_residual_and_warns_at_the_iteration_cap(trained):
    model, train, query = trained
    attr = dt.InfluenceFunction(model, dt.ClassificationTask(), solver="cg", damping=1e-3, max_iter=3, verbose=False)
    with pytest.warns(dt.DatatraceWarning, match=r"relative residual .* > tol=1e-05.*Increase the damping"):
        scores = attr.fit(train).score(query)
    (solve,) = scores.metadata["solve"]
    assert solve["iterations"] == 3 and not solve["converged"] and solve["relative_residual"] > 1e-5
    converged = dt.InfluenceFunction(model, dt.ClassificationTask(), solver="cg", verbose=False).fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dt.DatatraceWarning)
        (solve,) = converged.score(query).metadata["solve"]
    assert solve["converged"] and solve["relative_residual"] <= 1e-5


@pytest.mark.parametrize("solver", SOLVERS)
def test_self_influence_works_for_every_solver(trained, solver):
    model, (x, y), _ = trained
    task = dt.ClassificationTask()  # measurement = loss: score(train) has the self-influences on its diagonal
    options = {"lissa_batch_size": 60, "lissa_depth": 300} if solver == "lissa" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dt.DatatraceWarning)
        attr = dt.InfluenceFunction(model, task, solver=solver, verbose=False, **options).fit((x, y))
        diagonal = attr.score((x, y)).values.diagonal()
        np.testing.assert_allclose(attr.self_influence((x, y)), diagonal, rtol=1e-3, atol=1e-6 * diagonal.max())
        outside = (x[:7] + 0.5, y[:7])  # not training examples: their training-side gradients are computed in memory
        got = attr.self_influence(outside)
        g = for_loop_grads(model, task.loss, *outside).double()
        want = (attr.inverse_hessians_[0].apply(g)[0] * g).sum(1) / len(x)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3)
    assert (got > 0).all()


def test_self_influence_equals_the_formula(trained):
    model, (x, y), query = trained
    task = dt.ClassificationTask()
    attr = dt.InfluenceFunction(model, task, solver="explicit", damping_abs=1e-3, verbose=False).fit((x, y))
    h = reference_hessian(model, x, y, "gn") + 1e-3 * torch.eye(75, dtype=torch.float64)
    for data in ((x, y), query):
        g = for_loop_grads(model, task.loss, *data).double()
        want = (g @ torch.linalg.inv(h) * g).sum(1) / len(x)
        np.testing.assert_allclose(attr.self_influence(data), want.numpy(), rtol=1e-3)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sign_exact_copy_of_query_is_a_top_proponent(solver, digits_copies):
    train, query, model, copies = digits_copies
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dt.DatatraceWarning)  # LiSSA at reduced depth
        attr = dt.InfluenceFunction(model, dt.ClassificationTask(), solver=solver, lissa_depth=500, verbose=False)
        scores = attr.fit(train).score(query).values
    ranks = [(scores[q] > scores[q, c]).sum() for q, c in enumerate(copies)]
    assert max(ranks) < np.ceil(0.01 * scores.shape[1]), ranks
    assert (scores[np.arange(len(copies)), copies] > 0).all()


@pytest.mark.slow
def test_lds_floor_on_digits_logistic_regression():
    """Explicit and CG influence (default damping) against 64 retrained 50% subsets of digits-logreg.

    Measured 0.943 [0.940, 0.947] for both (TRAK with 5 models: 0.854); the floors leave room for platform noise.
    """
    bench = get("digits-logreg")
    gt = bench.ground_truth(workers=2, verbose=False)
    train, query = bench.data()
    model = bench.model()
    for solver in ("explicit", "cg"):
        res = dt.eval.lds(
            dt.InfluenceFunction(model, bench.task, solver=solver, verbose=False).fit(train).score(query), gt
        )
        assert res.mean >= 0.92, (solver, str(res))
        assert res.ci[0] >= 0.90, (solver, str(res))


def test_damping_is_scale_aware_and_recorded(trained):
    model, train, query = trained

    class Scaled(dt.ClassificationTask):
        def loss(self, model, batch):
            return 100.0 * super().loss(model, batch)

    base = dt.InfluenceFunction(model, dt.ClassificationTask(), solver="explicit", verbose=False).fit(train)
    scaled = dt.InfluenceFunction(model, Scaled(), solver="explicit", verbose=False).fit(train)
    assert scaled.damping_abs_[0] == pytest.approx(100 * base.damping_abs_[0], rel=1e-4)
    np.testing.assert_allclose(scaled.score(query).values, 100 * base.score(query).values, rtol=1e-3, atol=1e-9)
    meta = base.score(query).metadata
    assert meta["damping_relative"] == 0.5 and meta["damping_abs"] == base.damping_abs_
    assert base.damping_abs_[0] == pytest.approx(0.5 * base.mean_eigenvalue_[0])
    assert "removed" in meta["normalisation"] and meta["solver"] == "explicit"


def test_hessian_on_a_stated_sample(trained):
    model, (x, y), query = trained
    task = dt.ClassificationTask()
    attr = dt.InfluenceFunction(
        model, task, solver="explicit", hessian_samples=25, damping_abs=1e-3, seed=3, verbose=False
    ).fit((x, y))
    sample = attr.hessian_data_.tensors()
    assert len(sample[0]) == 25 and attr.score(query).metadata["hessian_samples"] == 25
    want = if_formula(model, task, (x, y), query, reference_hessian(model, *sample, "gn"), 1e-3)
    np.testing.assert_allclose(attr.score(query).values, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_projected_training_gradients_give_the_jl_estimate_of_the_same_scores(trained):
    model, train, query = trained
    task = dt.ClassificationTask()
    attr = dt.InfluenceFunction(model, task, solver="explicit", proj_dim=32, damping_abs=1e-3, verbose=False)
    got = attr.fit(train).score(query).values
    r = attr.projector_.matrix().double()
    g_train = for_loop_grads(model, task.loss, *train).double()
    g_query = for_loop_grads(model, task.measurement, *query).double()
    h = reference_hessian(model, *train, "gn") + 1e-3 * torch.eye(75, dtype=torch.float64)
    want = ((torch.linalg.solve(h, g_query.T).T @ r) @ (g_train @ r).T).numpy() / len(train[0])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_several_models_average_their_scores(trained):
    model, (x, y), query = trained
    other = fit(mlp(seed=4), x, y, steps=50)
    task = dt.ClassificationTask()
    both = dt.InfluenceFunction([model, other], task, solver="explicit", verbose=False).fit((x, y))
    each = [dt.InfluenceFunction(m, task, solver="explicit", verbose=False).fit((x, y)) for m in (model, other)]
    assert both.damping_abs_ == [e.damping_abs_[0] for e in each]
    np.testing.assert_allclose(
        both.score(query).values, (each[0].score(query).values + each[1].score(query).values) / 2, rtol=1e-4, atol=1e-9
    )


def test_one_feature_store_serves_every_solver_and_damping(trained, tmp_path):
    model, train, query = trained
    task = dt.ClassificationTask()
    a = dt.InfluenceFunction(model, task, solver="explicit", cache_dir=tmp_path, verbose=False).fit(train)
    b = dt.InfluenceFunction(model, task, solver="cg", damping=0.1, cache_dir=tmp_path, verbose=False).fit(train)
    assert a.stores_[0].path == b.stores_[0].path
    with pytest.raises(dt.StoreMismatchError, match="proj_dim"):
        dt.InfluenceFunction(model, task, proj_dim=8, cache_dir=tmp_path, verbose=False).fit(train)


def test_bad_options_are_refused(trained):
    model, train, _ = trained
    task = dt.ClassificationTask()
    for kwargs, match in [
        ({"damping": 0}, "damping must be > 0"),
        ({"damping": -1.0}, "damping must be > 0"),
        ({"damping_abs": 0.0}, "damping_abs must be > 0"),
        ({"solver": "lisa"}, "Did you mean 'lissa'"),
        ({"hessian": "fisher"}, "gn"),
        ({"solver": "ekfac", "hessian": "exact"}, "Gauss–Newton"),
        ({"rank": 0}, "rank must be a positive int"),
        ({"tol": 0}, "tol must be > 0"),
        ({"lissa_scale": -1}, "lissa_scale"),
        ({"hessian_samples": 0}, "hessian_samples"),
    ]:
        with pytest.raises(dt.InputError, match=match):
            dt.InfluenceFunction(model, task, **kwargs)


def test_explicit_hessian_too_large_is_refused_before_any_work():
    model = torch.nn.Linear(200, 120).eval()  # 24,120 parameters: 4.3 GiB in float64
    never = torch.utils.data.TensorDataset(torch.full((4, 200), float("nan")), torch.zeros(4, dtype=torch.long))
    with pytest.raises(dt.InputError, match=r"24,120 parameters needs 4\.3 GiB .*4,654,195,200 bytes.*solver='cg'"):
        dt.InfluenceFunction(model, dt.ClassificationTask(), solver="explicit").fit(never)


def test_indefinite_exact_hessian_is_a_clear_error(trained):
    model, train, query = trained
    for solver in ("explicit", "cg"):
        attr = dt.InfluenceFunction(
            model, dt.ClassificationTask(), solver=solver, hessian="exact", damping_abs=1e-6, verbose=False
        )
        with pytest.raises(dt.InputError, match="not positive definite.*hessian='gn'"):
            attr.fit(train).score(query)


def test_non_finite_hessian_vector_products_name_the_examples():
    class PowerLoss(dt.RegressionTask):
        """|error|^1.5: finite gradient but infinite curvature where the error is exactly 0."""

        def loss(self, model, batch):
            x, y = batch
            return (model(x).squeeze(-1) - y).abs() ** 1.5

    model = torch.nn.Linear(1, 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    x, y = torch.ones(10, 1), torch.linspace(1, 2, 10)
    y[6] = 0.0
    for hessian in ("gn", "exact"):
        attr = dt.InfluenceFunction(model.eval(), PowerLoss(), solver="cg", hessian=hessian, batch_size=4)
        with pytest.raises(dt.NonFiniteError, match="Hessian-vector product on training examples 4–7"):
            attr.fit((x, y))


def test_lissa_with_too_small_a_scale_is_a_clear_error(trained):
    model, train, query = trained
    attr = dt.InfluenceFunction(model, dt.ClassificationTask(), solver="lissa", lissa_scale=1e-4, verbose=False)
    with pytest.raises(dt.InputError, match="LiSSA diverged.*larger lissa_scale"):
        attr.fit(train).score(query)
