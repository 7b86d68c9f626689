"""Surface-similarity baselines: character n-gram TF-IDF and BM25.

They look at text only (no model), so every LM attribution table includes them: an attributor that does not beat
them is not worth its cost. Same ``fit(train) -> self``, ``score(query) -> Scores`` contract as the attributors;
``train`` and ``query`` are :class:`~datatrace.lm.Corpus` objects (their ``texts``) or lists of strings.

Sign: similarity is read as support, so scores are ≥ 0 and larger = stronger proponent; these baselines never
name opponents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import InputError, NotFittedError
from ..scores import Scores
from .corpus import Corpus


class _Surface:
    method = "surface"

    def fit(self, train: Corpus | Sequence[str]) -> _Surface:
        """Fit the vocabulary and statistics on the training texts; returns ``self``."""
        self.train_matrix_ = self._fit(_texts(train, "train"))
        self.n_train_ = self.train_matrix_.shape[0]
        return self

    def score(self, query: Corpus | Sequence[str]) -> Scores:
        """Similarity of every query to every training text, ``(n_query, n_train)``; see the class for the scale."""
        if not hasattr(self, "train_matrix_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call .fit(train) before .score(query).")
        q = self._query_matrix(_texts(query, "query"))
        d = self.train_matrix_

        def block(r: slice, c: slice) -> torch.Tensor:
            return torch.from_numpy(np.asarray((q[r] @ d[c].T).todense(), dtype=np.float32))

        meta = {"method": self.method, "hyperparameters": self.get_params(), "n_train": self.n_train_}
        return Scores(block, (q.shape[0], self.n_train_), meta | self._normalisation())

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed to ``__init__``."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"


class TfidfSimilarity(_Surface):
    """Cosine similarity of TF-IDF vectors of character n-grams (sublinear tf, smoothed idf, L2-normalised rows).

    Args:
        ngram_range: character n-gram lengths (within word boundaries, scikit-learn's ``"char_wb"``).
        lowercase: fold case first.

    Scores are in [0, 1]; 1 = the same n-gram profile.
    """

    method = "tfidf"

    def __init__(self, ngram_range: tuple[int, int] = (4, 4), lowercase: bool = True):
        self.ngram_range = tuple(ngram_range)
        self.lowercase = lowercase

    def _fit(self, texts: list[str]) -> sp.csr_matrix:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer_ = TfidfVectorizer(
            analyzer="char_wb", ngram_range=self.ngram_range, lowercase=self.lowercase, sublinear_tf=True
        )
        return self.vectorizer_.fit_transform(texts).astype(np.float32).tocsr()

    def _query_matrix(self, texts: list[str]) -> sp.csr_matrix:
        return self.vectorizer_.transform(texts).astype(np.float32).tocsr()

    def _normalisation(self) -> dict[str, str]:
        return {"normalisation": "cosine of L2-normalised TF-IDF vectors, in [0, 1]"}


class BM25(_Surface):
    """Okapi BM25 of each training text (the document) for each query text (the bag of query words).

    ``score(q, d) = Σ_{w∈q} idf(w) · tf(w,d)(k1+1) / (tf(w,d) + k1(1 − b + b·|d|/avgdl))`` with
    ``idf(w) = ln(1 + (N − df + 0.5)/(df + 0.5))``, query words counted with multiplicity; words are scikit-learn's
    default word tokens, lower-cased. Unnormalised: ≥ 0, growing with query length.

    Args:
        k1: term-frequency saturation.
        b: document-length normalisation.
    """

    method = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75):
        if k1 < 0 or not 0 <= b <= 1:
            raise InputError(f"BM25 needs k1 ≥ 0 and 0 ≤ b ≤ 1, got k1={k1}, b={b}.")
        self.k1, self.b = float(k1), float(b)

    def _fit(self, texts: list[str]) -> sp.csr_matrix:
        from sklearn.feature_extraction.text import CountVectorizer

        self.vectorizer_ = CountVectorizer(lowercase=True)
        tf = self.vectorizer_.fit_transform(texts).astype(np.float64).tocsr()
        n = tf.shape[0]
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        self.idf_ = np.log1p((n - df + 0.5) / (df + 0.5))
        length = np.asarray(tf.sum(axis=1)).ravel()
        norm = self.k1 * (1 - self.b + self.b * length / max(length.mean(), 1e-12))
        rows = np.repeat(np.arange(n), np.diff(tf.indptr))
        tf.data = tf.data * (self.k1 + 1) / (tf.data + norm[rows]) * self.idf_[tf.indices]
        return tf.astype(np.float32)

    def _query_matrix(self, texts: list[str]) -> sp.csr_matrix:
        return self.vectorizer_.transform(texts).astype(np.float32).tocsr()

    def _normalisation(self) -> dict[str, str]:
        return {"normalisation": "none (BM25 sum over query words)"}


def _texts(data: Corpus | Sequence[str], name: str) -> list[str]:
    if isinstance(data, Corpus):
        return data.texts
    if isinstance(data, (list, tuple)) and data and all(isinstance(t, str) for t in data):
        return list(data)
    raise InputError(f"{name} must be a dt.lm.Corpus or a non-empty list of strings, got {type(data).__name__}.")
