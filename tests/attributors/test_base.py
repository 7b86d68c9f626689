"""Behaviour every attributor shares through the base fit/score path."""

import numpy as np
import pytest
import torch

import datatrace as dt
from testable_tasks import blobs, fit, mlp

ATTRIBUTORS = [dt.GradDot, dt.GradCos, dt.TracIn, dt.TRAK]


@pytest.fixture(scope="module")
def trained():
    x, y = blobs(60)
    return fit(mlp(), x, y), (x, y), blobs(8, seed=1)


@pytest.mark.parametrize("cls", ATTRIBUTORS)
def test_fit_returns_self_and_scores_have_the_right_shape(cls, trained):
    model, train, query = trained
    attr = cls(model, dt.ClassificationTask(), verbose=False)
    assert attr.fit(train) is attr
    assert attr.n_train_ == 60
    scores = attr.score(query)
    assert scores.shape == (8, 60) and scores.values.dtype == np.float32
    assert scores.metadata["method"] == attr.method and "sign" in scores.metadata


@pytest.mark.parametrize("cls", ATTRIBUTORS)
def test_same_seed_gives_bit_identical_scores(cls, trained):
    model, train, query = trained
    runs = [
        cls(model, dt.ClassificationTask(), proj_dim=16, seed=5, verbose=False).fit(train).score(query).values
        for _ in range(2)
    ]
    assert np.array_equal(*runs)


@pytest.mark.parametrize("cls", ATTRIBUTORS)
def test_score_before_fit_is_a_clear_error(cls, trained):
    model, _, query = trained
    with pytest.raises(dt.NotFittedError, match=r"call \.fit\(train\)"):
        cls(model, dt.ClassificationTask()).score(query)


def test_model_in_train_mode_with_dropout_is_refused(trained):
    _, train, _ = trained
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    with pytest.raises(dt.ModelModeError, match=r"model\.eval\(\)"):
        dt.GradDot(model, dt.ClassificationTask()).fit(train)
    dt.GradDot(model.eval(), dt.ClassificationTask(), verbose=False).fit(train)


def test_loss_that_is_not_per_example_is_refused(trained):
    model, train, _ = trained

    class MeanLoss(dt.ClassificationTask):
        def loss(self, model, batch):
            return super().loss(model, batch).mean()

    with pytest.raises(dt.InputError, match=r"one value per example.*reduction='none'"):
        dt.GradDot(model, MeanLoss()).fit(train)


def test_nan_in_training_data_names_the_example(trained):
    model, (x, y), _ = trained
    x = x.clone()
    x[37, 2] = float("inf")
    with pytest.raises(dt.NonFiniteError, match="example 37"):
        dt.GradDot(model, dt.ClassificationTask(), batch_size=16, verbose=False).fit((x, y))


def test_bad_options_are_refused(trained):
    model, _, _ = trained
    task = dt.ClassificationTask()
    with pytest.raises(dt.UnknownOptionError, match="rademacher"):
        dt.GradDot(model, task, proj_kind="radmacher")
    with pytest.raises(dt.InputError, match="proj_dim"):
        dt.GradDot(model, task, proj_dim=0)
    with pytest.raises(dt.InputError, match="Task"):
        dt.GradDot(model, torch.nn.CrossEntropyLoss())
    with pytest.raises(TypeError):
        dt.GradDot(model, task, damping=1.0)


def test_hyperparameters_and_repr(trained):
    model, train, _ = trained
    attr = dt.TRAK(model, dt.ClassificationTask(), proj_dim=16, ridge=0.3)
    params = attr.get_params()
    assert params["proj_dim"] == 16 and params["ridge"] == 0.3 and params["seed"] == 0
    assert "TRAK(" in repr(attr) and "ridge=0.3" in repr(attr)


def test_dataset_input_gives_the_same_scores_as_tensors(trained):
    model, (x, y), query = trained
    a = dt.GradDot(model, dt.ClassificationTask(), verbose=False).fit((x, y)).score(query).values
    b = dt.GradDot(model, dt.ClassificationTask(), verbose=False).fit(torch.utils.data.TensorDataset(x, y))
    np.testing.assert_allclose(a, b.score(torch.utils.data.TensorDataset(*query)).values, rtol=1e-6)
