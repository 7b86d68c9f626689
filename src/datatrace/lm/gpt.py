"""A tiny GPT for tests and benchmarks: pre-LayerNorm decoder-only transformer in one readable file.

``TinyGPT()`` (byte vocabulary 259, context 64, width 64, 2 blocks of 4 heads) has about 140k parameters and trains
on a few thousand short documents in seconds on one CPU thread. Its attention is written out explicitly (a fixed
lower-triangular mask, no data-dependent control flow), so ``torch.func.vmap`` computes exact per-example gradients
through it. It has no dropout: the same weights always give the same output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions ≤ t."""

    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.register_buffer("causal", torch.tril(torch.ones(context, context, dtype=torch.bool)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, width = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(width // self.heads)
        att = att.masked_fill(~self.causal[:t, :t], float("-inf")).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, width))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))`` with a 4× GELU MLP."""

    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, context)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Decoder-only transformer returning ``(B, T, vocab_size)`` next-token logits for ``(B, T)`` token ids.

    Args:
        vocab_size: number of token ids (259 for :class:`~datatrace.lm.ByteTokenizer`).
        context: longest sequence accepted (learned position embeddings); longer input raises ``InputError``.
        width, depth, heads: embedding width, number of blocks, attention heads per block.
        seed: initialisation seed (GPT-2 style: N(0, 0.02), residual projections scaled by 1/√(2·depth)); the
            global torch RNG is left untouched.

    Module names for ``params=[...]``: ``tok``, ``pos``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``,
    ``blocks.{i}.fc``, ``blocks.{i}.out``, ``ln_f``, ``head`` (the unembedding).
    """

    def __init__(
        self, vocab_size: int = 259, context: int = 64, width: int = 64, depth: int = 2, heads: int = 4, seed: int = 0
    ):
        super().__init__()
        if width % heads:
            raise InputError(f"width {width} must be divisible by heads {heads}.")
        self.vocab_size, self.context = vocab_size, context
        self.width, self.depth, self.heads = width, depth, heads
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tok = nn.Embedding(vocab_size, width)
            self.pos = nn.Embedding(context, width)
            self.blocks = nn.ModuleList(Block(width, heads, context) for _ in range(depth))
            self.ln_f = nn.LayerNorm(width)
            self.head = nn.Linear(width, vocab_size)
            self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim >= 2:
                std = 0.02 / math.sqrt(2 * self.depth) if name.endswith(("attn.proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, input_ids: Tensor) -> Tensor:
        t = input_ids.shape[1]
        if t > self.context:
            raise InputError(f"Sequence of {t} tokens exceeds TinyGPT's context of {self.context}.")
        x = self.tok(input_ids) + self.pos.weight[:t]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def config(self) -> dict[str, int]:
        """The constructor arguments (without the seed), e.g. to rebuild the architecture before loading weights."""
        return {
            "vocab_size": self.vocab_size,
            "context": self.context,
            "width": self.width,
            "depth": self.depth,
            "heads": self.heads,
        }
