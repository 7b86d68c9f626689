"""``dt.Ensemble``: ensembles of a gradient attributor over independent, checkpoint, dropout or LoRA members.

The ensemble builds its members (``nn.Module`` each) and hands the whole list to ``attributor_factory``, so every
method combines them with its own multi-model rule, with equal weights:

- TRAK: ``mean_members[γ_qᵀ (K_m + λ_m I)⁻¹ φ_{m,i}] · mean_members Q_{m,i}`` (TRAK's ensemble rule);
- Grad-Dot, Grad-Cos, InfluenceFunction (every solver), LoGra: the mean of the members' score matrices;
- TracIn keeps its own rule, the learning-rate-weighted sum over its models.

Scores therefore keep the sign and normalisation of the attributor (positive = proponent), and an ensemble of one
member is exactly the attributor on that member. Members, for K base models and M members per base model:

- ``kind="independent"``: the K base models themselves (M = 1), each trained by ``train_fn`` with its own seed,
  optionally on its own random ``subset_fraction`` of the data (TRAK's protocol with 0.5);
- ``kind="checkpoints"``: the last M checkpoints of each of K training runs (``train_fn`` returns a list);
- ``kind="dropout"``: each base model seen through M dropout masks (:mod:`~datatrace.ensemble.dropout`); with
  ``q_only=True`` (TRAK only) the gradients and kernels come from the K clean models and the masks enter only TRAK's
  out-to-loss term Q, averaged over the K·M masked forward passes — no extra gradients (where Q is constant, as for
  a causal LM with f = −loss and Q = 1, the masks have nothing to act on and ``fit`` warns);
- ``kind="lora"``: each base model with M LoRA adapters fine-tuned briefly (:mod:`~datatrace.ensemble.lora`),
  gradients w.r.t. the adapters only.

Members compose: pass checkpoints of one run as ``models`` to ``kind="dropout"``, or combine ``subset_fraction`` with
any kind. ``fit`` records the costs in ``costs_`` (:class:`~datatrace.ensemble.costs.EnsembleCosts`).
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._utils import PeakMemory, derive_seed, model_device, track
from ..attributors.base import AUTO_PROJ_DIM, Attributor
from ..attributors.trak import TRAK
from ..data import Data, as_data, to_device
from ..errors import DatatraceWarning, InputError, NotFittedError, check_choice
from ..grads import num_parameters, select_parameters
from ..scores import Scores
from .costs import EnsembleCosts, tensor_bytes
from .dropout import MASKS, MaskedModel, check_rate, layer_widths, maskable_layers
from .lora import adapter_names, import_peft, lora_member, lora_targets

KINDS = ("independent", "checkpoints", "dropout", "lora")
TrainFn = Callable[[Data, int], "nn.Module | Sequence[nn.Module]"]


class Ensemble:
    """An ensemble of one gradient attributor over several members (see the module docstring).

    Args:
        attributor_factory: ``factory(models) -> Attributor`` given the list of member models, e.g.
            ``lambda ms: dt.TRAK(ms, task)``. Its ``task`` is also used for LoRA fine-tuning and Q-only terms.
        kind: ``"independent"``, ``"checkpoints"``, ``"dropout"`` or ``"lora"``.
        models: trained base models (``eval()`` mode); their training time is then not measured. Exclusive with
            ``train_fn``.
        train_fn: ``train_fn(data, seed) -> model`` (or a list of checkpoints, last = final, for
            ``kind="checkpoints"``); called ``n_models`` times inside ``fit`` with seeds derived from ``seed``.
        n_models: K, number of training runs (ignored when ``models`` is given: K = ``len(models)``).
        n_members: M, members per base model: checkpoints, dropout masks or LoRA adapters (1 for independent).
        subset_fraction: train each run on its own seeded random subset of this fraction of the data (``None``: all).
        rate: dropout rate in [0, 1) (``kind="dropout"``). Default 0.1: on digits-mlp (64 hidden units, 24 subsets
            × 2 seeds) 8 fixed masks at 0.1 scored 0.644 against 0.633 for the plain model, at 0.5 only 0.507; on a
            second model 0.05–0.3 gained nothing. A 784-128-10 MNIST prototype preferred 0.5: tune it per model.
        mask: ``"member"`` (one fixed mask per member) or ``"sample"`` (a mask per example).
        layers: modules whose inputs are masked (default: the model's dropout modules, else every ``nn.Linear`` but
            the first).
        q_only: TRAK only: masks enter only the out-to-loss term Q (forward passes); features from clean models.
        lora_rank, lora_targets, lora_steps, lora_lr, lora_batch_size: LoRA adapters' rank, target ``nn.Linear``
            modules (default: all), fine-tuning Adam steps, learning rate and minibatch size.
        seed: seeds the training runs, subsets, masks and adapters; the same seed gives the same scores.
        verbose: progress bars.
    """

    def __init__(
        self,
        attributor_factory: Callable[[list[nn.Module]], Attributor],
        kind: str = "independent",
        *,
        models: Sequence[nn.Module] | None = None,
        train_fn: TrainFn | None = None,
        n_models: int = 1,
        n_members: int = 1,
        subset_fraction: float | None = None,
        rate: float = 0.1,
        mask: str = "member",
        layers: Sequence[str] | None = None,
        q_only: bool = False,
        lora_rank: int = 8,
        lora_targets: Sequence[str] | None = None,
        lora_steps: int = 100,
        lora_lr: float = 1e-2,
        lora_batch_size: int = 64,
        seed: int = 0,
        verbose: bool = True,
    ):
        if not callable(attributor_factory):
            raise InputError(
                "attributor_factory must be callable: models -> attributor, e.g. lambda ms: dt.TRAK(ms, task)."
            )
        self.attributor_factory = attributor_factory
        self.kind = check_choice("kind", kind, KINDS)
        if (models is None) == (train_fn is None):
            raise InputError("Give exactly one of models=[trained models] or train_fn=(data, seed) -> model.")
        if models is not None:
            models = [models] if isinstance(models, nn.Module) else list(models)
            if not models or not all(isinstance(m, nn.Module) for m in models):
                raise InputError("models must be a non-empty list of nn.Module.")
            n_models = len(models)
        for name, value in (("n_models", n_models), ("n_members", n_members), ("lora_rank", lora_rank)):
            if not (isinstance(value, int) and value >= 1):
                raise InputError(f"{name} must be an int ≥ 1, got {value!r}.")
        if kind == "independent" and n_members != 1:
            raise InputError("kind='independent' has one member per model: raise n_models instead of n_members.")
        if kind == "checkpoints" and train_fn is None:
            raise InputError("kind='checkpoints' needs train_fn returning a run's checkpoints (a list, last = final).")
        if subset_fraction is not None:
            if train_fn is None or not 0 < subset_fraction <= 1:
                raise InputError(f"subset_fraction must be in (0, 1] and needs train_fn, got {subset_fraction!r}.")
        if q_only and kind != "dropout":
            raise InputError("q_only=True is a variant of kind='dropout'.")
        if lora_steps < 0 or lora_batch_size < 1:
            raise InputError(f"lora_steps must be ≥ 0 and lora_batch_size ≥ 1, got {lora_steps}, {lora_batch_size}.")
        self.models, self.train_fn = models, train_fn
        self.n_models, self.n_members = n_models, n_members
        self.subset_fraction = subset_fraction
        self.rate, self.mask = check_rate(rate), check_choice("mask", mask, MASKS)
        self.layers, self.q_only = layers, bool(q_only)
        self.lora_rank, self.lora_targets, self.lora_steps = lora_rank, lora_targets, lora_steps
        self.lora_lr, self.lora_batch_size = lora_lr, lora_batch_size
        self.seed, self.verbose = seed, verbose

    # -- public API -----------------------------------------------------------------------------------------------
    def fit(self, train) -> Ensemble:
        """Build (and train) the members, then fit the attributor on all of them; returns ``self``."""
        data = as_data(train, "train")
        if self.kind == "lora":
            import_peft()  # imported before the clock starts: the import is not training time
        with PeakMemory() as memory:
            t0 = time.perf_counter()
            self.base_models_ = self._base_models(data)
            finals = [run[-1] for run in self.base_models_]
            self.members_ = self._members(finals, data)
            t1 = time.perf_counter()
            attributor = self.attributor_factory(finals if self.q_only else self.members_)
            if self.q_only and not isinstance(attributor, TRAK):
                raise InputError(f"q_only=True needs a TRAK attributor, got {type(attributor).__name__}.")
            if self.kind == "lora":  # gradients w.r.t. the adapters only
                attributor.params = adapter_names(self.members_[0])
            check_capacity(attributor, data)
            self.attributor_ = attributor.fit(data)
            if self.q_only:
                self.q_ = self._q_only_terms(finals, data)
            t2 = time.perf_counter()
        self.costs_ = EnsembleCosts(
            kind=self.kind + ("-q_only" if self.q_only else ""),
            n_members=len(self.members_),
            train_s=t1 - t0,
            fit_s=t2 - t1,
            peak_mem_bytes=memory.peak_bytes,
            weight_bytes=self._weight_bytes(),
            feature_bytes=self._feature_bytes(),
            models_given=self.models is not None,
        )
        return self

    def score(self, query) -> Scores:
        """Combined scores ``(n_query, n_train)``, sign and normalisation of the attributor (positive = proponent)."""
        if not hasattr(self, "attributor_"):
            raise NotFittedError("Ensemble is not fitted; call .fit(train) before .score(query).")
        with PeakMemory() as memory:
            t0 = time.perf_counter()
            if self.q_only:
                scores = self._score_q_only(as_data(query, "query"))
            else:
                scores = self.attributor_.score(query)
            self.costs_.score_s = time.perf_counter() - t0
        self.costs_.peak_mem_bytes = max(self.costs_.peak_mem_bytes, memory.peak_bytes)
        scores.metadata["ensemble"] = self.describe()
        return scores

    def describe(self) -> dict[str, Any]:
        """The ensemble's settings and combination rule (stored in the scores' metadata)."""
        info: dict[str, Any] = {
            "kind": self.kind,
            "n_models": self.n_models,
            "n_members": self.n_members,
            "subset_fraction": self.subset_fraction,
            "seed": self.seed,
            "combination": "the attributor's own multi-model rule over all members, equal weights",
        }
        if self.kind == "dropout":
            info.update(rate=self.rate, mask=self.mask, layers=self.layers_, q_only=self.q_only)
        if self.kind == "lora":
            info.update(lora_rank=self.lora_rank, lora_targets=self.layers_, lora_steps=self.lora_steps)
        return info

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed to ``__init__``."""
        return {n: getattr(self, n) for n in inspect.signature(type(self).__init__).parameters if n != "self"}

    # -- members --------------------------------------------------------------------------------------------------
    def _base_models(self, data: Data) -> list[list[nn.Module]]:
        """Per training run, its models: the last M checkpoints (``kind="checkpoints"``) or ``[final model]``."""
        if self.models is not None:
            return [[m] for m in self.models]
        runs, n = [], len(data)
        for r in track(range(self.n_models), "ensemble: training models", self.n_models, self.verbose):
            subset = data
            if self.subset_fraction is not None:  # the same subsets and seeds as TRAK-K in `datatrace bench`
                rng = np.random.default_rng(derive_seed(self.seed, "half-model", r))
                subset = data.subset(np.sort(rng.choice(n, max(1, int(n * self.subset_fraction)), replace=False)))
            out = self.train_fn(subset, derive_seed(self.seed, r) % 2**31)
            checkpoints = [out] if isinstance(out, nn.Module) else list(out)
            if self.kind == "checkpoints":
                if len(checkpoints) < self.n_members:
                    raise InputError(
                        f"kind='checkpoints' with n_members={self.n_members} needs train_fn to return at least that "
                        f"many checkpoints; it returned {len(checkpoints)}."
                    )
                runs.append(checkpoints[-self.n_members :])
            else:
                runs.append(checkpoints[-1:])
        return runs

    def _members(self, finals: list[nn.Module], data: Data) -> list[nn.Module]:
        if self.kind == "checkpoints":
            return [m for run in self.base_models_ for m in run]
        if self.kind == "independent":
            return finals
        if self.kind == "dropout":
            self.layers_ = maskable_layers(finals[0], self.layers)
            inputs = to_device(data.batch(slice(0, 1)), model_device(finals[0]))[:-1]
            widths = layer_widths(finals[0], self.layers_, inputs)
            return [
                MaskedModel(base, self.layers_, widths, self.rate, self.mask, derive_seed(self.seed, "mask", k, m))
                for k, base in enumerate(finals)
                for m in range(self.n_members)
            ]
        self.layers_ = lora_targets(finals[0], self.lora_targets)
        task = self.attributor_factory(finals[:1]).task
        pairs = [(k, m) for k in range(len(finals)) for m in range(self.n_members)]
        return [
            lora_member(
                finals[k],
                data,
                task,
                targets=self.layers_,
                rank=self.lora_rank,
                steps=self.lora_steps,
                lr=self.lora_lr,
                batch_size=self.lora_batch_size,
                seed=derive_seed(self.seed, "lora", k, m) % 2**31,
            )
            for k, m in track(pairs, "ensemble: fine-tuning LoRA adapters", len(pairs), self.verbose)
        ]

    # -- Q-only dropout (TRAK) ------------------------------------------------------------------------------------
    def _q_only_terms(self, finals: list[nn.Module], data: Data) -> np.ndarray:
        """Q per clean model, averaged over its M masked forward passes: ``(K, n_train)``."""
        task, batch_size = self.attributor_.task, self.attributor_.batch_size
        q = np.zeros((len(finals), len(data)), dtype=np.float64)
        per_model = self.n_members
        for j, member in enumerate(track(self.members_, "Q-only dropout: forward passes", None, self.verbose)):
            device = model_device(member)
            with torch.no_grad():
                for off, batch in data.batches(batch_size):
                    values = task.output_to_loss(member, to_device(batch, device))
                    q[j // per_model, off : off + len(values)] += values.double().cpu().numpy() / per_model
        if np.all(q == q.flat[0]):
            warnings.warn(
                f"q_only=True changes nothing here: {type(task).__name__}'s out-to-loss term Q is the constant "
                f"{q.flat[0]:g} whatever the mask (e.g. a causal LM, where TRAK's f = −loss), so the scores are the "
                "clean models' TRAK. Use kind='dropout' without q_only to mask the gradients.",
                DatatraceWarning,
                stacklevel=3,
            )
        return q.astype(np.float32)

    def _score_q_only(self, query: Data) -> Scores:
        # TRAK's scoring with the stored features of the clean models and the Q-only dropout terms in place of Q.
        attr = self.attributor_
        train = [{"phi": store["phi"], "q": q} for store, q in zip(attr.stores_, self.q_)]
        return attr._scores(attr._query_features(query, attr.task.measurement), train)

    # -- costs ----------------------------------------------------------------------------------------------------
    def _weight_bytes(self) -> int:
        bases = [m for run in self.base_models_ for m in run]
        total = sum(tensor_bytes([*m.parameters(), *m.buffers()]) for m in bases)
        for member in self.members_:
            if isinstance(member, MaskedModel) and member.mask == "member":
                total += tensor_bytes(member.buffers(recurse=False))
            elif self.kind == "lora":
                total += tensor_bytes(p for p in member.parameters() if p.requires_grad)
        return total

    def _feature_bytes(self) -> int:
        stored = sum(store[name].nbytes for store in self.attributor_.stores_ for name in store.header["arrays"])
        return stored + (self.q_.nbytes if self.q_only else 0)

    def __repr__(self) -> str:
        return f"Ensemble(kind={self.kind!r}, n_models={self.n_models}, n_members={self.n_members}, seed={self.seed})"


def check_capacity(attributor: Attributor, data: Data) -> None:
    """Refuse an ensemble whose training features would not fit on the disk of the feature stores.

    Features are always written to on-disk stores (memory-mapped), so only disk space bounds K × M; the estimate is
    ``members × n_train × (feature dimension + 1) × 4`` bytes, the dimension bounded by ``proj_dim``.
    """
    model = attributor.models[0]
    n_params = num_parameters(model, select_parameters(model, attributor.params))
    dim = attributor.proj_dim
    if dim == "auto":
        dim = AUTO_PROJ_DIM if n_params > AUTO_PROJ_DIM else n_params
    dim = n_params if dim is None else dim
    need = len(attributor.models) * len(data) * (dim + 1) * 4
    where = Path(attributor.cache_dir) if attributor.cache_dir is not None else Path(tempfile.gettempdir())
    existing = next(p for p in (where, *where.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise InputError(
            f"The ensemble's {len(attributor.models)} members need ≈ {need:,} bytes of training features "
            f"({len(data)} examples × {dim} dimensions each), but only {free:,} bytes are free at {existing}. "
            "Use fewer members, a smaller proj_dim, or a cache_dir on a larger disk."
        )
