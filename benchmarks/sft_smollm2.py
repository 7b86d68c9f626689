"""SFT attribution example: LoRA-fine-tune SmolLM2-135M on a templated instruction set, then attribute its answers.

    python benchmarks/sft_smollm2.py [--examples 200] [--steps 60] [--queries 10] [--threads 2]

1. ``dt.lm.instruction_set`` builds offline instruction/response pairs from five templated task families (capitals
   of made-up countries, word reversal, upper-casing, addition, antonyms); ``dt.lm.sft_corpus`` formats them with
   SmolLM2's chat template so that only response tokens count in the loss.
2. ``dt.lm.add_lora`` puts rank-8 LoRA adapters on the q/v projections of the last 6 layers (92k trainable
   parameters) and ``dt.lm.train_causal_lm`` fine-tunes them.
3. For held-out prompts the fine-tuned model generates an answer (greedy); each prompt + generated answer is a query
   whose measurement is the NLL of the answer tokens, attributed to the SFT examples by TRAK (projection to 1024)
   and Grad-Cos over the LoRA parameters.

Printed: training/attribution times, each query's top-3 proponents, and "task match@5": the fraction of a query's
5 top proponents from the same task family (what a sensible attribution should find; chance = 1/5).
"""

from __future__ import annotations

import argparse
import time

import torch

import datatrace as dt
from _measure import Cost, load_average


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 24) -> str:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}; {load_average()}")
    base, tokenizer = dt.lm.smollm2()
    prompts, responses, ids = dt.lm.instruction_set(args.examples, seed=0)
    train = dt.lm.sft_corpus(prompts, responses, tokenizer, ids=ids, max_length=96)
    model = dt.lm.add_lora(base, rank=8, target_modules=("q_proj", "v_proj"), layers=range(24, 30), seed=0)
    start = time.perf_counter()
    dt.lm.train_causal_lm(model, train, steps=args.steps, batch_size=8, lr=2e-3, seed=0, verbose=True)
    print(f"LoRA fine-tuning: {args.steps} steps of 8 in {time.perf_counter() - start:.0f} s")

    q_prompts, _, q_ids = dt.lm.instruction_set(args.queries, seed=1)
    answers = [generate(model, tokenizer, p) for p in q_prompts]
    query = dt.lm.sft_corpus(q_prompts, answers, tokenizer, ids=q_ids, max_length=96)
    task = dt.lm.CausalLMTask()
    for name, attr in (
        ("TRAK (proj 1024)", dt.TRAK(model, task, proj_dim=1024, verbose=False)),
        ("Grad-Cos", dt.GradCos(model, task, verbose=False)),
    ):
        with Cost() as cost:
            _, top = attr.fit(train).score(query).topk(5)
        family = [[ids[j].split(":")[0] for j in row] for row in top]
        match = sum(f == q.split(":")[0] for q, row in zip(q_ids, family) for f in row) / top.size
        print(
            f"\n{name}: {attr.n_params_} LoRA parameters, fit + score {cost.seconds:.1f} s, peak +{cost.peak_mib:.0f} "
            f"MiB, task match@5 {match:.2f}; {load_average()}"
        )
        for q in range(len(q_ids)):
            shown = "; ".join(f"{prompts[j]!r} -> {responses[j]!r}" for j in top[q, :3])
            print(f"  {q_prompts[q]!r} -> {answers[q]!r}\n      top: {shown}")


if __name__ == "__main__":
    main()
