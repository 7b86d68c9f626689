import yaml
from typer.testing import CliRunner

from datatrace.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output


def test_demo_writes_report_and_resolved_config(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--subsets", "8", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert html.count('class="card query-card"') == 4
    assert html.count("<rect") == 2  # one LDS bar per method
    assert "data:image/png;base64," in html
    assert 'src="http' not in html and 'href="http' not in html  # self-contained: nothing fetched
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["n_subsets"] == 8 and set(config["methods"]) == {"TRAK", "Grad-Cos"}
    assert config["methods"]["TRAK"]["ridge"] == 0.5


def test_demo_rejects_bad_options():
    result = runner.invoke(app, ["demo", "--subsets", "1"])
    assert result.exit_code != 0
