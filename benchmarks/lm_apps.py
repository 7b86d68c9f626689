"""Data selection and a contamination audit on the tiny GPT of ``tinylm-fortunes`` (issue 9's language-model figures).

Selection: the target domain is the fortunes topic ``computers``; 300 target documents are drawn from the fortunes
outside the benchmark (150 attribute the selection, 150 evaluate it). Each method picks 300 of the 2,000 training
documents by the summed proponent score over the target; a fresh TinyGPT (the benchmark's recipe, 300 steps) is trained
on every selection for 5 seeds, and the target loss (mean next-byte NLL) and next-byte accuracy are compared with a
random draw per seed and the oracle (the 131 ``computers`` documents of the pool first) at the same budget. (TRAK is
left out of the selection for time: its fit costs about as much as the 25 retrainings.)
Target: attribution-based selection beats random by more than the seed 95% interval.

Contamination: 60 of the benchmark's queries are planted into the training corpus, 20 each as a verbatim copy, a
prefix (the first quarter of the characters) and a copy with 30% of its characters replaced; the model is trained on
the 2,060 documents and every method ranks the corpus for each item. Targets: Recall@10 of the verbatim copies ≥ 0.9
for the best method; fusion ≥ each of its members. (Milder edits — half the characters, 10% replaced — are found by
every method at Recall@10 = 1, which tells the methods apart no more.)

Both are ``datatrace select`` / ``datatrace contamination`` runs; this script writes their YAML configs into ``--out``
and runs them (``--only select`` or ``--only contamination`` for one). Run::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/lm_apps.py --out /tmp/lm-apps

then ``datatrace report /tmp/lm-apps/select/run`` (or ``contamination/run``) for the qualitative page.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from datatrace.apps.experiments import ContaminationConfig, SelectConfig, load_config, run_contamination, run_select

SELECT = {
    "benchmark": "tinylm-fortunes",
    "methods": ["tfidf", "graddot", "logra"],
    "budget": 300,
    "target_topic": "computers",
    "n_target": 300,
    "strategies": ["sum"],
    "seeds": [0, 1, 2, 3, 4],
}
CONTAMINATION = {
    "benchmark": "tinylm-fortunes",
    "methods": ["tfidf", "bm25", "graddot", "trak", "logra"],
    "n_items": 60,
    "kinds": ["verbatim", "prefix", "noise"],
    "noise": 0.3,
    "fragment": 0.25,
    "ks": [1, 5, 10, 50],
    "fusions": [["trak", "tfidf"], ["logra", "tfidf"], ["graddot", "tfidf"]],
    "fusion": ["rank", "zscore"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=["select", "contamination"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, settings, cls, run in (
        ("select", SELECT, SelectConfig, run_select),
        ("contamination", CONTAMINATION, ContaminationConfig, run_contamination),
    ):
        if args.only not in (None, name):
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**settings, "out": str(args.out / name)}, sort_keys=False))
        start = time.perf_counter()
        run(load_config(path, cls), verbose=False)
        print(f"{name}: {time.perf_counter() - start:.0f} s; datatrace {name} {path}", flush=True)
        print((args.out / name / "results.json").read_text(), flush=True)


if __name__ == "__main__":
    main()
