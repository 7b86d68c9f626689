"""datatrace select / contamination / report end to end on the tiny benchmark: YAML in, results and a report out."""

import json

import pytest
from typer.testing import CliRunner

from datatrace.benchmarks import BENCHMARKS
from datatrace.cli import app

from .tiny import TINY


@pytest.fixture
def tiny_benchmark(monkeypatch):
    monkeypatch.setitem(BENCHMARKS, "tiny", TINY)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_select_then_report(tiny_benchmark, tmp_path):
    out = tmp_path / "select"
    config = tmp_path / "select.yaml"
    config.write_text(f"benchmark: tiny\nmethods: [graddot]\nbudget: 10\ntarget_class: 1\nseeds: [0, 1]\nout: {out}\n")
    result = invoke("select", config, "--quiet")
    assert result.exit_code == 0, result.output
    rows = {r["selection"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert any(name.startswith("graddot") for name in rows) and any("random" in name for name in rows), rows
    report = invoke("report", out / "run", "--out", tmp_path / "select.html")
    assert report.exit_code == 0, report.output
    assert "<html" in (tmp_path / "select.html").read_text()[:500].lower()


def test_contamination_reports_recall_per_method_and_fusion(tiny_benchmark, tmp_path):
    out = tmp_path / "contamination"
    config = tmp_path / "contamination.yaml"
    config.write_text(
        f"benchmark: tiny\nmethods: [graddot, gradcos]\nn_items: 4\nks: [1, 5]\nfusions: [[graddot, gradcos]]\n"
        f"out: {out}\n"
    )
    result = invoke("contamination", config, "--quiet")
    assert result.exit_code == 0, result.output
    text = (out / "results.json").read_text()
    for name in ("graddot", "gradcos", "R@5", "MRR"):
        assert name in text, name
    assert invoke("report", out / "run").exit_code == 0 and (out / "run" / "report.html").exists()


def test_bad_config_and_missing_run_exit_with_2(tiny_benchmark, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("benchmark: tiny\nbudjet: 10\n")
    result = invoke("select", config)
    assert result.exit_code == 2 and "budjet" in result.output and "budget" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("report", empty)
    assert result.exit_code == 2 and "run.json" in result.output
