"""STRIDE as an attributor: ``fit`` = subset design + operator training, ``score`` = measurement + recovery."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

from .._utils import check_eval_mode, model_device, model_fingerprint, output_tensor
from .._version import __version__
from ..attributors.base import EXECUTION_PARAMS, Attributor
from ..data import Data, as_data, to_device
from ..errors import InputError, NotFittedError, check_choice
from ..scores import Scores
from .design import Design, auto_size, design
from .measure import responses
from .operators import MODES, SteeredModel, default_mode, resolve_layer
from .recovery import DEFAULT_ALPHA, SCAN_CHUNK, SOLVERS, recover
from .training import TrainingConfig, load_operators, save_operators, train_operators

#: The tie-breaker's largest contribution, relative to the smallest non-zero Lasso score of the same query.
TIE_BREAK_SCALE = 0.1


class STRIDE(Attributor):
    """STRIDE: attribution by sparse recovery from learned steering operators (Dagli et al., 2026).

    ``fit`` assigns every training example to ``degree`` of ``n_subsets`` random subsets and trains one low-rank
    steering operator per subset on the frozen model (:mod:`~datatrace.stride.operators`,
    :mod:`~datatrace.stride.training`). ``score`` measures how each operator changes each query's measurement,
    y_{x,k} = m_base(x) − m_k(x), and recovers per-example influence by a Lasso on the membership matrix
    (:mod:`~datatrace.stride.recovery`).

    Scores: ``score[q, i]`` = ŵ_i(q), the Lasso estimate of example i's additive share of the decrease of query q's
    measurement under the operators of the subsets that contain i (units of the measurement, not divided by n).
    Positive = proponent. At most K examples per query are non-zero; with ``tie_break`` the others are ordered by
    the back-projection Mᵀ(y − ȳ)/d (each example's mean response over its subsets), scaled so that it never exceeds
    ``TIE_BREAK_SCALE`` times the query's smallest non-zero |ŵ_i|.

    Args:
        model: one trained model in ``eval()`` mode (its weights are never changed).
        task: the task: operators are trained on its loss; scores explain its measurement.
        n_subsets: K; ``None`` = :func:`~datatrace.stride.design.auto_size` (1000 for n ≥ 1000, else n).
        degree: d, subsets per example; ``None`` = auto_size (10 for n ≥ 40).
        rank: r, rank of the shared basis; ``None`` = ``DEFAULT_RANK[mode]`` (at most the tapped feature width): 16
            in activation mode (the paper's released operators), 64 in logit mode, where a_k ∈ R^{r×C} stays small
            and the refined operators gain from the larger rank (benchmarks/stride_lds.py ablation).
        layer: where the operators act: index into the model's layer stack, module name, or ``None`` (activation
            mode: layer ⌊0.625·L⌉ − 1; logit mode: the input of the last layer).
        mode: ``"activation"``, ``"logit"`` or ``"auto"`` (logit for ``(B, C)`` outputs, activation for sequences).
        steps, subsets_per_step, examples_per_subset, lr, basis_lr, stability, linearity, patience, refine,
            damping: operator training (``patience`` > 0: early stopping on held-out subset members, no query LDS;
            ``refine``: in logit mode, solve each a_k to the minimum of its objective after the Adam phase;
            ``damping``: ridge on the a_k in that solve, relative to the mean eigenvalue of the stability
            curvature), see :class:`~datatrace.stride.training.TrainingConfig`.
        alpha: Lasso λ as a fraction of λ_max per query, or ``"heldout"`` (chosen on held-out subsets).
        solver: ``"auto"`` (coordinate descent on the CPU at moderate n·Q, else FISTA), ``"fista"``, ``"cd"`` or
            ``"omp"``; see :mod:`~datatrace.stride.recovery`.
        tie_break: order the examples the Lasso leaves at 0 by their back-projection.
        seed: seeds the design, the basis, the training draws and the recovery.
        batch_size: queries per measurement batch.
        cache_dir: directory where trained operators are saved (safetensors + JSON header) and reused by a rerun
            with the same model, data and settings; a directory from another run is refused.
        verbose: progress bars.
    """

    method = "stride"
    score_only_params = ("alpha", "solver", "tie_break")

    def __init__(
        self,
        model,
        task,
        *,
        n_subsets: int | None = None,
        degree: int | None = None,
        rank: int | None = None,
        layer: int | str | None = None,
        mode: str = "auto",
        steps: int = TrainingConfig.steps,
        subsets_per_step: int = TrainingConfig.subsets_per_step,
        examples_per_subset: int = TrainingConfig.examples_per_subset,
        lr: float = TrainingConfig.lr,
        basis_lr: float = TrainingConfig.basis_lr,
        stability: float = TrainingConfig.stability,
        linearity: float = TrainingConfig.linearity,
        patience: int = TrainingConfig.patience,
        refine: str = TrainingConfig.refine,
        damping: float = TrainingConfig.damping,
        alpha: float | str = DEFAULT_ALPHA,
        solver: str = "auto",
        tie_break: bool = True,
        seed: int = 0,
        batch_size: int = 64,
        cache_dir=None,
        verbose: bool = True,
    ):
        super().__init__(model, task, seed=seed, batch_size=batch_size, cache_dir=cache_dir, verbose=verbose)
        if len(self.models) != 1:
            raise InputError("STRIDE attributes one model; pass a single nn.Module.")
        if rank is not None and rank < 1:
            raise InputError(f"rank must be ≥ 1, got {rank}.")
        self.n_subsets, self.degree, self.rank, self.layer = n_subsets, degree, rank, layer
        self.mode = check_choice("mode", mode, ("auto", *MODES))
        self.steps, self.subsets_per_step, self.examples_per_subset = steps, subsets_per_step, examples_per_subset
        self.lr, self.basis_lr, self.stability, self.linearity = lr, basis_lr, stability, linearity
        self.patience, self.refine, self.damping = patience, refine, damping
        self.training_config = TrainingConfig(
            steps,
            subsets_per_step,
            examples_per_subset,
            lr,
            basis_lr,
            stability,
            linearity,
            patience=patience,
            refine=refine,
            damping=damping,
        )
        self.alpha, self.solver, self.tie_break = alpha, check_choice("solver", solver, SOLVERS), tie_break
        if not (alpha == "heldout" or (isinstance(alpha, (int, float)) and alpha > 0)):
            raise InputError(f"alpha must be > 0 (λ = alpha·λ_max; λ ≤ 0 is not a Lasso) or 'heldout', got {alpha!r}.")

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed to ``__init__`` (excluding the model and task)."""
        names = [p for p in inspect.signature(STRIDE.__init__).parameters if p not in ("self", "model", "task")]
        return {n: getattr(self, n) for n in names}

    # -- fit ------------------------------------------------------------------------------------------------------
    def fit(self, train) -> STRIDE:
        """Draw the subset design and train (or load from ``cache_dir``) the steering operators; returns ``self``."""
        data = as_data(train, "train")
        model = self.models[0]
        check_eval_mode(model)
        self._check_task(data)
        n = len(data)
        auto_k, auto_d = auto_size(n)
        self.n_subsets_ = auto_k if self.n_subsets is None else self.n_subsets
        self.degree_ = min(auto_d, self.n_subsets_) if self.degree is None else self.degree
        self.design_ = design(n, self.n_subsets_, self.degree_, self.seed)
        probe = to_device(data.batch(slice(0, min(2, n))), model_device(model))
        with torch.no_grad():
            outputs = output_tensor(model(*probe[:-1]))
        self.mode_ = default_mode(outputs) if self.mode == "auto" else self.mode
        tap = resolve_layer(model, self.layer, self.mode_)
        self.layer_ = tap.name
        self.steered_ = SteeredModel(model, tap, self.mode_)
        ops = self.steered_.build(self.n_subsets_, self.rank, probe[:-1], self.seed)
        self.rank_ = ops.rank
        self.n_train_, self.train_fingerprint_ = n, data.fingerprint()
        self.n_params_ = sum(p.numel() for p in ops.parameters())
        self.feature_dim_ = self.n_subsets_
        meta = self._operator_meta(model, ops)
        path = None if self.cache_dir is None else Path(self.cache_dir) / "stride-operators"
        start = time.perf_counter()
        self.loaded_ = path is not None and load_operators(path, ops, self.design_, meta)
        self.training_log_ = None
        if not self.loaded_:
            self.training_log_ = train_operators(
                self.steered_, self.task, data, self.design_, self.training_config, self.seed, self.verbose
            )
            if path is not None:
                save_operators(path, ops, self.design_, meta)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _operator_meta(self, model, ops) -> dict[str, Any]:
        skip = (*EXECUTION_PARAMS, *self.score_only_params)
        hyper = {k: v for k, v in self.get_params().items() if k not in skip}
        return {
            "method": self.method,
            "config": {k: v if isinstance(v, (int, float, str, type(None))) else repr(v) for k, v in hyper.items()},
            "n_train": self.n_train_,
            "n_subsets": self.n_subsets_,
            "degree": self.degree_,
            "mode": self.mode_,
            "layer": self.layer_,
            "dims": {"in_dim": ops.in_dim, "out_dim": ops.out_dim, "rank": ops.rank},
            "seed": self.seed,
            "task": repr(self.task),
            "model_fingerprint": model_fingerprint(model),
            "data_fingerprint": self.train_fingerprint_,
            "datatrace_version": __version__,
        }

    # -- score ----------------------------------------------------------------------------------------------------
    def score(self, query) -> Scores:
        """Scores of every query against every training example; positive = proponent."""
        self._check_fitted()
        return self._scores_of(as_data(query, "query"), self.task.measurement)

    def responses(self, query, fn=None) -> np.ndarray:
        """The ``(n_query, K)`` responses y[x, k] = m_base(x) − m_k(x) of the fitted operators."""
        self._check_fitted()
        fn = fn or self.task.measurement
        return responses(self.steered_, fn, as_data(query, "query"), self.batch_size, verbose=self.verbose).numpy()

    def self_influence(self, data) -> np.ndarray:
        """Each training example's score against itself, with its training loss as the measurement.

        Only defined for the training set (an example outside it belongs to no subset).
        """
        self._check_fitted()
        data = as_data(data, "data")
        if data.fingerprint() != self.train_fingerprint_:
            raise InputError("STRIDE self-influence is defined for the training set only: pass the data given to fit.")
        return self._scores_of(data, self.task.loss).diagonal()

    def _scores_of(self, data: Data, fn) -> Scores:
        Y = responses(self.steered_, fn, data, self.batch_size, verbose=self.verbose)
        device = model_device(self.models[0])
        W, info = recover(
            self.design_,
            Y.T,
            solver=self.solver,
            alpha=self.alpha,
            seed=self.seed,
            device=device,
            verbose=self.verbose,
            return_info=True,
        )
        meta = self._metadata(
            n_subsets=self.n_subsets_,
            degree=self.degree_,
            mode=self.mode_,
            layer=self.layer_,
            subset_sizes=self.design_.balance(),
            training=self.training_config.as_dict(),
            operators_loaded_from_cache=self.loaded_,
            lasso={
                "solver": info.solver,
                "alpha": info.alpha.tolist(),
                "lam": info.lam.tolist(),
                "duality_gap": info.gap.tolist(),
                "n_iter": info.n_iter.tolist(),
                "n_nonzero": info.n_nonzero.tolist(),
            },
            normalisation="Lasso ŵ in units of the measurement (not divided by n); zeros ordered by the back-"
            "projection when tie_break",
        )
        tie = _tie_breaker(self.design_, Y, W, info.lam) if self.tie_break else None
        return _sparse_scores(W, self.design_, tie, meta)

    def _check_fitted(self) -> None:
        if not hasattr(self, "steered_"):
            raise NotFittedError("STRIDE is not fitted; call .fit(train) before .score(query).")


def _tie_breaker(design: Design, Y: torch.Tensor, W: scipy.sparse.csc_matrix, lam: np.ndarray):
    """``(table, scale)``: centred responses ``(K, Q)`` and the per-query factor of their back-projection."""
    table = (Y - Y.mean(1, keepdim=True)).T.contiguous()
    largest = torch.zeros(Y.shape[0])
    for lo in range(0, design.n_train, SCAN_CHUNK):
        chunk = _backprojection(design, table, slice(lo, lo + SCAN_CHUNK))
        largest = torch.maximum(largest, chunk.abs().amax(0))
    absw = abs(W).tocsc()
    smallest = np.array([absw.data[absw.indptr[q] : absw.indptr[q + 1]].min(initial=np.inf) for q in range(W.shape[1])])
    reference = torch.from_numpy(np.where(np.isfinite(smallest), smallest, lam / design.degree)).float()
    return table, TIE_BREAK_SCALE * reference / largest.clamp_min(1e-30)


def _backprojection(design: Design, table: torch.Tensor, cols: slice) -> torch.Tensor:
    """Mᵀ(y − ȳ)/d of training examples ``cols`` (each one's mean response over its subsets): ``(len(cols), Q)``."""
    subsets = torch.from_numpy(design.subsets[cols].astype(np.int64))
    return F.embedding_bag(subsets, table, mode="mean")


def _sparse_scores(W: scipy.sparse.csc_matrix, design: Design, tie, meta: dict) -> Scores:
    """Scores ``W.T`` (+ the scaled back-projection), computed block by block."""
    rows = W.T.tocsr()  # (Q, n)

    def block(r: slice, c: slice) -> torch.Tensor:
        out = torch.from_numpy(rows[r, c].toarray())
        if tie is not None:
            table, scale = tie
            out += (_backprojection(design, table[:, r].contiguous(), c) * scale[r]).T
        return out

    return Scores(block, rows.shape, meta)
