"""Tiny language models, tokenisers and corpora shared by the LM tests (seconds on 2 CPU cores)."""

import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace.lm.synthetic import synthetic_texts


def tiny_gpt(seed: int = 0) -> dt.lm.TinyGPT:
    return dt.lm.TinyGPT(context=64, width=32, depth=2, heads=4, seed=seed)


@pytest.fixture(scope="session")
def hf_tokenizer():
    """A byte-level BPE tokenizer with 300 tokens trained in code on the synthetic corpus (no download)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(synthetic_texts(300, seed=5)[0], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(vocab_size: int = 300, seed: int = 0, layers: int = 2):
    """A Llama (HF transformers) with ``layers`` decoder layers and random weights, in eval mode."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def lm_copies():
    """Synthetic training documents plus exact copies of 5 held-out queries, and a tiny GPT trained on them.

    As for the digits sign test, the copied queries are the held-out documents with the highest loss under a model
    trained without them (a copy of a document the model already predicts well has little gradient to share).

    Returns ``(train, query, model, copy_index)``: query q's copy is training example ``copy_index[q]``.
    """
    tok = dt.lm.ByteTokenizer()
    texts, ids = synthetic_texts(260, seed=3)
    pool = dt.lm.corpus(texts, tok, ids=ids, max_length=64)
    train, held_out = pool.subset(range(200)), pool.subset(range(200, 260))
    task = dt.lm.CausalLMTask()
    without_copies = dt.lm.train_causal_lm(tiny_gpt(), train, steps=100)
    with torch.no_grad():
        loss = task.loss(without_copies, held_out.tensors())
    pick = torch.argsort(loss, descending=True)[:5].numpy()
    query = held_out.subset(pick)
    with_copies = dt.lm.corpus(
        train.texts + query.texts, tok, ids=train.ids + [f"copy-of-{i}" for i in query.ids], max_length=64
    )
    model = dt.lm.train_causal_lm(tiny_gpt(), with_copies, steps=100)
    return with_copies, query, model, np.arange(len(train), len(train) + 5)
