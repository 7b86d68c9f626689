"""Every attributor on causal LMs (tiny GPT and a tiny HF Llama): the sign test, with projection and ``params=[...]``.

A training document identical to the query must be its top proponent (TRAK, Grad-Cos, LoGra, EK-FAC), or within
the top 2% for the unnormalised dot products (Grad-Dot, TracIn), where a document with a larger gradient can outrank
the copy. Measured copy ranks (0 = top) among 205 documents: Grad-Dot [0, 2, 0, 2, 3], TracIn [0, 2, 0, 0, 0].
"""

import numpy as np
import pytest

import datatrace as dt
from datatrace.lm.synthetic import synthetic_texts

from .conftest import tiny_llama

LINEAR = ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.1.fc", "blocks.1.out", "head"]


def copy_ranks(scores: np.ndarray, copies: np.ndarray) -> list[int]:
    return [int((scores[q] > scores[q, c]).sum()) for q, c in enumerate(copies)]


@pytest.mark.parametrize(
    "make, worst_rank",
    [
        (lambda m, t: dt.TRAK(m, t, params=LINEAR, proj_dim=512, verbose=False), 0),
        (lambda m, t: dt.GradCos(m, t, params=LINEAR, proj_dim=512, verbose=False), 0),
        (lambda m, t: dt.GradDot(m, t, params=LINEAR, proj_dim=512, verbose=False), 4),
        (lambda m, t: dt.TracIn([m], t, lrs=[3e-3], params="all", verbose=False), 4),
        (lambda m, t: dt.LoGra(m, t, params=LINEAR, rank=16, verbose=False), 0),
        (lambda m, t: dt.InfluenceFunction(m, t, solver="ekfac", params=LINEAR[-2:], verbose=False), 0),
    ],
    ids=["trak", "gradcos", "graddot", "tracin", "logra", "ekfac"],
)
def test_tiny_gpt_copy_of_query_is_the_top_proponent(lm_copies, make, worst_rank):
    train, query, model, copies = lm_copies
    assert worst_rank < np.ceil(0.02 * len(train))
    attr = make(model, dt.lm.CausalLMTask()).fit(train)
    assert max(copy_ranks(attr.score(query).values, copies)) <= worst_rank


@pytest.mark.slow
def test_hf_llama_copy_of_query_is_the_top_proponent(hf_tokenizer):
    texts, ids = synthetic_texts(80, seed=4)
    train = dt.lm.corpus(texts[:75] + texts[75:], hf_tokenizer, ids=ids, max_length=64)
    query = dt.lm.corpus(texts[75:], hf_tokenizer, max_length=64)
    model = dt.lm.train_causal_lm(tiny_llama(len(hf_tokenizer)), train, steps=40, batch_size=16, lr=1e-2)
    dt.lm.check_vocab(model, hf_tokenizer)
    params = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")] + ["lm_head"]
    task = dt.lm.CausalLMTask()
    for attr in (
        dt.TRAK(model, task, params=params, proj_dim=256, verbose=False),
        dt.GradCos(model, task, params=params, proj_dim=256, verbose=False),
    ):
        scores = attr.fit(train).score(query).values
        assert copy_ranks(scores, np.arange(75, 80)) == [0] * 5, type(attr).__name__


def test_check_vocab_refuses_a_bigger_tokenizer(hf_tokenizer):
    with pytest.raises(dt.InputError, match="tokenizer has 300 tokens but the model's vocabulary has 100"):
        dt.lm.check_vocab(tiny_llama(vocab_size=100), hf_tokenizer)
    dt.lm.check_vocab(dt.lm.TinyGPT(), dt.lm.ByteTokenizer())
