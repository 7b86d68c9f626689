"""Influence functions side by side with dattri and kronfluence: same trained model, same ground truth.

    pip install -e ".[bench]"     # kronfluence with --no-deps (it would pull torchvision, which it does not need)
    OMP_NUM_THREADS=1 python benchmarks/influence_peers.py [--only digits-mlp] [--solvers explicit,cg,...] [--skip 200]

For digits-logreg and digits-mlp (1,000 training images, 100 queries, 64 retrained 50% subsets), each solver runs
three ways: datatrace at its defaults; the peer at its defaults; and the peer with datatrace's absolute damping λ
(so that an accuracy difference is the solver's, not the damping's). CG also runs with datatrace at dattri's
10 iterations, so that both libraries are compared at equal settings (and at equal LDS). Printed: LDS [95% CI] and
the wall time of everything a user runs to get the 100 × 1,000 scores (caching training gradients / factors
included).

Peer mapping (dattri 0.3.0, kronfluence 1.0.1):
    explicit  dattri IFAttributorExplicit(regularization=λ)         the whole training set as one batch
    cg        dattri IFAttributorCG(max_iter, tol, regularization=λ) default max_iter=10
    lissa     dattri IFAttributorLiSSA(damping=λ, ...)               defaults: batch 1, depth 5,000, scale 50
    arnoldi   dattri IFAttributorArnoldi(proj_dim=rank, max_iter=2·rank, regularization=λ)
    ekfac     dattri IFAttributorEKFAC(damping=λ); kronfluence strategy "ekfac" (damping_factor=λ)
    kfac      kronfluence strategy "kfac"
Signs: dattri returns (n_train × n_query) g_trainᵀH⁻¹g_query and kronfluence (n_query × n_train) g_queryᵀH⁻¹g_train,
both with the loss as measurement: positive = proponent, as in datatrace (checked: all LDS are positive).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import tempfile
import time
import warnings
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import datatrace as dt
from datatrace.benchmarks import get


def dattri_scores(model, train, query, solver: str, **options) -> np.ndarray:
    """Scores (n_query × n_train) of dattri's influence attributor for ``solver`` with ``options``."""
    from dattri.algorithm.influence_function import (
        IFAttributorArnoldi,
        IFAttributorCG,
        IFAttributorEKFAC,
        IFAttributorExplicit,
        IFAttributorLiSSA,
    )
    from dattri.task import AttributionTask

    def loss(params, data):
        x, y = data  # dattri's LiSSA hands the labels over as floats
        return F.cross_entropy(torch.func.functional_call(model, params, x), y.long())

    classes = {
        "explicit": IFAttributorExplicit,
        "cg": IFAttributorCG,
        "lissa": IFAttributorLiSSA,
        "arnoldi": IFAttributorArnoldi,
        "ekfac": IFAttributorEKFAC,
    }
    if solver == "ekfac":  # dattri's EK-FAC finds nn.Linear layers among named submodules, not the root
        model = torch.nn.Sequential(model)
    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    attributor = classes[solver](task=task, device="cpu", **options)
    whole = DataLoader(TensorDataset(*train), batch_size=len(train[0]))  # their Hessian is per cached batch
    attributor.cache(whole)
    # All queries in one batch: dattri preconditions per query batch (the explicit solver rebuilds H for each), so
    # this is its fastest setting.
    queries = DataLoader(TensorDataset(*query), batch_size=len(query[0]))
    scores = attributor.attribute(DataLoader(TensorDataset(*train), batch_size=256), queries)
    return scores.T.detach().numpy()


