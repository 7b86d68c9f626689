"""`datatrace bench` shows ensembles with their costs and the ratios to the independent ensemble."""

from typer.testing import CliRunner

from datatrace.benchmarks.run import report_html, run_bench
from datatrace.cli import app

from .tiny import TINY


def test_bench_reports_ensemble_costs_and_ratios(monkeypatch, tmp_path):
    methods = "trak,trak-independent-2,trak-dropout-2,trak-qonly-2,trak-half-1,trak-checkpoints-2"
    result = run_bench(TINY, methods, workers=1, verbose=False)
    rows = {m.name: m for m in result.methods}
    assert rows["trak"].costs is None
    for name in ("trak-independent-2", "trak-dropout-2", "trak-qonly-2", "trak-checkpoints-2"):
        costs = rows[name].costs
        assert costs["n_members"] == 2 and costs["feature_bytes"] > 0 and costs["weight_bytes"] > 0
        assert set(costs["vs_independent"]) == {"train_s", "serve_s", "storage_bytes"}
    assert rows["trak-independent-2"].costs["vs_independent"]["serve_s"] == 1
    assert rows["trak-dropout-2"].costs["vs_independent"]["storage_bytes"] < 1  # one set of weights, not two
    assert "vs_independent" not in rows["trak-half-1"].costs  # no trak-independent-1 in this run
    html = report_html(result)
    assert "Ensemble costs" in html and html.count("<tr>") == 1 + 6 + 1 + 5 + 1 + 6

    monkeypatch.setitem(__import__("datatrace.benchmarks", fromlist=["BENCHMARKS"]).BENCHMARKS, "tiny", TINY)
    out = CliRunner().invoke(app, ["bench", "tiny", "--methods", "trak-independent-1,trak-lora-1", "--workers", "1"])
    assert out.exit_code == 0, out.output
    assert "Ensemble costs" in out.output and "trak-lora-1" in out.output
