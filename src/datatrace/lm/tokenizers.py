"""Tokenisers behind one small interface: a byte-level one for the tiny GPT, and an adapter for HF tokenisers.

:func:`~datatrace.lm.corpus.corpus` needs only ``encode(text) -> list[int]`` (no special tokens), ``decode(ids)``,
``vocab_size`` and the ids of the special tokens it adds (``bos_id``, ``eos_id``, ``pad_id``; ``None`` = not added).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InputError


class ByteTokenizer:
    """UTF-8 bytes as tokens 0–255, plus ``<bos>`` = 256, ``<eos>`` = 257 and ``<pad>`` = 258 (vocabulary 259).

    Needs no fitting, so every subset of a corpus (and every retrained model) shares one vocabulary. Decoding
    replaces invalid UTF-8 (e.g. a multi-byte character cut by truncation) with U+FFFD and drops special tokens.
    """

    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """A ``transformers`` tokenizer seen through the interface above.

    ``bos_id`` is the tokenizer's BOS only if the tokenizer itself prepends it (so documents look like what the
    model was trained on); ``eos_id`` is its EOS; ``pad_id`` its PAD, else EOS (padding is never attended to by a
    causal model with right padding and never counted in the loss, so its value does not matter).
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        probe = tokenizer("a")["input_ids"]
        bos = tokenizer.bos_token_id
        self.bos_id = bos if bos is not None and probe and probe[0] == bos else None
        self.eos_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.tokenizer).__name__}, vocab_size={self.vocab_size})"


def as_tokenizer(tokenizer: Any) -> ByteTokenizer | HFTokenizer:
    """Accept a datatrace tokenizer or a ``transformers`` tokenizer (wrapped in :class:`HFTokenizer`)."""
    if isinstance(tokenizer, (ByteTokenizer, HFTokenizer)):
        return tokenizer
    if callable(tokenizer) and hasattr(tokenizer, "decode") and hasattr(tokenizer, "eos_token_id"):
        return HFTokenizer(tokenizer)
    raise InputError(
        f"tokenizer must be dt.lm.ByteTokenizer() or a transformers tokenizer, got {type(tokenizer).__name__}."
    )
