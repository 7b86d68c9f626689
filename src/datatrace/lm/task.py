"""The causal language-modelling task: token-weighted next-token negative log-likelihood.

A batch is ``(input_ids, loss_mask)``:

- ``input_ids``: ``(B, T)`` integer token ids, **right-padded** (a causal model never attends from a real token to a
  later pad, so no attention mask is needed and pad values do not matter);
- ``loss_mask``: ``(B, T)`` float (or bool) weight ω_t ≥ 0 of predicting token t from tokens ``< t``. Position 0
  has no prediction and its weight is ignored; pads and prompt tokens have weight 0.

Per-example loss: ``L = Σ_t ω_t · NLL_t / Σ_t ω_t`` — the weighted mean NLL (nats per loss token) over the
sequence's loss tokens, so every example counts equally whatever its length, and a model trained on the batch mean of
``L`` is trained on exactly this task. With a 0/1 mask this equals the HF models' own ``loss`` for one sequence with
``labels = input_ids`` and ``-100`` where the mask is 0. An example without any loss token has loss 0 and no
gradient (:func:`~datatrace.lm.corpus.corpus` never produces one; the task refuses it outside ``torch.func``).

A batch may also be ``(model_input, input_ids, loss_mask)``: the model is called on ``model_input`` (e.g. the cached
hidden states of :class:`~datatrace.lm.prefix.PrefixCache`) and ``input_ids`` only supply the targets.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import model_device, output_tensor
from ..errors import InputError
from ..task import Task

Batch = tuple[Tensor, ...]


def logits_of(model: nn.Module, inputs: Tensor) -> Tensor:
    """``(B, T, V)`` next-token logits of a causal LM: a tensor, a tuple (first item) or an HF output (``.logits``)."""
    out = output_tensor(model(inputs))
    if not isinstance(out, Tensor):
        raise InputError(
            f"The model returned {type(out).__name__}; expected logits (a tensor) or an output with .logits."
        )
    return out


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model accepts: ``model.context`` (tiny GPT) or ``config.max_position_embeddings``."""
    if isinstance(getattr(model, "context", None), int):
        return model.context
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def vocab_size_of(model: nn.Module) -> int | None:
    """The model's vocabulary: ``model.vocab_size`` (tiny GPT) or the size of an HF model's input embedding."""
    if isinstance(getattr(model, "vocab_size", None), int):
        return model.vocab_size
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings().num_embeddings
    return None


