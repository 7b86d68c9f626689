"""Newton refinement of the logit-mode operators, checked against a for-loop objective minimised by L-BFGS."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import datatrace as dt
from datatrace.stride.refine import _output_hessians
from testable_tasks import blobs, fit, mlp

TASK = dt.ClassificationTask()
STABILITY = 10.0


@pytest.fixture(scope="module")
def refined():
    x, y = blobs(n=90)
    model = fit(mlp(), x, y).eval()
    options = dict(n_subsets=30, degree=3, rank=4, damping=0.5, steps=30, subsets_per_step=8, examples_per_subset=4)
    a = dt.STRIDE(model, TASK, stability=STABILITY, verbose=False, **options).fit((x, y))
    return a, model, x, y


def features(a, model, x):
    with torch.no_grad():
        h = model[:-1](x).double()
        return h @ a.steered_.operators.basis.double(), model(x).double()


def for_loop_objective(k, a, model, x, y):
    """J_k(·) written out: mean cross-entropy of the members + stability · ½ aᵀG_k a + ½ρ‖a‖², G_k the mean over
    non-members of φφᵀ ⊗ (diag p − ppᵀ), one example at a time, and ρ = damping · stability · trace(Ḡ)/P with Ḡ the
    same mean over all examples."""
    phi, out = features(a, model, x)
    members = set(a.design_.members(k).tolist())
    r, c = phi.shape[1], out.shape[1]
    per_example = []
    for i in range(len(x)):
        p = out[i].softmax(-1)
        per_example.append(torch.kron(torch.outer(phi[i], phi[i]), torch.diag(p) - torch.outer(p, p)))
    g = sum(per_example[i] for i in range(len(x)) if i not in members) / (len(x) - len(members))
    ridge = a.damping * STABILITY * float(sum(per_example).trace()) / (len(x) * r * c)
    idx = sorted(members)

    def objective(mat):
        fid = F.cross_entropy(out[idx] + phi[idx] @ mat, y[idx])
        v = mat.reshape(-1)
        return fid + STABILITY * 0.5 * v @ g @ v + 0.5 * ridge * v @ v

    return objective


def test_refined_operators_minimise_their_objective(refined):
    """J_k is convex: the Newton decrement of the for-loop objective (explicit Hessian, pseudo-inverse for the softmax
    null space) at our a_k certifies that it is within a rounding error of the minimum (a_k is stored in float32),
    and L-BFGS on the same objective gets no lower."""
    a, model, x, y = refined
    ops = a.steered_.operators
    for k in (0, 7, 29):
        objective = for_loop_objective(k, a, model, x, y)
        ours = ops.matrices(torch.tensor([k]))[0].detach().double().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(ours), ours)
        hessian = torch.autograd.functional.hessian(objective, ours.detach()).reshape(g.numel(), g.numel())
        newton_step = torch.linalg.pinv(hessian, hermitian=True) @ g.reshape(-1)
        start = torch.zeros_like(ours, requires_grad=True)
        gap = 0.5 * float(g.reshape(-1) @ newton_step)  # Newton decrement: J(a_k) − min J, to second order
        with torch.no_grad():
            assert 0 <= gap <= 1e-4 * float(objective(start) - objective(ours)), (k, gap)
        opt = torch.optim.LBFGS([start], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15)

        def closure(opt=opt, objective=objective, start=start):
            opt.zero_grad()
            value = objective(start)
            value.backward()
            return value

        opt.step(closure)
        with torch.no_grad():
            assert float(objective(ours)) <= float(objective(start)) + 1e-9


def test_refinement_lowers_the_objective_of_the_adam_operators(refined):
    log = refined[0].training_log_.refine
    assert log is not None and log.objective_after < log.objective_before and log.steps <= 30


def test_output_hessians_of_cross_entropy_are_the_softmax_fisher():
    s = torch.randn(6, 4, dtype=torch.float64)
    y = torch.arange(6) % 4
    h = _output_hessians(lambda z: F.cross_entropy(z, y, reduction="none"), s)
    p = s.softmax(-1)
    torch.testing.assert_close(h, torch.diag_embed(p) - p[:, :, None] * p[:, None, :])


def test_regression_operators_are_refined():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    t = x @ torch.randn(5, 2, generator=g)
    model = mlp(classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        F.mse_loss(model(x), t).backward()
        opt.step()
    a = dt.STRIDE(model.eval(), dt.RegressionTask(), n_subsets=20, degree=3, steps=20, verbose=False).fit((x, t))
    log = a.training_log_.refine
    assert log.objective_after < log.objective_before
    assert np.isfinite(a.score((x[:5], t[:5])).values).all()


def test_refine_choices(refined):
    _, model, x, y = refined
    with pytest.raises(dt.UnknownOptionError, match="refine"):
        dt.STRIDE(model, TASK, refine="lbfgs")
    with pytest.raises(dt.InputError, match="damping"):
        dt.STRIDE(model, TASK, damping=-1.0)
    with pytest.raises(dt.InputError, match="linearity"):
        dt.STRIDE(model, TASK, refine="newton", linearity=1.0, n_subsets=20, degree=2, steps=2, verbose=False).fit(
            (x, y)
        )
    with pytest.raises(dt.InputError, match="stability > 0"):
        dt.STRIDE(model, TASK, refine="newton", stability=0.0, n_subsets=20, degree=2, steps=2, verbose=False).fit(
            (x, y)
        )
    unstable = dt.STRIDE(model, TASK, stability=0.0, n_subsets=20, degree=2, steps=2, verbose=False)
    assert unstable.fit((x, y)).training_log_.refine is None  # auto: nothing bounds the operators
    with pytest.raises(dt.InputError, match="logit mode"):
        dt.STRIDE(model, TASK, refine="newton", mode="activation", layer=0, n_subsets=20, degree=2, steps=2).fit((x, y))
    plain = dt.STRIDE(model, TASK, refine="none", n_subsets=20, degree=2, steps=2, verbose=False).fit((x, y))
    assert plain.training_log_.refine is None
    activation = dt.STRIDE(model, TASK, mode="activation", layer=0, n_subsets=20, degree=2, steps=2, verbose=False)
    assert activation.fit((x, y)).training_log_.refine is None  # auto: logit mode only
