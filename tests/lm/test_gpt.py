import pytest
import torch

import datatrace as dt
from datatrace.grads import per_example_gradients, select_parameters
from datatrace.lm.synthetic import synthetic_texts
from testable_tasks import for_loop_grads

from .conftest import tiny_gpt


@pytest.fixture(scope="module")
def docs():
    """Documents of different lengths (so padding differs per example), two with a prompt."""
    texts, _ = synthetic_texts(6, seed=1)
    prompts = ["", "", "", "", "question: ", "say it: "]
    return dt.lm.corpus([t[: 20 + 5 * i] for i, t in enumerate(texts)], dt.lm.ByteTokenizer(), prompts=prompts)


@pytest.mark.parametrize("params", ["all", ["blocks.0.attn.qkv", "blocks.1.fc", "head"]])
def test_per_example_gradients_equal_for_loop(docs, params):
    model = tiny_gpt(seed=2).eval()
    task = dt.lm.CausalLMTask()
    names = select_parameters(model, params)
    ids, mask = docs.tensors()
    grads, values = per_example_gradients(model, task.loss, (ids, mask), names, chunk_size=4)
    want = for_loop_grads(model, task.loss, ids, mask, names)
    torch.testing.assert_close(grads, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, task.loss(model, (ids, mask)).detach())


def test_attention_is_causal():
    model = tiny_gpt()
    ids = torch.randint(0, 259, (1, 20))
    changed = ids.clone()
    changed[0, 12:] = (changed[0, 12:] + 7) % 259
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[:, :12], model(changed)[:, :12])
        assert not torch.allclose(model(ids)[:, 12:], model(changed)[:, 12:])


def test_initialisation_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = tiny_gpt(seed=1), tiny_gpt(seed=1), tiny_gpt(seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.head.weight, c.head.weight)
    assert dt.lm.TinyGPT(**a.config()).config() == a.config()


def test_default_size_and_bad_configurations():
    assert 100_000 < sum(p.numel() for p in dt.lm.TinyGPT().parameters()) < 300_000
    with pytest.raises(dt.InputError, match="divisible by heads"):
        dt.lm.TinyGPT(width=30, heads=4)
    with pytest.raises(dt.InputError, match="exceeds TinyGPT's context of 64"):
        tiny_gpt()(torch.zeros(1, 65, dtype=torch.long))


def test_training_lowers_the_loss_and_is_deterministic(docs):
    task = dt.lm.CausalLMTask()
    before = task.loss(tiny_gpt(), docs.tensors()).mean()
    a = dt.lm.train_causal_lm(tiny_gpt(), docs, steps=30, batch_size=4, seed=3)
    b = dt.lm.train_causal_lm(tiny_gpt(), docs, steps=30, batch_size=4, seed=3)
    assert not a.training
    assert task.loss(a, docs.tensors()).mean() < before - 0.5
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_training_updates_only_trainable_parameters(docs):
    model = tiny_gpt()
    model.tok.weight.requires_grad_(False)
    frozen = model.tok.weight.clone()
    dt.lm.train_causal_lm(model, docs, steps=3)
    assert torch.equal(model.tok.weight, frozen)
    with pytest.raises(dt.InputError, match="steps and batch_size"):
        dt.lm.train_causal_lm(model, docs, steps=0)
