import json

import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace.scores import Factor, Scores


def dense(n_query=7, n_train=50, seed=0):
    return np.random.default_rng(seed).standard_normal((n_query, n_train)).astype(np.float32)


@pytest.mark.parametrize("largest", [True, False])
def test_streaming_topk_equals_full_sort_with_small_chunks(largest):
    values = dense()
    s = Scores.from_array(values)
    s.query_chunk, s.train_chunk = 3, 8  # chunks smaller than n_train and n_query
    vals, idx = s.topk(5, largest=largest)
    order = np.argsort(-values if largest else values, axis=1)[:, :5]
    assert np.array_equal(idx, order)
    assert np.array_equal(vals, np.take_along_axis(values, order, 1))


def test_topk_k_out_of_range():
    s = Scores.from_array(dense(n_train=10))
    with pytest.raises(dt.InputError, match="1 ≤ k ≤ n_train = 10"):
        s.topk(11)
    with pytest.raises(dt.InputError):
        s.topk(0)


def test_from_factors_matches_dense_formula():
    rng = np.random.default_rng(0)
    a1, a2 = torch.randn(4, 3), torch.randn(4, 3)
    b1, b2 = rng.standard_normal((9, 3)).astype(np.float32), rng.standard_normal((9, 3)).astype(np.float32)
    c1, col, row = rng.random(9), rng.random(9), rng.random(4)
    s = Scores.from_factors([Factor(a1, b1, 0.5, col_scale=c1), Factor(a2, b2, 2.0)], col_scale=col, row_scale=row)
    s.train_chunk = 4
    want = (0.5 * (a1.numpy() @ b1.T) * c1 + 2.0 * (a2.numpy() @ b2.T)) * col * row[:, None]
    np.testing.assert_allclose(s.values, want, rtol=1e-5, atol=1e-6)


def test_mean_of_scores():
    a, b = dense(seed=1), dense(seed=2)
    np.testing.assert_allclose(Scores.mean([Scores.from_array(a), Scores.from_array(b)]).values, (a + b) / 2)
    with pytest.raises(dt.InputError, match="different shapes"):
        Scores.mean([Scores.from_array(a), Scores.from_array(a[:, :3])])


def test_to_jsonl_lists_proponents_and_opponents(tmp_path):
    values = dense(n_query=2, n_train=6)
    Scores.from_array(values).to_jsonl(tmp_path / "s.jsonl", k=2, train_ids=list("abcdef"))
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [line["query"] for line in lines] == [0, 1]
    best = np.argsort(-values[1])[:2]
    worst = np.argsort(values[1])[:2]
    assert [p["train"] for p in lines[1]["proponents"]] == [list("abcdef")[i] for i in best]
    assert [p["train"] for p in lines[1]["opponents"]] == [list("abcdef")[i] for i in worst]
    assert lines[1]["proponents"][0]["score"] == pytest.approx(float(values[1, best[0]]))


def test_from_array_needs_a_matrix():
    with pytest.raises(dt.InputError, match="2-D"):
        Scores.from_array(np.zeros(3))
