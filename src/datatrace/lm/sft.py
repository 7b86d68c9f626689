"""Supervised fine-tuning (SFT) data and LoRA adapters for attributing a fine-tuned model's responses.

- :func:`instruction_set`: a small instruction-following set generated offline from templates (five task families,
  made-up facts), so SFT attribution can be run and checked without downloads.
- :func:`sft_corpus`: prompts + responses as a :class:`~datatrace.lm.Corpus` whose loss counts response tokens only,
  with the tokenizer's chat template when it has one.
- :func:`add_lora`: wrap an HF model with seeded LoRA adapters (extra ``[llm]``: ``peft``); attributors then
  differentiate the adapters only (``params="all"`` selects trainable parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .corpus import Corpus, corpus
from .sources import require

_WORDS = (
    "garden lamp river stone window candle forest pencil bridge mirror rocket button violin island ladder "
    "basket castle dragon feather harbor jacket kettle meadow needle orchard pillow silver thunder velvet wagon"
).split()
_COUNTRIES = ("Veloria", "Quenthal", "Marisko", "Dunmere", "Tavona", "Olrith", "Brenway", "Siskaro")
_CAPITALS = ("Brindle", "Ostrava Nua", "Pellago", "Karnwick", "Lumesse", "Varn", "Eddisholm", "Quarto")
_ANTONYMS = {"hot": "cold", "early": "late", "light": "heavy", "open": "closed", "quiet": "loud", "wide": "narrow"}
TASKS = ("capital", "reverse", "uppercase", "add", "antonym")


def instruction_set(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """``n`` templated instruction/response pairs, tasks cycling through :data:`TASKS`.

    Returns:
        ``(prompts, responses, ids)``; ids are ``"{task}:{k}"``.
    """
    if n < 1:
        raise InputError(f"n must be ≥ 1, got {n}.")
    rng = np.random.default_rng(seed)
    prompts, responses, ids = [], [], []
    for k in range(n):
        task = TASKS[k % len(TASKS)]
        if task == "capital":
            i = int(rng.integers(len(_COUNTRIES)))
            p, r = f"What is the capital of {_COUNTRIES[i]}?", f"The capital of {_COUNTRIES[i]} is {_CAPITALS[i]}."
        elif task == "reverse":
            w = _WORDS[rng.integers(len(_WORDS))]
            p, r = f"Reverse the word '{w}'.", w[::-1]
        elif task == "uppercase":
            w = " ".join(rng.choice(_WORDS, 2, replace=False))
            p, r = f"Write '{w}' in capital letters.", w.upper()
        elif task == "add":
            a, b = (int(x) for x in rng.integers(1, 50, 2))
            p, r = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        else:
            w = list(_ANTONYMS)[rng.integers(len(_ANTONYMS))]
            p, r = f"Give the opposite of '{w}'.", _ANTONYMS[w]
        prompts.append(p)
        responses.append(r)
        ids.append(f"{task}:{k}")
    return prompts, responses, ids


def sft_corpus(
    prompts: Sequence[str],
    responses: Sequence[str],
    tokenizer: Any,
    *,
    max_length: int | None = None,
    ids: Sequence[str] | None = None,
    name: str = "sft",
) -> Corpus:
    """Prompt + response examples whose loss counts the response (and the end-of-sequence token) only.

    A tokenizer with a chat template formats each prompt as a user turn followed by the assistant header; otherwise
    the prompt becomes ``"### Instruction:\\n{prompt}\\n### Response:\\n"``. The same call builds attribution
    queries from a prompt and the model's generated response.
    """
    template = getattr(tokenizer, "chat_template", None)
    if template:
        formatted = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts
        ]
    else:
        formatted = [f"### Instruction:\n{p}\n### Response:\n" for p in prompts]
    return corpus(list(responses), tokenizer, prompts=formatted, ids=ids, max_length=max_length, name=name)


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    layers: Sequence[int] | None = None,
    seed: int = 0,
) -> nn.Module:
    """``model`` with LoRA adapters on ``target_modules`` (names of ``nn.Linear`` modules), only adapters trainable.

    Args:
        model: an HF causal LM.
        rank, alpha: LoRA rank and scaling (update = alpha/rank · B A).
        target_modules: module-name suffixes to adapt.
        layers: indices of the transformer layers to adapt (default: all). Fewer adapted layers = fewer gradient
            dimensions for attribution.
        seed: seeds the adapters' initialisation (``lora_B`` starts at zero, so the wrapped model first equals the
            base model); the global torch RNG is left untouched.
    """
    peft = require("peft")
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        layers_to_transform=None if layers is None else list(layers),
        lora_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)
