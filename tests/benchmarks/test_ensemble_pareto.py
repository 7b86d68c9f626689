"""benchmarks/ensemble_pareto.py: grid specs, targets per cost (weights and features apart), same-size ratios."""

import importlib.util
import sys
from pathlib import Path

import pytest

import datatrace as dt

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "ensemble_pareto.py"
spec = importlib.util.spec_from_file_location("ensemble_pareto", SCRIPT)
pareto = sys.modules.setdefault("ensemble_pareto", importlib.util.module_from_spec(spec))
spec.loader.exec_module(pareto)


def row(family, k, m, lds, train_s, serve_s, weights, features):
    return pareto.Row("b", "trak", family, k, m, lds, train_s, serve_s, weights, features, 0, (lds - 0.01, lds + 0.01))


def test_grid_spec_gives_k_for_model_families_and_m_or_kxm_for_member_families():
    got = list(pareto.grid("trak", "independent=1,4;checkpoints=2;dropout=4, 2x8;q_only=16", n_checkpoints=3))
    assert got == [
        ("independent", 1, 1),
        ("independent", 4, 1),
        ("checkpoints", 2, 3),
        ("dropout", 1, 4),
        ("dropout", 2, 8),
        ("q_only", 1, 16),
    ]
    assert list(pareto.grid("graddot", "q_only=4;checkpoints=2", n_checkpoints=0)) == []  # TRAK only; no checkpoints
    with pytest.raises(dt.InputError, match="Bad grid entry 'bagging=2'"):
        list(pareto.grid("trak", "bagging=2", 0))


def test_targets_check_weights_and_features_apart_and_rows_carry_same_size_ratios():
    rows = [
        row("independent", 1, 1, 0.50, 10, 5, 100, 1000),
        row("independent", 2, 1, 0.60, 20, 10, 200, 2000),
        row("dropout", 1, 2, 0.58, 10, 12, 110, 2000),
        row("q_only", 1, 4, 0.57, 10, 6, 104, 1050),
        row("half", 1, 1, 0.40, 5, 5, 100, 1000),
    ]
    (entry,) = pareto.targets(rows)
    assert entry["reference"] == "independent K=2"
    assert entry["train_paper"] == {"config": "dropout K=1 M=2", "lds": 0.58, "ratio": 0.5}
    assert entry["serve_q_only"]["ratio"] == 0.6
    assert entry["weights_efficient"]["ratio"] == 0.52  # q_only: one model + 4 masks, not the features
    assert entry["features_efficient"]["ratio"] == 0.525
    assert entry["train_any"]["config"] == "dropout K=1 M=2"  # the half-data model is below 95% of the LDS
    ratios = pareto.same_size_ratios(rows)
    assert ratios[2] == {"train": 0.5, "serve": 1.2, "weights": 0.55, "features": 1.0}  # vs independent K=2
    assert 3 not in ratios and ratios[4]["train"] == 0.5  # no independent K=4; half K=1 vs independent K=1
    table = pareto.markdown_table(rows)
    assert "| b | trak | dropout K=1 M=2 | 0.580 [0.570, 0.590] | 1 |" in table
    assert "0.50 / 1.20 / 0.55 / 1.00 |" in table and "| 1 (half data) |" in table
