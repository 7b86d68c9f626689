"""Contamination audit on a LoRA fine-tune of SmolLM2-135M: do attributors find the planted copies of test items?

    python benchmarks/contamination_smollm2.py [--pool 300] [--items 10] [--steps 120] [--copy verbatim|partial]
        [--threads 2] [--json F]

1. Corpus: ``--pool`` Debian fortunes (SmolLM2 tokenizer, at most 64 tokens each) plus one copy of each of
   ``--items`` other fortunes, the test items, planted at seeded random positions (ids ``planted:<fortune id>``):
   verbatim, or ``partial`` — only the second half of the item's words (the query is the whole item).
2. Fine-tuning: rank-8 LoRA adapters on the attention q/v projections of the last 6 decoder layers (24–29), AdamW
   for ``--steps`` steps of 8 documents (lr 2e-3) on the contaminated corpus. The 24 frozen layers below the
   adapters run once per document (``dt.lm.PrefixCache(model, start=24)``), for fine-tuning and attribution alike.
3. Each test item is a query (its mean next-token NLL under the fine-tuned model). TRAK (projection to 2048) and
   Grad-Cos on all adapter parameters, LoGra (rank 8 per side, EK-FAC) on the adapters' ``lora_B`` layers, and the
   surface baselines TF-IDF / BM25 rank the corpus; ``dt.apps.contamination`` reports Recall@k and MRR of the planted
   copies per method and for the rank fusion of method pairs (``trak+tfidf``, ``logra+tfidf``, ``trak+logra``).

Printed: fine-tuning and attribution times, the contamination table, and the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import datatrace as dt
from _measure import load_average

FIRST_ADAPTED = 24
FUSIONS = [("trak", "tfidf"), ("logra", "tfidf"), ("trak", "logra")]


def contaminated_corpus(tokenizer, n_pool: int, n_items: int, kind: str = "verbatim", seed: int = 0):
    """(corpus with the planted copies, test items, corpus index of each item's copy)."""
    texts, ids = dt.lm.load_fortunes(min_chars=48)
    order = np.random.default_rng(seed).permutation(len(texts))
    pool, items = order[:n_pool], order[n_pool : n_pool + n_items]
    entries = [(texts[i], ids[i]) for i in pool]
    positions = np.sort(np.random.default_rng(seed + 1).choice(n_pool + n_items, n_items, replace=False))
    for position, i in zip(positions, items, strict=True):
        words = texts[i].split(" ")
        copy = texts[i] if kind == "verbatim" else " ".join(words[len(words) // 2 :])
        entries.insert(int(position), (copy, f"planted:{ids[i]}"))
    kw = dict(max_length=64, on_overflow="truncate")
    train = dt.lm.corpus([t for t, _ in entries], tokenizer, ids=[i for _, i in entries], **kw)
    query = dt.lm.corpus([texts[i] for i in items], tokenizer, ids=[ids[i] for i in items], **kw)
    planted = [[train.ids.index(f"planted:{ids[i]}")] for i in items]
    return train, query, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--copy", choices=["verbatim", "partial"], default="verbatim")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}; {load_average()}", flush=True)
    base, tokenizer = dt.lm.smollm2()
    train, query, planted = contaminated_corpus(tokenizer, args.pool, args.items, args.copy)
    layers = range(FIRST_ADAPTED, base.config.num_hidden_layers)
    model = dt.lm.add_lora(base, rank=8, target_modules=("q_proj", "v_proj"), layers=layers, seed=0)
    prefix = dt.lm.PrefixCache(model, start=FIRST_ADAPTED)
    start = time.perf_counter()
    train_h, query_h = prefix.encode(train, verbose=False), prefix.encode(query, verbose=False)
    print(f"prefix cache of {len(train)} + {len(query)} documents: {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    dt.lm.train_causal_lm(prefix.upper, train_h, steps=args.steps, batch_size=8, lr=2e-3, seed=0)
    print(f"LoRA fine-tuning: {args.steps} steps of 8 in {time.perf_counter() - start:.0f} s", flush=True)

    task = dt.lm.CausalLMTask()
    adapters = [n for n, p in model.named_parameters() if p.requires_grad]
    lora_b = sorted({n.rpartition(".")[0] for n in adapters if "lora_B" in n})
    attributors = {
        "trak": lambda: dt.TRAK(prefix.upper, task, params=adapters, proj_dim=2048, batch_size=8, verbose=False),
        "gradcos": lambda: dt.GradCos(prefix.upper, task, params=adapters, batch_size=8, verbose=False),
        "logra": lambda: dt.LoGra(prefix.upper, task, params=lora_b, rank=8, batch_size=8, verbose=False),
    }
    scores = {}
    for name, make in attributors.items():
        start = time.perf_counter()
        scores[name] = make().fit(train_h).score(query_h)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    scores["tfidf"] = dt.lm.TfidfSimilarity().fit(train).score(query)
    scores["bm25"] = dt.lm.BM25().fit(train).score(query)
    result = dt.apps.contamination(scores, planted, ks=(1, 5, 10), fusions=FUSIONS, fusion="rank")
    rows = result.rows()
    print("| method | R@1 | R@5 | R@10 | MRR |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['R@1']:.2f} | {r['R@5']:.2f} | {r['R@10']:.2f} | {r['MRR']:.3f} |")
    print(f"{len(train)} documents, {args.items} planted {args.copy} copies; {load_average()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "args": vars(args), "load": load_average()}, f, indent=2)


if __name__ == "__main__":
    main()
