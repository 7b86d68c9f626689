import pytest
import torch

import datatrace as dt
from datatrace.grads import per_example_gradients, select_parameters
from testable_tasks import TinyCNN, blobs, for_loop_grads, images, mlp


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_mlp_gradients_equal_for_loop(chunk_size):
    x, y = blobs(10)
    model = mlp()
    task = dt.ClassificationTask()
    names = select_parameters(model)
    grads, values = per_example_gradients(model, task.loss, (x, y), names, chunk_size=chunk_size)
    torch.testing.assert_close(grads, for_loop_grads(model, task.loss, x, y), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, task.loss(model, (x, y)).detach())


def test_cnn_gradients_equal_for_loop():
    x, y = images(8)
    model = TinyCNN().eval()
    task = dt.ClassificationTask(measurement="margin")
    names = select_parameters(model)
    grads, _ = per_example_gradients(model, task.measurement, (x, y), names)
    torch.testing.assert_close(grads, for_loop_grads(model, task.measurement, x, y), atol=1e-5, rtol=1e-5)


def test_parameter_selection():
    model = mlp()
    assert select_parameters(model) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert select_parameters(model, "last") == ["2.weight", "2.bias"]
    assert select_parameters(model, ["0"]) == ["0.weight", "0.bias"]
    assert select_parameters(model, ["2.bias"]) == ["2.bias"]
    with pytest.raises(dt.InputError, match="match nothing.*modules with parameters: \\['0', '2'\\]"):
        select_parameters(model, ["fc9"])


def test_subset_of_parameters_matches_for_loop_columns():
    x, y = blobs(5)
    model = mlp()
    task = dt.ClassificationTask()
    names = select_parameters(model, "last")
    grads, _ = per_example_gradients(model, task.loss, (x, y), names)
    torch.testing.assert_close(grads, for_loop_grads(model, task.loss, x, y, names), atol=1e-5, rtol=1e-5)


def test_model_parameters_are_untouched():
    x, y = blobs(5)
    model = mlp()
    before = [p.clone() for p in model.parameters()]
    per_example_gradients(model, dt.ClassificationTask().loss, (x, y), select_parameters(model))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_non_finite_loss_names_the_example():
    x, y = blobs(6)
    x[4, 0] = float("nan")
    with pytest.raises(dt.NonFiniteError, match="example 14"):
        per_example_gradients(mlp(), dt.ClassificationTask().loss, (x, y), select_parameters(mlp()), offset=10)
