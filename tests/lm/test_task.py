import pytest
import torch
import torch.nn.functional as F

import datatrace as dt
from datatrace.lm.task import token_nll

from .conftest import tiny_gpt, tiny_llama


def prompt_batch(vocab: int = 300, n: int = 3, length: int = 12, prompt: int = 4, seed: int = 0):
    """Random sequences whose first ``prompt`` tokens are a prompt (loss weight 0), right-padded by 0–2 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    mask = torch.zeros(n, length)
    for i in range(n):
        mask[i, prompt : length - i] = 1.0  # example i ends i tokens early: its tail is padding
    return ids, mask


def test_loss_equals_hf_models_own_loss_with_prompt_labels_ignored():
    model = tiny_llama()
    ids, mask = prompt_batch()
    ours = dt.lm.CausalLMTask().loss(model, (ids, mask))
    for i in range(len(ids)):
        labels = ids[i : i + 1].masked_fill(mask[i : i + 1] == 0, -100)
        theirs = model(ids[i : i + 1], labels=labels).loss
        torch.testing.assert_close(ours[i], theirs, rtol=1e-5, atol=1e-6)


def test_masked_prompt_and_padding_tokens_do_not_count():
    model = tiny_gpt()
    task = dt.lm.CausalLMTask()
    ids, mask = prompt_batch(vocab=259, n=1, length=12)
    base = task.loss(model, (ids, mask))
    padded = (torch.cat([ids, torch.full((1, 5), 258)], 1), torch.cat([mask, torch.zeros(1, 5)], 1))
    torch.testing.assert_close(task.loss(model, padded), base)  # right padding changes nothing
    nll, _ = token_nll(model, (ids, torch.ones_like(mask)))
    torch.testing.assert_close(base, nll[:, 3:].mean(dim=1))  # = mean NLL of tokens 4..11 only


def test_token_weights_give_the_weighted_mean_nll():
    model = tiny_gpt()
    ids, _ = prompt_batch(vocab=259, n=2, length=10)
    weights = torch.rand(2, 10, generator=torch.Generator().manual_seed(1))
    logp = F.log_softmax(model(ids)[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    want = -(logp * weights[:, 1:]).sum(1) / weights[:, 1:].sum(1)
    torch.testing.assert_close(dt.lm.CausalLMTask().loss(model, (ids, weights)), want)
    bool_mask = weights > 0.5
    torch.testing.assert_close(
        dt.lm.CausalLMTask().loss(model, (ids, bool_mask)), dt.lm.CausalLMTask().loss(model, (ids, bool_mask.float()))
    )


def test_measurement_defaults_to_the_loss():
    model = tiny_gpt()
    batch = prompt_batch(vocab=259)
    task = dt.lm.CausalLMTask()
    torch.testing.assert_close(task.measurement(model, batch), task.loss(model, batch))
    torch.testing.assert_close(task.output(model, batch), -task.loss(model, batch))


def test_bad_batches_are_refused_with_what_to_change():
    model = tiny_gpt()
    task = dt.lm.CausalLMTask()
    ids, mask = prompt_batch(vocab=259)
    with pytest.raises(dt.InputError, match="\\(input_ids, loss_mask\\)"):
        task.loss(model, (ids,))
    with pytest.raises(dt.InputError, match="loss_mask shape"):
        task.loss(model, (ids, mask[:, :-1]))
    with pytest.raises(dt.InputError, match="integer tensor"):
        task.loss(model, (ids.float(), mask))
    with pytest.raises(dt.InputError, match="exceed the model's context of 64.*max_length=64"):
        task.loss(model, (torch.zeros(1, 65, dtype=torch.long), torch.ones(1, 65)))
    with pytest.raises(dt.InputError, match="vocabulary of 259: the tokenizer does not match"):
        task.loss(model, (ids + 1000, mask))
    with pytest.raises(dt.InputError, match="Example 1 of the batch has no loss token"):
        task.loss(model, (ids, mask * torch.tensor([[1.0], [0.0], [1.0]])))
    with pytest.raises(dt.InputError, match="negative weights"):
        task.loss(model, (ids, -mask))


def test_model_on_another_device_than_the_data_is_refused():
    model = tiny_gpt().to("meta")
    with pytest.raises(dt.InputError, match="model is on meta but the batch is on cpu"):
        dt.lm.CausalLMTask().loss(model, prompt_batch(vocab=259))


def test_hf_vocabulary_mismatch_is_refused():
    model = tiny_llama(vocab_size=100)
    ids, mask = prompt_batch(vocab=300)
    with pytest.raises(dt.InputError, match="vocabulary of 100"):
        dt.lm.CausalLMTask().loss(model, (ids, mask))


@pytest.mark.slow
def test_sampled_hessian_factors_are_unbiased_for_the_exact_loss_hessian():
    """E[L Lᵀ] = ∇²_z L per example (block-diagonal over positions, masked positions zero): KFAC/EK-FAC on LMs."""
    from datatrace.attributors.hessian import OutputSplit, _Fixed

    model = dt.lm.TinyGPT(vocab_size=5, context=8, width=8, depth=1, heads=2, seed=0)
    input_ids = torch.randint(0, 5, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 6)
    mask[:, :2], mask[2, 4:] = 0, 0  # a prompt, and padding
    batch, task = (input_ids, mask), dt.lm.CausalLMTask()
    z = OutputSplit(model, task, batch).forward().detach().double()

    def hessian(i: int) -> torch.Tensor:
        example = (input_ids[i : i + 1], mask[i : i + 1])
        return torch.func.hessian(lambda f: task.loss(_Fixed(f.view(1, 6, 5)), example)[0])(z[i].reshape(-1))

    exact = torch.stack([hessian(i) for i in range(3)])
    task.fisher_samples = 20_000
    factors = task.sampled_output_hessian_factors(z, batch)
    assert factors.shape == (3, 30, 20_000)
    torch.testing.assert_close(task.sampled_output_hessian_factors(z, batch), factors)  # seeded by the batch
    estimate = factors @ factors.transpose(1, 2)
    assert (estimate - exact).abs().max() < 0.03 * exact.abs().max()  # Monte Carlo error ≈ 1/√20,000 relative
