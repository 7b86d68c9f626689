"""Contamination audit: do the attributors find training copies of test items planted in the corpus?

Some test items were copied (verbatim, or perturbed: paraphrased, partial, noisy) into the training corpus before
training. For each test item, every attributor ranks the corpus by score (positive = proponent, highest first), and
:func:`contamination` reports Recall@k and the mean reciprocal rank of the planted copies, per attributor and for
the fusion of two attributors (the paper's LoGRA + STRIDE). :func:`fuse` combines two score matrices:

- ``"rank"``: mean over methods of each example's normalised rank within the query's row, in (0, 1] (1 = best);
  insensitive to the methods' score scales and heavy tails.
- ``"zscore"``: mean over methods of the row-standardised scores (score − row mean) / row standard deviation;
  keeps how far an example stands out, not only its order.

:func:`plant_copies` builds a contaminated training set from tensor data (images, tabular rows);
:func:`plant_documents` inserts documents into a text :class:`~datatrace.lm.Corpus`, keeping its tokens, texts and ids
consistent. :func:`text_noise` and :func:`text_prefix` are the perturbed copies of a text (typos, a partial copy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.special import gammaln
from scipy.stats import rankdata
from torch import Tensor

from .._utils import derive_seed
from ..data import Data, as_data
from ..errors import InputError, check_choice
from ..eval.metrics import RetrievalResult, ScoresLike, as_scores, retrieval, score_blocks
from ..lm.corpus import Corpus
from ..scores import Scores

FUSIONS = ("rank", "zscore")
#: Scores of a fused matrix computed at once (query rows × all training examples): bounds rank fusion's memory.
FUSION_BLOCK_ELEMENTS = 2**24


@dataclass
class ContaminationResult:
    """Result of :func:`contamination`.

    Attributes:
        methods: ``{name: RetrievalResult}`` per attributor and per fusion (named ``"a+b"``).
        metadata: ``fusion``, ``n_test`` (test items), ``n_items`` (those with planted copies), ``n_corpus``.
        random: ``{"recall": {k: expected Recall@k}, "mrr": expected MRR}`` of a uniformly random ranking.
        ks: the cut-offs.
        planted: per test item, the corpus indices of its planted copies.
    """

    methods: dict[str, RetrievalResult]
    random: dict[str, Any]
    ks: tuple[int, ...]
    planted: list[np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

    def best(self, k: int) -> str:
        """Name of the method (or fusion) with the highest Recall@k."""
        return max(self.methods, key=lambda name: self.methods[name].recall[k])

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per method: name, Recall@k for every k, MRR and its interval; then the random baseline."""
        rows = [
            {"method": n, **{f"R@{k}": r.recall[k] for k in self.ks}, "MRR": r.mrr, "MRR_ci": list(r.mrr_ci)}
            for n, r in self.methods.items()
        ]
        rows.append(
            {
                "method": "random",
                **{f"R@{k}": self.random["recall"][k] for k in self.ks},
                "MRR": self.random["mrr"],
                "MRR_ci": None,
            }
        )
        return rows

    def __str__(self) -> str:
        return "; ".join(f"{n}: {r}" for n, r in self.methods.items())


