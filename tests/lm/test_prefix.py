"""PrefixCache: the top of an HF causal LM on cached hidden states gives the full model's losses, gradients, scores."""

import copy

import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace.grads import per_example_gradients
from datatrace.lm.synthetic import synthetic_texts

from .conftest import tiny_gpt, tiny_llama

TOP = ["model.layers.2.self_attn.v_proj.weight", "model.layers.2.mlp.down_proj.weight", "lm_head.weight"]


@pytest.fixture(scope="module")
def llama_and_data(hf_tokenizer):
    model = tiny_llama(len(hf_tokenizer), layers=3)
    texts, ids = synthetic_texts(24, seed=7)
    data = dt.lm.corpus(texts, hf_tokenizer, ids=ids, max_length=64)  # right-padded, documents of unequal length
    return model, data


def test_upper_model_reproduces_losses_and_per_example_gradients(llama_and_data):
    model, data = llama_and_data
    prefix = dt.lm.PrefixCache(model, start=2)
    encoded = prefix.encode(data, batch_size=5, verbose=False)
    assert len(encoded) == len(data) and encoded.tensors()[0].shape == (*data.tensors()[0].shape, 32)
    task = dt.lm.CausalLMTask()
    with torch.no_grad():
        torch.testing.assert_close(task.loss(prefix.upper, encoded.tensors()), task.loss(model, data.tensors()))
    full = per_example_gradients(model, task.loss, data.tensors(), TOP)
    upper = per_example_gradients(prefix.upper, task.loss, encoded.tensors(), TOP)
    torch.testing.assert_close(upper, full, rtol=1e-4, atol=1e-6)
    # the upper model shares the model's tensors under the same names and holds no lower layer
    names = dict(prefix.upper.named_parameters())
    assert all(names[n] is p for n, p in model.named_parameters() if n in names)
    assert not any(n.startswith(("model.layers.0.", "model.layers.1.")) for n in names)
    assert all(type(layer).__name__ != "_PassThrough" for layer in model.model.layers)  # the model is untouched


def test_attributors_score_the_same_on_cached_states(llama_and_data):
    model, data = llama_and_data
    train, query = data.subset(range(20)), data.subset(range(20, 24))
    prefix = dt.lm.PrefixCache(model, start=2)
    task = dt.lm.CausalLMTask()
    for make in (
        lambda m: dt.GradDot(m, task, params=TOP, verbose=False),
        lambda m: dt.LoGra(m, task, params=[n.removesuffix(".weight") for n in TOP[:2]], rank=4, verbose=False),
    ):
        full = make(model).fit(train).score(query).values
        cached = make(prefix.upper).fit(prefix.encode(train, verbose=False)).score(prefix.encode(query, verbose=False))
        np.testing.assert_allclose(cached.values, full, rtol=1e-3, atol=1e-6 * np.abs(full).max())


def test_stride_on_cached_states_equals_stride_on_the_model(llama_and_data):
    model, data = llama_and_data
    train, query = data.subset(range(20)), data.subset(range(20, 24))
    prefix = dt.lm.PrefixCache(model, start=2)
    options = dict(n_subsets=10, degree=2, rank=2, layer="model.layers.2", steps=5, subsets_per_step=4, verbose=False)
    full = dt.STRIDE(model, dt.lm.CausalLMTask(), **options).fit(train).score(query).values
    upper = dt.STRIDE(prefix.upper, dt.lm.CausalLMTask(), **options)
    cached = upper.fit(prefix.encode(train, verbose=False)).score(prefix.encode(query, verbose=False)).values
    assert np.abs(full).max() > 0
    np.testing.assert_allclose(cached, full, rtol=1e-3, atol=1e-5 * np.abs(full).max())


def test_bad_input(llama_and_data):
    model, data = llama_and_data
    with pytest.raises(dt.InputError, match="start must be in 1..2"):
        dt.lm.PrefixCache(model, start=3)
    with pytest.raises(dt.InputError, match="accepts inputs_embeds"):
        dt.lm.PrefixCache(tiny_gpt(), start=1)
    encoded = dt.lm.PrefixCache(model, start=1).encode(data.subset(range(3)), verbose=False)
    with pytest.raises(dt.InputError, match="takes \\(input_ids, loss_mask\\) data"):
        dt.lm.PrefixCache(model, start=1).encode(encoded)
    hidden, input_ids, mask = encoded.tensors()
    with pytest.raises(dt.InputError, match="does not start with the \\(B, T\\)"):
        dt.lm.CausalLMTask().loss(model, (hidden[:, :-1], input_ids, mask))


def test_lora_wrapped_model(llama_and_data):
    """A peft LoRA model (the SFT setting): adapter gradients on cached states equal those of the full model."""
    pytest.importorskip("peft")
    model, data = llama_and_data
    lora = dt.lm.add_lora(copy.deepcopy(model), rank=2, layers=[2], seed=0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # adapters as after fine-tuning, so that they change the outputs
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    prefix = dt.lm.PrefixCache(lora, start=2)
    encoded = prefix.encode(data, batch_size=8, verbose=False)
    task = dt.lm.CausalLMTask()
    full = per_example_gradients(lora, task.loss, data.tensors(), names)
    torch.testing.assert_close(per_example_gradients(prefix.upper, task.loss, encoded.tensors(), names), full)
