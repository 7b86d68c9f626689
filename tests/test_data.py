import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import datatrace as dt


class PairDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_tuple_and_dataset_give_the_same_batches():
    x, y = torch.randn(10, 3), torch.arange(10)
    a, b = dt.Data((x, y)), dt.Data(PairDataset(x, y))
    assert len(a) == len(b) == 10
    for (oa, ba), (ob, bb) in zip(a.batches(4), b.batches(4)):
        assert oa == ob
        torch.testing.assert_close(ba, bb)
    torch.testing.assert_close(a.batch([3, 1]), b.batch([3, 1]))


def test_numpy_inputs_are_converted():
    data = dt.Data((np.ones((4, 2), dtype=np.float32), np.arange(4)))
    x, y = data.tensors()
    assert x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 3]


def test_subset_keeps_order():
    x, y = torch.randn(10, 3), torch.arange(10)
    for data in (dt.Data((x, y)), dt.Data(TensorDataset(x, y))):
        sub = data.subset([7, 2])
        assert sub.tensors()[1].tolist() == [7, 2]


def test_mismatched_lengths_are_refused():
    with pytest.raises(dt.InputError, match=r"different lengths \[5, 4\]"):
        dt.Data((torch.randn(5, 2), torch.arange(4)), name="train")


def test_empty_and_unsupported_inputs_are_refused():
    with pytest.raises(dt.InputError, match="empty"):
        dt.Data((torch.randn(0, 2), torch.arange(0)))
    with pytest.raises(dt.InputError, match="tuple of tensors"):
        dt.Data("not data")


def test_fingerprint_is_stable_and_content_sensitive():
    x, y = torch.randn(10, 3), torch.arange(10)
    assert dt.Data((x, y)).fingerprint() == dt.Data((x.clone(), y.clone())).fingerprint()
    x2 = x.clone()
    x2[4, 1] += 1e-3
    assert dt.Data((x2, y)).fingerprint() != dt.Data((x, y)).fingerprint()
    assert dt.Data(PairDataset(x, y)).fingerprint() == dt.Data(PairDataset(x, y)).fingerprint()