def contamination(
    scores: Mapping[str, ScoresLike] | ScoresLike,
    planted: Sequence[Sequence] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    *,
    corpus_ids: Sequence | None = None,
    fusions: Sequence[tuple[str, str]] = (),
    fusion: str = "rank",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> ContaminationResult:
    """Recall@k and MRR of planted copies of test items, per attributor and per fused pair of attributors.

    Args:
        scores: ``{name: (n_test, n_corpus) scores}`` (or one matrix, named by its metadata's method), positive =
            proponent; ranked highest first.
        planted: for each test item, the corpus entries planted for it: indices, or ids from ``corpus_ids``.
        ks: cut-offs of Recall@k.
        corpus_ids: ids of the corpus entries, when ``planted`` names entries by id; every planted id must be one.
        fusions: pairs ``(a, b)`` of names in ``scores`` to fuse with ``fusion`` (``"rank"`` or ``"zscore"``).
        n_bootstrap, seed: bootstrap interval of the MRR over test items.
    """
    if not isinstance(scores, Mapping):
        scores = as_scores(scores)
        scores = {str(scores.metadata.get("method", "scores")): scores}
    scores = {name: as_scores(s) for name, s in scores.items()}
    shapes = {s.shape for s in scores.values()}
    if len(shapes) != 1:
        raise InputError(f"All score matrices must have the same (n_test, n_corpus) shape, got {sorted(shapes)}.")
    n_test, n_corpus = shapes.pop()
    planted = planted_indices(planted, n_corpus, corpus_ids)
    if len(planted) != n_test:
        raise InputError(f"planted lists {len(planted)} test items but the scores have {n_test}.")
    for a, b in fusions:
        for name in (a, b):
            if name not in scores:
                raise InputError(f"Cannot fuse {name!r}: no scores of that name (have {sorted(scores)}).")
    check_choice("fusion", fusion, FUSIONS)
    all_scores = dict(scores)
    for a, b in fusions:
        all_scores[f"{a}+{b}"] = fuse([scores[a], scores[b]], fusion)
    ks = tuple(int(k) for k in ks)
    methods = {name: retrieval(s, planted, ks, n_bootstrap, seed) for name, s in all_scores.items()}
    random = random_retrieval(planted, n_corpus, ks)
    n_items = sum(1 for p in planted if len(p))
    meta = {"fusion": fusion if fusions else None, "n_test": n_test, "n_items": n_items, "n_corpus": n_corpus}
    return ContaminationResult(methods, random, ks, planted, meta)


def planted_indices(planted: Sequence[Sequence] | np.ndarray, n_corpus: int, corpus_ids: Sequence | None) -> list:
    """Corpus indices of each test item's planted copies; unknown ids or out-of-range indices are refused."""
    if corpus_ids is not None:
        corpus_ids = list(corpus_ids)
        if len(corpus_ids) != n_corpus:
            raise InputError(f"corpus_ids has {len(corpus_ids)} entries but the corpus has {n_corpus}.")
        position = {cid: i for i, cid in enumerate(corpus_ids)}
        unknown = [p for items in planted for p in items if p not in position]
        if unknown:
            raise InputError(f"Planted ids not in the corpus: {unknown[:10]}" + (" ..." if len(unknown) > 10 else ""))
        return [np.asarray([position[p] for p in items], dtype=np.int64) for items in planted]
    out = []
    for items in planted:
        idx = np.asarray(items, dtype=np.int64).reshape(-1)
        bad = idx[(idx < 0) | (idx >= n_corpus)]
        if len(bad):
            raise InputError(f"Planted indices not in the corpus [0, {n_corpus}): {bad[:10].tolist()}.")
        out.append(idx)
    return out


def random_retrieval(planted: Sequence[np.ndarray], n_corpus: int, ks: Sequence[int]) -> dict[str, Any]:
    """Expected Recall@k (= k / n) and MRR of a uniformly random ranking, averaged over items with copies.

    With m relevant among n, the best relevant rank r has P(r) = C(n − r, m − 1) / C(n, m).
    """
    items = [len(p) for p in planted if len(p)]
    if not items:
        return {"recall": {k: float("nan") for k in ks}, "mrr": float("nan")}
    rr = []
    for m in items:
        r = np.arange(1, n_corpus - m + 2)
        log_p = _log_comb(n_corpus - r, m - 1) - _log_comb(n_corpus, m)
        rr.append(float((np.exp(log_p) / r).sum()))
    return {"recall": {k: min(k, n_corpus) / n_corpus for k in ks}, "mrr": float(np.mean(rr))}


def fuse(members: Sequence[ScoresLike], method: str = "rank", weights: Sequence[float] | None = None) -> Scores:
    """Fuse score matrices of the same queries and training examples into one (see the module docstring).

    Args:
        members: two or more ``(n_query, n_train)`` score matrices, positive = proponent.
        method: ``"rank"`` (mean normalised rank, in (0, 1], ties averaged) or ``"zscore"`` (mean row-standardised
            score; a constant row contributes 0).
        weights: weight of each member (default equal); the fused score is the weighted mean.

    Returns:
        Lazy :class:`Scores`; higher = more strongly a proponent by consensus. Rank fusion computes whole query rows
        (at most ``FUSION_BLOCK_ELEMENTS`` scores at a time); z-score fusion streams blocks after one pass for the row
        means and standard deviations.
    """
    check_choice("fusion", method, FUSIONS)
    members = [as_scores(s) for s in members]
    if len(members) < 2:
        raise InputError("fuse needs at least two score matrices.")
    shapes = {m.shape for m in members}
    if len(shapes) != 1:
        raise InputError(f"Cannot fuse scores of different shapes {sorted(shapes)}.")
    w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(members),) or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"weights must be {len(members)} non-negative numbers with a positive sum, got {weights}.")
    w = w / w.sum()
    n_query, n_train = members[0].shape
    meta = {"method": "fusion", "fusion": method, "members": [m.metadata.get("method") for m in members]}
    meta["weights"] = w.tolist()
    if method == "zscore":
        stats = [_row_moments(m) for m in members]

        def block(r: slice, c: slice) -> Tensor:
            out = torch.zeros(r.stop - r.start, c.stop - c.start, dtype=torch.float64)
            for weight, m, (mean, std) in zip(w, members, stats):
                z = (m.block_fn(r, c).double() - mean[r, None]) / std[r, None]
                out += weight * z
            return out.float()

        return Scores(block, (n_query, n_train), meta, train_chunk=members[0].train_chunk)

    def block(r: slice, c: slice) -> Tensor:
        out = np.zeros((r.stop - r.start, n_train))
        for weight, m in zip(w, members):
            out += weight * rankdata(m.block(r, slice(0, n_train)), axis=1) / n_train
        return torch.from_numpy(out[:, c]).float()

    rows = max(1, min(members[0].query_chunk, FUSION_BLOCK_ELEMENTS // n_train))
    return Scores(block, (n_query, n_train), meta, query_chunk=rows, train_chunk=n_train)


def plant_copies(
    train: Sequence[Tensor] | Data,
    items: Sequence[Tensor] | Data,
    copies: int = 1,
    perturb: Callable[[Tensor, np.random.Generator], Tensor] | None = None,
    seed: int = 0,
) -> tuple[Data, list[np.ndarray]]:
    """Insert ``copies`` copies of every item (with its label) at seeded random positions of ``train``.

    Args:
        train, items: tensor data ``(X, ..., y)`` of the same structure.
        copies: copies per item.
        perturb: ``perturb(x, rng) -> x'`` applied to each copy's first tensor (a paraphrase, crop or noise);
            ``None`` plants verbatim copies.
        seed: seeds the positions and ``rng``.

    Returns:
        ``(contaminated, planted)``: the new training data, and per item the indices of its copies in it.
    """
    train_t, items_t = as_data(train, "train").tensors(), as_data(items, "items").tensors()
    if len(train_t) != len(items_t):
        raise InputError(f"train has {len(train_t)} tensors per example but items have {len(items_t)}.")
    if copies < 1:
        raise InputError(f"copies must be ≥ 1, got {copies}.")
    rng = np.random.default_rng(derive_seed(seed, "plant-copies"))
    n_items = len(items_t[0])
    source = np.repeat(np.arange(n_items), copies)
    planted_t = [t[torch.from_numpy(source)].clone() for t in items_t]
    if perturb is not None:
        planted_t[0] = torch.stack([perturb(x, rng) for x in planted_t[0]])
    n_total = len(train_t[0]) + len(source)
    positions = np.sort(rng.choice(n_total, len(source), replace=False))
    is_planted = np.zeros(n_total, dtype=bool)
    is_planted[positions] = True
    out = []
    for t, p in zip(train_t, planted_t):
        merged = torch.empty((n_total, *t.shape[1:]), dtype=t.dtype)
        merged[torch.from_numpy(~is_planted)] = t
        merged[torch.from_numpy(positions)] = p.to(t.dtype)
        out.append(merged)
    planted = [positions[source == j] for j in range(n_items)]
    return Data(tuple(out), "train"), planted


def plant_documents(train: Corpus, documents: Corpus, seed: int = 0) -> tuple[Corpus, np.ndarray]:
    """Insert ``documents`` at seeded random positions of the text corpus ``train`` (as :func:`plant_copies` does).

    Args:
        train: the training corpus.
        documents: the documents to plant, tokenised with the same tokenizer (e.g. ``items.subset(...)`` for verbatim
            copies or ``dt.lm.corpus(edited_texts, train.tokenizer, ids=..., max_length=...)`` for edited ones), with
            ids that are not in ``train`` (so that each copy is recognisable by its id).

    Returns:
        ``(contaminated, positions)``: the corpus with every example's tokens, loss mask, text and id moved together
        (the original examples keep their relative order), and the position of each planted document in it.
    """
    if not isinstance(train, Corpus) or not isinstance(documents, Corpus):
        raise InputError("plant_documents takes two dt.lm.Corpus objects; use plant_copies for tensor data.")
    if type(train.tokenizer) is not type(documents.tokenizer) or train.tokenizer.vocab_size != (
        documents.tokenizer.vocab_size
    ):
        raise InputError(
            f"The documents were tokenised with {documents.tokenizer!r}, the corpus with {train.tokenizer!r}."
        )
    clash = sorted(set(train.ids) & set(documents.ids))
    if clash:
        raise InputError(f"Planted documents need ids not in the corpus; these are already there: {clash[:5]}.")
    width = train.tensors()[0].shape[1]
    input_ids, loss_mask = documents.tensors()
    if input_ids.shape[1] > width:
        raise InputError(
            f"The documents have {input_ids.shape[1]} tokens, the corpus {width}: tokenise them with "
            f"max_length={width}."
        )
    pad = width - input_ids.shape[1]
    input_ids = torch.nn.functional.pad(input_ids, (0, pad), value=int(train.tokenizer.pad_id))
    loss_mask = torch.nn.functional.pad(loss_mask, (0, pad), value=0.0)
    merged, planted = plant_copies(train, (input_ids, loss_mask), seed=seed)
    positions = np.concatenate(planted)
    source = np.zeros(len(merged), dtype=np.int64)  # where each example comes from: i ≥ 0 train[i], −1 − j document j
    source[positions] = -1 - np.arange(len(documents))
    source[source == 0] = np.arange(len(train))
    ids = [train.ids[i] if i >= 0 else documents.ids[-1 - i] for i in source]
    texts = [train.texts[i] if i >= 0 else documents.texts[-1 - i] for i in source]
    contaminated = Corpus(*merged.tensors(), ids, texts, train.tokenizer, train.name)
    return contaminated, positions


def text_noise(text: str, rate: float, rng: np.random.Generator) -> str:
    """``text`` with typos: each character independently, with probability ``rate``, replaced by a random lower-case
    letter or space."""
    if not 0 <= rate <= 1:
        raise InputError(f"rate must be in [0, 1], got {rate}.")
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    edit = rng.random(len(text)) < rate
    letters = rng.integers(len(alphabet), size=len(text))
    return "".join(alphabet[j] if e else c for c, e, j in zip(text, edit, letters))


def text_prefix(text: str, fraction: float) -> str:
    """The first ``ceil(fraction · len(text))`` characters of ``text`` (a partial copy)."""
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}.")
    return text[: math.ceil(fraction * len(text))]


def _row_moments(scores: Scores) -> tuple[Tensor, Tensor]:
    """Per-row mean and standard deviation (inf for constant rows, so z = 0), streamed over blocks in float64.

    Blocks are combined with Chan et al.'s pairwise update, which stays accurate when the mean dwarfs the spread.
    """
    count = np.zeros(scores.n_query)
    mean = np.zeros(scores.n_query)
    m2 = np.zeros(scores.n_query)
    for rows, _, block in score_blocks(scores):
        block = block.astype(np.float64)
        n_b, mean_b = block.shape[1], block.mean(axis=1)
        m2_b = ((block - mean_b[:, None]) ** 2).sum(axis=1)
        n_a = count[rows]
        delta = mean_b - mean[rows]
        mean[rows] += delta * n_b / (n_a + n_b)
        m2[rows] += m2_b + delta**2 * n_a * n_b / (n_a + n_b)
        count[rows] += n_b
    std = np.sqrt(m2 / scores.n_train)
    std[std <= 1e-12 * np.maximum(np.abs(mean), 1.0)] = np.inf
    return torch.from_numpy(mean), torch.from_numpy(std)


def _log_comb(n: np.ndarray | int, k: int) -> np.ndarray:
    return gammaln(np.asarray(n) + 1.0) - gammaln(k + 1.0) - gammaln(np.asarray(n) - k + 1.0)
