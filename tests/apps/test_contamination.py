import numpy as np
import pytest
import torch
from scipy.stats import rankdata

import datatrace as dt
from datatrace.apps.contamination import contamination, fuse, plant_copies, random_retrieval


def _streamed(values: np.ndarray, name: str) -> dt.Scores:
    scores = dt.Scores.from_array(values, {"method": name})
    scores.query_chunk, scores.train_chunk = 2, 3
    return scores


@pytest.fixture
def pair():
    rng = np.random.default_rng(1)
    return rng.normal(size=(4, 13)).astype(np.float32), (5 + 3 * rng.normal(size=(4, 13))).astype(np.float32)


def test_fusion_matches_brute_force(pair):
    a, b = pair
    ranks = (rankdata(a, axis=1) + rankdata(b, axis=1)) / (2 * a.shape[1])
    np.testing.assert_allclose(fuse([_streamed(a, "a"), _streamed(b, "b")], "rank").values, ranks, rtol=1e-6)
    z = (
        (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
        + (b - b.mean(1, keepdims=True)) / b.std(1, keepdims=True)
    ) / 2
    fused = fuse([_streamed(a, "a"), _streamed(b, "b")], "zscore")
    np.testing.assert_allclose(fused.values, z, rtol=1e-5, atol=1e-6)
    weighted = fuse([a, b], "zscore", weights=[3, 1]).values
    za = (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    zb = (b - b.mean(1, keepdims=True)) / b.std(1, keepdims=True)
    np.testing.assert_allclose(weighted, 0.75 * za + 0.25 * zb, rtol=1e-5, atol=1e-6)
    assert fused.metadata["members"] == ["a", "b"]
    constant = np.ones_like(a)
    np.testing.assert_allclose(fuse([a, constant], "zscore").values, za / 2, rtol=1e-5, atol=1e-6)


def test_fusion_errors(pair):
    a, b = pair
    with pytest.raises(dt.InputError, match="different shapes"):
        fuse([a, b[:, :5]])
    with pytest.raises(dt.InputError, match="at least two"):
        fuse([a])
    with pytest.raises(dt.UnknownOptionError):
        fuse([a, b], "borda")


def test_contamination_recall_and_mrr_by_brute_force():
    """Two methods that each find a different half of the planted copies; fusion finds both halves."""
    n_test, n_corpus = 6, 40
    rng = np.random.default_rng(0)
    planted = [np.array([2 * q, 2 * q + 1]) for q in range(n_test)]
    a = rng.normal(size=(n_test, n_corpus)).astype(np.float32)
    b = rng.normal(size=(n_test, n_corpus)).astype(np.float32)
    for q, (i, j) in enumerate(planted):
        a[q, i], b[q, j] = 10.0, 10.0  # a finds only the first copy, b only the second
        a[q, j], b[q, i] = 1.8, 1.8  # and the other one high, not always second
    result = contamination(
        {"a": _streamed(a, "a"), "b": _streamed(b, "b")}, planted, ks=(1, 2, 5), fusions=[("a", "b")]
    )
    for name, values in (("a", a), ("b", b)):
        order = np.argsort(-values, axis=1)
        for k in (1, 2, 5):
            recall = np.mean([np.isin(planted[q], order[q, :k]).mean() for q in range(n_test)])
            assert result.methods[name].recall[k] == pytest.approx(recall)
        assert result.methods[name].mrr == pytest.approx(1.0)
    assert result.methods["a+b"].recall[2] == 1.0 >= max(result.methods["a"].recall[2], result.methods["b"].recall[2])
    assert result.best(2) == "a+b"
    assert result.random["recall"][5] == pytest.approx(5 / n_corpus)
    assert [r["method"] for r in result.rows()] == ["a", "b", "a+b", "random"]


def test_random_baseline_mrr_matches_simulation():
    rng = np.random.default_rng(0)
    n, m = 30, 3
    sims = [1 / (np.flatnonzero(np.isin(rng.permutation(n), np.arange(m)))[0] + 1) for _ in range(20000)]
    assert random_retrieval([np.arange(m)], n, [1])["mrr"] == pytest.approx(np.mean(sims), abs=0.005)
    assert random_retrieval([np.arange(1)], n, [1])["mrr"] == pytest.approx(np.mean(1 / np.arange(1, n + 1)))


def test_planted_ids_must_be_in_the_corpus(pair):
    a, _ = pair
    ids = [f"doc{i}" for i in range(13)]
    result = contamination(a, [["doc0"], ["doc3", "doc4"], [], ["doc12"]], ks=(1,), corpus_ids=ids)
    np.testing.assert_array_equal(result.planted[1], [3, 4])
    assert result.methods["scores"].n_undefined == 1
    with pytest.raises(dt.InputError, match="not in the corpus: \\['doc99'\\]"):
        contamination(a, [["doc0"], ["doc99"], [], []], corpus_ids=ids)
    with pytest.raises(dt.InputError, match="not in the corpus \\[0, 13\\): \\[13\\]"):
        contamination(a, [[0], [13], [], []])
    with pytest.raises(dt.InputError, match="planted lists 1 test items but the scores have 4"):
        contamination(a, [[0]])
    with pytest.raises(dt.InputError, match="Cannot fuse 'c'"):
        contamination({"a": a}, [[0], [1], [2], [3]], fusions=[("a", "c")])


def test_plant_copies_places_exact_and_perturbed_copies():
    x, y = torch.arange(20.0).reshape(10, 2), torch.arange(10)
    items = (torch.tensor([[100.0, 101.0], [200.0, 201.0]]), torch.tensor([7, 8]))
    data, planted = plant_copies((x, y), items, copies=2, seed=0)
    xs, ys = data.tensors()
    assert len(data) == 14 and all(len(p) == 2 for p in planted)
    for j, rows in enumerate(planted):
        assert (xs[rows] == items[0][j]).all() and (ys[rows] == items[1][j]).all()
    rest = np.setdiff1d(np.arange(14), np.concatenate(planted))
    assert torch.equal(xs[rest], x) and torch.equal(ys[rest], y)  # original order kept
    noisy, planted2 = plant_copies((x, y), items, copies=1, perturb=lambda v, rng: v + 0.5, seed=0)
    assert (noisy.tensors()[0][planted2[0]] == items[0][0] + 0.5).all()
