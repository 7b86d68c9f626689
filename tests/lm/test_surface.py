import math

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

import datatrace as dt

TRAIN = ["the cat sat on the mat", "dogs bark at night", "a cat and a dog", "stock prices fell sharply"]
QUERY = ["the cat sat", "prices of dogs"]


def test_tfidf_is_the_cosine_of_sklearn_char_ngram_vectors():
    scores = dt.lm.TfidfSimilarity(ngram_range=(2, 4)).fit(TRAIN).score(QUERY)
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True).fit(TRAIN)
    want = cosine_similarity(vec.transform(QUERY), vec.transform(TRAIN))
    np.testing.assert_allclose(scores.values, want, rtol=1e-5, atol=1e-6)
    assert scores.metadata["method"] == "tfidf" and "cosine" in scores.metadata["normalisation"]


def test_bm25_equals_the_okapi_formula():
    k1, b = 1.2, 0.75
    scores = dt.lm.BM25(k1=k1, b=b).fit(TRAIN).score(QUERY).values
    docs = [[w for w in d.split() if len(w) > 1] for d in TRAIN]  # sklearn's default words have ≥ 2 characters
    avgdl = np.mean([len(d) for d in docs])
    for q, query in enumerate(QUERY):
        for i, doc in enumerate(docs):
            want = 0.0
            for word in query.split():
                if len(word) < 2:
                    continue
                df = sum(word in d for d in docs)
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                tf = doc.count(word)
                want += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl))
            assert scores[q, i] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_identical_text_is_the_top_proponent_and_corpora_work():
    tok = dt.lm.ByteTokenizer()
    train = dt.lm.corpus(TRAIN, tok)
    query = dt.lm.corpus([TRAIN[2], TRAIN[3]], tok)
    for method in (dt.lm.TfidfSimilarity(), dt.lm.BM25()):
        _, idx = method.fit(train).score(query).topk(1)
        assert idx[:, 0].tolist() == [2, 3]


def test_errors():
    with pytest.raises(dt.NotFittedError):
        dt.lm.BM25().score(QUERY)
    with pytest.raises(dt.InputError, match="Corpus or a non-empty list of strings"):
        dt.lm.TfidfSimilarity().fit((np.zeros(3), np.zeros(3)))
    with pytest.raises(dt.InputError, match="k1 ≥ 0"):
        dt.lm.BM25(k1=-1)
    assert "k1=1.5" in repr(dt.lm.BM25())
