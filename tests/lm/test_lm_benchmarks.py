import numpy as np
import pytest

import datatrace as dt
from datatrace.benchmarks import get
from datatrace.benchmarks.tinylm import LMBenchmark
from datatrace.lm.synthetic import synthetic_texts

from .conftest import tiny_gpt

SEEDS = []


def quick_train(data, seed):
    SEEDS.append(seed)
    return dt.lm.train_causal_lm(tiny_gpt(seed), data, steps=4, batch_size=8, seed=seed)


def quick_split():
    texts, ids = synthetic_texts(30, seed=2)
    docs = dt.lm.corpus(texts, dt.lm.ByteTokenizer(), ids=ids, max_length=64)
    return docs.subset(range(24)), docs.subset(range(24, 30))


def test_lm_ground_truth_uses_common_random_numbers_and_keeps_corpora():
    bench = LMBenchmark("quick", 1, "test", quick_split, quick_train, n_subsets=3, fraction=0.5)
    SEEDS.clear()
    gt = bench.ground_truth(verbose=False)
    assert gt.run_measurements.shape == (3, 2, 6)
    assert len(set(SEEDS[0::2])) == 1 and len(set(SEEDS[1::2])) == 1 and SEEDS[0] != SEEDS[1]  # one seed per column
    bench.ground_truth(verbose=False)  # cached: nothing retrained
    assert len(SEEDS) == 6
    assert -1 <= dt.eval.noise_ceiling(gt).mean <= 1
    train, query = bench.data()
    assert isinstance(train, dt.lm.Corpus) and isinstance(query, dt.lm.Corpus)


def test_training_visits_shared_examples_of_subsets_in_the_same_order():
    """Common random numbers for the data order: the recipe orders examples by ``dt.eval.data_order``."""
    train, _ = quick_split()
    sub = train.subset(np.arange(0, 24, 2))
    np.testing.assert_array_equal(sub.indices, np.arange(0, 24, 2))
    full_order = train.indices[dt.eval.data_order(train, 5)]
    sub_order = sub.indices[dt.eval.data_order(sub, 5)]
    np.testing.assert_array_equal(full_order[np.isin(full_order, sub.indices)], sub_order)


def test_registered_lm_benchmarks():
    micro = get("tinylm-micro")
    train, query = micro.data()
    assert (len(train), len(query)) == (500, 100) and train.ids[0].startswith("t")
    assert isinstance(micro.task, dt.lm.CausalLMTask) and micro.fraction == 0.3
    assert micro.seeds_per_subset == 2 and micro.common_random_numbers
    fortunes = get("tinylm-fortunes")
    assert fortunes.n_subsets >= 64 and fortunes.fraction == 0.3 and fortunes.seeds_per_subset == 2


@pytest.mark.slow
def test_bench_runs_registered_methods_on_an_lm_benchmark():
    """``datatrace bench`` on a language model: gradient, curvature and surface methods through the one registry."""
    from datatrace.benchmarks.run import run_bench

    bench = LMBenchmark("quick", 1, "test", quick_split, quick_train, n_subsets=3, fraction=0.5)
    result = run_bench(bench, "logra,if-ekfac,tfidf,bm25", workers=1, verbose=False)
    assert [m.name for m in result.methods] == ["logra", "if-ekfac", "tfidf", "bm25"]
    assert all(np.isfinite(m.lds) and m.fit_s >= 0 for m in result.methods)
    assert result.settings["seeds_per_subset"] == 2 and result.noise_ceiling["mean"] is not None


def test_surface_methods_refuse_benchmarks_without_texts():
    from datatrace.benchmarks.methods import MethodContext, get_method

    ctx = MethodContext(get("digits-logreg"), get("digits-logreg").data()[0])
    with pytest.raises(dt.InputError, match="no text corpus"):
        get_method("tfidf").build(ctx)
