import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import datatrace as dt
from datatrace.apps.qualitative import render_report, write_report
from datatrace.apps.runs import load_run, save_run
from datatrace.eval import retrieval

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _data(n, seed, shape=(64,)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g), torch.randint(0, 3, (n,), generator=g)


def _scores(n_query, n_train, seed, method):
    values = np.random.default_rng(seed).normal(size=(n_query, n_train)).astype(np.float32)
    scores = dt.Scores.from_array(values, {"method": method})
    scores.query_chunk, scores.train_chunk = 3, 7  # streamed in small blocks
    return scores, values


@pytest.fixture
def image_run(tmp_path):
    train, query = _data(40, 0), _data(5, 1)
    trak, trak_values = _scores(5, 40, 0, "trak")
    graddot, _ = _scores(5, 40, 1, "graddot")
    evaluation = {"trak": {"retrieval": retrieval(trak, [[0], [1], [2], [3], [4]], ks=(1, 5, 10))}}
    path = save_run(
        tmp_path / "run",
        {"trak": trak},
        train,
        query,
        image_shape=(8, 8),
        k=4,
        bins=10,
        dense=True,
        evaluation=evaluation,
        shard_size=2,
    )
    save_run(path, {"graddot": graddot}, train, query, image_shape=(8, 8), k=4, bins=10, shard_size=2)
    return path, trak_values


def test_saved_summary_matches_brute_force(image_run):
    path, values = image_run
    run = load_run(path)
    assert list(run.methods) == ["trak", "graddot"]
    trak = run.methods["trak"]
    np.testing.assert_array_equal(trak.pro_idx, np.argsort(-values, axis=1)[:, :4])
    np.testing.assert_array_equal(trak.opp_idx, np.argsort(values, axis=1)[:, :4])
    np.testing.assert_allclose(trak.pro_val, -np.sort(-values, axis=1)[:, :4])
    np.testing.assert_array_equal(trak.values, values)
    for q in range(5):
        expected, _ = np.histogram(values[q], bins=trak.hist_edges[q])
        np.testing.assert_array_equal(trak.hist[q], expected)
    assert run.methods["graddot"].values is None
    assert run.evaluation["trak"]["retrieval"]["recall"]["5"] >= 0


def test_report_refuses_missing_or_foreign_scores(image_run, tmp_path):
    path, _ = image_run
    with pytest.raises(dt.InputError, match="run.json is missing"):
        load_run(tmp_path / "nowhere")
    other = tmp_path / "other"
    shutil.copytree(path, other)
    shutil.rmtree(other / "scores")
    with pytest.raises(dt.InputError, match="holds no scores"):
        load_run(other)
    # The training data replaced by another dataset: refused, naming both fingerprints.
    recorded = json.loads((path / "run.json").read_text())["train_fingerprint"]
    x, y = _data(40, 99)
    save_file({"0": x, "1": y}, path / "data" / "train.safetensors")
    found = dt.Data((x, y)).fingerprint()
    with pytest.raises(dt.StoreMismatchError, match=f"fingerprint {found}.*fingerprint {recorded}"):
        load_run(path)
    # Saving scores of other data into an existing run is refused too.
    with pytest.raises(dt.StoreMismatchError, match="holds a run on other data"):
        save_run(path, _scores(5, 40, 2, "x")[0], (x, y), _data(5, 1), image_shape=(8, 8))


def test_bad_save_input(tmp_path):
    train, query = _data(10, 0), _data(2, 1)
    with pytest.raises(dt.InputError, match="shape \\(2, 9\\)"):
        save_run(tmp_path / "a", _scores(2, 9, 0, "m")[0], train, query)
    with pytest.raises(dt.InputError, match="needs texts"):
        save_run(tmp_path / "b", _scores(2, 10, 0, "m")[0], train, query, modality="text")


def test_tabular_and_text_reports(tmp_path):
    train, query = _data(12, 0, (3,)), _data(2, 1, (3,))
    tabular = save_run(tmp_path / "tab", _scores(2, 12, 0, "m")[0], train, query, feature_names=["age", "bmi", "bp"])
    page = render_report(tabular)
    assert page.count('class="card query-card"') == 2 and "<td>bmi</td>" in page

    texts = {
        "train": [{"text": f"doc {i} <b>x</b>", "tokens": ["doc", f" {i}", " <b>"]} for i in range(12)],
        "query": [{"text": "prompt <script>alert(1)</script>", "continuation": " and more"}] * 2,
    }
    tokens = {"m": lambda q, idx: [np.array([1.0, -0.5, 0.0])] * len(idx)}
    text = save_run(tmp_path / "text", _scores(2, 12, 0, "m")[0], train, query, texts=texts, token_scores=tokens, k=3)
    page = render_report(text)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<span class="cont"> and more</span>' in page
    assert page.count('class="tok"') == 2 * 3 * 3  # every proponent's tokens are shaded
    assert "rgba(26,127,55,0.80)" in page and "rgba(179,38,30,0.40)" in page
    assert "&lt;b&gt;" in page


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]


def load_in_chromium(page) -> tuple[str, list[str]]:
    """The DOM of ``page`` after its scripts ran in headless Chromium, and the console lines it logged."""
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120
    )
    return dom.stdout, [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]


def screenshot(page, shot):
    """A PNG screenshot of ``page`` written to ``shot``."""
    url = page.resolve().as_uri()
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--screenshot={shot}", "--window-size=1200,1600", url], capture_output=True, timeout=120
    )
    return shot


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs the chromium browser")
def test_report_renders_in_headless_chromium(image_run, tmp_path, capsys):
    """Loads the page in headless Chromium: no console message at all (an uncaught error or a failed load would
    print one), the inline script ran (it fills in the card count), one card per query, and a screenshot."""
    path, _ = image_run
    page = write_report(path)
    html = page.read_text()
    external = html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in external and "https://" not in external  # no CDN, no remote resource
    assert set(re.findall(r'src="([a-z]+):', html)) == {"data"}  # images embedded
    dom, console = load_in_chromium(page)
    assert console == [], console
    assert len(re.findall(r'class="card query-card"', dom)) == 5
    assert '<b id="n-cards">5</b>' in dom  # written by the page's script
    shot = screenshot(page, tmp_path / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with capsys.disabled():  # shown in the test log even when the test passes: the CI artefact's path
        print(f"\nreport screenshot: {shot}")


@pytest.mark.skipif(CHROMIUM is None, reason="needs the chromium browser")
def test_console_check_catches_script_errors(tmp_path):
    """The check above is not vacuous: a page with an uncaught error produces a console line."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><script>notDefined();</script></body></html>")
    _, console = load_in_chromium(bad)
    assert any("Uncaught ReferenceError" in line for line in console)
