"""Language-model benchmarks: a tiny GPT pretrained from scratch, attributed against subset retraining.

``tinylm-fortunes``: 2,000 training documents of the Debian ``fortunes`` package (documents of at least 48
characters, ``ascii-art`` excluded, shuffled with seed 0, each cut to its first 64 byte tokens incl. ``<bos>``)
and 200 held-out documents as queries (measurement: their mean next-byte NLL). Model: :class:`TinyGPT` (138k
parameters), 300 AdamW steps of 32 documents. Ground truth (the STRIDE protocol): 64 random 30% subsets, each
retrained from scratch with 2 seeds using common random numbers (replicate r uses the same initialisation and
data-order seed on every subset), measurements averaged over the seeds. Cost: 128 trainings of ≈ 10–15 s on one
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

from .._utils import derive_seed
from ..data import Data
from ..errors import InputError
from ..eval.metrics import spearman_columns
from ..eval.retrain import GroundTruth, subset_retraining
from ..lm import ByteTokenizer, CausalLMTask, Corpus, TinyGPT, corpus, load_fortunes, train_causal_lm
from ..lm.synthetic import synthetic_texts
from ..task import Task
from .base import Benchmark, cache_root


@dataclass(frozen=True)
class ReplicateRecipe:
    """``train_fn`` with the seed fixed to ``seed`` whatever seed it is called with (common random numbers)."""

    train_fn: Callable[[Data, int], nn.Module]
    seed: int

    def __call__(self, data: Data, seed: int) -> nn.Module:
        return self.train_fn(data, self.seed)

    def __repr__(self) -> str:  # stable across processes: it is part of the ground-truth cache header
        return f"{self.train_fn.__qualname__}[seed={self.seed}]"


@dataclass(frozen=True)
class LMBenchmark(Benchmark):
    """A :class:`Benchmark` whose data are :class:`~datatrace.lm.Corpus` objects and whose ground truth averages
    ``replicates`` retrainings per subset with common random numbers.

    Replicate r trains every subset with the same seed ``derive_seed(seed, "replicate", r)`` (initialisation and
    data order), so differences between subsets come from the data, not from the seed; the same subsets are used
    for every replicate. The averaged measurement has less retraining noise; :func:`noise_ceiling` reports how
    much is left.
    """

    task: Task = field(default_factory=CausalLMTask)
    replicates: int = 2

    def data(self) -> tuple[Corpus, Corpus]:
        return self.load()

    def replicate_ground_truths(
        self, workers: int = 1, n_subsets: int | None = None, seed: int = 0, cache: bool = True, verbose: bool = True
    ) -> list[GroundTruth]:
        """One ground truth per replicate (same subsets), each cached separately."""
        train, query = self.data()
        n_subsets = n_subsets or self.n_subsets
        out = []
        for r in range(self.replicates):
            recipe = ReplicateRecipe(self.train_fn, derive_seed(seed, "replicate", r) % 2**31)
            key = f"{self.name}-v{self.version}-{n_subsets}x{self.fraction}-seed{seed}-replicate{r}"
            path = cache_root() / "ground-truth" / key if cache else None
            out.append(
                subset_retraining(
                    recipe, train, query, self.task, n_subsets, self.fraction, seed, workers, path, verbose
                )
            )
        return out

    def ground_truth(
        self, workers: int = 1, n_subsets: int | None = None, seed: int = 0, cache: bool = True, verbose: bool = True
    ) -> GroundTruth:
        """Subset-retraining ground truth with measurements averaged over the replicates."""
        return average_replicates(self.replicate_ground_truths(workers, n_subsets, seed, cache, verbose))


def noise_ceiling(replicates: list[GroundTruth]) -> float:
    """Mean over queries of the Spearman correlation (over subsets) between the measurements of replicates 0 and 1.

    An attributor's LDS against one replicate can hardly exceed it; against the average of R replicates the
    ceiling is somewhat higher.
    """
    if len(replicates) < 2:
        raise InputError("The noise ceiling needs at least 2 replicates.")
    return float(np.nanmean(spearman_columns(replicates[0].measurements, replicates[1].measurements)))


def average_replicates(replicates: list[GroundTruth]) -> GroundTruth:
    """One :class:`GroundTruth` from replicates over the same subsets, measurements averaged."""
    first = replicates[0]
    if any(not np.array_equal(g.masks, first.masks) for g in replicates):
        raise InputError("Replicates must share their subsets.")
    meta = dict(first.metadata) | {"replicates": len(replicates), "common_random_numbers": True}
    meta["train_fn"] = [g.metadata.get("train_fn") for g in replicates]
    return GroundTruth(first.masks, np.mean([g.measurements for g in replicates], axis=0), first.seeds, meta)


# -- tinylm-fortunes ----------------------------------------------------------------------------------------------
FORTUNES_TRAIN, FORTUNES_QUERY, FORTUNES_MIN_CHARS = 2000, 200, 48


def fortunes_split() -> tuple[Corpus, Corpus]:
    """2,000 training and 200 query fortunes as byte-level corpora of at most 64 tokens."""
    texts, ids = load_fortunes(min_chars=FORTUNES_MIN_CHARS)
    order = np.random.default_rng(0).permutation(len(texts))[: FORTUNES_TRAIN + FORTUNES_QUERY]
    docs = corpus(
        [texts[i] for i in order],
        ByteTokenizer(),
        ids=[ids[i] for i in order],
        max_length=64,
        on_overflow="truncate",
        name="fortunes",
    )
    return docs.subset(range(FORTUNES_TRAIN)), docs.subset(range(FORTUNES_TRAIN, FORTUNES_TRAIN + FORTUNES_QUERY))


def train_fortunes_gpt(data: Data, seed: int) -> nn.Module:
    """TinyGPT (width 64, 2 blocks) trained for 300 steps of 32 documents; the seed sets init and data order."""
    return train_causal_lm(TinyGPT(seed=seed), data, steps=300, batch_size=32, lr=3e-3, seed=seed)


TINYLM_FORTUNES = LMBenchmark(
    name="tinylm-fortunes",
    version=1,
    description="Debian fortunes, 2,000 train / 200 query documents (64 bytes), TinyGPT 138k params from scratch",
    load=fortunes_split,
    train_fn=train_fortunes_gpt,
    n_subsets=64,
    fraction=0.3,
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
    version=1,
    description="synthetic topic corpus, 500 train / 100 query documents, TinyGPT 44k params from scratch",
    load=micro_split,
    train_fn=train_micro_gpt,
    n_subsets=32,
    fraction=0.3,
)
