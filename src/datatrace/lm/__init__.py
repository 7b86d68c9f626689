"""Language models: the causal-LM task, a tiny GPT, tokenisers, text corpora and HF model support."""

from .corpus import Corpus, corpus, token_queries
from .gpt import TinyGPT
from .hf import check_vocab, load_gguf, smollm2
from .prefix import PrefixCache
from .sft import add_lora, instruction_set, sft_corpus
from .sources import MissingDependencyError, load_fortunes, load_kjv
from .surface import BM25, TfidfSimilarity
from .synthetic import synthetic_texts
from .task import CausalLMTask
from .tokenizers import ByteTokenizer, HFTokenizer
from .train import train_causal_lm

__all__ = [
    "BM25",
    "ByteTokenizer",
    "CausalLMTask",
    "Corpus",
    "HFTokenizer",
    "MissingDependencyError",
    "PrefixCache",
    "TfidfSimilarity",
    "TinyGPT",
    "add_lora",
    "check_vocab",
    "corpus",
    "instruction_set",
    "load_fortunes",
    "load_gguf",
    "load_kjv",
    "sft_corpus",
    "smollm2",
    "synthetic_texts",
    "token_queries",
    "train_causal_lm",
]
