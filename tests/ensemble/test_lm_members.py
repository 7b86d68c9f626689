"""dt.Ensemble on a causal language model (TinyGPT of the tinylm-micro size) and a token corpus.

Every member kind must work on ``(input_ids, loss_mask)`` batches: masks on the inputs of TinyGPT's ``nn.Linear``
layers (broadcast over tokens), Q-only masks, LoRA adapters on TinyGPT's modules, and half-data members trained on a
sub-corpus.
"""

import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace._utils import derive_seed
from datatrace.benchmarks.tinylm import micro_gpt
from datatrace.ensemble import MaskedModel
from datatrace.lm.synthetic import synthetic_texts

TASK = dt.lm.CausalLMTask()
LINEARS = [f"blocks.{b}.{n}" for b in range(2) for n in ("attn.qkv", "attn.proj", "fc", "out")] + ["head"]


def trak(models):
    return dt.TRAK(models, TASK, proj_dim=32, verbose=False)


def train_gpt(data, seed):
    return dt.lm.train_causal_lm(micro_gpt(seed), data, steps=4, batch_size=8, seed=seed)


@pytest.fixture(scope="module")
def lm():
    texts, ids = synthetic_texts(30, seed=4)
    docs = dt.lm.corpus([t[:40] for t in texts], dt.lm.ByteTokenizer(), ids=ids, max_length=48)
    train, query = docs.subset(range(24)), docs.subset(range(24, 30))
    return train, query, train_gpt(train, 0)


def scores(ens, lm):
    train, query, _ = lm
    return ens.fit(train).score(query).values


@pytest.mark.parametrize(
    "options",
    [
        {"kind": "dropout", "mask": "member"},
        {"kind": "dropout", "mask": "sample"},
        pytest.param({"kind": "lora", "lora_rank": 2, "lora_steps": 3}, marks=pytest.mark.slow),  # peft import
    ],
)
def test_every_member_kind_attributes_a_causal_lm(lm, options):
    ens = dt.Ensemble(trak, models=[lm[2]], n_members=2, rate=0.3, verbose=False, **options)
    got = scores(ens, lm)
    assert got.shape == (6, 24) and np.isfinite(got).all()
    assert ens.costs_.n_members == 2 and ens.costs_.feature_bytes > 0
    if options["kind"] == "dropout":
        assert ens.layers_ == LINEARS[1:]  # every nn.Linear input but the first one
        one = dt.Ensemble(trak, models=[lm[2]], rate=0.0, verbose=False, **options)
        np.testing.assert_allclose(scores(one, lm), scores(trak([lm[2]]), lm), rtol=1e-5, atol=1e-8)


def test_member_masks_are_one_vector_per_layer_shared_by_every_token(lm):
    member = MaskedModel(lm[2], LINEARS[1:], [32, 32, 128, 32, 32, 32, 128, 32], 0.5, "member", seed=0)
    ids = lm[0].batch(slice(0, 3))[0]
    x = torch.randn(3, ids.shape[1], 32)
    assert member.keep_mask(0, x).shape == (32,)
    assert not torch.allclose(member(ids), lm[2](ids))  # the masks reach the forward pass
    sample = MaskedModel(lm[2], LINEARS[1:], [32, 32, 128, 32, 32, 32, 128, 32], 0.5, "sample", seed=0)
    keep = sample.keep_mask(0, x)
    assert keep.shape == x.shape and not torch.equal(keep[0, 0], keep[0, 1])  # fresh per token of each example


def test_lora_adapts_named_tinygpt_modules_and_leaves_the_base_alone(lm):
    base = lm[2]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    factory = lambda ms: dt.TRAK(ms, TASK, proj_dim=None, verbose=False)  # noqa: E731
    ens = dt.Ensemble(factory, "lora", models=[base], lora_rank=2, lora_targets=["blocks.1.fc"], lora_steps=3)
    scores(ens, lm)
    assert ens.attributor_.feature_dim_ == 2 * 32 + 128 * 2  # A (2×32) + B (128×2) of blocks.1.fc only
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_half_data_members_train_on_a_sub_corpus(lm):
    train = lm[0]
    ens = dt.Ensemble(trak, train_fn=train_gpt, n_models=1, subset_fraction=0.5, seed=2, verbose=False)
    got = scores(ens, lm)
    rng = np.random.default_rng(derive_seed(2, "half-model", 0))
    half = train.subset(np.sort(rng.choice(24, 12, replace=False)))
    assert isinstance(half, dt.lm.Corpus) and len(half.texts) == 12
    np.testing.assert_array_equal(got, scores(trak([train_gpt(half, derive_seed(2, 0) % 2**31)]), lm))


def test_q_only_dropout_warns_that_a_causal_lm_has_a_constant_q(lm):
    ens = dt.Ensemble(trak, "dropout", models=[lm[2]], n_members=4, rate=0.3, q_only=True, verbose=False)
    with pytest.warns(dt.DatatraceWarning, match="out-to-loss term Q is the constant 1"):
        got = scores(ens, lm)
    np.testing.assert_allclose(got, scores(trak([lm[2]]), lm), rtol=1e-5, atol=1e-8)
