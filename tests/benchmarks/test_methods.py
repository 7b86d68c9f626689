import dataclasses

import numpy as np
import pytest

import datatrace as dt
from datatrace.benchmarks import get, get_method, method_names, register
from datatrace.benchmarks.methods import METHODS, MethodContext, parse_methods

from .tiny import TINY


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(dt.UnknownOptionError, match=r"valid: .*gradcos, graddot, .*trak-K.*Did you mean 'trak'"):
        get_method("trakk")
    assert {"graddot", "gradcos", "tracin", "trak", "trak-K"} <= set(method_names())


def test_families_take_a_positive_integer():
    assert get_method("trak-3").name == "trak-3" and "3 models" in get_method("trak-3").description
    with pytest.raises(dt.UnknownOptionError):
        get_method("trak-0")


def test_parse_methods_keeps_order_and_drops_duplicates():
    assert [m.name for m in parse_methods("trak, graddot,trak")] == ["trak", "graddot"]
    with pytest.raises(dt.InputError, match="No method given"):
        parse_methods(" , ")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(dt.InputError, match="already registered"):
        register("trak", "again", lambda ctx, **o: None)


def test_methods_needing_checkpoints_say_so_on_benchmarks_without_them():
    with pytest.raises(dt.InputError, match="'tracin' needs checkpoints, which benchmark digits-logreg does not"):
        get_method("tracin").check_available(get("digits-logreg"))
    get_method("tracin").check_available(get("digits-mlp"))


def test_context_trains_each_model_once_and_half_models_on_different_halves():
    calls = []

    def counting(data, seed):
        calls.append((len(data), seed))
        return TINY.train_fn(data, seed)

    ctx = MethodContext(dataclasses.replace(TINY, train_fn=counting, checkpoints=None), TINY.data()[0])
    assert ctx.model is ctx.model
    first = ctx.models(2)
    assert ctx.models(3)[:2] == first and len(calls) == 1 + 3
    assert [n for n, _ in calls] == [60, 30, 30, 30] and len({s for _, s in calls[1:]}) == 3


def test_every_registered_method_attributes_a_benchmark_model():
    """Each name builds an attributor that fits and scores; ``if-lissa`` (with the influence functions) is only built:
    its default 5,000 steps are long, and the solver itself is tested in tests/attributors/test_influence.py."""
    train, query = TINY.data()
    ctx = MethodContext(TINY, train)
    for name in set(METHODS) - {"tfidf", "bm25"}:  # text-only baselines: tests/lm/test_lm_benchmarks.py
        attributor = get_method(name).build(ctx, verbose=False)
        if name == "if-lissa":
            continue
        values = attributor.fit(train).score(query).values
        assert values.shape == (len(query), len(train)) and np.isfinite(values).all(), name


def test_context_takes_the_model_from_the_checkpointed_run():
    calls = []

    def counting(data, seed):
        calls.append(seed)
        return TINY.checkpoints(data, seed)

    def must_not_run(data, seed):
        raise AssertionError("the model was trained again")

    bench = dataclasses.replace(TINY, train_fn=must_not_run, checkpoints=counting)
    ctx = MethodContext(bench, TINY.data()[0])
    assert ctx.model is ctx.checkpoints[0][-1] and len(calls) == 1
