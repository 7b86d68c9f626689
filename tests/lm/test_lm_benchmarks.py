import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace.benchmarks import get
from datatrace.benchmarks.tinylm import LMBenchmark, ReplicateRecipe, average_replicates, noise_ceiling
from datatrace.lm.synthetic import synthetic_texts

from .conftest import tiny_gpt

CALLS = []


def quick_train(data, seed):
    CALLS.append(seed)
    return dt.lm.train_causal_lm(tiny_gpt(seed), data, steps=4, batch_size=8, seed=seed)


def quick_split():
    texts, ids = synthetic_texts(30, seed=2)
    docs = dt.lm.corpus(texts, dt.lm.ByteTokenizer(), ids=ids, max_length=64)
    return docs.subset(range(24)), docs.subset(range(24, 30))


def test_replicates_share_subsets_and_use_one_seed_each_for_all_subsets():
    bench = LMBenchmark("quick", 1, "test", quick_split, quick_train, n_subsets=3, fraction=0.5, replicates=2)
    CALLS.clear()
    reps = bench.replicate_ground_truths(verbose=False)
    assert np.array_equal(reps[0].masks, reps[1].masks)
    assert len(set(CALLS[:3])) == 1 and len(set(CALLS[3:])) == 1 and CALLS[0] != CALLS[3]  # common random numbers
    gt = bench.ground_truth(verbose=False)  # cached: nothing retrained
    assert len(CALLS) == 6
    np.testing.assert_allclose(gt.measurements, (reps[0].measurements + reps[1].measurements) / 2)
    assert gt.metadata["replicates"] == 2 and gt.metadata["common_random_numbers"]
    assert -1 <= noise_ceiling(reps) <= 1
    train, query = bench.data()
    assert isinstance(train, dt.lm.Corpus) and isinstance(query, dt.lm.Corpus)


def test_replicate_recipe_ignores_the_engines_seed_and_has_a_stable_name():
    recipe = ReplicateRecipe(quick_train, seed=7)
    train, _ = quick_split()
    a, b = recipe(train, 1), recipe(train, 2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert repr(recipe) == "quick_train[seed=7]"


def test_averaging_refuses_different_subsets_and_ceiling_needs_two():
    gt = dt.eval.GroundTruth(np.eye(3, dtype=bool), np.zeros((3, 2)), np.zeros(3))
    other = dt.eval.GroundTruth(~np.eye(3, dtype=bool), np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(dt.InputError, match="share their subsets"):
        average_replicates([gt, other])
    with pytest.raises(dt.InputError, match="at least 2 replicates"):
        noise_ceiling([gt])


def test_registered_lm_benchmarks():
    micro = get("tinylm-micro")
    train, query = micro.data()
    assert (len(train), len(query)) == (500, 100) and train.ids[0].startswith("t")
    assert isinstance(micro.task, dt.lm.CausalLMTask) and micro.fraction == 0.3
    fortunes = get("tinylm-fortunes")
    assert fortunes.n_subsets >= 64 and fortunes.fraction == 0.3 and fortunes.replicates == 2
