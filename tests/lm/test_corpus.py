import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import datatrace as dt

TOK = dt.lm.ByteTokenizer()


def test_documents_are_wrapped_padded_and_masked():
    c = dt.lm.corpus(["hi", "hello"], TOK)
    ids, mask = c.tensors()
    assert ids[0].tolist() == [256, 104, 105, 257, 258, 258, 258]
    assert ids[1].tolist() == [256, 104, 101, 108, 108, 111, 257]
    assert mask[0].tolist() == [0, 1, 1, 1, 0, 0, 0]  # no loss on <bos> (nothing predicts it) nor on padding
    assert mask[1].tolist() == [0, 1, 1, 1, 1, 1, 1]
    assert c.ids == ["0", "1"] and c.texts == ["hi", "hello"]
    assert isinstance(c, dt.Data) and len(c) == 2


def test_prompts_are_context_only():
    c = dt.lm.corpus(["yes"], TOK, prompts=["Q? "])
    ids, mask = c.tensors()
    assert TOK.decode(ids[0]) == "Q? yes"
    assert mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # bos + 3 prompt bytes, then "yes" + eos
    with pytest.raises(dt.InputError, match="one prompt per document"):
        dt.lm.corpus(["a", "b"], TOK, prompts=["x"])


def test_chunks_cover_the_stream_once_with_ids_saying_where_they_start():
    docs = ["abcdefgh", "ijklm", "nopqrstuvwxyz"]
    c = dt.lm.corpus(docs, TOK, mode="chunks", max_length=8, ids=["A", "B", "C"])
    ids, mask = c.tensors()
    stream = [t for d in docs for t in [256, *d.encode(), 257]]
    assert [t for row in ids.tolist() for t in row if t != TOK.pad_id] == stream
    assert c.ids == ["A@0", "A@8", "B@6", "C@7"]  # chunk 2 starts at token 6 of B's stream ([bos] i j k l m [eos])
    assert (mask[:, 0] == 0).all() and mask[0, 1:].eq(1).all()
    with pytest.raises(dt.InputError, match="needs max_length"):
        dt.lm.corpus(docs, TOK, mode="chunks")


def test_ids_are_stable_under_subsets_and_edits_elsewhere():
    c = dt.lm.corpus(["one", "two", "three"], TOK, ids=["a", "b", "c"])
    sub = c.subset([2, 0])
    assert isinstance(sub, dt.lm.Corpus) and sub.ids == ["c", "a"] and sub.texts == ["three", "one"]
    torch.testing.assert_close(sub.tensors()[0], c.tensors()[0][[2, 0]])
    assert dt.lm.corpus(["one", "two!", "three"], TOK, mode="chunks", max_length=4).ids[:2] == ["0@0", "0@4"]
    with pytest.raises(dt.InputError, match="not unique"):
        dt.lm.corpus(["x", "y"], TOK, ids=["same", "same"])


def test_long_documents_warn_truncate_or_refuse():
    docs = ["a" * 10, "b" * 3]
    with pytest.warns(dt.DatatraceWarning, match="truncated 1 of 2 documents to max_length=6"):
        c = dt.lm.corpus(docs, TOK, max_length=6)
    assert c.tensors()[0].shape == (2, 6) and c.texts[0] == "aaaaa"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dt.lm.corpus(docs, TOK, max_length=6, on_overflow="truncate")
    with pytest.raises(dt.InputError, match="1 document\\(s\\) exceed max_length=6 tokens, e.g. '0' \\(12\\)"):
        dt.lm.corpus(docs, TOK, max_length=6, on_overflow="error")
    with pytest.raises(dt.InputError, match="no token to predict"):
        dt.lm.corpus(["answer"], TOK, prompts=["a long prompt"], max_length=6, on_overflow="truncate")
    with pytest.raises(dt.UnknownOptionError, match="Did you mean 'truncate'"):
        dt.lm.corpus(docs, TOK, on_overflow="truncat")