def token_nll(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Per-token NLL of predicting tokens 1…T−1 and their weights, both ``(B, T−1)``."""
    input_ids, weights = _check_batch(model, batch)
    if not _inside_transform(input_ids):
        _check_values(vocab_size_of(model), input_ids, weights)
    logits = logits_of(model, batch[0])[:, :-1]
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape), weights


def token_hits(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Whether the arg-max prediction of each of tokens 1…T−1 is right (1.0 / 0.0) and the tokens' weights, both
    ``(B, T−1)``: the accuracy counterpart of :func:`token_nll`."""
    input_ids, weights = _check_batch(model, batch)
    hits = logits_of(model, batch[0])[:, :-1].argmax(dim=-1) == input_ids[:, 1:]
    return hits.to(weights.dtype), weights


def token_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Per-example weighted mean ``Σ_t ω_t v_t / Σ_t ω_t`` of per-token values, ``(B, T−1)`` → ``(B,)``."""
    return (values * weights).sum(dim=1) / _normalised(weights)


class CausalLMTask(Task):
    """Next-token prediction: per-example loss = token-weighted mean NLL over the loss tokens (see module docs).

    The measurement defaults to the same loss (lower is better), so attributing a prompt + continuation query
    explains the NLL of the continuation tokens only. TRAK's output function is the exact default ``f = −L``
    with out-to-loss term ``Q = 1``.
    """

    #: Sampled next tokens per position in :meth:`sampled_output_hessian_factors`.
    fisher_samples = 1

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return token_mean(*token_nll(model, batch))

    def sampled_output_hessian_factors(self, logits: Tensor, batch: Batch) -> Tensor:
        """``(B, T·V, C)`` random factors of the loss Hessian w.r.t. the logits, for KFAC / EK-FAC (and LoGra).

        The Hessian of L = Σ_t ω_t NLL_t / Σ_t ω_t is block-diagonal over positions, with blocks
        ``(ω_t/Σω)(diag p_t − p_t p_tᵀ)``. Drawing a next token y_t ~ p_t at every position independently, the
        column ``√(ω_t/Σω)(e_{y_t} − p_t)`` has exactly that second moment, and different positions are uncorrelated
        (the true Fisher, as in kronfluence); C = :attr:`fisher_samples` columns, each divided by √C. One backward
        pass per column instead of one per logit (T·V). The draws are seeded by the batch's token ids, so a batch
        always gets the same sample.
        """
        input_ids, mask = batch[-2:]  # already checked by the loss that produced the logits
        weights = mask[:, 1:].to(torch.float64)
        b, t, v = logits.shape
        scale = (weights / _normalised(weights)[:, None]).sqrt()
        scale = scale.to(logits.dtype)[..., None]
        probs = logits[:, :-1].detach().softmax(dim=-1)
        seed = int.from_bytes(hashlib.sha256(input_ids.cpu().numpy().tobytes()).digest()[:8], "little") % 2**63
        gen = torch.Generator(device=logits.device).manual_seed(seed)
        columns = []
        for _ in range(self.fisher_samples):
            drawn = torch.multinomial(probs.reshape(-1, v), 1, generator=gen).view(b, t - 1, 1)
            column = torch.zeros_like(logits)
            column[:, :-1] = -probs * scale
            column[:, :-1].scatter_add_(-1, drawn, scale)  # √(ω_t/Σω)(e_y − p_t)
            columns.append(column.reshape(b, t * v))
        return torch.stack(columns, dim=2) / math.sqrt(self.fisher_samples)


def _normalised(weights: Tensor) -> Tensor:
    """``Σ_t ω_t`` per example (clamped away from 0; examples without loss tokens are refused elsewhere)."""
    return weights.sum(dim=1).clamp_min(torch.finfo(weights.dtype).tiny)


def _check_batch(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Shape, dtype, device and context checks (none depends on values, so they also run inside ``vmap``)."""
    if len(batch) not in (2, 3):
        raise InputError(
            f"A causal-LM batch is (input_ids, loss_mask) or (model_input, input_ids, loss_mask); got {len(batch)} "
            "tensors."
        )
    input_ids, mask = batch[-2:]
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.ndim != 2:
        raise InputError(f"input_ids must be a (B, T) integer tensor, got {input_ids.dtype} {tuple(input_ids.shape)}.")
    if len(batch) == 3 and tuple(batch[0].shape[:2]) != tuple(input_ids.shape):
        raise InputError(
            f"model_input of shape {tuple(batch[0].shape)} does not start with the (B, T) = "
            f"{tuple(input_ids.shape)} of input_ids."
        )
    if mask.shape != input_ids.shape:
        raise InputError(f"loss_mask shape {tuple(mask.shape)} differs from input_ids {tuple(input_ids.shape)}.")
    if input_ids.shape[1] < 2:
        raise InputError("Sequences need at least 2 tokens to predict anything.")
    device = model_device(model)
    if input_ids.device != device:
        raise InputError(
            f"The model is on {device} but the batch is on {input_ids.device}; move one of them "
            "(attributors move batches to the model's device themselves)."
        )
    context = context_length(model)
    if context is not None and input_ids.shape[1] > context:
        raise InputError(
            f"Sequences of {input_ids.shape[1]} tokens exceed the model's context of {context}; build the data with "
            f"dt.lm.corpus(..., max_length={context}) (truncates with a warning) or mode='chunks'."
        )
    weights = mask[:, 1:].float() if mask.dtype == torch.bool else mask[:, 1:]
    return input_ids, weights


def _check_values(vocab_size: int | None, input_ids: Tensor, weights: Tensor) -> None:
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        raise InputError(
            f"Token ids range over [{lo}, {hi}] but the model has a vocabulary of {vocab_size}: "
            "the tokenizer does not match the model."
        )
    if (weights < 0).any():
        raise InputError("loss_mask has negative weights; token weights must be ≥ 0.")
    empty = (weights.sum(dim=1) == 0).nonzero()
    if len(empty):
        raise InputError(f"Example {int(empty[0, 0])} of the batch has no loss token (empty document?).")


def _inside_transform(t: Tensor) -> bool:
    """Whether ``t`` is being traced by ``torch.func`` (vmap/grad), where value-dependent checks cannot run."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)
