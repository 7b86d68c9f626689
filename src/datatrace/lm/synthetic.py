"""A synthetic text corpus generated in code: topics with their own made-up words, for tests and the micro benchmark.

Each topic has a vocabulary of pseudo-words built from random syllables; a document picks one topic and strings
together mostly that topic's words (and a few shared function words) into 48–54 characters. Training on more
documents of a topic lowers the loss of held-out documents of that topic, so attribution has real signal, and a
document repeated verbatim is trivially recognisable. Generation is a pure function of the arguments.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SHARED = ("the", "a", "of", "and", "is", "to", "in")


def synthetic_texts(
    n_docs: int, n_topics: int = 8, words_per_topic: int = 12, topic_share: float = 0.75, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``n_docs`` synthetic documents.

    Args:
        n_docs: number of documents.
        n_topics: number of topics (each document has one; topic frequencies decay like 1/rank, so some topics are
            rare).
        words_per_topic: pseudo-words per topic.
        topic_share: probability that a word comes from the document's topic (else a shared function word).
        seed: generation seed.

    Returns:
        ``(texts, ids)``, ids ``"t{topic}:{k}"`` (k-th document overall).
    """
    if n_docs < 1 or n_topics < 1 or words_per_topic < 1 or not 0 < topic_share <= 1:
        raise InputError("synthetic_texts needs n_docs, n_topics, words_per_topic ≥ 1 and 0 < topic_share ≤ 1.")
    rng = np.random.default_rng(seed)
    vocab = [[_word(rng) for _ in range(words_per_topic)] for _ in range(n_topics)]
    freq = 1.0 / np.arange(1, n_topics + 1)
    topics = rng.choice(n_topics, size=n_docs, p=freq / freq.sum())
    texts = []
    for t in topics:
        words: list[str] = []
        while len(" ".join(words)) < 48:
            own = rng.random() < topic_share
            words.append(vocab[t][rng.integers(words_per_topic)] if own else _SHARED[rng.integers(len(_SHARED))])
        texts.append(" ".join(words))
    return texts, [f"t{t}:{k}" for k, t in enumerate(topics)]


def _word(rng: np.random.Generator) -> str:
    return "".join(_CONSONANTS[rng.integers(14)] + _VOWELS[rng.integers(5)] for _ in range(rng.integers(2, 4)))
