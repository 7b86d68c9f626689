import pytest
import torch
import torch.nn.functional as F

import datatrace as dt
from datatrace.task import margin
from testable_tasks import blobs, mlp


def test_classification_loss_is_per_example_cross_entropy():
    x, y = blobs(20)
    model = mlp()
    loss = dt.ClassificationTask().loss(model, (x, y))
    assert loss.shape == (20,)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y, reduction="none"))


def test_margin_measurement_is_negated_margin_and_consistent_with_cross_entropy():
    x, y = blobs(20)
    model = mlp()
    task = dt.ClassificationTask(measurement="margin")
    m = margin(model(x), y)
    # cross-entropy = softplus(−margin): the margin is the output whose increase lowers the loss
    torch.testing.assert_close(F.softplus(-m), task.loss(model, (x, y)))
    torch.testing.assert_close(task.measurement(model, (x, y)), -m)
    torch.testing.assert_close(task.output(model, (x, y)), m)


def test_output_to_loss_is_minus_dloss_doutput():
    x, y = blobs(6)
    model = mlp()
    task = dt.ClassificationTask()
    m = margin(model(x), y).detach().requires_grad_(True)
    (dl_dm,) = torch.autograd.grad(F.softplus(-m).sum(), m)
    torch.testing.assert_close(task.output_to_loss(model, (x, y)), -dl_dm)


def test_regression_loss_is_squared_error_summed_over_outputs():
    x = torch.randn(7, 3)
    y = torch.randn(7, 2)
    model = torch.nn.Linear(3, 2)
    loss = dt.RegressionTask().loss(model, (x, y))
    torch.testing.assert_close(loss, ((model(x) - y) ** 2).sum(1))
    assert dt.RegressionTask().measurement(model, (x, y)).shape == (7,)


def test_unknown_measurement_names_valid_options():
    with pytest.raises(dt.UnknownOptionError, match="margin"):
        dt.ClassificationTask(measurement="margn")


def test_base_task_requires_loss():
    with pytest.raises(NotImplementedError, match="must implement loss"):
        dt.Task().loss(mlp(), blobs(2))