def test_empty_documents_are_dropped_with_a_warning_naming_them():
    with pytest.warns(dt.DatatraceWarning, match="dropped 2 empty document\\(s\\): 'b', 'd'"):
        c = dt.lm.corpus(["x", "", "y", ""], TOK, ids=["a", "b", "c", "d"])
    assert c.ids == ["a", "c"]
    with pytest.raises(dt.InputError, match="every document is empty"):
        dt.lm.corpus(["", ""], TOK)


def test_text_files_and_bad_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "b.txt").write_text("second")
    c = dt.lm.corpus(sorted(tmp_path.glob("*.txt")), TOK)
    assert c.ids == ["a.txt", "b.txt"] and c.texts == ["first file", "second"]
    assert dt.lm.corpus(tmp_path / "a.txt", TOK).ids == ["a.txt"]
    with pytest.raises(dt.InputError, match="not found"):
        dt.lm.corpus([Path(tmp_path / "missing.txt")], TOK)
    with pytest.raises(dt.InputError, match="single string"):
        dt.lm.corpus("just one string", TOK)
    with pytest.raises(dt.InputError, match="ByteTokenizer\\(\\) or a transformers tokenizer"):
        dt.lm.corpus(["x"], object())


def test_hf_dataset_source():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"id": ["p", "q"], "content": ["alpha", "beta"]})
    c = dt.lm.corpus(ds, TOK, text_column="content")
    assert c.ids == ["p", "q"] and c.texts == ["alpha", "beta"]
    with pytest.raises(dt.InputError, match="no column 'text'"):
        dt.lm.corpus(ds, TOK)


def test_hf_tokenizer_adapter(hf_tokenizer):
    tok = dt.lm.HFTokenizer(hf_tokenizer)
    assert tok.vocab_size == 300 and tok.bos_id is None  # this tokenizer adds no BOS itself, so neither do we
    assert tok.eos_id == hf_tokenizer.eos_token_id and tok.pad_id == hf_tokenizer.pad_token_id
    c = dt.lm.corpus(["gesine dopuku", "a"], hf_tokenizer)
    ids, mask = c.tensors()
    assert ids[0, : mask[0].gt(0).sum() + 1].tolist() == hf_tokenizer("gesine dopuku")["input_ids"] + [tok.eos_id]
    assert c.texts[0] == "gesine dopuku"


def test_byte_tokenizer_round_trip_and_fingerprint():
    text = "naïve – ok"
    assert TOK.decode(TOK.encode(text)) == text
    assert TOK.decode([256, *TOK.encode("é")[:1], 257]) == "\ufffd"  # cut multi-byte character
    a, b = dt.lm.corpus(["x y"], TOK), dt.lm.corpus(["x y"], TOK)
    assert a.fingerprint() == b.fingerprint() != dt.lm.corpus(["x z"], TOK).fingerprint()
    assert np.array_equal(a.tensors()[0].numpy(), b.tensors()[0].numpy())


def test_token_queries_split_a_query_into_its_loss_tokens():
    """Grad-Dot is linear in the query gradient: the example's scores are the mean of its per-token rows."""
    from .conftest import tiny_gpt

    docs = dt.lm.corpus(["abc def", "ghij", "klm no pq"], dt.lm.ByteTokenizer(), max_length=16)
    query = dt.lm.corpus(["What is x?"], dt.lm.ByteTokenizer(), prompts=["Q: "], max_length=16)
    rows = dt.lm.token_queries(query)
    n_loss = int(query.tensors()[1].sum())
    assert len(rows) == n_loss and rows.ids[0] == f"{query.ids[0]}#4" and rows.texts[-1] == "Q: What is x?"
    assert (rows.tensors()[1].sum(1) == 1).all()
    attr = dt.GradDot(tiny_gpt(), dt.lm.CausalLMTask(), verbose=False).fit(docs)
    np.testing.assert_allclose(attr.score(rows).values.mean(0), attr.score(query).values[0], rtol=1e-4, atol=1e-7)
    with pytest.raises(dt.InputError, match="out of range"):
        dt.lm.token_queries(query, example=1)
