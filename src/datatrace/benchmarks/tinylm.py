"""Language-model benchmarks: a tiny GPT pretrained from scratch, attributed against subset retraining.

``tinylm-fortunes``: 2,000 training documents of the Debian ``fortunes`` package (documents of at least 48
characters, ``ascii-art`` excluded, shuffled with seed 0, each cut to its first 64 byte tokens incl. ``<bos>``)
and 200 held-out documents as queries (measurement: their mean next-byte NLL); the ≈ 11,000 other fortunes are its
``held_out`` documents (target domains for data selection). Model: :class:`TinyGPT` (138k
parameters), 300 AdamW steps of 32 documents. Ground truth (the STRIDE protocol): 64 random 30% subsets, each
retrained from scratch with 2 seeds using common random numbers (run r of every subset uses the same
initialisation and data-order seed), measurements averaged over the seeds. Cost: 128 trainings of ≈ 10–15 s on one
thread each, ≈ 30 min on one core or ≈ 15 min with ``workers=2``, cached after the first run.

``tinylm-micro``: the same protocol on a synthetic topic corpus generated in code (:mod:`datatrace.lm.synthetic`;
no system package needed), 500 training / 100 query documents, a 44k-parameter TinyGPT, 200 steps, 32 subsets ×
2 seeds (≈ 3 min). Its ground truth also ships as a test fixture (``benchmarks/make_tinylm_micro_fixture.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..data import Data
from ..errors import InputError
from ..lm import (
    BM25,
    ByteTokenizer,
    CausalLMTask,
    Corpus,
    TfidfSimilarity,
    TinyGPT,
    corpus,
    load_fortunes,
    train_causal_lm,
)
from ..lm.synthetic import synthetic_texts
from ..task import Task
from .base import Benchmark
from .methods import MethodContext, register


@dataclass(frozen=True)
class LMBenchmark(Benchmark):
    """A :class:`Benchmark` whose data are :class:`~datatrace.lm.Corpus` objects (token ids + loss mask, with the
    texts that surface baselines need), scored with :class:`~datatrace.lm.CausalLMTask`.

    Ground truth defaults to 2 seeds per subset with common random numbers (the noise ceiling needs ≥ 2 seeds, and
    shared seeds make subsets differ by their data only).

    Attributes:
        held_out: ``() -> Corpus`` of documents from the same source that are neither training nor query documents,
            tokenised the same way (e.g. target-domain documents for ``datatrace select``); ``None``: none.
    """

    task: Task = field(default_factory=CausalLMTask)
    seeds_per_subset: int = 2
    common_random_numbers: bool = True
    held_out: Callable[[], Corpus] | None = None

    def data(self) -> tuple[Corpus, Corpus]:
        return self.load()


# -- tinylm-fortunes ----------------------------------------------------------------------------------------------
FORTUNES_TRAIN, FORTUNES_QUERY, FORTUNES_MIN_CHARS = 2000, 200, 48


def fortunes_split() -> tuple[Corpus, Corpus]:
    """2,000 training and 200 query fortunes as byte-level corpora of at most 64 tokens."""
    docs = _fortunes_corpus(0, FORTUNES_TRAIN + FORTUNES_QUERY, "fortunes")
    return docs.subset(range(FORTUNES_TRAIN)), docs.subset(range(FORTUNES_TRAIN, FORTUNES_TRAIN + FORTUNES_QUERY))


def fortunes_held_out() -> Corpus:
    """The fortunes outside the benchmark's 2,200 (same filter, order and tokenisation): ≈ 11,000 documents."""
    return _fortunes_corpus(FORTUNES_TRAIN + FORTUNES_QUERY, None, "fortunes-held-out")


def _fortunes_corpus(start: int, stop: int | None, name: str) -> Corpus:
    """Documents ``start:stop`` of the fortunes (≥ 48 characters) shuffled with seed 0, cut to 64 byte tokens."""
    texts, ids = load_fortunes(min_chars=FORTUNES_MIN_CHARS)
    order = np.random.default_rng(0).permutation(len(texts))[start:stop]
    return corpus(
        [texts[i] for i in order],
        ByteTokenizer(),
        ids=[ids[i] for i in order],
        max_length=64,
        on_overflow="truncate",
        name=name,
    )


def train_fortunes_gpt(data: Data, seed: int) -> nn.Module:
    """TinyGPT (width 64, 2 blocks) trained for 300 steps of 32 documents; the seed sets init and data order."""
    return train_causal_lm(TinyGPT(seed=seed), data, steps=300, batch_size=32, lr=3e-3, seed=seed)


TINYLM_FORTUNES = LMBenchmark(
    name="tinylm-fortunes",
    version=2,
    description="Debian fortunes, 2,000 train / 200 query documents (64 bytes), TinyGPT 138k params from scratch",
    load=fortunes_split,
    train_fn=train_fortunes_gpt,
    n_subsets=64,
    fraction=0.3,
    held_out=fortunes_held_out,
)


# -- tinylm-micro -------------------------------------------------------------------------------------------------
MICRO_TRAIN, MICRO_QUERY = 500, 100


def micro_split() -> tuple[Corpus, Corpus]:
    """500 training and 100 query documents of the synthetic topic corpus (seed 0)."""
    texts, ids = synthetic_texts(MICRO_TRAIN + MICRO_QUERY, seed=0)
    docs = corpus(texts, ByteTokenizer(), ids=ids, max_length=64, name="synthetic")
    return docs.subset(range(MICRO_TRAIN)), docs.subset(range(MICRO_TRAIN, MICRO_TRAIN + MICRO_QUERY))


def micro_gpt(seed: int = 0) -> TinyGPT:
    """The micro benchmark's architecture: TinyGPT of width 32 (44k parameters)."""
    return TinyGPT(width=32, seed=seed)


def train_micro_gpt(data: Data, seed: int) -> nn.Module:
    """Width-32 TinyGPT trained for 200 steps of 32 documents; the seed sets init and data order."""
    return train_causal_lm(micro_gpt(seed), data, steps=200, batch_size=32, lr=3e-3, seed=seed)


TINYLM_MICRO = LMBenchmark(
    name="tinylm-micro",
    version=2,
    description="synthetic topic corpus, 500 train / 100 query documents, TinyGPT 44k params from scratch",
    load=micro_split,
    train_fn=train_micro_gpt,
    n_subsets=32,
    fraction=0.3,
)


# -- surface-similarity baselines (every LM table includes them) ---------------------------------------------------
def surface_method(make):
    """A method factory for a text-only baseline: it needs the benchmark's texts, not its model."""

    def build(ctx: MethodContext, **options):
        if not isinstance(ctx.train, Corpus):
            raise InputError(f"Surface baselines compare texts; benchmark {ctx.bench.name} has no text corpus.")
        return make()

    return build


register(
    "tfidf", "Surface baseline: cosine of character 4-gram TF-IDF vectors (no model)", surface_method(TfidfSimilarity)
)
register("bm25", "Surface baseline: Okapi BM25 over words (no model)", surface_method(BM25))
