import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import datatrace as dt
from datatrace.attributors import influence
from datatrace.benchmarks import BENCHMARKS, MethodContext, get_method
from datatrace.benchmarks.run import run_bench
from datatrace.cli import app

from .tiny import TINY

#: if-lissa is left out of the run (its default 5,000 steps dominate the test's time); it is the same attributor,
#: tested in tests/attributors/test_influence.py, and builds like every registered method in test_methods.py.
INFLUENCE_METHODS = ["if-explicit", "if-cg", "if-arnoldi", "if-kfac", "if-ekfac", "logra"]


def test_influence_methods_run_in_bench_with_their_settings_recorded():
    """The solvers on the same model and ground truth; explicit, CG and full-rank Arnoldi (rank 128 ≥ the 75
    parameters) solve the same damped system, so their LDS agree."""
    result = run_bench(TINY, INFLUENCE_METHODS, workers=1, verbose=False)
    rows = {m.name: m for m in result.methods}
    assert list(rows) == INFLUENCE_METHODS
    for name, row in rows.items():
        assert np.isfinite(row.lds) and row.fit_s > 0 and row.storage_bytes > 0, name
    for name in INFLUENCE_METHODS[:-1]:
        assert rows[name].hyperparameters["solver"] == name.removeprefix("if-")
        assert rows[name].hyperparameters["proj_dim"] is None  # full gradients: the exact influence function
    assert rows["logra"].hyperparameters["rank"] == 64
    assert rows["if-cg"].lds == pytest.approx(rows["if-explicit"].lds, abs=1e-3)
    assert rows["if-arnoldi"].lds == pytest.approx(rows["if-explicit"].lds, abs=1e-3)


def test_model_limits_are_refused_before_the_ground_truth_is_computed(monkeypatch, tmp_path):
    monkeypatch.setattr(influence, "MAX_EXPLICIT_BYTES", 10_000)  # the tiny MLP's 75² float64 entries: 45,000 bytes
    with pytest.raises(dt.InputError, match=r"explicit Hessian of 75 parameters needs .*45,000 bytes"):
        run_bench(TINY, "graddot,if-explicit", workers=1, verbose=False)

    def with_norm(data, seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3)).eval()

    normed = dataclasses.replace(TINY, train_fn=with_norm)
    ctx = MethodContext(normed, normed.data()[0])
    for name in ("if-kfac", "if-ekfac", "logra"):  # the Kronecker methods factor the linear layers, skip the norm
        get_method(name).check_model(ctx)
        assert get_method(name).build(ctx, verbose=False).params == ["0.weight", "0.bias", "2.weight", "2.bias"]
    get_method("if-cg").check_model(ctx)  # Hessian-vector products: any layer
    assert not (tmp_path / "cache" / "ground-truth").exists()  # refused before any retraining


def test_cli_bench_names_the_limit_and_exits_with_2(monkeypatch):
    monkeypatch.setitem(BENCHMARKS, "tiny", TINY)
    monkeypatch.setattr(influence, "MAX_EXPLICIT_BYTES", 10_000)
    result = CliRunner().invoke(app, ["bench", "tiny", "--methods", "if-explicit", "--workers", "1"])
    assert result.exit_code == 2 and "75 parameters" in result.output and "solver='cg'" in result.output