def kronfluence_scores(model, train, query, strategy: str, damping: float | str | None) -> np.ndarray:
    """Scores (n_query × n_train) of kronfluence's KFAC / EK-FAC; ``damping="default"`` keeps its default."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:  # the true Fisher: labels drawn from the model
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    task = Classification()
    model = prepare_model(torch.nn.Sequential(model), task)  # kronfluence cannot wrap a root nn.Linear
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer("digits", model, task, cpu=True, disable_tqdm=True, output_dir=out)
        analyzer.fit_all_factors(
            "factors", TensorDataset(*train), per_device_batch_size=256, factor_args=FactorArguments(strategy=strategy)
        )
        score_args = ScoreArguments() if damping == "default" else ScoreArguments(damping_factor=damping)
        analyzer.compute_pairwise_scores(
            "scores",
            "factors",
            TensorDataset(*query),
            TensorDataset(*train),
            per_device_query_batch_size=len(query[0]),
            per_device_train_batch_size=256,
            score_args=score_args,
        )
        return analyzer.load_pairwise_scores("scores")["all_modules"].numpy()


#: Stands for datatrace's absolute damping λ of the same solver (from its run just before).
OURS = object()
#: Per solver: datatrace's runs at the peers' settings, ``(setting, options)``, after its run at its defaults.
DATATRACE_RUNS = {"cg": [("max_iter 10 (as dattri)", {"max_iter": 10})]}
#: Per solver: ``(library, setting, options)`` of the peer runs; datatrace runs each solver at its defaults first.
PEER_RUNS = {
    "explicit": [
        ("dattri", "defaults (regularization 0)", {}),
        ("dattri", "datatrace's λ", {"regularization": OURS}),
    ],
    "cg": [
        ("dattri", "defaults (max_iter 10, reg. 0)", {}),
        ("dattri", "datatrace's λ, max_iter 10", {"regularization": OURS}),
        ("dattri", "datatrace's λ, max_iter 200", {"regularization": OURS, "max_iter": 200}),
    ],
    "arnoldi": [
        ("dattri", "defaults (proj_dim 100, reg. 0)", {}),
        ("dattri", "datatrace's λ, proj_dim 128", {"regularization": OURS, "proj_dim": 128, "max_iter": 256}),
    ],
    "ekfac": [
        ("dattri", "defaults (damping 0)", {}),
        ("dattri", "datatrace's λ", {"damping": OURS}),
        ("kronfluence", "defaults (damping 1e-8)", {"damping": "default"}),
        ("kronfluence", "heuristic damping (None)", {"damping": None}),
        ("kronfluence", "datatrace's λ", {"damping": OURS}),
    ],
    "kfac": [
        ("kronfluence", "defaults (damping 1e-8)", {"damping": "default"}),
        ("kronfluence", "datatrace's λ", {"damping": OURS}),
    ],
    "lissa": [
        ("dattri", "defaults (damping 0)", {}),
        ("dattri", "datatrace's λ", {"damping": OURS}),
    ],
}


def runs(task, train, query, solvers, skip=()):
    """``(solver, library, setting, run(model) -> scores)``; datatrace's runs of each solver come first. Peer
    settings containing one of the strings ``skip`` are left out."""
    peers = {"dattri": dattri_scores, "kronfluence": kronfluence_scores}
    for solver, rows in PEER_RUNS.items():
        if solver not in solvers:
            continue
        ours = []

        def datatrace(model, solver=solver, ours=ours, options=None):
            attr = dt.InfluenceFunction(model, task, solver=solver, verbose=False, **(options or {})).fit(train)
            ours.append(attr.damping_abs_[0])
            return attr.score(query)

        yield solver, "datatrace", "defaults", datatrace
        for setting, options in DATATRACE_RUNS.get(solver, []):
            yield solver, "datatrace", setting, partial(datatrace, options=options)
        for library, setting, options in rows:
            if any(s in setting for s in skip):
                continue

            def peer(model, library=library, options=options, solver=solver, ours=ours):
                resolved = {k: ours[0] if v is OURS else v for k, v in options.items()}
                return peers[library](model, train, query, solver, **resolved)

            yield solver, library, setting, peer


def warm_up() -> None:
    """Pay torch.func's one-time set-up (1–2 s on the first vmap/jvp/vjp of a process) and the peers' imports (up to
    2 s) before anything is timed, so that they are charged to no run (otherwise to whichever runs first)."""
    import dattri.algorithm.influence_function  # noqa: F401
    import dattri.func.fisher  # noqa: F401
    import kronfluence.analyzer  # noqa: F401

    x, y = torch.randn(4, 2), torch.zeros(4, dtype=torch.long)
    model = torch.nn.Linear(2, 2).eval()
    dt.InfluenceFunction(model, dt.ClassificationTask(), solver="cg", verbose=False).fit((x, y)).score((x, y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run one benchmark (digits-logreg or digits-mlp)")
    parser.add_argument("--solvers", default=",".join(PEER_RUNS), help="comma-separated subset of solvers")
    parser.add_argument("--skip", default="", help="comma-separated: leave out peer settings containing these")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    warm_up()
    for name in [args.only] if args.only else ["digits-logreg", "digits-mlp"]:
        bench = get(name)
        train_data, query_data = bench.data()
        train, query = train_data.tensors(), query_data.tensors()
        gt = bench.ground_truth(workers=2, verbose=False)
        model = bench.model(seed=0)
        print(f"\n{name}")
        print(f"{'solver':<10}{'library':<13}{'setting':<34}{'LDS [95% CI]':<26}seconds")
        for solver, who, setting, run in runs(
            bench.task, train, query, args.solvers.split(","), [s for s in args.skip.split(",") if s]
        ):
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # the peers' progress bars
                    scores = run(copy.deepcopy(model))  # a fresh copy: peers register hooks and wrap modules
            except Exception as e:  # a peer failing is a result too
                print(f"{solver:<10}{who:<13}{setting:<34}failed: {type(e).__name__}: {str(e)[:60]}")
                continue
            seconds = time.perf_counter() - t0
            res = dt.eval.lds(scores, gt)
            ci = f"{res.mean:.3f} [{res.ci[0]:.3f}, {res.ci[1]:.3f}]"
            print(f"{solver:<10}{who:<13}{setting:<34}{ci:<26}{seconds:.3g}", flush=True)


if __name__ == "__main__":
    main()
