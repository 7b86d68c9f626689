import numpy as np
import pytest
import torch

import datatrace as dt

from .conftest import tiny_llama


def test_instruction_set_is_seeded_and_covers_every_task():
    prompts, responses, ids = dt.lm.instruction_set(10, seed=1)
    assert (prompts, responses, ids) == dt.lm.instruction_set(10, seed=1)
    assert {i.split(":")[0] for i in ids} == set(dt.lm.sft.TASKS)
    assert responses[1] == prompts[1].split("'")[1][::-1]  # "reverse" answers are right


def test_sft_corpus_counts_response_tokens_only(hf_tokenizer):
    c = dt.lm.sft_corpus(["What is 1 plus 2?"], ["1 plus 2 is 3."], hf_tokenizer)
    ids, mask = c.tensors()
    scored = ids[0][mask[0] > 0]
    assert hf_tokenizer.decode(scored, skip_special_tokens=True) == "1 plus 2 is 3."
    assert c.texts[0].startswith("### Instruction:\nWhat is 1 plus 2?\n### Response:\n")


@pytest.mark.slow
def test_lora_sft_attribution_ranks_the_identical_sft_example_first(hf_tokenizer):
    pytest.importorskip("peft")
    prompts, responses, ids = dt.lm.instruction_set(40, seed=0)
    train = dt.lm.sft_corpus(prompts, responses, hf_tokenizer, ids=ids, max_length=128)
    base = tiny_llama(len(hf_tokenizer))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = dt.lm.add_lora(base, rank=4, target_modules=("q_proj", "v_proj"), seed=0)
    dt.lm.train_causal_lm(model, train, steps=30, batch_size=8, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in model.get_base_model().state_dict().items() if k in before)

    picks = [2, 3, 7, 8]  # uppercase and addition examples: unique prompt + response pairs
    query = dt.lm.sft_corpus([prompts[i] for i in picks], [responses[i] for i in picks], hf_tokenizer, max_length=128)
    task = dt.lm.CausalLMTask()
    for attr in (dt.TRAK(model, task, proj_dim=256, verbose=False), dt.GradCos(model, task, verbose=False)):
        attr.fit(train)
        assert all("lora_" in n for n in attr.param_names_)  # adapters only
        scores = attr.score(query).values
        ranks = [int((scores[q] > scores[q, i]).sum()) for q, i in enumerate(picks)]
        assert ranks == [0] * len(picks), (type(attr).__name__, ranks)
        assert np.isfinite(scores).all()


def test_add_lora_adapts_only_the_chosen_layers_and_starts_at_the_base_model(hf_tokenizer):
    pytest.importorskip("peft")
    base = tiny_llama(len(hf_tokenizer))
    ids = torch.randint(0, 300, (1, 10))
    with torch.no_grad():
        before = base(ids).logits
    model = dt.lm.add_lora(base, rank=2, target_modules=("v_proj",), layers=[1], seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("layers.1.self_attn.v_proj.lora_" in n for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)
