import json

import numpy as np
import pytest
from typer.testing import CliRunner

from datatrace.benchmarks.run import markdown_table, run_bench
from datatrace.cli import app

from .tiny import TINY

runner = CliRunner()


@pytest.fixture
def tiny_registered(monkeypatch):
    monkeypatch.setitem(__import__("datatrace.benchmarks", fromlist=["BENCHMARKS"]).BENCHMARKS, "tiny", TINY)


def test_run_bench_scores_every_method_against_the_same_ground_truth():
    result = run_bench(TINY, "graddot,tracin,trak,trak-2", workers=1, verbose=False)
    assert [m.name for m in result.methods] == ["graddot", "tracin", "trak", "trak-2"]
    for m in result.methods:
        assert -1 <= m.ci[0] <= m.lds <= m.ci[1] <= 1
        assert m.fit_s > 0 and m.score_s > 0 and m.storage_bytes > 0 and m.peak_mem_bytes >= 0
    assert result.methods[3].models_s > 0 and result.methods[2].hyperparameters["ridge"] == 0.5
    assert result.methods[1].hyperparameters["lrs"] == [0.05, 0.05]
    assert 0 < result.noise_ceiling["mean"] <= 1 and result.settings["seeds_per_subset"] == 2
    table = markdown_table([result])
    assert table.count("| tiny |") == 4


def test_cli_bench_writes_json_and_a_self_contained_report(tmp_path, tiny_registered):
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    args = ["bench", "tiny", "--methods", "graddot,trak", "--workers", "1", "--json", str(out_json)]
    result = runner.invoke(app, args + ["--report", str(out_html)])
    assert result.exit_code == 0, result.output
    assert "graddot" in result.output and "Noise ceiling" in result.output
    data = json.loads(out_json.read_text())
    assert data["benchmark"] == "tiny" and [m["name"] for m in data["methods"]] == ["graddot", "trak"]
    assert np.isfinite(data["methods"][1]["lds"]) and len(data["noise_ceiling"]["ci"]) == 2
    html = out_html.read_text()
    assert html.count("<rect") == 2 + 1 and html.count("<circle") == 2  # bars + scatter frame; scatter points
    assert "noise ceiling" in html and "stroke-dasharray" in html
    assert 'src="http' not in html and 'href="http' not in html


def test_cli_bench_measures_the_margin_with_kendall(tiny_registered, tmp_path):
    out = tmp_path / "r.json"
    args = ["bench", "tiny", "--methods", "trak", "--workers", "1", "--measurement", "margin"]
    result = runner.invoke(app, args + ["--correlation", "kendall", "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    settings = json.loads(out.read_text())["settings"]
    assert settings["measurement"] == "margin" and settings["correlation"] == "kendall"


def test_cli_bench_rejects_unknown_names_with_the_valid_ones(tiny_registered):
    result = runner.invoke(app, ["bench", "tiny", "--methods", "graddot,nope"])
    assert result.exit_code == 2 and "Unknown method 'nope'; valid: " in result.output
    assert "gradcos, graddot" in result.output
    result = runner.invoke(app, ["bench", "digits-logreg", "--methods", "tracin"])
    assert result.exit_code == 2 and "needs checkpoints" in result.output
    result = runner.invoke(app, ["bench", "nope"])
    assert result.exit_code == 2 and "Unknown benchmark 'nope'" in result.output


def test_cli_bench_without_a_name_lists_benchmarks_and_methods():
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 0
    assert "mnist5k-mlp" in result.output and "trak-K" in result.output


@pytest.mark.slow
def test_cli_bench_on_a_built_in_benchmark(tmp_path):
    out = tmp_path / "r.json"
    args = ["bench", "digits-mlp", "--methods", "graddot,tracin,trak", "--subsets", "3", "--json", str(out)]
    result = runner.invoke(app, args + ["--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["settings"]["n_subsets"] == 3 and len(data["methods"]) == 3
