"""Data selection and contamination audits on language-model benchmarks, end to end on a fast tinylm-micro recipe."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import datatrace as dt
from datatrace.apps.contamination import plant_documents, text_noise, text_prefix
from datatrace.apps.experiments import (
    ContaminationConfig,
    SelectConfig,
    next_token_accuracy,
    run_contamination,
    run_select,
    text_entries,
    topic_of,
)
from datatrace.apps.qualitative import render_report, write_report
from datatrace.apps.runs import load_run
from datatrace.benchmarks import BENCHMARKS
from datatrace.benchmarks.tinylm import TINYLM_MICRO, micro_gpt
from datatrace.cli import app

from .test_report import CHROMIUM, load_in_chromium, screenshot


def _train_fast(data, seed):
    """tinylm-micro's model with 60 instead of 200 steps: enough to learn a topic's words, fast enough for CI."""
    return dt.lm.train_causal_lm(micro_gpt(seed), data, steps=60, batch_size=32, lr=3e-3, seed=seed)


@pytest.fixture
def micro(monkeypatch):
    """tinylm-micro (500 synthetic documents of 8 topics, 100 queries) with the fast recipe."""
    monkeypatch.setitem(
        BENCHMARKS, "micro-fast", dataclasses.replace(TINYLM_MICRO, name="micro-fast", train_fn=_train_fast)
    )
    return BENCHMARKS["micro-fast"]


@pytest.mark.slow
def test_selection_on_a_topic_beats_random(micro, tmp_path):
    """Target topic t1 (89 of the 500 training documents, 23 queries: 11 attribute, 12 evaluate); budget 40, so a
    random draw holds ≈ 7 t1 documents. Measured (seeds 0, 1): target loss tfidf/sum 2.46, 2.38; graddot/sum 2.49, 2.42;
    oracle 2.46, 2.39; random 2.72, 2.59 nats/token."""
    config = SelectConfig("micro-fast", methods=["tfidf", "graddot"], budget=40, target_topic="t1")
    config.strategies = ["sum"]
    config.seeds, config.out = [0, 1], str(tmp_path / "select")
    results = run_select(config, verbose=False)
    rows = {r["selection"]: r for r in results["rows"]}
    assert set(rows) == {"tfidf/sum", "graddot/sum", "oracle", "random"}
    assert (results["n_target"], results["n_evaluate"], results["n_in_domain_pool"]) == (11, 12, 89)
    assert results["target_source"] == "queries" and results["accuracy"] == "next-token"
    for name in ("tfidf/sum", "graddot/sum", "oracle"):
        assert rows[name]["loss"] < rows["random"]["loss"] and rows[name]["accuracy"] > rows["random"]["accuracy"]
        assert max(rows[name]["loss_seeds"]) < min(rows["random"]["loss_seeds"]), name  # on every seed
    # The saved run is a text run of the 11 attributing target documents, all of topic t1.
    run = load_run(tmp_path / "select" / "run")
    assert run.info["modality"] == "text" and run.info["n_query"] == 11
    assert {topic_of(entry["id"]) for entry in run.query_text} == {"t1"}


def test_next_token_accuracy_is_the_loss_weighted_argmax_hit_rate(micro):
    _, query = micro.data()
    model = micro_gpt(0).eval()  # any model will do: checked against the brute-force hit rate
    accuracy = next_token_accuracy(model, query, batch_size=7)
    with torch.no_grad():
        logits = model(query.tensors()[0])
    ids, mask = query.tensors()
    hits = (logits[:, :-1].argmax(-1) == ids[:, 1:]).float() * mask[:, 1:]
    assert accuracy == pytest.approx(float((hits.sum(1) / mask[:, 1:].sum(1)).mean()), rel=1e-6)


def test_contamination_plants_text_copies_with_consistent_ids_and_texts(micro, tmp_path):
    """Surface baselines need no model, so this trains nothing: verbatim copies are found first by TF-IDF."""
    config = ContaminationConfig("micro-fast", methods=["tfidf", "bm25"], n_items=9, copies=2)
    config.kinds, config.noise, config.fragment = ["verbatim", "prefix", "noise"], 0.2, 0.5
    config.fusions, config.fusion, config.out = [["tfidf", "bm25"]], ["rank", "zscore"], str(tmp_path / "c")
    by_kind, results = run_contamination(config, verbose=False)
    assert list(by_kind) == ["all", "verbatim", "prefix", "noise"]
    assert set(by_kind["verbatim"].methods) == {"tfidf", "bm25", "tfidf+bm25 (rank)", "tfidf+bm25 (zscore)"}
    assert by_kind["verbatim"].methods["tfidf"].recall[10] == 1.0 and by_kind["verbatim"].metadata["n_items"] == 3

    run = load_run(tmp_path / "c" / "run")
    train_ids, mask = run.train.tensors()
    tokenizer = dt.lm.ByteTokenizer()
    ids = [entry["id"] for entry in run.train_text]
    assert len(ids) == 500 + 18 and len(set(ids)) == len(ids)
    for row, entry in zip(train_ids, run.train_text):
        assert tokenizer.decode(row.tolist()) == entry["text"]  # tokens and text of every example agree
    _, query = micro.data()
    original = [i for i in ids if "~" not in i]
    assert original == micro.data()[0].ids  # the original documents keep their order
    for item, kind, planted, planted_ids in zip(
        run.query_text, results["item_kinds"], results["planted"], results["planted_ids"]
    ):
        assert planted_ids == [f"{item['id']}~{kind}{c}" for c in range(2)]
        assert [ids[i] for i in planted] == planted_ids
        source = query.ids.index(item["id"])
        for i in planted:
            text = run.train_text[i]["text"]
            if kind == "verbatim":
                assert torch.equal(train_ids[i], query.tensors()[0][source]) and torch.equal(
                    mask[i], query.tensors()[1][source]
                )
            elif kind == "prefix":
                assert text == text_prefix(query.texts[source], 0.5)
            else:
                assert len(text) == len(query.texts[source]) and text != query.texts[source]


def test_text_report_shows_queries_ids_and_measured_tokens(micro, tmp_path):
    config = ContaminationConfig("micro-fast", methods=["tfidf"], n_items=3, out=str(tmp_path / "c"))
    run_contamination(config, verbose=False)
    page = render_report(tmp_path / "c" / "run")
    _, query = micro.data()
    run = load_run(tmp_path / "c" / "run")
    assert page.count('class="card query-card"') == 3
    for entry in run.query_text:
        assert entry["text"] == "" and f'<span class="cont">{entry["continuation"]}</span>' in page
        assert f"{entry['id']}~verbatim0" in page  # the planted copy, recognisable by its id, among the proponents


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs the chromium browser")
def test_text_report_renders_in_headless_chromium(micro, tmp_path, capsys):
    """The report of a language-model contamination run loads without console messages, its script ran, one card
    per planted item, and the verbatim copies' ids among the proponents."""
    config = ContaminationConfig("micro-fast", methods=["tfidf", "bm25"], n_items=4, kinds=["verbatim", "prefix"])
    config.fusions, config.out = [["tfidf", "bm25"]], str(tmp_path / "c")
    run_contamination(config, verbose=False)
    page = write_report(tmp_path / "c" / "run")
    dom, console = load_in_chromium(page)
    assert console == [], console
    assert dom.count('class="card query-card"') == 4 and '<b id="n-cards">4</b>' in dom
    assert dom.count("~verbatim0") >= 2 * 2  # both verbatim copies among the proponents of both methods
    shot = screenshot(page, tmp_path / "lm-report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with capsys.disabled():
        print(f"\nlanguage-model report screenshot: {shot}")


def test_text_entries_split_prompt_from_measured_tokens():
    tok = dt.lm.ByteTokenizer()
    docs = dt.lm.corpus(["the answer"], tok, prompts=["Q: what? A: "], ids=["qa"])
    assert text_entries(docs) == [{"id": "qa", "text": "Q: what? A: ", "continuation": "the answer"}]


def test_plant_documents_and_text_edits():
    tok = dt.lm.ByteTokenizer()
    train = dt.lm.corpus([f"document number {i}" for i in range(6)], tok, ids=[f"d:{i}" for i in range(6)])
    extra = dt.lm.corpus(["short", "planted text"], tok, ids=["p:0", "p:1"])
    merged, positions = plant_documents(train, extra, seed=1)
    assert len(merged) == 8 and [merged.ids[i] for i in positions] == ["p:0", "p:1"]
    assert [merged.texts[i] for i in positions] == ["short", "planted text"]
    rest = np.setdiff1d(np.arange(8), positions)
    assert [merged.ids[i] for i in rest] == train.ids and torch.equal(merged.tensors()[0][rest], train.tensors()[0])
    assert (merged.tensors()[0][positions[0], 7:] == tok.pad_id).all()  # padded to the corpus's width
    with pytest.raises(dt.InputError, match="already there: \\['d:0'\\]"):
        plant_documents(train, dt.lm.corpus(["x y"], tok, ids=["d:0"]))
    with pytest.raises(dt.InputError, match="max_length=19"):
        plant_documents(train, dt.lm.corpus(["a much longer document than any"], tok, ids=["x"]))
    rng = np.random.default_rng(0)
    assert text_noise("abc def", 0.0, rng) == "abc def"
    noisy = text_noise("a" * 2000, 0.1, np.random.default_rng(0))
    assert len(noisy) == 2000 and 150 < sum(c != "a" for c in noisy) < 250  # ≈ 10% × 26/27 replaced
    assert noisy == text_noise("a" * 2000, 0.1, np.random.default_rng(0))
    assert text_prefix("abcdef", 0.5) == "abc" and text_prefix("abcde", 0.5) == "abc"
    with pytest.raises(dt.InputError, match="fraction"):
        text_prefix("abc", 0.0)


def test_bad_input_names_what_to_change(micro, tmp_path):
    def select(**settings):
        run_select(SelectConfig("micro-fast", methods=["tfidf"], out=str(tmp_path / "s"), **settings), verbose=False)

    with pytest.raises(dt.InputError, match="target_topic 'sports' has 0 .*t0 \\(30\\)"):
        select(target_topic="sports")
    with pytest.raises(dt.InputError, match="budget must be an integer in \\[1, 500\\]"):
        select(target_topic="t1", budget=501)
    with pytest.raises(dt.InputError, match="Replace target_class by target_topic"):
        select(target_class=1)
    with pytest.raises(dt.InputError, match="n_target must be in \\[2, 23\\]"):
        select(target_topic="t1", n_target=40)
    with pytest.raises(dt.InputError, match="classifier benchmark: use target_class"):
        run_select(SelectConfig("digits-logreg", target_topic="t1", out=str(tmp_path / "t")), verbose=False)

    def audit(benchmark="micro-fast", **settings):
        config = ContaminationConfig(benchmark, methods=["tfidf"], out=str(tmp_path / "c"), **settings)
        run_contamination(config, verbose=False)

    with pytest.raises(dt.UnknownOptionError, match="prefix"):
        audit("digits-logreg", kinds=["prefix"])
    with pytest.raises(dt.InputError, match="pair of names from methods \\['tfidf'\\]"):
        audit(fusions=[["tfidf", "trak"]])
    with pytest.raises(dt.InputError, match="n_items must be in \\[3, 100\\]"):
        audit(n_items=2, kinds=["verbatim", "prefix", "noise"])
    with pytest.raises(dt.InputError, match="need noise > 0"):
        audit(kinds=["noise"], noise=0.0)
    assert not (tmp_path / "c").exists() and not (tmp_path / "s").exists()  # refused before any work


def test_contamination_results_have_one_row_per_kind_and_method(micro, tmp_path):
    config = ContaminationConfig("micro-fast", methods=["tfidf"], n_items=2, out=str(tmp_path / "c"))
    run_contamination(config, verbose=False)
    rows = json.loads((tmp_path / "c" / "results.json").read_text())["rows"]
    assert [(r["kind"], r["method"]) for r in rows] == [("verbatim", "tfidf"), ("verbatim", "random")]


def test_contamination_command_prints_one_table_per_kind(micro, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"benchmark: micro-fast\nmethods: [tfidf]\nn_items: 4\nkinds: [verbatim, prefix]\nout: {tmp_path}\n"
    )
    result = CliRunner().invoke(app, ["contamination", str(config)])
    assert result.exit_code == 0, result.output
    for kind in ("all", "verbatim", "prefix"):
        assert f"{kind} copies: {4 if kind == 'all' else 2} items" in result.output
